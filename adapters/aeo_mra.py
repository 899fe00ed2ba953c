"""``aeo-mra-csv`` and ``aeo-mra-json``: AEO status lists exchanged under an MRA.

A list is full (every AEO of the issuing administration) or a delta (changes
since the last list). Body, the same in both forms and in ``maa-xml``'s
``AeoStatusList``::

    {"listKind": "full" | "delta", "listDate": "YYYY-MM-DD",
     "issuingAdministration": "XA",
     "traders": [{"traderId", "name", "address": {"street", "postcode", "city", "country"},
                  "status": "certified" | "suspended" | "revoked",
                  "aeoType": "AEOC" | "AEOS" | "AEOF", "validationDate",
                  "suspensionDate", "revocationDate", "reason"}]}

The JSON form is that object (``messageType`` may be given, as ``mra.aeo-status``),
validated against ``schemas/aeo-mra.schema.json``. The CSV form (RFC 4180, UTF-8,
header row) has one row per trader with the columns ``CSV_COLUMNS``; the list's own
fields repeat on every row and must agree. The CSV is validated by translating it
to the body and validating that, with errors located as ``line N column NAME``.
Both forms: a suspended trader needs a suspension date, a revoked one a
revocation date. Data category: trader.
"""

from __future__ import annotations

import csv
import io
import json
import re
from functools import cache
from typing import Any

from adapters import _maa_spec as spec
from adapters._support import (
    check_message_type,
    json_schema_error,
    json_validator,
    load_json,
    semantic_problem,
)
from adapters.base import Document
from gateway.errors import AdapterError, DecodeError, EncodeError, ErrorCode

MESSAGE_TYPE = "mra.aeo-status"

#: CSV column -> body path (list fields, then trader fields, address flattened).
CSV_COLUMNS: dict[str, tuple[str, ...]] = {
    "list_kind": ("listKind",),
    "list_date": ("listDate",),
    "issuing_administration": ("issuingAdministration",),
    "trader_id": ("traderId",),
    "name": ("name",),
    "street": ("address", "street"),
    "postcode": ("address", "postcode"),
    "city": ("address", "city"),
    "country": ("address", "country"),
    "status": ("status",),
    "aeo_type": ("aeoType",),
    "validation_date": ("validationDate",),
    "suspension_date": ("suspensionDate",),
    "revocation_date": ("revocationDate",),
    "reason": ("reason",),
}
_LIST_COLUMNS = ("list_kind", "list_date", "issuing_administration")
_COLUMN_BY_PATH = {path: column for column, path in CSV_COLUMNS.items()}


@cache
def validator() -> Any:
    """The compiled validator of the JSON form (built once)."""
    path = spec.SCHEMA_DIR / "aeo-mra.schema.json"
    return json_validator(json.loads(path.read_text(encoding="utf-8")))


def _check(body: dict[str, Any], fmt: str, *, encoding: bool) -> AdapterError | None:
    error = json_schema_error(validator(), body, fmt, encoding=encoding)
    if error is not None:
        return error
    problem = semantic_problem(MESSAGE_TYPE, body)
    if problem is None:
        return None
    location, reason = problem
    cls = EncodeError if encoding else DecodeError
    return cls(
        reason,
        code=ErrorCode.TRANSLATE_ENCODE if encoding else ErrorCode.TRANSLATE_SCHEMA,
        location=location,
        format=fmt,
    )


class AeoMraJsonAdapter:
    """The AEO status list as JSON."""

    name = "aeo-mra-json"
    media_type = "application/json"

    def preload(self) -> None:
        """Compile the schemas now (at start) rather than on the first message."""
        validator()

    def decode(self, data: bytes, *, message_type: str | None = None) -> Document:
        """Parse and validate an AEO status list in JSON."""
        check_message_type(MESSAGE_TYPE, message_type, self.name, "$")
        obj = load_json(data, self.name)
        error = _check(obj, self.name, encoding=False)
        if error is not None:
            raise error
        body = {key: value for key, value in obj.items() if key != "messageType"}
        return Document(MESSAGE_TYPE, body)

    def encode(self, document: Document) -> bytes:
        """Write and validate an AEO status list as JSON."""
        _check_type(document, self.name)
        error = _check(document.body, self.name, encoding=True)
        if error is not None:
            raise error
        return json.dumps(document.body, ensure_ascii=False, indent=2).encode("utf-8") + b"\n"

    def categories(self, document: Document) -> frozenset[str]:
        """An AEO status list is trader data."""
        return frozenset({"trader"}) if document.body.get("traders") else frozenset()


class AeoMraCsvAdapter:
    """The AEO status list as CSV, one row per trader."""

    name = "aeo-mra-csv"
    media_type = "text/csv"

    def preload(self) -> None:
        """Compile the schemas now (at start) rather than on the first message."""
        validator()

    def decode(self, data: bytes, *, message_type: str | None = None) -> Document:
        """Parse and validate an AEO status list in CSV."""
        check_message_type(MESSAGE_TYPE, message_type, self.name, "line 1")
        rows, lines = self._rows(data)
        body: dict[str, Any] = {}
        for column in _LIST_COLUMNS:
            if rows and rows[0][column]:
                body[CSV_COLUMNS[column][0]] = rows[0][column]
        body["traders"] = []
        for row, line in zip(rows, lines, strict=True):
            for column in _LIST_COLUMNS:
                if row[column] != rows[0][column]:
                    raise DecodeError(
                        f"{column} differs from the first row's ({rows[0][column]!r})",
                        code=ErrorCode.TRANSLATE_SCHEMA,
                        location=f"line {line} column {column}",
                        format=self.name,
                    )
            trader: dict[str, Any] = {}
            for column, path in CSV_COLUMNS.items():
                if column in _LIST_COLUMNS or not row[column]:
                    continue
                target = trader
                for key in path[:-1]:
                    target = target.setdefault(key, {})
                target[path[-1]] = row[column]
            body["traders"].append(trader)
        error = _check(body, self.name, encoding=False)
        if error is not None:
            raise DecodeError(
                error.reason,
                code=error.code,
                location=_csv_location(str(error.context.get("location", "$")), lines),
                format=self.name,
            )
        return Document(MESSAGE_TYPE, body)

    def _rows(self, data: bytes) -> tuple[list[dict[str, str]], list[int]]:
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise DecodeError(
                f"not UTF-8 text: {exc.reason}",
                code=ErrorCode.TRANSLATE_DECODE,
                location=f"byte {exc.start}",
                format=self.name,
            ) from exc
        reader = csv.reader(io.StringIO(text, newline=""), strict=True)
        rows: list[dict[str, str]] = []
        lines: list[int] = []
        try:
            header = next(reader, None)
            if header != list(CSV_COLUMNS):
                raise DecodeError(
                    f"the header must be {','.join(CSV_COLUMNS)}",
                    code=ErrorCode.TRANSLATE_SCHEMA,
                    location="line 1",
                    format=self.name,
                )
            start = reader.line_num + 1
            for record in reader:
                if len(record) != len(CSV_COLUMNS):
                    raise DecodeError(
                        f"{len(record)} fields where {len(CSV_COLUMNS)} are expected",
                        code=ErrorCode.TRANSLATE_SCHEMA,
                        location=f"line {start}",
                        format=self.name,
                    )
                rows.append(dict(zip(CSV_COLUMNS, record, strict=True)))
                lines.append(start)
                start = reader.line_num + 1
        except csv.Error as exc:
            raise DecodeError(
                f"not well-formed CSV: {exc}",
                code=ErrorCode.TRANSLATE_DECODE,
                location=f"line {reader.line_num}",
                format=self.name,
            ) from exc
        return rows, lines

    def encode(self, document: Document) -> bytes:
        """Write and validate an AEO status list as CSV."""
        _check_type(document, self.name)
        body = document.body
        error = _check(body, self.name, encoding=True)
        if error is not None:
            raise error
        out = io.StringIO(newline="")
        writer = csv.writer(out, lineterminator="\r\n")
        writer.writerow(CSV_COLUMNS)
        for trader in body["traders"]:
            row = []
            for column, path in CSV_COLUMNS.items():
                value: Any = body if column in _LIST_COLUMNS else trader
                for key in path:
                    value = value.get(key, {})
                row.append(value if isinstance(value, str) else "")
            writer.writerow(row)
        return out.getvalue().encode("utf-8")

    def categories(self, document: Document) -> frozenset[str]:
        """An AEO status list is trader data."""
        return frozenset({"trader"}) if document.body.get("traders") else frozenset()


def _check_type(document: Document, fmt: str) -> None:
    if document.message_type != MESSAGE_TYPE:
        raise EncodeError(
            f"only {MESSAGE_TYPE} documents can be written as {fmt}, not {document.message_type}",
            code=ErrorCode.TRANSLATE_ENCODE,
            location="$",
            format=fmt,
        )


_TRADER_PATH = re.compile(r"^\$\.traders\[(\d+)\]((?:\.\w+)*)$")


def _csv_location(path: str, lines: list[int]) -> str:
    """A JSON path into the body as a CSV position: ``line N column NAME``."""
    match = _TRADER_PATH.match(path)
    if match is None:
        # a list-level field: the first data row carries it
        key = path.removeprefix("$.").split(".")[0]
        column = _COLUMN_BY_PATH.get((key,))
        line = lines[0] if lines else 1
        return f"line {line} column {column}" if column else f"line {line}"
    line = lines[int(match.group(1))]
    keys = tuple(k for k in match.group(2).split(".") if k)
    column = _COLUMN_BY_PATH.get(keys)
    return f"line {line} column {column}" if column else f"line {line}"

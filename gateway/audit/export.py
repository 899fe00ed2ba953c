"""Offline bundles of the exchange log: write one (``AuditLog.export``), verify one alone.

A bundle holds the entries as JSON lines, the signed checkpoints with their certificates
and public keys, a manifest, and ``VERIFY.txt``: how to check it with openssl and Python.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from cryptography import x509

from gateway.audit.backend import (
    CHUNK,
    Checkpoint,
    Progress,
)
from gateway.audit.certs import CERT_RECORDED, CertRecord, RecordedTrust, record_from
from gateway.audit.chain import (
    CHECKPOINT_FORMAT,
    ROW_COLUMNS,
    canonical_entry,
    canonical_json,
)
from gateway.audit.verify import ChainVerifier, Problem, VerifyReport, _report_fields
from gateway.errors import AuditError, ErrorCode

BUNDLE_FORMAT = "maagw-audit-bundle/1"


def _prepare_export_dir(out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    if any(out_dir.iterdir()):
        raise AuditError(f"{out_dir}: export directory is not empty", code=ErrorCode.AUDIT_EXPORT)


def _export_line(row: Sequence[Any]) -> bytes:
    """The entry's canonical JSON with prev_hash and hash added (one line of entries.jsonl)."""
    body = canonical_entry(*row[:17])
    return body[:-1] + f',"prev_hash":"{row[17]}","hash":"{row[18]}"}}\n'.encode()


def _read_bundle_checkpoints(cp_dir: Path) -> tuple[list[Checkpoint], list[Problem]]:
    cps: list[Checkpoint] = []
    problems: list[Problem] = []
    for bin_path in sorted(cp_dir.glob("cp-*.bin")):
        stem = bin_path.name.removesuffix(".bin")
        data = bin_path.read_bytes()
        try:
            obj = json.loads(data)
            if obj.get("format") != CHECKPOINT_FORMAT:
                raise ValueError("unknown format")
            cps.append(
                Checkpoint(
                    seq=int(obj["seq"]),
                    head_hash=str(obj["head_hash"]),
                    time=str(obj["time"]),
                    gateway=str(obj["gateway"]),
                    signed_bytes=data,
                    signature=(cp_dir / f"{stem}.der").read_bytes(),
                    cert_pem=(cp_dir / f"{stem}.cert.pem").read_text(),
                )
            )
        except (ValueError, KeyError, TypeError, OSError) as exc:
            problems.append(Problem(0, "checkpoint_file", f"{bin_path.name}: {exc}"))
    return cps, problems


def verify_bundle(
    bundle: Path,
    *,
    trusted_certs: Sequence[x509.Certificate] | None = None,
    progress: Progress | None = None,
    trusted_cas: Sequence[x509.Certificate] | None = None,
) -> VerifyReport:
    """Verify an exported bundle offline: chain, checkpoints, manifest range.

    Certificates recorded inside the bundle count as in ``AuditLog.verify``.
    """
    try:
        manifest = json.loads((bundle / "manifest.json").read_text())
    except (OSError, ValueError) as exc:
        raise AuditError(
            f"{bundle}: not an audit bundle ({exc})", code=ErrorCode.AUDIT_BUNDLE
        ) from exc
    cps, file_problems = _read_bundle_checkpoints(bundle / "checkpoints")
    from_seq = int(manifest["from_seq"])
    to_seq = int(manifest["to_seq"])
    recorded = None
    if trusted_certs is not None or trusted_cas is not None:
        recorded = RecordedTrust(_bundle_cert_records(bundle / "entries.jsonl"), trusted_cas)
    verifier = ChainVerifier(
        cps, trusted_certs=trusted_certs, anchored=from_seq == 1, recorded=recorded
    )
    for p in file_problems:
        verifier._problem(p.seq, p.kind, p.message)
    total = int(manifest.get("entries", 0))
    done = 0
    rows: list[tuple[Any, ...]] = []
    with (bundle / "entries.jsonl").open("rb") as fh:
        for lineno, line in enumerate(fh, 1):
            try:
                rows.append(_row_from_json(line))
            except (ValueError, KeyError, TypeError) as exc:
                verifier._problem(
                    verifier._expected or from_seq, "unreadable", f"line {lineno}: {exc}"
                )
                continue
            if len(rows) >= CHUNK:
                verifier.feed(rows)
                done += len(rows)
                rows = []
                if progress is not None:
                    progress(done, total)
        verifier.feed(rows)
        if progress is not None:
            progress(done + len(rows), total)
    report = verifier.finish()
    extra: list[Problem] = []
    if report.entries and report.first_seq != from_seq:
        extra.append(Problem(from_seq, "missing", f"the bundle starts at seq {report.first_seq}"))
    if report.last_seq < to_seq:
        extra.append(
            Problem(
                report.last_seq + 1,
                "truncated",
                f"the manifest says the bundle ends at seq {to_seq}",
            )
        )
    notes = list(report.notes)
    if from_seq != 1:
        notes.append(
            f"the bundle starts at seq {from_seq}: its first prev_hash is taken as given; "
            "only checkpoints inside the bundle anchor the entries"
        )
    if extra:
        problems = tuple(sorted((*report.problems, *extra), key=lambda p: p.seq))
        return VerifyReport(
            **{
                **_report_fields(report),
                "problems": problems,
                "problem_count": report.problem_count + len(extra),
                "notes": tuple(notes),
            }
        )
    return VerifyReport(**{**_report_fields(report), "notes": tuple(notes)})


def _bundle_cert_records(path: Path) -> list[CertRecord]:
    """The certificate records among a bundle's entries (unreadable lines are skipped here)."""
    needle = f'"event":"{CERT_RECORDED}"'.encode()
    records: list[CertRecord] = []
    try:
        with path.open("rb") as fh:
            for line in fh:
                if needle not in line:
                    continue
                try:
                    obj = json.loads(line)
                    record = record_from(
                        int(obj["seq"]), obj["event"], obj.get("code"), obj["details"]
                    )
                except (ValueError, KeyError, TypeError, AttributeError):
                    continue
                if record is not None:
                    records.append(record)
    except OSError:
        return []
    return records


#: the plain fields of an exported entry, in row order (details and the hashes follow)
_ROW_KEYS = ROW_COLUMNS[: ROW_COLUMNS.index("details")]


def _row_from_json(line: bytes) -> tuple[Any, ...]:
    obj: Mapping[str, Any] = json.loads(line)
    details = obj["details"]
    if not isinstance(details, dict):
        raise ValueError("details is not an object")
    values = [obj[k] for k in _ROW_KEYS]
    if type(values[0]) is not int:
        raise ValueError("seq is not an integer")
    for key, value in zip(_ROW_KEYS[1:], values[1:], strict=True):
        if value is not None and not isinstance(value, str):
            raise ValueError(f"{key} is not a string")
    for key in ("prev_hash", "hash"):
        if not isinstance(obj[key], str):
            raise ValueError(f"{key} is not a string")
    return (
        *values,
        canonical_json(details),
        obj["prev_hash"],
        obj["hash"],
    )


def _verify_txt(manifest: Mapping[str, Any], names: Sequence[str]) -> str:
    lines = [
        f"Audit bundle of gateway {manifest['gateway']}: entries {manifest['from_seq']}.."
        f"{manifest['to_seq']} ({manifest['entries']} entries), "
        f"exported {manifest['exported_at']}.",
        "",
        "1. With the gateway's own tool (no database needed):",
        "",
        "     maagw audit verify --bundle .",
        "",
        "2. Checkpoint signatures with plain openssl (run in this directory). Each checkpoint",
        "   has the exact signed bytes (.bin), the DER signature (.der), the signer's",
        "   certificate (.cert.pem) and its public key (.pub.pem, which you can re-derive with",
        "   `openssl x509 -in X.cert.pem -pubkey -noout`). Check the certificate is the",
        "   gateway's signing certificate (e.g. `openssl x509 -in X.cert.pem -noout -subject",
        "   -fingerprint -sha256`) — after a rotation, an earlier one: recorded in",
        "   entries.jsonl by a cert_recorded entry at or before the checkpoint's seq and issued",
        "   by the gateway's CA (`openssl verify -CAfile ca.pem X.cert.pem`) — then:",
        "",
    ]
    for name in names:
        lines.append(
            f"     openssl dgst -sha256 -verify checkpoints/{name}.pub.pem "
            f"-signature checkpoints/{name}.der checkpoints/{name}.bin"
        )
    if not names:
        lines.append("     (this range contains no checkpoint)")
    lines += [
        "",
        "   Each .bin is JSON {format, gateway, head_hash, seq, time}: the entry with that seq",
        "   in entries.jsonl must have exactly that hash.",
        "",
        "3. The hash chain, with any SHA-256 and JSON tool. Each line of entries.jsonl is an",
        "   entry plus its prev_hash and hash. Remove those two keys; serialise the rest as",
        "   RFC 8785 JSON (keys sorted, no whitespace, UTF-8); then",
        "       hash = sha256( prev_hash as 64 ASCII hex digits || those bytes )",
        "   and prev_hash of an entry is the hash of the entry before it (64 zeros for seq 1).",
        "   In Python:",
        "",
        "     python3 - <<'EOF'",
        "     import hashlib, json",
        "     prev = None",
        "     for line in open('entries.jsonl', 'rb'):",
        "         e = json.loads(line); h, p = e.pop('hash'), e.pop('prev_hash')",
        "         assert prev in (None, p), ('chain broken at', e['seq'])",
        "         c = json.dumps(e, sort_keys=True, separators=(',', ':'), ensure_ascii=False)",
        "         assert hashlib.sha256(p.encode() + c.encode()).hexdigest() == h, e['seq']",
        "         prev = h",
        "     print('chain OK')",
        "     EOF",
        "",
        "Entries after the last checkpoint in this bundle are vouched for by the chain only.",
        "manifest.json is not signed; the checkpoints are what a signature covers.",
        "",
    ]
    return "\n".join(lines)

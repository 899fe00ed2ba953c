"""Agreements as configuration: the model of ``agreements/*.toml`` and its loading.

An agreement (a bilateral MAA agreement or an AEO MRA) names its parties, validity,
status, retry terms and, per direction, the flows the policy engine checks
(``gateway.policy.engine``). Loading validates every file and precomputes the look-up
tables the engine uses.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any, Literal

import pydantic
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

from adapters import DEFAULT_EXCHANGE_FORMAT
from gateway.errors import ConfigError

#: message types each kind of agreement may govern
TYPES_BY_KIND: dict[str, frozenset[str]] = {
    "bilateral-maa": frozenset({"maa.request", "maa.reply", "maa.spontaneous", "maa.refusal"}),
    "aeo-mra": frozenset({"mra.aeo-status"}),
}


_ID = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"


_CATEGORY = re.compile(r"^[a-z][a-z0-9_-]*$")


_SEGMENT = re.compile(r"^[^.*]+$")


# --- the agreement model ------------------------------------------------------------------


class DeliveryTerms(BaseModel):
    """How the relay retries deliveries under this agreement."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    #: obsolete: retries end at ``max_age_seconds``, never after a count (accepted, ignored)
    max_attempts: int | None = Field(default=None, ge=1)
    #: the relay retries a message until it is this old, then dead-letters it
    #: (None: the gateway's ``[delivery] max_age_seconds``)
    max_age_seconds: float | None = Field(default=None, gt=0)


class Flow(BaseModel):
    """The rules for one direction of an agreement (``SENDER->RECEIVER``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    message_types: frozenset[str] = Field(min_length=1)
    data_categories: frozenset[str]
    personal_data: bool = False
    purpose_required: frozenset[str] = frozenset()
    onward_transfer: Literal["forbidden", "consent-required"] = "forbidden"
    redactions: tuple[str, ...] = ()
    max_size_bytes: int = Field(gt=0)
    rate_per_minute: float = Field(gt=0)
    burst: float | None = Field(default=None, ge=1)
    payload_formats: frozenset[str] = Field(min_length=1)

    @field_validator("data_categories")
    @classmethod
    def _categories_are_names(cls, value: frozenset[str]) -> frozenset[str]:
        bad = sorted(c for c in value if not _CATEGORY.match(c))
        if bad:
            raise ValueError(f"not a category name (lower-case word): {', '.join(bad)}")
        return value

    @field_validator("redactions")
    @classmethod
    def _redactions_are_paths(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for path in value:
            parse_path(path)
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Flow:
        if "personal" in self.data_categories and not self.personal_data:
            raise ValueError("data_categories lists 'personal' but personal_data is false")
        return self


class Agreement(BaseModel, frozen=True, extra="forbid"):
    """A bilateral MAA agreement or AEO MRA, validated when loaded."""

    id: str = Field(pattern=_ID)
    kind: Literal["bilateral-maa", "aeo-mra"]
    title: str = Field(min_length=1)
    parties: tuple[str, str]
    valid_from: date
    valid_until: date
    status: Literal["active", "suspended", "terminated"]
    status_reason: str = ""
    exchange_format: str = DEFAULT_EXCHANGE_FORMAT
    retention_days: int = Field(gt=0)
    delivery: DeliveryTerms = Field(default_factory=DeliveryTerms)
    flows: dict[str, Flow] = Field(min_length=1)

    # Precomputed at load so that evaluate() does set and dict look-ups only.
    _c: _Compiled = PrivateAttr(default_factory=lambda: _Compiled())

    @field_validator("parties")
    @classmethod
    def _parties_distinct(cls, value: tuple[str, str]) -> tuple[str, str]:
        for party in value:
            if not re.match(_ID, party):
                raise ValueError(f"not an administration id: {party!r}")
        if value[0] == value[1]:
            raise ValueError("the two parties must differ")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Agreement:
        if self.valid_until < self.valid_from:
            raise ValueError("valid_until: is before valid_from")
        if self.status != "active" and not self.status_reason.strip():
            raise ValueError(f"status_reason: required when status is {self.status!r}")
        allowed_types = TYPES_BY_KIND[self.kind]
        for key, flow in self.flows.items():
            where = f'flows."{key}"'
            sender, sep, receiver = key.partition("->")
            if not sep or {sender, receiver} != set(self.parties):
                raise ValueError(
                    f"{where}: a flow is named SENDER->RECEIVER with the two parties "
                    f"{self.parties[0]} and {self.parties[1]}"
                )
            stray = sorted(flow.message_types - allowed_types)
            if stray:
                raise ValueError(
                    f"{where}.message_types: {stray} not allowed in a {self.kind} agreement "
                    f"(allowed: {sorted(allowed_types)})"
                )
            stray = sorted(flow.purpose_required - allowed_types)
            if stray:
                raise ValueError(
                    f"{where}.purpose_required: {stray} not a message type of a {self.kind} "
                    "agreement"
                )
            if self.kind == "bilateral-maa" and "maa.request" not in flow.purpose_required:
                raise ValueError(
                    f"{where}.purpose_required: must include maa.request in a bilateral-maa "
                    "agreement"
                )
        return self

    def model_post_init(self, context: Any, /) -> None:
        """Compile the flows and validity bounds used by ``evaluate``."""
        c = self._c
        c.starts = datetime.combine(self.valid_from, time(), tzinfo=UTC)
        c.ends = datetime.combine(self.valid_until + timedelta(days=1), time(), tzinfo=UTC)
        for key, flow in self.flows.items():
            sender, _, receiver = key.partition("->")
            c.flows[(sender, receiver)] = _CompiledFlow(self, key, flow)

    def flow(self, sender: str, receiver: str) -> Flow | None:
        """The rules for messages from ``sender`` to ``receiver``, if any."""
        compiled = self._c.flows.get((sender, receiver))
        return compiled.flow if compiled else None

    def valid_at(self, at: datetime) -> bool:
        """Whether ``at`` (aware) falls inside the validity window (both ends inclusive days)."""
        return self._c.starts <= at < self._c.ends

    def covers(self, sender: str, receiver: str, message_type: str) -> bool:
        """Whether the agreement has a flow from ``sender`` to ``receiver`` allowing the type."""
        compiled = self._c.flows.get((sender, receiver))
        return compiled is not None and message_type in compiled.flow.message_types


class _Compiled:
    """What an agreement precomputes for ``evaluate``: validity bounds and flows by pair."""

    __slots__ = ("ends", "flows", "starts")

    def __init__(self) -> None:
        self.starts = datetime.min.replace(tzinfo=UTC)
        self.ends = datetime.min.replace(tzinfo=UTC)
        self.flows: dict[tuple[str, str], _CompiledFlow] = {}


class _CompiledFlow:
    """A flow with the sets and rule names ``evaluate`` needs, made once.

    ``allow`` caches the engine's allowing decisions by (direction, message type): the
    engine fills it on first use (a decision is the engine's, not configuration).
    """

    __slots__ = ("agreement_id", "allow", "allowed", "flow", "key", "nonpersonal", "rule")

    def __init__(self, agreement: Agreement, key: str, flow: Flow) -> None:
        self.agreement_id = agreement.id
        self.key = key
        self.flow = flow
        self.rule = f"flows.{key}"
        self.nonpersonal = flow.data_categories - {"personal"}
        self.allowed = flow.data_categories | ({"personal"} if flow.personal_data else set())
        self.allow: dict[tuple[str, str], Any] = {}


def parse_path(path: str) -> tuple[str, ...]:
    """Split a redaction path into segments; raise ``ValueError`` if it is malformed.

    Syntax: dot-separated keys; ``*`` stands for every element of a list or every
    value of a mapping. The last segment must be a key.
    """
    segments = tuple(path.split("."))
    for segment in segments:
        if segment != "*" and not _SEGMENT.match(segment):
            raise ValueError(f"bad redaction path {path!r}: empty or partial segment")
    if segments[-1] == "*":
        raise ValueError(f"bad redaction path {path!r}: the last segment must be a key")
    return segments


def _toml_key(part: str | int) -> str:
    text = str(part)
    return text if re.match(r"^[A-Za-z0-9_-]+$", text) else f'"{text}"'


def _describe(error: Mapping[str, Any]) -> str:
    location = ".".join(_toml_key(part) for part in error["loc"])
    message = str(error["ctx"]["error"]) if error["type"] == "value_error" else error["msg"]
    return f"{location}: {message}" if location else message


def load_agreement(path: Path) -> Agreement:
    """Read and validate one agreement file.

    Raises:
        ConfigError: the file is missing, not TOML, or not a valid agreement; the
            message names the file, the key and the problem.
    """
    try:
        with path.open("rb") as fh:
            raw = tomllib.load(fh)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read agreement: {exc.strerror}", file=str(path)) from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}", file=str(path)) from exc
    try:
        return Agreement.model_validate(raw)
    except pydantic.ValidationError as exc:
        problems = "; ".join(_describe(e) for e in exc.errors())
        raise ConfigError(f"{path}: {problems}", file=str(path)) from exc


def load_agreements(directory: Path) -> dict[str, Agreement]:
    """Load every ``*.toml`` in ``directory`` keyed by agreement id; ids must be unique."""
    if not directory.is_dir():
        raise ConfigError(f"{directory}: agreements directory not found", file=str(directory))
    loaded: dict[str, Agreement] = {}
    files: dict[str, Path] = {}
    for path in sorted(directory.glob("*.toml")):
        agreement = load_agreement(path)
        if agreement.id in loaded:
            raise ConfigError(
                f"{path}: id: {agreement.id!r} is already used by {files[agreement.id]}",
                file=str(path),
            )
        loaded[agreement.id] = agreement
        files[agreement.id] = path
    return loaded

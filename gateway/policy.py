"""Agreements and the policy engine that enforces them.

An agreement (``config/agreements/*.toml``, format in ``docs/policy.md``) is a
bilateral MAA agreement or an AEO MRA between two administrations. The same
file is valid at both parties, so its per-direction rules are keyed by flow,
``"SENDER->RECEIVER"``.

``evaluate`` is pure and fast: everything it needs, including the facts that
need state (does a reply answer a request known under this agreement? did the
rate limiter let the message through?), is passed in a ``PolicyRequest``. It
checks the rules in a fixed order and the first failing rule decides:

 1. no agreement                                  POLICY_NO_AGREEMENT
 2. sender and receiver are not both parties      POLICY_NOT_PARTY
 3. status terminated                             POLICY_TERMINATED
 4. status suspended                              POLICY_SUSPENDED
 5. before valid_from                             POLICY_NOT_YET_VALID
 6. after valid_until                             POLICY_EXPIRED
 7. no flow for this direction, or type not in it POLICY_MESSAGE_TYPE
 8. payload format not allowed for the flow       POLICY_FORMAT
 9. a detected category not allowed               POLICY_DATA_CATEGORY
10. personal data detected, not allowed           POLICY_PERSONAL_DATA
11. declared categories miss a detected one       POLICY_DATA_CATEGORY
12. purpose or legal basis missing where required POLICY_PURPOSE_MISSING
13. payload larger than allowed                   POLICY_SIZE
14. reply/refusal answering no known request      POLICY_NO_REQUEST
15. the rate limiter said no                      POLICY_RATE (back-pressure)

Rate limits are kept by ``RateLimiter`` (one ``TokenBucket`` per agreement,
sender and receiver), outside the pure engine.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

import pydantic
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

from gateway.errors import ConfigError, PolicyViolation

__all__ = [
    "MESSAGE_TYPES",
    "REPLY_TYPES",
    "Agreement",
    "Code",
    "Decision",
    "Delivery",
    "Flow",
    "PolicyRequest",
    "RateLimiter",
    "TokenBucket",
    "apply_redactions",
    "evaluate",
    "explain",
    "find_agreement",
    "load_agreement",
    "load_agreements",
    "violation",
]


class Code(StrEnum):
    """The stable codes of policy decisions."""

    ALLOW = "POLICY_ALLOW"
    NO_AGREEMENT = "POLICY_NO_AGREEMENT"
    NOT_PARTY = "POLICY_NOT_PARTY"
    TERMINATED = "POLICY_TERMINATED"
    SUSPENDED = "POLICY_SUSPENDED"
    NOT_YET_VALID = "POLICY_NOT_YET_VALID"
    EXPIRED = "POLICY_EXPIRED"
    MESSAGE_TYPE = "POLICY_MESSAGE_TYPE"
    FORMAT = "POLICY_FORMAT"
    DATA_CATEGORY = "POLICY_DATA_CATEGORY"
    PERSONAL_DATA = "POLICY_PERSONAL_DATA"
    PURPOSE_MISSING = "POLICY_PURPOSE_MISSING"
    SIZE = "POLICY_SIZE"
    NO_REQUEST = "POLICY_NO_REQUEST"
    RATE = "POLICY_RATE"


#: message types each kind of agreement may govern
MESSAGE_TYPES: dict[str, frozenset[str]] = {
    "bilateral-maa": frozenset({"maa.request", "maa.reply", "maa.spontaneous", "maa.refusal"}),
    "aeo-mra": frozenset({"mra.aeo-status"}),
}
#: message types that answer a request and so must answer a known one
REPLY_TYPES = frozenset({"maa.reply", "maa.refusal"})

_ID = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
_CATEGORY = re.compile(r"^[a-z][a-z0-9_-]*$")
_SEGMENT = re.compile(r"^[^.*]+$")


# --- the agreement model ------------------------------------------------------------------


class Delivery(BaseModel):
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
    exchange_format: str = "maa-xml"
    retention_days: int = Field(gt=0)
    delivery: Delivery = Field(default_factory=Delivery)
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
        allowed_types = MESSAGE_TYPES[self.kind]
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
    """A flow with the sets, rule names and allow decisions ``evaluate`` needs, made once."""

    __slots__ = ("allow", "allowed", "flow", "nonpersonal", "rule")

    def __init__(self, agreement: Agreement, key: str, flow: Flow) -> None:
        self.flow = flow
        self.rule = f"flows.{key}"
        self.nonpersonal = flow.data_categories - {"personal"}
        self.allowed = flow.data_categories | ({"personal"} if flow.personal_data else set())
        self.allow: dict[tuple[str, str], Decision] = {}
        sender, _, receiver = key.partition("->")
        for message_type in flow.message_types:
            for direction in ("outbound", "inbound"):
                self.allow[(direction, message_type)] = Decision(
                    allowed=True,
                    code=Code.ALLOW.value,
                    rule=self.rule,
                    reason=(
                        f"agreement {agreement.id} allows {message_type} "
                        f"from {sender} to {receiver}"
                    ),
                    agreement_id=agreement.id,
                    redactions=flow.redactions if direction == "outbound" else (),
                )


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


def find_agreement(
    agreements: Mapping[str, Agreement],
    agreement_id: str | None,
    sender: str,
    receiver: str,
    message_type: str,
    *,
    at: datetime | None = None,
) -> Agreement | None:
    """The agreement governing a message: by id when given, else the one covering it.

    Without an id, an agreement whose flow ``sender->receiver`` allows the type is
    preferred, then an agreement between the two whose kind governs the type (so
    that a type the agreement does not permit is refused by it, with
    POLICY_MESSAGE_TYPE), then any agreement between the two. Among those, the single one that
    is active (and valid at ``at``, when given) is returned; if there is none, the
    first inactive one by id (so that the refusal says why: suspended, expired …);
    if several qualify the choice is ambiguous and ``None`` is returned — the
    sender must name the agreement.
    """
    if agreement_id is not None:
        return agreements.get(agreement_id)
    pair = {sender, receiver}
    tiers = (
        [a for a in agreements.values() if a.covers(sender, receiver, message_type)],
        [
            a
            for a in agreements.values()
            if set(a.parties) == pair and message_type in MESSAGE_TYPES[a.kind]
        ],
        [a for a in agreements.values() if set(a.parties) == pair],
    )
    for candidates in tiers:
        if not candidates:
            continue
        usable = [a for a in candidates if a.status == "active" and (at is None or a.valid_at(at))]
        if len(usable) == 1:
            return usable[0]
        if usable:
            return None
        return min(candidates, key=lambda a: a.id)
    return None


# --- the engine ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PolicyRequest:
    """Everything ``evaluate`` needs to know about one message."""

    direction: Literal["outbound", "inbound"]
    sender: str
    receiver: str
    message_type: str
    categories: frozenset[str]
    declared_categories: frozenset[str] | None
    size: int
    payload_format: str
    at: datetime
    purpose: str | None = None
    legal_basis: str | None = None
    answers_known_request: bool | None = None
    rate_ok: bool = True
    #: the rate limiter's wait in seconds, copied into a POLICY_RATE decision
    retry_after: float | None = None


@dataclass(frozen=True, slots=True)
class Decision:
    """The engine's answer: allow or deny, with a stable code and the rule that decided."""

    allowed: bool
    code: str
    rule: str
    reason: str
    agreement_id: str | None
    redactions: tuple[str, ...] = ()
    retry_after: float | None = None


def _deny(code: Code, rule: str, reason: str, agreement: Agreement | None) -> Decision:
    return Decision(
        allowed=False,
        code=code.value,
        rule=rule,
        reason=reason,
        agreement_id=agreement.id if agreement else None,
    )


def _names(values: frozenset[str] | set[str]) -> str:
    return ", ".join(sorted(values))


def evaluate(agreement: Agreement | None, request: PolicyRequest) -> Decision:
    """Decide whether ``request`` may pass under ``agreement``; pure, no I/O.

    The rules are checked in the order of the module docstring and the first one
    that fails decides. An allowed outbound message carries the redactions to apply.
    """
    r = request
    if agreement is None:
        return _deny(
            Code.NO_AGREEMENT,
            "agreement",
            f"no agreement governs {r.message_type} from {r.sender} to {r.receiver}",
            None,
        )
    a = agreement
    if r.sender not in a.parties or r.receiver not in a.parties or r.sender == r.receiver:
        return _deny(
            Code.NOT_PARTY,
            "parties",
            f"agreement {a.id} is between {a.parties[0]} and {a.parties[1]}, "
            f"not from {r.sender} to {r.receiver}",
            a,
        )
    if a.status != "active":
        code = Code.TERMINATED if a.status == "terminated" else Code.SUSPENDED
        return _deny(code, "status", f"agreement {a.id} is {a.status}: {a.status_reason}", a)
    c = a._c
    if r.at < c.starts:
        return _deny(
            Code.NOT_YET_VALID,
            "valid_from",
            f"agreement {a.id} is valid from {a.valid_from.isoformat()}",
            a,
        )
    if r.at >= c.ends:
        return _deny(
            Code.EXPIRED,
            "valid_until",
            f"agreement {a.id} expired after {a.valid_until.isoformat()}",
            a,
        )
    compiled = c.flows.get((r.sender, r.receiver))
    if compiled is None:
        return _deny(
            Code.MESSAGE_TYPE,
            f"flows.{r.sender}->{r.receiver}",
            f"agreement {a.id} allows no messages from {r.sender} to {r.receiver}",
            a,
        )
    flow = compiled.flow
    if r.message_type not in flow.message_types:
        return _deny(
            Code.MESSAGE_TYPE,
            f"{compiled.rule}.message_types",
            f"agreement {a.id} does not allow {r.message_type} from {r.sender} to {r.receiver} "
            f"(allowed: {_names(flow.message_types)})",
            a,
        )
    if r.payload_format not in flow.payload_formats:
        return _deny(
            Code.FORMAT,
            f"{compiled.rule}.payload_formats",
            f"payload format {r.payload_format} is not allowed from {r.sender} to {r.receiver} "
            f"(allowed: {_names(flow.payload_formats)})",
            a,
        )
    categories = r.categories
    if not categories <= compiled.allowed:
        extra = categories - compiled.nonpersonal - {"personal"}
        if extra:
            return _deny(
                Code.DATA_CATEGORY,
                f"{compiled.rule}.data_categories",
                f"the message contains {_names(extra)} data, which agreement {a.id} does not "
                f"allow from {r.sender} to {r.receiver}",
                a,
            )
        return _deny(
            Code.PERSONAL_DATA,
            f"{compiled.rule}.personal_data",
            f"the message contains personal data, which agreement {a.id} does not allow "
            f"from {r.sender} to {r.receiver}",
            a,
        )
    declared = r.declared_categories
    if declared is not None and not categories <= declared:
        return _deny(
            Code.DATA_CATEGORY,
            "declared_categories",
            f"the message contains {_names(categories - declared)} data it does not declare",
            a,
        )
    if r.message_type in flow.purpose_required and not (
        r.purpose and r.purpose.strip() and r.legal_basis and r.legal_basis.strip()
    ):
        return _deny(
            Code.PURPOSE_MISSING,
            f"{compiled.rule}.purpose_required",
            f"{r.message_type} under agreement {a.id} must state a purpose and a legal basis",
            a,
        )
    if r.size > flow.max_size_bytes:
        return _deny(
            Code.SIZE,
            f"{compiled.rule}.max_size_bytes",
            f"the payload is {r.size} bytes, more than the {flow.max_size_bytes} allowed",
            a,
        )
    if r.answers_known_request is False and r.message_type in REPLY_TYPES:
        return _deny(
            Code.NO_REQUEST,
            "known_request",
            f"the {r.message_type} answers no request known under agreement {a.id}",
            a,
        )
    if not r.rate_ok:
        wait = r.retry_after if r.retry_after is not None else 60.0 / flow.rate_per_minute
        return Decision(
            allowed=False,
            code=Code.RATE.value,
            rule=f"{compiled.rule}.rate_per_minute",
            reason=(
                f"more than {flow.rate_per_minute:g} messages per minute from {r.sender} to "
                f"{r.receiver}; retry in {wait:.1f} s"
            ),
            agreement_id=a.id,
            retry_after=wait,
        )
    return compiled.allow[(r.direction, r.message_type)]


def violation(decision: Decision, **context: Any) -> PolicyViolation:
    """The ``PolicyViolation`` to raise for a denying decision."""
    return PolicyViolation(
        decision.reason,
        code=decision.code,
        agreement=decision.agreement_id,
        rule=decision.rule,
        **context,
    )


def explain(decision: Decision) -> str:
    """The multi-line text ``maagw agreements explain`` prints for a decision."""
    lines = [
        f"{'ALLOW' if decision.allowed else 'DENY'} {decision.code}",
        f"  agreement:  {decision.agreement_id or '(none)'}",
        f"  rule:       {decision.rule}",
        f"  reason:     {decision.reason}",
    ]
    if decision.retry_after is not None:
        lines.append(f"  retry after {decision.retry_after:.1f} s (back-pressure, not a refusal)")
    if decision.redactions:
        lines.append("  redactions:")
        lines.extend(f"    - {path}" for path in decision.redactions)
    elif decision.allowed:
        lines.append("  redactions: none")
    return "\n".join(lines)


# --- redactions ---------------------------------------------------------------------------


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


def _copy(node: Any) -> Any:
    if isinstance(node, dict):
        return {key: _copy(value) for key, value in node.items()}
    if isinstance(node, list):
        return [_copy(value) for value in node]
    return node


def _remove(node: Any, segments: tuple[str, ...]) -> None:
    head, rest = segments[0], segments[1:]
    if head == "*":
        children = (
            node if isinstance(node, list) else node.values() if isinstance(node, dict) else ()
        )
        for child in children:
            _remove(child, rest)
    elif isinstance(node, dict) and head in node:
        if rest:
            _remove(node[head], rest)
        else:
            del node[head]


def apply_redactions(body: dict[str, Any], paths: Sequence[str]) -> dict[str, Any]:
    """Return a copy of ``body`` without the values at ``paths``; ``body`` is untouched.

    A path that is absent is not an error. See ``parse_path`` for the syntax.
    """
    result: dict[str, Any] = _copy(body)
    for path in paths:
        _remove(result, parse_path(path))
    return result


# --- rate limits --------------------------------------------------------------------------


class TokenBucket:
    """A token bucket refilled at ``rate_per_minute``; time is passed in, so it is pure.

    It starts full with ``burst`` tokens (default: a minute's allowance, at least one).
    """

    __slots__ = ("_last", "_per_second", "_tokens", "burst", "rate_per_minute")

    def __init__(self, rate_per_minute: float, burst: float | None = None) -> None:
        if rate_per_minute <= 0:
            raise ValueError("rate_per_minute must be positive")
        self.rate_per_minute = rate_per_minute
        self.burst = burst if burst is not None else max(1.0, rate_per_minute)
        if self.burst < 1:
            raise ValueError("burst must be at least 1")
        self._per_second = rate_per_minute / 60.0
        self._tokens = self.burst
        self._last: float | None = None

    def try_take(self, now: float) -> float:
        """Take a token at time ``now`` (seconds): 0.0 if taken, else the seconds to wait."""
        wait = self.wait(now)
        if wait == 0.0:
            self._tokens -= 1.0
        return wait

    def wait(self, now: float) -> float:
        """The seconds until a token is there at time ``now`` (0.0: one is); takes none."""
        if self._last is not None and now > self._last:
            self._tokens = min(self.burst, self._tokens + (now - self._last) * self._per_second)
        if self._last is None or now > self._last:
            self._last = now
        if self._tokens >= 1.0:
            return 0.0
        return (1.0 - self._tokens) / self._per_second


#: refusals a minute of a sender that has no flow to the receiver in any agreement
REFUSALS_WITHOUT_FLOW_PER_MINUTE = 60.0


class RateLimiter:
    """One token bucket per (agreement id, sender, receiver), sized from the flow's rule.

    A bucket is rebuilt when a reloaded agreement changes the flow's rate or burst.

    Refused messages have an allowance of their own, one bucket per (sender,
    receiver), as large as all the sender's flows to the receiver together (the sum of
    their rates and bursts; ``REFUSALS_WITHOUT_FLOW_PER_MINUTE`` without any): a
    partner can make the receiver refuse at most as many messages as it may send.
    """

    def __init__(self) -> None:
        self._buckets: dict[tuple[str, str, str], TokenBucket] = {}
        self._refusals: dict[tuple[str, str], TokenBucket] = {}

    def check(self, agreement: Agreement, sender: str, receiver: str, now: float) -> float:
        """Take a token for one message: 0.0 when it may go, else the seconds to wait.

        A flow the agreement does not have is not rate limited here: ``evaluate``
        refuses it. Check the rate after ``evaluate`` allowed the message, so that
        refused messages take from the refusal allowance (``refused``) only.
        """
        flow = agreement.flow(sender, receiver)
        if flow is None:
            return 0.0
        key = (agreement.id, sender, receiver)
        bucket = self._buckets.get(key)
        burst = flow.burst if flow.burst is not None else max(1.0, flow.rate_per_minute)
        if (
            bucket is None
            or bucket.rate_per_minute != flow.rate_per_minute
            or bucket.burst != burst
        ):
            bucket = self._buckets[key] = TokenBucket(flow.rate_per_minute, burst)
        return bucket.try_take(now)

    def refusal_wait(
        self, agreements: Mapping[str, Agreement], sender: str, receiver: str, now: float
    ) -> float:
        """Seconds until ``sender``'s refusal allowance has room again (0.0: it has); takes none."""
        return self._refusal_bucket(agreements, sender, receiver).wait(now)

    def refused(
        self, agreements: Mapping[str, Agreement], sender: str, receiver: str, now: float
    ) -> None:
        """Charge one refused message to ``sender``'s refusal allowance (if any is left)."""
        self._refusal_bucket(agreements, sender, receiver).try_take(now)

    def _refusal_bucket(
        self, agreements: Mapping[str, Agreement], sender: str, receiver: str
    ) -> TokenBucket:
        flows = [f for a in agreements.values() if (f := a.flow(sender, receiver)) is not None]
        rate = sum(f.rate_per_minute for f in flows) or REFUSALS_WITHOUT_FLOW_PER_MINUTE
        burst = sum(f.burst if f.burst is not None else max(1.0, f.rate_per_minute) for f in flows)
        burst = burst or max(1.0, rate)
        bucket = self._refusals.get((sender, receiver))
        if bucket is None or bucket.rate_per_minute != rate or bucket.burst != burst:
            bucket = self._refusals[(sender, receiver)] = TokenBucket(rate, burst)
        return bucket

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

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from gateway.config.agreement import TYPES_BY_KIND, Agreement
from gateway.contract import REPLY_TYPES
from gateway.errors import ErrorCode, PolicyViolation

#: the codes ``evaluate`` decides with, in the order of the module docstring
DECISION_CODES: tuple[ErrorCode, ...] = (
    ErrorCode.POLICY_ALLOW,
    ErrorCode.POLICY_NO_AGREEMENT,
    ErrorCode.POLICY_NOT_PARTY,
    ErrorCode.POLICY_TERMINATED,
    ErrorCode.POLICY_SUSPENDED,
    ErrorCode.POLICY_NOT_YET_VALID,
    ErrorCode.POLICY_EXPIRED,
    ErrorCode.POLICY_MESSAGE_TYPE,
    ErrorCode.POLICY_FORMAT,
    ErrorCode.POLICY_DATA_CATEGORY,
    ErrorCode.POLICY_PERSONAL_DATA,
    ErrorCode.POLICY_PURPOSE_MISSING,
    ErrorCode.POLICY_SIZE,
    ErrorCode.POLICY_NO_REQUEST,
    ErrorCode.POLICY_RATE,
)


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
            if set(a.parties) == pair and message_type in TYPES_BY_KIND[a.kind]
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
    code: ErrorCode
    rule: str
    reason: str
    agreement_id: str | None
    redactions: tuple[str, ...] = ()
    retry_after: float | None = None


def _deny(code: ErrorCode, rule: str, reason: str, agreement: Agreement | None) -> Decision:
    return Decision(
        allowed=False,
        code=code,
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
            ErrorCode.POLICY_NO_AGREEMENT,
            "agreement",
            f"no agreement governs {r.message_type} from {r.sender} to {r.receiver}",
            None,
        )
    a = agreement
    if r.sender not in a.parties or r.receiver not in a.parties or r.sender == r.receiver:
        return _deny(
            ErrorCode.POLICY_NOT_PARTY,
            "parties",
            f"agreement {a.id} is between {a.parties[0]} and {a.parties[1]}, "
            f"not from {r.sender} to {r.receiver}",
            a,
        )
    if a.status != "active":
        code = (
            ErrorCode.POLICY_TERMINATED if a.status == "terminated" else ErrorCode.POLICY_SUSPENDED
        )
        return _deny(code, "status", f"agreement {a.id} is {a.status}: {a.status_reason}", a)
    c = a._c
    if r.at < c.starts:
        return _deny(
            ErrorCode.POLICY_NOT_YET_VALID,
            "valid_from",
            f"agreement {a.id} is valid from {a.valid_from.isoformat()}",
            a,
        )
    if r.at >= c.ends:
        return _deny(
            ErrorCode.POLICY_EXPIRED,
            "valid_until",
            f"agreement {a.id} expired after {a.valid_until.isoformat()}",
            a,
        )
    compiled = c.flows.get((r.sender, r.receiver))
    if compiled is None:
        return _deny(
            ErrorCode.POLICY_MESSAGE_TYPE,
            f"flows.{r.sender}->{r.receiver}",
            f"agreement {a.id} allows no messages from {r.sender} to {r.receiver}",
            a,
        )
    flow = compiled.flow
    if r.message_type not in flow.message_types:
        return _deny(
            ErrorCode.POLICY_MESSAGE_TYPE,
            f"{compiled.rule}.message_types",
            f"agreement {a.id} does not allow {r.message_type} from {r.sender} to {r.receiver} "
            f"(allowed: {_names(flow.message_types)})",
            a,
        )
    if r.payload_format not in flow.payload_formats:
        return _deny(
            ErrorCode.POLICY_FORMAT,
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
                ErrorCode.POLICY_DATA_CATEGORY,
                f"{compiled.rule}.data_categories",
                f"the message contains {_names(extra)} data, which agreement {a.id} does not "
                f"allow from {r.sender} to {r.receiver}",
                a,
            )
        return _deny(
            ErrorCode.POLICY_PERSONAL_DATA,
            f"{compiled.rule}.personal_data",
            f"the message contains personal data, which agreement {a.id} does not allow "
            f"from {r.sender} to {r.receiver}",
            a,
        )
    declared = r.declared_categories
    if declared is not None and not categories <= declared:
        return _deny(
            ErrorCode.POLICY_DATA_CATEGORY,
            "declared_categories",
            f"the message contains {_names(categories - declared)} data it does not declare",
            a,
        )
    if r.message_type in flow.purpose_required and not (
        r.purpose and r.purpose.strip() and r.legal_basis and r.legal_basis.strip()
    ):
        return _deny(
            ErrorCode.POLICY_PURPOSE_MISSING,
            f"{compiled.rule}.purpose_required",
            f"{r.message_type} under agreement {a.id} must state a purpose and a legal basis",
            a,
        )
    if r.size > flow.max_size_bytes:
        return _deny(
            ErrorCode.POLICY_SIZE,
            f"{compiled.rule}.max_size_bytes",
            f"the payload is {r.size} bytes, more than the {flow.max_size_bytes} allowed",
            a,
        )
    if r.answers_known_request is False and r.message_type in REPLY_TYPES:
        return _deny(
            ErrorCode.POLICY_NO_REQUEST,
            "known_request",
            f"the {r.message_type} answers no request known under agreement {a.id}",
            a,
        )
    if not r.rate_ok:
        wait = r.retry_after if r.retry_after is not None else 60.0 / flow.rate_per_minute
        return Decision(
            allowed=False,
            code=ErrorCode.POLICY_RATE,
            rule=f"{compiled.rule}.rate_per_minute",
            reason=(
                f"more than {flow.rate_per_minute:g} messages per minute from {r.sender} to "
                f"{r.receiver}; retry in {wait:.1f} s"
            ),
            agreement_id=a.id,
            retry_after=wait,
        )
    return _allow(compiled, r.direction, r.message_type)


def _allow(compiled: Any, direction: str, message_type: str) -> Decision:
    """The allowing decision of a flow, made once per direction and type."""
    decision: Decision | None = compiled.allow.get((direction, message_type))
    if decision is None:
        sender, _, receiver = compiled.key.partition("->")
        decision = compiled.allow[(direction, message_type)] = Decision(
            allowed=True,
            code=ErrorCode.POLICY_ALLOW,
            rule=compiled.rule,
            reason=(
                f"agreement {compiled.agreement_id} allows {message_type} "
                f"from {sender} to {receiver}"
            ),
            agreement_id=compiled.agreement_id,
            redactions=compiled.flow.redactions if direction == "outbound" else (),
        )
    return decision


def violation(decision: Decision, **context: Any) -> PolicyViolation:
    """The ``PolicyViolation`` to raise for a denying decision."""
    return PolicyViolation(
        decision.reason,
        code=decision.code,
        agreement=decision.agreement_id,
        rule=decision.rule,
        **context,
    )

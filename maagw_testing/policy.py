"""Factories for policy tests: a permissive agreement between XA and XB and a request it allows.

Each takes keyword overrides, so a test states only the one rule or field it is about.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from gateway.config.agreement import Agreement
from gateway.policy.engine import PolicyRequest

LOCAL, PARTNER = "XA", "XB"
#: the time requests are evaluated at unless a test says otherwise (inside the agreement)
NOW = datetime(2027, 6, 1, 12, 0, tzinfo=UTC)


def flow_rules(**overrides: Any) -> dict[str, Any]:
    """One flow's rules, permissive enough that a default request passes."""
    rules: dict[str, Any] = {
        "message_types": ["maa.request", "maa.reply", "maa.refusal"],
        "data_categories": ["goods", "transport", "trader", "personal"],
        "personal_data": True,
        "purpose_required": ["maa.request"],
        "onward_transfer": "forbidden",
        "redactions": ["persons.*.birth_date"],
        "max_size_bytes": 1000,
        "rate_per_minute": 60,
        "payload_formats": ["national-json", "maa-xml"],
    }
    rules.update(overrides)
    return rules


def agreement_data(flow: dict[str, Any] | None = None, **overrides: Any) -> dict[str, Any]:
    """A valid bilateral-maa agreement between XA and XB with the same rules both ways."""
    rules = flow if flow is not None else flow_rules()
    data: dict[str, Any] = {
        "id": "xa-xb-test",
        "kind": "bilateral-maa",
        "title": "Test agreement",
        "parties": [LOCAL, PARTNER],
        "valid_from": "2026-01-01",
        "valid_until": "2031-12-31",
        "status": "active",
        "retention_days": 365,
        "flows": {f"{LOCAL}->{PARTNER}": rules, f"{PARTNER}->{LOCAL}": rules},
    }
    data.update(overrides)
    return data


def make_agreement(flow: dict[str, Any] | None = None, **overrides: Any) -> Agreement:
    """Build a validated agreement from ``agreement_data``."""
    return Agreement.model_validate(agreement_data(flow, **overrides))


def make_request(direction: str = "outbound", **overrides: Any) -> PolicyRequest:
    """A request that the default agreement allows, in the given direction."""
    partner = overrides.pop("partner", PARTNER)
    sender, receiver = (LOCAL, partner) if direction == "outbound" else (partner, LOCAL)
    fields: dict[str, Any] = {
        "direction": direction,
        "sender": sender,
        "receiver": receiver,
        "message_type": "maa.request",
        "categories": frozenset({"goods", "trader"}),
        "declared_categories": frozenset({"goods", "trader"}),
        "size": 500,
        "payload_format": "maa-xml",
        "at": NOW,
        "purpose": "verification of origin",
        "legal_basis": "Art. 4 of the agreement",
    }
    fields.update(overrides)
    return PolicyRequest(**fields)

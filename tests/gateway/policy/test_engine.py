"""Tests for gateway/policy/engine.py: every refusal code, the order of the rules, finding the agreement."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.config.agreement import TYPES_BY_KIND
from gateway.errors import PolicyViolation
from gateway.policy.engine import DECISION_CODES, evaluate, find_agreement, violation
from maagw_testing.policy import (
    LOCAL,
    NOW,
    PARTNER,
    flow_rules,
    make_agreement,
    make_request,
)

MAA_TYPES = sorted(TYPES_BY_KIND["bilateral-maa"])
CATEGORIES = ["goods", "transport", "trader", "enforcement", "financial"]


# --- every code, both directions ----------------------------------------------------------

CASES: list[tuple[str, dict[str, Any] | None, dict[str, Any], str]] = [
    # (case, agreement overrides or None for "no agreement", request overrides, expected code)
    ("allowed", {}, {}, "POLICY_ALLOW"),
    ("no agreement", None, {}, "POLICY_NO_AGREEMENT"),
    ("partner not a party", {}, {"partner": "XC"}, "POLICY_NOT_PARTY"),
    ("terminated", {"status": "terminated", "status_reason": "denounced"}, {}, "POLICY_TERMINATED"),
    ("suspended", {"status": "suspended", "status_reason": "review"}, {}, "POLICY_SUSPENDED"),
    (
        "a second before valid_from",
        {},
        {"at": datetime(2025, 12, 31, 23, 59, 59, tzinfo=UTC)},
        "POLICY_NOT_YET_VALID",
    ),
    ("first second of valid_from", {}, {"at": datetime(2026, 1, 1, tzinfo=UTC)}, "POLICY_ALLOW"),
    (
        "last second of valid_until",
        {},
        {"at": datetime(2031, 12, 31, 23, 59, 59, tzinfo=UTC)},
        "POLICY_ALLOW",
    ),
    ("day after valid_until", {}, {"at": datetime(2032, 1, 1, tzinfo=UTC)}, "POLICY_EXPIRED"),
    ("type not in flow", {}, {"message_type": "maa.spontaneous"}, "POLICY_MESSAGE_TYPE"),
    ("format not allowed", {}, {"payload_format": "ncts-xml"}, "POLICY_FORMAT"),
    (
        "category not allowed",
        {},
        {"categories": frozenset({"goods", "financial"}), "declared_categories": None},
        "POLICY_DATA_CATEGORY",
    ),
    (
        "personal data not allowed",
        {"flow": flow_rules(personal_data=False, data_categories=["goods", "trader"])},
        {"categories": frozenset({"goods", "personal"}), "declared_categories": None},
        "POLICY_PERSONAL_DATA",
    ),
    (
        "declares fewer categories than it contains",
        {},
        {
            "categories": frozenset({"goods", "personal"}),
            "declared_categories": frozenset({"goods"}),
        },
        "POLICY_DATA_CATEGORY",
    ),
    ("declares nothing at all", {}, {"declared_categories": frozenset()}, "POLICY_DATA_CATEGORY"),
    ("not declared", {}, {"declared_categories": None}, "POLICY_ALLOW"),
    ("purpose missing", {}, {"purpose": None}, "POLICY_PURPOSE_MISSING"),
    ("legal basis blank", {}, {"legal_basis": "  "}, "POLICY_PURPOSE_MISSING"),
    (
        "purpose not required for a reply",
        {},
        {"message_type": "maa.reply", "purpose": None, "answers_known_request": True},
        "POLICY_ALLOW",
    ),
    ("at the size limit", {}, {"size": 1000}, "POLICY_ALLOW"),
    ("over the size limit", {}, {"size": 1001}, "POLICY_SIZE"),
    (
        "reply to an unknown request",
        {},
        {"message_type": "maa.reply", "answers_known_request": False},
        "POLICY_NO_REQUEST",
    ),
    (
        "refusal of an unknown request",
        {},
        {"message_type": "maa.refusal", "answers_known_request": False},
        "POLICY_NO_REQUEST",
    ),
    ("rate limiter said no", {}, {"rate_ok": False, "retry_after": 2.5}, "POLICY_RATE"),
]


@pytest.mark.parametrize("direction", ["outbound", "inbound"])
@pytest.mark.parametrize(
    ("agreement_overrides", "request_overrides", "expected"),
    [pytest.param(a, r, e, id=case) for case, a, r, e in CASES],
)
def test_every_code_in_both_directions(
    direction: str,
    agreement_overrides: dict[str, Any] | None,
    request_overrides: dict[str, Any],
    expected: str,
) -> None:
    """Each rule yields its own code, the same way outbound and inbound."""
    agreement = None if agreement_overrides is None else make_agreement(**agreement_overrides)
    decision = evaluate(agreement, make_request(direction, **request_overrides))
    assert decision.code == expected
    assert decision.allowed is (expected == "POLICY_ALLOW")
    assert decision.reason
    assert decision.agreement_id == (agreement.id if agreement else None)


def test_every_code_is_covered_by_the_table() -> None:
    """The table exercises every code the engine can return."""
    assert {case[3] for case in CASES} == set(DECISION_CODES)


@pytest.mark.parametrize("direction", ["outbound", "inbound"])
def test_missing_flow_for_a_direction_is_a_message_type_refusal(direction: str) -> None:
    """An agreement with a flow one way only refuses every message the other way."""
    agreement = make_agreement(
        flows={f"{PARTNER}->{LOCAL}": flow_rules()},
    )
    decision = evaluate(agreement, make_request(direction))
    expected = "POLICY_MESSAGE_TYPE" if direction == "outbound" else "POLICY_ALLOW"
    assert decision.code == expected
    if direction == "outbound":
        assert decision.rule == f"flows.{LOCAL}->{PARTNER}"


@pytest.mark.parametrize(
    ("request_overrides", "rule"),
    [
        ({"message_type": "maa.spontaneous"}, "flows.XA->XB.message_types"),
        ({"payload_format": "x"}, "flows.XA->XB.payload_formats"),
        ({"categories": frozenset({"financial"})}, "flows.XA->XB.data_categories"),
        ({"declared_categories": frozenset({"goods"})}, "declared_categories"),
        ({"purpose": ""}, "flows.XA->XB.purpose_required"),
        ({"size": 10**6}, "flows.XA->XB.max_size_bytes"),
        ({"rate_ok": False}, "flows.XA->XB.rate_per_minute"),
        ({}, "flows.XA->XB"),
    ],
)
def test_decision_names_the_rule(request_overrides: dict[str, Any], rule: str) -> None:
    """A decision names the agreement rule that decided it."""
    assert evaluate(make_agreement(), make_request(**request_overrides)).rule == rule


def test_first_failing_rule_decides_in_documented_order() -> None:
    """With every rule broken, fixing them one at a time walks the codes in the documented order."""
    broken = {
        "status": "terminated",
        "status_reason": "denounced",
        "valid_from": "2030-01-01",
        "valid_until": "2031-01-01",
    }
    request_fixes: list[tuple[str, dict[str, Any]]] = [
        ("POLICY_NOT_PARTY", {"partner": PARTNER}),
        ("POLICY_TERMINATED", {}),
        ("POLICY_SUSPENDED", {}),
        ("POLICY_NOT_YET_VALID", {}),
        ("POLICY_EXPIRED", {}),
        ("POLICY_MESSAGE_TYPE", {"message_type": "maa.reply"}),
        ("POLICY_FORMAT", {"payload_format": "maa-xml"}),
        ("POLICY_DATA_CATEGORY", {"categories": frozenset({"personal"})}),
        ("POLICY_PERSONAL_DATA", {"categories": frozenset({"goods"})}),
        ("POLICY_DATA_CATEGORY", {"declared_categories": None}),
        ("POLICY_PURPOSE_MISSING", {"purpose": "p", "legal_basis": "b"}),
        ("POLICY_SIZE", {"size": 10}),
        ("POLICY_NO_REQUEST", {"answers_known_request": True}),
        ("POLICY_RATE", {"rate_ok": True}),
        ("POLICY_ALLOW", {}),
    ]
    agreement_fixes = {
        "POLICY_TERMINATED": {"status": "suspended", "status_reason": "review"},
        "POLICY_SUSPENDED": {"status": "active", "status_reason": ""},
        "POLICY_NOT_YET_VALID": {"valid_from": "2026-01-01", "valid_until": "2026-12-31"},
        "POLICY_EXPIRED": {"valid_until": "2031-12-31"},
    }
    flow = flow_rules(
        personal_data=False,
        data_categories=["goods"],
        message_types=["maa.request", "maa.reply"],
        purpose_required=["maa.request", "maa.reply"],
    )
    request = make_request(
        partner="XC",
        message_type="maa.spontaneous",
        payload_format="pdf",
        categories=frozenset({"goods", "financial", "personal"}),
        declared_categories=frozenset(),
        purpose=None,
        size=10**6,
        answers_known_request=False,
        rate_ok=False,
    )
    seen: list[str] = []
    for code, fix in request_fixes:
        decision = evaluate(make_agreement(flow, **broken), request)
        seen.append(decision.code)
        assert decision.code == code, seen
        broken.update(agreement_fixes.get(code, {}))
        partner = fix.pop("partner", None)
        if partner:
            fix["receiver"] = partner
        request = dataclasses.replace(request, **fix)
    assert set(seen) == set(DECISION_CODES) - {"POLICY_NO_AGREEMENT"}


def test_reply_type_check_ignores_requests() -> None:
    """answers_known_request only concerns replies and refusals."""
    request = make_request(message_type="maa.request", answers_known_request=False)
    assert evaluate(make_agreement(), request).allowed


def test_redactions_only_on_allowed_outbound() -> None:
    """An allowed outbound decision carries the flow's redactions; inbound and refusals none."""
    agreement = make_agreement()
    assert evaluate(agreement, make_request("outbound")).redactions == ("persons.*.birth_date",)
    assert evaluate(agreement, make_request("inbound")).redactions == ()
    assert evaluate(agreement, make_request("outbound", size=10**6)).redactions == ()


def test_status_reason_is_in_the_refusal() -> None:
    """A suspended agreement's refusal says why it is suspended."""
    agreement = make_agreement(status="suspended", status_reason="audit of XB's data protection")
    assert "audit of XB's data protection" in evaluate(agreement, make_request()).reason


def test_rate_refusal_falls_back_to_the_flow_rate() -> None:
    """Without the limiter's wait, POLICY_RATE estimates it from the flow's rate."""
    decision = evaluate(make_agreement(), make_request(rate_ok=False))
    assert decision.retry_after == pytest.approx(60 / 60)


def test_violation_carries_code_and_rule() -> None:
    """violation() turns a refusal into a PolicyViolation with the same code and context."""
    decision = evaluate(make_agreement(), make_request(size=10**6))
    error = violation(decision, message_id="m-1")
    assert isinstance(error, PolicyViolation)
    assert error.code == "POLICY_SIZE"
    assert error.context == {
        "agreement": "xa-xb-test",
        "rule": "flows.XA->XB.max_size_bytes",
        "message_id": "m-1",
    }


# --- finding the agreement ----------------------------------------------------------------


def test_find_agreement_by_id_and_by_coverage() -> None:
    """An id wins; without one, the agreement covering the pair and type is found."""
    maa = make_agreement()
    mra = make_agreement(
        flow_rules(message_types=["mra.aeo-status"], purpose_required=[]),
        id="mra",
        kind="aeo-mra",
    )
    agreements = {maa.id: maa, mra.id: mra}
    assert find_agreement(agreements, "mra", "XA", "XB", "maa.request") is mra
    assert find_agreement(agreements, "nope", "XA", "XB", "maa.request") is None
    assert find_agreement(agreements, None, "XA", "XB", "maa.request") is maa
    assert find_agreement(agreements, None, "XB", "XA", "mra.aeo-status") is mra
    # a type no flow allows still finds the agreement of the right kind, which refuses it
    assert find_agreement(agreements, None, "XA", "XB", "maa.spontaneous") is maa
    assert find_agreement(agreements, None, "XA", "XC", "maa.request") is None


def test_find_agreement_prefers_active_and_reports_ambiguity() -> None:
    """An active agreement beats a suspended one; two active ones are ambiguous."""
    old = make_agreement(id="old", status="suspended", status_reason="replaced")
    new = make_agreement(id="new")
    assert find_agreement({"old": old, "new": new}, None, "XA", "XB", "maa.request") is new
    assert find_agreement({"old": old}, None, "XA", "XB", "maa.request") is old
    twin = make_agreement(id="twin")
    assert find_agreement({"new": new, "twin": twin}, None, "XA", "XB", "maa.request") is None
    later = make_agreement(id="later", valid_from="2032-01-01", valid_until="2040-01-01")
    found = find_agreement({"new": new, "later": later}, None, "XA", "XB", "maa.request", at=NOW)
    assert found is new


# --- the engine as a property -------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(
    allowed_types=st.sets(st.sampled_from(MAA_TYPES), min_size=1),
    allowed_categories=st.sets(st.sampled_from(CATEGORIES)),
    personal_data=st.booleans(),
    message_type=st.sampled_from([*MAA_TYPES, "mra.aeo-status"]),
    categories=st.sets(st.sampled_from([*CATEGORIES, "personal"])),
    direction=st.sampled_from(["outbound", "inbound"]),
)
def test_no_message_passes_an_agreement_that_does_not_permit_it(
    allowed_types: set[str],
    allowed_categories: set[str],
    personal_data: bool,
    message_type: str,
    categories: set[str],
    direction: str,
) -> None:
    """A message passes exactly when its type and every category it contains are permitted."""
    agreement = make_agreement(
        flow_rules(
            message_types=sorted(allowed_types),
            data_categories=sorted(allowed_categories),
            personal_data=personal_data,
        )
    )
    request = make_request(
        direction,
        message_type=message_type,
        categories=frozenset(categories),
        declared_categories=frozenset(categories),
        answers_known_request=True,
    )
    decision = evaluate(agreement, request)
    permitted_categories = allowed_categories | ({"personal"} if personal_data else set())
    permitted = message_type in allowed_types and categories <= permitted_categories
    assert decision.allowed is permitted
    if not permitted:
        assert decision.code in {
            "POLICY_MESSAGE_TYPE",
            "POLICY_DATA_CATEGORY",
            "POLICY_PERSONAL_DATA",
        }


def test_evaluate_requires_an_aware_time() -> None:
    """A naive datetime is a programming error, not a silent allow."""
    with pytest.raises(TypeError):
        evaluate(make_agreement(), make_request(at=datetime(2027, 1, 1)))

"""Tests for gateway/policy.py: the agreement model, the engine, redactions and rate limits."""

from __future__ import annotations

import copy
import dataclasses
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.config.agreement import TYPES_BY_KIND, Agreement, load_agreement, load_agreements
from gateway.errors import ConfigError, PolicyViolation
from gateway.policy.engine import Code, Decision, PolicyRequest, evaluate, find_agreement, violation
from gateway.policy.explain import explain
from gateway.policy.rate_limit import RateLimiter, TokenBucket
from gateway.policy.redaction import apply_redactions, parse_path

ROOT = Path(__file__).resolve().parents[3]
LOCAL, PARTNER = "XA", "XB"
NOW = datetime(2027, 6, 1, 12, 0, tzinfo=UTC)
MAA_TYPES = sorted(TYPES_BY_KIND["bilateral-maa"])
CATEGORIES = ["goods", "transport", "trader", "enforcement", "financial"]


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
    assert {case[3] for case in CASES} == {code.value for code in Code}


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
    assert set(seen) == {code.value for code in Code} - {"POLICY_NO_AGREEMENT"}


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


@pytest.mark.parametrize(
    ("decision", "needles"),
    [
        (
            Decision(True, "POLICY_ALLOW", "flows.XA->XB", "ok", "a", ("x.y", "z")),
            ["ALLOW POLICY_ALLOW", "flows.XA->XB", "- x.y", "- z"],
        ),
        (Decision(True, "POLICY_ALLOW", "flows.XA->XB", "ok", "a"), ["redactions: none"]),
        (
            Decision(False, "POLICY_RATE", "flows.XA->XB.rate_per_minute", "busy", "a", (), 3.0),
            ["DENY POLICY_RATE", "retry after 3.0 s", "busy"],
        ),
        (Decision(False, "POLICY_NO_AGREEMENT", "agreement", "none", None), ["(none)"]),
    ],
)
def test_explain_prints_decision_rule_and_redactions(
    decision: Decision, needles: list[str]
) -> None:
    """explain() shows the verdict, code, rule, reason, redactions and any retry delay."""
    text = explain(decision)
    for needle in needles:
        assert needle in text


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


# --- loading ------------------------------------------------------------------------------


def test_example_agreements_load_and_allow_a_request() -> None:
    """The shipped example config holds a bilateral MAA agreement and an AEO MRA, valid now."""
    agreements = load_agreements(ROOT / "config" / "agreements")
    kinds = {a.kind for a in agreements.values()}
    assert kinds == {"bilateral-maa", "aeo-mra"}
    for agreement in agreements.values():
        assert set(agreement.parties) == {"XA", "XB"}
        assert agreement.status == "active"
        assert agreement.valid_at(datetime.now(UTC))


def _write(tmp_path: Path, text: str, name: str = "a.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


VALID = (ROOT / "config" / "agreements" / "xa-xb-maa.toml").read_text(encoding="utf-8")


@pytest.mark.parametrize(
    ("old", "new", "needles"),
    [
        ('kind = "bilateral-maa"', 'kind = "trade"', ["kind"]),
        ("valid_until = 2031-12-31", "valid_until = 2025-01-01", ["valid_until", "before"]),
        ('status = "active"', 'status = "suspended"', ["status_reason", "required"]),
        ('parties = ["XA", "XB"]', 'parties = ["XA", "XA"]', ["parties", "differ"]),
        ("retention_days = 3650", "retention_days = 0", ["retention_days"]),
        ("retention_days = 3650", "retention_days = 3650\ncolour = 1", ["colour", "xtra"]),
        (
            'purpose_required = ["maa.request"]\n',
            "purpose_required = []\n",
            ['flows."XA->XB".purpose_required', "maa.request"],
        ),
        ('[flows."XA->XB"]', '[flows."XA->XC"]', ['flows."XA->XC"', "SENDER->RECEIVER"]),
        (
            'message_types = ["maa.request", "maa.reply", "maa.refusal"]',
            'message_types = ["maa.request", "mra.aeo-status"]',
            ['flows."XA->XB".message_types', "mra.aeo-status"],
        ),
        (
            'redactions = ["persons.*.identityDocuments", "persons.*.birthPlace"',
            'redactions = ["persons..x"',
            ['flows."XA->XB".redactions', "persons..x"],
        ),
        (
            'redactions = ["persons.*.identityDocuments", "persons.*.birthPlace"',
            'redactions = ["persons.*"',
            ["last segment"],
        ),
        (
            'onward_transfer = "consent-required"',
            'onward_transfer = "anyone"',
            ['flows."XA->XB".onward_transfer'],
        ),
        ("personal_data = true", "personal_data = false", ["personal_data is false"]),
        ("max_size_bytes = 5_000_000", "max_size_bytes = -1", ["max_size_bytes"]),
        ("id = ", "id = = ", ["not valid TOML"]),
    ],
)
def test_bad_agreement_names_file_key_and_problem(
    tmp_path: Path, old: str, new: str, needles: list[str]
) -> None:
    """A bad agreement file is a ConfigError naming the file, the key and the problem."""
    assert old in VALID
    path = _write(tmp_path, VALID.replace(old, new, 1))
    with pytest.raises(ConfigError) as caught:
        load_agreement(path)
    message = str(caught.value)
    assert str(path) in message
    for needle in needles:
        assert needle in message


def test_missing_file_and_directory_are_config_errors(tmp_path: Path) -> None:
    """A missing agreement file or directory is a ConfigError, not a traceback."""
    with pytest.raises(ConfigError, match="cannot read"):
        load_agreement(tmp_path / "none.toml")
    with pytest.raises(ConfigError, match="not found"):
        load_agreements(tmp_path / "none")


def test_duplicate_ids_are_refused(tmp_path: Path) -> None:
    """Two files declaring the same agreement id are a ConfigError naming both."""
    first = _write(tmp_path, VALID, "a.toml")
    second = _write(tmp_path, VALID, "b.toml")
    with pytest.raises(ConfigError) as caught:
        load_agreements(tmp_path)
    assert str(first) in str(caught.value)
    assert str(second) in str(caught.value)


def test_agreement_is_frozen() -> None:
    """A loaded agreement cannot be changed in place."""
    agreement = make_agreement()
    with pytest.raises(ValueError, match="frozen"):
        agreement.status = "terminated"  # type: ignore[misc]


# --- redactions ---------------------------------------------------------------------------

BODY: dict[str, Any] = {
    "case": "C-1",
    "persons": [
        {"name": "A", "birth_date": "1970-01-01", "ids": {"passport": "P1", "tax": "T1"}},
        {"name": "B"},
    ],
    "goods": {"hs": "8703", "value": 10},
    "meta": {"a": {"secret": 1, "keep": 2}, "b": {"secret": 3}},
}


@pytest.mark.parametrize(
    ("paths", "expected"),
    [
        ([], BODY),
        (["case"], {k: v for k, v in BODY.items() if k != "case"}),
        (
            ["persons.*.birth_date"],
            {
                **BODY,
                "persons": [{"name": "A", "ids": {"passport": "P1", "tax": "T1"}}, {"name": "B"}],
            },
        ),
        (
            ["persons.*.ids.tax"],
            {
                **BODY,
                "persons": [
                    {"name": "A", "birth_date": "1970-01-01", "ids": {"passport": "P1"}},
                    {"name": "B"},
                ],
            },
        ),
        (["goods.value", "nowhere.at.all"], {**BODY, "goods": {"hs": "8703"}}),
        (["meta.*.secret"], {**BODY, "meta": {"a": {"keep": 2}, "b": {}}}),
        (["persons.name"], BODY),
        (["case.sub"], BODY),
    ],
)
def test_apply_redactions(paths: list[str], expected: dict[str, Any]) -> None:
    """Redactions remove exactly the addressed values and leave the input untouched."""
    before = copy.deepcopy(BODY)
    assert apply_redactions(BODY, paths) == expected
    assert before == BODY


@pytest.mark.parametrize("path", ["", "a..b", "a.*", ".a", "a.b*"])
def test_bad_redaction_paths(path: str) -> None:
    """A malformed redaction path is refused."""
    with pytest.raises(ValueError, match="bad redaction path"):
        parse_path(path)


KEYS = st.sampled_from(["a", "b", "c", "name", "birth_date"])
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=3),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(KEYS, children, max_size=4),
    max_leaves=20,
)
PATTERNS = st.lists(
    st.lists(KEYS | st.just("*"), min_size=0, max_size=3).flatmap(
        lambda prefix: KEYS.map(lambda last: [*prefix, last])
    ),
    max_size=3,
)


def _nodes(node: Any, path: tuple[Any, ...] = ()) -> dict[tuple[Any, ...], Any]:
    """Every node's concrete path (dict keys, list indices) and, for scalars, its value."""
    found: dict[tuple[Any, ...], Any] = {
        path: node if not isinstance(node, dict | list) else type(node)
    }
    items = (
        node.items()
        if isinstance(node, dict)
        else enumerate(node)
        if isinstance(node, list)
        else []
    )
    for key, child in items:
        found.update(_nodes(child, (*path, key)))
    return found


def _matched(path: tuple[Any, ...], pattern: list[str]) -> bool:
    """Whether ``pattern`` addresses ``path`` or one of its ancestors."""
    if len(pattern) > len(path):
        return False
    return all(
        seg == "*" or (isinstance(part, str) and seg == part)
        for seg, part in zip(pattern, path, strict=False)
    )


@settings(max_examples=300, deadline=None)
@given(body=st.dictionaries(KEYS, JSON, max_size=5), patterns=PATTERNS)
def test_redactions_remove_exactly_the_configured_paths(
    body: dict[str, Any], patterns: list[list[str]]
) -> None:
    """Every node under a configured path is gone, every other one intact, the input unchanged."""
    before = copy.deepcopy(body)
    result = apply_redactions(body, [".".join(p) for p in patterns])
    assert body == before
    original = _nodes(before)
    kept = {
        path: value
        for path, value in original.items()
        if not any(_matched(path, p) for p in patterns)
    }
    assert _nodes(result) == kept


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


# --- rate limits --------------------------------------------------------------------------


def test_token_bucket_burst_then_waits() -> None:
    """A bucket gives its burst at once, then says how long until the next token."""
    bucket = TokenBucket(rate_per_minute=60, burst=3)
    assert [bucket.try_take(100.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.try_take(100.0) == pytest.approx(1.0)
    assert bucket.try_take(100.5) == pytest.approx(0.5)
    assert bucket.try_take(101.0) == 0.0


def test_token_bucket_refill_is_capped_at_burst() -> None:
    """A long idle period refills the bucket only up to its burst."""
    bucket = TokenBucket(rate_per_minute=6, burst=2)
    bucket.try_take(0.0)
    bucket.try_take(0.0)
    taken = [bucket.try_take(10_000.0) for _ in range(3)]
    assert taken[:2] == [0.0, 0.0]
    assert taken[2] == pytest.approx(10.0)


@pytest.mark.parametrize(("rate", "burst"), [(0, None), (-1, None), (10, 0.5)])
def test_token_bucket_rejects_bad_sizes(rate: float, burst: float | None) -> None:
    """A bucket needs a positive rate and room for at least one token."""
    with pytest.raises(ValueError, match="must"):
        TokenBucket(rate, burst)


@settings(max_examples=200, deadline=None)
@given(
    rate=st.floats(min_value=1, max_value=600),
    burst=st.floats(min_value=1, max_value=20),
    steps=st.lists(st.floats(min_value=0, max_value=5), min_size=1, max_size=60),
)
def test_token_bucket_never_exceeds_its_rate(rate: float, burst: float, steps: list[float]) -> None:
    """Over any span of time, tokens taken never exceed burst + rate x elapsed."""
    bucket = TokenBucket(rate, burst)
    now, taken = 0.0, 0
    for step in steps:
        now += step
        wait = bucket.try_take(now)
        assert wait >= 0.0
        taken += wait == 0.0
        assert taken <= burst + rate * now / 60 + 1e-9


@pytest.mark.parametrize("direction", ["outbound", "inbound"])
def test_rate_limit_is_back_pressure_in_both_directions(direction: str) -> None:
    """Past the flow's burst the limiter's wait becomes a POLICY_RATE decision with retry_after."""
    agreement = make_agreement(flow_rules(rate_per_minute=30, burst=2))
    limiter = RateLimiter()
    base = make_request(direction)
    verdicts = []
    for _ in range(3):
        wait = limiter.check(agreement, base.sender, base.receiver, now=50.0)
        decision = evaluate(
            agreement, dataclasses.replace(base, rate_ok=wait == 0.0, retry_after=wait or None)
        )
        verdicts.append((decision.code, decision.retry_after))
    assert verdicts[:2] == [("POLICY_ALLOW", None)] * 2
    assert verdicts[2][0] == "POLICY_RATE"
    assert verdicts[2][1] == pytest.approx(2.0)
    assert limiter.check(agreement, base.sender, base.receiver, now=52.0) == 0.0


def test_rate_limiter_keeps_one_bucket_per_agreement_and_direction() -> None:
    """Exhausting one direction or agreement leaves the others' allowance intact."""
    first = make_agreement(flow_rules(rate_per_minute=60, burst=1))
    second = make_agreement(flow_rules(rate_per_minute=60, burst=1), id="other")
    limiter = RateLimiter()
    assert limiter.check(first, "XA", "XB", 0.0) == 0.0
    assert limiter.check(first, "XA", "XB", 0.0) > 0
    assert limiter.check(first, "XB", "XA", 0.0) == 0.0
    assert limiter.check(second, "XA", "XB", 0.0) == 0.0
    assert limiter.check(first, "XA", "XC", 0.0) == 0.0


def test_rate_limiter_follows_a_reloaded_rate() -> None:
    """A reloaded agreement with a new rate gets a bucket of the new size."""
    limiter = RateLimiter()
    slow = make_agreement(flow_rules(rate_per_minute=1, burst=1))
    assert limiter.check(slow, "XA", "XB", 0.0) == 0.0
    assert limiter.check(slow, "XA", "XB", 0.0) == pytest.approx(60.0)
    fast = make_agreement(flow_rules(rate_per_minute=600, burst=5))
    assert [limiter.check(fast, "XA", "XB", 0.0) for _ in range(5)] == [0.0] * 5


def test_token_bucket_wait_tells_without_taking() -> None:
    """``wait`` reports the same as ``try_take`` would, and leaves the token there."""
    bucket = TokenBucket(rate_per_minute=60, burst=1)
    assert bucket.wait(0.0) == 0.0
    assert bucket.wait(0.0) == 0.0
    assert bucket.try_take(0.0) == 0.0
    assert bucket.wait(0.5) == pytest.approx(0.5)
    assert bucket.try_take(0.5) == pytest.approx(0.5)


def test_refusals_have_an_allowance_the_size_of_all_the_senders_flows() -> None:
    """The refusal allowance sums the sender's flows in every agreement; it does not touch theirs."""
    first = make_agreement(flow_rules(rate_per_minute=60, burst=2))
    second = make_agreement(flow_rules(rate_per_minute=60, burst=1), id="other")
    agreements = {a.id: a for a in (first, second)}
    limiter = RateLimiter()
    for _ in range(3):
        assert limiter.refusal_wait(agreements, "XA", "XB", 0.0) == 0.0
        limiter.refused(agreements, "XA", "XB", 0.0)
    # three refusals (bursts 2 + 1) used it up; it refills at 60 + 60 a minute
    assert limiter.refusal_wait(agreements, "XA", "XB", 0.0) == pytest.approx(0.5)
    assert limiter.refusal_wait(agreements, "XA", "XB", 0.5) == 0.0
    # the flows' own buckets, and the other direction's allowance, are untouched
    assert limiter.check(first, "XA", "XB", 0.0) == 0.0
    assert limiter.refusal_wait(agreements, "XB", "XA", 0.0) == 0.0


def test_a_sender_without_any_flow_gets_the_small_default_refusal_allowance() -> None:
    """A partner no agreement lets send may still be refused, but only so often."""
    from gateway.policy.rate_limit import REFUSALS_WITHOUT_FLOW_PER_MINUTE

    agreements = {"a": make_agreement()}
    limiter = RateLimiter()
    refused = 0
    while limiter.refusal_wait(agreements, "XC", "XB", 0.0) == 0.0:
        limiter.refused(agreements, "XC", "XB", 0.0)
        refused += 1
        assert refused <= 1000
    assert refused == REFUSALS_WITHOUT_FLOW_PER_MINUTE


def test_evaluate_requires_an_aware_time() -> None:
    """A naive datetime is a programming error, not a silent allow."""
    with pytest.raises(TypeError):
        evaluate(make_agreement(), make_request(at=datetime(2027, 1, 1)))


def test_agreement_validity_is_inclusive_of_both_days() -> None:
    """valid_at covers the whole of valid_from and valid_until (UTC days)."""
    agreement = make_agreement()
    assert agreement.valid_at(datetime(2031, 12, 31, 23, 59, tzinfo=UTC))
    assert not agreement.valid_at(datetime(2031, 12, 31, tzinfo=UTC) + timedelta(days=1))

"""Tests for gateway/policy/explain.py: a decision in words, for `maagw agreements explain`."""

from __future__ import annotations

import pytest

from gateway.policy.engine import Decision
from gateway.policy.explain import explain


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

"""A policy decision in words, for ``maagw agreements explain`` and ``maagw send --check``."""

from __future__ import annotations

from gateway.policy.engine import Decision


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

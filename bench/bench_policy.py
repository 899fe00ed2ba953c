"""Policy decisions per second on one core.

Evaluates a fixed mix of requests against the example agreements in
``config/agreements`` — mostly allowed, plus one of each common refusal — in a
single thread and prints the rate. Target: at least 100,000 decisions/s.

    .venv/bin/python bench/bench_policy.py [--seconds 3]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time
from datetime import UTC, datetime
from pathlib import Path

from gateway.config.agreement import Agreement, load_agreements
from gateway.policy.engine import PolicyRequest, evaluate

ROOT = Path(__file__).resolve().parents[1]


def requests() -> list[tuple[Agreement, PolicyRequest]]:
    """The mix: allowed both ways (8 of 14) and six typical refusals."""
    agreements = load_agreements(ROOT / "config" / "agreements")
    maa = agreements["xa-xb-maa"]
    mra = agreements["xa-xb-aeo-mra"]
    base = PolicyRequest(
        direction="outbound",
        sender="XA",
        receiver="XB",
        message_type="maa.request",
        categories=frozenset({"goods", "personal", "transport"}),
        declared_categories=frozenset({"goods", "personal", "transport"}),
        size=12_000,
        payload_format="national-json",
        at=datetime(2027, 6, 1, 12, tzinfo=UTC),
        purpose="verification of origin",
        legal_basis="Art. 4",
    )
    inbound = dataclasses.replace(base, direction="inbound", sender="XB", receiver="XA")
    status_list = dataclasses.replace(
        base,
        message_type="mra.aeo-status",
        categories=frozenset({"trader"}),
        declared_categories=None,
        payload_format="maa-xml",
    )
    reply = dataclasses.replace(base, message_type="maa.reply", answers_known_request=True)
    allowed = [(maa, base), (maa, inbound), (mra, status_list), (maa, reply)] * 2
    refused = [
        (maa, dataclasses.replace(base, message_type="maa.spontaneous")),
        (maa, dataclasses.replace(base, categories=frozenset({"biometric"}))),
        (maa, dataclasses.replace(base, declared_categories=frozenset({"goods"}))),
        (maa, dataclasses.replace(base, purpose=None)),
        (maa, dataclasses.replace(reply, answers_known_request=False)),
        (maa, dataclasses.replace(base, rate_ok=False)),
    ]
    return allowed + refused


def main() -> None:
    """Run the benchmark and print decisions per second."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="how long to measure")
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    mix = requests()
    outcomes = {evaluate(a, r).code for a, r in mix}
    for agreement, request in mix * 1000:  # warm up
        evaluate(agreement, request)
    done = 0
    started = time.perf_counter()
    deadline = started + args.seconds
    batch = mix * 100
    while time.perf_counter() < deadline:
        for agreement, request in batch:
            evaluate(agreement, request)
        done += len(batch)
    elapsed = time.perf_counter() - started
    rate = done / elapsed
    print(f"policy decisions: {done} in {elapsed:.2f} s on one core")
    print(f"  mix: {len(mix)} requests, codes {', '.join(sorted(outcomes))}")
    print(f"  {rate:,.0f} decisions/s ({1e6 / rate:.2f} µs each); target >= 100,000/s")


if __name__ == "__main__":
    main()

"""Benchmark: national-json -> maa-xml translation of a ~3 KB request, validated on both sides.

Decoding validates the JSON against the national-json JSON Schema (jsonschema-rs);
encoding builds the XML and validates it against the canonical XSD (lxml). The
process is pinned to one core where the OS allows it; the figure printed is
documents per second on that core (target >= 3,000).

    .venv/bin/python bench/bench_translate.py [--seconds 5] [--input FILE]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import adapters

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_INPUT = ROOT / "examples" / "national-json" / "maa.request.json"


def pin_to_one_core() -> str:
    """Pin this process to a single CPU; say which (or why not)."""
    if not hasattr(os, "sched_setaffinity"):
        return "not pinned (no sched_setaffinity)"
    cpu = min(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cpu})
    return f"pinned to CPU {cpu}"


def run(data: bytes, seconds: float) -> tuple[int, float]:
    """Translate ``data`` repeatedly for about ``seconds``; return (documents, elapsed)."""
    source, target = adapters.get("national-json"), adapters.get("maa-xml")
    target.encode(source.decode(data))  # compile schemas and validators outside the timing
    done, batch = 0, 200
    start = time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        for _ in range(batch):
            target.encode(source.decode(data))
        done += batch
    return done, elapsed


def main() -> None:
    """Measure and print the figure."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--input", type=Path, default=DEFAULT_INPUT)
    args = parser.parse_args()
    data = args.input.read_bytes()
    where = pin_to_one_core()
    documents, elapsed = run(data, args.seconds)
    rate = documents / elapsed
    print(f"input: {args.input.name} ({len(data)} bytes), {where}")
    print(
        f"national-json -> maa-xml, validated both sides: {documents} documents in {elapsed:.2f} s"
    )
    print(f"{rate:,.0f} documents/s on one core ({1e6 / rate:.0f} us each; target >= 3,000)")


if __name__ == "__main__":
    main()

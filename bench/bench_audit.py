"""Benchmark of the exchange log: group-commit appends, verify, export.

    .venv/bin/python bench/bench_audit.py                  # SQLite + PostgreSQL if reachable
    .venv/bin/python bench/bench_audit.py --entries 200000 --no-pg

Targets (issue 8): >= 20,000 appends/s on SQLite with many concurrent appenders,
>= 200,000 entries/s verify; the time to export 1,000,000 entries is reported.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import tempfile
import time
from pathlib import Path

from gateway.audit.chain import AuditEvent
from gateway.audit.log import AuditLog
from gateway.service.logging import configure
from maagw_testing.audit import (
    EcSigner,
    PgUnavailable,
    reset_audit_tables,
    start_scratch_pg,
    stop_scratch_pg,
)


def event(n: int, i: int) -> AuditEvent:
    return AuditEvent(
        "received",
        direction="inbound",
        partner="XB",
        agreement="XA-XB-MAA-2024",
        message_type="maa-request",
        message_id=f"msg-{n}-{i}",
        envelope_digest="ab" * 32,
        outcome="ok",
        details={"size": 4096, "appender": n},
    )


async def appends(url: str, appenders: int, total: int, signer: EcSigner) -> float:
    """Appends per second with ``appenders`` concurrent tasks, each awaiting every append."""
    log = await AuditLog.open(url, gateway_id="XA", checkpoint_signer=signer)
    per = total // appenders

    async def one(n: int) -> None:
        for i in range(per):
            await log.append(event(n, i))

    start = time.perf_counter()
    await asyncio.gather(*(one(n) for n in range(appenders)))
    elapsed = time.perf_counter() - start
    await log.close()
    return per * appenders / elapsed


async def fill(url: str, entries: int, signer: EcSigner) -> None:
    log = await AuditLog.open(
        url, gateway_id="XA", checkpoint_signer=signer, checkpoint_every=10_000
    )
    head, _ = await log.head()
    batch = 10_000
    for start in range(head, entries, batch):
        await log.append_many([event(0, i) for i in range(start, min(entries, start + batch))])
    await log.close()


async def verify(url: str, workers: int | None = None) -> tuple[int, float]:
    log = await AuditLog.open(url, gateway_id="XA", create=False)
    start = time.perf_counter()
    report = await log.verify(workers=workers)
    elapsed = time.perf_counter() - start
    await log.close()
    assert report.ok, report.lines()
    return report.entries, elapsed


async def export(url: str, out: Path) -> tuple[int, float]:
    log = await AuditLog.open(url, gateway_id="XA", create=False)
    start = time.perf_counter()
    manifest = await log.export(out)
    elapsed = time.perf_counter() - start
    await log.close()
    return int(manifest["entries"]), elapsed


async def backend(name: str, url: str, args: argparse.Namespace, work: Path) -> None:
    signer = EcSigner.generate()
    rate = await appends(url, args.appenders, args.appends, signer)
    print(
        f"{name}: {rate:,.0f} appends/s ({args.appenders} concurrent appenders, "
        f"{args.appends:,} appends, each awaited until durable)"
    )
    rate1 = await appends(url, 1, args.serial, signer)
    print(f"{name}: {rate1:,.0f} appends/s (1 appender, {args.serial} appends: one commit each)")
    entries = args.entries if name == "sqlite" else args.pg_entries
    start = time.perf_counter()
    await fill(url, entries, signer)
    print(
        f"{name}: filled to {entries:,} entries in {time.perf_counter() - start:.1f} s "
        "(append_many, 10,000 per transaction)"
    )
    for workers, label in ((1, "1 process"), (None, "default: worker processes")):
        n, elapsed = await verify(url, workers)
        print(
            f"{name}: verify {n:,} entries in {elapsed:.2f} s = {n / elapsed:,.0f} entries/s "
            f"({label})"
        )
    out = work / f"bundle-{name}"
    n, elapsed = await export(url, out)
    size = (out / "entries.jsonl").stat().st_size
    print(f"{name}: export {n:,} entries in {elapsed:.2f} s ({size / 1e6:.0f} MB entries.jsonl)")
    shutil.rmtree(out)


async def main() -> None:
    configure("console", "WARNING")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--appenders", type=int, default=500)
    parser.add_argument("--appends", type=int, default=100_000)
    parser.add_argument("--serial", type=int, default=200)
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--pg-entries", type=int, default=1_000_000)
    parser.add_argument("--no-pg", action="store_true")
    parser.add_argument(
        "--dir", type=Path, default=None, help="Work directory (default: a temp dir)."
    )
    args = parser.parse_args()
    work = args.dir or Path(tempfile.mkdtemp(prefix="bench-audit-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        await backend("sqlite", f"sqlite://{work / 'audit.db'}", args, work)
        if not args.no_pg:
            try:
                url = await asyncio.to_thread(start_scratch_pg)
            except PgUnavailable as exc:
                print(f"postgresql: skipped ({exc})")
                return
            try:
                await reset_audit_tables(url)
                await backend("postgresql", url, args, work)
            finally:
                await asyncio.to_thread(stop_scratch_pg, url)
    finally:
        if args.dir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())

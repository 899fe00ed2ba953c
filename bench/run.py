"""``make bench``: the end-to-end benchmark of two gateways, a raw-component baseline, inbound only.

Modes (``--mode``, default ``all``):

``e2e``       gateways XA and XB as separate processes (``maagw serve``) with generated
              certificates against the local RabbitMQ; the back office of XA publishes
              ``maa.request`` (3 KB, national-json) to ``maagw.outbound`` and the back
              office of XB consumes ``maagw.inbound``; XA's events are consumed too.
``baseline``  the same path with the raw components only: a sender process consuming a
              queue and POSTing over the same mutual TLS, a receiver process publishing
              with confirms (bench/_peer.py).
``inbound``   pre-signed envelopes POSTed straight to XB's partner API over several
              keep-alive mTLS connections with XA's client certificate.

For each offered load (``--loads``; ``max`` = unthrottled) it measures throughput,
latency p50/p95/p99 from publish to consume, loss and duplication by message id,
CPU milliseconds per message of each process from /proc, and peak RSS. Writes
``bench/results/<date>.json``, ``<date>.png`` (needs matplotlib) and prints a table.
Exit status: 0 every message arrived exactly once; 1 loss, duplication or a stall;
2 usage error or RabbitMQ unreachable.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
PROJECT = HERE.parent
sys.path[:0] = [str(HERE), str(PROJECT)]

import _load  # noqa: E402
import _proc  # noqa: E402
import _profile  # noqa: E402
import _report  # noqa: E402
import aio_pika  # noqa: E402
import aiohttp  # noqa: E402

from gateway.config.files import load_settings  # noqa: E402
from gateway.config.models import Settings  # noqa: E402
from gateway.demo import provision  # noqa: E402
from gateway.relay.topology import Names  # noqa: E402
from maagw_testing.broker import (  # noqa: E402
    RABBITMQ_URL,
    delete_topology,
    start_gateway_process,
    unique_prefix,
)

EXAMPLES = PROJECT / "examples"
REQUEST_JSON = EXAMPLES / "national-json" / "maa.request.json"
REQUEST_XML = EXAMPLES / "maa-xml" / "maa.request.xml"
AGREEMENT = PROJECT / "config" / "agreements" / "xa-xb-maa.toml"
RESULTS = HERE / "results"
SETTLE_SECONDS = 1.5
#: messages sent before the measured steps: schemas compile and connections open on first use
WARM_UP = 100


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="bench/run.py",
        description=__doc__.splitlines()[0] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--messages", type=int, default=3000, help="messages per load step")
    p.add_argument(
        "--loads",
        default="100,200,300,500,max",
        help="offered loads in msg/s, comma-separated; 'max' or 'unthrottled' = as fast as it goes",
    )
    p.add_argument("--mode", choices=["e2e", "inbound", "baseline", "all"], default="all")
    p.add_argument(
        "--smoke",
        action="store_true",
        help="300 messages at 200 msg/s end to end; exit 1 on loss or duplication",
    )
    p.add_argument(
        "--batching",
        choices=["off", "on", "both"],
        default="both",
        help="batching on the partner link (batch_max 32, 5 ms): end-to-end variants to run",
    )
    p.add_argument("--batch", action="store_true", help="same as --batching on")
    p.add_argument(
        "--workers",
        default="1,2",
        help="worker processes per gateway for the batched variants, comma-separated",
    )
    p.add_argument(
        "--concurrency",
        type=int,
        default=32,
        help="the gateways' [delivery] concurrency (parallel requests per partner)",
    )
    p.add_argument(
        "--prefetch",
        type=int,
        default=256,
        help="the gateways' [broker] prefetch (messages in flight; a batch fills from them)",
    )
    p.add_argument(
        "--connections", type=int, default=16, help="inbound mode: concurrent keep-alive clients"
    )
    p.add_argument(
        "--profile",
        type=int,
        default=0,
        metavar="SECONDS",
        help="also run py-spy on the gateways for SECONDS under unthrottled load",
    )
    p.add_argument("--out", type=Path, help="JSON path (default bench/results/<date>.json)")
    p.add_argument("--no-chart", action="store_true")
    p.add_argument("--keep", action="store_true", help="keep the provisioned state and logs")
    args = p.parse_args(argv)
    if args.batch:
        args.batching = "on"
    if args.smoke:
        args.messages = 300 if args.messages == 3000 else args.messages
        args.loads = "200"
        args.mode = "e2e"
        args.profile = 0
        args.batching = "on"
        args.workers = "1"
    try:
        args.workers_list = [int(x) for x in args.workers.split(",") if x.strip()]
    except ValueError:
        p.error(f"--workers {args.workers!r}: whole numbers, comma-separated")
    if not args.workers_list or min(args.workers_list) < 1:
        p.error("--workers needs at least one count of 1 or more")
    args.variants = ([(False, 1)] if args.batching in ("off", "both") else []) + (
        [(True, w) for w in args.workers_list] if args.batching in ("on", "both") else []
    )
    try:
        args.load_list = [
            None if x.strip().lower() in {"max", "unthrottled"} else float(x)
            for x in args.loads.split(",")
            if x.strip()
        ]
    except ValueError:
        p.error(f"--loads {args.loads!r}: numbers or 'max', comma-separated")
    if not args.load_list or any(x is not None and x <= 0 for x in args.load_list):
        p.error("--loads needs at least one positive rate or 'max'")
    if args.messages < 10:
        p.error("--messages must be at least 10")
    return args


def step_record(
    mode: str,
    offered: float | None,
    times: _load.StepTimes,
    acc: _load.Accounting,
    lat: list[float],
    arrivals: list[float],
    cpu: dict[str, float],
    rss: dict[str, float],
) -> dict[str, Any]:
    n = max(1, acc.unique)
    wall = times.finished - times.started
    cpu = dict(cpu)
    machine = cpu.pop("machine", None)
    return {
        "mode": mode,
        "offered": offered,
        "messages": len(times.ids),
        "sent": acc.sent,
        "received": acc.received,
        "unique": acc.unique,
        "lost": acc.lost,
        "duplicated": acc.duplicated,
        "events": acc.events,
        "stalled": times.stalled,
        "duration_s": round(wall, 2),
        "publish_s": round(times.publish_done - times.started, 2),
        "throughput": _load.steady_rate(arrivals),
        "throughput_overall": acc.unique / wall if wall > 0 else None,
        "latency_ms": {
            "p50": _load.percentile(lat, 50),
            "p95": _load.percentile(lat, 95),
            "p99": _load.percentile(lat, 99),
            "max": max(lat) if lat else None,
        },
        "cpu_s": {k: round(v, 3) for k, v in cpu.items()},
        "cpu_ms_per_msg": {k: round(1000 * v / n, 3) for k, v in cpu.items()},
        "cpu_utilisation": {k: round(v / wall, 2) for k, v in cpu.items()} if wall > 0 else {},
        "rss_peak_mb": {k: round(v, 1) for k, v in rss.items()},
        # share of all the machine's cores busy during the step, whoever used them
        "machine_busy": round(machine, 2) if machine is not None else None,
        # CPU of processes that are neither measured here nor the load generator
        "others_cpu_s": round(
            max(0.0, machine * (os.cpu_count() or 1) * wall - sum(cpu.values())), 2
        )
        if machine is not None
        else None,
    }


class Bench:
    """One run: provisioned administrations, their gateway processes, the broker connection."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.root = Path(tempfile.mkdtemp(prefix="maagw-bench-"))
        self.prefix = unique_prefix("bench")
        self.steps: list[dict[str, Any]] = []
        self.step_ids: list[list[str]] = []
        self.notes: list[str] = []
        self.profiles: dict[str, Any] = {}
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.settings: dict[str, Settings] = {}
        self.broker_pid = _proc.broker_pid()
        self.connection: Any = None
        self.collector = _load.Collector()
        self.batch = False
        self.workers = 1
        self.variant = 0
        self.all_settings: list[Settings] = []
        self.consumer: Any = None

    # ------------------------------------------------------------------ set-up
    def provision(self, batch: bool, workers: int) -> None:
        """Certificates, configuration and queue names for one variant of the gateways."""
        self.batch, self.workers = batch, workers
        self.variant += 1
        root = self.root / f"v{self.variant}"
        agreements = root / "agreements"
        agreements.mkdir(parents=True)
        # the bench sends thousands a minute: the agreement's rate limit and attempts are raised
        (agreements / AGREEMENT.name).write_text(
            AGREEMENT.read_text().replace("rate_per_minute = 600", "rate_per_minute = 6000000")
        )
        delivery = (
            f"backoff_initial = 1.0\nbackoff_max = 2.0\nconcurrency = {self.args.concurrency}"
        )
        prefix = f"{self.prefix}v{self.variant}."
        prov = provision(
            root / "gw",
            RABBITMQ_URL,
            prefixes={"XA": prefix + "xa.", "XB": prefix + "xb."},
            agreements_dir=agreements,
            extra={"delivery": delivery, "broker": f"prefetch = {self.args.prefetch}"},
            batch_max=32 if batch else 1,
        )
        self.settings = {gid: load_settings(p.config) for gid, p in prov.items()}
        self.all_settings.extend(self.settings.values())

    @property
    def variant_mode(self) -> str:
        return (
            "e2e"
            + ("-batched" if self.batch else "")
            + (f"-w{self.workers}" if self.workers > 1 else "")
        )

    async def start_gateways(self) -> None:
        extra = ("--workers", str(self.workers)) if self.workers > 1 else ()
        for gid, s in self.settings.items():
            self.procs[gid] = await asyncio.to_thread(
                start_gateway_process, s.path, self.root / f"{gid}-v{self.variant}.log", *extra
            )
        await self._connect()
        xa, xb = self.settings["XA"], self.settings["XB"]
        self.consumer = await self.collector.attach(
            self.connection, xb.name_of("maagw.inbound"), events_queue=xa.name_of("maagw.events")
        )

    async def _connect(self) -> None:
        if self.connection is None:
            self.connection = await aio_pika.connect_robust(RABBITMQ_URL)

    async def stop_gateways(self) -> None:
        for gid in ("XA", "XB"):
            proc = self.procs.pop(gid, None)
            if proc is not None:
                await asyncio.to_thread(_stop, proc)
        if self.consumer is not None:
            with contextlib.suppress(Exception):
                await self.consumer.close()
            self.consumer = None

    async def close(self) -> None:
        await self.stop_gateways()
        for proc in self.procs.values():
            _stop(proc)
        if self.connection is not None:
            await self.connection.close()
        for s in self.all_settings:
            with contextlib.suppress(Exception):
                await delete_topology(RABBITMQ_URL, Names(s.broker.prefix), list(s.partners))
        if self.args.keep:
            print(f"state and gateway logs kept in {self.root}")
        else:
            shutil.rmtree(self.root, ignore_errors=True)

    def _pids(self, a: str | None, b: str | None) -> dict[str, int | None]:
        return {
            "A": self.procs[a].pid if a else None,
            "B": self.procs[b].pid if b else None,
            "broker": self.broker_pid,
        }

    def _rss(self, a: str | None, b: str | None) -> dict[str, float]:
        """Peak RSS of each side: of all its processes together when it runs workers."""
        out = {}
        for side, name in (("A", a), ("B", b)):
            if name:
                out[side] = sum(_proc.memory_mb(pid) for pid in _proc.tree(self.procs[name].pid))
        return out

    def _check_alive(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}; see {self.root}")

    # ------------------------------------------------------------------ modes
    async def load_series(
        self,
        mode: str,
        target: _load.Target,
        body: bytes,
        collector: _load.Collector,
        sides: tuple[str, str],
        want_event: str | None,
    ) -> None:
        warm = _load.message_ids("warm", WARM_UP)
        await _load.drive(
            self.connection, target, body, warm, None, collector, want_event=want_event, linger=0.0
        )
        await asyncio.sleep(SETTLE_SECONDS)
        for offered in self.args.load_list:
            self._check_alive()
            ids = _load.message_ids(mode[:1] + _report.offered_label(offered), self.args.messages)
            meter = _proc.CpuMeter(self._pids(*sides))
            meter.start()
            times = await _load.drive(
                self.connection,
                target,
                body,
                ids,
                offered,
                collector,
                want_event=want_event,
                linger=0.0,
            )
            cpu = meter.stop()
            await asyncio.sleep(SETTLE_SECONDS)
            self._add_step(mode, offered, times, collector, cpu, self._rss(*sides))

    def _add_step(
        self,
        mode: str,
        offered: float | None,
        times: _load.StepTimes,
        collector: _load.Collector,
        cpu: dict[str, float],
        rss: dict[str, float],
    ) -> None:
        acc = _load.account(times.ids, collector.arrivals, collector.events)
        arrivals = [collector.first_arrival[m] for m in times.ids if m in collector.first_arrival]
        record = step_record(
            mode, offered, times, acc, _load.latencies(times, collector), arrivals, cpu, rss
        )
        self.steps.append(record)
        self.step_ids.append(times.ids)
        lat = record["latency_ms"]
        print(
            f"  {mode:<9} offered {_report.offered_label(offered):>4}: "
            f"{record['unique']}/{record['sent']} arrived, {record['duplicated']} dup, "
            f"{record['throughput']:.0f} msg/s, p50 {lat['p50']:.1f} ms, p99 {lat['p99']:.1f} ms, "
            f"CPU ms/msg A {record['cpu_ms_per_msg'].get('A', 0):.2f} "
            f"B {record['cpu_ms_per_msg'].get('B', 0):.2f} "
            f"broker {record['cpu_ms_per_msg'].get('broker', 0):.2f}, "
            f"machine busy {100 * (record['machine_busy'] or 0):.0f} %"
            + (" STALLED" if times.stalled else ""),
            flush=True,
        )

    async def e2e(self) -> None:
        xa = self.settings["XA"]
        mode = self.variant_mode
        print(f"{mode}: XA -> XB through both gateways", flush=True)
        target = _load.Target(
            xa.name_of("maagw.outbound"), "XB", headers={"x-maagw-format": "national-json"}
        )
        await self.load_series(
            mode, target, REQUEST_JSON.read_bytes(), self.collector, ("XA", "XB"), "delivered"
        )
        if self.args.profile:
            await self.profile_e2e(target)

    async def profile_e2e(self, target: _load.Target) -> None:
        seconds = self.args.profile
        n = max(self.args.messages, seconds * 700)
        ids = _load.message_ids("prof", n)
        print(f"profiling XA and XB for {seconds} s under unthrottled load ({n} messages)")
        drive = asyncio.ensure_future(
            _load.drive(
                self.connection,
                target,
                REQUEST_JSON.read_bytes(),
                ids,
                None,
                self.collector,
                want_event="delivered",
            )
        )
        await asyncio.sleep(1.0)
        pids = {f"{self.variant_mode}-{g}": self.procs[g].pid for g in ("XA", "XB")}
        await self._profile(pids, seconds)
        times = await drive
        acc = _load.account(times.ids, self.collector.arrivals, self.collector.events)
        self.step_ids.append(times.ids)
        self.profiles["e2e_accounting"] = vars(acc)

    async def _profile(self, pids: dict[str, int], seconds: int) -> None:
        out_dir = self._results_dir()
        try:
            running = _profile.record(
                pids, out_dir, seconds, prefix=f"{datetime.now(UTC):%Y-%m-%d}-profile"
            )
        except FileNotFoundError as exc:
            self.notes.append(f"no profile: {exc}")
            return
        for name, (proc, path) in running.items():
            _, err = await asyncio.to_thread(proc.communicate)
            if proc.returncode != 0 or not path.exists():
                self.notes.append(f"py-spy on {name} failed: {err.decode()[-300:]}")
                continue
            self.profiles[name] = {"file": str(path), **_profile.summarise(path)}

    async def baseline(self) -> None:
        print("baseline: raw aiohttp over the same mTLS + aio-pika with confirms", flush=True)
        names = {"in": self.prefix + "base.in", "out": self.prefix + "base.out"}
        await self._connect()
        channel = await self.connection.channel()
        for q in names.values():
            await channel.declare_queue(q, durable=True, arguments={"x-queue-type": "quorum"})
        from gateway.service.listeners import free_port

        port = free_port()
        port_arg = ["--port", str(port)]
        self.procs["receiver"] = _spawn_peer(
            "receiver", self.settings["XB"].path, ["--queue", names["out"], *port_arg], self.root
        )
        concurrency = [
            "--concurrency",
            str(self.args.concurrency),
            "--prefetch",
            str(self.args.prefetch),
        ]
        self.procs["sender"] = _spawn_peer(
            "sender",
            self.settings["XA"].path,
            ["--queue", names["in"], *port_arg, *concurrency],
            self.root,
        )
        collector = _load.Collector()
        consumer = await collector.attach(self.connection, names["out"])
        try:
            await _wait_port(port)
            await _wait_consumer(self.connection, names["in"])
            await self.load_series(
                "baseline",
                _load.Target("", names["in"]),
                REQUEST_JSON.read_bytes(),
                collector,
                ("sender", "receiver"),
                None,
            )
        finally:
            for role in ("sender", "receiver"):
                _stop(self.procs.pop(role))
            await consumer.close()
            for q in names.values():
                with contextlib.suppress(Exception):
                    await channel.queue_delete(q)
            await channel.close()

    async def inbound(self) -> None:
        n, conns = self.args.messages, self.args.connections
        print(f"inbound: {n} pre-signed envelopes to XB over {conns} mTLS connections", flush=True)
        self._check_alive()
        signed = await asyncio.to_thread(presign, self.settings["XA"], n + WARM_UP)
        warm, bodies = signed[:WARM_UP], signed[WARM_UP:]
        ids = [mid for mid, _ in bodies]
        xa, xb = self.settings["XA"], self.settings["XB"]
        from gateway.trust.identity import TrustStore

        ctx = TrustStore(xa.partners).client_context("XB", xa.tls)
        url = f"https://127.0.0.1:{xb.partner_api.port}/v1/messages"
        server_name = xa.partners["XB"].server_name or None
        connector = aiohttp.TCPConnector(ssl=ctx, limit=conns, keepalive_timeout=60)
        answered: dict[str, float] = {}
        statuses: dict[int, int] = {}
        sent_at: dict[str, float] = {}
        queue = list(reversed(bodies))
        async with aiohttp.ClientSession(connector=connector) as session:
            # open the connections (TLS handshakes) before the clock starts
            await asyncio.gather(
                *(
                    session.get(url.replace("messages", "ping"), server_hostname=server_name)
                    for _ in range(conns)
                ),
                return_exceptions=True,
            )

            async def post(body: bytes) -> tuple[int, bytes]:
                async with session.post(
                    url,
                    data=body,
                    headers={"Content-Type": "application/xml"},
                    server_hostname=server_name,
                ) as resp:
                    return resp.status, await resp.read()

            for _, body in warm:
                await post(body)

            async def worker() -> None:
                while queue:
                    mid, body = queue.pop()
                    sent_at[mid] = time.monotonic()
                    status, data = await post(body)
                    statuses[status] = statuses.get(status, 0) + 1
                    if status == 200 and b"accepted" in data:
                        answered[mid] = time.monotonic()

            meter = _proc.CpuMeter(self._pids(None, "XB"))
            meter.start()
            started = time.monotonic()
            await asyncio.gather(*(worker() for _ in range(conns)))
            posted = time.monotonic()
            # the back office must still see each accepted message, exactly once
            deadline = posted + 30
            while (
                self.collector.done(ids, want_event=None) < len(ids) and time.monotonic() < deadline
            ):
                self.collector.progress.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.collector.progress.wait(), timeout=0.5)
            finished = time.monotonic()
            cpu = meter.stop()
        await asyncio.sleep(SETTLE_SECONDS)
        times = _load.StepTimes(ids, sent_at, started, posted, finished, finished >= deadline)
        acc = _load.account(ids, self.collector.arrivals)
        lat = [(answered[m] - sent_at[m]) * 1000 for m in ids if m in answered]
        record = step_record(
            "inbound", None, times, acc, lat, list(answered.values()), cpu, self._rss(None, "XB")
        )
        record["http_statuses"] = {str(k): v for k, v in sorted(statuses.items())}
        record["accepted"] = len(answered)
        record["connections"] = conns
        record["latency_is"] = "HTTP POST to signed receipt"
        self.steps.append(record)
        self.step_ids.append(ids)
        print(
            f"  inbound: {len(answered)}/{n} accepted, {acc.unique} reached the back office, "
            f"{record['throughput']:.0f} msg/s, p50 {record['latency_ms']['p50']:.1f} ms, "
            f"CPU ms/msg XB {record['cpu_ms_per_msg']['B']:.2f}",
            flush=True,
        )
        if self.args.profile:
            await self.profile_inbound()

    async def profile_inbound(self) -> None:
        """py-spy on XB while the inbound load generator runs unthrottled."""
        saved = self.args.messages
        self.args.messages = max(saved, self.args.profile * 800)
        steps = len(self.steps)
        task = asyncio.ensure_future(self._inbound_quiet())
        await asyncio.sleep(4.0)
        await self._profile({"inbound-XB": self.procs["XB"].pid}, self.args.profile)
        await task
        self.args.messages = saved
        del self.steps[steps:]

    async def _inbound_quiet(self) -> None:
        profile, self.args.profile = self.args.profile, 0
        try:
            await self.inbound()
        finally:
            self.args.profile = profile

    # ------------------------------------------------------------------ results
    def _results_dir(self) -> Path:
        return self.args.out.parent if self.args.out else RESULTS

    def final_accounting(self) -> bool:
        """Recount every step now that late copies had time to arrive; True if all is well."""
        ok = True
        for record, ids in zip(self.steps, self.step_ids, strict=False):
            arrivals = self.collector.arrivals if record["mode"] != "baseline" else None
            if arrivals is not None:
                acc = _load.account(ids, arrivals)
                record["lost"], record["duplicated"] = acc.lost, acc.duplicated
            if record["lost"] or record["duplicated"] or record["stalled"]:
                ok = False
        return ok

    def document(self, ok: bool) -> dict[str, Any]:
        return {
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "ok": ok,
            "machine": {
                "cpus": os.cpu_count(),
                "python": platform.python_version(),
                "platform": platform.platform(),
                "load_average_at_end": os.getloadavg(),
            },
            "settings": {
                "messages_per_step": self.args.messages,
                "loads": [_report.offered_label(x) for x in self.args.load_list],
                "payload": f"{REQUEST_JSON.relative_to(PROJECT)} ({REQUEST_JSON.stat().st_size} B)",
                "delivery_concurrency": self.args.concurrency,
                "broker_prefetch": self.args.prefetch,
                "variants": [{"batching": b, "workers": w} for b, w in self.args.variants],
                "inbound_connections": self.args.connections,
                "queues": "quorum (the gateway's topology); baseline uses quorum queues too",
                "sides": "A = sender (XA gateway / baseline sender), "
                "B = receiver (XB gateway / baseline receiver)",
            },
            "steps": self.steps,
            "ratio_gateway_to_baseline": _report.ratios(self.steps),
            "targets": _report.verdicts(self.steps),
            "profiles": self.profiles,
            "notes": self.notes,
        }


def presign(xa: Settings, n: int) -> list[tuple[str, bytes]]:
    """``n`` envelopes from XA to XB carrying the maa-xml request, signed with XA's key."""
    import adapters
    from gateway.xml import envelope
    from gateway.xml.signature import Signer

    signer = Signer.from_files(xa.signing.key, xa.signing.cert)
    exchange = adapters.get("maa-xml")
    payload = REQUEST_XML.read_bytes()
    document = exchange.decode(payload, message_type="maa.request")
    categories = tuple(sorted(exchange.categories(document)))
    agreement = next(iter(xa.agreements))
    created = datetime.now(UTC)
    out = []
    for mid in _load.message_ids("in", n):
        header = envelope.Header(
            message_id=mid,
            sender="XA",
            receiver="XB",
            agreement=agreement,
            message_type="maa.request",
            created=created,
            payload_format=exchange.name,
            categories=categories,
        )
        root = envelope.build_envelope(header, payload, exchange.media_type)
        out.append((mid, signer.sign(root)))
    return out


def _spawn_peer(role: str, config: Path, args: list[str], root: Path) -> subprocess.Popen[bytes]:
    """Start one baseline process (bench/_peer.py), its output in ``root/baseline.log``."""
    with (root / "baseline.log").open("ab") as log:
        return subprocess.Popen(
            [sys.executable, str(HERE / "_peer.py"), role, "--config", str(config), *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(os.environ, PYTHONPATH=str(PROJECT)),
        )


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def _wait_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        except OSError:
            await asyncio.sleep(0.1)
    raise RuntimeError(f"the baseline receiver did not listen on {port}")


async def _wait_consumer(connection: Any, queue: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        # a fresh channel each time: a channel answers a repeated declare from its cache
        async with connection.channel() as channel:
            declared = await channel.declare_queue(queue, passive=True)
            if (declared.declaration_result.consumer_count or 0) > 0:
                return
        await asyncio.sleep(0.2)
    raise RuntimeError(f"the baseline sender did not consume {queue}")


def broker_reachable() -> bool:
    host_port = RABBITMQ_URL.rsplit("@", 1)[-1].split("/", 1)[0]
    host, _, port = host_port.partition(":")
    try:
        with socket.create_connection((host, int(port or 5672)), timeout=3):
            return True
    except OSError:
        return False


async def run(args: argparse.Namespace) -> int:
    bench = Bench(args)
    try:
        variants = args.variants if args.mode in ("e2e", "all") else args.variants[:1]
        inbound_variant = (True, 1) if (True, 1) in variants else variants[0]
        for batch, workers in variants:
            bench.provision(batch, workers)
            if args.mode in ("baseline", "all") and not bench.steps:
                await bench.baseline()
            await bench.start_gateways()
            try:
                if args.mode in ("e2e", "all"):
                    await bench.e2e()
                if args.mode in ("inbound", "all") and (batch, workers) == inbound_variant:
                    await bench.inbound()
            finally:
                await bench.stop_gateways()
        await asyncio.sleep(1.0)
        ok = bench.final_accounting()
    finally:
        await bench.close()
    doc = bench.document(ok)
    print()
    print(_report.table(bench.steps))
    for row in doc["ratio_gateway_to_baseline"]:
        print(f"gateway/baseline at {_report.offered_label(row['offered'])}: {row}")
    for v in doc["targets"]:
        mark = {True: "met", False: "NOT met", None: "not measured"}[v["met"]]
        print(f"target {v['target']}: goal {v['goal']}, measured {v['measured']}: {mark}")
    for name, prof in bench.profiles.items():
        if isinstance(prof, dict) and prof.get("own_by_library"):
            print(f"\nprofile {name} ({prof['samples']} samples), own time by library:")
            for lib, pct in prof["own_by_library"]:
                print(f"  {pct:5.1f} %  {lib}")
    for note in bench.notes:
        print(f"note: {note}")
    out = args.out
    if out is None and not args.smoke:
        out = RESULTS / f"{datetime.now(UTC):%Y-%m-%d}.json"
    if out is not None:
        _report.write_json(doc, out)
        print(f"\nwrote {out}")
        if not args.no_chart:
            why = _report.chart(bench.steps, out.with_suffix(".png"))
            print(why or f"wrote {out.with_suffix('.png')}")
    if not ok:
        print("FAILED: messages lost, duplicated or stalled (see the table)", file=sys.stderr)
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from gateway.service.logging import configure

    # the bench's own provisioning logs would drown the table
    configure("console", "WARNING")
    if not broker_reachable():
        print(
            f"RabbitMQ is not reachable at {RABBITMQ_URL.rsplit('@', 1)[-1]}: start it with "
            "`rabbitmq-server -detached` (or `make bench`, which starts it)",
            file=sys.stderr,
        )
        return 2
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())

"""What the field trials broke: stores failing, a receiver crash, a long outage, precise outcomes.

Real everywhere: RabbitMQ, PostgreSQL, SQLite on a real file system that really fills up
(a tmpfs mounted for the test), gateways as processes killed with SIGKILL.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import signal
import sqlite3
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from gateway import pem
from gateway.audit.log import AuditLog
from gateway.ca import authority
from gateway.config.files import load_settings
from gateway.config.models import Settings
from gateway.demo import provision
from gateway.relay.back_office import BackOffice, open_office
from gateway.relay.broker import Relay
from gateway.relay.topology import Names
from gateway.service.gateway import Gateway
from maagw_testing.audit import create_scratch_db, drop_scratch_db, pg_reachable
from maagw_testing.broker import (
    account,
    delete_topology,
    publish_many,
    start_gateway_process,
    unique_prefix,
    unmarked_duplicates,
)
from maagw_testing.services import services_required

ROOT = Path(__file__).resolve().parents[2]
REQUEST = (ROOT / "examples" / "national-json" / "maa.request.json").read_bytes()
AGREEMENT = ROOT / "config" / "agreements" / "xa-xb-maa.toml"


Provisioned = tuple[dict[str, Settings], dict[str, Any]]


@pytest.fixture
async def make_pair(tmp_path: Path, rabbitmq: str) -> AsyncIterator[Callable[..., Provisioned]]:
    """Provision XA and XB (unique broker names), with edits; their broker objects go after."""
    made: list[Settings] = []

    def make(
        *,
        delivery: str = "backoff_initial = 0.5\nbackoff_max = 2.0\nconcurrency = 16",
        rate: int = 600_000,
        burst: int | None = None,
        batch_max: int = 1,
        before_load: Callable[[Path], None] | None = None,
    ) -> Provisioned:
        agreements = tmp_path / "agreements"
        agreements.mkdir(exist_ok=True)
        limit = f"rate_per_minute = {rate}" + (f"\nburst = {burst}" if burst else "")
        (agreements / AGREEMENT.name).write_text(
            AGREEMENT.read_text().replace("rate_per_minute = 600", limit)
        )
        base = unique_prefix("field")
        prov = provision(
            tmp_path / "gw",
            rabbitmq,
            prefixes={"XA": base + "xa.", "XB": base + "xb."},
            agreements_dir=agreements,
            extra={"delivery": delivery},
            batch_max=batch_max,
        )
        if before_load is not None:
            before_load(tmp_path / "gw")
        settings = {gid: load_settings(p.config) for gid, p in prov.items()}
        made.extend(settings.values())
        return settings, prov

    yield make
    for s in made:
        await delete_topology(s.broker.url, Names(s.broker.prefix), list(s.partners))


class Arrivals:
    """XB's back office, consuming its inbound queue in the background, noting when each id came."""

    def __init__(self, office: BackOffice) -> None:
        self.office = office
        self.messages: list[Any] = []
        self.first: dict[str, float] = {}
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> Arrivals:
        queue = await self.office.channel.get_queue(self.office.settings.name_of("maagw.inbound"))

        async def consume() -> None:
            while True:
                message = await queue.get(fail=False, no_ack=True)
                if message is None:
                    await asyncio.sleep(0.05)
                    continue
                self.messages.append(message)
                self.first.setdefault(str(message.message_id), time.monotonic())

        self._task = asyncio.create_task(consume())
        return self

    async def until(self, count: int, timeout: float) -> bool:
        """Wait until ``count`` distinct ids arrived; False on timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if len(self.first) >= count:
                return True
            await asyncio.sleep(0.1)
        return False

    async def stop(self) -> None:
        await asyncio.sleep(2.0)  # a late duplicate would still be seen
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


def _unacked_and_ready(queue: str) -> tuple[int, int]:
    out = subprocess.run(
        ["rabbitmqctl", "-q", "list_queues", "name", "messages_ready", "messages_unacknowledged"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    for line in out.splitlines():
        name, ready, unacked = line.split("\t")
        if name == queue:
            return int(ready), int(unacked)
    raise AssertionError(f"queue {queue} not listed")


async def _settled(queue: str, timeout: float = 30.0) -> bool:
    """Whether ``queue`` ends with nothing ready and nothing unacknowledged (counters lag)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await asyncio.to_thread(_unacked_and_ready, queue) == (0, 0):
            return True
        await asyncio.sleep(1.0)
    return False


async def _events(office: BackOffice) -> list[dict[str, Any]]:
    return [json.loads(m.body) for m in await office.drain("maagw.events", timeout=5, idle=1.0)]


async def _verify_log(s: Settings) -> bool:
    log = await AuditLog.open(s.audit_url, gateway_id=s.gateway_id, create=False)
    try:
        return (await log.verify()).ok
    finally:
        await log.close()


# ------------------------------------------------------------------ stores failing


def _mount_tmpfs(where: Path, size: str) -> None:
    where.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        message = f"cannot mount a small tmpfs (needs root): {done.stderr.strip()}"
        if services_required():
            pytest.fail(message)
        pytest.skip(message)


def _fill(directory: Path) -> Path:
    """Write a file until the file system is full; returns it."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for size in (1 << 20, 1 << 12, 1):
            block = b"\0" * size
            try:
                while os.write(fd, block):
                    pass
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
    finally:
        os.close(fd)
    return filler


async def _fault_window(
    gw: Gateway, seconds: float, keys: tuple[str, ...], start_fault: Any, end_fault: Any
) -> tuple[bool, bool, float]:
    """Hold a fault for ``seconds``: (readiness went false, stayed false to the end, cleared at).

    Readiness counts as false when any of the ``keys`` checks is false.
    """

    async def ready() -> bool:
        checks = await gw.readiness()
        return all(checks[key] for key in keys)

    await start_fault()
    began = time.monotonic()
    went_false = False
    while time.monotonic() - began < seconds:
        went_false = went_false or not await ready()
        await asyncio.sleep(0.25)
    still_false = not await ready()
    await end_fault()
    return went_false, still_false, time.monotonic()


async def _run_with_fault(
    settings: dict[str, Settings], keys: tuple[str, ...], start_fault: Any, end_fault: Any
) -> None:
    """1,000 messages XA→XB, paced at 50/s, a 10 s fault mid-run: the flow resumes, nothing lost."""
    xa, xb = Gateway(settings["XA"]), Gateway(settings["XB"])
    await xb.start()
    await xa.start()
    office_a, office_b = await open_office(settings["XA"]), await open_office(settings["XB"])
    arrivals = await Arrivals(office_b).start()
    try:
        publishing = asyncio.create_task(publish_many(office_a, "XB", REQUEST, 1000, "fault"))
        assert await arrivals.until(150, 120), "the flow did not start"
        with capture_logs() as logs:
            went_false, still_false, cleared = await _fault_window(
                xa, 10.0, keys, start_fault, end_fault
            )
            during = len(arrivals.first)
            ids = await publishing
            # the flow resumes by itself within 30 s of the fault clearing
            complete = await arrivals.until(len(ids), 30 + 1000 / 50)
        assert went_false, f"readiness {keys} stayed true during the fault"
        assert still_false, "readiness came back before the fault cleared"
        assert during < len(ids), "the fault did not stop the flow (nothing was tested)"
        assert complete, "not every message arrived"
        last = max(arrivals.first.values())
        resumed = [t for t in arrivals.first.values() if t > cleared]
        assert resumed and min(resumed) - cleared <= 30, "the flow did not resume within 30 s"
        # one error line per failing store for the episode; nothing crashed, no line per message
        errors = [(e["event"], e.get("store")) for e in logs if e["log_level"] == "error"]
        assert errors and len(errors) == len(set(errors)), errors
        assert {event for event, _ in errors} == {"store_failed"}
        assert {store for _, store in errors} <= set(keys)
        print(f"\n{during} arrived before/while the fault, all 1000 {last - cleared:.1f} s after")
        await arrivals.stop()
        lost, _dups, _ = account(arrivals.messages, set(ids))
        assert not lost, f"{len(lost)} lost"
        assert not unmarked_duplicates(arrivals.messages)
        checks = await xa.readiness()
        assert all(checks[key] for key in keys)
        assert await _settled(xa.runtime.relay.names.outbound_queue("XB"))
        assert not await xa.runtime.store.dead_list()
    finally:
        await arrivals.stop()
        await office_a.channel.close()
        await office_b.channel.close()
        await xa.stop()
        await xb.stop()
    assert await _verify_log(settings["XA"])


async def test_a_full_disk_for_10_seconds_stalls_nothing(
    make_pair: Callable[..., Provisioned], tmp_path: Path
) -> None:
    """XA's state dir full for 10 s: readiness false meanwhile, then the flow resumes by itself, 0 lost."""
    state = tmp_path / "gw" / "XA" / "state"
    settings, _ = make_pair(rate=3000, burst=10)
    _mount_tmpfs(state, "256m")
    filler: list[Path] = []

    async def fill() -> None:
        filler.append(await asyncio.to_thread(_fill, state))

    async def make_room() -> None:
        filler[0].unlink()

    try:
        # the state store and the audit log share the state dir: either fails first
        await _run_with_fault(settings, ("state", "audit"), fill, make_room)
    finally:
        await asyncio.to_thread(subprocess.run, ["umount", "-l", str(state)], check=False)


async def test_audit_connections_killed_and_refused_for_10_seconds_stall_nothing(
    make_pair: Callable[..., Provisioned],
) -> None:
    """XA's PostgreSQL audit connections terminated and refused for 10 s: the flow resumes, 0 lost."""
    import asyncpg  # type: ignore[import-untyped, unused-ignore]

    from maagw_testing.audit import PG_ADMIN_URL

    problem = await pg_reachable()
    if problem is not None:
        if services_required():
            pytest.fail(problem)
        pytest.skip(problem)
    url = await create_scratch_db()
    name = url.rsplit("/", 1)[-1]

    def use_pg(root: Path) -> None:
        config = root / "XA" / "gateway.toml"
        config.write_text(config.read_text().replace('url = "audit.db"', f'url = "{url}"'))

    settings, _ = make_pair(rate=3000, burst=10, before_load=use_pg)
    assert settings["XA"].audit_url == url

    async def admin(sql: str, *args: str) -> None:
        con = await asyncpg.connect(PG_ADMIN_URL)
        try:
            await con.execute(sql, *args)
        finally:
            await con.close()

    async def cut() -> None:
        await admin(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        await admin(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = $1 AND pid <> pg_backend_pid()",
            name,
        )

    async def restore() -> None:
        await admin(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')

    try:
        await _run_with_fault(settings, ("audit",), cut, restore)
    finally:
        await restore()
        await drop_scratch_db(url)


# ------------------------------------------------------------------ a receiver crash


def _claimed(state_db: Path) -> int:
    with sqlite3.connect(state_db) as db:
        return int(db.execute("SELECT COUNT(*) FROM claims WHERE state = 'claimed'").fetchone()[0])


async def test_a_receiver_killed_mid_run_takes_its_claims_back_at_restart(
    make_pair: Callable[..., Provisioned], tmp_path: Path
) -> None:
    """kill -9 of XB mid-run: after its restart every message arrives within 15 s, copies marked."""
    settings, prov = make_pair()
    log = tmp_path / "xb.log"
    proc = await asyncio.to_thread(start_gateway_process, prov["XB"].config, log)
    xa = Gateway(settings["XA"])
    await xa.start()
    office_a, office_b = await open_office(settings["XA"]), await open_office(settings["XB"])
    arrivals = await Arrivals(office_b).start()
    try:
        ids = await publish_many(office_a, "XB", REQUEST, 600, "crash")
        assert await arrivals.until(100, 120)
        os.kill(proc.pid, signal.SIGKILL)
        await asyncio.to_thread(proc.wait)
        left = await asyncio.to_thread(_claimed, settings["XB"].state_dir / "state.db")
        assert left > 0, "no claim was in flight at the kill (nothing was tested)"
        proc = await asyncio.to_thread(start_gateway_process, prov["XB"].config, log)
        restarted = time.monotonic()
        assert await arrivals.until(len(ids), 60), "not every message arrived"
        took = max(arrivals.first.values()) - restarted
        print(f"\n{left} claims taken over; all 600 arrived {took:.1f} s after the restart")
        assert took <= 15, f"the last message arrived {took:.1f} s after the restart"
        await arrivals.stop()
        lost, _dups, _ = account(arrivals.messages, set(ids))
        assert not lost
        assert not unmarked_duplicates(arrivals.messages), "a copy arrived without the mark"
        assert b"claims_taken_over" in log.read_bytes()
    finally:
        await arrivals.stop()
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(proc.wait, 20)
            except subprocess.TimeoutExpired:
                proc.kill()
        await office_a.channel.close()
        await office_b.channel.close()
        await xa.stop()


# ------------------------------------------------------------------ a long outage


async def test_a_partner_down_for_10_minutes_gets_everything_once(
    make_pair: Callable[..., Provisioned],
) -> None:
    """XB down 10 minutes (age limit 15 min, backoff cap 30 s): all delivered once, none dead-lettered."""
    settings, _ = make_pair(
        delivery="backoff_initial = 1.0\nbackoff_max = 30.0\nmax_age_seconds = 900\n"
        "concurrency = 16"
    )
    xa = Gateway(settings["XA"])
    await xa.start()
    # XB's back office queues exist (its broker objects), XB's gateway does not run
    relay = Relay(settings["XB"].broker.url, Names(settings["XB"].broker.prefix))
    await relay.connect(settings["XB"].partners)
    await relay.close()
    office_a, office_b = await open_office(settings["XA"]), await open_office(settings["XB"])
    xb: Gateway | None = None
    arrivals = await Arrivals(office_b).start()
    try:
        ids = await publish_many(office_a, "XB", REQUEST, 500, "outage")
        await asyncio.sleep(600)
        assert not arrivals.first
        xb = Gateway(settings["XB"])
        await xb.start()
        back = time.monotonic()
        # the backoff is capped at 30 s: every message is tried again within that
        assert await arrivals.until(len(ids), 120), f"{len(ids) - len(arrivals.first)} missing"
        print(f"\nall 500 arrived {max(arrivals.first.values()) - back:.1f} s after XB returned")
        await arrivals.stop()
        lost, dups, _ = account(arrivals.messages, set(ids))
        assert not lost and not dups
        assert not await xa.runtime.store.dead_list()
        assert not await office_a.drain("maagw.dead", timeout=2, idle=0.5)
        retries = await xa.runtime.audit.search(event="retry", limit=100_000)
        assert retries and {r.code for r in retries} == {"DELIVERY_UNREACHABLE"}
        assert max(int(r.details_obj()["attempt"]) for r in retries) > 8  # past the old limit
    finally:
        await arrivals.stop()
        await office_a.channel.close()
        await office_b.channel.close()
        await xa.stop()
        if xb is not None:
            await xb.stop()


# ------------------------------------------------------------------ saying what happened


def _slow_inbound_at_xb(root: Path) -> None:
    """XB's copy of the agreement allows XA 60 messages a minute, 5 at once."""
    path = root / "XB" / "agreements" / AGREEMENT.name
    text = path.read_text()
    head, _, rest = text.partition('[flows."XA->XB"]')
    rest = rest.replace("rate_per_minute = 600000", "rate_per_minute = 60\nburst = 5", 1)
    path.write_text(f'{head}[flows."XA->XB"]{rest}')


@pytest.mark.parametrize(
    ("batch_max", "must", "may"),
    [
        (1, "DELIVERY_THROTTLED", set()),
        # a batch of which some envelopes were left out of the receipt list; a batch refused
        # whole is a 429
        (32, "DELIVERY_RETRY_LATER", {"DELIVERY_THROTTLED"}),
    ],
)
async def test_a_partners_try_again_later_is_reported_as_such(
    make_pair: Callable[..., Provisioned], batch_max: int, must: str, may: set[str]
) -> None:
    """XB throttling XA (429, or entries left out of a batch's receipt list) is retried under its own code."""
    settings, _ = make_pair(batch_max=batch_max, before_load=_slow_inbound_at_xb)
    xa, xb = Gateway(settings["XA"]), Gateway(settings["XB"])
    await xb.start()
    await xa.start()
    office_a, office_b = await open_office(settings["XA"]), await open_office(settings["XB"])
    arrivals = await Arrivals(office_b).start()
    try:
        ids = await publish_many(office_a, "XB", REQUEST, 12, "slow")
        assert await arrivals.until(len(ids), 90)
        retries = await xa.runtime.audit.search(event="retry", limit=1000)
        assert retries, "XB did not throttle (nothing was tested)"
        seen = {r.code for r in retries}
        assert must in seen and seen <= {must, *may}, seen
        assert all(r.reason and "DELIVERY_BAD_RECEIPT" not in r.reason for r in retries)
        # XB's Retry-After is honoured: no retry sooner than the second XB asked for
        assert all(int(r.details_obj()["delay"]) >= 1 for r in retries)
        assert not await xa.runtime.store.dead_list()
    finally:
        await arrivals.stop()
        await office_a.channel.close()
        await office_b.channel.close()
        await xa.stop()
        await xb.stop()


async def _assert_unverified(
    settings: dict[str, Settings], problem_code: str, *, wait_before_sending: float = 0.0
) -> None:
    xa, xb = Gateway(settings["XA"]), Gateway(settings["XB"])
    await xb.start()
    await xa.start()
    office_a, office_b = await open_office(settings["XA"]), await open_office(settings["XB"])
    try:
        await asyncio.sleep(wait_before_sending)
        mid = f"unverified-{uuid.uuid4().hex[:8]}"
        await office_a.send("XB", REQUEST, message_id=mid)
        got = await office_b.drain("maagw.inbound", want=1)
        assert [m.message_id for m in got] == [mid]  # XB has it
        events = []
        for _ in range(40):
            events += [e for e in await _events(office_a) if e["message_id"] == mid]
            if events:
                break
        assert [(e["status"], e["code"]) for e in events] == [("unverified_receipt", problem_code)]
        entries = await xa.runtime.audit.search(message_id=mid, event="receipt")
        assert [(e.outcome, e.code) for e in entries] == [("unverified_receipt", problem_code)]
        assert entries[0].receipt_digest is not None
        assert await xa.runtime.audit.get_evidence(entries[0].receipt_digest) is not None
        assert not await xa.runtime.store.dead_list()
        assert not await office_a.drain("maagw.dead", timeout=2, idle=0.5)
        assert not await xa.runtime.audit.search(message_id=mid, event="retry")
        assert await _settled(xa.runtime.relay.names.outbound_queue("XB"))
    finally:
        await office_a.channel.close()
        await office_b.channel.close()
        await xa.stop()
        await xb.stop()


async def test_a_receipt_that_does_not_verify_is_unverified_not_failed(
    make_pair: Callable[..., Provisioned],
) -> None:
    """XB accepted, but XA trusts another signing certificate: unverified_receipt, kept, not dead-lettered."""

    def wrong_signing_cert(root: Path) -> None:
        # XA pins its own signing certificate as XB's: XB's receipts cannot verify
        partner = root / "XA" / "partners" / "XB.toml"
        (root / "XA" / "partners" / "certs" / "not-XB.pem").write_bytes(
            (root / "XA" / "certs" / "signing.pem").read_bytes()
        )
        partner.write_text(partner.read_text().replace("certs/XB-signing.pem", "certs/not-XB.pem"))

    settings, _ = make_pair(before_load=wrong_signing_cert)
    await _assert_unverified(settings, "SIG_CERT_UNTRUSTED")


async def test_a_crl_past_its_next_update_makes_receipts_unverified_not_failed(
    make_pair: Callable[..., Provisioned],
) -> None:
    """XB's CRL goes stale at XA: XB has the message, XA reports unverified_receipt (AUTH_CRL_STALE)."""

    def short_lived_crl(root: Path) -> None:
        crl = root / "XA" / "partners" / "certs" / "XB.crl"
        authority.make_crl(root / "XB" / "ca", crl, next_update_days=20 / 86400)
        partner = root / "XA" / "partners" / "XB.toml"
        partner.write_text(partner.read_text() + 'crl = "certs/XB.crl"\n')

    settings, _ = make_pair(before_load=short_lived_crl)
    # the CRL is current when the gateways start (a stale one is refused at load) and
    # goes past its nextUpdate while they run
    nxt = pem.load_crl(settings["XA"].partners["XB"].crl).next_update_utc  # type: ignore[arg-type]
    assert nxt is not None
    wait = (nxt - datetime.now(UTC)).total_seconds() + 1
    await _assert_unverified(settings, "AUTH_CRL_STALE", wait_before_sending=max(0.0, wait))


async def test_a_bug_on_one_message_dead_letters_it_after_a_few_tries_and_the_rest_flows(
    make_pair: Callable[..., Provisioned],
) -> None:
    """A message that keeps failing unexpectedly is retried, then dead-lettered as GATEWAY_INTERNAL."""
    settings, _ = make_pair()
    xa, xb = Gateway(settings["XA"]), Gateway(settings["XB"])
    await xb.start()
    await xa.start()
    office_a, office_b = await open_office(settings["XA"]), await open_office(settings["XB"])
    poison = f"bug-{uuid.uuid4().hex[:8]}"
    assert xa._outbound is not None
    real_steps = xa._outbound.steps
    tries = 0

    async def buggy(ctx: Any) -> None:
        nonlocal tries
        if ctx.message.message_id == poison:
            tries += 1
            raise ZeroDivisionError("a bug")

    # a bug in the first step, for the poison message only
    xa._outbound.steps = (buggy, *real_steps)
    try:
        await office_a.send("XB", REQUEST, message_id=poison)
        good = await publish_many(office_a, "XB", REQUEST, 5, "good")
        got = await office_b.drain("maagw.inbound", want=5)
        assert sorted(str(m.message_id) for m in got) == sorted(good)
        dead = await office_a.drain("maagw.dead", want=1, timeout=90)
        assert [(m.message_id, m.headers["x-maagw-code"]) for m in dead] == [
            (poison, "GATEWAY_INTERNAL")
        ]
        assert tries == 5
        kept = await xa.runtime.store.dead_list()
        assert [(d.message_id, d.code) for d in kept] == [(poison, "GATEWAY_INTERNAL")]
        assert await _settled(xa.runtime.relay.names.outbound_queue("XB"))
    finally:
        await office_a.channel.close()
        await office_b.channel.close()
        await xa.stop()
        await xb.stop()

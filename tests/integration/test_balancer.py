"""Several instances behind a real load balancer (issue 14), on real PostgreSQL and RabbitMQ.

XB runs as three instances sharing PostgreSQL (state and audit) behind HAProxy in TCP mode
with TLS passthrough (deploy/haproxy/haproxy.cfg's set-up) and a health check on the public
readiness endpoint; XA runs as two instances sharing theirs and sends to the balancer.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from gateway.config.models import Settings
from gateway.relay.back_office import open_office
from gateway.relay.topology import Names
from gateway.service.listeners import free_port
from maagw_testing.audit import create_scratch_db, drop_scratch_db
from maagw_testing.broker import (
    RABBITMQ_URL,
    account,
    collect,
    delete_topology,
    provision_pair,
    publish_many,
    start_gateway_process,
    unmarked_duplicates,
)
from maagw_testing.services import require_tool

pytestmark = [pytest.mark.postgres, pytest.mark.rabbitmq]

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "national-json" / "maa.request.json"
MESSAGES = 3000


def haproxy_config(front: int, servers: list[tuple[int, int]]) -> str:
    """deploy/haproxy/haproxy.cfg's set-up on local ports: (partner port, admin port) each."""
    lines = [
        "defaults",
        "    mode tcp",
        "    timeout connect 2s",
        "    timeout client 60s",
        "    timeout server 60s",
        "frontend partners",
        f"    bind 127.0.0.1:{front}",
        "    default_backend gateways",
        "backend gateways",
        "    balance roundrobin",
        "    option httpchk GET /readyz",
        "    http-check expect status 200",
        "    default-server inter 500ms fall 2 rise 2 on-marked-down shutdown-sessions",
    ]
    lines += [
        f"    server xb{n} 127.0.0.1:{partner} check port {admin}"
        for n, (partner, admin) in enumerate(servers)
    ]
    return "\n".join(lines) + "\n"


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new, 1))


class Instances:
    """``maagw serve`` processes of one administration sharing one PostgreSQL (state and audit)."""

    def __init__(self, settings: Settings, db: str, root: Path, count: int) -> None:
        self.settings, self.db, self.root = settings, db, root
        self.ports = [(free_port(), free_port()) for _ in range(count)]
        self.procs: list[subprocess.Popen[bytes]] = []

    def env(self, n: int) -> dict[str, str]:
        partner, admin = self.ports[n]
        return {
            "MAAGW_STATE_URL": self.db,
            "MAAGW_AUDIT_URL": self.db,
            "MAAGW_PARTNER_API_PORT": str(partner),
            "MAAGW_ADMIN_PORT": str(admin),
            "MAAGW_STATE_DIR": str(self.root / f"{self.settings.gateway_id}{n}"),
        }

    def start(self, n: int) -> subprocess.Popen[bytes]:
        """Start instance ``n`` (again); the gateway reads its ports and stores from the env."""
        saved = {k: os.environ.get(k) for k in self.env(n)}
        os.environ.update(self.env(n))
        try:
            log = self.root / f"{self.settings.gateway_id}{n}.log"
            proc: subprocess.Popen[bytes] = start_gateway_process(self.settings.path, log)
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        if n < len(self.procs):
            self.procs[n] = proc
        else:
            self.procs.append(proc)
        return proc

    def kill(self, n: int) -> None:
        os.kill(self.procs[n].pid, signal.SIGKILL)
        self.procs[n].wait(10)

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)

    def verify_audit(self) -> subprocess.CompletedProcess[str]:
        """``maagw audit verify`` of the administration's one chain."""
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "gateway",
                "audit",
                "verify",
                "--config",
                str(self.settings.path),
            ],
            env={**os.environ, "MAAGW_AUDIT_URL": self.db},
            capture_output=True,
            text=True,
            timeout=300,
        )


async def test_three_xb_behind_haproxy_and_two_xa_lose_one_instance_each_and_nothing(
    tmp_path: Path,
) -> None:
    """Three XB instances behind HAProxy, two XA instances, both on PostgreSQL; 3,000 messages;
    kill -9 of one XB and one XA instance mid-run, each started again 5 s later: 0 lost, every duplicate at XB's
    back office marked and fewer than 1 %, no message id accepted twice, each administration's
    audit log verifies as one chain."""
    haproxy = require_tool("haproxy")
    settings = provision_pair(tmp_path / "pair", tag="lb")
    xa_settings, xb_settings = settings["XA"], settings["XB"]
    edit(xb_settings.path, "[admin]\n", "[admin]\nreadyz_public = true\n")
    dbs = {gid: await create_scratch_db() for gid in ("XA", "XB")}
    xa = Instances(xa_settings, dbs["XA"], tmp_path, 2)
    xb = Instances(xb_settings, dbs["XB"], tmp_path, 3)
    front = free_port()
    partner_file = xa_settings.path.parent / "partners" / "XB.toml"
    edit(partner_file, f"127.0.0.1:{xb_settings.partner_api.port}", f"127.0.0.1:{front}")
    config = tmp_path / "haproxy.cfg"
    config.write_text(haproxy_config(front, xb.ports))
    balancer = None
    office_a = office_b = None
    try:
        for n in range(3):
            await asyncio.to_thread(xb.start, n)
        balancer = await asyncio.to_thread(
            subprocess.Popen,
            [haproxy, "-db", "-f", str(config)],
            stdout=(tmp_path / "haproxy.log").open("wb"),
            stderr=subprocess.STDOUT,
        )
        for n in range(2):
            await asyncio.to_thread(xa.start, n)
        office_a = await open_office(xa_settings)
        office_b = await open_office(xb_settings)
        started = time.monotonic()
        ids: set[str] = set()
        killed = started
        for chunk in range(MESSAGES // 500):
            ids |= set(await publish_many(office_a, "XB", EXAMPLE.read_bytes(), 500, f"lb{chunk}"))
            if chunk == 1:  # mid-run: one instance of each administration dies
                await asyncio.to_thread(xb.kill, 1)
                await asyncio.to_thread(xa.kill, 0)
                killed = time.monotonic()
        collecting = asyncio.create_task(collect(office_b, ids, timeout=600))
        await asyncio.sleep(max(0.0, 5.0 - (time.monotonic() - killed)))
        await asyncio.to_thread(xb.start, 1)
        await asyncio.to_thread(xa.start, 0)

        got = await collecting
        lost, dups, _ = account(got, ids)
        twice = sum(c - 1 for c in dups.values())
        marked = sum(1 for m in got if (m.headers or {}).get("x-maagw-possible-duplicate"))
        print(
            f"{len(got)} arrived for {len(ids)} sent in {time.monotonic() - started:.1f} s; "
            f"{twice} duplicates, {marked} marked"
        )
        assert lost == set(), f"{len(lost)} lost"
        assert unmarked_duplicates(got) == {}
        assert twice < len(ids) / 100
        # no id accepted twice across XB's instances: one claim per id, published
        claims = await _fetch(
            dbs["XB"],
            "SELECT count(*), count(DISTINCT message_id), count(*) FILTER "
            "(WHERE state = 'published') FROM claims WHERE sender = 'XA'",
        )
        assert claims == [(len(ids), len(ids), len(ids))]
        owners = await _fetch(dbs["XB"], "SELECT count(DISTINCT owner) FROM claims")
        assert owners[0][0] >= 2, "the balancer sent everything to one instance"
        xa.stop()
        xb.stop()
        for side in (xa, xb):
            verified = await asyncio.to_thread(side.verify_audit)
            assert verified.returncode == 0, verified.stdout + verified.stderr
    finally:
        for office in (office_a, office_b):
            if office is not None:
                await office.connection.close()
        xa.stop()
        xb.stop()
        if balancer is not None:
            balancer.terminate()
            balancer.wait(10)
        for s in (xa_settings, xb_settings):
            await delete_topology(RABBITMQ_URL, Names(s.broker.prefix), list(s.partners))
        for db in dbs.values():
            await drop_scratch_db(db)


async def _fetch(url: str, sql: str) -> list[Any]:
    import asyncpg

    con = await asyncpg.connect(url)
    try:
        return [tuple(r) for r in await con.fetch(sql)]
    finally:
        await con.close()


def test_the_example_configuration_is_valid_for_haproxy() -> None:
    """deploy/haproxy/haproxy.cfg passes ``haproxy -c``."""
    haproxy = require_tool("haproxy")
    example = Path(__file__).resolve().parents[2] / "deploy" / "haproxy" / "haproxy.cfg"
    checked = subprocess.run(
        [haproxy, "-c", "-f", str(example)], capture_output=True, text=True, timeout=30
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr

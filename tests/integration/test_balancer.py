"""Several instances behind a real load balancer (issue 14), on real PostgreSQL and RabbitMQ.

XB runs as two instances sharing PostgreSQL (state and audit) behind HAProxy in TCP mode with
TLS passthrough (deploy/haproxy/haproxy.cfg's set-up) and a health check on the public
readiness endpoint; XA sends to the balancer. One XB instance is killed with SIGKILL in the
middle of the run and started again 5 s later: nothing is lost, every duplicate at XB's back
office is marked, no message id is accepted twice across the instances, and XB's audit log
verifies as one chain.
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

from gateway.config.files import load_settings
from gateway.relay.back_office import open_office
from gateway.relay.topology import Names
from gateway.service.gateway import Gateway
from gateway.service.listeners import free_port
from maagw_testing.audit import reset_audit_tables
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
from maagw_testing.state import reset_state_tables

pytestmark = [pytest.mark.postgres, pytest.mark.rabbitmq]

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "national-json" / "maa.request.json"
MESSAGES = 300


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


async def test_xb_behind_haproxy_loses_an_instance_and_nothing_is_lost_or_taken_twice(
    tmp_path: Path, pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    haproxy = require_tool("haproxy")
    settings = provision_pair(tmp_path / "pair", tag="lb")
    xa_settings, xb_settings = settings["XA"], settings["XB"]
    edit(xb_settings.path, "[admin]\n", "[admin]\nreadyz_public = true\n")
    await reset_audit_tables(pg_url)
    await reset_state_tables(pg_url)

    front = free_port()
    xb_ports = [(free_port(), free_port()) for _ in range(2)]
    partner_file = xa_settings.path.parent / "partners" / "XB.toml"
    old_port = str(xb_settings.partner_api.port)
    edit(partner_file, f"127.0.0.1:{old_port}", f"127.0.0.1:{front}")

    def start_xb(n: int) -> subprocess.Popen[bytes]:
        partner, admin = xb_ports[n]
        monkeypatch.setenv("MAAGW_STATE_URL", pg_url)
        monkeypatch.setenv("MAAGW_AUDIT_URL", pg_url)
        monkeypatch.setenv("MAAGW_PARTNER_API_PORT", str(partner))
        monkeypatch.setenv("MAAGW_ADMIN_PORT", str(admin))
        monkeypatch.setenv("MAAGW_STATE_DIR", str(tmp_path / f"xb{n}"))
        proc: subprocess.Popen[bytes] = start_gateway_process(
            xb_settings.path, tmp_path / f"xb{n}.log"
        )
        return proc

    xbs = [start_xb(0), start_xb(1)]
    config = tmp_path / "haproxy.cfg"
    config.write_text(haproxy_config(front, xb_ports))
    balancer = await asyncio.to_thread(
        subprocess.Popen,
        [haproxy, "-db", "-f", str(config)],
        stdout=(tmp_path / "haproxy.log").open("wb"),
        stderr=subprocess.STDOUT,
    )
    for name in (
        "MAAGW_STATE_URL",
        "MAAGW_AUDIT_URL",
        "MAAGW_PARTNER_API_PORT",
        "MAAGW_ADMIN_PORT",
    ):
        monkeypatch.delenv(name)
    xa = Gateway(load_settings(xa_settings.path))
    office_a = office_b = None
    try:
        await xa.start()
        office_a = await open_office(xa.settings)
        office_b = await open_office(load_settings(xb_settings.path))
        started = time.monotonic()
        ids = set(await publish_many(office_a, "XB", EXAMPLE.read_bytes(), MESSAGES, "lb"))
        collecting = asyncio.create_task(collect(office_b, ids, timeout=180))

        await asyncio.sleep(1.0)  # mid-run
        os.kill(xbs[0].pid, signal.SIGKILL)
        xbs[0].wait(5)
        await asyncio.sleep(5.0)
        xbs[0] = await asyncio.to_thread(start_xb, 0)

        got = await collecting
        lost, dups, _ = account(got, ids)
        marked = sum(1 for m in got if (m.headers or {}).get("x-maagw-possible-duplicate"))
        print(f"{len(got)} arrived for {MESSAGES} sent, {len(dups)} ids twice, {marked} marked")
        print(f"all arrived {time.monotonic() - started:.1f} s after the first was sent")
        assert lost == set(), f"{len(lost)} lost"
        assert unmarked_duplicates(got) == {}
        assert sum(c - 1 for c in dups.values()) < MESSAGES / 100
        # no id accepted twice across the instances: one claim per id, published once
        claims = await _fetch(
            pg_url, "SELECT count(*), count(DISTINCT message_id) FROM claims WHERE sender = 'XA'"
        )
        assert claims == [(MESSAGES, MESSAGES)]
        served = await _fetch(pg_url, "SELECT count(DISTINCT owner) FROM claims")
        assert served[0][0] >= 2, "the balancer sent everything to one instance"
        for proc in xbs:
            proc.send_signal(signal.SIGTERM)
        for proc in xbs:
            proc.wait(30)
        verified = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "gateway", "audit", "verify", "--config", str(xb_settings.path)],
            env={**os.environ, "MAAGW_AUDIT_URL": pg_url},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert verified.returncode == 0, verified.stdout + verified.stderr
    finally:
        for office in (office_a, office_b):
            if office is not None:
                await office.connection.close()
        await xa.stop()
        balancer.terminate()
        balancer.wait(10)
        for proc in xbs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        for s in (xa_settings, xb_settings):
            await delete_topology(RABBITMQ_URL, Names(s.broker.prefix), list(s.partners))


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

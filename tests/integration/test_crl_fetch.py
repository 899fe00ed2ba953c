"""XB keeps XA's CRL current: fetched over real HTTP from a local server, installed without restart.

The server (aiohttp on an ephemeral loopback port) serves what a case needs: a fresh CRL,
a stale one, a corrupt answer, or nothing at all (stopped). XB runs for real (TLS
listener, RabbitMQ); XA's TLS client certificate is what the fresh CRL revokes.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from structlog.testing import capture_logs

from gateway import pem
from gateway.ca import authority
from gateway.config.files import load_settings
from gateway.config.models import Settings
from gateway.service.gateway import Gateway
from gateway.trust import crl

NOW = dt.datetime.now(dt.UTC)
TOKEN = "crl-test-operator-token-0123456789"


@dataclass
class CrlServer:
    """A local HTTP server answering GET /xa.crl with whatever ``body`` holds."""

    body: bytes = b""
    status: int = 200
    requests: int = 0
    runner: web.AppRunner | None = None
    port: int = 0

    async def start(self) -> None:
        async def handle(_: web.Request) -> web.Response:
            self.requests += 1
            return web.Response(
                body=self.body, status=self.status, content_type="application/pkix-crl"
            )

        app = web.Application()
        app.router.add_get("/xa.crl", handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert isinstance(server, asyncio.base_events.Server)
        self.port = server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/xa.crl"


@dataclass
class Setup:
    """XB with XA's CRL (number 1, nothing revoked) fetched from ``server``; XA's files beside it."""

    root: Path
    xb: Gateway
    server: CrlServer
    crl_file: Path

    @property
    def xa_ca(self) -> Path:
        return self.root / "XA" / "ca"

    @property
    def xa_client(self) -> Path:
        return self.root / "XA" / "certs" / "tls-client.pem"

    def make_crl(self, *revoke: Path, **kw: object) -> bytes:
        """A CRL of XA's CA (the next CRL number) revoking ``revoke``; its PEM bytes."""
        for path in revoke:
            authority.revoke(self.xa_ca, pem.load_cert(path).serial_number, "keyCompromise")
        out = self.root / "made-crl.pem"
        authority.make_crl(self.xa_ca, out, **kw)  # type: ignore[arg-type]
        return out.read_bytes()

    def in_force(self) -> int | None:
        trust = self.xb.runtime.trust.partners["XA"]
        assert trust.crl is not None
        return crl.crl_number(trust.crl)

    async def status_of_new_connection(self) -> int:
        """HTTP status of GET /v1/ping on a new connection with XA's client certificate (0: refused)."""
        ctx = ssl.create_default_context(cafile=str(self.root / "XB" / "ca" / "ca.pem"))
        ctx.check_hostname = False
        ctx.load_cert_chain(self.xa_client, self.xa_client.with_suffix(".key"))
        url = f"https://127.0.0.1:{self.xb.partner_port}/v1/ping"
        try:
            async with aiohttp.ClientSession() as session, session.get(url, ssl=ctx) as resp:
                return resp.status
        except aiohttp.ClientError:
            return 0


def configure_xa_crl(root: Path, url: str | None, extra: str = "") -> Path:
    """Give XB's partner file for XA a CRL file (number 1) and its URL; the file's path."""
    crl_file = root / "XB" / "partners" / "certs" / "XA-crl.pem"
    authority.make_crl(root / "XA" / "ca", crl_file)
    partner = root / "XB" / "partners" / "XA.toml"
    source = f'crl_url = "{url}"\n' if url else ""
    partner.write_text(partner.read_text() + 'crl = "certs/XA-crl.pem"\n' + source)
    if extra:
        config = root / "XB" / "gateway.toml"
        config.write_text(config.read_text() + f"\n[crl]\n{extra}\n")
    return crl_file


async def eventually(predicate: Callable[[], bool], timeout: float = 30.0) -> bool:
    """Wait (bounded) until ``predicate()`` holds; its last value."""
    deadline = time.monotonic() + timeout
    for _ in range(int(timeout / 0.05)):
        if predicate() or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.05)
    return predicate()


def with_admin_token(root: Path) -> None:
    """Give XB's admin listener the bearer token ``TOKEN`` (for /readyz)."""
    token = root / "XB" / "admin.token"
    token.write_text(TOKEN)
    token.chmod(0o600)
    config = root / "XB" / "gateway.toml"
    config.write_text(
        config.read_text().replace("[admin]\n", '[admin]\ntoken_file = "admin.token"\n')
    )


async def start_xb(tmp_path: Path, pair: dict[str, Settings], extra: str = "") -> Setup:
    """XB started (admin token ``TOKEN``), its CRL server serving the CRL XB already has, the watch's first round done."""
    server = CrlServer()
    await server.start()
    with_admin_token(tmp_path)
    crl_file = configure_xa_crl(tmp_path, server.url, extra)
    server.body = crl_file.read_bytes()
    xb = Gateway(load_settings(pair["XB"].path))
    await xb.start()
    assert await eventually(lambda: xb.crl_rounds >= 1)
    return Setup(tmp_path, xb, server, crl_file)


@pytest.fixture
async def setup(tmp_path: Path, pair: dict[str, Settings]) -> AsyncIterator[Setup]:
    """XB running with XA's CRL and a CRL server; both stopped after the test.

    The watch's own rounds are an hour apart here: the test drives ``refresh_crls``.
    """
    s = await start_xb(tmp_path, pair, "check_seconds = 3600")
    try:
        yield s
    finally:
        await s.xb.stop()
        await s.server.stop()


async def _fresh(s: Setup) -> None:
    s.server.body = s.make_crl(s.xa_client)  # number 2: XA's client certificate revoked


async def _stale(s: Setup) -> None:
    s.server.body = s.make_crl(s.xa_client, now=NOW - dt.timedelta(days=10), next_update_days=1)


async def _corrupt(s: Setup) -> None:
    s.server.body = b"-----BEGIN X509 CRL-----\nnot base64 at all\n-----END X509 CRL-----\n"


async def _unreachable(s: Setup) -> None:
    await s.server.stop()  # nothing listens on the port any more


@pytest.mark.parametrize(
    ("case", "code"),
    [
        (_fresh, None),
        (_stale, "CRL_FETCH_STALE"),
        (_corrupt, "CRL_FETCH_CORRUPT"),
        (_unreachable, "CRL_FETCH_UNREACHABLE"),
    ],
)
async def test_a_fetched_crl_is_installed_only_when_fresh_and_the_old_one_is_kept_otherwise(
    setup: Setup, case: Callable[[Setup], Awaitable[None]], code: str | None
) -> None:
    """A fresh CRL is installed without restart (and revokes); a stale, corrupt or unreachable one leaves the old CRL in force, with a warning and an audit entry."""
    assert setup.in_force() == 1
    assert await setup.status_of_new_connection() == 204
    before = setup.crl_file.read_bytes()
    await case(setup)

    with capture_logs() as logs:
        [result] = await setup.xb.refresh_crls(force_fetch=True)

    fetched = await setup.xb.runtime.audit.search(partner="XA")
    if code is None:
        assert result.error is None and result.changed
        assert setup.in_force() == 2
        assert setup.crl_file.read_bytes() == setup.server.body  # kept for a restart or reload
        assert await setup.status_of_new_connection() == 0  # XA's client certificate is revoked now
        assert [e["event"] for e in logs if e["event"].startswith("crl_")] == ["crl_fetched"]
        [entry] = [e for e in fetched if e.event == "crl_fetched"]
        assert (entry.code, entry.details_obj()["crl_number"]) == ("CRL_INSTALLED", 2)
        return
    assert result.error is not None and result.error.code == code
    assert setup.in_force() == 1
    assert setup.crl_file.read_bytes() == before
    assert await setup.status_of_new_connection() == 204
    [warning] = [e for e in logs if e["event"] == "crl_fetch_failed"]
    assert (warning["log_level"], warning["code"], warning["partner"]) == ("warning", code, "XA")
    [entry] = [e for e in fetched if e.event == "crl_fetch_failed"]
    assert (entry.outcome, entry.code, entry.details_obj()["url"]) == (
        "failed",
        code,
        setup.server.url,
    )


async def test_a_repeated_failure_is_audited_once_and_logged_each_time(setup: Setup) -> None:
    """The same failure on every round is one audit entry (a streak), but a warning each round."""
    await _corrupt(setup)
    with capture_logs() as logs:
        for _ in range(3):
            await setup.xb.refresh_crls(force_fetch=True)
    assert len([e for e in logs if e["event"] == "crl_fetch_failed"]) == 3
    failed = await setup.xb.runtime.audit.search(event="crl_fetch_failed")
    assert len(failed) == 1


async def test_an_open_connection_whose_certificate_the_fetched_crl_revokes_is_closed(
    setup: Setup,
) -> None:
    """Installing a fetched CRL closes the established connection of the certificate it revokes, and audits it."""
    ctx = ssl.create_default_context(cafile=str(setup.root / "XB" / "ca" / "ca.pem"))
    ctx.check_hostname = False
    ctx.load_cert_chain(setup.xa_client, setup.xa_client.with_suffix(".key"))
    reader, writer = await asyncio.open_connection("127.0.0.1", setup.xb.partner_port, ssl=ctx)
    try:
        writer.write(b"GET /v1/ping HTTP/1.1\r\nHost: gw.xb.test\r\n\r\n")
        assert b" 204 " in await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        await _fresh(setup)
        await setup.xb.refresh_crls(force_fetch=True)
        assert await asyncio.wait_for(reader.read(), 10) == b""  # closed by XB
    finally:
        writer.close()
    closed = await setup.xb.runtime.audit.search(event="connection_closed")
    assert [(e.partner, e.code) for e in closed] == [("XA", "AUTH_REVOKED")]


async def test_the_watch_fetches_on_its_own_schedule(
    tmp_path: Path, pair: dict[str, Settings]
) -> None:
    """With a short check interval the running gateway fetches and installs a fresh CRL by itself."""
    s = await start_xb(tmp_path, pair, "check_seconds = 0.2\nfetch_interval_seconds = 0.2")
    try:
        await _fresh(s)
        assert await eventually(lambda: s.in_force() == 2)
        assert s.server.requests >= 2  # the first round at start, then the scheduled one
    finally:
        await s.xb.stop()
        await s.server.stop()


async def test_a_crl_near_next_update_is_warned_once_and_shown_in_readiness(setup: Setup) -> None:
    """Within the warning horizon the watch warns once per CRL, and /readyz details show it; ready stays true."""
    setup.server.body = setup.make_crl(next_update_days=1)  # within the default 2 days
    with capture_logs() as logs:
        await setup.xb.refresh_crls(force_fetch=True)
        await setup.xb.refresh_crls(force_fetch=True)
    assert setup.in_force() == 2
    warnings = [e for e in logs if e["event"] == "crl_expiring"]
    assert len(warnings) == 1 and warnings[0]["partner"] == "XA"
    url = f"http://127.0.0.1:{setup.xb.admin_port}/readyz"
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with aiohttp.ClientSession() as session, session.get(url, headers=headers) as resp:
        status, body = resp.status, await resp.json()
    assert (status, body["ready"]) == (200, True)
    xa = body["details"]["crls"]["XA"]
    assert (xa["state"], xa["crl_number"], xa["cut_off"]) == ("expiring", 2, False)
    assert 20 < xa["hours_left"] < 25


async def test_another_worker_picks_up_the_crl_file_without_fetching(
    tmp_path: Path, pair: dict[str, Settings]
) -> None:
    """A worker other than 0 never fetches; it puts a newer CRL written to the file into force."""
    server = CrlServer()
    await server.start()
    crl_file = configure_xa_crl(tmp_path, server.url, "check_seconds = 3600")
    worker = Gateway(load_settings(pair["XB"].path), worker=1)
    await worker.start()
    s = Setup(tmp_path, worker, server, crl_file)
    try:
        await _fresh(s)
        assert await worker.refresh_crls() == []
        assert s.in_force() == 1 and server.requests == 0
        crl_file.write_bytes(server.body)  # what worker 0 does after its fetch
        assert await worker.refresh_crls() == []
        assert s.in_force() == 2 and server.requests == 0
    finally:
        await worker.stop()
        await server.stop()


async def test_reload_refuses_a_stale_crl_and_keeps_the_one_in_force(setup: Setup) -> None:
    """A reload finding a CRL already past nextUpdate fails with CONFIG_CRL_STALE; the old CRL stays in force."""
    trust_before = setup.xb.runtime.trust
    setup.crl_file.write_bytes(setup.make_crl(now=NOW - dt.timedelta(days=10), next_update_days=1))
    result = await setup.xb.reload("op:dave")
    assert (result.ok, result.code) == (False, "CONFIG_CRL_STALE")
    assert setup.xb.runtime.trust is trust_before and setup.in_force() == 1
    assert await setup.status_of_new_connection() == 204


async def test_a_crl_without_a_source_is_not_fetched_and_no_failure_is_reported(
    tmp_path: Path, pair: dict[str, Settings]
) -> None:
    """A partner CRL with no crl_url and no distribution point is kept as a file only: no fetch, no warning, no audit."""
    configure_xa_crl(tmp_path, None, "check_seconds = 3600")
    xb = Gateway(load_settings(pair["XB"].path))
    await xb.start()
    try:
        with capture_logs() as logs:
            assert await xb.refresh_crls(force_fetch=True) == []
        assert not [e for e in logs if e["event"].startswith("crl_")]
        assert await xb.runtime.audit.search(event="crl_fetch_failed") == []
    finally:
        await xb.stop()

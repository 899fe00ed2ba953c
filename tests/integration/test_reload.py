"""Reload without restart, over real mutual TLS and the real RabbitMQ: XB reloads its trust in XA."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import ssl
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import aio_pika
import pytest

from gateway import pem
from gateway.audit.chain import Entry
from gateway.ca import authority
from gateway.config.models import Settings
from gateway.errors import RelayError
from gateway.service.gateway import Gateway
from maagw_testing.broker import RABBITMQ_URL

PING = b"GET /v1/ping HTTP/1.1\r\nHost: gw.xb.test\r\n\r\n"


@dataclass
class Link:
    """One keep-alive TLS connection to XB's partner API."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter

    async def ping(self) -> int:
        """The status of ``GET /v1/ping``; 0 when the server closed the connection."""
        try:
            self.writer.write(PING)
            await self.writer.drain()
            head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), 5)
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
            return 0
        return int(head.split(b" ", 2)[1])

    def close(self) -> None:
        self.writer.close()


async def connect(port: int, ca: Path, cert: Path, key: Path) -> Link | None:
    """A new connection with this client certificate; None if the handshake is refused."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.load_verify_locations(cafile=str(ca))
    ctx.load_cert_chain(cert, key)
    try:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=ctx, server_hostname="gw.xb.test"
        )
    except (ssl.SSLError, ConnectionError):
        return None
    return Link(reader, writer)


async def new_connection_status(xb: Gateway, ca: Path, cert: Path, key: Path) -> int:
    """The status a brand-new connection gets for a ping (0: refused)."""
    assert xb.partner_port is not None
    link = await connect(xb.partner_port, ca, cert, key)
    if link is None:
        return 0
    try:
        return await link.ping()
    finally:
        link.close()


@dataclass
class Setup:
    root: Path
    settings: dict[str, Settings]
    xb: Gateway
    stopped: bool = False

    @property
    def xa_client(self) -> tuple[Path, Path]:
        base = self.root / "XA" / "certs"
        return base / "tls-client.pem", base / "tls-client.key"

    @property
    def ca(self) -> Path:
        return self.settings["XB"].tls.ca

    @property
    def partner_file(self) -> Path:
        return self.root / "XB" / "partners" / "XA.toml"

    async def open(self, cert: Path, key: Path) -> Link:
        assert self.xb.partner_port is not None
        link = await connect(self.xb.partner_port, self.ca, cert, key)
        assert link is not None
        return link

    def set_partner(self, key: str, value: object) -> None:
        """Replace (or add) one key of XB's partner file for XA."""
        lines = [
            ln for ln in self.partner_file.read_text().splitlines() if not ln.startswith(f"{key} ")
        ]
        self.partner_file.write_text("\n".join([*lines, f"{key} = {json.dumps(value)}", ""]))


@pytest.fixture
async def setup(tmp_path: Path, pair: dict[str, Settings]) -> AsyncIterator[Setup]:
    """XB running (XA's files beside it), stopped after the test."""
    xb = Gateway(pair["XB"])
    await xb.start()
    s = Setup(tmp_path, pair, xb)
    try:
        yield s
    finally:
        if not s.stopped:
            await xb.stop()


async def operator_actions(xb: Gateway) -> list[Entry]:
    return await xb.runtime.audit.search(event="operator_action")


async def test_new_ca_and_pins_apply_to_new_connections_and_spare_the_open_one(
    setup: Setup,
) -> None:
    """After swapping XA's CA and pins, the open keep-alive connection still works; new ones follow the new rules."""
    cert, key = setup.xa_client
    link = await setup.open(cert, key)
    assert await link.ping() == 204
    new_ca = setup.root / "XA2" / "ca"
    authority.init_ca("XA Customs Gateway CA 2", new_ca)
    authority.issue(new_ca, "tls-client", "tls-client", setup.root / "XA2" / "certs")
    new_cert = setup.root / "XA2" / "certs" / "tls-client.pem"
    new_key = new_cert.with_suffix(".key")
    (setup.root / "XB" / "partners" / "certs" / "XA-ca.pem").write_bytes(
        (new_ca / "ca.pem").read_bytes()
    )
    setup.set_partner("tls_pins", [pem.spki_pin(pem.load_cert(new_cert))])

    result = await setup.xb.reload("alice")

    assert (result.ok, result.closed, result.kept) == (True, 0, 1)
    assert await link.ping() == 204
    assert await new_connection_status(setup.xb, setup.ca, cert, key) == 0
    assert await new_connection_status(setup.xb, setup.ca, new_cert, new_key) == 204
    link.close()
    [entry] = await operator_actions(setup.xb)
    assert (entry.actor, entry.outcome, entry.code) == ("alice", "ok", "RELOAD_OK")


def _garbage_ca(s: Setup) -> None:
    (s.root / "XB" / "partners" / "certs" / "XA-ca.pem").write_text(
        "-----BEGIN CERTIFICATE-----\nxx"
    )


def _toml_syntax(s: Setup) -> None:
    s.partner_file.write_text(s.partner_file.read_text() + "\nthis is = = not toml\n")


def _missing_crl(s: Setup) -> None:
    s.set_partner("crl", "certs/absent-crl.pem")


def _port_change(s: Setup) -> None:
    toml = s.settings["XB"].path
    port = s.settings["XB"].partner_api.port
    toml.write_text(toml.read_text().replace(f"port = {port}", f"port = {port + 1}", 1))


@pytest.mark.parametrize(
    ("breakage", "code"),
    [
        (_garbage_ca, "CONFIG_"),
        (_toml_syntax, "CONFIG_"),
        (_missing_crl, "CONFIG_"),
        (_port_change, "CONFIG_RESTART_REQUIRED"),
    ],
)
async def test_a_broken_new_file_is_refused_and_the_old_trust_stays(
    setup: Setup, breakage: Callable[[Setup], None], code: str
) -> None:
    """A reload that cannot load its new material changes nothing, and is logged and audited as failed."""
    cert, key = setup.xa_client
    trust_before = setup.xb.runtime.trust
    breakage(setup)

    result = await setup.xb.reload("bob")

    assert not result.ok
    assert result.code.startswith(code)
    assert setup.xb.runtime.trust is trust_before
    assert await new_connection_status(setup.xb, setup.ca, cert, key) == 204
    [entry] = await operator_actions(setup.xb)
    assert (entry.actor, entry.outcome, entry.code) == ("bob", "failed", result.code)
    assert entry.reason


def _revoke_xa_client(s: Setup) -> None:
    cert, _ = s.xa_client
    authority.revoke(s.root / "XA" / "ca", pem.load_cert(cert).serial_number, "keyCompromise")
    authority.make_crl(s.root / "XA" / "ca", s.root / "XB" / "partners" / "certs" / "XA-crl.pem")
    s.set_partner("crl", "certs/XA-crl.pem")


def _remove_xa(s: Setup) -> None:
    s.partner_file.unlink()


@pytest.mark.parametrize(
    ("change", "code"),
    [(_revoke_xa_client, "AUTH_REVOKED"), (_remove_xa, "AUTH_PARTNER_REMOVED")],
)
async def test_connections_of_revoked_certificates_and_removed_partners_are_closed(
    setup: Setup, change: Callable[[Setup], None], code: str
) -> None:
    """A reload closes the open connection whose certificate is now revoked or whose partner is gone, and audits it."""
    cert, key = setup.xa_client
    link = await setup.open(cert, key)
    assert await link.ping() == 204
    change(setup)

    result = await setup.xb.reload("carol")

    assert (result.ok, result.closed) == (True, 1)
    assert await link.ping() == 0
    assert await new_connection_status(setup.xb, setup.ca, cert, key) == 0
    closed = await setup.xb.runtime.audit.search(event="connection_closed")
    assert [(e.partner, e.code, e.actor) for e in closed] == [("XA", code, "carol")]


async def test_sighup_reloads(setup: Setup) -> None:
    """SIGHUP to the process reloads the configuration, audited with the signal as actor."""
    serving = asyncio.create_task(setup.xb.run_until_signalled())
    await asyncio.sleep(0.05)
    os.kill(os.getpid(), signal.SIGHUP)
    try:
        for _ in range(100):
            actions = await operator_actions(setup.xb)
            if actions:
                break
            await asyncio.sleep(0.05)
        assert [(e.actor, e.outcome) for e in actions] == [("signal:SIGHUP", "ok")]
    finally:
        os.kill(os.getpid(), signal.SIGTERM)
        await serving  # run_until_signalled stops the gateway
        setup.stopped = True


def add_partner_xc(setup: Setup) -> None:
    """Write a partner file for a new administration XC into XB's configuration."""
    xc = setup.root / "XC"
    authority.init_ca("XC Customs Gateway CA", xc / "ca")
    authority.issue(xc / "ca", "signing", "signing", xc / "certs")
    partners = setup.root / "XB" / "partners"
    shutil.copy(xc / "ca" / "ca.pem", partners / "certs" / "XC-ca.pem")
    shutil.copy(xc / "certs" / "signing.pem", partners / "certs" / "XC-signing.pem")
    (partners / "XC.toml").write_text(
        'id = "XC"\nname = "Customs administration XC"\nurl = "https://127.0.0.1:9"\n'
        'server_name = "gw.xc.test"\nca = "certs/XC-ca.pem"\n'
        'signing_certs = ["certs/XC-signing.pem"]\nbatch_max = 4\nbatch_wait_ms = 20\n'
    )


async def consumers(queue: str) -> int | None:
    """The consumer count of ``queue`` (None: no such queue)."""
    connection = await aio_pika.connect(RABBITMQ_URL)
    try:
        channel = await connection.channel()
        try:
            declared = await channel.declare_queue(queue, passive=True)
        except aio_pika.exceptions.ChannelClosed:
            return None
        return declared.declaration_result.consumer_count
    finally:
        await connection.close()


async def delete_queue(queue: str) -> None:
    connection = await aio_pika.connect(RABBITMQ_URL)
    try:
        channel = await connection.channel()
        await channel.queue_delete(queue)
    finally:
        await connection.close()


async def test_a_partner_added_by_reload_has_its_outbound_queue_consumed(setup: Setup) -> None:
    """A partner file added before a reload gets its outbound queue declared and consumed, batching as configured."""
    add_partner_xc(setup)
    queue = setup.xb.runtime.relay.names.outbound_queue("XC")
    assert setup.xb._outbound is not None
    assert setup.xb._outbound.batcher("XC") is None
    try:
        result = await setup.xb.reload("alice")
        assert (result.ok, result.added, result.warnings) == (True, ("XC",), ())
        assert await consumers(queue) == 1
        batcher = setup.xb._outbound.batcher("XC")
        assert batcher is not None and batcher.settings == (4, 0.02)
    finally:
        await delete_queue(queue)


async def test_a_consumer_that_could_not_start_is_started_by_the_next_reload(
    setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When the broker fails during a reload, the warning says so and the next reload starts the consumer."""
    add_partner_xc(setup)
    relay = setup.xb.runtime.relay
    queue = relay.names.outbound_queue("XC")

    async def broken(partners: object) -> None:
        raise RelayError("the broker is not connected")

    try:
        with monkeypatch.context() as patched:
            patched.setattr(relay, "add_partners", broken)
            first = await setup.xb.reload("alice")
        assert first.ok and first.added == ("XC",)
        assert len(first.warnings) == 1 and "XC" in first.warnings[0]
        assert await consumers(queue) is None
        second = await setup.xb.reload("alice")
        assert (second.ok, second.added, second.warnings) == (True, (), ())
        assert await consumers(queue) == 1
    finally:
        await delete_queue(queue)


async def test_a_partner_removed_and_added_back_keeps_one_consumer(setup: Setup) -> None:
    """Removing XA and adding it back by two reloads leaves exactly one consumer on its queue."""
    queue = setup.xb.runtime.relay.names.outbound_queue("XA")
    saved = setup.partner_file.read_text()
    setup.partner_file.unlink()
    removed = await setup.xb.reload("alice")
    assert removed.ok and removed.removed == ("XA",)
    setup.partner_file.write_text(saved)
    added = await setup.xb.reload("alice")
    assert (added.ok, added.added, added.warnings) == (True, ("XA",), ())
    assert await consumers(queue) == 1

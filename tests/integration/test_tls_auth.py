"""Partner authentication over real mutual TLS on loopback: who gets in, who is refused and why.

Three administrations are provisioned (XA, XB, XC); only XB's gateway runs, over the
real RabbitMQ. XB trusts XA's CA (with a CRL) and XC's CA, each with its pins.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import socket
import ssl
import uuid
import warnings
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from structlog.testing import capture_logs

from gateway import pem
from gateway.audit.chain import Entry
from gateway.ca import authority
from gateway.config.files import load_settings
from gateway.config.models import Settings
from gateway.demo import provision
from gateway.relay.topology import Names
from gateway.service.gateway import Gateway
from gateway.xml import envelope
from gateway.xml.signature import Signer
from maagw_testing.broker import delete_topology, unique_prefix

IDS = ("XA", "XB", "XC")
NOW = dt.datetime.now(dt.UTC)
PING = b"GET /v1/ping HTTP/1.1\r\nHost: gw.xb.test\r\n\r\n"


@dataclass
class Attempt:
    """What a TLS client saw: where it stopped, and the bytes it read."""

    stage: str  # "handshake" (refused in it), "read" (refused on first read), "answered"
    data: bytes
    error: str


@dataclass
class Trio:
    """XB's running gateway, and the files of the three administrations."""

    root: Path
    settings: dict[str, Settings]
    xb: Gateway

    def cert(self, gid: str, name: str) -> tuple[Path, Path]:
        base = self.root / gid / "certs"
        return base / f"{name}.pem", base / f"{name}.key"

    @property
    def port(self) -> int:
        assert self.xb.partner_port is not None
        return self.xb.partner_port


def _self_signed(out: Path, common_name: str) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - dt.timedelta(hours=1))
        .not_valid_after(NOW + dt.timedelta(days=30))
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    out.mkdir(parents=True, exist_ok=True)
    pem.write_cert(out / "self.pem", cert)
    pem.write_private_key(out / "self.key", key)
    return out / "self.pem", out / "self.key"


def prepare(root: Path, rabbitmq: str) -> dict[str, Settings]:
    """Provision XA, XB, XC; extra XA certificates (expired, future, revoked) pinned at XB."""
    base = unique_prefix("tls")
    prov = provision(root, rabbitmq, ids=IDS, prefixes={g: f"{base}{g.lower()}." for g in IDS})
    xa_ca = root / "XA" / "ca"
    out = root / "XA" / "certs"
    authority.issue(
        xa_ca, "tls-client", "expired", out, not_before=NOW - dt.timedelta(days=30), days=2
    )
    authority.issue(xa_ca, "tls-client", "future", out, not_before=NOW + dt.timedelta(days=3))
    authority.issue(xa_ca, "tls-client", "revoked", out)
    authority.issue(xa_ca, "tls-client", "unpinned", out)
    authority.issue(root / "XC" / "ca", "tls-client", "XA", root / "XC" / "certs")
    authority.revoke(xa_ca, pem.load_cert(out / "revoked.pem").serial_number, "keyCompromise")
    partners = root / "XB" / "partners"
    authority.make_crl(xa_ca, partners / "certs" / "XA-crl.pem")
    pins = [
        pem.spki_pin(pem.load_cert(out / f"{n}.pem"))
        for n in ("tls-client", "tls-server", "expired", "future", "revoked")
    ]
    xa_file = partners / "XA.toml"
    lines = [
        f"tls_pins = {json.dumps(pins)}" if line.startswith("tls_pins") else line
        for line in xa_file.read_text().splitlines()
    ]
    xa_file.write_text("\n".join([*lines, 'crl = "certs/XA-crl.pem"', ""]))
    _self_signed(root / "XA" / "self", "XA")
    return {gid: load_settings(p.config) for gid, p in prov.items()}


@pytest.fixture
async def trio(tmp_path: Path, rabbitmq: str) -> AsyncIterator[Trio]:
    """XB's gateway running, trusting XA (with a CRL) and XC."""
    settings = prepare(tmp_path, rabbitmq)
    xb = Gateway(settings["XB"])
    await xb.start()
    try:
        yield Trio(tmp_path, settings, xb)
    finally:
        await xb.stop()
        s = settings["XB"]
        await delete_topology(rabbitmq, Names(s.broker.prefix), list(s.partners))


def attempt(
    port: int, ca: Path, cert: Path | None = None, key: Path | None = None, *, tls11: bool = False
) -> Attempt:
    """Connect, send one request, read once; report where the server stopped us."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.load_verify_locations(cafile=str(ca))
    if tls11:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # that is the point here
            ctx.minimum_version = ssl.TLSVersion.TLSv1
            ctx.maximum_version = ssl.TLSVersion.TLSv1_1
        ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    if cert is not None:
        ctx.load_cert_chain(cert, key)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        try:
            tls = ctx.wrap_socket(raw, server_hostname="gw.xb.test")
        except (ssl.SSLError, OSError) as exc:
            return Attempt("handshake", b"", repr(exc))
        with tls:
            try:
                tls.sendall(PING)
                data = tls.recv(1024)
            except (ssl.SSLError, OSError) as exc:
                return Attempt("read", b"", repr(exc))
            return Attempt("answered" if data else "read", data, "")


async def _audited(xb: Gateway, event: str, code: str, timeout: float = 3.0) -> list[Entry]:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        found = [e for e in await xb.runtime.audit.search(event=event) if e.code == code]
        if found or asyncio.get_running_loop().time() > deadline:
            return found
        await asyncio.sleep(0.05)


async def _counted(xb: Gateway, code: str, timeout: float = 3.0) -> int:
    for _ in range(int(timeout / 0.05)):
        if xb.handshake_failures[code]:
            break
        await asyncio.sleep(0.05)
    return xb.handshake_failures[code]


async def test_a_valid_partner_certificate_is_accepted(trio: Trio) -> None:
    """XA's pinned client certificate gets an HTTP answer from the partner API."""
    cert, key = trio.cert("XA", "tls-client")
    got = await asyncio.to_thread(attempt, trio.port, trio.settings["XB"].tls.ca, cert, key)
    assert got.stage == "answered"
    assert got.data.startswith(b"HTTP/1.1 204")
    assert trio.xb.auth_refusals.total() == 0
    assert sum(trio.xb.handshake_failures.values()) == 0


@pytest.mark.parametrize(
    ("gid", "name", "code", "partner"),
    [
        ("XA", "expired", "AUTH_EXPIRED", "XA"),
        ("XA", "future", "AUTH_NOT_YET_VALID", "XA"),
        ("XA", "revoked", "AUTH_REVOKED", "XA"),
        ("XA", "unpinned", "AUTH_PIN_MISMATCH", "XA"),
        ("XC", "XA", "AUTH_PIN_MISMATCH", "XC"),  # XC's CA claiming to be XA
    ],
)
async def test_refused_after_the_handshake_before_any_http_and_audited(
    trio: Trio, gid: str, name: str, code: str, partner: str
) -> None:
    """A certificate the TLS library accepts but XB's trust refuses gets no HTTP byte, and is audited with reason and peer."""
    cert, key = trio.cert(gid, name)
    got = await asyncio.to_thread(attempt, trio.port, trio.settings["XB"].tls.ca, cert, key)
    assert got.data == b""
    assert got.stage == "read"  # TLS 1.3: the refusal reaches the client on its first read
    entries = await _audited(trio.xb, "auth_failure", code)
    assert [(e.partner, e.outcome) for e in entries] == [(partner, "refused")]
    assert json.loads(entries[0].details)["peer"].startswith("127.0.0.1:")
    assert "XA" not in trio.xb.connections or not trio.xb.connections["XA"]


@pytest.mark.parametrize(
    ("credential", "tls11", "code", "stage"),
    [
        (None, False, "TLS_NO_CERTIFICATE", "read"),
        (("XA", "self"), False, "TLS_CERTIFICATE_UNTRUSTED", "read"),
        (("XA", "tls-client"), True, "TLS_OLD_PROTOCOL", "handshake"),
    ],
)
async def test_refused_inside_the_tls_library_is_counted_and_logged_with_the_peer(
    trio: Trio, credential: tuple[str, str] | None, tls11: bool, code: str, stage: str
) -> None:
    """No certificate, a self-signed one, or TLS 1.1 fail the handshake; XB counts and logs each with the peer."""
    cert = key = None
    if credential == ("XA", "self"):
        cert, key = trio.root / "XA" / "self" / "self.pem", trio.root / "XA" / "self" / "self.key"
    elif credential is not None:
        cert, key = trio.cert(*credential)
    with capture_logs() as logs:
        got = await asyncio.to_thread(
            attempt, trio.port, trio.settings["XB"].tls.ca, cert, key, tls11=tls11
        )
        counted = await _counted(trio.xb, code)
    assert (got.stage, got.data) == (stage, b"")
    assert counted == 1
    failed = [e for e in logs if e["event"] == "tls_handshake_failed"]
    assert [e["code"] for e in failed] == [code]
    assert failed[0]["peer"].startswith("127.0.0.1:")


async def test_an_envelope_claiming_xa_over_xcs_session_is_a_sender_mismatch(trio: Trio) -> None:
    """XC, authenticated as XC, posting an XC-signed envelope with sender XA is refused AUTH_SENDER_MISMATCH."""
    xc_root = trio.root / "XC" / "certs"
    header = envelope.Header(
        message_id=str(uuid.uuid4()),
        sender="XA",
        receiver="XB",
        agreement="MAA-XA-XB-2024",
        message_type="maa.request",
        created=envelope.utcnow(),
        payload_format="national-json",
    )
    root = envelope.build_envelope(header, b'{"subject": "test"}', "application/json")
    signed = Signer.from_files(xc_root / "signing.key", xc_root / "signing.pem").sign(root)
    ctx = ssl.create_default_context(cafile=str(trio.settings["XB"].tls.ca))
    ctx.check_hostname = False
    ctx.load_cert_chain(xc_root / "tls-client.pem", xc_root / "tls-client.key")
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"https://127.0.0.1:{trio.port}/v1/messages",
            data=signed,
            headers={"Content-Type": "application/xml"},
            ssl=ctx,
        ) as resp,
    ):
        body = await resp.read()
    assert resp.status == 403
    assert b"AUTH_SENDER_MISMATCH" in body
    entries = await _audited(trio.xb, "rejected", "AUTH_SENDER_MISMATCH")
    assert [(e.partner, e.message_id) for e in entries] == [("XC", header.message_id)]


def test_private_keys_written_for_the_tests_are_owner_only(tmp_path: Path) -> None:
    """The self-signed test key is written 0600 like every other key (nothing readable by others)."""
    _, key = _self_signed(tmp_path, "XA")
    assert key.stat().st_mode & 0o077 == 0
    serialization.load_pem_private_key(key.read_bytes(), None)

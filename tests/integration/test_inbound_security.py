"""Issue 4 through the running gateway: attacks on XB's partner API are refused, XB stays up.

Only XB runs. The tests talk to its partner API over real mutual TLS as XA (XA's
client certificate) and sign envelopes with XA's signing key, as XA's gateway would.
Every refusal must come back as a ``rejected`` receipt with its code, signed by XB
(it verifies with XB's pinned signing certificate); nothing reaches XB's inbound
queue; the refusal is in XB's audit log; and XB still accepts a good envelope after.

The helpers here (``Link``, ``make_envelope``, ``read_receipt`` …) are shared with
``test_policy_flow.py`` and ``test_receipts_interop.py``.
"""

from __future__ import annotations

import asyncio
import copy
import ssl
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aio_pika
import aiohttp
import pytest
import xmlsec
from cryptography import x509
from lxml import etree

import adapters
from gateway.audit.chain import Entry
from gateway.ca import authority
from gateway.config.files import load_settings
from gateway.config.models import Settings
from gateway.demo import provision
from gateway.errors import http_status
from gateway.relay.back_office import BackOffice
from gateway.relay.topology import Names
from gateway.service.gateway import Gateway
from gateway.xml import envelope
from gateway.xml import signature as signing
from gateway.xml.envelope import Header, Receipt
from gateway.xml.signature import Signer
from maagw_testing.broker import RABBITMQ_URL, delete_topology, unique_prefix

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "maa-xml"
REQUEST_XML = (EXAMPLES / "maa.request.xml").read_bytes()
NS = envelope.NS
DS = signing.DS_NS
_E = f"{{{NS}}}"
_T = xmlsec.constants

# --- shared helpers ----------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    """A partner API answer."""

    status: int
    body: bytes
    headers: Mapping[str, str]


@dataclass
class Link:
    """An mTLS client to one gateway's partner API, holding one partner's client certificate."""

    session: aiohttp.ClientSession
    url: str
    server_hostname: str
    ssl_context: ssl.SSLContext
    port: int

    async def post(self, data: bytes, **headers: str) -> Answer:
        async with self.session.post(
            self.url,
            data=data,
            headers={"Content-Type": "application/xml", **headers},
            server_hostname=self.server_hostname,
        ) as resp:
            return Answer(resp.status, await resp.read(), dict(resp.headers))


def client_context(root: Path, sender: str, receiver: str) -> ssl.SSLContext:
    """TLS as ``sender``'s gateway, trusting only ``receiver``'s CA."""
    ctx = ssl.create_default_context(cafile=str(root / receiver / "ca" / "ca.pem"))
    ctx.load_cert_chain(
        root / sender / "certs" / "tls-client.pem", root / sender / "certs" / "tls-client.key"
    )
    return ctx


@asynccontextmanager
async def link(root: Path, sender: str, receiver: str, port: int) -> AsyncIterator[Link]:
    """Open a ``Link`` from ``sender`` to ``receiver``'s partner API on loopback."""
    ctx = client_context(root, sender, receiver)
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(ssl=ctx), timeout=aiohttp.ClientTimeout(total=20)
    )
    try:
        yield Link(
            session,
            f"https://127.0.0.1:{port}/v1/messages",
            f"gw.{receiver.lower()}.test",
            ctx,
            port,
        )
    finally:
        await session.close()


def signer_of(root: Path, gid: str) -> Signer:
    """The signing key a provisioned gateway ``gid`` signs with."""
    return Signer.from_files(
        root / gid / "certs" / "signing.key", root / gid / "certs" / "signing.pem"
    )


def make_envelope(
    *,
    sender: str = "XA",
    receiver: str = "XB",
    message_type: str = "maa.request",
    message_id: str | None = None,
    correlation_id: str | None = None,
    created: datetime | None = None,
    payload: bytes | None = None,
    agreement: str = "xa-xb-maa",
) -> etree._Element:
    """An unsigned envelope carrying an example maa-xml payload, as a gateway builds it."""
    payload = payload if payload is not None else (EXAMPLES / f"{message_type}.xml").read_bytes()
    exchange = adapters.get("maa-xml")
    document = exchange.decode(payload, message_type=message_type)
    header = Header(
        message_id=message_id or f"{sender}-{uuid.uuid4().hex[:16]}",
        sender=sender,
        receiver=receiver,
        agreement=agreement,
        message_type=message_type,
        created=created or datetime.now(UTC),
        payload_format="maa-xml",
        categories=tuple(sorted(exchange.categories(document))),
        correlation_id=correlation_id,
    )
    return envelope.build_envelope(header, payload, "application/xml")


def message_id_of(root: etree._Element) -> str:
    return "".join(root.find(f"{_E}Header/{_E}MessageId").itertext())  # type: ignore[union-attr]


def read_receipt(body: bytes, signer_cert: Path) -> Receipt:
    """Verify a receipt with the receiver's signing certificate (strictly) and read it."""
    cert = x509.load_pem_x509_certificate(signer_cert.read_bytes())
    verified = signing.verify(body, [cert])
    return envelope.parse_receipt(verified.root)


async def audit_entries(gateway: Gateway, **filters: str) -> list[Entry]:
    """XB's audit entries matching ``filters`` (read through the running gateway's log)."""
    return await gateway.runtime.audit.search(**filters)


@asynccontextmanager
async def running(settings: Settings) -> AsyncIterator[Gateway]:
    """A started gateway, stopped afterwards."""
    gateway = Gateway(settings)
    await gateway.start()
    try:
        yield gateway
    finally:
        await gateway.stop()


@asynccontextmanager
async def back_office(settings: Settings) -> AsyncIterator[BackOffice]:
    connection = await aio_pika.connect_robust(settings.broker.url)
    try:
        yield await BackOffice(settings, connection).open()
    finally:
        await connection.close()


@asynccontextmanager
async def provisioned(
    root: Path, ids: tuple[str, ...], *, agreements_dir: Path | None = None
) -> AsyncIterator[dict[str, Settings]]:
    """Provision ``ids`` under ``root`` with unique broker prefixes; delete their topology after."""
    base = unique_prefix("sec")
    extra = {"agreements_dir": agreements_dir} if agreements_dir is not None else {}
    prov = provision(
        root,
        RABBITMQ_URL,
        ids=ids,
        prefixes={gid: f"{base}{gid.lower()}." for gid in ids},
        **extra,  # type: ignore[arg-type]
    )
    settings = {gid: load_settings(p.config) for gid, p in prov.items()}
    try:
        yield settings
    finally:
        for s in settings.values():
            await delete_topology(RABBITMQ_URL, Names(s.broker.prefix), list(s.partners))


# --- fixtures ----------------------------------------------------------------------------


@dataclass
class XB:
    """XB running, a link to it as XA, XA's signer, and XB's back office."""

    root: Path
    settings: Settings
    gateway: Gateway
    link: Link
    signer: Signer
    office: BackOffice

    @property
    def receipt_cert(self) -> Path:
        """XB's signing certificate as XA pinned it."""
        return self.root / "XA" / "partners" / "certs" / "XB-signing.pem"

    async def inbound_count(self) -> int:
        return await self.office.count(self.settings.name_of("maagw.inbound"))


@pytest.fixture
async def xb(pair: dict[str, Settings], tmp_path: Path) -> AsyncIterator[XB]:
    """XB's gateway running with XA as its partner."""
    async with running(pair["XB"]) as gateway, back_office(pair["XB"]) as office:
        assert gateway.partner_port is not None
        async with link(tmp_path, "XA", "XB", gateway.partner_port) as lnk:
            yield XB(tmp_path, pair["XB"], gateway, lnk, signer_of(tmp_path, "XA"), office)


async def assert_refused(xb: XB, answer: Answer, code: str, message_id: str = "-") -> None:
    """A signed rejection with ``code``, audited, nothing published, and XB still accepts."""
    assert answer.status == http_status(code), answer.body[:300]
    receipt = read_receipt(answer.body, xb.receipt_cert)
    assert (receipt.sender, receipt.receiver) == ("XB", "XA")
    [entry] = receipt.entries
    assert (entry.status, entry.code, entry.message_id) == ("rejected", code, message_id)
    rejected = await audit_entries(xb.gateway, event="rejected")
    assert [(e.code, e.outcome) for e in rejected] == [(code, "refused")]
    receipts = await audit_entries(xb.gateway, event="receipt")
    assert [(e.code, e.outcome) for e in receipts] == [(code, "rejected")]
    assert await xb.inbound_count() == 0
    good = await xb.link.post(xb.signer.sign(make_envelope()))
    assert good.status == 200
    assert read_receipt(good.body, xb.receipt_cert).entries[0].status == "accepted"
    assert len(await xb.office.drain("maagw.inbound", want=1, timeout=5)) == 1


# --- attacks -----------------------------------------------------------------------------

BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
 <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
 <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
 <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
 <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
 <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
<Envelope xmlns="urn:maagw:envelope:1"><Header><MessageId>&lol9;</MessageId></Header></Envelope>
"""
EXTERNAL_ENTITY = b"""<?xml version="1.0"?>
<!DOCTYPE Envelope [<!ENTITY secret SYSTEM "file:///etc/passwd">]>
<Envelope xmlns="urn:maagw:envelope:1"><Header><MessageId>&secret;</MessageId></Header></Envelope>
"""


def _signed_doc(signer: Signer, **kw: object) -> etree._Element:
    root = make_envelope(**kw)  # type: ignore[arg-type]
    return etree.fromstring(signer.sign(root))


def _bytes(root: etree._Element) -> bytes:
    return bytes(etree.tostring(root.getroottree(), xml_declaration=True, encoding="UTF-8"))


def payload_altered(signer: Signer, mid: str, root: Path) -> bytes:
    """The payload changed after signing."""
    signed = signer.sign(make_envelope(message_id=mid))
    return signed.replace(b"bicycle parts", b"bicycle frames")


def signature_moved_into_header(signer: Signer, mid: str, root: Path) -> bytes:
    """The Signature moved from the root into the Header."""
    doc = _signed_doc(signer, message_id=mid)
    sig = doc.find(f"{{{DS}}}Signature")
    assert sig is not None
    doc.find(f"{_E}Header").append(sig)  # type: ignore[union-attr]
    return _bytes(doc)


def signed_envelope_moved_into_forged(signer: Signer, mid: str, root: Path) -> bytes:
    """XA's genuine signed envelope moved into the Payload of a forged, unsigned envelope."""
    genuine = _signed_doc(signer)
    forged = make_envelope(message_id=mid)
    payload = forged.find(f"{_E}Payload")
    assert payload is not None
    payload.append(genuine)
    return _bytes(forged)


def signed_header_moved_forged_in_place(signer: Signer, mid: str, root: Path) -> bytes:
    """A signature over the Header by ID; the signed Header moved away, a forged one in place."""
    doc = make_envelope(message_id=f"{mid}-genuine")
    header = doc.find(f"{_E}Header")
    assert header is not None
    header.set("Id", "hdr")
    _sign_by_id(doc, header, "hdr", root)
    forged = copy.deepcopy(header)
    del forged.attrib["Id"]
    forged.find(f"{_E}MessageId").text = mid  # type: ignore[union-attr]
    doc.replace(header, forged)
    doc.find(f"{_E}Payload").append(header)  # type: ignore[union-attr]
    return _bytes(doc)


def second_element_with_same_id(signer: Signer, mid: str, root: Path) -> bytes:
    """A second element carrying the same ID as a signed one."""
    env = make_envelope(message_id=mid)
    env.find(f"{_E}Header").set("Id", "hdr")  # type: ignore[union-attr]
    doc = etree.fromstring(signer.sign(env))
    decoy = copy.deepcopy(doc.find(f"{_E}Header"))
    doc.find(f"{_E}Payload").append(decoy)  # type: ignore[union-attr]
    return _bytes(doc)


def signature_pointing_at_decoy(signer: Signer, mid: str, root: Path) -> bytes:
    """A valid signature over a decoy element, not over the envelope."""
    doc = make_envelope(message_id=mid)
    decoy = etree.SubElement(doc.find(f"{_E}Header"), f"{_E}Decoy", Id="decoy")  # type: ignore[arg-type]
    decoy.text = "harmless"
    _sign_by_id(doc, decoy, "decoy", root)
    return _bytes(doc)


def second_signature(signer: Signer, mid: str, root: Path) -> bytes:
    """A copy of the genuine Signature added as a second one."""
    doc = _signed_doc(signer, message_id=mid)
    doc.append(copy.deepcopy(doc.find(f"{{{DS}}}Signature")))
    return _bytes(doc)


def unpinned_certificate(signer: Signer, mid: str, root: Path) -> bytes:
    """Signed with a certificate XA's own CA issued, but that XB has not pinned."""
    authority.issue(root / "XA" / "ca", "signing", "rogue-signing", root / "rogue")
    rogue = Signer.from_files(
        root / "rogue" / "rogue-signing.key", root / "rogue" / "rogue-signing.pem"
    )
    return rogue.sign(make_envelope(message_id=mid))


def billion_laughs(signer: Signer, mid: str, root: Path) -> bytes:
    """Nested internal entities (billion laughs)."""
    return BILLION_LAUGHS


def billion_laughs_utf16(signer: Signer, mid: str, root: Path) -> bytes:
    """Billion laughs in UTF-16, past a byte-level DOCTYPE check."""
    return (
        BILLION_LAUGHS.decode()
        .replace('version="1.0"', 'version="1.0" encoding="UTF-16"')
        .encode("utf-16")
    )


def external_entity(signer: Signer, mid: str, root: Path) -> bytes:
    """An external entity pointing at a local file."""
    return EXTERNAL_ENTITY


def deep_nesting(signer: Signer, mid: str, root: Path) -> bytes:
    """Elements nested 10,000 deep."""
    return (
        b'<Envelope xmlns="urn:maagw:envelope:1">'
        + b"<a>" * 10_000
        + b"</a>" * 10_000
        + (b"</Envelope>")
    )


def replayed_after_retention(signer: Signer, mid: str, root: Path) -> bytes:
    """A genuine envelope created 8 days ago, older than the duplicate store's retention."""
    created = datetime.now(UTC) - timedelta(days=8)
    return signer.sign(make_envelope(message_id=mid, created=created))


def _sign_by_id(doc: etree._Element, target: etree._Element, ident: str, root: Path) -> None:
    """Sign ``target`` (by ``#ident``) with XA's real key: a valid signature, wrong coverage."""
    sig = xmlsec.template.create(doc, _T.TransformExclC14N, _T.TransformEcdsaSha256, ns="ds")
    doc.append(sig)
    ref = xmlsec.template.add_reference(sig, _T.TransformSha256, uri=f"#{ident}")
    xmlsec.template.add_transform(ref, _T.TransformExclC14N)
    xmlsec.template.add_x509_data(xmlsec.template.ensure_key_info(sig))
    ctx = xmlsec.SignatureContext()
    key = xmlsec.Key.from_file(str(root / "XA" / "certs" / "signing.key"), _T.KeyDataFormatPem)
    key.load_cert_from_file(str(root / "XA" / "certs" / "signing.pem"), _T.KeyDataFormatPem)
    ctx.key = key
    ctx.register_id(target, "Id")
    ctx.sign(sig)


Attack = Callable[[Signer, str, Path], bytes]

ATTACKS: list[tuple[Attack, str, bool]] = [
    # (attack, code, whether the receipt can name the message id)
    (payload_altered, "SIG_INVALID", True),
    (signature_moved_into_header, "SIG_WRAPPING", True),
    (signed_envelope_moved_into_forged, "SIG_WRAPPING", True),
    (signed_header_moved_forged_in_place, "SIG_PROFILE", True),
    (second_element_with_same_id, "SIG_WRAPPING", True),
    (signature_pointing_at_decoy, "SIG_PROFILE", True),
    (second_signature, "SIG_PROFILE", True),
    (unpinned_certificate, "SIG_CERT_UNTRUSTED", True),
    (billion_laughs, "XML_UNSAFE", False),
    (billion_laughs_utf16, "XML_UNSAFE", False),
    (external_entity, "XML_UNSAFE", False),
    (deep_nesting, "XML_UNSAFE", False),
    (replayed_after_retention, "SIG_STALE", True),
]


@pytest.mark.parametrize(
    ("attack", "code", "names_message"), ATTACKS, ids=[a[0].__name__ for a in ATTACKS]
)
async def test_attack_is_refused_with_a_signed_receipt(
    xb: XB, attack: Attack, code: str, names_message: bool
) -> None:
    """Each attack gets its code in a rejection XB signed, is audited, publishes nothing."""
    mid = f"XA-{uuid.uuid4().hex[:16]}"
    answer = await xb.link.post(attack(xb.signer, mid, xb.root))
    await assert_refused(xb, answer, code, mid if names_message else "-")


async def test_a_comment_inside_signed_text_is_read_as_the_whole_text(xb: XB) -> None:
    """Comments inserted into signed text nodes still verify and are read around, not up to."""
    mid = f"XA-{uuid.uuid4().hex[:16]}"
    signed = xb.signer.sign(make_envelope(message_id=mid))
    half = len(mid) // 2
    tampered = signed.replace(
        f"<MessageId>{mid}</MessageId>".encode(),
        f"<MessageId>{mid[:half]}<!-- cut -->{mid[half:]}</MessageId>".encode(),
    ).replace(b"bicycle parts", b"bicycle<!-- cut --> parts", 1)
    assert tampered.count(b"<!-- cut -->") == 2
    answer = await xb.link.post(tampered)
    assert answer.status == 200, answer.body[:300]
    [entry] = read_receipt(answer.body, xb.receipt_cert).entries
    assert (entry.status, entry.message_id) == ("accepted", mid)
    [message] = await xb.office.drain("maagw.inbound", want=1, timeout=5)
    assert message.message_id == mid
    assert message.body.count(b"bicycle parts") == REQUEST_XML.count(b"bicycle parts")
    assert b"cut" not in message.body


async def test_a_duplicate_is_answered_with_a_reference_to_the_original(xb: XB) -> None:
    """The same bytes twice: published once; the second answer is a signed 'duplicate'."""
    mid = f"XA-{uuid.uuid4().hex[:16]}"
    signed = xb.signer.sign(make_envelope(message_id=mid))
    first = await xb.link.post(signed)
    second = await xb.link.post(signed)
    assert (first.status, second.status) == (200, 200)
    original = read_receipt(first.body, xb.receipt_cert)
    duplicate = read_receipt(second.body, xb.receipt_cert)
    [accepted], [again] = original.entries, duplicate.entries
    assert accepted.status == "accepted"
    assert (again.status, again.code, again.message_id) == ("duplicate", "DUPLICATE", mid)
    assert again.digest == accepted.digest == signing.document_digest(etree.fromstring(signed))
    assert again.original_receipt == original.receipt_id
    assert duplicate.receipt_id != original.receipt_id
    got = await xb.office.drain("maagw.inbound", want=1, timeout=5, idle=1.5)
    assert [m.message_id for m in got] == [mid]
    assert [e.outcome for e in await audit_entries(xb.gateway, event="duplicate")] == ["ok"]


async def test_a_reused_message_id_with_other_content_is_refused(xb: XB) -> None:
    """A second envelope under an id already published, with a different digest, is refused."""
    mid = f"XA-{uuid.uuid4().hex[:16]}"
    first = await xb.link.post(xb.signer.sign(make_envelope(message_id=mid)))
    assert first.status == 200
    other = await xb.link.post(xb.signer.sign(make_envelope(message_id=mid)))
    assert other.status == 400
    [entry] = read_receipt(other.body, xb.receipt_cert).entries
    assert (entry.status, entry.code) == ("rejected", "ENVELOPE_ID_REUSED")
    got = await xb.office.drain("maagw.inbound", want=1, timeout=5, idle=1.5)
    assert [m.message_id for m in got] == [mid]


# --- size limits -------------------------------------------------------------------------

FIFTY_MIB = 50 * 1024 * 1024


async def _raw_exchange(xb: XB, head: bytes, body_chunks: list[bytes]) -> tuple[int, bytes, float]:
    """Send a request head and some body over mTLS, then read the answer without sending more.

    Returns (status, body, seconds from the last byte sent to the whole answer).
    """
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", xb.link.port, ssl=xb.link.ssl_context, server_hostname="gw.xb.test"
    )
    try:
        writer.write(head)
        for chunk in body_chunks:
            writer.write(chunk)
            await writer.drain()
        await writer.drain()
        sent = asyncio.get_running_loop().time()
        status_line = await asyncio.wait_for(reader.readline(), 10)
        headers: dict[str, str] = {}
        while (line := await reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode().partition(":")
            headers[name.strip().lower()] = value.strip()
        body = await reader.readexactly(int(headers["content-length"]))
        took = asyncio.get_running_loop().time() - sent
        assert headers.get("connection", "").lower() == "close"
        return int(status_line.split()[1]), body, took
    finally:
        writer.close()


async def test_a_declared_50_mib_body_is_refused_before_it_is_sent(xb: XB) -> None:
    """Content-Length of 50 MiB: a signed SIZE_LIMIT answer arrives without a byte of body sent."""
    head = (
        b"POST /v1/messages HTTP/1.1\r\nHost: gw.xb.test\r\nContent-Type: application/xml\r\n"
        + f"Content-Length: {FIFTY_MIB}\r\n\r\n".encode()
    )
    status, body, took = await _raw_exchange(xb, head, [])
    assert took < 2.0
    await assert_refused(xb, Answer(status, body, {}), "SIZE_LIMIT")


async def test_a_chunked_body_over_the_limit_is_refused_once_it_passes_it(xb: XB) -> None:
    """A chunked body without Content-Length is refused as soon as it passes the limit."""
    limit = xb.settings.partner_api.max_body_bytes
    chunk = b"<a>" + b"x" * (1024 * 1024 - 7) + b"</a>"
    count = limit // len(chunk) + 2
    chunks = [f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n" for _ in range(count)]
    head = (
        b"POST /v1/messages HTTP/1.1\r\nHost: gw.xb.test\r\nContent-Type: application/xml\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
    )
    # no terminating chunk: the gateway must answer without waiting for the end
    status, body, took = await _raw_exchange(xb, head, chunks)
    assert took < 2.0
    await assert_refused(xb, Answer(status, body, {}), "SIZE_LIMIT")


async def test_a_50_mib_body_from_an_http_client_gets_the_signed_refusal(xb: XB) -> None:
    """An ordinary client sending 50 MiB gets the signed 413 SIZE_LIMIT receipt quickly."""
    started = asyncio.get_running_loop().time()
    answer = await xb.link.post(b"<" + b"x" * (FIFTY_MIB - 1))
    assert asyncio.get_running_loop().time() - started < 5.0
    await assert_refused(xb, answer, "SIZE_LIMIT")


# --- another partner's signature ---------------------------------------------------------


async def test_a_partners_signature_over_another_partners_session_is_refused(
    tmp_path: Path, rabbitmq: str
) -> None:
    """XC forwarding XA's signed envelope, or signing as XA, is refused; XA still gets through."""
    async with (
        provisioned(tmp_path, ("XA", "XB", "XC")) as settings,
        running(settings["XB"]) as gateway,
        back_office(settings["XB"]) as office,
    ):
        assert gateway.partner_port is not None
        cert = tmp_path / "XA" / "partners" / "certs" / "XB-signing.pem"
        xa_signer, xc_signer = signer_of(tmp_path, "XA"), signer_of(tmp_path, "XC")
        async with link(tmp_path, "XC", "XB", gateway.partner_port) as as_xc:
            cases = [
                (xa_signer.sign(make_envelope(sender="XA")), "SIG_CERT_UNTRUSTED"),
                (xc_signer.sign(make_envelope(sender="XA")), "AUTH_SENDER_MISMATCH"),
            ]
            for body, code in cases:
                answer = await as_xc.post(body)
                assert answer.status == http_status(code)
                [entry] = read_receipt(answer.body, cert).entries
                assert (entry.status, entry.code) == ("rejected", code)
        rejected = await audit_entries(gateway, event="rejected")
        assert [(e.partner, e.code) for e in rejected] == [
            ("XC", "SIG_CERT_UNTRUSTED"),
            ("XC", "AUTH_SENDER_MISMATCH"),
        ]
        assert await office.count(settings["XB"].name_of("maagw.inbound")) == 0
        async with link(tmp_path, "XA", "XB", gateway.partner_port) as as_xa:
            good = await as_xa.post(xa_signer.sign(make_envelope(sender="XA")))
            assert good.status == 200

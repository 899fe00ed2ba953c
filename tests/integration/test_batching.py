"""Batching on the partner link: several signed envelopes per request, one signed receipt list."""

from __future__ import annotations

import collections
import uuid
from pathlib import Path
from typing import Any

import aio_pika
import pytest
from lxml import etree

from gateway.audit.log import AuditLog
from gateway.config.files import load_settings
from gateway.demo import provision
from gateway.relay.back_office import BackOffice
from gateway.relay.topology import Names
from gateway.service.gateway import Gateway
from gateway.xml import envelope as env
from gateway.xml import safe as xmlsafe
from gateway.xml import signature as signing
from maagw_testing.broker import RABBITMQ_URL, delete_topology, unique_prefix

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
REQUEST = (EXAMPLES / "national-json" / "maa.request.json").read_bytes()


@pytest.fixture
async def batched(tmp_path: Path, rabbitmq: str) -> Any:
    """XA and XB whose partner links batch up to 32 envelopes, with a generous rate limit."""
    agreements = tmp_path / "agreements"
    agreements.mkdir()
    source = Path(__file__).resolve().parents[2] / "config" / "agreements" / "xa-xb-maa.toml"
    (agreements / "xa-xb-maa.toml").write_text(
        source.read_text().replace("rate_per_minute = 600", "rate_per_minute = 600000")
    )
    base = unique_prefix("batch")
    prov = provision(
        tmp_path / "gw",
        rabbitmq,
        prefixes={"XA": base + "xa.", "XB": base + "xb."},
        agreements_dir=agreements,
        batch_max=32,
    )
    settings = {gid: load_settings(p.config) for gid, p in prov.items()}
    yield settings, tmp_path / "gw"
    for s in settings.values():
        await delete_topology(RABBITMQ_URL, Names(s.broker.prefix), list(s.partners))


async def test_a_burst_travels_in_batches_and_arrives_exactly_once(batched: Any) -> None:
    """300 messages sent with batching on arrive once each; XB signed fewer receipts than messages."""
    settings, _ = batched
    xa, xb = Gateway(settings["XA"]), Gateway(settings["XB"])
    await xa.start()
    await xb.start()
    conn = await aio_pika.connect_robust(RABBITMQ_URL)
    try:
        office_a = await BackOffice(settings["XA"], conn).open()
        office_b = await BackOffice(settings["XB"], conn).open()
        ids = [f"b-{i:04d}-{uuid.uuid4().hex[:6]}" for i in range(300)]
        for mid in ids:
            await office_a.send("XB", REQUEST, message_id=mid)
        got = await office_b.drain("maagw.inbound", want=300, timeout=60, idle=1.5)
        counts = collections.Counter(str(m.message_id) for m in got)
        assert set(counts) == set(ids)
        assert max(counts.values()) == 1
    finally:
        await conn.close()
        await xa.stop()
        await xb.stop()
    audit = await AuditLog.open(settings["XB"].audit_url, gateway_id="XB")
    try:
        receipts = await audit.search(event="receipt", limit=1000)
    finally:
        await audit.close()
    lists = {e.receipt_digest for e in receipts}
    assert len(receipts) == 300
    assert len(lists) < 300  # several messages answered by one signed receipt list


async def test_a_bad_envelope_in_a_batch_is_refused_alone(batched: Any) -> None:
    """In a batch with one altered envelope, that one is rejected and the others are accepted."""
    settings, root = batched
    xb = Gateway(settings["XB"])
    await xb.start()
    signer = signing.Signer.from_files(root / "XA/certs/signing.key", root / "XA/certs/signing.pem")
    payload = (EXAMPLES / "maa-xml" / "maa.request.xml").read_bytes()
    envelopes, ids = [], []
    for i in range(3):
        mid = f"batch-{i}-{uuid.uuid4().hex[:6]}"
        header = env.Header(
            message_id=mid,
            sender="XA",
            receiver="XB",
            agreement="xa-xb-maa",
            message_type="maa.request",
            created=env.utcnow(),
            payload_format="maa-xml",
            categories=("financial", "goods", "personal", "trader", "transport"),
        )
        envelopes.append(signer.sign(env.build_envelope(header, payload, "application/xml")))
        ids.append(mid)
    envelopes[1] = envelopes[1].replace(b"Bicycle", b"Tricycle", 1)
    assert envelopes[1] != envelopes[0]
    from gateway.partner_client.client import PartnerClient
    from gateway.trust.identity import TrustStore

    xa_settings = settings["XA"]
    client = PartnerClient(xa_settings.partners, TrustStore(xa_settings.partners), xa_settings.tls)
    conn = await aio_pika.connect_robust(RABBITMQ_URL)
    try:
        answer = await client.post_batch("XB", envelopes)
        assert answer.status == 200
        verified = signing.verify(
            xmlsafe.parse(answer.body), TrustStore(xa_settings.partners).signing_certs("XB")
        )
        receipt = env.parse_receipt(verified.root)
        statuses = {e.message_id: (e.status, e.code) for e in receipt.entries}
        assert statuses[ids[0]] == ("accepted", None)
        assert statuses[ids[2]] == ("accepted", None)
        assert statuses[ids[1]][0] == "rejected"
        assert statuses[ids[1]][1] == "SIG_INVALID"
        office_b = await BackOffice(settings["XB"], conn).open()
        got = await office_b.drain("maagw.inbound", want=2, idle=1.0)
        assert sorted(str(m.message_id) for m in got) == sorted([ids[0], ids[2]])
        assert etree.QName(verified.root).localname == "Receipt"
    finally:
        await client.close()
        await conn.close()
        await xb.stop()

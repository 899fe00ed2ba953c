"""Issue 5 end to end: the agreement decides what crosses, in both gateways, and says why.

XA and XB run over real mutual TLS and RabbitMQ with the agreement in
``config/agreements/xa-xb-maa.toml`` (XA may not send ``maa.spontaneous`` to XB).
Refusals outbound end in XA's dead-letter queue with a ``rejected`` event; refusals
inbound (XA's gateway bypassed, signed envelopes posted straight to XB) end in a
signed rejection receipt. Every decision is in the audit log with agreement, rule and code.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import uuid
from pathlib import Path

from test_inbound_security import (
    back_office,
    link,
    make_envelope,
    provisioned,
    read_receipt,
    running,
    signer_of,
)

from gateway.config.models import Settings
from gateway.demo import AGREEMENTS
from gateway.relay.back_office import BackOffice
from gateway.service.gateway import Gateway

NATIONAL = Path(__file__).resolve().parents[2] / "examples" / "national-json"
AGREEMENT = "xa-xb-maa"


def national(kind: str) -> bytes:
    return (NATIONAL / f"{kind}.json").read_bytes()


async def decisions(gateway: Gateway, message_id: str) -> list[tuple[str, str, str, str]]:
    """(outcome, agreement, rule, code) of every policy decision about ``message_id``."""
    entries = await gateway.runtime.audit.search(event="policy_decision", message_id=message_id)
    return [
        (e.outcome or "", e.agreement or "", e.details_obj().get("rule", ""), e.code or "")
        for e in entries
    ]


async def _rejected_outbound(office: BackOffice, message_id: str) -> tuple[str, str]:
    """The code on the dead-lettered copy and on the ``rejected`` event for ``message_id``."""
    [dead] = await office.drain("maagw.dead", want=1, timeout=10)
    [event] = [json.loads(m.body) for m in await office.drain("maagw.events", want=1, timeout=10)]
    assert dead.message_id == event["message_id"] == message_id
    assert event["status"] == "rejected"
    return str(dead.headers["x-maagw-code"]), str(event["code"])


async def test_a_type_the_agreement_does_not_permit_stops_at_the_sender(
    pair: dict[str, Settings],
) -> None:
    """maa.spontaneous from XA is dead-lettered at XA with POLICY_MESSAGE_TYPE; XB sees nothing."""
    async with (
        running(pair["XB"]) as xb,
        running(pair["XA"]) as xa,
        back_office(pair["XA"]) as office_a,
        back_office(pair["XB"]) as office_b,
    ):
        refused, allowed = f"XA-SP-{uuid.uuid4().hex[:12]}", f"XA-RQ-{uuid.uuid4().hex[:12]}"
        await office_a.send(
            "XB", national("maa.spontaneous"), message_id=refused, message_type="maa.spontaneous"
        )
        assert await _rejected_outbound(office_a, refused) == ("POLICY_MESSAGE_TYPE",) * 2
        assert await decisions(xa, refused) == [
            ("deny", AGREEMENT, "flows.XA->XB.message_types", "POLICY_MESSAGE_TYPE")
        ]
        # the allowed request that follows is the only thing XB's back office receives
        await office_a.send("XB", national("maa.request"), message_id=allowed)
        got = await office_b.drain("maagw.inbound", want=1, timeout=10, idle=1.0)
        assert [m.message_id for m in got] == [allowed]
        assert await decisions(xa, allowed) == [
            ("allow", AGREEMENT, "flows.XA->XB", "POLICY_ALLOW")
        ]
        assert await decisions(xb, allowed) == [
            ("allow", AGREEMENT, "flows.XA->XB", "POLICY_ALLOW")
        ]
        assert await decisions(xb, refused) == []


async def test_a_reply_to_an_unknown_request_is_refused_outbound_and_inbound(
    pair: dict[str, Settings], tmp_path: Path
) -> None:
    """A reply answering no known request: refused at XA; posted past XA, refused by XB."""
    async with (
        running(pair["XB"]) as xb,
        running(pair["XA"]) as xa,
        back_office(pair["XA"]) as office_a,
        back_office(pair["XB"]) as office_b,
    ):
        unknown = f"XB-RQ-{uuid.uuid4().hex[:12]}"
        reply = f"XA-RP-{uuid.uuid4().hex[:12]}"
        await office_a.send(
            "XB",
            national("maa.reply"),
            message_id=reply,
            message_type="maa.reply",
            correlation_id=unknown,
        )
        assert await _rejected_outbound(office_a, reply) == ("POLICY_NO_REQUEST",) * 2
        assert await decisions(xa, reply) == [
            ("deny", AGREEMENT, "known_request", "POLICY_NO_REQUEST")
        ]

        bypass = f"XA-RP-{uuid.uuid4().hex[:12]}"
        signed = signer_of(tmp_path, "XA").sign(
            make_envelope(message_type="maa.reply", message_id=bypass, correlation_id=unknown)
        )
        assert xb.partner_port is not None
        async with link(tmp_path, "XA", "XB", xb.partner_port) as as_xa:
            answer = await as_xa.post(signed)
        assert answer.status == 403
        [entry] = read_receipt(
            answer.body, tmp_path / "XA" / "partners" / "certs" / "XB-signing.pem"
        ).entries
        assert (entry.status, entry.code, entry.message_id) == (
            "rejected",
            "POLICY_NO_REQUEST",
            bypass,
        )
        assert await decisions(xb, bypass) == [
            ("deny", AGREEMENT, "known_request", "POLICY_NO_REQUEST")
        ]
        assert await office_b.count(pair["XB"].name_of("maagw.inbound")) == 0


def _agreements_with(tmp_path: Path, **changes: str) -> Path:
    """A copy of the example agreements with top-level or flow keys of xa-xb-maa replaced."""
    target = tmp_path / "agreements-src"
    shutil.copytree(AGREEMENTS, target)
    path = target / f"{AGREEMENT}.toml"
    text = path.read_text()
    for key, value in changes.items():
        text, n = re.subn(rf"(?m)^{key} = .*$", f"{key} = {value}", text)
        assert n, key
    path.write_text(text)
    return target


async def test_the_inbound_rate_limit_answers_429_and_refusals_cost_no_allowance(
    tmp_path: Path, rabbitmq: str
) -> None:
    """With one message a minute, a refused message takes no token; the second allowed gets 429."""
    agreements = _agreements_with(tmp_path, rate_per_minute="1")
    root = tmp_path / "gw"
    async with (
        provisioned(root, ("XA", "XB"), agreements_dir=agreements) as settings,
        running(settings["XB"]) as xb,
        back_office(settings["XB"]) as office,
    ):
        assert xb.partner_port is not None
        signer = signer_of(root, "XA")
        async with link(root, "XA", "XB", xb.partner_port) as as_xa:
            refused = await as_xa.post(signer.sign(make_envelope(message_type="maa.spontaneous")))
            first = await as_xa.post(signer.sign(make_envelope()))
            second_id = f"XA-{uuid.uuid4().hex[:12]}"
            second_signed = signer.sign(make_envelope(message_id=second_id))
            second = await as_xa.post(second_signed)
            # the 429 released the claim: the sender's retry is held back, not a duplicate
            again = await as_xa.post(second_signed)
        assert (refused.status, first.status, second.status, again.status) == (
            403,
            200,
            429,
            429,
        )
        assert 1 <= int(second.headers["Retry-After"]) <= 60
        assert (
            await decisions(xb, second_id)
            == [("deny", AGREEMENT, "flows.XA->XB.rate_per_minute", "POLICY_RATE")] * 2
        )
        assert len(await office.drain("maagw.inbound", want=1, timeout=5, idle=1.0)) == 1


async def test_suspending_the_agreement_and_reloading_blocks_both_directions(
    pair: dict[str, Settings], tmp_path: Path
) -> None:
    """Once the agreement file says suspended and both gateways reload, nothing crosses."""
    async with (
        running(pair["XB"]) as xb,
        running(pair["XA"]) as xa,
        back_office(pair["XA"]) as office_a,
        back_office(pair["XB"]) as office_b,
    ):
        before = f"XA-RQ-{uuid.uuid4().hex[:12]}"
        await office_a.send("XB", national("maa.request"), message_id=before)
        assert [m.message_id for m in await office_b.drain("maagw.inbound", want=1)] == [before]
        assert len(await office_a.drain("maagw.events", want=1)) == 1

        for gid in ("XA", "XB"):
            path = tmp_path / gid / "agreements" / f"{AGREEMENT}.toml"
            text = path.read_text().replace('status = "active"', 'status = "suspended"')
            path.write_text(text.replace('status_reason = ""', 'status_reason = "under review"'))
        reloaded = await asyncio.gather(xa.reload("test"), xb.reload("test"))
        assert [r.ok for r in reloaded] == [True, True]
        for gateway in (xa, xb):
            changed = await gateway.runtime.audit.search(
                event="operator_action", agreement="xa-xb-maa"
            )
            assert [(c.code, c.actor, c.details_obj()["status"]) for c in changed] == [
                ("AGREEMENT_CHANGED", "test", "suspended")
            ]

        a_to_b, b_to_a = f"XA-RQ-{uuid.uuid4().hex[:12]}", f"XB-RQ-{uuid.uuid4().hex[:12]}"
        await office_a.send("XB", national("maa.request"), message_id=a_to_b)
        await office_b.send("XA", national("maa.request"), message_id=b_to_a)
        results = await asyncio.gather(
            _rejected_outbound(office_a, a_to_b), _rejected_outbound(office_b, b_to_a)
        )
        assert results == [("POLICY_SUSPENDED",) * 2] * 2
        assert await decisions(xa, a_to_b) == [("deny", AGREEMENT, "status", "POLICY_SUSPENDED")]
        assert await decisions(xb, b_to_a) == [("deny", AGREEMENT, "status", "POLICY_SUSPENDED")]
        # and XB refuses inbound too, when XA's gateway is bypassed
        assert xb.partner_port is not None
        bypass = f"XA-RQ-{uuid.uuid4().hex[:12]}"
        async with link(tmp_path, "XA", "XB", xb.partner_port) as as_xa:
            answer = await as_xa.post(
                signer_of(tmp_path, "XA").sign(make_envelope(message_id=bypass))
            )
        assert answer.status == 403
        [entry] = read_receipt(
            answer.body, tmp_path / "XA" / "partners" / "certs" / "XB-signing.pem"
        ).entries
        assert (entry.code, entry.message_id) == ("POLICY_SUSPENDED", bypass)
        assert await office_b.count(pair["XB"].name_of("maagw.inbound")) == 0
        assert await office_a.count(pair["XA"].name_of("maagw.inbound")) == 0

"""The pipelines on the fakes: XA's and XB's real settings, keys, stores and audit log (SQLite
in a temporary directory), with the in-memory relay and the fake partner instead of RabbitMQ
and the network."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import structlog

from gateway.audit.chain import AuditEvent
from gateway.audit.log import AuditLog
from gateway.config.agreement import Agreement
from gateway.config.models import Settings
from gateway.contract import AmqpHeader
from gateway.partner_client.memory import MemoryPartner
from gateway.pipeline.runtime import Runtime
from gateway.relay.memory import MemoryDelivery, MemoryRelay
from gateway.relay.topology import Names
from gateway.state.sqlite import SqliteStateStore
from gateway.trust.identity import TrustStore
from gateway.xml.signature import Signer
from maagw_testing.broker import provision_pair

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"
AGREEMENT = "xa-xb-maa"


@pytest.fixture(autouse=True)
def plain_tracebacks() -> Iterator[None]:
    """Log a bug's traceback as plain text: rich's panels take a second per error line."""
    before = structlog.get_config()
    structlog.configure(
        processors=[
            *before["processors"][:-1],
            structlog.dev.ConsoleRenderer(exception_formatter=structlog.dev.plain_traceback),
        ]
    )
    yield
    structlog.configure(**before)


@pytest.fixture(scope="session")
def pair(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Settings]:
    """XA's and XB's certificates and configuration, made once (the demo's agreements)."""
    return provision_pair(tmp_path_factory.mktemp("pipeline-pair"), tag="pipe")


def signer_of(settings: Settings) -> Signer:
    return Signer.from_files(settings.signing.key, settings.signing.cert)


def agreement_with(settings: Settings, **changes: Any) -> dict[str, Agreement]:
    """The settings' agreements with ``xa-xb-maa`` changed: top-level keys, or ``flow`` (the
    rules of both flows updated with the given dict)."""
    data = settings.agreements[AGREEMENT].model_dump()
    flow = changes.pop("flow", None)
    data.update(changes)
    if flow is not None:
        for rules in data["flows"].values():
            rules.update(flow)
    agreements = dict(settings.agreements)
    agreements[AGREEMENT] = Agreement.model_validate(data)
    return agreements


@dataclass
class Side:
    """One gateway's runtime on the fakes, recording what it audits."""

    rt: Runtime
    relay: MemoryRelay
    audited: list[AuditEvent] = field(default_factory=list)

    def codes(self) -> list[tuple[str, str | None]]:
        """(event, code) of every audit entry so far."""
        return [(e.event, e.code) for e in self.audited]

    def events(self) -> list[dict[str, Any]]:
        """The status events published for the back office, oldest first."""
        return [json.loads(m.body) for m in self.relay.messages(self.relay.names.events)]


class RecordingRuntime(Runtime):
    """A runtime whose audit appends are also kept in a list for the assertions."""

    audited: list[AuditEvent]

    async def record(self, *events: AuditEvent) -> None:
        await super().record(*events)
        self.audited.extend(events)


MakeSide = Callable[..., Any]


@pytest.fixture
async def make_side(tmp_path: Path) -> AsyncIterator[MakeSide]:
    """``await make_side(settings, client)``: a runtime on its own state, audit log and relay."""
    opened: list[tuple[SqliteStateStore, AuditLog, MemoryRelay]] = []

    async def make(settings: Settings, client: Any, **setting_changes: Any) -> Side:
        home = tmp_path / f"{settings.gateway_id}-{len(opened)}"
        home.mkdir()
        if setting_changes:
            settings = settings.model_copy(update=setting_changes)
        signer = signer_of(settings)
        # broker time runs as real time: a delay queue returns nothing unless a test advances it
        relay = MemoryRelay(Names(settings.broker.prefix))
        await relay.connect(list(settings.partners))
        store = await SqliteStateStore.open(home / "state.db", owner="test", boot=uuid.uuid4().hex)
        audit = await AuditLog.open(str(home / "audit.db"), gateway_id=settings.gateway_id)
        opened.append((store, audit, relay))
        rt = RecordingRuntime(
            settings, TrustStore(settings.partners), signer, relay, store, audit, client
        )
        rt.audited = []
        side = Side(rt, relay)
        side.audited = rt.audited
        return side

    yield make
    for store, audit, relay in opened:
        await relay.close()
        await audit.close()
        await store.close()


def fake_xb(pair: dict[str, Settings]) -> MemoryPartner:
    """A fake XB that signs its receipts with XB's key and verifies XA's envelopes as XB does."""
    return MemoryPartner(
        "XB",
        signer_of(pair["XB"]),
        client_id="XA",
        sender_certs=TrustStore(pair["XB"].partners).signing_certs("XA"),
    )


def example(message_type: str, fmt: str = "national-json") -> bytes:
    suffix = "json" if fmt == "national-json" else "xml"
    return (EXAMPLES / fmt / f"{message_type}.{suffix}").read_bytes()


async def back_office_sends(
    side: Side,
    body: bytes | None = None,
    *,
    message_type: str = "maa.request",
    message_id: str | None = None,
    correlation_id: str | None = None,
    fmt: str | None = "national-json",
    agreement: str | None = AGREEMENT,
    headers: dict[str, Any] | None = None,
    partner: str = "XB",
) -> MemoryDelivery:
    """Publish a back-office message for ``partner`` and take it from its queue, unsettled."""
    relay = side.relay
    hdrs: dict[str, Any] = {}
    if fmt is not None:
        hdrs[AmqpHeader.FORMAT] = fmt
    if agreement is not None:
        hdrs[AmqpHeader.AGREEMENT] = agreement
    hdrs.update(headers or {})
    await relay.publish(
        relay.names.outbound,
        partner,
        example(message_type) if body is None else body,
        message_id=message_id if message_id is not None else f"XA-{uuid.uuid4().hex[:12]}",
        message_type=message_type,
        correlation_id=correlation_id,
        content_type="application/json",
        headers=hdrs,
    )
    return await take(relay, relay.names.outbound_queue(partner))


async def take(relay: MemoryRelay, queue: str) -> MemoryDelivery:
    """The next message of ``queue``, delivered to a consumer that does not settle it."""
    [message] = await take_all(relay, queue, 1)
    return message


async def take_all(relay: MemoryRelay, queue: str, count: int) -> list[MemoryDelivery]:
    """The next ``count`` messages of ``queue``, delivered and left unsettled."""
    got: asyncio.Queue[MemoryDelivery] = asyncio.Queue()

    async def hold(message: Any) -> None:
        await got.put(message)

    await relay.consume(queue, hold)
    try:
        async with asyncio.timeout(2):
            return [await got.get() for _ in range(count)]
    finally:
        await relay.stop_consuming()

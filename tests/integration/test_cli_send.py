"""``maagw send --check``: the agreement policy runs before anything is published."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aio_pika
from click.testing import CliRunner, Result

from gateway.cli import main
from gateway.config.models import Settings
from gateway.relay.back_office import BackOffice

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "national-json"


async def send(settings: Settings, message_type: str, *extra: str) -> Result:
    """``maagw send --check`` of the example of ``message_type`` from XA to XB."""
    args = ["send", "--config", str(settings.path), "--to", "XB", "--type", message_type]
    args += ["--check", *extra, str(EXAMPLES / f"{message_type}.json")]
    return await asyncio.to_thread(CliRunner().invoke, main, args)


async def queued(settings: Settings) -> int:
    connection = await aio_pika.connect_robust(settings.broker.url)
    try:
        office = await BackOffice(settings, connection).open()
        return await office.count(settings.name_of("maagw.outbound.XB"))
    finally:
        await connection.close()


async def test_a_message_the_agreement_refuses_is_not_published(
    pair: dict[str, Settings],
) -> None:
    """``send --check`` of a type the agreement does not allow exits 1 with one line naming the policy code; only the allowed message is queued."""
    refused = await send(pair["XA"], "maa.spontaneous")
    allowed = await send(pair["XA"], "maa.request")
    assert refused.exit_code == 1
    assert refused.stdout == ""
    assert refused.stderr.splitlines() == [
        "maagw: POLICY_MESSAGE_TYPE: agreement xa-xb-maa does not allow maa.spontaneous "
        "from XA to XB (allowed: maa.refusal, maa.reply, maa.request)"
    ]
    assert allowed.exit_code == 0, allowed.output
    assert allowed.stdout.startswith("check: POLICY_ALLOW under xa-xb-maa")
    assert "published " in allowed.stdout
    assert await queued(pair["XA"]) == 1


async def test_a_reply_to_no_known_request_is_refused_by_the_check(
    pair: dict[str, Settings],
) -> None:
    """A reply whose correlation id answers no request this gateway received is refused by ``--check`` as the gateway would refuse it."""
    result = await send(pair["XA"], "maa.reply", "--correlation-id", "XB-REQ-NEVER-SEEN")
    assert result.exit_code == 1
    assert result.stderr.splitlines() == [
        "maagw: POLICY_NO_REQUEST: the maa.reply answers no request known under agreement xa-xb-maa"
    ]

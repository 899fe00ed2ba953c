"""``maagw send``: publish a back-office message (an operator's test tool), checked on request."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import click

import adapters
from gateway.cli.common import config_option, one_line_errors, settings_from
from gateway.cli.serve import broker_reason
from gateway.config.models import Settings
from gateway.contract import MESSAGE_TYPES, REPLY_TYPES, AmqpHeader
from gateway.errors import ConfigError, PolicyViolation, RelayError


@click.command()
@config_option
@click.option("--to", "partner", required=True, help="Partner administration id, e.g. XB.")
@click.option("--type", "message_type", required=True, type=click.Choice(MESSAGE_TYPES))
@click.option(
    "--format",
    "fmt",
    default=None,
    help="Adapter name of FILE (default: from its suffix: .json national-json, "
    ".xml maa-xml, .csv aeo-mra-csv).",
)
@click.option("--agreement", default=None, help="Agreement id (default: the one covering it).")
@click.option("--correlation-id", default=None, help="The request a reply answers.")
@click.option("--message-id", default=None, help="Default: a new UUID.")
@click.option(
    "--check",
    is_flag=True,
    help="Run the agreement policy on FILE first, as the gateway will; publish only if allowed.",
)
@click.argument("file", type=click.Path(path_type=Path, exists=True, dir_okay=False))
@one_line_errors
def send(
    config_path: Path | None,
    partner: str,
    message_type: str,
    fmt: str | None,
    agreement: str | None,
    correlation_id: str | None,
    message_id: str | None,
    check: bool,
    file: Path,
) -> None:
    """Publish FILE as a back-office message for PARTNER (an operator's test tool).

    With --check, a message the agreement refuses is not published: exit 1 with the
    policy code and reason (the rate limit alone is not checked: it waits, never refuses).
    """
    from gateway.relay.broker import Relay
    from gateway.relay.topology import Names

    settings = settings_from(config_path)
    if partner not in settings.partners:
        raise ConfigError(
            f"unknown partner {partner} (known: {', '.join(sorted(settings.partners))})"
        )
    fmt = fmt or _format_for(file)
    message_id = message_id or str(uuid.uuid4())
    if check:
        click.echo(
            _check_policy(settings, file, fmt, partner, message_type, agreement, correlation_id)
        )
    headers: dict[str, str] = {AmqpHeader.FORMAT: fmt}
    if agreement:
        headers[AmqpHeader.AGREEMENT] = agreement

    async def publish() -> None:
        relay = Relay(
            settings.broker.urls,
            Names(settings.broker.prefix),
            connection_name=f"maagw-send-{settings.gateway_id}",
        )
        await relay.connect(settings.partners)
        try:
            await relay.publish(
                relay.names.outbound,
                partner,
                file.read_bytes(),
                message_id=message_id,
                message_type=message_type,
                correlation_id=correlation_id,
                headers=headers,
            )
        finally:
            await relay.close()

    try:
        asyncio.run(publish())
    except RelayError as exc:
        raise RelayError(broker_reason(exc), code=exc.code) from None
    click.echo(f"published {message_id} ({message_type}, {fmt}) for {partner}")


def _check_policy(
    settings: Settings,
    file: Path,
    fmt: str,
    partner: str,
    message_type: str,
    agreement_id: str | None,
    correlation_id: str | None,
) -> str:
    """The gateway's outbound policy decision on FILE; ``PolicyViolation`` when refused."""
    import adapters
    from gateway.cli.agreements import check_message
    from gateway.policy.engine import find_agreement

    known = None
    if message_type in REPLY_TYPES:
        # as the gateway decides: a reply must answer a request this gateway received
        governing = find_agreement(
            settings.agreements, agreement_id, settings.gateway_id, partner, message_type
        )
        known = governing is not None and _knows_request(
            settings, governing.id, partner, correlation_id
        )
    checked = check_message(
        adapters.get(fmt),
        settings.agreements,
        file.read_bytes(),
        fmt=fmt,
        sender=settings.gateway_id,
        receiver=partner,
        direction="outbound",
        message_type=message_type,
        agreement_id=agreement_id,
        known_request=known,
    )
    decision = checked.decision
    if not decision.allowed:
        raise PolicyViolation(decision.reason, code=decision.code)
    redactions = ", ".join(decision.redactions) or "none"
    return (
        f"check: {decision.code} under {decision.agreement_id} (redactions: {redactions}; "
        "rate limit not checked)"
    )


def _knows_request(
    settings: Settings, agreement_id: str, partner: str, correlation_id: str | None
) -> bool:
    """Whether ``partner`` sent request ``correlation_id`` under the agreement (state store)."""
    from gateway.state.store import is_postgres, open_state

    where = settings.state_location
    if not correlation_id or (not is_postgres(where) and not Path(where).exists()):
        return False

    async def ask() -> bool:
        store = await open_state(where)
        try:
            return await store.knows_request(agreement_id, partner, correlation_id)
        finally:
            await store.close()

    return asyncio.run(ask())


def _format_for(file: Path) -> str:
    fmt = adapters.format_for_file(file.name)
    if fmt is None:
        raise click.UsageError(f"cannot tell the format of {file.name}; pass --format")
    return fmt

"""``maagw dead list | show ID | replay ID``: the operator's view of dead letters.

A queue cannot be browsed, so the gateway keeps a copy of every message it
dead-letters in its state store. ``replay`` publishes the copy again to the
outbound exchange (same message id, a fresh attempt count) with publisher
confirms, and records an audited operator action.
"""

from __future__ import annotations

import asyncio
import getpass
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from gateway.audit import AuditEvent, AuditLog
from gateway.cli_common import config_option, one_line_errors, settings_from
from gateway.config import Settings
from gateway.errors import ConfigError, GatewayError
from gateway.relay import Names, Relay
from gateway.store import DeadLetter, Store

#: headers the gateway adds when it dead-letters or retries; dropped on replay
_GATEWAY_HEADERS = (
    "x-maagw-code",
    "x-maagw-reason",
    "x-maagw-partner",
    "x-maagw-dead-id",
    "x-maagw-attempt",
    "x-maagw-first-seen",
    "x-maagw-last-error",
    "x-death",
    "x-first-death-exchange",
    "x-first-death-queue",
    "x-first-death-reason",
    "x-delivery-count",
)


@click.group("dead")
def dead() -> None:
    """Dead-lettered messages: list, show, replay."""


def _when(ts: float | None) -> str:
    return "-" if ts is None else datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


async def _with_store(settings: Settings, fn: Any) -> Any:
    path = settings.state_dir / "state.db"
    if not path.exists():
        raise ConfigError(f"{path}: no state store (has this gateway run?)")
    store = await Store.open(path)
    try:
        return await fn(store)
    finally:
        await store.close()


@dead.command("list")
@config_option
@click.option("--limit", default=50, show_default=True)
@one_line_errors
def list_dead(config_path: Path | None, limit: int) -> None:
    """One line per dead letter, newest first."""
    settings = settings_from(config_path)
    items: list[DeadLetter] = asyncio.run(_with_store(settings, lambda s: s.dead_list(limit)))
    if not items:
        click.echo("no dead letters")
        return
    click.echo(
        f"{'id':>5}  {'dead at':<20} {'partner':<8} {'code':<26} {'replayed':<20} message id"
    )
    for d in items:
        click.echo(
            f"{d.id:>5}  {_when(d.dead_at):<20} {d.partner or '-':<8} {d.code:<26} "
            f"{_when(d.replayed_at):<20} {d.message_id or '-'}"
        )


@dead.command("show")
@config_option
@click.argument("dead_id", type=int)
@one_line_errors
def show_dead(config_path: Path | None, dead_id: int) -> None:
    """Everything kept of one dead letter (properties, reason; the body on request)."""
    settings = settings_from(config_path)
    item: DeadLetter | None = asyncio.run(_with_store(settings, lambda s: s.dead_get(dead_id)))
    if item is None:
        raise GatewayError(f"no dead letter {dead_id}", code="DEAD_NOT_FOUND")
    click.echo(
        json.dumps(
            {
                "id": item.id,
                "message_id": item.message_id,
                "partner": item.partner,
                "direction": item.direction,
                "code": item.code,
                "reason": item.reason,
                "dead_at": _when(item.dead_at),
                "replayed_at": _when(item.replayed_at),
                "properties": item.properties,
                "body_bytes": len(item.body),
            },
            indent=2,
        )
    )


@dead.command("replay")
@config_option
@click.argument("dead_id", type=int)
@click.option("--actor", default=None, help="Who replays (default: the OS user).")
@one_line_errors
def replay_dead(config_path: Path | None, dead_id: int, actor: str | None) -> None:
    """Publish a dead letter again to the outbound exchange; audited."""
    settings = settings_from(config_path)
    actor = actor or f"os:{getpass.getuser()}"

    async def run(store: Store) -> DeadLetter:
        item = await store.dead_get(dead_id)
        if item is None:
            raise GatewayError(f"no dead letter {dead_id}", code="DEAD_NOT_FOUND")
        if item.direction != "outbound" or not item.partner:
            raise GatewayError(
                f"dead letter {dead_id} is not an outbound message", code="DEAD_NOT_REPLAYABLE"
            )
        props = item.properties
        headers = {
            k: v for k, v in (props.get("headers") or {}).items() if k not in _GATEWAY_HEADERS
        }
        relay = Relay(
            settings.broker.url,
            Names(settings.broker.prefix),
            connection_name=f"maagw-replay-{settings.gateway_id}",
        )
        await relay.connect(settings.partners)
        try:
            await relay.publish(
                relay.names.outbound,
                item.partner,
                item.body,
                message_id=props.get("message_id"),
                message_type=props.get("type"),
                correlation_id=props.get("correlation_id"),
                content_type=props.get("content_type"),
                headers=headers,
            )
        finally:
            await relay.close()
        await store.dead_mark_replayed(dead_id)
        audit = await AuditLog.open(settings.audit_url, gateway_id=settings.gateway_id)
        try:
            await audit.append(
                AuditEvent(
                    event="operator_action",
                    direction="outbound",
                    partner=item.partner,
                    message_type=props.get("type"),
                    message_id=item.message_id,
                    outcome="ok",
                    code="DEAD_REPLAYED",
                    reason=f"dead letter {dead_id} replayed",
                    actor=actor,
                    details={"dead_id": dead_id, "original_code": item.code},
                )
            )
        finally:
            await audit.close()
        return item

    item = asyncio.run(_with_store(settings, run))
    click.echo(f"replayed dead letter {dead_id} (message {item.message_id}) to {item.partner}")

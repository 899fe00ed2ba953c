"""``maagw dead list | show ID | replay ID``: the operator's view of dead letters.

A queue cannot be browsed, so the gateway keeps a copy of every message it
dead-letters in its state store. ``replay`` publishes the copy again to the
outbound exchange (same message id, a fresh attempt count) with publisher
confirms, removes the letter's copy from the dead-letter queue, and records an
audited operator action.

A letter's status: ``open``; ``replayed`` (when, last); ``resolved`` once the audit
log holds a later outbound ``delivered`` entry for its message id and partner —
whether by a replay or because the back office sent the message again. Replaying a
letter that was already replayed or resolved needs ``--again``.
"""

from __future__ import annotations

import asyncio
import getpass
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from gateway.audit.chain import AuditEvent, Entry, format_time
from gateway.audit.log import AuditLog
from gateway.cli.common import config_option, one_line_errors, settings_from
from gateway.config.models import Settings
from gateway.contract import GATEWAY_HEADERS
from gateway.errors import ConfigError, DeadLetterError, ErrorCode, RelayError
from gateway.relay.broker import Relay
from gateway.relay.topology import Names
from gateway.state.store import DeadLetter, StateStore, is_postgres, open_state

#: headers the gateway adds when it dead-letters or retries; dropped on replay
_GATEWAY_HEADERS = GATEWAY_HEADERS | {
    "x-death",
    "x-first-death-exchange",
    "x-first-death-queue",
    "x-first-death-reason",
    "x-delivery-count",
}


@click.group("dead")
def dead() -> None:
    """Dead-lettered messages: list, show, replay."""


def _when(ts: float | None) -> str:
    return "-" if ts is None else datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


async def _with_store(settings: Settings, fn: Any) -> Any:
    where = settings.state_location
    if not is_postgres(where) and not Path(where).exists():
        raise ConfigError(f"{where}: no state store (has this gateway run?)")
    store = await open_state(where)
    try:
        return await fn(store)
    finally:
        await store.close()


async def _with_store_and_audit(settings: Settings, fn: Any) -> Any:
    async def both(store: StateStore) -> Any:
        audit = await AuditLog.open(
            settings.audit_url, gateway_id=settings.gateway_id, create=False
        )
        try:
            return await fn(store, audit)
        finally:
            await audit.close()

    return await _with_store(settings, both)


async def resolution(audit: AuditLog, item: DeadLetter) -> Entry | None:
    """The audit entry of a later outbound delivery of this letter's message, if any."""
    if item.direction != "outbound" or not item.message_id:
        return None
    since = format_time(datetime.fromtimestamp(item.dead_at, UTC))
    entries = await audit.search(
        event="delivered", message_id=item.message_id, partner=item.partner, since=since
    )
    return next((e for e in entries if e.direction == "outbound"), None)


def _status(item: DeadLetter, resolved: Entry | None) -> str:
    if resolved is not None:
        return "resolved"
    return "open" if item.replayed_at is None else "replayed"


@dead.command("list")
@config_option
@click.option("--limit", default=50, show_default=True)
@one_line_errors
def list_dead(config_path: Path | None, limit: int) -> None:
    """One line per dead letter, newest first."""
    settings = settings_from(config_path)

    async def rows(store: StateStore, audit: AuditLog) -> list[tuple[DeadLetter, Entry | None]]:
        return [(d, await resolution(audit, d)) for d in await store.dead_list(limit)]

    items: list[tuple[DeadLetter, Entry | None]] = asyncio.run(
        _with_store_and_audit(settings, rows)
    )
    if not items:
        click.echo("no dead letters")
        return
    click.echo(
        f"{'id':>5}  {'dead at':<20} {'partner':<8} {'code':<26} {'status':<9} "
        f"{'replayed':<20} message id"
    )
    for d, resolved in items:
        click.echo(
            f"{d.id:>5}  {_when(d.dead_at):<20} {d.partner or '-':<8} {d.code:<26} "
            f"{_status(d, resolved):<9} {_when(d.replayed_at):<20} {d.message_id or '-'}"
        )


@dead.command("show")
@config_option
@click.argument("dead_id", type=int)
@one_line_errors
def show_dead(config_path: Path | None, dead_id: int) -> None:
    """Everything kept of one dead letter (properties, reason; the body on request)."""
    settings = settings_from(config_path)

    async def one(store: StateStore, audit: AuditLog) -> tuple[DeadLetter | None, Entry | None]:
        item = await store.dead_get(dead_id)
        return item, (await resolution(audit, item) if item is not None else None)

    item, resolved = asyncio.run(_with_store_and_audit(settings, one))
    if item is None:
        raise DeadLetterError(f"no dead letter {dead_id}", code=ErrorCode.DEAD_NOT_FOUND)
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
                "status": _status(item, resolved),
                "replayed_at": _when(item.replayed_at),
                "delivered_at": resolved.time if resolved is not None else "-",
                "delivered_audit_seq": resolved.seq if resolved is not None else None,
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
@click.option(
    "--again",
    is_flag=True,
    help="Replay a letter that was already replayed, or whose message was delivered since.",
)
@one_line_errors
def replay_dead(config_path: Path | None, dead_id: int, actor: str | None, again: bool) -> None:
    """Publish a dead letter again and take its copy off the dead-letter queue; audited."""
    settings = settings_from(config_path)
    actor = actor or f"os:{getpass.getuser()}"

    async def run(store: StateStore, audit: AuditLog) -> tuple[DeadLetter, str]:
        item = await store.dead_get(dead_id)
        if item is None:
            raise DeadLetterError(f"no dead letter {dead_id}", code=ErrorCode.DEAD_NOT_FOUND)
        if item.direction != "outbound" or not item.partner:
            raise DeadLetterError(
                f"dead letter {dead_id} is not an outbound message",
                code=ErrorCode.DEAD_NOT_REPLAYABLE,
            )
        resolved = await resolution(audit, item)
        if resolved is not None and not again:
            raise DeadLetterError(
                f"dead letter {dead_id}: message {item.message_id} was delivered since "
                f"(audit entry {resolved.seq}, {resolved.time}); pass --again to send it "
                "once more",
                code=ErrorCode.DEAD_RESOLVED,
            )
        if not await store.dead_claim_replay(dead_id, again=again):
            raise DeadLetterError(
                f"dead letter {dead_id} was replayed at {_when(item.replayed_at)}; "
                "pass --again to replay it once more",
                code=ErrorCode.DEAD_ALREADY_REPLAYED,
            )
        props = item.properties
        headers = {
            k: v for k, v in (props.get("headers") or {}).items() if k not in _GATEWAY_HEADERS
        }
        relay = Relay(
            settings.broker.urls,
            Names(settings.broker.prefix),
            connection_name=f"maagw-replay-{settings.gateway_id}",
        )
        try:
            await relay.connect(settings.partners)
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
        except RelayError:
            await relay.close()
            await store.dead_unclaim_replay(dead_id, item.replayed_at)
            raise
        try:
            copy = "removed" if await relay.take_dead_copy(dead_id) else "absent"
        except RelayError as exc:
            copy = "kept"
            click.echo(
                f"maagw: warning: {exc.code}: replayed, but its copy may still be in "
                f"{relay.names.dead}: {exc.reason}",
                err=True,
            )
        finally:
            await relay.close()
        await audit.append(
            AuditEvent(
                event="operator_action",
                direction="outbound",
                partner=item.partner,
                message_type=props.get("type"),
                message_id=item.message_id,
                outcome="ok",
                code=ErrorCode.DEAD_REPLAYED,
                reason=f"dead letter {dead_id} replayed",
                actor=actor,
                details={
                    "dead_id": dead_id,
                    "original_code": item.code,
                    "again": again,
                    "dead_queue_copy": copy,
                },
            )
        )
        return item, copy

    item, copy = asyncio.run(_with_store_and_audit(settings, run))
    where = {
        "removed": "its copy left the dead-letter queue",
        "absent": "the dead-letter queue held no copy of it",
        "kept": "its copy could not be removed from the dead-letter queue",
    }[copy]
    click.echo(
        f"replayed dead letter {dead_id} (message {item.message_id}) to {item.partner}; {where}"
    )

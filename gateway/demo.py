"""``maagw demo``: two administrations exchange a request and its reply end to end.

``provision`` writes, for each administration, a CA, TLS server and client
certificates, a signing certificate, ``gateway.toml``, the partner's file and the
agreements — everything an operator would have — so that the demo, the
integration tests and the benchmark run the real thing, not a stand-in.

Each demo run has broker names of its own (prefixes ``demo-<run>.xa.`` and
``demo-<run>.xb.``), so that nothing left on a shared broker — an interrupted
earlier run, someone else's messages — can stand in its way, and it deletes them
at the end, also after a failure or Ctrl-C.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import secrets
import shutil
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from gateway import pem
from gateway.ca import authority
from gateway.config.files import load_settings
from gateway.config.models import Settings
from gateway.contract import AmqpHeader
from gateway.errors import ConfigError, ErrorCode, RelayError
from gateway.relay import back_office
from gateway.relay.back_office import BackOffice, connect_robust
from gateway.relay.broker import broker_error

PROJECT_ROOT = Path(__file__).resolve().parents[1]


EXAMPLES = PROJECT_ROOT / "examples"


AGREEMENTS = PROJECT_ROOT / "config" / "agreements"


@dataclass(frozen=True, slots=True)
class Provisioned:
    """One administration's files, written by ``provision``."""

    gateway_id: str
    config: Path
    prefix: str
    partner_port: int
    admin_port: int


def provision(
    root: Path,
    broker_url: str,
    ids: Sequence[str] = ("XA", "XB"),
    *,
    prefixes: dict[str, str] | None = None,
    agreements_dir: Path = AGREEMENTS,
    extra: dict[str, str] | None = None,
    batch_max: int = 1,
    admin_token: bool = False,
) -> dict[str, Provisioned]:
    """Create certificates and configuration for each administration under ``root/<ID>``.

    ``admin_token``: also write ``root/<ID>/admin.token`` (mode 0600) and name it as
    ``[admin] token_file``, so that ``/readyz`` and ``maagw reload`` work.
    """
    from gateway.service.listeners import free_port

    prefixes = prefixes or {gid: f"{gid.lower()}." for gid in ids}
    ports = {gid: (free_port(), free_port()) for gid in ids}
    for gid in ids:
        base = root / gid
        ca_dir = base / "ca"
        cert_dir = base / "certs"
        authority.init_ca(f"{gid} Customs Gateway CA", ca_dir)
        host = f"gw.{gid.lower()}.test"
        authority.issue(
            ca_dir, "tls-server", "tls-server", cert_dir, sans=[host, "localhost", "127.0.0.1"]
        )
        authority.issue(ca_dir, "tls-client", "tls-client", cert_dir)
        authority.issue(ca_dir, "signing", "signing", cert_dir)
    result: dict[str, Provisioned] = {}
    for gid in ids:
        base = root / gid
        (base / "partners" / "certs").mkdir(parents=True, exist_ok=True)
        for other in ids:
            if other == gid:
                continue
            obase = root / other
            pdir = base / "partners" / "certs"
            shutil.copy(obase / "ca" / "ca.pem", pdir / f"{other}-ca.pem")
            shutil.copy(obase / "certs" / "signing.pem", pdir / f"{other}-signing.pem")
            pins = [
                pem.spki_pin(pem.load_cert(obase / "certs" / f"{n}.pem"))
                for n in ("tls-client", "tls-server")
            ]
            (base / "partners" / f"{other}.toml").write_text(
                f'id = "{other}"\n'
                f'name = "Customs administration {other}"\n'
                f'url = "https://127.0.0.1:{ports[other][0]}"\n'
                f'server_name = "gw.{other.lower()}.test"\n'
                f'ca = "certs/{other}-ca.pem"\n'
                f"tls_pins = {json.dumps(pins)}\n"
                f'signing_certs = ["certs/{other}-signing.pem"]\n'
                f"batch_max = {batch_max}\n"
                "batch_wait_ms = 5\n"
            )
        shutil.copytree(agreements_dir, base / "agreements", dirs_exist_ok=True)
        lines = [
            "[gateway]",
            f'id = "{gid}"',
            f'name = "Customs administration {gid}"',
            'state_dir = "state"',
            # built on first use instead: the demo and the tests start many gateways
            "preload_schemas = false",
            "",
            "[partner_api]",
            'host = "127.0.0.1"',
            f"port = {ports[gid][0]}",
            "",
            "[admin]",
            'host = "127.0.0.1"',
            f"port = {ports[gid][1]}",
            *(['token_file = "admin.token"'] if admin_token else []),
            "",
            "[tls]",
            'ca = "ca/ca.pem"',
            'server_cert = "certs/tls-server.pem"',
            'server_key = "certs/tls-server.key"',
            'client_cert = "certs/tls-client.pem"',
            'client_key = "certs/tls-client.key"',
            "",
            "[signing]",
            'cert = "certs/signing.pem"',
            'key = "certs/signing.key"',
            "",
            "[broker]",
            f'url = "{broker_url}"',
            f'prefix = "{prefixes[gid]}"',
            *([extra["broker"]] if extra and "broker" in extra else []),
            "",
            "[audit]",
            'url = "audit.db"',
            "",
        ]
        if "delivery" not in (extra or {}):
            lines += ["[delivery]", "backoff_initial = 1.0", ""]
        for section, body in (extra or {}).items():
            if section != "broker":  # merged into the [broker] table above
                lines += [f"[{section}]", body, ""]
        config = base / "gateway.toml"
        config.write_text("\n".join(lines))
        if admin_token:
            _write_token(base / "admin.token")
        result[gid] = Provisioned(gid, config, prefixes[gid], *ports[gid])
    return result


def _write_token(path: Path) -> None:
    """A fresh admin token, readable by this user only."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(secrets.token_hex(24) + "\n")


@dataclass
class Timeline:
    """The steps of the demo, as the people involved would see them."""

    started: float = field(default_factory=time.monotonic)
    rows: list[tuple[datetime, str, str, str, str]] = field(default_factory=list)

    def add(
        self, who: str, step: str, outcome: str, message_id: str, at: datetime | None = None
    ) -> None:
        self.rows.append((at or datetime.now(UTC), who, step, outcome, message_id))

    def render(self) -> str:
        out = [f"{'time (UTC)':<13} {'who':<14} {'step':<46} {'outcome':<10} message id"]
        out.append("-" * 120)
        for at, who, step, outcome, mid in sorted(self.rows, key=lambda r: r[0]):
            out.append(f"{at:%H:%M:%S.%f}"[:12] + f"  {who:<14} {step:<46} {outcome:<10} {mid}")
        return "\n".join(out)


async def _exchange(settings: dict[str, Settings], timeline: Timeline) -> bool:
    from gateway.service.gateway import Gateway

    xa = settings["XA"]
    started: list[Gateway] = []
    try:
        for s in settings.values():
            gateway = Gateway(s)
            await gateway.start()
            started.append(gateway)
    except BaseException:
        for g in started:
            await g.stop()
        raise
    connection = await connect_robust(xa.broker.urls)
    try:
        offices = {gid: await BackOffice(s, connection).open() for gid, s in settings.items()}
        # the national form limits references to 35 characters (as the WCO data model does)
        request_id = f"XA-REQ-{uuid.uuid4().hex[:20].upper()}"
        reply_id = f"XB-REP-{uuid.uuid4().hex[:20].upper()}"
        request = (EXAMPLES / "national-json" / "maa.request.json").read_bytes()
        reply = _reply_with_declaration(request_id)

        await _publish(offices["XA"], "XB", request, request_id, "maa.request", None)
        timeline.add("XA back office", "published maa.request (national-json)", "sent", request_id)
        got = await _consume_inbound(offices["XB"], request_id, timeline, "XB back office")
        ok_request = got is not None and await _wait_event(
            offices["XA"], request_id, "delivered", timeline, "XA back office"
        )
        ok_reply = False
        if ok_request:
            await _publish(offices["XB"], "XA", reply, reply_id, "maa.reply", request_id)
            timeline.add("XB back office", "published maa.reply with NCTS CC015C", "sent", reply_id)
            got_reply = await _consume_inbound(offices["XA"], reply_id, timeline, "XA back office")
            ok_reply = got_reply is not None and await _wait_event(
                offices["XB"], reply_id, "delivered", timeline, "XB back office"
            )
    finally:
        await connection.close()
        for g in started:
            await g.stop()
    for gid, s in settings.items():
        await _audit_rows(s, gid, [request_id, reply_id], timeline)
    return ok_request and ok_reply


def _reply_with_declaration(request_id: str) -> bytes:
    """XB's reply to the request, carrying an NCTS CC015C declaration as supporting document."""
    reply = json.loads((EXAMPLES / "national-json" / "maa.reply.json").read_text())
    reply["inReplyTo"] = request_id
    declaration = (EXAMPLES / "ncts-p5" / "cc015c.xml").read_bytes()
    reply["attachments"] = [
        {
            "format": "ncts-p5-xml",
            "filename": "export-declaration-cc015c.xml",
            "content": base64.b64encode(declaration).decode("ascii"),
        }
    ]
    return json.dumps(reply).encode()


async def _publish(
    office: BackOffice,
    partner: str,
    body: bytes,
    message_id: str,
    message_type: str,
    correlation_id: str | None,
) -> None:
    await office.send(
        partner,
        body,
        message_id=message_id,
        message_type=message_type,
        correlation_id=correlation_id,
        content_type="application/json",
    )


async def _consume_inbound(
    office: BackOffice, message_id: str, timeline: Timeline, who: str, timeout: float = 15.0
) -> bytes | None:
    message = await office.take(
        "maagw.inbound", lambda m: m.message_id == message_id, timeout=timeout
    )
    if message is None:
        timeline.add(who, "waited for the message", "TIMEOUT", message_id)
        return None
    fmt = (message.headers or {}).get(AmqpHeader.FORMAT)
    fmt_name = fmt.decode() if isinstance(fmt, bytes) else str(fmt)
    timeline.add(who, f"consumed {message.type} ({fmt_name})", "received", message_id)
    return bytes(message.body)


async def _wait_event(
    office: BackOffice,
    message_id: str,
    status: str,
    timeline: Timeline,
    who: str,
    timeout: float = 15.0,
) -> bool:
    def note(message: Any) -> None:
        event = json.loads(message.body)
        if event.get("message_id") == message_id:
            timeline.add(
                who, f"event {event['status']}", event.get("receipt", event["status"]), message_id
            )

    def wanted(message: Any) -> bool:
        event = json.loads(message.body)
        return bool(event.get("message_id") == message_id and event["status"] == status)

    if await office.take("maagw.events", wanted, timeout=timeout, seen=note) is not None:
        return True
    timeline.add(who, f"waited for event {status}", "TIMEOUT", message_id)
    return False


async def _audit_rows(s: Settings, gid: str, ids: list[str], timeline: Timeline) -> None:
    from gateway.audit.log import AuditLog

    audit = await AuditLog.open(s.audit_url, gateway_id=s.gateway_id)
    seen: set[int] = set()
    try:
        for mid in ids:
            entries, _ = await audit.timeline(mid)
            for e in entries:
                if e.seq in seen or e.message_id != mid:
                    continue
                seen.add(e.seq)
                step = f"{e.event} {e.direction or ''} {e.message_type or ''}".strip()
                if e.code and e.code != ErrorCode.POLICY_ALLOW:
                    step += f" [{e.code}]"
                timeline.add(
                    f"gateway {gid}",
                    step,
                    e.outcome or "",
                    mid,
                    at=datetime.fromisoformat(e.time.replace("Z", "+00:00")),
                )
    finally:
        await audit.close()


def run_demo(state_dir: Path | None, broker_url: str, *, run_id: str | None = None) -> bool:
    """Provision, start both gateways, exchange, print the timeline; True if both arrived.

    The run's broker names (``demo-<run_id>.xa.…``, ``demo-<run_id>.xb.…``; a random
    ``run_id`` by default) are deleted at the end, whatever happened.
    """
    started = time.monotonic()
    if state_dir is not None and state_dir.exists() and any(state_dir.iterdir()):
        raise ConfigError(f"--state-dir {state_dir} must be absent or empty")
    _require_broker(broker_url)
    keep = state_dir is not None
    root = state_dir or Path(tempfile.mkdtemp(prefix="maagw-demo-"))
    root.mkdir(parents=True, exist_ok=True)
    run = f"demo-{run_id or uuid.uuid4().hex[:8]}."
    prefixes = {"XA": f"{run}xa.", "XB": f"{run}xb."}
    try:
        provisioned = provision(root, broker_url, prefixes=prefixes, batch_max=32, admin_token=True)
        settings = {gid: load_settings(p.config) for gid, p in provisioned.items()}
        click.echo(
            f"XA partner API on 127.0.0.1:{provisioned['XA'].partner_port}, "
            f"XB on 127.0.0.1:{provisioned['XB'].partner_port}; broker prefixes "
            f"{prefixes['XA']}, {prefixes['XB']} (this run's own, removed at the end)"
        )
        timeline = Timeline()
        ok = asyncio.run(_exchange(settings, timeline))
        click.echo(timeline.render())
        took = time.monotonic() - started
        if ok:
            click.echo(f"\nOK: the request reached XB and the reply reached XA ({took:.1f} s).")
        else:
            click.echo(f"\nFAILED: not every message arrived ({took:.1f} s).", err=True)
        if keep:
            click.echo(_kept_state(root, provisioned["XA"]))
        return ok
    finally:
        _remove_broker_objects(broker_url, prefixes)
        if not keep:
            shutil.rmtree(root, ignore_errors=True)


def _kept_state(root: Path, xa: Provisioned) -> str:
    config = root / "XA" / "gateway.toml"
    token = root / "XA" / "admin.token"
    return "\n".join(
        [
            f"State kept in {root} (XB alike, in {root / 'XB'}). Try:",
            f"  maagw audit verify --config {config}",
            f"  maagw dead list --config {config}",
            f"  maagw serve --config {config}     # XA again; then, from another shell:",
            f'  curl -H "Authorization: Bearer $(cat {token})" '
            f"http://127.0.0.1:{xa.admin_port}/readyz",
            f"  maagw reload --config {config}    # authenticated by {token}",
        ]
    )


def _remove_broker_objects(url: str, prefixes: dict[str, str]) -> None:
    """Delete the run's exchanges and queues; a failure is reported, never raised."""
    from gateway.relay.broker import delete_topology
    from gateway.relay.topology import Names

    async def remove() -> None:
        for gid, prefix in prefixes.items():
            partners = [other for other in prefixes if other != gid]
            await delete_topology(url, Names(prefix), partners)

    try:
        asyncio.run(remove())
    except Exception as exc:
        click.echo(
            f"warning: could not remove the broker objects of this run "
            f"({', '.join(prefixes.values())}*): {exc.__class__.__name__}: {exc}",
            err=True,
        )


def _require_broker(url: str) -> None:
    try:
        asyncio.run(back_office.probe(url))
    except Exception as exc:
        error = broker_error(exc, url)
        if error.code != ErrorCode.RELAY_UNAVAILABLE:
            # a broker answered: its refusal says what to fix (exit 2, as for broker.url)
            raise error from None
        raise RelayError(
            f"RabbitMQ is not reachable at {url.split('@')[-1]} ({exc.__class__.__name__}); "
            "start it with `rabbitmq-server -detached` (or `make demo`, which starts it)",
            code=ErrorCode.RELAY_UNAVAILABLE,
        ) from None

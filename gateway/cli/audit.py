"""``maagw audit …``: the auditor's tools over the exchange log.

Every command reads ``--config`` (the audit store URL, the gateway id and the signing
certificate) or takes ``--db URL`` directly. Nothing here edits or deletes an entry:
``purge`` only drops evidence bytes past their retention and records itself as an
operator action. Exit status: 0 done, 1 tampering found / nothing found / refused,
2 usage or configuration error.
"""

from __future__ import annotations

import asyncio
import getpass
import json
import sys
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import click
from cryptography import x509

from gateway.audit.backend import SearchFilter
from gateway.audit.chain import AuditEvent, Entry, format_time
from gateway.audit.export import verify_bundle
from gateway.audit.log import AuditLog
from gateway.audit.verify import VerifyReport
from gateway.cli.common import config_option, one_line_errors, settings_from
from gateway.errors import ConfigError

T = TypeVar("T")


#: most entries one ``search`` returns: they are held in memory and printed at once
MAX_SEARCH_LIMIT = 100_000


@dataclass(frozen=True)
class _Target:
    url: str
    gateway_id: str | None
    trusted: tuple[x509.Certificate, ...]
    #: CAs whose signing certificates, recorded in the log, may sign checkpoints
    cas: tuple[x509.Certificate, ...] = ()


def _load_certs(path: Path) -> list[x509.Certificate]:
    try:
        return x509.load_pem_x509_certificates(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: cannot read certificate ({exc})") from exc


def _target(
    config_path: Path | None, db: str | None, certs: Sequence[Path] = (), cas: Sequence[Path] = ()
) -> _Target:
    trusted: list[x509.Certificate] = []
    for path in certs:
        trusted.extend(_load_certs(path))
    ca_certs = [c for path in cas for c in _load_certs(path)]
    if db is not None:
        return _Target(db, None, tuple(trusted), tuple(ca_certs))
    settings = settings_from(config_path)
    if settings.signing_cert_path.exists():
        trusted.extend(_load_certs(settings.signing_cert_path))
    if settings.tls.ca.exists():
        ca_certs.extend(_load_certs(settings.tls.ca))
    return _Target(settings.audit_url, settings.gateway_id, tuple(trusted), tuple(ca_certs))


def _run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


async def _open(target: _Target) -> AuditLog:
    log = await AuditLog.open(target.url, gateway_id=target.gateway_id or "-", create=False)
    if target.gateway_id is None:
        first = await log.search(SearchFilter(limit=1))
        if first:
            log.gateway_id = first[0].gateway
    return log


def _common(fn: Callable[..., Any]) -> Callable[..., Any]:
    """--config, --db and one-line errors for every command."""
    fn = one_line_errors(fn)
    fn = click.option(
        "--db",
        "db",
        metavar="URL",
        help="Audit store URL (sqlite:///path, a path, or postgresql://…) instead of --config.",
    )(fn)
    return config_option(fn)


@click.group("audit")
def audit() -> None:
    """Search, verify and export the tamper-evident exchange log."""


# ------------------------------------------------------------------------- search


_TABLE = (
    ("seq", 7),
    ("time", 27),
    ("event", 15),
    ("direction", 8),
    ("partner", 8),
    ("agreement", 16),
    ("message_type", 14),
    ("message_id", 24),
    ("outcome", 8),
    ("code", 0),
)


def _row(entry: Entry) -> str:
    cells = []
    for name, width in _TABLE:
        value = getattr(entry, name)
        text = "-" if value is None else str(value)
        cells.append(text.ljust(width) if width else text)
    return " ".join(cells).rstrip()


def _header() -> str:
    return " ".join(n.ljust(w) if w else n for n, w in _TABLE)


@audit.command()
@_common
@click.option("--partner")
@click.option("--agreement")
@click.option("--type", "message_type", help="Message type.")
@click.option("--message-id")
@click.option("--event", help="Event name (received, rejected, delivered, …).")
@click.option("--outcome", help="ok, refused, failed, …")
@click.option("--since", help="ISO time (UTC unless a zone is given).")
@click.option("--until", help="ISO time (UTC unless a zone is given).")
@click.option(
    "--limit",
    type=click.IntRange(1, MAX_SEARCH_LIMIT),
    default=1000,
    show_default=True,
    help=f"At most this many entries (1 to {MAX_SEARCH_LIMIT:,}; for more, use export).",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
def search(
    config_path: Path | None,
    db: str | None,
    partner: str | None,
    agreement: str | None,
    message_type: str | None,
    message_id: str | None,
    event: str | None,
    outcome: str | None,
    since: str | None,
    until: str | None,
    limit: int,
    as_json: bool,
) -> None:
    """List entries matching every given filter, oldest first."""
    flt = SearchFilter(
        partner=partner,
        agreement=agreement,
        message_type=message_type,
        message_id=message_id,
        event=event,
        outcome=outcome,
        since=_time_opt(since, "--since"),
        until=_time_opt(until, "--until"),
        limit=limit,
    )

    async def go() -> list[Entry]:
        log = await _open(_target(config_path, db))
        try:
            return await log.search(flt)
        finally:
            await log.close()

    entries = _run(go())
    if as_json:
        for e in entries:
            click.echo(json.dumps(e.as_dict(), ensure_ascii=False, sort_keys=True))
        return
    click.echo(_header())
    for e in entries:
        click.echo(_row(e))
    click.echo(
        f"({len(entries)} entries{', limit reached' if len(entries) == limit else ''})", err=True
    )


def _time_opt(value: str | None, name: str) -> str | None:
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise click.BadParameter(f"{value!r} is not an ISO time", param_hint=name) from None
    return format_time(moment if moment.tzinfo else moment.replace(tzinfo=UTC))


# --------------------------------------------------------------------------- show


@audit.command()
@_common
@click.argument("message_id")
def show(config_path: Path | None, db: str | None, message_id: str) -> None:
    """Print the whole timeline of one message (and its receipts) with its evidence."""

    async def go() -> tuple[list[Entry], list[Any]]:
        log = await _open(_target(config_path, db))
        try:
            return await log.timeline(message_id)
        finally:
            await log.close()

    entries, evidence = _run(go())
    if not entries:
        click.echo(f"no entries for message {message_id}", err=True)
        sys.exit(1)
    click.echo(f"timeline of {message_id}:")
    for e in entries:
        who = f" by {e.actor}" if e.actor else ""
        click.echo(
            f"  #{e.seq} {e.time} {e.event} {e.direction or '-'} partner={e.partner or '-'} "
            f"agreement={e.agreement or '-'} type={e.message_type or '-'} "
            f"outcome={e.outcome or '-'}{who}"
        )
        if e.message_id != message_id:
            click.echo(f"      message {e.message_id} (correlated)")
        if e.code or e.reason:
            click.echo(f"      {e.code or ''} {e.reason or ''}".rstrip())
        for label, digest in (("envelope", e.envelope_digest), ("receipt", e.receipt_digest)):
            if digest:
                click.echo(f"      {label} sha256 {digest}")
        if e.details != "{}":
            click.echo(f"      details {e.details}")
    click.echo("evidence:")
    if not evidence:
        click.echo("  (none stored)")
    for info in evidence:
        state = (
            f"purged {info.purged_at}" if info.purged_at else f"kept until {info.retention_until}"
        )
        click.echo(
            f"  {info.kind} {info.digest} {info.size} bytes, stored {info.stored_at}, {state}"
        )


# ------------------------------------------------------------------------- verify


class _Progress:
    """A progress bar on a terminal, else a line every few seconds (both on stderr)."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.tty = sys.stderr.isatty()
        self.bar: Any = None
        self.last = time.monotonic()
        self.done = 0

    def __call__(self, done: int, total: int) -> None:
        if self.tty:
            if self.bar is None:
                self.bar = click.progressbar(
                    length=max(total, 1), label=self.label, file=sys.stderr
                )
                self.bar.__enter__()
            self.bar.update(done - self.done)
        elif time.monotonic() - self.last >= 5:
            click.echo(f"{self.label}: {done}/{total} entries", err=True)
            self.last = time.monotonic()
        self.done = done

    def close(self) -> None:
        if self.bar is not None:
            self.bar.__exit__(None, None, None)


@audit.command()
@_common
@click.option(
    "--bundle",
    type=click.Path(path_type=Path, file_okay=False, exists=True),
    help="Verify an exported bundle offline instead of the database.",
)
@click.option(
    "--cert",
    "certs",
    multiple=True,
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    help="Also trust this checkpoint signing certificate; repeatable.",
)
@click.option(
    "--ca",
    "cas",
    multiple=True,
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    help="Trust signing certificates recorded in the log and issued by this CA "
    "(with --config: tls.ca as well); repeatable.",
)
def verify(
    config_path: Path | None,
    db: str | None,
    bundle: Path | None,
    certs: tuple[Path, ...],
    cas: tuple[Path, ...],
) -> None:
    """Recompute the hash chain and the checkpoint signatures; exit 1 on any fault.

    A checkpoint must be signed by the configured signing certificate (or a --cert),
    or by a signing certificate recorded in the log at or before it and issued by the
    gateway's CA (tls.ca, or a --ca): the certificates used before a rotation.
    """
    progress = _Progress("verifying")

    async def go() -> VerifyReport:
        if bundle is not None:
            trusted = [c for path in certs for c in _load_certs(path)]
            ca_certs = [c for path in cas for c in _load_certs(path)]
            return verify_bundle(
                bundle,
                trusted_certs=trusted or None,
                trusted_cas=ca_certs or None,
                progress=progress,
            )
        target = _target(config_path, db, certs, cas)
        log = await _open(target)
        try:
            return await log.verify(
                progress=progress,
                trusted_certs=target.trusted or None,
                trusted_cas=target.cas or None,
            )
        finally:
            await log.close()

    try:
        report = _run(go())
    finally:
        progress.close()
    for line in report.lines():
        click.echo(line)
    if not report.ok:
        sys.exit(1)


# ------------------------------------------------------------------------- export


def _bound(value: str | None) -> int | str | None:
    if value is None:
        return None
    return int(value) if value.isdigit() else value


@audit.command()
@_common
@click.option("--from", "start", help="First seq, or an ISO time (default: the first entry).")
@click.option("--to", "end", help="Last seq, or an ISO time (default: the head).")
@click.option(
    "--out",
    required=True,
    type=click.Path(path_type=Path, file_okay=False),
    help="Empty or new directory for the bundle.",
)
def export(
    config_path: Path | None, db: str | None, start: str | None, end: str | None, out: Path
) -> None:
    """Write entries, checkpoints, certificates and VERIFY.txt for an offline audit."""
    progress = _Progress("exporting")

    async def go() -> dict[str, Any]:
        log = await _open(_target(config_path, db))
        try:
            return await log.export(out, _bound(start), _bound(end), progress=progress)
        finally:
            await log.close()

    try:
        manifest = _run(go())
    finally:
        progress.close()
    click.echo(
        f"exported entries {manifest['from_seq']}..{manifest['to_seq']} "
        f"({manifest['entries']} entries, {len(manifest['checkpoints'])} checkpoints) to {out}"
    )
    click.echo(f"see {out / 'VERIFY.txt'} for how to verify it")


# -------------------------------------------------------------------------- purge


@audit.command()
@_common
@click.option(
    "--before", help="Purge evidence whose retention ended before this ISO time (default: now)."
)
def purge(config_path: Path | None, db: str | None, before: str | None) -> None:
    """Drop evidence bytes past their retention; entries (and the chain) stay intact."""
    cutoff = _time_opt(before, "--before")
    moment = datetime.fromisoformat(cutoff.replace("Z", "+00:00")) if cutoff else datetime.now(UTC)

    async def go() -> tuple[int, int]:
        log = await _open(_target(config_path, db))
        try:
            count = await log.purge(moment)
            seq = await log.append(
                AuditEvent(
                    "operator_action",
                    actor=getpass.getuser(),
                    outcome="ok",
                    reason="evidence past retention purged",
                    details={
                        "command": "audit purge",
                        "before": format_time(moment),
                        "evidence_purged": count,
                    },
                )
            )
            return count, seq
        finally:
            await log.close()

    count, seq = _run(go())
    click.echo(f"purged {count} evidence item(s) past retention; recorded as entry {seq}")

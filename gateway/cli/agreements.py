"""``maagw agreements``: list, show and try out the agreements the gateway enforces.

A click group the main CLI attaches with ``main.add_command(agreements)``.
``explain`` runs the policy engine on a message file without sending it and
exits 1 when the agreement refuses it. Exit status: 0 done or allowed; 1
refused; 2 usage or configuration error (one line on stderr).
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, Literal, ParamSpec, TypeVar

import click

import adapters
from gateway.config.agreement import Agreement, load_agreements
from gateway.config.files import default_config_path, load_settings
from gateway.contract import REPLY_TYPES
from gateway.errors import AdapterError, GatewayError, exit_status
from gateway.policy.engine import Decision, PolicyRequest, evaluate, find_agreement
from gateway.policy.explain import explain

P = ParamSpec("P")


R = TypeVar("R")


def _one_line_errors(func: Callable[P, R]) -> Callable[P, R]:
    """Turn a GatewayError into one line on stderr and exit 2 (config) or 1."""

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return func(*args, **kwargs)
        except GatewayError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(exit_status(exc))

    return wrapper


@dataclass(frozen=True, slots=True)
class _Loaded:
    agreements: Mapping[str, Agreement]
    gateway_id: str | None


def _load(config: Path | None, agreements_dir: Path | None) -> _Loaded:
    if agreements_dir is not None:
        return _Loaded(load_agreements(agreements_dir), None)
    settings = load_settings(config if config is not None else default_config_path())
    return _Loaded(settings.agreements, settings.gateway_id)


def _config_options(func: Callable[P, R]) -> Callable[P, R]:
    func = click.option(
        "--agreements-dir",
        type=click.Path(path_type=Path, file_okay=False),
        help="Read agreements from this directory instead of the configuration.",
    )(func)
    return click.option(
        "--config",
        type=click.Path(path_type=Path, dir_okay=False),
        help="gateway.toml (default: $MAAGW_CONFIG, then config/gateway.toml).",
    )(func)


def _validity(agreement: Agreement, today: date) -> str:
    window = f"{agreement.valid_from.isoformat()}..{agreement.valid_until.isoformat()}"
    if today < agreement.valid_from:
        return f"{window} (not yet valid)"
    if today > agreement.valid_until:
        return f"{window} (expired)"
    return window


@click.group()
def agreements() -> None:
    """List, show and try out the agreements the gateway enforces."""


@agreements.command("list")
@_config_options
@_one_line_errors
def list_(config: Path | None, agreements_dir: Path | None) -> None:
    """One line per agreement: id, kind, parties, status, validity."""
    loaded = _load(config, agreements_dir)
    rows = sorted(loaded.agreements.values(), key=lambda a: a.id)
    width = max((len(a.id) for a in rows), default=0)
    today = datetime.now(UTC).date()
    for a in rows:
        click.echo(
            f"{a.id:<{width}}  {a.kind:<13}  {'-'.join(a.parties):<9}  {a.status:<10}  "
            f"{_validity(a, today)}"
        )


@agreements.command()
@click.argument("agreement_id", metavar="ID")
@_config_options
@_one_line_errors
def show(agreement_id: str, config: Path | None, agreements_dir: Path | None) -> None:
    """Every rule of agreement ID, flow by flow."""
    loaded = _load(config, agreements_dir)
    agreement = loaded.agreements.get(agreement_id)
    if agreement is None:
        known = ", ".join(sorted(loaded.agreements)) or "none"
        raise click.BadParameter(f"no agreement {agreement_id!r} (known: {known})", param_hint="ID")
    click.echo(_describe(agreement))


def _names(values: frozenset[str] | tuple[str, ...]) -> str:
    return ", ".join(sorted(values)) or "none"


def _describe(a: Agreement) -> str:
    status = a.status if a.status == "active" else f"{a.status}: {a.status_reason}"
    lines = [
        f"{a.id}  ({a.kind})",
        f"  title:            {a.title}",
        f"  parties:          {a.parties[0]}, {a.parties[1]}",
        f"  status:           {status}",
        f"  valid:            {_validity(a, datetime.now(UTC).date())}",
        f"  exchange format:  {a.exchange_format}",
        f"  retention:        {a.retention_days} days",
        "  delivery:         retried until "
        + (
            f"{a.delivery.max_age_seconds:g} s old"
            if a.delivery.max_age_seconds is not None
            else "the gateway's [delivery] max_age_seconds"
        ),
    ]
    for key, flow in sorted(a.flows.items()):
        burst = flow.burst if flow.burst is not None else max(1.0, flow.rate_per_minute)
        lines += [
            f"  flow {key}",
            f"    message types:    {_names(flow.message_types)}",
            f"    data categories:  {_names(flow.data_categories)}",
            f"    personal data:    {'allowed' if flow.personal_data else 'not allowed'}",
            f"    purpose required: {_names(flow.purpose_required)}",
            f"    onward transfer:  {flow.onward_transfer}",
            f"    redactions:       {', '.join(flow.redactions) or 'none'}",
            f"    max size:         {flow.max_size_bytes} bytes",
            f"    rate:             {flow.rate_per_minute:g} per minute (burst {burst:g})",
            f"    payload formats:  {_names(flow.payload_formats)}",
        ]
    return "\n".join(lines)


def _text(body: Mapping[str, Any], *keys: str) -> str | None:
    for key in keys:
        value = body.get(key)
        if isinstance(value, str):
            return value
    return None


def _parse_at(value: str | None) -> datetime:
    if value is None:
        return datetime.now(UTC)
    try:
        at = datetime.fromisoformat(value)
    except ValueError as exc:
        raise click.BadParameter(f"not an ISO 8601 time: {value!r}", param_hint="--at") from exc
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)


@agreements.command("explain")
@click.option(
    "--message",
    "message_file",
    required=True,
    type=click.Path(path_type=Path, exists=True, dir_okay=False),
    help="The message file, in a back-office or exchange format.",
)
@click.option("--from", "sender", required=True, help="Sending administration, e.g. XA.")
@click.option("--to", "receiver", required=True, help="Receiving administration, e.g. XB.")
@click.option("--type", "message_type", help="Message type (default: what the file holds).")
@click.option("--format", "fmt", help="Adapter name (default: by suffix, .json national-json).")
@click.option("--agreement", "agreement_id", help="Agreement id (default: the one covering it).")
@click.option(
    "--direction",
    type=click.Choice(["outbound", "inbound"]),
    help="Default: outbound when --from is this gateway, inbound when --to is.",
)
@click.option("--declared", help="Comma-separated categories the sender declares.")
@click.option("--purpose", help="Purpose (default: the message's own).")
@click.option("--legal-basis", help="Legal basis (default: the message's own).")
@click.option(
    "--known-request/--unknown-request",
    default=None,
    help="For a reply or refusal: whether it answers a request known here.",
)
@click.option("--at", "at_text", help="Evaluate at this ISO 8601 time (default: now).")
@_config_options
@_one_line_errors
def explain_(
    message_file: Path,
    sender: str,
    receiver: str,
    message_type: str | None,
    fmt: str | None,
    agreement_id: str | None,
    direction: Literal["outbound", "inbound"] | None,
    declared: str | None,
    purpose: str | None,
    legal_basis: str | None,
    known_request: bool | None,
    at_text: str | None,
    config: Path | None,
    agreements_dir: Path | None,
) -> None:
    """Decide whether a message may pass, without sending it; exit 1 if refused."""
    fmt = fmt or adapters.format_for_file(message_file.name)
    if fmt is None:
        raise click.BadParameter(
            f"cannot tell the format of {message_file.name}; name it", param_hint="--format"
        )
    at = _parse_at(at_text)
    loaded = _load(config, agreements_dir)
    try:
        adapter = adapters.get(fmt)
    except AdapterError as exc:
        raise click.BadParameter(exc.reason, param_hint="--format") from exc
    checked = check_message(
        adapter,
        loaded.agreements,
        message_file.read_bytes(),
        fmt=fmt,
        sender=sender,
        receiver=receiver,
        message_type=message_type,
        agreement_id=agreement_id,
        direction=direction or ("inbound" if receiver == loaded.gateway_id else "outbound"),
        declared=(
            frozenset(c.strip() for c in declared.split(",") if c.strip())
            if declared is not None
            else None
        ),
        purpose=purpose,
        legal_basis=legal_basis,
        known_request=known_request,
        at=at,
    )
    decision = checked.decision
    click.echo(f"message:    {message_file} ({fmt}, {checked.message_type}, {checked.size} bytes)")
    click.echo(f"direction:  {checked.direction} {sender} -> {receiver}")
    click.echo(f"categories: {_names(checked.categories)}")
    click.echo(explain(decision))
    click.echo(f"  not checked: {'; '.join(checked.unchecked)}")
    if not decision.allowed:
        sys.exit(1)


@dataclass(frozen=True, slots=True)
class Checked:
    """The policy engine's decision on one message, and what it read from the message."""

    decision: Decision
    direction: Literal["outbound", "inbound"]
    message_type: str
    categories: frozenset[str]
    size: int
    #: what the decision could not take into account (outside the running gateway)
    unchecked: tuple[str, ...]


def check_message(
    adapter: adapters.Adapter,
    agreements: Mapping[str, Agreement],
    data: bytes,
    *,
    fmt: str,
    sender: str,
    receiver: str,
    direction: Literal["outbound", "inbound"],
    message_type: str | None = None,
    agreement_id: str | None = None,
    declared: frozenset[str] | None = None,
    purpose: str | None = None,
    legal_basis: str | None = None,
    known_request: bool | None = None,
    at: datetime | None = None,
) -> Checked:
    """Decode ``data`` (format ``fmt``) and run the agreement policy on it, sending nothing.

    What ``agreements explain`` prints and ``send --check`` enforces. Categories are
    detected from the content; purpose and legal basis default to the message's own.
    Raises ``AdapterError`` when the message cannot be decoded.
    """
    at = at or datetime.now(UTC)
    document = adapter.decode(data, message_type=message_type)
    message_type = message_type or document.message_type
    categories = frozenset(adapter.categories(document))
    agreement = find_agreement(agreements, agreement_id, sender, receiver, message_type, at=at)
    request = PolicyRequest(
        direction=direction,
        sender=sender,
        receiver=receiver,
        message_type=message_type,
        categories=categories,
        declared_categories=declared,
        size=len(data),
        payload_format=fmt,
        at=at,
        purpose=purpose if purpose is not None else _text(document.body, "purpose"),
        legal_basis=(
            legal_basis
            if legal_basis is not None
            else _text(document.body, "legalBasis", "legal_basis")
        ),
        answers_known_request=known_request,
    )
    unchecked = ["rate limit (needs the running gateway's state)"]
    if message_type in REPLY_TYPES and known_request is None:
        unchecked.append("whether it answers a known request (use --known-request)")
    return Checked(
        evaluate(agreement, request),
        direction,
        message_type,
        categories,
        len(data),
        tuple(unchecked),
    )

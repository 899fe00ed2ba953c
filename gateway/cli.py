"""``maagw``: the gateway's command line.

Commands that read configuration take ``--config PATH`` (default
``$MAAGW_CONFIG``, then ``config/gateway.toml``). Exit status: 0 done; 1 refused,
verification failed or tampering found; 2 usage or configuration error.
"""

from __future__ import annotations

import asyncio
import sys
import uuid
from importlib.metadata import version as dist_version
from pathlib import Path

import click

from gateway import log as logsetup
from gateway.cli_admin import reload_command
from gateway.cli_agreements import agreements
from gateway.cli_audit import audit
from gateway.cli_certs import certs
from gateway.cli_common import config_option, one_line_errors, settings_from
from gateway.cli_dead import dead
from gateway.cli_envelope import envelope
from gateway.cli_translate import translate_command
from gateway.config import Settings
from gateway.errors import ConfigError, GatewayError, PolicyViolation, RelayError

MESSAGE_TYPES = ("maa.request", "maa.reply", "maa.spontaneous", "maa.refusal", "mra.aeo-status")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--log-format",
    type=click.Choice(["auto", "json", "console"]),
    default="auto",
    show_default=True,
    help="JSON when not on a terminal, unless told.",
)
@click.option("--log-level", default="INFO", show_default=True)
def main(log_format: str, log_level: str) -> None:
    """maa-gateway: signed, policy-checked message exchange between customs administrations."""
    logsetup.configure(log_format, log_level)  # type: ignore[arg-type]


@main.command()
def version() -> None:
    """Print the version."""
    click.echo(f"maagw {dist_version('maa-gateway')}")


@main.group("config")
def config_group() -> None:
    """Check configuration."""


@config_group.command("check")
@config_option
@one_line_errors
def config_check(config_path: Path | None) -> None:
    """Load and validate gateway.toml, partners/ and agreements/; exit 2 on a problem.

    A partner CRL past its nextUpdate is a problem (CONFIG_CRL_STALE) unless the partner
    says crl_stale = "warn"; one within [crl] warning_days of it is a warning line.
    """
    from datetime import timedelta

    from gateway import crl
    from gateway.tls import TrustStore

    settings = settings_from(config_path)
    # every partner's CA, signing certificates and CRL readable, no CRL already stale
    trust = TrustStore(settings.partners)
    horizon = timedelta(days=settings.crl.warning_days)
    for _, partner_trust in sorted(trust.partners.items()):
        st = crl.status(partner_trust, horizon)
        if st is not None and st.state != crl.OK:
            click.echo(f"warning: {crl.warning_text(st)}", err=True)
    for path in (
        settings.tls.server_cert,
        settings.tls.server_key,
        settings.tls.client_cert,
        settings.tls.client_key,
        settings.signing.cert,
        settings.signing.key,
    ):
        if not path.is_file():
            raise ConfigError(f"{settings.path}: {path}: file not found")
    click.echo(
        f"{settings.path}: ok — gateway {settings.gateway_id}, "
        f"{len(settings.partners)} partner(s): {', '.join(sorted(settings.partners)) or '-'}; "
        f"{len(settings.agreements)} agreement(s): {', '.join(sorted(settings.agreements)) or '-'}"
    )


@config_group.command("topology")
@config_option
@click.option(
    "--out",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Write here instead of standard output.",
)
@click.option("--no-prefix", is_flag=True, help="Names without this gateway's broker prefix.")
@click.option(
    "--vhost",
    default=None,
    help="The vhost the definitions name (default: the vhost of broker.url, '/' if none).",
)
@one_line_errors
def config_topology(
    config_path: Path | None, out: Path | None, no_prefix: bool, vhost: str | None
) -> None:
    """The broker topology as a RabbitMQ definitions file (rabbitmqctl import_definitions)."""
    import json

    from gateway.relay import Names, topology, url_vhost

    settings = settings_from(config_path)
    names = Names("" if no_prefix else settings.broker.prefix)
    vhost = vhost or url_vhost(settings.broker.url)
    text = json.dumps(topology(names, settings.partners, vhost), indent=2) + "\n"
    if out is None:
        click.echo(text, nl=False)
    else:
        out.write_text(text)
        click.echo(f"wrote {out}")


@main.command()
@config_option
@click.option(
    "--workers",
    type=click.IntRange(1, 64),
    default=1,
    show_default=True,
    help="Gateway processes sharing the partner port and the broker.",
)
@click.option("--worker-index", type=int, default=None, hidden=True)
@click.pass_context
@one_line_errors
def serve(
    ctx: click.Context, config_path: Path | None, workers: int, worker_index: int | None
) -> None:
    """Run the gateway until SIGTERM (SIGHUP reloads)."""
    from gateway.app import Gateway

    settings = settings_from(config_path)
    parent = ctx.parent.params if ctx.parent else {}
    # the long-running command: loggers may cache their configuration
    logsetup.configure(
        parent.get("log_format", "auto"), parent.get("log_level", "INFO"), cache=True
    )
    if workers > 1 and worker_index is None:
        from gateway.workers import Supervisor

        log_args = [
            "--log-format",
            parent.get("log_format", "auto"),
            "--log-level",
            parent.get("log_level", "INFO"),
        ]
        sys.exit(Supervisor(settings.path, workers, log_args).run())

    async def run() -> None:
        gateway = Gateway(settings, worker=worker_index)
        await gateway.start()
        await gateway.run_until_signalled()

    try:
        asyncio.run(run())
    except RelayError as exc:
        raise ConfigError(broker_reason(exc), code=exc.code) from None


RABBITMQ_HINT = "start RabbitMQ (e.g. `rabbitmq-server -detached`) or set MAAGW_BROKER_URL"


def broker_reason(exc: RelayError) -> str:
    """The reason, with how to start RabbitMQ only when no broker answered at all.

    A refused login or vhost (``RELAY_ACCESS_REFUSED``, ``RELAY_NOT_ALLOWED``) comes
    from a running broker: its reason says what to fix in ``broker.url``.
    """
    return f"{exc.reason} — {RABBITMQ_HINT}" if exc.code == "RELAY_UNAVAILABLE" else exc.reason


@main.command()
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
    from gateway.relay import Names, Relay

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
    headers = {"x-maagw-format": fmt}
    if agreement:
        headers["x-maagw-agreement"] = agreement

    async def publish() -> None:
        relay = Relay(
            settings.broker.url,
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
        raise ConfigError(broker_reason(exc), code=exc.code) from None
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
    from gateway.cli_agreements import check_message
    from gateway.policy import REPLY_TYPES, find_agreement

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
    from gateway.store import Store

    path = settings.state_dir / "state.db"
    if not correlation_id or not path.exists():
        return False

    async def ask() -> bool:
        store = await Store.open(path)
        try:
            return await store.knows_request(agreement_id, partner, correlation_id)
        finally:
            await store.close()

    return asyncio.run(ask())


def _format_for(file: Path) -> str:
    by_suffix = {".json": "national-json", ".xml": "maa-xml", ".csv": "aeo-mra-csv"}
    try:
        return by_suffix[file.suffix.lower()]
    except KeyError:
        raise click.UsageError(f"cannot tell the format of {file.name}; pass --format") from None


@main.command()
@click.pass_context
@click.option(
    "--state-dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Keep certificates, configuration and audit stores here (absent or empty).",
)
@click.option(
    "--broker-url",
    envvar="MAAGW_BROKER_URL",
    default="amqp://guest:guest@127.0.0.1:5672/",
    show_default=True,
)
@one_line_errors
def demo(ctx: click.Context, state_dir: Path | None, broker_url: str) -> None:
    """Two administrations, XA and XB, exchange a request and its reply end to end."""
    from gateway.demo import run_demo

    parent = ctx.parent.params if ctx.parent else {}
    if parent.get("log_level", "INFO") == "INFO":
        # the timeline is the demo's output; the gateways' own logs only when asked
        logsetup.configure(parent.get("log_format", "auto"), "WARNING")

    ok = run_demo(state_dir, broker_url)
    sys.exit(0 if ok else 1)


for group in (certs, envelope, agreements, audit, translate_command, dead, reload_command):
    main.add_command(group)


def run() -> None:
    """Entry point that never shows a traceback for an anticipated error."""
    try:
        main(standalone_mode=True)
    except GatewayError as exc:  # pragma: no cover - commands already handle theirs
        click.echo(f"maagw: {exc}", err=True)
        sys.exit(1)

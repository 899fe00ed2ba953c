"""``maagw``: the gateway's command line.

Commands that read configuration take ``--config PATH`` (default
``$MAAGW_CONFIG``, then ``config/gateway.toml``). Exit status: 0 done; 1 refused,
verification failed or tampering found; 2 usage or configuration error.
"""

from __future__ import annotations

import sys
from importlib.metadata import version as dist_version

import click

from gateway.cli import (
    agreements,
    audit,
    certs,
    config,
    dead,
    demo,
    envelope,
    reload,
    send,
    serve,
    translate,
)
from gateway.errors import GatewayError
from gateway.service import logging as logsetup

#: every command group, in the order ``maagw --help`` lists them
COMMANDS: tuple[click.Command, ...] = (
    serve.serve,
    reload.reload_command,
    demo.demo,
    config.config_group,
    send.send,
    certs.certs,
    envelope.envelope,
    agreements.agreements,
    translate.translate_command,
    audit.audit,
    dead.dead,
)


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


for command in COMMANDS:
    main.add_command(command)


def run() -> None:
    """Entry point that never shows a traceback for an anticipated error."""
    try:
        main(standalone_mode=True)
    except GatewayError as exc:  # pragma: no cover - commands already handle theirs
        click.echo(f"maagw: {exc}", err=True)
        sys.exit(1)

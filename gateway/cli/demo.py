"""``maagw demo``: the end-to-end demo of two administrations."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from gateway.cli.common import one_line_errors
from gateway.service import logging as logsetup


@click.command()
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

"""``maagw serve``: run the gateway (or its supervised workers) until SIGTERM."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import click

from gateway.cli.common import config_option, one_line_errors, settings_from
from gateway.errors import ErrorCode, RelayError
from gateway.service import logging as logsetup


@click.command()
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
    from gateway.service.gateway import Gateway

    settings = settings_from(config_path)
    parent = ctx.parent.params if ctx.parent else {}
    # the long-running command: loggers may cache their configuration
    logsetup.configure(
        parent.get("log_format", "auto"), parent.get("log_level", "INFO"), cache=True
    )
    if workers > 1 and worker_index is None:
        from gateway.service.workers import Supervisor

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
        raise RelayError(broker_reason(exc), code=exc.code) from None


RABBITMQ_HINT = "start RabbitMQ (e.g. `rabbitmq-server -detached`) or set MAAGW_BROKER_URL"


def broker_reason(exc: RelayError) -> str:
    """The reason, with how to start RabbitMQ only when no broker answered at all.

    A refused login or vhost (``RELAY_ACCESS_REFUSED``, ``RELAY_NOT_ALLOWED``) comes
    from a running broker: its reason says what to fix in ``broker.url``.
    """
    return (
        f"{exc.reason} — {RABBITMQ_HINT}" if exc.code == ErrorCode.RELAY_UNAVAILABLE else exc.reason
    )

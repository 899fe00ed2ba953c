"""``maagw translate``: translate one file between two payload formats.

For operators mapping a new back office: the input is decoded and validated by
the adapter ``--from`` names, encoded and validated by the one ``--to`` names, and
the result written to stdout. A refusal is one line on stderr,
``CODE at LOCATION: reason``, and exit status 1; an unknown format is a usage
error (exit 2).
"""

from __future__ import annotations

import sys
from typing import BinaryIO

import click

import adapters
from gateway.errors import AdapterError, GatewayError


def translate(data: bytes, source: str, target: str, message_type: str | None = None) -> bytes:
    """Decode ``data`` with adapter ``source`` and encode it with adapter ``target``."""
    document = adapters.get(source).decode(data, message_type=message_type)
    return adapters.get(target).encode(document)


def describe(error: GatewayError) -> str:
    """One line for stderr: ``CODE at LOCATION: reason``."""
    location = error.context.get("location")
    where = f" at {location}" if location else ""
    return f"{error.code}{where}: {error.reason}"


def _adapter_name(ctx: click.Context, param: click.Parameter, value: str) -> str:
    try:
        adapters.get(value)
    except AdapterError as exc:
        raise click.BadParameter(exc.reason, ctx=ctx, param=param) from exc
    return value


@click.command("translate")
@click.option(
    "--from", "source", required=True, callback=_adapter_name, help="adapter name of the input"
)
@click.option(
    "--to", "target", required=True, callback=_adapter_name, help="adapter name of the output"
)
@click.option("--type", "message_type", default=None, help="message type the input must have")
@click.argument("file", type=click.File("rb"))
def translate_command(source: str, target: str, message_type: str | None, file: BinaryIO) -> None:
    """Translate FILE (or - for stdin) from one payload format to another."""
    try:
        output = translate(file.read(), source, target, message_type)
    except GatewayError as exc:
        click.echo(describe(exc), err=True)
        sys.exit(1)
    stdout = sys.stdout.buffer
    stdout.write(output)
    stdout.flush()

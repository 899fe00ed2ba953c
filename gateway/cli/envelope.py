"""``maagw envelope``: sign, verify and inspect envelopes for interop work with partners.

A click group the main CLI attaches with ``main.add_command(envelope)``.
``verify`` checks only the signature and the profile against the given
certificate(s) as the pin: no freshness and no duplicate check. Exit status:
0 done; 1 refused or verification failed (``CODE: reason`` on stderr); 2 usage
or configuration error.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import fields
from pathlib import Path
from typing import ParamSpec, TypeVar

import click
from cryptography import x509

from gateway import pem
from gateway.errors import ConfigError, GatewayError, exit_status
from gateway.xml import envelope as envelope_mod
from gateway.xml import safe as xmlsafe
from gateway.xml import signature as signing

P = ParamSpec("P")


R = TypeVar("R")


_ExistingFile = click.Path(path_type=Path, exists=True, dir_okay=False)


_profile = click.option(
    "--profile",
    type=click.Choice(["strict", "interop"]),
    default="strict",
    show_default=True,
    help="strict: the gateway's own profile; interop: any single enveloped or ID reference.",
)


def _one_line_errors(func: Callable[P, R]) -> Callable[P, R]:
    """Turn a GatewayError into ``CODE: reason`` on stderr and exit 2 (config) or 1."""

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return func(*args, **kwargs)
        except GatewayError as exc:
            click.echo(str(exc), err=True)
            sys.exit(exit_status(exc))

    return wrapper


def _load_pins(paths: Sequence[Path]) -> list[x509.Certificate]:
    pins = []
    for path in paths:
        try:
            pins.extend(x509.load_pem_x509_certificates(path.read_bytes()))
        except ValueError as exc:
            raise ConfigError(f"cannot load certificate {path}: {exc}") from exc
    return pins


@click.group(name="envelope")
def envelope() -> None:
    """Sign, verify and inspect signed envelopes and receipts."""


@envelope.command()
@click.option("--key", "key_path", type=_ExistingFile, required=True, help="PEM private key.")
@click.option("--cert", "cert_path", type=_ExistingFile, required=True, help="PEM certificate.")
@click.option(
    "--passphrase-env",
    metavar="VAR",
    help="Environment variable holding the key's passphrase.",
)
@click.argument("file", type=_ExistingFile)
@_one_line_errors
def sign(key_path: Path, cert_path: Path, passphrase_env: str | None, file: Path) -> None:
    """Sign FILE (an unsigned envelope) and write the signed document to stdout."""
    passphrase = None
    if passphrase_env is not None:
        value = os.environ.get(passphrase_env)
        if value is None:
            raise click.UsageError(f"environment variable {passphrase_env} is not set")
        passphrase = value.encode("utf-8")
    signer = signing.Signer.from_files(key_path, cert_path, passphrase)
    root = xmlsafe.parse(file.read_bytes())
    click.echo(signer.sign(root), nl=False)


@envelope.command()
@click.option(
    "--cert",
    "cert_paths",
    type=_ExistingFile,
    required=True,
    multiple=True,
    help="Pinned signing certificate (PEM); repeat for a rotation overlap.",
)
@_profile
@click.argument("file", type=_ExistingFile)
@_one_line_errors
def verify(cert_paths: tuple[Path, ...], profile: str, file: Path) -> None:
    """Verify the signature of FILE against the pinned certificate(s)."""
    verified = signing.verify(
        file.read_bytes(),
        _load_pins(cert_paths),
        profile="interop" if profile == "interop" else "strict",
    )
    subject = verified.signer.subject.rfc4514_string()
    click.echo(f"signer: {subject} {pem.cert_labels(verified.signer)}")


@envelope.command()
@click.option(
    "--cert",
    "cert_paths",
    type=_ExistingFile,
    multiple=True,
    help="Verify against this pinned certificate first (repeatable).",
)
@_profile
@click.argument("file", type=_ExistingFile)
@_one_line_errors
def inspect(cert_paths: tuple[Path, ...], profile: str, file: Path) -> None:
    """Print the header fields of FILE as the gateway reads them.

    With --cert the signature is verified first and the fields are read from the
    verified element; without it the signature is not checked (said on stderr).
    """
    data = file.read_bytes()
    if cert_paths:
        verified = signing.verify(
            data, _load_pins(cert_paths), profile="interop" if profile == "interop" else "strict"
        )
        root = verified.root
        click.echo(
            f"signer: {verified.signer.subject.rfc4514_string()} {pem.cert_labels(verified.signer)}"
        )
    else:
        root = xmlsafe.parse(data)
        click.echo("warning: signature not verified (no --cert given)", err=True)
    click.echo(f"digest: {signing.document_digest(root)}")
    if root.tag == f"{{{envelope_mod.NS}}}Receipt":
        receipt = envelope_mod.parse_receipt(root)
        for name in ("receipt_id", "sender", "receiver", "created"):
            click.echo(f"{name}: {_show(getattr(receipt, name))}")
        for index, entry in enumerate(receipt.entries, 1):
            for item in fields(entry):
                click.echo(f"entry[{index}].{item.name}: {_show(getattr(entry, item.name))}")
        return
    parsed = envelope_mod.parse_envelope(root)
    for item in fields(parsed.header):
        click.echo(f"{item.name}: {_show(getattr(parsed.header, item.name))}")
    click.echo(f"media_type: {parsed.media_type}")
    click.echo(f"payload_bytes: {len(parsed.payload)}")


def _show(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, tuple):
        return ", ".join(str(v) for v in value) or "-"
    if hasattr(value, "isoformat"):
        return str(value.isoformat())
    return str(value)

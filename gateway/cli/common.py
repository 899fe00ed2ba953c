"""What every ``maagw`` command shares: the ``--config`` option and one-line errors.

Exit status: 0 done; 1 refused, verification failed or tampering found; 2 usage
or configuration error. Errors are one readable line on stderr, never a traceback.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import ParamSpec, TypeVar

import click

from gateway.config.files import default_config_path, load_settings
from gateway.config.models import Settings
from gateway.errors import GatewayError, exit_status

P = ParamSpec("P")


R = TypeVar("R")


EXIT_OK = 0


EXIT_REFUSED = 1


EXIT_USAGE = 2


def exit_code(exc: GatewayError) -> int:
    """2 for configuration errors, 1 for every other refusal: as ``ErrorCode`` says."""
    return exit_status(exc)


def one_line_errors(func: Callable[P, R]) -> Callable[P, R]:
    """Turn a ``GatewayError`` into ``CODE: reason`` on stderr and the matching exit status."""

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return func(*args, **kwargs)
        except GatewayError as exc:
            click.echo(f"maagw: {exc}", err=True)
            sys.exit(exit_code(exc))

    return wrapper


config_option = click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="gateway.toml to read (default: $MAAGW_CONFIG, then config/gateway.toml).",
)


def settings_from(config_path: Path | None) -> Settings:
    """Load the settings named by ``--config`` (or the default)."""
    return load_settings(config_path or default_config_path())

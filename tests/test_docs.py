"""The written contract follows the code: README command table, architecture, audit examples."""

from __future__ import annotations

import re
from pathlib import Path

import click
import pytest

from gateway.cli import main

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _command_rows() -> list[str]:
    """The first cell of every row of the README's command table."""
    return [
        line.split("|")[1].strip() for line in README.splitlines() if line.startswith("| `maagw ")
    ]


@pytest.mark.parametrize("name", sorted(main.commands))
def test_the_readme_command_table_names_every_maagw_command(name: str) -> None:
    """Every top-level ``maagw`` command, and each subcommand of a group, appears in the README's command table."""
    rows = [row for row in _command_rows() if re.match(rf"`maagw {re.escape(name)}\b", row)]
    assert rows, f"README.md's command table has no row for `maagw {name}`"
    command = main.commands[name]
    if isinstance(command, click.Group):
        for sub in command.commands:
            assert any(re.search(rf"(?<![\w-]){re.escape(sub)}(?![\w-])", row) for row in rows), (
                f"README.md's command table does not name `maagw {name} {sub}`"
            )

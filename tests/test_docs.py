"""The written contract follows the code: README command table, architecture, audit examples, licence."""

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


ARCHITECTURE = (ROOT / "docs" / "architecture.md").read_text()
GATEWAY_SOURCES = {
    str(p.relative_to(ROOT / "gateway")): p.read_text() for p in (ROOT / "gateway").rglob("*.py")
}


def test_architecture_names_every_relay_no_code() -> None:
    """Every ``RELAY_NO_*`` refusal code the gateway raises is named in docs/architecture.md."""
    codes = {c for text in GATEWAY_SOURCES.values() for c in re.findall(r"RELAY_NO_\w+", text)}
    assert codes, "no RELAY_NO_* code found in gateway/"
    assert sorted(c for c in codes if f"`{c}`" not in ARCHITECTURE) == []


def test_architecture_describes_the_events_as_published() -> None:
    """The event statuses (as ``event.<status>`` AMQP types) and every key of the event body are in docs/architecture.md."""
    import ast

    statuses: set[str] = set()
    keys = {"status", "gateway", "time"}  # Runtime.event adds these
    trees = [ast.parse(GATEWAY_SOURCES[f"pipeline/{name}.py"]) for name in ("outbound", "settle")]
    for node in (n for tree in trees for n in ast.walk(tree)):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            if node.func.attr == "event":
                keys |= {k.arg for k in node.keywords if k.arg}
            if node.func.attr == "publish_event" and isinstance(node.args[1], ast.Constant):
                statuses.add(str(node.args[1].value))
    assert statuses >= {"delivered", "retrying"}
    statuses |= {"rejected", "failed"}  # passed through dead_letter(Refused(status=...))
    assert "`event.<status>`" in ARCHITECTURE
    assert sorted(s for s in statuses if f"`event.{s}`" not in ARCHITECTURE) == []
    assert sorted(k for k in keys if f"`{k}`" not in ARCHITECTURE) == []


def test_architecture_names_the_default_queues_and_exchanges() -> None:
    """Every unprefixed exchange and non-partner queue the gateway declares is named in docs/architecture.md."""
    from gateway.relay.topology import Names, topology

    defs = topology(Names(""), ["XB"])
    names = {e["name"] for e in defs["exchanges"]} | {
        q["name"] for q in defs["queues"] if not q["name"].startswith("maagw.retry.")
    }
    names = {n.replace(".XB", ".<partner>") for n in names}
    assert sorted(n for n in names if f"`{n}`" not in ARCHITECTURE) == []


def test_audit_doc_examples_use_real_ids() -> None:
    """Agreement ids and message types in docs/audit.md's examples are those of config/agreements and the gateway."""
    from gateway.config.agreement import load_agreements
    from gateway.contract import MESSAGE_TYPES

    text = (ROOT / "docs" / "audit.md").read_text()
    agreements = set(load_agreements(ROOT / "config" / "agreements"))
    used_agreements = set(re.findall(r'agreement="?([A-Za-z0-9-]+)"?', text))
    used_types = set(re.findall(r'(?:message_type="|type=)([A-Za-z0-9.-]+)', text))
    assert used_agreements and used_types
    assert used_agreements <= agreements
    assert used_types <= set(MESSAGE_TYPES)


def test_the_project_license_is_an_spdx_expression() -> None:
    """pyproject.toml's ``project.license`` is an SPDX string, with a setuptools that reads it as one."""
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert project["project"]["license"] == "Apache-2.0"
    assert "setuptools>=77" in project["build-system"]["requires"]

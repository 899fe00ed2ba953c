"""Tests for gateway/config/files.py: loading gateway.toml and partner files, MAAGW_* overrides, errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from gateway.cli import main
from gateway.config.files import load_settings
from gateway.errors import ConfigError


def test_the_shipped_example_configuration_is_valid(example: Path) -> None:
    """Both example administrations' configurations pass `maagw config check`."""
    runner = CliRunner()
    for path in (example, example.parent / "xb" / "gateway.toml"):
        result = runner.invoke(main, ["config", "check", "--config", str(path)])
        assert result.exit_code == 0, result.output
        assert "ok" in result.output


def test_environment_overrides_the_broker_and_listen_addresses(example: Path) -> None:
    """MAAGW_* variables override the file."""
    env = {
        "MAAGW_BROKER_URL": "amqp://u:p@broker.example:5672/",
        "MAAGW_PARTNER_API_PORT": "7443",
        "MAAGW_ADMIN_HOST": "127.0.0.2",
    }
    settings = load_settings(example, env=env)
    assert settings.broker.url == env["MAAGW_BROKER_URL"]
    assert settings.partner_api.port == 7443
    assert settings.admin.host == "127.0.0.2"


def test_the_state_store_is_sqlite_under_state_dir_unless_a_url_says_otherwise(
    example: Path,
) -> None:
    """By default the state store is state.db under state_dir; [state] url or MAAGW_STATE_URL moves it."""
    default = load_settings(example, env={})
    assert default.state_location == str(default.state_dir / "state.db")
    url = "postgresql://gw@db.example:5432/maagw"
    moved = load_settings(example, env={"MAAGW_STATE_URL": url})
    assert moved.state_location == url


def test_the_broker_url_variable_may_list_several_nodes(example: Path) -> None:
    """MAAGW_BROKER_URL with commas names the nodes of a cluster, in order."""
    env = {"MAAGW_BROKER_URL": "amqp://u:p@node-1:5672/, amqp://u:p@node-2:5672/"}
    settings = load_settings(example, env=env)
    assert settings.broker.urls == ("amqp://u:p@node-1:5672/", "amqp://u:p@node-2:5672/")


def test_a_toml_array_of_broker_urls_is_read_in_order(example: Path) -> None:
    """`[broker] url = [...]` in gateway.toml gives the nodes in the order written."""
    text = example.read_text()
    start = text.index("[broker]")
    line = next(ln for ln in text[start:].splitlines() if ln.startswith("url"))
    nodes = '["amqp://u:p@node-1:5672/", "amqp://u:p@node-2:5672/"]'
    example.write_text(text[:start] + text[start:].replace(line, f"url = {nodes}", 1))
    settings = load_settings(example, env={})
    assert settings.broker.urls == ("amqp://u:p@node-1:5672/", "amqp://u:p@node-2:5672/")


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (("port = 8443", 'port = "eight"'), "partner_api.port"),
        (('id = "XA"', 'id = "not an id"'), "gateway.id"),
        (("[broker]", "[broker]\nunknown_key = 1"), "broker.unknown_key"),
        (("[gateway]", "[gateway"), "gateway.toml"),
    ],
)
def test_a_broken_file_gives_one_line_naming_file_and_key(
    example: Path, edit: tuple[str, str], expected: str
) -> None:
    """A bad gateway.toml exits 2 with one line naming the file and the key, no traceback."""
    text = example.read_text()
    assert edit[0] in text
    example.write_text(text.replace(edit[0], edit[1], 1))
    result = CliRunner().invoke(main, ["config", "check", "--config", str(example)])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1
    assert str(example) in lines[0] and expected in lines[0]
    assert "Traceback" not in result.output


def test_a_broken_partner_file_names_that_file(example: Path) -> None:
    """A bad partners/XB.toml is named, with its key."""
    partner = example.parent / "partners" / "XB.toml"
    partner.write_text(partner.read_text().replace("tls_pins = []", 'tls_pins = ["md5:00"]'))
    with pytest.raises(ConfigError) as info:
        load_settings(example)
    assert str(partner) in str(info.value) and "tls_pins" in str(info.value)


def test_a_missing_file_is_a_configuration_error(tmp_path: Path) -> None:
    """A missing gateway.toml exits 2 with one line."""
    result = CliRunner().invoke(main, ["config", "check", "--config", str(tmp_path / "nope.toml")])
    assert result.exit_code == 2
    assert "file not found" in result.output

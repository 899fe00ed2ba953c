"""Configuration loading: gateway/config.py and `maagw config check`."""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from gateway.ca import authority
from gateway.cli import main
from gateway.config.files import load_settings
from gateway.errors import ConfigError

CONFIG = Path(__file__).resolve().parents[3] / "config"
NOW = dt.datetime.now(dt.UTC)


@pytest.fixture
def example(tmp_path: Path) -> Path:
    """A copy of the shipped example configuration with freshly generated certificates."""
    shutil.copytree(CONFIG, tmp_path / "config")
    for gid in ("XA", "XB"):
        base = tmp_path / "certs" / gid
        authority.init_ca(f"{gid} CA", base / "ca")
        authority.issue(base / "ca", "tls-server", "tls-server", base / "certs", sans=["127.0.0.1"])
        authority.issue(base / "ca", "tls-client", "tls-client", base / "certs")
        authority.issue(base / "ca", "signing", "signing", base / "certs")
    return tmp_path / "config" / "gateway.toml"


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


def _with_xb_crl(example: Path, *extra: str, **crl_kw: object) -> Path:
    """XA's example configuration with a CRL of XB's CA (made with ``crl_kw``) in XB's file."""
    crl = example.parent.parent / "certs" / "XB" / "crl.pem"
    authority.make_crl(example.parent.parent / "certs" / "XB" / "ca", crl, **crl_kw)  # type: ignore[arg-type]
    partner = example.parent / "partners" / "XB.toml"
    partner.write_text(
        partner.read_text()
        + '\ncrl = "../../certs/XB/crl.pem"\n'
        + "".join(f"{e}\n" for e in extra)
    )
    return crl


def test_config_check_refuses_a_stale_crl_in_one_line(example: Path) -> None:
    """A partner CRL past its nextUpdate makes `config check` exit 2 with CONFIG_CRL_STALE naming partner and file."""
    crl = _with_xb_crl(example, now=NOW - dt.timedelta(days=10), next_update_days=1)
    result = CliRunner().invoke(main, ["config", "check", "--config", str(example)])
    assert result.exit_code == 2
    [line] = result.output.strip().splitlines()
    assert "CONFIG_CRL_STALE" in line and "partner XB" in line and crl.name in line


def test_config_check_accepts_a_stale_crl_when_the_partner_says_warn(example: Path) -> None:
    """With crl_stale = "warn" the stale CRL is a warning line and the check passes."""
    _with_xb_crl(example, 'crl_stale = "warn"', now=NOW - dt.timedelta(days=10), next_update_days=1)
    result = CliRunner().invoke(main, ["config", "check", "--config", str(example)])
    assert result.exit_code == 0, result.output
    assert "warning: partner XB" in result.stderr and "past its nextUpdate" in result.stderr


def test_config_check_warns_of_a_crl_within_the_warning_horizon(example: Path) -> None:
    """A CRL whose nextUpdate is within [crl] warning_days gets a warning line; the check passes."""
    _with_xb_crl(example, next_update_days=1)
    runner = CliRunner()
    result = runner.invoke(main, ["config", "check", "--config", str(example)])
    assert result.exit_code == 0, result.output
    assert "warning: partner XB" in result.stderr and "reaches its nextUpdate" in result.stderr
    example.write_text(example.read_text() + "\n[crl]\nwarning_days = 0.5\n")
    quiet = runner.invoke(main, ["config", "check", "--config", str(example)])
    assert quiet.exit_code == 0 and "warning" not in quiet.stderr

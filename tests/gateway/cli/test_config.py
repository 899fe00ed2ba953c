"""Tests for gateway/cli/config.py: `maagw config check` on partner CRLs (stale, warn, horizon)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from click.testing import CliRunner

from gateway.ca import authority
from gateway.cli import main

NOW = dt.datetime.now(dt.UTC)


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

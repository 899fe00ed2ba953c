"""Fixtures shared by several packages' tests: a test CA, a partner's PKI, the example configuration."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from gateway.ca import authority

CONFIG = Path(__file__).resolve().parents[2] / "config"


@pytest.fixture
def logs() -> Iterator[list[dict[str, object]]]:
    """Capture structlog events (so that log lines do not mix with CLI output)."""
    with structlog.testing.capture_logs() as captured:
        yield captured


@pytest.fixture
def ca_dir(tmp_path: Path) -> Path:
    """A fresh EC CA in tmp_path/ca."""
    authority.init_ca("Test CA", tmp_path / "ca", org="XA")
    return tmp_path / "ca"


@pytest.fixture
def out(tmp_path: Path) -> Path:
    """The directory certificates are issued into."""
    return tmp_path / "out"


@pytest.fixture
def partner(tmp_path: Path) -> Path:
    """A partner's CA with a TLS server, a TLS client and a signing certificate."""
    ca = tmp_path / "xb-ca"
    authority.init_ca("XB CA", ca)
    for kind, name in [
        ("tls-server", "gw.xb.test"),
        ("tls-client", "xb-client"),
        ("signing", "xb-sig"),
    ]:
        authority.issue(ca, kind, name, tmp_path / "xb")
    return tmp_path


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

"""Tests for gateway/ca/partner_import.py: a partner's certificates and CRL into a partner file."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from gateway import pem
from gateway.ca import authority, partner_import
from gateway.errors import ConfigError
from maagw_testing.pki import issue_one

pytestmark = pytest.mark.usefixtures("logs")


def test_import_partner_writes_the_toml_the_loader_reads(partner: Path) -> None:
    """The TOML names the copied CA, the TLS pins and the signing certs by relative path."""
    xb = partner / "xb"
    dest = partner / "config" / "partners"
    written = partner_import.import_partner(
        "XB",
        partner / "xb-ca" / "ca.pem",
        dest,
        tls_certs=[xb / "gw.xb.test.pem", xb / "xb-client.pem"],
        signing_certs=[xb / "xb-sig.pem"],
        url="https://127.0.0.1:8444",
        name="Customs administration XB",
    )
    assert dest / "XB.toml" in written
    data = tomllib.loads((dest / "XB.toml").read_text())
    assert data["id"] == "XB" and data["url"] == "https://127.0.0.1:8444"
    assert data["name"] == "Customs administration XB"
    assert data["server_name"] == "gw.xb.test"
    assert data["crl"] == ""
    assert pem.load_cert(dest / data["ca"]) == pem.load_cert(partner / "xb-ca" / "ca.pem")
    pins = [pem.spki_pin(pem.load_cert(xb / n)) for n in ("gw.xb.test.pem", "xb-client.pem")]
    assert data["tls_pins"] == pins
    assert [pem.load_cert(dest / p) for p in data["signing_certs"]] == [
        pem.load_cert(xb / "xb-sig.pem")
    ]


def test_import_partner_update_adds_pins_and_keeps_other_keys(partner: Path) -> None:
    """A second import adds a pin (both accepted) and keeps keys it does not manage."""
    xb, dest = partner / "xb", partner / "partners"
    ca = partner / "xb-ca" / "ca.pem"
    partner_import.import_partner("XB", ca, dest, tls_certs=[xb / "xb-client.pem"])
    toml = dest / "XB.toml"
    toml.write_text(toml.read_text() + '\ncrl_stale = "warn"\n')
    authority.issue(partner / "xb-ca", "tls-client", "xb-client-2", xb)
    partner_import.import_partner("XB", ca, dest, tls_certs=[xb / "xb-client-2.pem"])
    data = tomllib.loads(toml.read_text())
    assert len(data["tls_pins"]) == 2 and data["crl_stale"] == "warn"
    partner_import.import_partner("XB", ca, dest, tls_certs=[xb / "xb-client-2.pem"], replace=True)
    assert tomllib.loads(toml.read_text())["tls_pins"] == [
        pem.spki_pin(pem.load_cert(xb / "xb-client-2.pem"))
    ]


def test_import_partner_refuses_certificates_from_another_ca(partner: Path, ca_dir: Path) -> None:
    """A TLS certificate not issued by the partner's CA is refused and nothing is written."""
    _, foreign, _ = issue_one(ca_dir, partner / "other")
    with pytest.raises(ConfigError) as err:
        partner_import.import_partner(
            "XB", partner / "xb-ca" / "ca.pem", partner / "p", tls_certs=[foreign]
        )
    assert err.value.code == "CONFIG_PARTNER_CHAIN"
    assert not (partner / "p").exists()


def test_import_partner_copies_the_partners_crl(partner: Path) -> None:
    """A CRL signed by the partner's CA is copied and named in the TOML."""
    authority.make_crl(partner / "xb-ca", partner / "xb.crl")
    dest = partner / "p"
    partner_import.import_partner("XB", partner / "xb-ca" / "ca.pem", dest, crl=partner / "xb.crl")
    data = tomllib.loads((dest / "XB.toml").read_text())
    assert (
        pem.load_crl(dest / data["crl"]).issuer
        == pem.load_cert(partner / "xb-ca" / "ca.pem").subject
    )


def test_import_partner_refuses_a_crl_of_another_ca(partner: Path, ca_dir: Path) -> None:
    """A CRL the partner's CA did not sign is refused and nothing is written."""
    authority.make_crl(ca_dir, partner / "other.crl")
    with pytest.raises(ConfigError) as err:
        partner_import.import_partner(
            "XB", partner / "xb-ca" / "ca.pem", partner / "p", crl=partner / "other.crl"
        )
    assert err.value.code == "CONFIG_CRL"
    assert not (partner / "p").exists()


@pytest.mark.parametrize("partner_id", ["xb", "X", "XB/../..", "XB_1"])
def test_import_partner_refuses_ids_the_loader_would_refuse(partner: Path, partner_id: str) -> None:
    """Partner ids follow the configuration's pattern (two capitals, then A-Z, 0-9, -)."""
    with pytest.raises(ConfigError) as err:
        partner_import.import_partner(partner_id, partner / "xb-ca" / "ca.pem", partner / "p")
    assert err.value.code == "CONFIG_PARTNER_ID"


def test_import_partner_refuses_a_leaf_as_ca(partner: Path) -> None:
    """Only a CA certificate may be imported as the partner's CA."""
    with pytest.raises(ConfigError):
        partner_import.import_partner("XB", partner / "xb" / "xb-sig.pem", partner / "p")

"""Tests for gateway/trust/identity.py: the partner identity behind a certificate, revocation, expiry."""

from __future__ import annotations

import datetime as dt
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import Encoding
from structlog.testing import capture_logs

from gateway import pem
from gateway.ca import authority
from gateway.config.models import Partner, TlsSection
from gateway.errors import AuthError, ConfigError
from gateway.trust.identity import TLS12_CIPHERS, TrustStore

NOW = dt.datetime.now(dt.UTC)


@dataclass
class World:
    """Two partner CAs (XA, XC) and certificates issued by them, in a temporary directory."""

    root: Path

    def ca(self, pid: str) -> Path:
        return self.root / pid / "ca"

    def issue(self, pid: str, name: str, kind: str = "tls-client", **kw: object) -> Path:
        authority.issue(self.ca(pid), kind, name, self.root / pid / "certs", **kw)  # type: ignore[arg-type]
        return self.root / pid / "certs" / f"{name}.pem"

    def der(self, path: Path) -> bytes:
        return pem.load_cert(path).public_bytes(Encoding.DER)

    def pin(self, path: Path) -> str:
        return pem.spki_pin(pem.load_cert(path))

    def crl(self, pid: str, *revoke: Path, **kw: object) -> Path:
        for path in revoke:
            authority.revoke(self.ca(pid), pem.load_cert(path).serial_number, "keyCompromise")
        out = self.root / pid / "crl.pem"
        authority.make_crl(self.ca(pid), out, **kw)  # type: ignore[arg-type]
        return out

    def partner(self, pid: str, *pinned: Path, **kw: object) -> Partner:
        return Partner(
            id=pid,
            url=f"https://{pid.lower()}.test",
            ca=self.ca(pid) / "ca.pem",
            tls_pins=tuple(self.pin(p) for p in pinned),
            **kw,  # type: ignore[arg-type]
        )


@pytest.fixture
def world(tmp_path: Path) -> World:
    """XA's and XC's CAs, each with a TLS client certificate named ``client``."""
    w = World(tmp_path)
    for pid in ("XA", "XC"):
        authority.init_ca(f"{pid} Customs Gateway CA", w.ca(pid))
        w.issue(pid, "client")
    return w


def test_a_pinned_certificate_of_the_partners_ca_identifies_the_partner(world: World) -> None:
    """A certificate issued by XA's CA and matching XA's pins is XA."""
    client = world.root / "XA" / "certs" / "client.pem"
    trust = TrustStore({"XA": world.partner("XA", client)})
    assert trust.authenticate(world.der(client)) == "XA"
    assert trust.identify(world.der(client)) == "XA"


@pytest.mark.parametrize(("xc_pinned", "expected"), [(False, "XC"), (True, "AUTH_PIN_MISMATCH")])
def test_a_certificate_from_another_partners_ca_claiming_xa_is_never_xa(
    world: World, xc_pinned: bool, expected: str
) -> None:
    """A certificate with CN "XA" from XC's CA is XC (unpinned) or refused (pinned), never XA."""
    xa_client = world.root / "XA" / "certs" / "client.pem"
    xc_client = world.root / "XC" / "certs" / "client.pem"
    impostor = world.issue("XC", "XA")
    trust = TrustStore(
        {
            "XA": world.partner("XA", xa_client),
            "XC": world.partner("XC", *([xc_client] if xc_pinned else [])),
        }
    )
    try:
        got = trust.authenticate(world.der(impostor))
    except AuthError as exc:
        assert (exc.code, exc.context.get("partner")) == (expected, "XC")
    else:
        assert got == expected


Case = Callable[[World], tuple[Path | None, Partner]]


def _expired(w: World) -> tuple[Path | None, Partner]:
    cert = w.issue("XA", "old", not_before=NOW - dt.timedelta(days=30), days=2)
    return cert, w.partner("XA", cert)


def _not_yet_valid(w: World) -> tuple[Path | None, Partner]:
    cert = w.issue("XA", "future", not_before=NOW + dt.timedelta(days=3), days=30)
    return cert, w.partner("XA", cert)


def _revoked(w: World) -> tuple[Path | None, Partner]:
    cert = w.issue("XA", "lost")
    return cert, w.partner("XA", cert, crl=w.crl("XA", cert))


def _unpinned(w: World) -> tuple[Path | None, Partner]:
    return w.issue("XA", "other"), w.partner("XA", w.root / "XA" / "certs" / "client.pem")


def _unknown_issuer(w: World) -> tuple[Path | None, Partner]:
    return w.root / "XC" / "certs" / "client.pem", w.partner("XA")


def _no_certificate(w: World) -> tuple[Path | None, Partner]:
    return None, w.partner("XA")


@pytest.mark.parametrize(
    ("case", "code"),
    [
        (_expired, "AUTH_EXPIRED"),
        (_not_yet_valid, "AUTH_NOT_YET_VALID"),
        (_revoked, "AUTH_REVOKED"),
        (_unpinned, "AUTH_PIN_MISMATCH"),
        (_unknown_issuer, "AUTH_UNKNOWN_ISSUER"),
        (_no_certificate, "AUTH_NO_CERTIFICATE"),
    ],
)
def test_refused_certificates_name_their_reason(world: World, case: Case, code: str) -> None:
    """Each kind of unacceptable client certificate is refused with its own code."""
    cert, partner = case(world)
    trust = TrustStore({"XA": partner})
    with pytest.raises(AuthError) as caught:
        trust.authenticate(world.der(cert) if cert else None)
    assert caught.value.code == code


def test_a_crl_that_went_stale_after_loading_refuses_the_partner(world: World) -> None:
    """A CRL fresh when loaded but past its nextUpdate now refuses the partner's certificates."""
    cert = world.root / "XA" / "certs" / "client.pem"
    crl = world.crl("XA", now=NOW - dt.timedelta(days=10), next_update_days=1)
    trust = TrustStore({"XA": world.partner("XA", cert, crl=crl)}, now=NOW - dt.timedelta(days=10))
    with pytest.raises(AuthError) as caught:
        trust.authenticate(world.der(cert))
    assert caught.value.code == "AUTH_CRL_STALE"


def test_loading_a_stale_crl_is_refused_unless_told(world: World) -> None:
    """A CRL already past nextUpdate is a configuration error, unless crl_stale = "warn" or allowed."""
    cert = world.root / "XA" / "certs" / "client.pem"
    crl = world.crl("XA", now=NOW - dt.timedelta(days=10), next_update_days=1)
    with pytest.raises(ConfigError) as caught:
        TrustStore({"XA": world.partner("XA", cert, crl=crl)})
    assert caught.value.code == "CONFIG_CRL_STALE"
    assert "XA" in caught.value.reason and "nextUpdate" in caught.value.reason
    assert (
        TrustStore({"XA": world.partner("XA", cert, crl=crl, crl_stale="warn")}).partners["XA"].crl
        is not None
    )
    assert TrustStore({"XA": world.partner("XA", cert, crl=crl)}, allow_stale_crl=True).partners


def test_with_crl_puts_a_new_crl_in_force_for_one_partner_only(world: World) -> None:
    """with_crl gives a new store where the new CRL revokes; the old store and other partners are untouched."""
    xa_client = world.root / "XA" / "certs" / "client.pem"
    xc_client = world.root / "XC" / "certs" / "client.pem"
    old = TrustStore(
        {"XA": world.partner("XA", xa_client, crl=world.crl("XA")), "XC": world.partner("XC")}
    )
    newer = pem.load_crl(world.crl("XA", xa_client))
    new = old.with_crl("XA", newer)
    assert old.authenticate(world.der(xa_client)) == "XA"
    with pytest.raises(AuthError) as caught:
        new.authenticate(world.der(xa_client))
    assert caught.value.code == "AUTH_REVOKED"
    assert new.authenticate(world.der(xc_client)) == "XC"
    assert new.partners["XC"] is old.partners["XC"]


def test_a_stale_crl_only_warns_when_the_partner_says_warn(world: World) -> None:
    """With ``crl_stale = "warn"`` a CRL past nextUpdate is logged and the partner accepted."""
    cert = world.root / "XA" / "certs" / "client.pem"
    crl = world.crl("XA", now=NOW - dt.timedelta(days=20), next_update_days=2)
    trust = TrustStore({"XA": world.partner("XA", cert, crl=crl, crl_stale="warn")})
    with capture_logs() as logs:
        assert trust.authenticate(world.der(cert)) == "XA"
    assert [e["partner"] for e in logs if e["event"] == "crl_stale"] == ["XA"]


def test_a_crl_not_signed_by_the_partners_ca_is_a_configuration_error(world: World) -> None:
    """A CRL file signed by another CA is refused when the trust store is built."""
    crl = world.crl("XC")
    with pytest.raises(ConfigError) as caught:
        TrustStore({"XA": world.partner("XA", crl=crl)})
    assert caught.value.code == "CONFIG_CRL_ISSUER"


def test_signing_certificates_exclude_revoked_ones(world: World) -> None:
    """A revoked signing certificate is no longer offered for verification; the other one is."""
    old = world.issue("XA", "signing-old", kind="signing")
    new = world.issue("XA", "signing-new", kind="signing")
    crl = world.crl("XA", old)
    trust = TrustStore({"XA": world.partner("XA", signing_certs=(old, new), crl=crl)})
    assert trust.signing_certs("XA") == (pem.load_cert(new),)


def test_signing_certificates_all_refused_raise_the_reason(world: World) -> None:
    """When every signing certificate is revoked the refusal names the revocation."""
    only = world.issue("XA", "signing", kind="signing")
    trust = TrustStore(
        {"XA": world.partner("XA", signing_certs=(only,), crl=world.crl("XA", only))}
    )
    with pytest.raises(AuthError) as caught:
        trust.signing_certs("XA")
    assert caught.value.code == "AUTH_REVOKED"


def test_carried_identities_serve_open_connections_but_not_new_ones(world: World) -> None:
    """After a CA change, a carried certificate is still XA for requests, not for new connections."""
    old = world.root / "XA" / "certs" / "client.pem"
    authority.init_ca("XA Customs Gateway CA 2", world.root / "XA2" / "ca")
    new_partner = Partner(id="XA", url="https://xa.test", ca=world.root / "XA2" / "ca" / "ca.pem")
    trust = TrustStore({"XA": new_partner})
    trust.carry({world.der(old): "XA"})
    assert trust.identify(world.der(old)) == "XA"
    with pytest.raises(AuthError):
        trust.authenticate(world.der(old))


@pytest.mark.parametrize(
    ("change", "code"),
    [("remove", "AUTH_PARTNER_REMOVED"), ("revoke", "AUTH_REVOKED"), ("new-pins", None)],
)
def test_closing_reason_closes_only_removed_partners_and_revoked_certificates(
    world: World, change: str, code: str | None
) -> None:
    """An open connection closes when its partner is removed or its certificate revoked, not for new pins."""
    client = world.root / "XA" / "certs" / "client.pem"
    other = world.issue("XA", "other")
    partners = {
        "remove": {},
        "revoke": {"XA": world.partner("XA", client, crl=world.crl("XA", client))},
        "new-pins": {"XA": world.partner("XA", other)},
    }[change]
    reason = TrustStore(partners).closing_reason(world.der(client), "XA")
    assert (reason.code if reason else None) == code


def test_server_context_is_modern_and_requires_a_client_certificate(world: World) -> None:
    """The partner listener offers TLS >= 1.2, ECDHE+AEAD suites only, no tickets, client cert required."""
    server = world.issue("XA", "server", kind="tls-server", sans=["localhost"])
    tls = _tls_section(server)
    ctx = TrustStore({"XC": world.partner("XC")}).server_context(tls)
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
    assert ctx.verify_mode == ssl.CERT_REQUIRED
    assert ctx.num_tickets == 0
    allowed = set(TLS12_CIPHERS.split(":"))
    for suite in ctx.get_ciphers():
        assert suite["protocol"] == "TLSv1.3" or suite["name"] in allowed
        assert suite["aead"]


def _tls_section(server: Path) -> TlsSection:
    return TlsSection(
        ca=server.parent.parent / "ca" / "ca.pem",
        server_cert=server,
        server_key=server.with_suffix(".key"),
        client_cert=server,
        client_key=server.with_suffix(".key"),
    )


def test_the_partner_ca_must_itself_be_valid(world: World) -> None:
    """A certificate issued by a partner CA that has expired is refused (the TLS library no longer checks time)."""
    client = world.root / "XA" / "certs" / "client.pem"
    trust = TrustStore({"XA": world.partner("XA", client)})
    ca = pem.load_cert(world.ca("XA") / "ca.pem")
    later = ca.not_valid_after_utc + dt.timedelta(days=1)
    with pytest.raises(AuthError) as caught:
        trust.authenticate(world.der(client), now=later)
    assert caught.value.code == "AUTH_CA_EXPIRED"


def test_signing_certificates_are_refused_while_the_crl_is_stale(world: World) -> None:
    """With a CRL past nextUpdate (and the default "refuse"), no signing certificate is offered."""
    only = world.issue("XA", "signing", kind="signing")
    crl = world.crl("XA", now=NOW - dt.timedelta(days=10), next_update_days=1)
    partner = world.partner("XA", signing_certs=(only,), crl=crl)
    trust = TrustStore({"XA": partner}, now=NOW - dt.timedelta(days=10))
    with pytest.raises(AuthError) as caught:
        trust.signing_certs("XA")
    assert caught.value.code == "AUTH_CRL_STALE"


def test_an_expired_signing_certificate_is_left_to_signature_verification(world: World) -> None:
    """Validity of signing certificates is checked at the signing time by signing.verify, not here."""
    old = world.issue(
        "XA", "signing-old", kind="signing", not_before=NOW - dt.timedelta(days=30), days=2
    )
    trust = TrustStore({"XA": world.partner("XA", signing_certs=(old,))})
    assert trust.signing_certs("XA") == (pem.load_cert(old),)


def test_a_revoked_certificate_is_named_by_its_serial_as_openssl_prints_it(world: World) -> None:
    """The refusal of a revoked certificate names its serial in upper-case hex of even length."""
    cert, partner = _revoked(world)
    assert cert is not None
    serial = pem.load_cert(cert).serial_number
    trust = TrustStore({"XA": partner})
    with pytest.raises(AuthError) as caught:
        trust.authenticate(world.der(cert))
    assert f"serial {pem.serial_hex(serial)} is revoked" in caught.value.reason
    closing = trust.closing_reason(world.der(cert), "XA")
    assert closing is not None and pem.serial_hex(serial) in closing.reason

"""Mutual TLS: SSL contexts, and the partner identity behind a client certificate.

Python's ssl module has one trust store per context and no verification
callback, so the server context trusts the union of all partners' CAs and the
per-partner binding is checked right after the handshake by ``TrustStore.identify``:
the certificate must be issued directly by *that* partner's CA, be within its
validity, match the partner's SPKI pins when it has any, and not be revoked by
the partner's CRL. The identity of a partner comes from here and nothing else.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import structlog
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from gateway.certs import load_certs, load_crl, spki_pin
from gateway.config import Partner, TlsSection
from gateway.errors import AuthError, ConfigError, GatewayError

log = structlog.get_logger(__name__)

#: TLS 1.2 suites offered besides TLS 1.3's own (ECDHE with AEAD only)
TLS12_CIPHERS = (
    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
    "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305:"
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256"
)


@dataclass(frozen=True, slots=True)
class PartnerTrust:
    """The trust material of one partner, loaded from its files."""

    partner_id: str
    cas: tuple[x509.Certificate, ...]
    pins: frozenset[str]
    signing_certs: tuple[x509.Certificate, ...]
    crl: x509.CertificateRevocationList | None
    crl_stale: str
    ca_pem: bytes


class TrustStore:
    """Every partner's CAs, pins, signing certificates and CRL; immutable once built.

    Reload builds a new store and swaps it in; connections keep the store they
    were authenticated with until the reload decides to close them.
    """

    def __init__(self, partners: Mapping[str, Partner]) -> None:
        self.partners: dict[str, PartnerTrust] = {
            pid: _load_partner(p) for pid, p in partners.items()
        }
        self._memo: dict[bytes, str] = {}

    def identify(self, der: bytes | None, *, now: datetime | None = None) -> str:
        """The partner id a client certificate belongs to, or ``AuthError``."""
        if not der:
            raise AuthError("no client certificate", code="AUTH_NO_CERTIFICATE")
        if now is None and der in self._memo:
            return self._memo[der]
        cert = x509.load_der_x509_certificate(der)
        candidates = [t for t in self.partners.values() if _issued_by_any(cert, t.cas)]
        if not candidates:
            raise AuthError(
                f"certificate {_subject(cert)} is not issued by any partner's CA",
                code="AUTH_UNKNOWN_ISSUER",
            )
        pin = spki_pin(cert)
        pinned = [t for t in candidates if pin in t.pins]
        unpinned = [t for t in candidates if not t.pins]
        matches = pinned or unpinned
        if not matches:
            raise AuthError(
                f"certificate {_subject(cert)} does not match the pins of partner "
                f"{candidates[0].partner_id}",
                code="AUTH_PIN_MISMATCH",
                partner=candidates[0].partner_id,
            )
        if len(matches) > 1:
            raise AuthError(
                "certificate matches several partners; configure pins to tell them apart",
                code="AUTH_AMBIGUOUS",
            )
        trust = matches[0]
        check_certificate(cert, trust, now=now)
        if now is None:
            self._memo[der] = trust.partner_id
        return trust.partner_id

    def signing_certs(self, partner_id: str) -> tuple[x509.Certificate, ...]:
        """The pinned signing certificates of a partner (old and new during rotation)."""
        return self.partners[partner_id].signing_certs

    def server_context(self, tls: TlsSection) -> ssl.SSLContext:
        """The partner listener's context: TLS >= 1.2, client certificate required."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        _harden(ctx)
        ctx.verify_mode = ssl.CERT_REQUIRED
        # Clients of this API never resume sessions; tickets only cost a signature each.
        ctx.num_tickets = 0
        _load_chain(ctx, tls.server_cert, tls.server_key, tls.passphrase_env)
        cadata = b"".join(t.ca_pem for t in self.partners.values())
        if cadata:
            ctx.load_verify_locations(cadata=cadata.decode("ascii"))
        return ctx

    def client_context(self, partner_id: str, tls: TlsSection) -> ssl.SSLContext:
        """An outbound context trusting only this partner's CA, presenting our client cert."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        _harden(ctx)
        ctx.load_verify_locations(cadata=self.partners[partner_id].ca_pem.decode("ascii"))
        _load_chain(ctx, tls.client_cert, tls.client_key, tls.passphrase_env)
        return ctx

    def check_server(self, partner_id: str, der: bytes | None) -> None:
        """Pins and revocation of a partner gateway's server certificate."""
        trust = self.partners[partner_id]
        if not der:
            raise AuthError("partner presented no certificate", code="AUTH_NO_CERTIFICATE")
        cert = x509.load_der_x509_certificate(der)
        if trust.pins and spki_pin(cert) not in trust.pins:
            raise AuthError(
                f"server certificate of {partner_id} does not match its pins",
                code="AUTH_PIN_MISMATCH",
                partner=partner_id,
            )
        check_certificate(cert, trust)


def check_certificate(
    cert: x509.Certificate, trust: PartnerTrust, *, now: datetime | None = None
) -> None:
    """Validity window and revocation of a partner's certificate (TLS or signing)."""
    now = now or datetime.now(UTC)
    if now < cert.not_valid_before_utc:
        raise AuthError(
            f"certificate {_subject(cert)} is not valid before {cert.not_valid_before_utc:%Y-%m-%d}",
            code="AUTH_NOT_YET_VALID",
            partner=trust.partner_id,
        )
    if now > cert.not_valid_after_utc:
        raise AuthError(
            f"certificate {_subject(cert)} expired on {cert.not_valid_after_utc:%Y-%m-%d}",
            code="AUTH_EXPIRED",
            partner=trust.partner_id,
        )
    crl = trust.crl
    if crl is None:
        return
    next_update = crl.next_update_utc
    if next_update is not None and now > next_update:
        if trust.crl_stale == "refuse":
            raise AuthError(
                f"the CRL of {trust.partner_id} is past its nextUpdate",
                code="AUTH_CRL_STALE",
                partner=trust.partner_id,
            )
        log.warning("crl_stale", partner=trust.partner_id, next_update=str(next_update))
    if crl.get_revoked_certificate_by_serial_number(cert.serial_number) is not None:
        raise AuthError(
            f"certificate {_subject(cert)} serial {cert.serial_number:x} is revoked",
            code="AUTH_REVOKED",
            partner=trust.partner_id,
        )


def peer_der(ssl_object: ssl.SSLObject | ssl.SSLSocket | None) -> bytes | None:
    """The DER bytes of the peer's certificate on an established TLS connection."""
    if ssl_object is None:
        return None
    return ssl_object.getpeercert(binary_form=True)


def _issued_by_any(cert: x509.Certificate, cas: tuple[x509.Certificate, ...]) -> bool:
    for ca in cas:
        if cert.issuer != ca.subject:
            continue
        try:
            cert.verify_directly_issued_by(ca)
        except (ValueError, TypeError, x509.InvalidSignature):
            continue
        return True
    return False


def _load_partner(partner: Partner) -> PartnerTrust:
    try:
        cas = tuple(load_certs(partner.ca))
        signing = tuple(c for path in partner.signing_certs for c in load_certs(path))
        crl = load_crl(partner.crl) if partner.crl else None
    except GatewayError as exc:
        raise ConfigError(f"partner {partner.id}: {exc.reason}") from None
    if not cas:
        raise ConfigError(f"partner {partner.id}: {partner.ca}: no certificate in file")
    return PartnerTrust(
        partner_id=partner.id,
        cas=cas,
        pins=frozenset(partner.tls_pins),
        signing_certs=signing,
        crl=crl,
        crl_stale=partner.crl_stale,
        ca_pem=b"".join(c.public_bytes(Encoding.PEM) for c in cas),
    )


def _harden(ctx: ssl.SSLContext) -> None:
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(TLS12_CIPHERS)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION


def _load_chain(ctx: ssl.SSLContext, cert: Path, key: Path, passphrase_env: str | None) -> None:
    password = os.environ.get(passphrase_env) if passphrase_env else None
    try:
        ctx.load_cert_chain(cert, key, password=password)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"{cert} / {key}: cannot load certificate and key: {exc}") from None


def _subject(cert: x509.Certificate) -> str:
    return cert.subject.rfc4514_string()

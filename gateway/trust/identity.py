"""Mutual TLS: SSL contexts, and the partner identity behind a client certificate.

Python's ssl module has one trust store per context and no verification
callback, so the server context trusts the union of all partners' CAs and the
per-partner binding is checked right after the handshake by
``TrustStore.authenticate``: the certificate must be issued directly by *that*
partner's CA, be within its validity (and the CA within its own), match the
partner's SPKI pins when it has any, and not be revoked by the partner's CRL.
The identity of a partner comes from here and nothing else.

The server context leaves the validity window to that check
(``X509_V_FLAG_NO_CHECK_TIME``) so that an expired or not-yet-valid partner
certificate is refused by the gateway, audited with its reason and the peer's
address, rather than silently inside the TLS library.

A ``TrustStore`` is immutable; a reload builds a new one and swaps it in. The
identities of connections kept open across a reload are *carried* into the new
store: ``identify`` (asked on every request) honours them, ``authenticate``
(asked for every new connection) never does.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import structlog
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.serialization import Encoding

from gateway.config.models import Partner, TlsSection
from gateway.errors import AuthError, ConfigError, ErrorCode, GatewayError
from gateway.pem import load_certs, load_crl, serial_hex, spki_pin

log = structlog.get_logger(__name__)


#: TLS 1.2 suites offered besides TLS 1.3's own (ECDHE with AEAD only)
TLS12_CIPHERS = (
    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
    "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305:"
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256"
)


#: OpenSSL's X509_V_FLAG_NO_CHECK_TIME: validity is checked by ``check_certificate`` instead
VERIFY_NO_CHECK_TIME = 0x200000


_FAR_FUTURE = datetime.max.replace(tzinfo=UTC)


#: (partner, nextUpdate) of stale CRLs already warned about, so that "warn" warns once
_warned_stale: set[tuple[str, datetime]] = set()


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
    #: the file the CRL was loaded from (and a fetched one is written to)
    crl_path: Path | None = None


class TrustStore:
    """Every partner's CAs, pins, signing certificates and CRL; immutable once built.

    Reload builds a new store and swaps it in, after ``carry`` has told it the
    client certificates (DER) of connections kept open and their partners.
    """

    def __init__(
        self,
        partners: Mapping[str, Partner],
        *,
        now: datetime | None = None,
        allow_stale_crl: bool = False,
    ) -> None:
        """Load every partner's files; a CRL already past nextUpdate is a ``ConfigError``
        (``CONFIG_CRL_STALE``) unless the partner says ``crl_stale = "warn"`` or
        ``allow_stale_crl`` (for tools that replace it)."""
        moment = now or datetime.now(UTC)
        self.partners: dict[str, PartnerTrust] = {
            pid: _load_partner(p, moment, allow_stale_crl) for pid, p in partners.items()
        }
        self._memo: dict[bytes, tuple[str, datetime]] = {}
        self._carried: dict[bytes, tuple[str, datetime]] = {}

    def with_crl(self, partner_id: str, crl: x509.CertificateRevocationList) -> TrustStore:
        """A new store like this one, with ``crl`` in force for ``partner_id``.

        The caller has checked the CRL (``gateway.trust.crl.accept``); identities carried into
        this store are not carried into the new one (``carry`` it again).
        """
        new = TrustStore.__new__(TrustStore)
        new.partners = dict(self.partners)
        new.partners[partner_id] = replace(self.partners[partner_id], crl=crl)
        new._memo = {}
        new._carried = {}
        return new

    def carry(self, identities: Mapping[bytes, str]) -> None:
        """Keep the identities of connections left open across a reload (until expiry)."""
        for der, partner in identities.items():
            if partner in self.partners:
                cert = x509.load_der_x509_certificate(der)
                self._carried[der] = (partner, cert.not_valid_after_utc)

    def identify(self, der: bytes | None, *, now: datetime | None = None) -> str:
        """The partner an established connection's client certificate belongs to.

        Honours identities carried over a reload; otherwise ``authenticate``.
        """
        if der and der in self._carried:
            partner, not_after = self._carried[der]
            if (now or datetime.now(UTC)) <= not_after:
                return partner
        return self.authenticate(der, now=now)

    def authenticate(self, der: bytes | None, *, now: datetime | None = None) -> str:
        """The partner a new connection's client certificate belongs to, or ``AuthError``."""
        if not der:
            raise AuthError("no client certificate", code=ErrorCode.AUTH_NO_CERTIFICATE)
        if now is None:
            hit = self._memo.get(der)
            if hit is not None and datetime.now(UTC) < hit[1]:
                return hit[0]
        cert = x509.load_der_x509_certificate(der)
        candidates = [(t, ca) for t in self.partners.values() if (ca := _issuer(cert, t.cas))]
        if not candidates:
            raise AuthError(
                f"certificate {_subject(cert)} is not issued by any partner's CA",
                code=ErrorCode.AUTH_UNKNOWN_ISSUER,
            )
        pin = spki_pin(cert)
        pinned = [c for c in candidates if pin in c[0].pins]
        unpinned = [c for c in candidates if not c[0].pins]
        matches = pinned or unpinned
        if not matches:
            raise AuthError(
                f"certificate {_subject(cert)} does not match the pins of partner "
                f"{candidates[0][0].partner_id}",
                code=ErrorCode.AUTH_PIN_MISMATCH,
                partner=candidates[0][0].partner_id,
            )
        if len(matches) > 1:
            raise AuthError(
                "certificate matches several partners; configure pins to tell them apart",
                code=ErrorCode.AUTH_AMBIGUOUS,
            )
        trust, ca = matches[0]
        moment = now or datetime.now(UTC)
        _check_ca(ca, trust, moment)
        check_certificate(cert, trust, now=moment)
        if now is None:
            self._memo[der] = (trust.partner_id, _recheck_at(cert, ca, trust))
        return trust.partner_id

    def closing_reason(
        self, der: bytes | None, partner_id: str, *, now: datetime | None = None
    ) -> AuthError | None:
        """Why an established connection of ``partner_id`` must close under this store.

        Only a removed partner or a revoked certificate closes a connection; a
        changed CA or pins apply to new connections only.
        """
        trust = self.partners.get(partner_id)
        if trust is None:
            return AuthError(
                f"partner {partner_id} was removed",
                code=ErrorCode.AUTH_PARTNER_REMOVED,
                partner=partner_id,
            )
        if not der:
            return AuthError("no client certificate", code=ErrorCode.AUTH_NO_CERTIFICATE)
        cert = x509.load_der_x509_certificate(der)
        if _revoked(cert, trust):
            return AuthError(
                f"certificate {_subject(cert)} serial {serial_hex(cert.serial_number)} is revoked",
                code=ErrorCode.AUTH_REVOKED,
                partner=partner_id,
            )
        return None

    def signing_certs(
        self, partner_id: str, *, now: datetime | None = None
    ) -> tuple[x509.Certificate, ...]:
        """The partner's pinned signing certificates that are not revoked.

        Old and new are both returned during a rotation's overlap. Validity is
        left to ``xml.signature.verify``, which checks it at the signing time. A CRL
        past its nextUpdate refuses them all (``AUTH_CRL_STALE``) unless the
        partner says "warn"; when every configured certificate is revoked,
        ``AUTH_REVOKED`` is raised.
        """
        trust = self.partners[partner_id]
        _check_crl_fresh(trust, now or datetime.now(UTC))
        good = tuple(c for c in trust.signing_certs if not _revoked(c, trust))
        if trust.signing_certs and not good:
            raise AuthError(
                f"every signing certificate of {partner_id} is revoked",
                code=ErrorCode.AUTH_REVOKED,
                partner=partner_id,
            )
        return good

    def server_context(self, tls: TlsSection) -> ssl.SSLContext:
        """The partner listener's context: TLS >= 1.2, client certificate required."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        _harden(ctx)
        ctx.verify_mode = ssl.CERT_REQUIRED
        # A partner's configured CA may be an intermediate; validity is checked after the
        # handshake so that expired and not-yet-valid certificates are audited.
        ctx.verify_flags = ctx.verify_flags | ssl.VERIFY_X509_PARTIAL_CHAIN | VERIFY_NO_CHECK_TIME
        # Clients of this API never resume sessions; tickets only cost a signature each.
        ctx.num_tickets = 0
        ctx.options |= ssl.OP_NO_TICKET | ssl.OP_CIPHER_SERVER_PREFERENCE
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
            raise AuthError("partner presented no certificate", code=ErrorCode.AUTH_NO_CERTIFICATE)
        cert = x509.load_der_x509_certificate(der)
        if trust.pins and spki_pin(cert) not in trust.pins:
            raise AuthError(
                f"server certificate of {partner_id} does not match its pins",
                code=ErrorCode.AUTH_PIN_MISMATCH,
                partner=partner_id,
            )
        check_certificate(cert, trust)


def check_certificate(
    cert: x509.Certificate, trust: PartnerTrust, *, now: datetime | None = None
) -> None:
    """Validity window and revocation of a partner's certificate (TLS or signing).

    The partner's CRL applies to certificates its CA issued; a CRL past its
    nextUpdate refuses every certificate of that partner (``crl_stale =
    "refuse"``, the default) or is only warned about (``"warn"``).
    """
    now = now or datetime.now(UTC)
    if now < cert.not_valid_before_utc:
        raise AuthError(
            f"certificate {_subject(cert)} is not valid before "
            f"{cert.not_valid_before_utc:%Y-%m-%d}",
            code=ErrorCode.AUTH_NOT_YET_VALID,
            partner=trust.partner_id,
        )
    if now > cert.not_valid_after_utc:
        raise AuthError(
            f"certificate {_subject(cert)} expired on {cert.not_valid_after_utc:%Y-%m-%d}",
            code=ErrorCode.AUTH_EXPIRED,
            partner=trust.partner_id,
        )
    _check_crl_fresh(trust, now)
    if _revoked(cert, trust):
        raise AuthError(
            f"certificate {_subject(cert)} serial {serial_hex(cert.serial_number)} is revoked",
            code=ErrorCode.AUTH_REVOKED,
            partner=trust.partner_id,
        )


def peer_der(ssl_object: ssl.SSLObject | ssl.SSLSocket | None) -> bytes | None:
    """The DER bytes of the peer's certificate on an established TLS connection."""
    if ssl_object is None:
        return None
    return ssl_object.getpeercert(binary_form=True)


def _check_crl_fresh(trust: PartnerTrust, now: datetime) -> None:
    crl = trust.crl
    next_update = crl.next_update_utc if crl is not None else None
    if next_update is None or now <= next_update:
        return
    if trust.crl_stale == "refuse":
        raise AuthError(
            f"the CRL of {trust.partner_id} is past its nextUpdate",
            code=ErrorCode.AUTH_CRL_STALE,
            partner=trust.partner_id,
        )
    if (trust.partner_id, next_update) not in _warned_stale:
        _warned_stale.add((trust.partner_id, next_update))
        log.warning("crl_stale", partner=trust.partner_id, next_update=str(next_update))


def _revoked(cert: x509.Certificate, trust: PartnerTrust) -> bool:
    crl = trust.crl
    if crl is None or crl.issuer != cert.issuer:
        return False
    return crl.get_revoked_certificate_by_serial_number(cert.serial_number) is not None


def _check_ca(ca: x509.Certificate, trust: PartnerTrust, now: datetime) -> None:
    if not ca.not_valid_before_utc <= now <= ca.not_valid_after_utc:
        raise AuthError(
            f"the CA {_subject(ca)} of {trust.partner_id} is outside its validity",
            code=ErrorCode.AUTH_CA_EXPIRED,
            partner=trust.partner_id,
        )


def _recheck_at(cert: x509.Certificate, ca: x509.Certificate, trust: PartnerTrust) -> datetime:
    """When a memoised identity must be checked again (expiry, stale CRL)."""
    moments = [cert.not_valid_after_utc, ca.not_valid_after_utc]
    if trust.crl is not None and trust.crl.next_update_utc is not None:
        moments.append(trust.crl.next_update_utc)
    return min(moments, default=_FAR_FUTURE)


def _issuer(cert: x509.Certificate, cas: tuple[x509.Certificate, ...]) -> x509.Certificate | None:
    for ca in cas:
        if cert.issuer != ca.subject:
            continue
        try:
            cert.verify_directly_issued_by(ca)
        except (ValueError, TypeError, InvalidSignature):
            continue
        return ca
    return None


def _load_partner(partner: Partner, now: datetime, allow_stale_crl: bool = False) -> PartnerTrust:
    try:
        cas = tuple(load_certs(partner.ca))
        signing = tuple(c for path in partner.signing_certs for c in load_certs(path))
        crl = load_crl(partner.crl) if partner.crl else None
    except GatewayError as exc:
        raise ConfigError(f"partner {partner.id}: {exc.reason}", code=exc.code) from None
    if not cas:
        raise ConfigError(f"partner {partner.id}: {partner.ca}: no certificate in file")
    if crl is not None and not any(crl_signed_by(crl, ca) for ca in cas):
        raise ConfigError(
            f"partner {partner.id}: {partner.crl}: the CRL is not signed by the partner's CA",
            code=ErrorCode.CONFIG_CRL_ISSUER,
        )
    next_update = crl.next_update_utc if crl is not None else None
    stale = next_update is not None and next_update < now
    if stale and partner.crl_stale == "refuse" and not allow_stale_crl:
        # loading it would cut the partner off at once; say so now, not at the first connection
        raise ConfigError(
            f"partner {partner.id}: {partner.crl}: the CRL is past its nextUpdate "
            f"({next_update:%Y-%m-%dT%H:%M:%SZ}); install a current one (`maagw certs fetch-crl`) "
            'or set crl_stale = "warn" for this partner',
            code=ErrorCode.CONFIG_CRL_STALE,
            partner=partner.id,
        )
    return PartnerTrust(
        partner_id=partner.id,
        cas=cas,
        pins=frozenset(partner.tls_pins),
        signing_certs=signing,
        crl=crl,
        crl_stale=partner.crl_stale,
        ca_pem=b"".join(c.public_bytes(Encoding.PEM) for c in cas),
        crl_path=partner.crl,
    )


def crl_signed_by(crl: x509.CertificateRevocationList, ca: x509.Certificate) -> bool:
    """True when ``ca`` issued and signed ``crl``."""
    if crl.issuer != ca.subject:
        return False
    try:
        return crl.is_signature_valid(ca.public_key())  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False


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

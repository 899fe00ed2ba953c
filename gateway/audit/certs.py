"""The gateway's own signing certificates, recorded in its exchange log.

Checkpoints are signed with the gateway's signing key, and that key is rotated. So
that ``verify`` can trust every certificate that ever signed a checkpoint — not only
the one configured today — the log records each signing certificate the gateway uses:
a ``cert_recorded`` entry (code ``SIGNING_CERT_RECORDED``) carrying the certificate's
PEM and fingerprint, written when the gateway starts or reloads with a certificate the
log does not hold yet, and by ``maagw certs rotate`` for the successor.

A recorded certificate vouches for a checkpoint (see ``trust_problem``) when:

- the record is at or before the checkpoint's seq — the checkpoint itself covers it,
  so the record cannot be inserted later without breaking the chain; checkpoints that
  precede every record (a log begun before certificates were recorded) may use a
  certificate recorded anywhere in the log;
- the certificate is a signing certificate issued directly by one of the trusted CAs
  (the gateway's own ``tls.ca``): someone who can write to the database can append a
  record of *his* certificate and sign a checkpoint with it, but he cannot get one from
  the gateway's CA;
- the checkpoint's time is within the certificate's validity.

The configured certificate(s) stay trusted as before, whatever the log says.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from gateway.audit.chain import AuditEvent
from gateway.errors import ErrorCode
from gateway.pem import cert_kind, cert_sha256, issued_directly_by, serial_hex, spki_pin

#: the event of a certificate record
CERT_RECORDED = "cert_recorded"


#: its code
SIGNING_CERT_RECORDED = ErrorCode.SIGNING_CERT_RECORDED


def record_event(cert: x509.Certificate, *, actor: str, source: str) -> AuditEvent:
    """The entry that records ``cert`` as one of this gateway's signing certificates."""
    return AuditEvent(
        CERT_RECORDED,
        outcome="ok",
        code=SIGNING_CERT_RECORDED,
        actor=actor,
        reason=f"signing certificate {cert.subject.rfc4514_string()} recorded ({source})",
        details={
            "source": source,
            "subject": cert.subject.rfc4514_string(),
            "serial": serial_hex(cert.serial_number),
            "cert_sha256": cert_sha256(cert),
            "spki_pin": spki_pin(cert),
            "not_before": f"{cert.not_valid_before_utc:%Y-%m-%dT%H:%M:%SZ}",
            "not_after": f"{cert.not_valid_after_utc:%Y-%m-%dT%H:%M:%SZ}",
            "cert_pem": cert.public_bytes(serialization.Encoding.PEM).decode("ascii"),
        },
    )


@dataclass(frozen=True, slots=True)
class CertRecord:
    """A certificate recorded in the log, and the seq of the entry recording it."""

    seq: int
    cert: x509.Certificate
    sha256: str


def record_from(
    seq: int, event: str, code: str | None, details: Mapping[str, Any]
) -> CertRecord | None:
    """The record an entry makes, or None (not a record, or an unreadable certificate).

    An unreadable certificate in a record is not trusted; the chain check says whether
    the entry was altered.
    """
    if event != CERT_RECORDED or code != SIGNING_CERT_RECORDED:
        return None
    pem = details.get("cert_pem")
    if not isinstance(pem, str):
        return None
    try:
        cert = x509.load_pem_x509_certificate(pem.encode("ascii"))
    except (ValueError, UnicodeEncodeError):
        return None
    return CertRecord(seq, cert, cert_sha256(cert))


class RecordedTrust:
    """Decides whether a certificate that is not a configured anchor may sign a checkpoint."""

    def __init__(
        self, records: Iterable[CertRecord], cas: Sequence[x509.Certificate] | None
    ) -> None:
        self.cas = tuple(cas) if cas is not None else None
        self._by_sha: dict[str, list[int]] = {}
        first = 0
        for record in sorted(records, key=lambda r: r.seq):
            self._by_sha.setdefault(record.sha256, []).append(record.seq)
            first = first or record.seq
        #: seq of the first record (0: none); checkpoints below it predate recording
        self.first_seq = first

    def problem(self, cert: x509.Certificate, cp_seq: int, cp_time: str) -> str | None:
        """Why ``cert`` may not sign the checkpoint at ``cp_seq``/``cp_time``; None if it may."""
        who = f"{cert.subject.rfc4514_string()} (cert_sha256 {cert_sha256(cert)})"
        seqs = self._by_sha.get(cert_sha256(cert))
        if not seqs:
            return f"signed by {who}: neither a trusted certificate nor recorded in the log"
        usable = [s for s in seqs if s <= cp_seq or cp_seq < self.first_seq]
        if not usable:
            return (
                f"signed by {who}, recorded in the log only at seq {seqs[0]}, after this checkpoint"
            )
        if self.cas is None:
            return (
                f"signed by {who}, recorded at seq {usable[0]}, but there is no trusted CA "
                "to check it against (give --config or --ca)"
            )
        if not _signing_cert_of(cert, self.cas):
            return (
                f"signed by {who}, recorded at seq {usable[0]}, but it is not a signing "
                "certificate issued by the gateway's CA"
            )
        moment = _parse_time(cp_time)
        if moment is None or not (cert.not_valid_before_utc <= moment <= cert.not_valid_after_utc):
            return (
                f"signed by {who} at {cp_time}, outside the certificate's validity "
                f"({cert.not_valid_before_utc:%Y-%m-%dT%H:%M:%SZ} .. "
                f"{cert.not_valid_after_utc:%Y-%m-%dT%H:%M:%SZ})"
            )
        return None


def _signing_cert_of(cert: x509.Certificate, cas: Sequence[x509.Certificate]) -> bool:
    return cert_kind(cert) == "signing" and any(issued_directly_by(cert, ca) for ca in cas)


def _parse_time(text: str) -> datetime | None:
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None

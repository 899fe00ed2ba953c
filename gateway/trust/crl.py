"""Partners' CRLs over their lifetime: how fresh each is, and fetching the next one.

A partner's CRL (``crl`` in its file) is refused at load once past its nextUpdate
(``identity._load_partner``, unless the partner says ``crl_stale = "warn"``). To keep it
from getting there, the gateway warns ``[crl] warning_days`` before nextUpdate
(``status``) and fetches the partner's CRL from its distribution point (``crl_url``,
else the CRL distribution point in the partner's signing or CA certificates) every
``[crl] fetch_interval_seconds``, and more often once within the warning horizon.

A fetched CRL is installed only when it is readable, signed by one of the partner's
CAs, not past its own nextUpdate and not older than the one in force (CRL number,
else lastUpdate); otherwise the old one stays and the reason is a ``CrlError`` code:

========================  =============================================
``CRL_FETCH_UNREACHABLE``  no answer (connection refused, timeout, DNS)
``CRL_FETCH_HTTP``         an HTTP status other than 200
``CRL_FETCH_TOO_LARGE``    more than ``[crl] max_bytes``
``CRL_FETCH_CORRUPT``      neither a PEM nor a DER CRL
``CRL_FETCH_WRONG_SIGNER`` not signed by the partner's CA
``CRL_FETCH_STALE``        already past its nextUpdate
``CRL_FETCH_OLDER``        older than the CRL in force
========================  =============================================
"""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import structlog
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from gateway.config.models import Partner
from gateway.errors import CrlError, ErrorCode
from gateway.pem import write_crl
from gateway.trust.identity import PartnerTrust, crl_signed_by

log = structlog.get_logger(__name__)


#: states ``status`` reports
OK, EXPIRING, STALE = "ok", "expiring", "stale"


#: how soon a failed fetch, or one of a CRL near its nextUpdate, is tried again
RETRY_SECONDS = 300.0


@dataclass(frozen=True, slots=True)
class CrlStatus:
    """How fresh one partner's CRL in force is."""

    partner: str
    path: Path | None
    next_update: datetime | None
    crl_number: int | None
    #: ``ok``, ``expiring`` (within the warning horizon) or ``stale`` (past nextUpdate)
    state: str
    #: hours until nextUpdate (negative once past); None without a nextUpdate
    hours_left: float | None
    #: a stale CRL cuts the partner off (``crl_stale = "refuse"``)
    cut_off: bool
    #: the partner's ``crl_stale``: ``refuse`` or ``warn``
    crl_stale: str = "refuse"

    def as_json(self) -> dict[str, object]:
        return {
            "state": self.state,
            "next_update": _iso(self.next_update) if self.next_update else None,
            "hours_left": round(self.hours_left, 1) if self.hours_left is not None else None,
            "crl_number": self.crl_number,
            "cut_off": self.cut_off,
            "file": str(self.path) if self.path else None,
        }


def status(
    trust: PartnerTrust, warning: timedelta, now: datetime | None = None
) -> CrlStatus | None:
    """The freshness of the partner's CRL in force; None when it has none."""
    crl = trust.crl
    if crl is None:
        return None
    now = now or datetime.now(UTC)
    next_update = crl.next_update_utc
    if next_update is None:
        state, hours = OK, None
    else:
        hours = (next_update - now) / timedelta(hours=1)
        state = STALE if now > next_update else EXPIRING if next_update - now <= warning else OK
    return CrlStatus(
        partner=trust.partner_id,
        path=trust.crl_path,
        next_update=next_update,
        crl_number=crl_number(crl),
        state=state,
        hours_left=hours,
        cut_off=state == STALE and trust.crl_stale == "refuse",
        crl_stale=trust.crl_stale,
    )


def warning_text(st: CrlStatus) -> str:
    """One line about a CRL near or past its nextUpdate (``config check``, ``certs list``)."""
    when = _iso(st.next_update) if st.next_update else "-"
    if st.state == STALE:
        effect = "the partner is cut off" if st.cut_off else 'accepted: crl_stale = "warn"'
        return f"partner {st.partner}: the CRL {st.path} is past its nextUpdate {when} ({effect})"
    then = "is cut off" if st.crl_stale == "refuse" else 'is still accepted (crl_stale = "warn")'
    return (
        f"partner {st.partner}: the CRL {st.path} reaches its nextUpdate {when} in "
        f"{st.hours_left or 0:.1f} h; after that the partner {then} unless a newer CRL is in force"
    )


def crl_number(crl: x509.CertificateRevocationList) -> int | None:
    """The CRL's CRLNumber extension, or None."""
    try:
        return int(crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number)
    except x509.ExtensionNotFound:
        return None


def sources(partner: Partner, trust: PartnerTrust) -> list[str]:
    """Where to fetch the partner's CRL: ``crl_url``, else the distribution points.

    Distribution points are read from the partner's signing certificates (leaves its CA
    issued name the CA's CRL) and then from its CA certificates (a self-signed CA names
    its own); only http and https URLs are used. No ``crl`` file: nothing to keep current.
    """
    if trust.crl_path is None:
        return []
    if partner.crl_url:
        return [partner.crl_url]
    urls: list[str] = []
    for cert in (*trust.signing_certs, *trust.cas):
        for url in distribution_points(cert):
            if url not in urls:
                urls.append(url)
    return urls


def distribution_points(cert: x509.Certificate) -> list[str]:
    """The http(s) URLs of a certificate's CRL distribution points."""
    try:
        points = cert.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    except x509.ExtensionNotFound:
        return []
    urls = []
    for point in points:
        for name in point.full_name or ():
            if isinstance(name, x509.UniformResourceIdentifier) and name.value.lower().startswith(
                ("http://", "https://")
            ):
                urls.append(name.value)
    return urls


async def download(url: str, *, timeout: float, max_bytes: int) -> bytes:
    """GET ``url``; the body, or ``CrlError`` (unreachable, HTTP status, too large)."""
    client_timeout = aiohttp.ClientTimeout(total=timeout)
    try:
        async with (
            aiohttp.ClientSession(timeout=client_timeout) as session,
            session.get(url, allow_redirects=True, max_redirects=3) as response,
        ):
            if response.status != 200:
                raise CrlError(
                    f"{url} answered HTTP {response.status}", code=ErrorCode.CRL_FETCH_HTTP, url=url
                )
            if (response.content_length or 0) > max_bytes:
                raise _too_large(url, max_bytes)
            data = await response.content.read(max_bytes + 1)
            if len(data) > max_bytes:
                raise _too_large(url, max_bytes)
            return data
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        reason = str(exc) or type(exc).__name__
        raise CrlError(
            f"{url} could not be fetched: {reason}", code=ErrorCode.CRL_FETCH_UNREACHABLE, url=url
        ) from None


def _too_large(url: str, max_bytes: int) -> CrlError:
    return CrlError(
        f"{url} sent more than {max_bytes} bytes", code=ErrorCode.CRL_FETCH_TOO_LARGE, url=url
    )


def parse(data: bytes) -> x509.CertificateRevocationList:
    """A CRL in PEM or DER form, or ``CrlError`` ``CRL_FETCH_CORRUPT``."""
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            return x509.load_pem_x509_crl(data)
        return x509.load_der_x509_crl(data)
    except ValueError:
        raise CrlError(
            "the answer is not a CRL (neither PEM nor DER)", code=ErrorCode.CRL_FETCH_CORRUPT
        ) from None


def accept(
    new: x509.CertificateRevocationList, trust: PartnerTrust, now: datetime | None = None
) -> bool:
    """Check a fetched CRL against the partner's trust; True when it replaces the one in force.

    False: the same CRL as in force (nothing to do). ``CrlError``: not signed by the
    partner's CA, past its nextUpdate, or older than the CRL in force.
    """
    now = now or datetime.now(UTC)
    if not any(crl_signed_by(new, ca) for ca in trust.cas):
        raise CrlError(
            f"the CRL ({new.issuer.rfc4514_string()}) is not signed by the CA of "
            f"{trust.partner_id}",
            code=ErrorCode.CRL_FETCH_WRONG_SIGNER,
        )
    if new.next_update_utc is not None and new.next_update_utc < now:
        raise CrlError(
            f"the CRL is past its nextUpdate ({_iso(new.next_update_utc)})",
            code=ErrorCode.CRL_FETCH_STALE,
        )
    current = trust.crl
    if current is None:
        return True
    if _fingerprint(new) == _fingerprint(current):
        return False
    new_n, old_n = crl_number(new), crl_number(current)
    older = (
        new_n < old_n
        if new_n is not None and old_n is not None
        else new.last_update_utc < current.last_update_utc
    )
    if older or (new_n is not None and new_n == old_n):
        raise CrlError(
            f"the CRL (number {new_n}, lastUpdate {_iso(new.last_update_utc)}) is not newer "
            f"than the one in force (number {old_n}, lastUpdate {_iso(current.last_update_utc)})",
            code=ErrorCode.CRL_FETCH_OLDER,
        )
    return True


@dataclass(frozen=True, slots=True)
class Fetched:
    """The outcome of one fetch for one partner."""

    partner: str
    url: str | None
    crl: x509.CertificateRevocationList | None = None
    #: True when ``crl`` is newer than the CRL in force (install it)
    changed: bool = False
    error: CrlError | None = None
    #: the fetched CRL could not be written to the partner's ``crl`` file (reason)
    write_error: str | None = None


async def fetch(
    partner: Partner,
    trust: PartnerTrust,
    *,
    timeout: float,
    max_bytes: int,
    now: datetime | None = None,
    write: bool = True,
) -> Fetched:
    """Fetch the partner's CRL from its first source that gives a usable one.

    A newer CRL is written atomically to the partner's ``crl`` file (``write``) before
    it is returned for installing; a failure of every source is returned with the last
    source's error. Never raises for a bad answer: the CRL in force stays.
    """
    urls = sources(partner, trust)
    if not urls:
        return Fetched(
            trust.partner_id,
            None,
            error=CrlError(
                f"no CRL source for {trust.partner_id}: set crl_url, or crl for a "
                "distribution point to be used",
                code=ErrorCode.CRL_FETCH_NO_SOURCE,
            ),
        )
    error: CrlError | None = None
    for url in urls:
        try:
            crl = parse(await download(url, timeout=timeout, max_bytes=max_bytes))
            changed = accept(crl, trust, now)
        except CrlError as exc:
            error = CrlError(exc.reason, code=exc.code, url=url, partner=trust.partner_id)
            continue
        write_error = None
        if changed and write and trust.crl_path is not None:
            try:
                await asyncio.to_thread(write_crl, trust.crl_path, crl)
            except OSError as exc:
                write_error = f"{trust.crl_path}: {exc.strerror or exc}"
        return Fetched(trust.partner_id, url, crl, changed, write_error=write_error)
    return Fetched(trust.partner_id, urls[-1], error=error)


def newer_file(
    trust: PartnerTrust, now: datetime | None = None
) -> x509.CertificateRevocationList | None:
    """The CRL in the partner's ``crl`` file when it is a usable, newer one than in force.

    How the other workers of ``serve --workers`` (and an operator replacing the file)
    bring a CRL into force without a reload; a file that is unreadable, not newer or
    not usable is left alone (a reload would say why).
    """
    if trust.crl_path is None:
        return None
    try:
        crl = parse(trust.crl_path.read_bytes())
        return crl if accept(crl, trust, now) else None
    except (CrlError, OSError):
        return None


def describe(crl: x509.CertificateRevocationList) -> dict[str, object]:
    """What log lines and audit entries say about a CRL (never its contents)."""
    return {
        "crl_number": crl_number(crl),
        "next_update": _iso(crl.next_update_utc) if crl.next_update_utc else None,
        "revoked": len(crl),
        "crl_sha256": _fingerprint(crl),
    }


def _fingerprint(crl: x509.CertificateRevocationList) -> str:
    return hashlib.sha256(crl.public_bytes(serialization.Encoding.DER)).hexdigest()


def _iso(moment: datetime) -> str:
    return f"{moment:%Y-%m-%dT%H:%M:%SZ}"


class WatchState:
    """What the CRL watch remembers between rounds: when to fetch, what failed, what it warned."""

    def __init__(self) -> None:
        #: rounds completed (``Gateway.refresh_crls``)
        self.rounds = 0
        self._due: dict[str, float] = {}
        self._failing: dict[str, str] = {}
        self._warned: set[tuple[str, datetime | None, str]] = set()

    def due(self, partner: str, now: float) -> bool:
        """True when the partner's CRL should be fetched (at once after start)."""
        return now >= self._due.get(partner, 0.0)

    def schedule(self, partner: str, now: float, interval: float, *, soon: bool) -> None:
        """Fetch again after ``interval`` — or after a few minutes (``soon``: a failure, or a
        CRL near its nextUpdate)."""
        self._due[partner] = now + (min(interval, RETRY_SECONDS) if soon else interval)

    def failing(self, partner: str, code: str) -> bool:
        """Note a failed fetch; True when it starts a streak (or changes its code)."""
        first = self._failing.get(partner) != code
        self._failing[partner] = code
        return first

    def recovered(self, partner: str) -> None:
        """Note a successful fetch."""
        self._failing.pop(partner, None)

    def first_warning(self, st: CrlStatus) -> bool:
        """True the first time this CRL (partner, nextUpdate) is seen in this state."""
        key = (st.partner, st.next_update, st.state)
        if key in self._warned:
            return False
        self._warned.add(key)
        return True

"""The mutual-TLS HTTP client to partner gateways.

One keep-alive connection pool per partner, each with an SSL context that
trusts only that partner's CA and checks the host name (the partner's
``server_name``, else the host of its URL). After each response the server
certificate is checked against the partner's pins and CRL.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

import aiohttp
import structlog

from gateway.config.models import Partner, TlsSection
from gateway.errors import AuthError, DeliveryError, ErrorCode
from gateway.trust.identity import TrustStore, peer_der
from gateway.xml.batch import encode_multipart

log = structlog.get_logger(__name__)


MESSAGES_PATH = "/v1/messages"


#: statuses after which the sender tries again later; any other answer is final
RETRYABLE_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})


#: the code a retryable status is reported under: the partner's "not now" is not a fault
STATUS_CODES = {429: ErrorCode.DELIVERY_THROTTLED, 503: ErrorCode.DELIVERY_RETRY_LATER}


@dataclass(frozen=True, slots=True)
class Answer:
    """A partner gateway's answer to a POST: its status and the (signed) receipt bytes.

    ``retry_after``: the partner's Retry-After, which a batch answer carries when some of
    its envelopes were left out of the receipt list (to be sent again later).
    """

    status: int
    body: bytes
    retry_after: float | None = None
    #: the server certificate could not be checked (the partner's CRL is past its
    #: nextUpdate): the answer arrived, but what it says cannot be relied on
    server_problem: AuthError | None = None


class PartnerLink(Protocol):
    """What the outbound pipeline calls of a partner client (this one, or the in-memory fake)."""

    async def post(self, partner_id: str, body: bytes, *, path: str = MESSAGES_PATH) -> Answer: ...

    async def post_batch(self, partner_id: str, envelopes: list[bytes]) -> Answer: ...

    async def close(self) -> None: ...


class PartnerClient:
    """POST signed envelopes to partner gateways; one connection pool per partner."""

    def __init__(
        self,
        partners: Mapping[str, Partner],
        trust: TrustStore,
        tls: TlsSection,
        *,
        timeout: float = 15.0,
        connections_per_partner: int = 8,
    ) -> None:
        self._partners = dict(partners)
        self._trust = trust
        self._tls = tls
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._limit = connections_per_partner
        self._sessions: dict[str, aiohttp.ClientSession] = {}

    def _session(self, partner_id: str) -> aiohttp.ClientSession:
        session = self._sessions.get(partner_id)
        if session is None or session.closed:
            ctx = self._trust.client_context(partner_id, self._tls)
            connector = aiohttp.TCPConnector(ssl=ctx, limit=self._limit, keepalive_timeout=60)
            session = aiohttp.ClientSession(connector=connector, timeout=self._timeout)
            self._sessions[partner_id] = session
        return session

    async def post(self, partner_id: str, body: bytes, *, path: str = MESSAGES_PATH) -> Answer:
        """Send one signed envelope; return the partner's answer or raise ``DeliveryError``."""
        return await self._post(partner_id, body, "application/xml", path)

    async def post_batch(self, partner_id: str, envelopes: list[bytes]) -> Answer:
        """Send several signed envelopes in one ``multipart/mixed`` request.

        Each part is one envelope exactly as signed; the partner answers with one
        signed receipt list.
        """
        boundary = f"maagw-{uuid.uuid4().hex}"
        body = encode_multipart(envelopes, boundary)
        return await self._post(
            partner_id, body, f'multipart/mixed; boundary="{boundary}"', MESSAGES_PATH
        )

    async def _post(self, partner_id: str, body: bytes, content_type: str, path: str) -> Answer:
        partner = self._partners[partner_id]
        url = partner.url.rstrip("/") + path
        try:
            async with self._session(partner_id).post(
                url,
                data=body,
                headers={"Content-Type": content_type},
                server_hostname=partner.server_name or None,
            ) as resp:
                server_problem = None
                try:
                    self._check_server(partner_id, resp)
                except AuthError as exc:
                    if exc.code != ErrorCode.AUTH_CRL_STALE:
                        raise
                    # the request is out and answered: keep the answer, unverified (a stale
                    # CRL is our trust material's fault, not proof against the partner)
                    server_problem = exc
                data = await resp.read()
                retry_after = _retry_after(resp.headers.get("Retry-After"))
                if resp.status in RETRYABLE_STATUSES:
                    raise DeliveryError(
                        f"{partner_id} answered {resp.status} {resp.reason or ''}".strip()
                        + (f", retry after {retry_after:g} s" if retry_after else ""),
                        code=STATUS_CODES.get(resp.status, f"DELIVERY_HTTP_{resp.status}"),
                        retryable=True,
                        retry_after=retry_after,
                        partner=partner_id,
                    )
                return Answer(resp.status, data, retry_after, server_problem)
        except AuthError as exc:
            raise DeliveryError(
                exc.reason, code=exc.code, retryable=True, partner=partner_id
            ) from exc
        except aiohttp.ClientSSLError as exc:
            raise DeliveryError(
                f"TLS with {partner_id} failed: {exc}",
                code=ErrorCode.DELIVERY_TLS,
                partner=partner_id,
            ) from exc
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise DeliveryError(
                f"{partner_id} unreachable at {url}: {exc.__class__.__name__} {exc}".strip(),
                code=ErrorCode.DELIVERY_UNREACHABLE,
                partner=partner_id,
            ) from exc

    def _check_server(self, partner_id: str, resp: aiohttp.ClientResponse) -> None:
        if resp.connection is None or resp.connection.transport is None:
            return
        ssl_object = resp.connection.transport.get_extra_info("ssl_object")
        self._trust.check_server(partner_id, peer_der(ssl_object))

    async def close(self) -> None:
        for session in self._sessions.values():
            await session.close()
        self._sessions.clear()


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None

"""A fake partner gateway with ``PartnerClient``'s interface: signed receipts, no network.

``MemoryPartner`` answers ``post`` and ``post_batch`` as a real receiving gateway
does, with a receipt list built by ``xml.envelope.build_receipt`` and signed by its
``Signer`` (give it the partner's signing key, and the sender's receipt check
passes as against the real one): ``accepted`` once, ``duplicate`` (naming the first
receipt) for the same envelope again, ``rejected`` with a code for a refusal.
What it received is kept in ``received`` for assertions.

Behaviour is scripted per message id (``answer``) or per call (``next_calls``)::

    partner.answer(mid, Refuse(ErrorCode.POLICY_MESSAGE_TYPE))     # a signed rejection
    partner.answer(mid, Later(retry_after=3), times=1)     # left out of a batch's list once
    partner.next_calls(Busy(429, retry_after=2), Unreachable("TimeoutError"))
    partner.next_calls(Unsigned(), SignedBy(other_signer), ServerProblem(stale_crl))

A retryable answer (429, 503 …) and a failed connection raise ``DeliveryError``
with the code, ``retryable`` and ``retry_after`` the real client gives them.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from lxml import etree

from gateway.errors import (
    AuthError,
    DeliveryError,
    ErrorCode,
    GatewayError,
    http_status,
)
from gateway.partner_client.client import (
    MESSAGES_PATH,
    RETRYABLE_STATUSES,
    STATUS_CODES,
    Answer,
)
from gateway.xml import envelope
from gateway.xml import safe as xmlsafe
from gateway.xml import signature as signing
from gateway.xml.envelope import (
    ReceiptEntry,
    peek_created,
    peek_message_id,
)

# --- what the partner does with one envelope ------------------------------------------------


@dataclass(frozen=True, slots=True)
class Accept:
    """Accept it (``duplicate`` if the same envelope was accepted before)."""


@dataclass(frozen=True, slots=True)
class Refuse:
    """Refuse it with a signed ``rejected`` entry carrying ``code``."""

    code: str
    reason: str = "refused by the partner"


@dataclass(frozen=True, slots=True)
class Later:
    """Not now: left out of the receipt list (a batch), or the request answered ``status``."""

    retry_after: float = 5.0
    status: int = 503


MessageBehaviour = Accept | Refuse | Later


# --- what the partner does with one whole request -------------------------------------------


@dataclass(frozen=True, slots=True)
class Busy:
    """The whole request is answered ``status`` (429, 503 …) with Retry-After, no receipt."""

    status: int = 503
    retry_after: float | None = 5.0


@dataclass(frozen=True, slots=True)
class Unreachable:
    """No answer: a connection refused or timed out (``DELIVERY_UNREACHABLE``) after ``after`` s.

    ``tls=True``: the TLS handshake failed instead (``DELIVERY_TLS``).
    """

    what: str = "TimeoutError"
    after: float = 0.0
    tls: bool = False


@dataclass(frozen=True, slots=True)
class Unsigned:
    """The receipt list comes back without its signature."""


@dataclass(frozen=True, slots=True)
class SignedBy:
    """The receipt list is signed with another key (one the sender does not pin)."""

    signer: signing.Signer


@dataclass(frozen=True, slots=True)
class ServerProblem:
    """The answer arrives, but the server certificate could not be checked (a stale CRL)."""

    error: AuthError


CallBehaviour = Busy | Unreachable | Unsigned | SignedBy | ServerProblem


@dataclass(frozen=True, slots=True)
class Request:
    """One POST the partner received: the envelopes exactly as sent."""

    partner_id: str
    envelopes: tuple[bytes, ...]
    batch: bool


@dataclass
class _Seen:
    digest: str
    receipt_id: str


class MemoryPartner:
    """A partner gateway ``gateway_id`` answering the gateway ``client_id`` in memory.

    Args:
        gateway_id: the partner's id (the receipts' sender; ``post`` is addressed to it).
        signer: the partner's receipt signing key and certificate.
        client_id: the id of the gateway that posts (the receipts' receiver; the TLS
            identity a real partner would see).
        sender_certs: the client's signing certificates, as the partner pins them; when
            given, envelopes are verified (and refused ``SIG_*``) as a real partner does.
    """

    def __init__(
        self,
        gateway_id: str,
        signer: signing.Signer,
        *,
        client_id: str,
        sender_certs: Sequence[x509.Certificate] | None = None,
    ) -> None:
        self.gateway_id = gateway_id
        self.signer = signer
        self.client_id = client_id
        self.sender_certs = list(sender_certs) if sender_certs is not None else None
        #: what to do with a message no script names
        self.default: MessageBehaviour = Accept()
        #: every request received, in order
        self.received: list[Request] = []
        self._calls: deque[CallBehaviour] = deque()
        self._once: dict[str, deque[MessageBehaviour]] = {}
        self._always: dict[str, MessageBehaviour] = {}
        self._seen: dict[str, _Seen] = {}
        self.closed = False

    # --- scripting ---------------------------------------------------------------------------

    def answer(
        self, message_id: str, behaviour: MessageBehaviour, *, times: int | None = None
    ) -> None:
        """Treat ``message_id`` so: the next ``times`` times it comes, or always (None)."""
        if times is None:
            self._always[message_id] = behaviour
        else:
            self._once.setdefault(message_id, deque()).extend([behaviour] * times)

    def next_calls(self, *behaviours: CallBehaviour) -> None:
        """The next requests, one each, behave so (after those scripted before)."""
        self._calls.extend(behaviours)

    # --- inspection --------------------------------------------------------------------------

    @property
    def envelopes(self) -> list[bytes]:
        """Every envelope received, in order (a batch's in its order)."""
        return [env for request in self.received for env in request.envelopes]

    @property
    def message_ids(self) -> list[str | None]:
        """The message ids of the envelopes received, as their headers say."""
        ids: list[str | None] = []
        for env in self.envelopes:
            try:
                ids.append(peek_message_id(xmlsafe.parse(env)))
            except GatewayError:
                ids.append(None)
        return ids

    # --- the PartnerClient interface ---------------------------------------------------------

    async def post(self, partner_id: str, body: bytes, *, path: str = MESSAGES_PATH) -> Answer:
        """Answer one signed envelope; ``DeliveryError`` as the real client raises it."""
        return await self._answer(partner_id, [body], batch=False)

    async def post_batch(self, partner_id: str, envelopes: list[bytes]) -> Answer:
        """Answer several signed envelopes with one signed receipt list."""
        return await self._answer(partner_id, list(envelopes), batch=True)

    async def close(self) -> None:
        self.closed = True

    # --- the answer --------------------------------------------------------------------------

    async def _answer(self, partner_id: str, bodies: list[bytes], *, batch: bool) -> Answer:
        if partner_id != self.gateway_id:
            raise KeyError(partner_id)
        call = self._calls.popleft() if self._calls else None
        if isinstance(call, Unreachable):
            await asyncio.sleep(call.after)
            if call.tls:
                raise DeliveryError(
                    f"TLS with {partner_id} failed: {call.what}",
                    code=ErrorCode.DELIVERY_TLS,
                    partner=partner_id,
                )
            raise DeliveryError(
                f"{partner_id} unreachable at memory://{partner_id}: {call.what}",
                code=ErrorCode.DELIVERY_UNREACHABLE,
                partner=partner_id,
            )
        self.received.append(Request(partner_id, tuple(bodies), batch))
        await asyncio.sleep(0)
        if isinstance(call, Busy):
            raise _retryable(partner_id, call.status, call.retry_after)
        entries: list[ReceiptEntry] = []
        later: list[Later] = []
        for body in bodies:
            result = self._one(body)
            if isinstance(result, Later):
                later.append(result)
            else:
                entries.append(result)
        retry_after = float(int(max(w.retry_after for w in later) + 0.999)) if later else None
        if not entries:
            raise _retryable(partner_id, later[0].status, retry_after)
        receipt_id = envelope.new_id()
        for entry in entries:
            if entry.status == "accepted":
                self._seen[entry.message_id] = _Seen(entry.digest, receipt_id)
        root = envelope.build_receipt(
            self.gateway_id, self.client_id, entries, receipt_id=receipt_id
        )
        if isinstance(call, Unsigned):
            signed = etree.tostring(root, xml_declaration=True, encoding="UTF-8")
        elif isinstance(call, SignedBy):
            signed = call.signer.sign(root)
        else:
            signed = self.signer.sign(root)
        first = entries[0]
        status = 200 if batch or first.status != "rejected" else http_status(first.code or "")
        if status in RETRYABLE_STATUSES:
            raise _retryable(partner_id, status, retry_after)
        problem = call.error if isinstance(call, ServerProblem) else None
        return Answer(status, signed, retry_after, problem)

    def _one(self, body: bytes) -> ReceiptEntry | Later:
        """The entry for one envelope, or ``Later`` when it is left out."""
        digest = "sha256:" + hashlib.sha256(body).hexdigest()
        message_id = "-"
        try:
            root = xmlsafe.parse(body)
            digest = "sha256:" + hashlib.sha256(signing.document_c14n(root)).hexdigest()
            message_id = peek_message_id(root) or "-"
            if self.sender_certs is not None:
                root = signing.verify(root, self.sender_certs, at=peek_created(root)).root
            head = envelope.parse_envelope(root).header
            message_id = head.message_id
            envelope.check_header(head, sender=self.client_id, receiver=self.gateway_id)
        except GatewayError as exc:
            return ReceiptEntry(message_id, digest, "rejected", code=exc.code, reason=exc.reason)
        behaviour = self._behaviour(message_id)
        if isinstance(behaviour, Later):
            return behaviour
        if isinstance(behaviour, Refuse):
            return ReceiptEntry(
                message_id, digest, "rejected", code=behaviour.code, reason=behaviour.reason
            )
        seen = self._seen.get(message_id)
        if seen is None:
            return ReceiptEntry(message_id, digest, "accepted")
        if seen.digest != digest:
            return ReceiptEntry(
                message_id,
                digest,
                "rejected",
                code=ErrorCode.ENVELOPE_ID_REUSED,
                reason=f"message id {message_id} was already used for a different envelope "
                f"({seen.digest})",
            )
        return ReceiptEntry(
            message_id,
            digest,
            "duplicate",
            code=ErrorCode.DUPLICATE,
            reason=envelope.DUPLICATE_REASON,
            original_receipt=seen.receipt_id,
        )

    def _behaviour(self, message_id: str) -> MessageBehaviour:
        once = self._once.get(message_id)
        if once:
            return once.popleft()
        return self._always.get(message_id, self.default)


def _retryable(partner_id: str, status: int, retry_after: float | None) -> DeliveryError:
    """The error the real client raises for a retryable status."""
    return DeliveryError(
        f"{partner_id} answered {status}"
        + (f", retry after {retry_after:g} s" if retry_after else ""),
        code=STATUS_CODES.get(status, f"DELIVERY_HTTP_{status}"),
        retryable=True,
        retry_after=retry_after,
        partner=partner_id,
    )

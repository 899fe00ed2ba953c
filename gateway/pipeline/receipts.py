"""The partner link seen from the sender: POST envelopes, verify the signed receipt list once."""

from __future__ import annotations

from gateway.errors import AuthError, DeliveryError, ErrorCode, GatewayError, SignatureError
from gateway.pipeline.context import VerifiedReceipt
from gateway.pipeline.runtime import Runtime, canonical, hexdigest
from gateway.xml import envelope
from gateway.xml import safe as xmlsafe
from gateway.xml import signature as signing

#: receipt statuses that say the partner has the message
DELIVERED = frozenset({"accepted", "duplicate"})


async def post_and_verify(rt: Runtime, partner: str, envelopes: list[bytes]) -> VerifiedReceipt:
    """POST one envelope, or several as a batch; verify the signed receipt list once.

    A list that does not verify with what we trust (a stale CRL, an unknown or broken
    signature) is read unverified and says so (``problem``), so that a partner who has
    the message is not sent it again and again, and the message is not reported failed.
    Raises ``DeliveryError`` when the answer is no receipt list at all.
    """
    if len(envelopes) == 1:
        answer = await rt.client.post(partner, envelopes[0])
    else:
        answer = await rt.client.post_batch(partner, envelopes)
    try:
        root = xmlsafe.parse(answer.body)
    except GatewayError as exc:
        raise _bad_receipt(answer.status, partner, exc) from exc
    try:
        if answer.server_problem is not None:
            raise answer.server_problem
        verified = signing.verify(root, rt.trust.signing_certs(partner))
        receipt = envelope.parse_receipt(verified.root)
    except (SignatureError, AuthError) as exc:
        try:
            unverified = envelope.parse_receipt(root)
        except GatewayError:
            raise _bad_receipt(answer.status, partner, exc) from exc
        evidence, digest = canonical(root)
        return VerifiedReceipt(unverified, evidence, digest, exc, answer.retry_after)
    except GatewayError as exc:
        raise _bad_receipt(answer.status, partner, exc) from exc
    return VerifiedReceipt(
        receipt, verified.evidence, hexdigest(verified.digest), None, answer.retry_after
    )


def _bad_receipt(status: int, partner: str, exc: GatewayError) -> DeliveryError:
    return DeliveryError(
        f"answer {status} from {partner} is not a valid signed receipt: {exc.code}: {exc.reason}",
        code=ErrorCode.DELIVERY_BAD_RECEIPT,
    )

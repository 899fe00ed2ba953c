"""The gateway's exception tree.

Every refusal the gateway makes is one of these, with a stable ``code`` that
partners, operators and auditors can rely on, and context (partner, message id)
as keyword arguments::

    GatewayError
    ├── ConfigError          CONFIG_*     bad or missing configuration (CLI exit 2)
    ├── AuthError            AUTH_*       TLS identity, pins, revocation, sender mismatch
    ├── EnvelopeError        XML_UNSAFE, SCHEMA_INVALID, SIZE_LIMIT, ENVELOPE_*
    ├── ProtocolError        HTTP_*, CONN_*  a request or connection outside the partner API's HTTP
    ├── SignatureError       SIG_*        missing, invalid, algorithm, profile, wrapping …
    ├── PolicyViolation      POLICY_*     the agreement does not allow this message
    ├── AdapterError         TRANSLATE_*  decode / encode / schema of a payload format
    │   ├── DecodeError
    │   └── EncodeError
    ├── RelayError           RELAY_*      broker unavailable, publish not confirmed
    ├── DeliveryError        DELIVERY_*   partner unreachable or answered badly
    ├── CrlError             CRL_*        a partner's CRL could not be fetched or is unusable
    └── AuditError           AUDIT_*      the exchange log cannot be written or read

A bug stays a built-in error; only conditions the gateway anticipates become
``GatewayError``. ``HTTP_STATUS`` maps a code family to the HTTP status a partner
is answered with.
"""

from __future__ import annotations

from typing import Any


class GatewayError(Exception):
    """Root of every anticipated failure; carries a stable code and context."""

    default_code = "GATEWAY_ERROR"

    def __init__(self, reason: str, *, code: str | None = None, **context: Any) -> None:
        super().__init__(reason)
        self.code = code or self.default_code
        self.reason = reason
        self.context = context

    def __str__(self) -> str:
        return f"{self.code}: {self.reason}"


class ConfigError(GatewayError):
    """Configuration that cannot be loaded or does not validate."""

    default_code = "CONFIG_INVALID"


class AuthError(GatewayError):
    """A peer that is not who it must be (TLS identity, pins, revocation, sender)."""

    default_code = "AUTH_FAILED"


class EnvelopeError(GatewayError):
    """An envelope or receipt that is unsafe, too large or not schema-valid."""

    default_code = "SCHEMA_INVALID"


class ProtocolError(GatewayError):
    """HTTP the partner API does not take: framing, codings, media type, timeouts, caps."""

    default_code = "HTTP_MALFORMED"


class SignatureError(GatewayError):
    """An XML signature that is missing, invalid or outside the gateway's profile."""

    default_code = "SIG_INVALID"


class PolicyViolation(GatewayError):
    """The governing agreement does not allow this message."""

    default_code = "POLICY_DENIED"


class AdapterError(GatewayError):
    """A payload that cannot be decoded, encoded or validated in its format."""

    default_code = "TRANSLATE_FAILED"


class DecodeError(AdapterError):
    """Input in a format that could not be read; ``location`` says where."""

    default_code = "TRANSLATE_DECODE"


class EncodeError(AdapterError):
    """A document that could not be written in the target format."""

    default_code = "TRANSLATE_ENCODE"


class RelayError(GatewayError):
    """The broker is unavailable or did not confirm a publish."""

    default_code = "RELAY_UNAVAILABLE"


class DeliveryError(GatewayError):
    """The partner gateway could not be reached or answered badly."""

    default_code = "DELIVERY_FAILED"

    def __init__(
        self,
        reason: str,
        *,
        code: str | None = None,
        retryable: bool = True,
        retry_after: float | None = None,
        **context: Any,
    ) -> None:
        super().__init__(reason, code=code, **context)
        self.retryable = retryable
        #: how long the partner asked us to wait (its Retry-After), if it said
        self.retry_after = retry_after


class CrlError(GatewayError):
    """A partner's CRL could not be fetched, or the fetched one is unusable (the old stays)."""

    default_code = "CRL_FETCH_FAILED"


class AuditError(GatewayError):
    """The exchange log cannot be written, read or verified."""

    default_code = "AUDIT_FAILED"


#: HTTP status a partner is answered with, by code prefix (longest prefix wins).
HTTP_STATUS: dict[str, int] = {
    "AUTH_": 403,
    "SIZE_LIMIT": 413,
    "XML_UNSAFE": 400,
    "SCHEMA_INVALID": 400,
    "ENVELOPE_": 400,
    "HTTP_": 400,
    "HTTP_HEADER_TIMEOUT": 408,
    "HTTP_BODY_TIMEOUT": 408,
    "HTTP_CONTENT_": 415,
    "HTTP_TRANSFER_ENCODING": 501,
    "HTTP_REQUESTS_LIMIT": 503,
    "SIG_": 400,
    "POLICY_RATE": 429,
    "POLICY_": 403,
    "TRANSLATE_": 422,
    "RELAY_": 503,
    "AUDIT_": 503,
}


def http_status(code: str) -> int:
    """Return the HTTP status for a refusal code (500 for an unknown one)."""
    best = ""
    for prefix in HTTP_STATUS:
        if code.startswith(prefix) and len(prefix) > len(best):
            best = prefix
    return HTTP_STATUS[best] if best else 500


#: claim states: 'claimed' (publishing now), 'published' (confirmed), 'uncertain' (a publish
#: whose confirm never came: the broker may hold it, so a re-publish is marked as a possible
#: duplicate)


class StoreError(GatewayError):
    """The state store could not be read or written."""

    default_code = "STORE_FAILED"

"""The gateway's exception tree and its one vocabulary of codes.

Every refusal the gateway makes is one of these, with a stable ``code`` that
partners, operators and auditors can rely on, and context (partner, message id)
as keyword arguments::

    GatewayError             GATEWAY_*
    ├── ConfigError          CONFIG_*     bad or missing configuration (CLI exit 2)
    ├── AuthError            AUTH_*       TLS identity, pins, revocation, sender mismatch
    ├── EnvelopeError        XML_UNSAFE, SCHEMA_INVALID, SIZE_LIMIT, ENVELOPE_*
    ├── ProtocolError        HTTP_*, CONN_*  a request or connection outside the partner API's HTTP
    ├── SignatureError       SIG_*        missing, invalid, algorithm, profile, wrapping …
    ├── PolicyViolation      POLICY_*     the agreement does not allow this message
    ├── AdapterError         TRANSLATE_*  decode / encode / schema of a payload format
    │   ├── DecodeError
    │   └── EncodeError
    ├── RelayError           RELAY_*      broker unavailable, publish unconfirmed, bad AMQP message
    ├── DeliveryError        DELIVERY_*   partner unreachable or answered badly
    ├── CrlError             CRL_FETCH_*  a partner's CRL could not be fetched or is unusable
    ├── AuditError           AUDIT_*      the exchange log cannot be written or read
    ├── StoreError           STORE_*      the state store cannot be read or written
    └── DeadLetterError      DEAD_*       a dead letter that cannot be found or replayed

``ErrorCode`` names every code once. Besides the codes of the tree it names the
codes the gateway records without raising: outcomes (``POLICY_ALLOW``,
``DUPLICATE``), the TLS handshake refusals counted by the connection gate
(``TLS_*``) and operator records in the audit log (``RELOAD_OK``, ``CERT_ROTATED``
…). ``CODES`` gives each its class, the HTTP status a partner is answered with,
whether the sender may try again, the receipt status it yields and the CLI exit
status; ``docs/errors.md`` is rendered from it (``python -m gateway.errors``).

A bug stays a built-in error; only conditions the gateway anticipates become
``GatewayError``.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Literal


class ErrorCode(StrEnum):
    """Every stable code of the gateway, once; its value is its name (as sent on the wire)."""

    GATEWAY_ERROR = "GATEWAY_ERROR"
    GATEWAY_INTERNAL = "GATEWAY_INTERNAL"

    CONFIG_INVALID = "CONFIG_INVALID"
    CONFIG_MISSING = "CONFIG_MISSING"
    CONFIG_FILE = "CONFIG_FILE"
    CONFIG_TOML = "CONFIG_TOML"
    CONFIG_CA = "CONFIG_CA"
    CONFIG_CA_EXISTS = "CONFIG_CA_EXISTS"
    CONFIG_CA_INDEX = "CONFIG_CA_INDEX"
    CONFIG_CERT = "CONFIG_CERT"
    CONFIG_CERT_DAYS = "CONFIG_CERT_DAYS"
    CONFIG_CERT_KIND = "CONFIG_CERT_KIND"
    CONFIG_CERT_MISSING = "CONFIG_CERT_MISSING"
    CONFIG_CERT_NAME = "CONFIG_CERT_NAME"
    CONFIG_CERT_SAN = "CONFIG_CERT_SAN"
    CONFIG_CERT_SERIAL = "CONFIG_CERT_SERIAL"
    CONFIG_CRL = "CONFIG_CRL"
    CONFIG_CRL_ISSUER = "CONFIG_CRL_ISSUER"
    CONFIG_CRL_REASON = "CONFIG_CRL_REASON"
    CONFIG_CRL_STALE = "CONFIG_CRL_STALE"
    CONFIG_KEY = "CONFIG_KEY"
    CONFIG_KEY_PASSPHRASE = "CONFIG_KEY_PASSPHRASE"
    CONFIG_KEY_TYPE = "CONFIG_KEY_TYPE"
    CONFIG_LISTEN_FAILED = "CONFIG_LISTEN_FAILED"
    CONFIG_PORT_IN_USE = "CONFIG_PORT_IN_USE"
    CONFIG_NO_OPERATOR_CREDENTIAL = "CONFIG_NO_OPERATOR_CREDENTIAL"
    CONFIG_PARTNER = "CONFIG_PARTNER"
    CONFIG_PARTNER_CA = "CONFIG_PARTNER_CA"
    CONFIG_PARTNER_CHAIN = "CONFIG_PARTNER_CHAIN"
    CONFIG_PARTNER_ID = "CONFIG_PARTNER_ID"
    CONFIG_RESTART_REQUIRED = "CONFIG_RESTART_REQUIRED"
    CONFIG_ROTATION_MISMATCH = "CONFIG_ROTATION_MISMATCH"
    CONFIG_TOKEN_MODE = "CONFIG_TOKEN_MODE"
    CONFIG_TOKEN_WEAK = "CONFIG_TOKEN_WEAK"

    AUTH_FAILED = "AUTH_FAILED"
    AUTH_AMBIGUOUS = "AUTH_AMBIGUOUS"
    AUTH_BAD_CERTIFICATE = "AUTH_BAD_CERTIFICATE"
    AUTH_CA_EXPIRED = "AUTH_CA_EXPIRED"
    AUTH_CRL_STALE = "AUTH_CRL_STALE"
    AUTH_EXPIRED = "AUTH_EXPIRED"
    AUTH_NOT_YET_VALID = "AUTH_NOT_YET_VALID"
    AUTH_NO_CERTIFICATE = "AUTH_NO_CERTIFICATE"
    AUTH_OPERATOR_REQUIRED = "AUTH_OPERATOR_REQUIRED"
    AUTH_PARTNER_REMOVED = "AUTH_PARTNER_REMOVED"
    AUTH_PIN_MISMATCH = "AUTH_PIN_MISMATCH"
    AUTH_REVOKED = "AUTH_REVOKED"
    AUTH_SENDER_MISMATCH = "AUTH_SENDER_MISMATCH"
    AUTH_UNKNOWN_ISSUER = "AUTH_UNKNOWN_ISSUER"

    XML_UNSAFE = "XML_UNSAFE"
    SCHEMA_INVALID = "SCHEMA_INVALID"
    SIZE_LIMIT = "SIZE_LIMIT"
    ENVELOPE_BATCH = "ENVELOPE_BATCH"
    ENVELOPE_ID_REUSED = "ENVELOPE_ID_REUSED"
    ENVELOPE_WRONG_RECEIVER = "ENVELOPE_WRONG_RECEIVER"

    HTTP_MALFORMED = "HTTP_MALFORMED"
    HTTP_TRANSFER_ENCODING = "HTTP_TRANSFER_ENCODING"
    HTTP_CONTENT_ENCODING = "HTTP_CONTENT_ENCODING"
    HTTP_CONTENT_TYPE = "HTTP_CONTENT_TYPE"
    HTTP_HEADER_TIMEOUT = "HTTP_HEADER_TIMEOUT"
    HTTP_BODY_TIMEOUT = "HTTP_BODY_TIMEOUT"
    HTTP_IDLE_CLOSED = "HTTP_IDLE_CLOSED"
    HTTP_REQUESTS_LIMIT = "HTTP_REQUESTS_LIMIT"
    CONN_LIMIT = "CONN_LIMIT"
    CONN_PARTNER_LIMIT = "CONN_PARTNER_LIMIT"

    SIG_INVALID = "SIG_INVALID"
    SIG_ALGORITHM = "SIG_ALGORITHM"
    SIG_CERT_UNTRUSTED = "SIG_CERT_UNTRUSTED"
    SIG_MISSING = "SIG_MISSING"
    SIG_PROFILE = "SIG_PROFILE"
    SIG_STALE = "SIG_STALE"
    SIG_WRAPPING = "SIG_WRAPPING"

    POLICY_ALLOW = "POLICY_ALLOW"
    POLICY_DENIED = "POLICY_DENIED"
    POLICY_NO_AGREEMENT = "POLICY_NO_AGREEMENT"
    POLICY_NOT_PARTY = "POLICY_NOT_PARTY"
    POLICY_TERMINATED = "POLICY_TERMINATED"
    POLICY_SUSPENDED = "POLICY_SUSPENDED"
    POLICY_NOT_YET_VALID = "POLICY_NOT_YET_VALID"
    POLICY_EXPIRED = "POLICY_EXPIRED"
    POLICY_MESSAGE_TYPE = "POLICY_MESSAGE_TYPE"
    POLICY_FORMAT = "POLICY_FORMAT"
    POLICY_DATA_CATEGORY = "POLICY_DATA_CATEGORY"
    POLICY_PERSONAL_DATA = "POLICY_PERSONAL_DATA"
    POLICY_PURPOSE_MISSING = "POLICY_PURPOSE_MISSING"
    POLICY_SIZE = "POLICY_SIZE"
    POLICY_NO_REQUEST = "POLICY_NO_REQUEST"
    POLICY_RATE = "POLICY_RATE"
    POLICY_RATE_REFUSALS = "POLICY_RATE_REFUSALS"

    TRANSLATE_FAILED = "TRANSLATE_FAILED"
    TRANSLATE_ATTACHMENT = "TRANSLATE_ATTACHMENT"
    TRANSLATE_DECODE = "TRANSLATE_DECODE"
    TRANSLATE_ENCODE = "TRANSLATE_ENCODE"
    TRANSLATE_SCHEMA = "TRANSLATE_SCHEMA"
    TRANSLATE_TYPE = "TRANSLATE_TYPE"
    TRANSLATE_UNKNOWN_FORMAT = "TRANSLATE_UNKNOWN_FORMAT"
    TRANSLATE_UNSAFE = "TRANSLATE_UNSAFE"

    RELAY_UNAVAILABLE = "RELAY_UNAVAILABLE"
    RELAY_ACCESS_REFUSED = "RELAY_ACCESS_REFUSED"
    RELAY_NOT_ALLOWED = "RELAY_NOT_ALLOWED"
    RELAY_PRECONDITION_FAILED = "RELAY_PRECONDITION_FAILED"
    RELAY_NACKED = "RELAY_NACKED"
    RELAY_RETURNED = "RELAY_RETURNED"
    RELAY_UNCONFIRMED = "RELAY_UNCONFIRMED"
    RELAY_NO_FORMAT = "RELAY_NO_FORMAT"
    RELAY_NO_MESSAGE_ID = "RELAY_NO_MESSAGE_ID"
    RELAY_NO_MESSAGE_TYPE = "RELAY_NO_MESSAGE_TYPE"

    DELIVERY_FAILED = "DELIVERY_FAILED"
    DELIVERY_BAD_RECEIPT = "DELIVERY_BAD_RECEIPT"
    DELIVERY_DIGEST_MISMATCH = "DELIVERY_DIGEST_MISMATCH"
    DELIVERY_RECEIPT_UNVERIFIED = "DELIVERY_RECEIPT_UNVERIFIED"
    DELIVERY_RETRY_LATER = "DELIVERY_RETRY_LATER"
    DELIVERY_THROTTLED = "DELIVERY_THROTTLED"
    DELIVERY_TLS = "DELIVERY_TLS"
    DELIVERY_UNREACHABLE = "DELIVERY_UNREACHABLE"

    CRL_FETCH_FAILED = "CRL_FETCH_FAILED"
    CRL_FETCH_CORRUPT = "CRL_FETCH_CORRUPT"
    CRL_FETCH_HTTP = "CRL_FETCH_HTTP"
    CRL_FETCH_NO_SOURCE = "CRL_FETCH_NO_SOURCE"
    CRL_FETCH_OLDER = "CRL_FETCH_OLDER"
    CRL_FETCH_STALE = "CRL_FETCH_STALE"
    CRL_FETCH_TOO_LARGE = "CRL_FETCH_TOO_LARGE"
    CRL_FETCH_UNREACHABLE = "CRL_FETCH_UNREACHABLE"
    CRL_FETCH_WRONG_SIGNER = "CRL_FETCH_WRONG_SIGNER"

    AUDIT_FAILED = "AUDIT_FAILED"
    AUDIT_BAD_RANGE = "AUDIT_BAD_RANGE"
    AUDIT_BUNDLE = "AUDIT_BUNDLE"
    AUDIT_CLOSED = "AUDIT_CLOSED"
    AUDIT_EVIDENCE_DIGEST = "AUDIT_EVIDENCE_DIGEST"
    AUDIT_EXPORT = "AUDIT_EXPORT"
    AUDIT_NOT_FOUND = "AUDIT_NOT_FOUND"
    AUDIT_SCHEMA_NEWER = "AUDIT_SCHEMA_NEWER"
    AUDIT_STORE_FAILED = "AUDIT_STORE_FAILED"
    AUDIT_UNAVAILABLE = "AUDIT_UNAVAILABLE"
    AUDIT_WRITE_FAILED = "AUDIT_WRITE_FAILED"
    AUDIT_WRITER_STOPPED = "AUDIT_WRITER_STOPPED"

    STORE_FAILED = "STORE_FAILED"
    STORE_UNAVAILABLE = "STORE_UNAVAILABLE"

    DEAD_NOT_FOUND = "DEAD_NOT_FOUND"
    DEAD_NOT_REPLAYABLE = "DEAD_NOT_REPLAYABLE"
    DEAD_RESOLVED = "DEAD_RESOLVED"
    DEAD_ALREADY_REPLAYED = "DEAD_ALREADY_REPLAYED"

    ADMIN_UNREACHABLE = "ADMIN_UNREACHABLE"
    RELOAD_FAILED = "RELOAD_FAILED"

    PARTNER_UNKNOWN = "PARTNER_UNKNOWN"
    DUPLICATE = "DUPLICATE"
    BATCH_REFUSED = "BATCH_REFUSED"

    TLS_CERTIFICATE_UNTRUSTED = "TLS_CERTIFICATE_UNTRUSTED"
    TLS_CONNECTION_LOST = "TLS_CONNECTION_LOST"
    TLS_NOT_TLS = "TLS_NOT_TLS"
    TLS_NO_CERTIFICATE = "TLS_NO_CERTIFICATE"
    TLS_NO_SHARED_CIPHER = "TLS_NO_SHARED_CIPHER"
    TLS_OLD_PROTOCOL = "TLS_OLD_PROTOCOL"
    TLS_TIMEOUT = "TLS_TIMEOUT"

    RELOAD_OK = "RELOAD_OK"
    AGREEMENT_ADDED = "AGREEMENT_ADDED"
    AGREEMENT_CHANGED = "AGREEMENT_CHANGED"
    AGREEMENT_REMOVED = "AGREEMENT_REMOVED"
    CERT_ROTATED = "CERT_ROTATED"
    SIGNING_CERT_RECORDED = "SIGNING_CERT_RECORDED"
    CRL_FETCHED = "CRL_FETCHED"
    CRL_INSTALLED = "CRL_INSTALLED"
    DEAD_REPLAYED = "DEAD_REPLAYED"


def _as_code(code: ErrorCode | str) -> ErrorCode | str:
    """The member for a known code; an unknown one (a partner's, read from its receipt) as is."""
    try:
        return ErrorCode(code)
    except ValueError:
        return code


class GatewayError(Exception):
    """Root of every anticipated failure; carries a stable code and context.

    ``code`` is an ``ErrorCode``; a plain string is taken for codes read from
    elsewhere (another gateway's answer) and kept as is when it names no member.
    """

    default_code: ErrorCode = ErrorCode.GATEWAY_ERROR

    def __init__(self, reason: str, *, code: ErrorCode | str | None = None, **context: Any) -> None:
        super().__init__(reason)
        self.code: ErrorCode | str = _as_code(code) if code else self.default_code
        self.reason = reason
        self.context = context

    def __str__(self) -> str:
        return f"{self.code}: {self.reason}"


class ConfigError(GatewayError):
    """Configuration that cannot be loaded or does not validate."""

    default_code = ErrorCode.CONFIG_INVALID


class AuthError(GatewayError):
    """A peer that is not who it must be (TLS identity, pins, revocation, sender)."""

    default_code = ErrorCode.AUTH_FAILED


class EnvelopeError(GatewayError):
    """An envelope or receipt that is unsafe, too large or not schema-valid."""

    default_code = ErrorCode.SCHEMA_INVALID


class ProtocolError(GatewayError):
    """HTTP the partner API does not take: framing, codings, media type, timeouts, caps."""

    default_code = ErrorCode.HTTP_MALFORMED


class SignatureError(GatewayError):
    """An XML signature that is missing, invalid or outside the gateway's profile."""

    default_code = ErrorCode.SIG_INVALID


class PolicyViolation(GatewayError):
    """The governing agreement does not allow this message."""

    default_code = ErrorCode.POLICY_DENIED


class AdapterError(GatewayError):
    """A payload that cannot be decoded, encoded or validated in its format."""

    default_code = ErrorCode.TRANSLATE_FAILED


class DecodeError(AdapterError):
    """Input in a format that could not be read; ``location`` says where."""

    default_code = ErrorCode.TRANSLATE_DECODE


class EncodeError(AdapterError):
    """A document that could not be written in the target format."""

    default_code = ErrorCode.TRANSLATE_ENCODE


class RelayError(GatewayError):
    """The broker is unavailable, did not confirm a publish, or handed over a bad message."""

    default_code = ErrorCode.RELAY_UNAVAILABLE


class DeliveryError(GatewayError):
    """The partner gateway could not be reached or answered badly."""

    default_code = ErrorCode.DELIVERY_FAILED

    def __init__(
        self,
        reason: str,
        *,
        code: ErrorCode | str | None = None,
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

    default_code = ErrorCode.CRL_FETCH_FAILED


class AuditError(GatewayError):
    """The exchange log cannot be written, read or verified."""

    default_code = ErrorCode.AUDIT_FAILED


class StoreError(GatewayError):
    """The state store could not be read or written."""

    default_code = ErrorCode.STORE_FAILED


class DeadLetterError(GatewayError):
    """A dead letter that does not exist or may not be replayed (now)."""

    default_code = ErrorCode.DEAD_NOT_FOUND


#: the code families: a code starting with the prefix belongs to the class (longest prefix
#: wins); a code that names no refusal (an outcome or a record) has no class
FAMILIES: tuple[tuple[str, type[GatewayError]], ...] = (
    ("GATEWAY_", GatewayError),
    ("ADMIN_", GatewayError),
    ("RELOAD_FAILED", GatewayError),
    ("CONFIG_", ConfigError),
    ("AUTH_", AuthError),
    ("XML_UNSAFE", EnvelopeError),
    ("SCHEMA_INVALID", EnvelopeError),
    ("SIZE_LIMIT", EnvelopeError),
    ("ENVELOPE_", EnvelopeError),
    ("HTTP_", ProtocolError),
    ("CONN_", ProtocolError),
    ("SIG_", SignatureError),
    ("POLICY_", PolicyViolation),
    ("TRANSLATE_", AdapterError),
    ("RELAY_", RelayError),
    ("DELIVERY_", DeliveryError),
    ("CRL_FETCH_", CrlError),
    ("AUDIT_", AuditError),
    ("STORE_", StoreError),
    ("DEAD_", DeadLetterError),
)


def family(code: str) -> type[GatewayError] | None:
    """The class whose family ``code`` belongs to by its prefix, or None."""
    best = ""
    for prefix, _ in FAMILIES:
        if code.startswith(prefix) and len(prefix) > len(best):
            best = prefix
    return dict(FAMILIES)[best] if best else None


ReceiptStatus = Literal["accepted", "duplicate", "rejected"]


#: CLI exit statuses (gateway/cli/common.py): 1 refused or failed at run time, 2 usage or
#: configuration
EXIT_REFUSED = 1
EXIT_CONFIG = 2


@dataclass(frozen=True, slots=True)
class CodeInfo:
    """What one code means to a partner, a sender, an operator's shell and the doc."""

    #: the class raised with it; None for a code recorded, never raised
    cls: type[GatewayError] | None
    #: the HTTP status a partner is answered with; None when no HTTP answer carries it
    http: int | None
    #: whether the sender may send the same message again later and expect a change
    retryable: bool
    #: the status of the receipt entry it yields; None when it yields no receipt
    receipt: ReceiptStatus | None
    #: the exit status of a ``maagw`` command that fails with it; None for no failure
    exit: int | None
    #: one line for docs/errors.md
    text: str


def _refusal(cls: type[GatewayError], http: int, text: str, *, receipt: bool = True) -> CodeInfo:
    """A final refusal of one message: answered, receipted ``rejected``, not worth resending."""
    return CodeInfo(cls, http, False, "rejected" if receipt else None, EXIT_REFUSED, text)


def _later(
    cls: type[GatewayError], text: str, *, http: int | None = 503, exit: int = EXIT_REFUSED
) -> CodeInfo:
    """The gateway's own trouble, or back-pressure: no receipt, the sender tries again later.

    The partner API answers every such failure 503 with Retry-After (inbound
    ``process``), whatever its family.
    """
    return CodeInfo(cls, http, True, None, exit, text)


def _operator(cls: type[GatewayError], text: str, *, exit: int = EXIT_REFUSED) -> CodeInfo:
    """A failure of an operator's command or of the gateway's own set-up (503 if met inbound)."""
    return CodeInfo(cls, 503, False, None, exit, text)


def _config(text: str) -> CodeInfo:
    return _operator(ConfigError, text, exit=EXIT_CONFIG)


def _record(text: str, *, http: int | None = None) -> CodeInfo:
    """A code written to the audit log, a dead letter or a counter; never raised."""
    return CodeInfo(None, http, False, None, None, text)


C = ErrorCode
E, P, S = EnvelopeError, ProtocolError, SignatureError

#: every code with its class, HTTP status, retry, receipt status, exit status and text
CODES: dict[ErrorCode, CodeInfo] = {
    C.GATEWAY_ERROR: _operator(GatewayError, "an anticipated failure without a finer code"),
    C.GATEWAY_INTERNAL: _operator(
        GatewayError, "an outbound message failed unexpectedly (a bug) several times; dead-lettered"
    ),
    C.CONFIG_INVALID: _config("the configuration does not validate"),
    C.CONFIG_MISSING: _config("the configuration file does not exist"),
    C.CONFIG_FILE: _config("a file the configuration names cannot be read"),
    C.CONFIG_TOML: _config("a value cannot be written as TOML"),
    C.CONFIG_CA: _config("the CA directory is incomplete, or its key and certificate differ"),
    C.CONFIG_CA_EXISTS: _config("a CA exists already in the directory"),
    C.CONFIG_CA_INDEX: _config("the CA's issued-certificates index cannot be read"),
    C.CONFIG_CERT: _config("a file is not a PEM certificate"),
    C.CONFIG_CERT_DAYS: _config("a certificate lifetime of less than one day"),
    C.CONFIG_CERT_KIND: _config("an unknown certificate kind"),
    C.CONFIG_CERT_MISSING: _config("a certificate the rotation needs is missing"),
    C.CONFIG_CERT_NAME: _config("a name that cannot be a certificate name"),
    C.CONFIG_CERT_SAN: _config("an empty subject alternative name"),
    C.CONFIG_CERT_SERIAL: _config("not a certificate serial number, or none the CA issued"),
    C.CONFIG_CRL: _config("a file is not a CRL, or not one of the partner's CA"),
    C.CONFIG_CRL_ISSUER: _config("a partner's CRL is not signed by its CA"),
    C.CONFIG_CRL_REASON: _config("an unknown revocation reason"),
    C.CONFIG_CRL_STALE: _config("a partner's configured CRL is past its next update"),
    C.CONFIG_KEY: _config("a private key cannot be read"),
    C.CONFIG_KEY_PASSPHRASE: _config("a private key's passphrase is missing or wrong"),
    C.CONFIG_KEY_TYPE: _config("an unknown key type (ec or rsa)"),
    C.CONFIG_LISTEN_FAILED: _config("a listener cannot bind its address"),
    C.CONFIG_PORT_IN_USE: _config("a listener's port is in use"),
    C.CONFIG_NO_OPERATOR_CREDENTIAL: _config("no operator certificate and no admin token file"),
    C.CONFIG_PARTNER: _config("a partner file cannot be read"),
    C.CONFIG_PARTNER_CA: _config("a partner's CA file is not a CA certificate"),
    C.CONFIG_PARTNER_CHAIN: _config("a partner's certificate does not chain to its CA"),
    C.CONFIG_PARTNER_ID: _config("an unknown or unusable partner id"),
    C.CONFIG_RESTART_REQUIRED: _config("a changed setting takes effect only after a restart"),
    C.CONFIG_ROTATION_MISMATCH: _config("the rotation state does not match the certificates"),
    C.CONFIG_TOKEN_MODE: _config("the admin token file is readable by others or not ours"),
    C.CONFIG_TOKEN_WEAK: _config("the admin token is too short"),
    C.AUTH_FAILED: _refusal(AuthError, 403, "the peer is not who it must be", receipt=False),
    C.AUTH_AMBIGUOUS: _refusal(
        AuthError, 403, "the client certificate matches more than one partner", receipt=False
    ),
    C.AUTH_BAD_CERTIFICATE: _refusal(
        AuthError, 403, "the client certificate cannot be read", receipt=False
    ),
    C.AUTH_CA_EXPIRED: _refusal(AuthError, 403, "the partner's CA has expired", receipt=False),
    C.AUTH_CRL_STALE: _refusal(
        AuthError, 403, "the partner's CRL is past its next update", receipt=False
    ),
    C.AUTH_EXPIRED: _refusal(AuthError, 403, "the certificate has expired", receipt=False),
    C.AUTH_NOT_YET_VALID: _refusal(
        AuthError, 403, "the certificate is not yet valid", receipt=False
    ),
    C.AUTH_NO_CERTIFICATE: _refusal(AuthError, 403, "no client certificate", receipt=False),
    C.AUTH_OPERATOR_REQUIRED: _refusal(
        AuthError, 403, "the admin listener wants an operator credential", receipt=False
    ),
    C.AUTH_PARTNER_REMOVED: _refusal(
        AuthError, 403, "the partner was removed by a reload", receipt=False
    ),
    C.AUTH_PIN_MISMATCH: _refusal(
        AuthError, 403, "the certificate is not one the partner's pins name", receipt=False
    ),
    C.AUTH_REVOKED: _refusal(AuthError, 403, "the certificate is revoked", receipt=False),
    C.AUTH_SENDER_MISMATCH: _refusal(
        AuthError, 403, "the envelope's sender is not the authenticated partner"
    ),
    C.AUTH_UNKNOWN_ISSUER: _refusal(
        AuthError, 403, "the certificate is issued by no configured partner CA", receipt=False
    ),
    C.XML_UNSAFE: _refusal(E, 400, "a DOCTYPE, entity or nesting the safe parser refuses"),
    C.SCHEMA_INVALID: _refusal(E, 400, "not well-formed, or not valid against the schema"),
    C.SIZE_LIMIT: _refusal(E, 413, "the body is larger than the partner API takes"),
    C.ENVELOPE_BATCH: _refusal(E, 400, "a multipart batch that cannot be split"),
    C.ENVELOPE_ID_REUSED: _refusal(E, 400, "a message id already used for another envelope"),
    C.ENVELOPE_WRONG_RECEIVER: _refusal(E, 400, "the envelope is addressed to another gateway"),
    C.HTTP_MALFORMED: _refusal(P, 400, "HTTP the parser refuses", receipt=False),
    C.HTTP_TRANSFER_ENCODING: _refusal(P, 501, "a transfer coding other than chunked"),
    C.HTTP_CONTENT_ENCODING: _refusal(P, 415, "a content coding (gzip, br …)"),
    C.HTTP_CONTENT_TYPE: _refusal(P, 415, "a media type other than application/xml or multipart"),
    C.HTTP_HEADER_TIMEOUT: _later(P, "the request head took too long; connection closed", http=408),
    C.HTTP_BODY_TIMEOUT: _later(P, "the request body took too long; connection closed", http=408),
    C.HTTP_IDLE_CLOSED: _later(P, "an idle keep-alive connection closed", http=None),
    C.HTTP_REQUESTS_LIMIT: _later(P, "too many requests of the partner in flight"),
    C.CONN_LIMIT: _later(P, "too many connections; dropped before the handshake", http=None),
    C.CONN_PARTNER_LIMIT: _later(P, "too many connections of this partner; aborted", http=None),
    C.SIG_INVALID: _refusal(S, 400, "the signature does not verify"),
    C.SIG_ALGORITHM: _refusal(S, 400, "a signature or digest algorithm the profile refuses"),
    C.SIG_CERT_UNTRUSTED: _refusal(S, 400, "the signing certificate is not a partner's"),
    C.SIG_MISSING: _refusal(S, 400, "the document carries no XML Signature"),
    C.SIG_PROFILE: _refusal(S, 400, "a signature outside the interoperability profile"),
    C.SIG_STALE: _refusal(S, 400, "created outside the replay window"),
    C.SIG_WRAPPING: _refusal(S, 400, "duplicate IDs or a misplaced Signature (wrapping)"),
    C.POLICY_ALLOW: CodeInfo(None, 200, False, "accepted", None, "the agreement allows it"),
    C.POLICY_DENIED: _refusal(PolicyViolation, 403, "the agreement does not allow it"),
    C.POLICY_NO_AGREEMENT: _refusal(PolicyViolation, 403, "no agreement governs the exchange"),
    C.POLICY_NOT_PARTY: _refusal(PolicyViolation, 403, "sender and receiver are not both parties"),
    C.POLICY_TERMINATED: _refusal(PolicyViolation, 403, "the agreement is terminated"),
    C.POLICY_SUSPENDED: _refusal(PolicyViolation, 403, "the agreement is suspended"),
    C.POLICY_NOT_YET_VALID: _refusal(PolicyViolation, 403, "before the agreement's valid_from"),
    C.POLICY_EXPIRED: _refusal(PolicyViolation, 403, "after the agreement's valid_until"),
    C.POLICY_MESSAGE_TYPE: _refusal(
        PolicyViolation, 403, "no flow for this direction, or the type is not in it"
    ),
    C.POLICY_FORMAT: _refusal(PolicyViolation, 403, "a payload format the flow does not allow"),
    C.POLICY_DATA_CATEGORY: _refusal(
        PolicyViolation, 403, "a data category not allowed or not declared"
    ),
    C.POLICY_PERSONAL_DATA: _refusal(PolicyViolation, 403, "personal data where none is allowed"),
    C.POLICY_PURPOSE_MISSING: _refusal(
        PolicyViolation, 403, "purpose or legal basis missing where required"
    ),
    C.POLICY_SIZE: _refusal(PolicyViolation, 403, "the payload is larger than the flow allows"),
    C.POLICY_NO_REQUEST: _refusal(
        PolicyViolation, 403, "a reply or refusal that answers no known request"
    ),
    C.POLICY_RATE: _later(PolicyViolation, "over the flow's rate limit: back-pressure", http=429),
    C.POLICY_RATE_REFUSALS: _later(
        PolicyViolation, "the partner used up its allowance of refused messages", http=429
    ),
    C.TRANSLATE_FAILED: _refusal(AdapterError, 422, "the payload cannot be translated"),
    C.TRANSLATE_ATTACHMENT: _refusal(AdapterError, 422, "an attachment that cannot be carried"),
    C.TRANSLATE_DECODE: _refusal(AdapterError, 422, "the payload cannot be read in its format"),
    C.TRANSLATE_ENCODE: _refusal(
        AdapterError, 422, "the document cannot be written in the target format"
    ),
    C.TRANSLATE_SCHEMA: _refusal(AdapterError, 422, "the payload is not valid in its format"),
    C.TRANSLATE_TYPE: _refusal(AdapterError, 422, "a message type the format does not carry"),
    C.TRANSLATE_UNKNOWN_FORMAT: _refusal(AdapterError, 422, "no adapter of that format name"),
    C.TRANSLATE_UNSAFE: _refusal(AdapterError, 422, "input the format's safe reader refuses"),
    C.RELAY_UNAVAILABLE: _later(RelayError, "no broker answered at broker.url", exit=EXIT_CONFIG),
    C.RELAY_ACCESS_REFUSED: _later(
        RelayError, "the broker refused the login of broker.url", exit=EXIT_CONFIG
    ),
    C.RELAY_NOT_ALLOWED: _later(
        RelayError, "the broker refused the virtual host of broker.url", exit=EXIT_CONFIG
    ),
    C.RELAY_PRECONDITION_FAILED: _later(
        RelayError, "the broker holds a queue or exchange declared otherwise", exit=EXIT_CONFIG
    ),
    C.RELAY_NACKED: _later(RelayError, "the broker refused a publish"),
    C.RELAY_RETURNED: _later(RelayError, "a publish was unroutable"),
    C.RELAY_UNCONFIRMED: _later(RelayError, "no confirm came for a publish (possible duplicate)"),
    C.RELAY_NO_FORMAT: _operator(
        RelayError, "a back-office message without the x-maagw-format header; dead-lettered"
    ),
    C.RELAY_NO_MESSAGE_ID: _operator(
        RelayError, "a back-office message without message_id; dead-lettered"
    ),
    C.RELAY_NO_MESSAGE_TYPE: _operator(
        RelayError, "a back-office message without type; dead-lettered"
    ),
    C.DELIVERY_FAILED: _later(DeliveryError, "the partner could not be reached or answered badly"),
    C.DELIVERY_BAD_RECEIPT: _later(
        DeliveryError, "the partner's answer is not a valid signed receipt"
    ),
    C.DELIVERY_DIGEST_MISMATCH: _later(
        DeliveryError, "the receipt's digest is not the digest of what was sent"
    ),
    C.DELIVERY_RECEIPT_UNVERIFIED: _later(DeliveryError, "a refusing receipt that does not verify"),
    C.DELIVERY_RETRY_LATER: _later(
        DeliveryError, "the partner answered 503, or left the message out of its list"
    ),
    C.DELIVERY_THROTTLED: _later(DeliveryError, "the partner answered 429"),
    C.DELIVERY_TLS: _later(DeliveryError, "TLS with the partner failed"),
    C.DELIVERY_UNREACHABLE: _later(DeliveryError, "the partner did not answer"),
    C.CRL_FETCH_FAILED: _later(CrlError, "a partner's CRL could not be fetched"),
    C.CRL_FETCH_CORRUPT: _later(CrlError, "the answer is not a CRL"),
    C.CRL_FETCH_HTTP: _later(CrlError, "the CRL source answered an HTTP error"),
    C.CRL_FETCH_NO_SOURCE: _operator(CrlError, "the partner has no CRL source to fetch from"),
    C.CRL_FETCH_OLDER: _later(CrlError, "the fetched CRL is older than the one in force"),
    C.CRL_FETCH_STALE: _later(CrlError, "the fetched CRL is past its next update"),
    C.CRL_FETCH_TOO_LARGE: _later(CrlError, "the CRL source sent too many bytes"),
    C.CRL_FETCH_UNREACHABLE: _later(CrlError, "the CRL source did not answer"),
    C.CRL_FETCH_WRONG_SIGNER: _later(CrlError, "the fetched CRL is not signed by the partner CA"),
    C.AUDIT_FAILED: _later(AuditError, "the exchange log failed"),
    C.AUDIT_BAD_RANGE: _operator(AuditError, "neither a sequence number nor an ISO time"),
    C.AUDIT_BUNDLE: _operator(AuditError, "not an audit bundle"),
    C.AUDIT_CLOSED: _later(AuditError, "the audit log is closed"),
    C.AUDIT_EVIDENCE_DIGEST: _operator(AuditError, "evidence whose digest is not its name"),
    C.AUDIT_EXPORT: _operator(AuditError, "the export directory is not empty"),
    C.AUDIT_NOT_FOUND: _operator(AuditError, "the audit database does not exist"),
    C.AUDIT_SCHEMA_NEWER: _operator(AuditError, "the audit store was written by a newer version"),
    C.AUDIT_STORE_FAILED: _later(AuditError, "the audit store failed a read or write"),
    C.AUDIT_UNAVAILABLE: _later(AuditError, "the audit store cannot be opened or reached"),
    C.AUDIT_WRITE_FAILED: _later(AuditError, "an audit write failed"),
    C.AUDIT_WRITER_STOPPED: _later(AuditError, "the audit writer stopped"),
    C.STORE_FAILED: _later(StoreError, "the state store failed a read or write"),
    C.STORE_UNAVAILABLE: _later(StoreError, "the state store is unhealthy; waiting for it"),
    C.DEAD_NOT_FOUND: _operator(DeadLetterError, "no dead letter of that id"),
    C.DEAD_NOT_REPLAYABLE: _operator(DeadLetterError, "the dead letter is not an outbound message"),
    C.DEAD_RESOLVED: _operator(
        DeadLetterError, "the message was delivered since (--again sends it)"
    ),
    C.DEAD_ALREADY_REPLAYED: _operator(
        DeadLetterError, "the dead letter was replayed already (--again replays it)"
    ),
    C.ADMIN_UNREACHABLE: _operator(GatewayError, "the admin listener does not answer"),
    C.RELOAD_FAILED: _operator(GatewayError, "the gateway refused the reload without a code"),
    C.PARTNER_UNKNOWN: _record(
        "an outbound message for a partner no longer configured; dead-lettered"
    ),
    C.DUPLICATE: CodeInfo(
        None, 200, False, "duplicate", None, "a message id received and published before"
    ),
    C.BATCH_REFUSED: _record("the refused envelopes of one batch, audited together"),
    C.TLS_CERTIFICATE_UNTRUSTED: _record("handshake: the client certificate does not verify"),
    C.TLS_CONNECTION_LOST: _record("handshake: the connection was lost"),
    C.TLS_NOT_TLS: _record("handshake: the client does not speak TLS"),
    C.TLS_NO_CERTIFICATE: _record("handshake: no client certificate"),
    C.TLS_NO_SHARED_CIPHER: _record("handshake: no cipher in common"),
    C.TLS_OLD_PROTOCOL: _record("handshake: a TLS version below 1.2"),
    C.TLS_TIMEOUT: _record("handshake: timed out"),
    C.RELOAD_OK: _record("operator: the configuration was reloaded"),
    C.AGREEMENT_ADDED: _record("operator: a reload added an agreement"),
    C.AGREEMENT_CHANGED: _record("operator: a reload changed an agreement"),
    C.AGREEMENT_REMOVED: _record("operator: a reload removed an agreement"),
    C.CERT_ROTATED: _record("operator: a successor signing certificate was issued"),
    C.SIGNING_CERT_RECORDED: _record("a signing certificate was recorded as evidence"),
    C.CRL_FETCHED: _record("operator: a partner's CRL was fetched"),
    C.CRL_INSTALLED: _record("a newer CRL of a partner is in force"),
    C.DEAD_REPLAYED: _record("operator: a dead letter was replayed"),
}

del C, E, P, S


def info(code: ErrorCode | str) -> CodeInfo | None:
    """The table row of ``code``, or None when it names no member."""
    try:
        return CODES[ErrorCode(code)]
    except ValueError:
        return None


def http_status(code: ErrorCode | str) -> int:
    """The HTTP status a partner is answered with for ``code``.

    An unknown code is 500, the only way to 500. A code no HTTP answer carries (a
    handshake refusal, a record) is a bug of the caller: ``ValueError``.
    """
    row = info(code)
    if row is None:
        return 500
    if row.http is None:
        raise ValueError(f"{code} is never an HTTP answer")
    return row.http


def exit_status(exc: GatewayError) -> int:
    """The exit status of a ``maagw`` command failing with ``exc``: by its code, else its class."""
    row = info(exc.code)
    if row is not None and row.exit is not None:
        return row.exit
    return EXIT_CONFIG if isinstance(exc, ConfigError) else EXIT_REFUSED


def _cell(value: object) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def render_markdown() -> str:
    """docs/errors.md: every code with its class, HTTP status, retry, receipt, exit status."""
    lines = [
        "# Error and outcome codes",
        "",
        "<!-- generated from gateway/errors.py by `make docs`; do not edit -->",
        "",
        "Every code the gateway answers, raises or records, once. The code is the same",
        "string on the wire (receipts, HTTP bodies, AMQP headers, events) and in the audit",
        "log.",
        "",
        "Codes are grouped by the exception raised with them; the last group is recorded,",
        "never raised. A TLS handshake failing for an OpenSSL reason the connection gate",
        "does not name is counted as `TLS_<REASON>` (e.g. `TLS_BAD_KEY_SHARE`).",
        "",
        "- **HTTP**: the status a partner is answered with; every failure of the gateway's",
        "  own (broker, store, audit, configuration) is answered 503 with Retry-After. An",
        "  unknown code would be 500. — : no HTTP answer carries it.",
        "- **retry**: whether the sender may send the same message again later.",
        "- **receipt**: the status of the signed receipt entry it yields (— : no receipt).",
        "- **exit**: the exit status of a `maagw` command failing with it (1 refused or",
        "  failed, 2 usage or configuration).",
        "",
    ]
    groups: dict[str, list[str]] = {}
    for code, row in CODES.items():
        title = f"`{row.cls.__name__}`" if row.cls is not None else "Recorded, never raised"
        cells = (row.http, row.retryable, row.receipt, row.exit, row.text)
        groups.setdefault(title, []).append(
            f"| `{code}` | " + " | ".join(_cell(c) for c in cells) + " |"
        )
    # the classes in the order of the tree, the records last
    for title, rows in sorted(groups.items(), key=lambda g: g[0].startswith("Recorded")):
        lines += [f"## {title}", "", "| code | HTTP | retry | receipt | exit | meaning |"]
        lines += ["|---|---|---|---|---|---|", *rows, ""]
    return "\n".join(lines)


if __name__ == "__main__":
    print(render_markdown(), end="")

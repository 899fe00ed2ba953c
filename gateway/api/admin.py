"""The admin listener: health, readiness and operator actions, for operators only.

Separate from the partner listener and on loopback by default. ``/healthz`` is
open (liveness probes); everything else needs an operator:

- an operator client certificate (``maagw certs issue --kind operator``: OU
  ``operator``) issued directly by this gateway's own CA (``tls.ca``), when the
  listener serves TLS — it then asks for, but does not require, a client
  certificate; or
- ``Authorization: Bearer <token>`` matching ``admin.token_file``, a file that
  must be readable by the service user only (mode 0600 or stricter). The file is
  read again whenever it changes, so a rotated token takes effect at the next
  request (also the ``maagw reload`` that presents it); a file that turns unusable
  (others may read it, too short) refuses every token until it is fixed.

With ``admin.readyz_public``, ``/readyz`` answers anyone who offers no credential
with its status code and ``{"ready": …}`` only (for load balancers); the checks
behind it stay for operators.

The operator's identity (the certificate's common name, or ``token:<file
name>``) is the ``actor`` of the audit entry of every action.
"""

from __future__ import annotations

import hmac
import os
import ssl
import stat
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import structlog
from aiohttp import web
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.x509.oid import NameOID

from gateway.config.models import Settings
from gateway.errors import ConfigError, ErrorCode, GatewayError
from gateway.pem import cert_kind, load_certs

log = structlog.get_logger(__name__)


OPERATOR_KIND = "operator"


class ReloadOutcome(Protocol):
    """What a reload reports (``gateway.service.reload.ReloadResult`` is one)."""

    @property
    def ok(self) -> bool: ...

    def as_json(self) -> dict[str, Any]: ...


class AdminTarget(Protocol):
    """What the admin application needs from the running gateway."""

    @property
    def admin_auth(self) -> AdminAuth: ...

    @property
    def gateway_id(self) -> str: ...

    async def reload(self, actor: str) -> ReloadOutcome: ...

    async def readiness(self) -> dict[str, bool]: ...

    async def readiness_details(self) -> dict[str, Any]: ...

    def admin_refused(self, reason: str, peer: str) -> None: ...


class TokenFile:
    """The admin token file, read again whenever it changes on disk.

    A change is seen by its ``stat`` (inode, size, times, mode, owner), checked at
    each use: an admin request costs one ``stat`` more, a rotation needs no reload.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp = _stamp(path)
        self._token: bytes | None = read_token(path)

    def current(self) -> bytes | None:
        """The token now in the file; None while the file is unusable."""
        stamp = _stamp(self.path)
        if stamp != self._stamp:
            self._stamp = stamp
            try:
                self._token = read_token(self.path)
            except ConfigError as exc:
                self._token = None
                log.error("admin_token_unusable", code=exc.code, reason=exc.reason)
            else:
                log.info("admin_token_changed", file=self.path.name)
        return self._token


def _stamp(path: Path) -> tuple[int, ...] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_mode)


@dataclass(frozen=True, slots=True)
class AdminAuth:
    """Who may use the admin listener: a bearer token and/or this gateway's own CA."""

    token_file: TokenFile | None
    token_name: str | None
    cas: tuple[x509.Certificate, ...]
    #: ``/readyz`` tells anyone without credentials whether the gateway is ready
    readyz_public: bool = False

    @property
    def token(self) -> bytes | None:
        """The current bearer token (None: no token file, or it is unusable now)."""
        return self.token_file.current() if self.token_file is not None else None

    @classmethod
    def load(cls, settings: Settings) -> AdminAuth:
        """Read the token file (refusing a loose file mode) and the own CA."""
        token_file = None
        name = None
        path = settings.admin.token_file
        if path is not None:
            token_file = TokenFile(path)
            name = path.name
        try:
            cas = tuple(load_certs(settings.tls.ca))
        except GatewayError as exc:
            raise ConfigError(f"tls.ca: {exc.reason}", code=exc.code) from None
        return cls(token_file, name, cas, settings.admin.readyz_public)

    def actor(self, request: web.Request, *, now: datetime | None = None) -> str | None:
        """The authenticated operator behind a request, or None."""
        header = request.headers.get("Authorization", "")
        token = self.token
        if token is not None and header.startswith("Bearer "):
            offered = header.removeprefix("Bearer ").strip().encode()
            if hmac.compare_digest(offered, token):
                return f"token:{self.token_name}"
            return None
        transport = request.transport
        ssl_object = transport.get_extra_info("ssl_object") if transport else None
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        if not der:
            return None
        return self.operator(x509.load_der_x509_certificate(der), now=now)

    def operator(self, cert: x509.Certificate, *, now: datetime | None = None) -> str | None:
        """The common name of a valid operator certificate from the own CA, or None."""
        now = now or datetime.now(UTC)
        if cert_kind(cert) != OPERATOR_KIND:
            return None
        if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
            return None
        for ca in self.cas:
            if cert.issuer != ca.subject:
                continue
            try:
                cert.verify_directly_issued_by(ca)
            except (ValueError, TypeError, InvalidSignature):
                continue
            names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
            return str(names[0].value) if names else cert.subject.rfc4514_string()
        return None


def read_token(path: Path) -> bytes:
    """The admin token; ``ConfigError`` unless only its owner (this user) may read it."""
    try:
        info = path.stat()
        data = path.read_bytes().strip()
    except OSError as exc:
        raise ConfigError(f"admin.token_file: {path}: {exc.strerror}") from None
    if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(
            f"admin.token_file: {path}: mode {stat.S_IMODE(info.st_mode):04o} lets others read "
            "it; chmod 600",
            code=ErrorCode.CONFIG_TOKEN_MODE,
        )
    if info.st_uid != os.geteuid():
        raise ConfigError(
            f"admin.token_file: {path}: not owned by the service user",
            code=ErrorCode.CONFIG_TOKEN_MODE,
        )
    if len(data) < 16:
        raise ConfigError(
            f"admin.token_file: {path}: the token must be at least 16 characters",
            code=ErrorCode.CONFIG_TOKEN_WEAK,
        )
    return data


def server_context(settings: Settings) -> ssl.SSLContext:
    """TLS for the admin listener: own server certificate, operator certificates optional."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.verify_mode = ssl.CERT_OPTIONAL
    ctx.num_tickets = 0
    password = os.environ.get(settings.tls.passphrase_env) if settings.tls.passphrase_env else None
    try:
        ctx.load_cert_chain(settings.tls.server_cert, settings.tls.server_key, password=password)
        ctx.load_verify_locations(cafile=str(settings.tls.ca))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"admin listener TLS: {exc}") from None
    return ctx


TARGET = web.AppKey("admin_target", AdminTarget)


ACTOR = web.RequestKey("admin_actor", str)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


#: paths anyone on the admin listener may read
OPEN_PATHS = frozenset({"/healthz"})


#: answered without credentials, as a summary, when ``admin.readyz_public`` is set
READINESS_PATH = "/readyz"


@web.middleware
async def _authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.path in OPEN_PATHS:
        return await handler(request)
    target = request.app[TARGET]
    auth = target.admin_auth
    actor = auth.actor(request)
    if actor is None:
        if (
            request.path == READINESS_PATH
            and auth.readyz_public
            and "Authorization" not in request.headers
        ):
            return await handler(request)  # no ACTOR: the summary only
        target.admin_refused(f"{request.method} {request.path}: not authenticated", _peer(request))
        raise web.HTTPUnauthorized(
            headers={"WWW-Authenticate": 'Bearer realm="maagw-admin"'},
            text="operator authentication required\n",
        )
    request[ACTOR] = actor
    return await handler(request)


async def _healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok", "gateway": request.app[TARGET].gateway_id})


async def _readyz(request: web.Request) -> web.Response:
    checks = await request.app[TARGET].readiness()
    ready = all(checks.values())
    body: dict[str, Any] = {"ready": ready}
    if request.get(ACTOR) is not None:  # the checks are for operators only
        body["checks"] = checks
        details = {k: v for k, v in (await request.app[TARGET].readiness_details()).items() if v}
        if details:  # e.g. partners' CRLs near their nextUpdate; absent when nothing to say
            body["details"] = details
    return web.json_response(body, status=200 if ready else 503)


async def _reload(request: web.Request) -> web.Response:
    result = await request.app[TARGET].reload(request[ACTOR])
    return web.json_response(result.as_json(), status=200 if result.ok else 422)


def build_app(target: AdminTarget) -> web.Application:
    """The admin aiohttp application: /healthz, /readyz, POST /v1/reload."""
    app = web.Application(middlewares=[_authenticate], client_max_size=64 * 1024)
    app[TARGET] = target
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    app.router.add_post("/v1/reload", _reload)
    return app


def _peer(request: web.Request) -> str:
    peer: Any = request.transport.get_extra_info("peername") if request.transport else None
    return f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)

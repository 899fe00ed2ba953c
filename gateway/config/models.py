"""The frozen settings models: ``gateway.toml`` sections, partners, the resolved ``Settings``."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from adapters import DEFAULT_EXCHANGE_FORMAT
from gateway.config.agreement import Agreement


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class GatewaySection(_Model):
    id: str = Field(pattern=r"^[A-Z]{2}[A-Z0-9-]{0,14}$")
    name: str = ""
    state_dir: Path = Path("state")
    #: build every adapter's schemas at start (an NCTS XSD 1.1 takes over a second)
    preload_schemas: bool = True
    #: this gateway instance's name among several of one administration (claims carry it);
    #: default: the host name and the partner port
    instance_id: str = Field(default="", max_length=128)


class ListenSection(_Model):
    host: str = "127.0.0.1"
    port: int = Field(default=8443, ge=0, le=65535)
    max_body_bytes: int = Field(default=10 * 1024 * 1024, gt=0)
    max_depth: int = Field(default=64, gt=0)
    # bounds on authenticated connections (docs/partner-api.md, "Connections"); the
    # caps hold per process (each `serve --workers` process has its own)
    #: seconds from a request's first byte to the end of its head (nginx: client_header_timeout)
    header_timeout: float = Field(default=10.0, gt=0, le=3600)
    #: seconds for a whole request body, from the end of its head
    body_timeout: float = Field(default=60.0, gt=0, le=3600)
    #: seconds a connection may wait for its next request (longer than the partners'
    #: client keep-alive, 60 s in gateway/partner_client/client.py, so that the client
    #: closes first)
    idle_timeout: float = Field(default=75.0, gt=0, le=3600)
    #: open partner connections, TLS handshakes included (bounds the memory they hold)
    max_connections: int = Field(default=1024, gt=0)
    max_connections_per_partner: int = Field(default=64, gt=0)
    #: requests of one partner being handled at once; more get 503 with Retry-After
    max_requests_per_partner: int = Field(default=32, gt=0)


class AdminSection(_Model):
    host: str = "127.0.0.1"
    port: int = Field(default=8081, ge=0, le=65535)
    token_file: Path | None = None
    #: serve the admin listener with TLS, accepting operator certificates of the own CA
    tls: bool = False
    #: answer ``/readyz`` without credentials (status and ``{"ready": …}``; checks for operators)
    readyz_public: bool = False


class TlsSection(_Model):
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    passphrase_env: str | None = None


class SigningSection(_Model):
    cert: Path
    key: Path
    passphrase_env: str | None = None


class BrokerSection(_Model):
    #: one node's URL, or the nodes of a cluster in the order to try them (docs/deployment.md)
    url: str | tuple[str, ...] = "amqp://guest:guest@127.0.0.1:5672/"
    prefix: str = ""
    prefetch: int = Field(default=64, gt=0, le=10_000)
    confirm_timeout: float = Field(default=10.0, gt=0)
    #: after a failed connection attempt the next waits this long, doubling up to the maximum
    reconnect_min_seconds: float = Field(default=1.0, gt=0, le=3600)
    reconnect_max_seconds: float = Field(default=30.0, gt=0, le=3600)

    @field_validator("url")
    @classmethod
    def _node_urls(cls, value: str | tuple[str, ...]) -> str | tuple[str, ...]:
        urls = (value,) if isinstance(value, str) else value
        if not urls:
            raise ValueError("the list of broker nodes is empty")
        for url in urls:
            if not url.startswith(("amqp://", "amqps://")):
                # the URL may hold a password: name the node by its position only
                raise ValueError(f"node {urls.index(url) + 1}: not an amqp:// or amqps:// URL")
        return value

    @model_validator(mode="after")
    def _backoff_range(self) -> BrokerSection:
        if self.reconnect_max_seconds < self.reconnect_min_seconds:
            raise ValueError("reconnect_max_seconds is below reconnect_min_seconds")
        return self

    @property
    def urls(self) -> tuple[str, ...]:
        """The nodes' URLs in the order the gateway tries them."""
        return (self.url,) if isinstance(self.url, str) else self.url


class AuditSection(_Model):
    url: str = "audit.db"


class StateSection(_Model):
    """Where the state store lives: an SQLite file (under ``state_dir``) or PostgreSQL."""

    url: str = "state.db"


class CrlSection(_Model):
    """How the gateway keeps partners' CRLs current (docs/trust.md)."""

    #: warn (log, readiness detail, ``certs list``) this long before a CRL's nextUpdate
    warning_days: float = Field(default=2.0, ge=0)
    #: fetch each partner's CRL from its distribution point this often
    fetch_interval_seconds: float = Field(default=3600.0, gt=0)
    #: one fetch may take at most this long
    fetch_timeout_seconds: float = Field(default=10.0, gt=0)
    #: a larger answer is refused
    max_bytes: int = Field(default=10 * 1024 * 1024, gt=0)
    #: how often the CRL watch looks at nextUpdate, the CRL files and due fetches
    check_seconds: float = Field(default=300.0, gt=0)


class BackOfficeSection(_Model):
    #: the adapter the back office wants inbound messages in
    inbound_format: str = DEFAULT_EXCHANGE_FORMAT


class DeliverySection(_Model):
    timeout: float = Field(default=15.0, gt=0)
    concurrency: int = Field(default=8, gt=0, le=256)
    #: a message is retried until it is this old, when its agreement does not say
    max_age_seconds: float = Field(default=86400.0, gt=0)
    #: obsolete (retries end at the age limit, never after a count); accepted and ignored
    max_attempts: int | None = Field(default=None, gt=0)
    backoff_initial: float = Field(default=1.0, gt=0)
    #: the longest pause between two attempts (each pause is jittered below it)
    backoff_max: float = Field(default=300.0, gt=0)


class GatewayFile(_Model):
    gateway: GatewaySection
    partner_api: ListenSection = ListenSection()
    admin: AdminSection = AdminSection()
    tls: TlsSection
    signing: SigningSection
    broker: BrokerSection = BrokerSection()
    audit: AuditSection = AuditSection()
    state: StateSection = StateSection()
    back_office: BackOfficeSection = BackOfficeSection()
    delivery: DeliverySection = DeliverySection()
    crl: CrlSection = CrlSection()
    partners_dir: Path = Path("partners")
    agreements_dir: Path = Path("agreements")


class Partner(_Model):
    """A partner administration as its own file ``partners/<ID>.toml`` describes it."""

    id: str = Field(pattern=r"^[A-Z]{2}[A-Z0-9-]{0,14}$")
    name: str = ""
    url: str
    server_name: str = ""
    ca: Path
    tls_pins: tuple[str, ...] = ()
    signing_certs: tuple[Path, ...] = ()
    crl: Path | None = None
    crl_stale: Literal["refuse", "warn"] = "refuse"
    #: where the gateway fetches the CRL (http or https); default: the CRL distribution
    #: point in the partner's signing or CA certificates
    crl_url: str = ""
    #: envelopes per request on this link (1 = one by one, for partners without batching)
    batch_max: int = Field(default=1, ge=1, le=1000)
    #: how long the sender gathers a batch
    batch_wait_ms: float = Field(default=5.0, ge=0, le=1000)

    @field_validator("tls_pins")
    @classmethod
    def _pins_are_sha256(cls, pins: tuple[str, ...]) -> tuple[str, ...]:
        for pin in pins:
            hexpart = pin.removeprefix("sha256:")
            if not pin.startswith("sha256:") or len(hexpart) != 64:
                raise ValueError(f"pin {pin!r} is not 'sha256:' followed by 64 hex digits")
            int(hexpart, 16)
        return tuple(p.lower() for p in pins)

    @field_validator("crl", mode="before")
    @classmethod
    def _empty_is_none(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("crl_url")
    @classmethod
    def _crl_url_is_http(cls, url: str) -> str:
        if url and not url.lower().startswith(("http://", "https://")):
            raise ValueError(f"{url!r} is not an http:// or https:// URL")
        return url

    @model_validator(mode="after")
    def _crl_url_needs_a_file(self) -> Partner:
        if self.crl_url and self.crl is None:
            raise ValueError("crl_url needs crl: the file the gateway keeps the fetched CRL in")
        return self


class Settings(_Model):
    """Everything the gateway reads from configuration, validated and resolved."""

    path: Path
    gateway_id: str
    name: str
    state_dir: Path
    preload_schemas: bool
    instance_id: str
    partner_api: ListenSection
    admin: AdminSection
    tls: TlsSection
    signing: SigningSection
    broker: BrokerSection
    audit_url: str
    #: ``postgresql://…`` or the path of the SQLite file (default ``state_dir/state.db``)
    state_url: str = ""
    back_office: BackOfficeSection
    delivery: DeliverySection
    crl: CrlSection = CrlSection()
    partners: Mapping[str, Partner]
    agreements: Mapping[str, Agreement]

    @property
    def state_location(self) -> str:
        """What ``open_state`` takes: the PostgreSQL URL or the SQLite file's path."""
        return self.state_url or str(self.state_dir / "state.db")

    @property
    def signing_cert_path(self) -> Path:
        return self.signing.cert

    def name_of(self, base: str) -> str:
        """A broker object name with this administration's prefix (``xa.maagw.outbound``)."""
        return f"{self.broker.prefix}{base}"

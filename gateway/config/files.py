"""Load and validate ``gateway.toml``, ``partners/*.toml`` and ``agreements/*.toml``.

Configuration is read once at start (and again on reload) into frozen pydantic
models. A bad file raises ``ConfigError`` whose message names the file, the key
and the problem in one line. Relative paths in a file are relative to that
file's directory. Environment variables ``MAAGW_*`` override the main file (see
``ENV_OVERRIDES``).
"""

from __future__ import annotations

import os
import socket
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import structlog
from pydantic import BaseModel, ValidationError

from gateway.config.agreement import Agreement, load_agreements
from gateway.config.models import GatewayFile, Partner, Settings
from gateway.errors import ConfigError, ErrorCode

log = structlog.get_logger(__name__)


DEFAULT_CONFIG = Path("config/gateway.toml")


M = TypeVar("M", bound=BaseModel)


#: environment variable -> (section, key) of gateway.toml it overrides
ENV_OVERRIDES: dict[str, tuple[str, str]] = {
    "MAAGW_BROKER_URL": ("broker", "url"),
    "MAAGW_BROKER_PREFIX": ("broker", "prefix"),
    "MAAGW_PARTNER_API_HOST": ("partner_api", "host"),
    "MAAGW_PARTNER_API_PORT": ("partner_api", "port"),
    "MAAGW_ADMIN_HOST": ("admin", "host"),
    "MAAGW_ADMIN_PORT": ("admin", "port"),
    "MAAGW_AUDIT_URL": ("audit", "url"),
    "MAAGW_STATE_URL": ("state", "url"),
    "MAAGW_STATE_DIR": ("gateway", "state_dir"),
}


def default_config_path() -> Path:
    """``$MAAGW_CONFIG`` if set, else ``config/gateway.toml``."""
    return Path(os.environ.get("MAAGW_CONFIG") or DEFAULT_CONFIG)


def load_settings(
    path: Path | str | None = None, *, env: Mapping[str, str] | None = None
) -> Settings:
    """Read and validate the whole configuration rooted at ``path``."""
    path = Path(path) if path is not None else default_config_path()
    env = os.environ if env is None else env
    raw = _read_toml(path)
    _apply_env(raw, env)
    main = _validate(GatewayFile, raw, path)
    base = path.parent
    partners_dir = _resolve(base, main.partners_dir)
    agreements_dir = _resolve(base, main.agreements_dir)
    partners = load_partners(partners_dir)
    if main.gateway.id in partners:
        raise ConfigError(
            f"{partners_dir / (main.gateway.id + '.toml')}: id: this gateway's own id"
        )
    agreements = load_agreements(agreements_dir) if agreements_dir.is_dir() else {}
    _warn_obsolete(path, main, agreements)
    state_dir = _resolve(base, main.gateway.state_dir)
    return Settings(
        path=path,
        gateway_id=main.gateway.id,
        name=main.gateway.name or main.gateway.id,
        state_dir=state_dir,
        preload_schemas=main.gateway.preload_schemas,
        instance_id=main.gateway.instance_id or f"{socket.gethostname()}:{main.partner_api.port}",
        partner_api=main.partner_api,
        admin=main.admin.model_copy(
            update={"token_file": _resolve(base, main.admin.token_file)}
            if main.admin.token_file
            else {}
        ),
        tls=_resolve_paths(main.tls, base),
        signing=_resolve_paths(main.signing, base),
        broker=main.broker,
        audit_url=_audit_url(main.audit.url, state_dir),
        state_url=_audit_url(main.state.url, state_dir),
        back_office=main.back_office,
        delivery=main.delivery,
        crl=main.crl,
        partners=partners,
        agreements=agreements,
    )


def _warn_obsolete(path: Path, main: GatewayFile, agreements: Mapping[str, Agreement]) -> None:
    """Say so when a file still sets a key that no longer has an effect."""
    where = [f"{path}: delivery.max_attempts"] if main.delivery.max_attempts is not None else []
    where += [
        f"agreement {a.id}: delivery.max_attempts"
        for a in agreements.values()
        if a.delivery.max_attempts is not None
    ]
    for key in where:
        log.warning(
            "config_key_obsolete",
            key=key,
            reason="ignored: a message is retried until its age limit (max_age_seconds), "
            "never dead-lettered after a number of attempts",
        )


def load_partners(directory: Path) -> dict[str, Partner]:
    """Every ``*.toml`` in ``directory``, keyed by partner id."""
    partners: dict[str, Partner] = {}
    if not directory.is_dir():
        raise ConfigError(f"{directory}: partners directory does not exist")
    for file in sorted(directory.glob("*.toml")):
        partner = _validate(Partner, _read_toml(file), file)
        if partner.id in partners:
            raise ConfigError(f"{file}: id: partner {partner.id} is defined twice")
        partners[partner.id] = _resolve_paths(partner, file.parent)
    return partners


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found", code=ErrorCode.CONFIG_MISSING) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"{path}: {exc.strerror}") from None


def _validate(model: type[M], raw: Mapping[str, Any], path: Path) -> M:
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        key = ".".join(str(p) for p in err["loc"]) or "(top level)"
        more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        raise ConfigError(f"{path}: {key}: {err['msg']}{more}") from None


def _apply_env(raw: dict[str, Any], env: Mapping[str, str]) -> None:
    for var, (section, key) in ENV_OVERRIDES.items():
        if var in env:
            table = raw.setdefault(section, {})
            if isinstance(table, dict):
                table[key] = _env_value(var, env[var])


def _env_value(var: str, value: str) -> str | list[str]:
    """A list for ``MAAGW_BROKER_URL`` naming several nodes (comma-separated), else the text."""
    if var == "MAAGW_BROKER_URL" and "," in value:
        return [url.strip() for url in value.split(",") if url.strip()]
    return value


def _resolve(base: Path, value: Path) -> Path:
    return value if value.is_absolute() else (base / value)


def _resolve_paths(model: M, base: Path) -> M:
    updates: dict[str, Any] = {}
    for name, value in model:
        if isinstance(value, Path):
            updates[name] = _resolve(base, value)
        elif isinstance(value, tuple) and value and all(isinstance(v, Path) for v in value):
            updates[name] = tuple(_resolve(base, v) for v in value)
    return model.model_copy(update=updates)


def _audit_url(url: str, state_dir: Path) -> str:
    """A database URL as it is; a file name resolved under ``state_dir`` (audit and state)."""
    if "://" in url:
        return url
    return str(_resolve(state_dir, Path(url)))

"""``maagw reload``: ask a running gateway to re-read its configuration and trust material.

Talks to the gateway's admin listener (``POST /v1/reload``), authenticated with
an operator certificate (``--cert``/``--key``, over TLS) or the bearer token in
``admin.token_file``. Exit status: 0 reloaded; 1 refused (bad new material, the
old stays in force; not authenticated; gateway unreachable); 2 configuration
or usage error.
"""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import click

from gateway.api.admin import read_token
from gateway.cli.common import config_option, one_line_errors, settings_from
from gateway.config.models import Settings
from gateway.errors import AuthError, ConfigError, ErrorCode, GatewayError


@click.command("reload")
@config_option
@click.option(
    "--cert",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    default=None,
    help="Operator certificate (PEM); implies TLS to the admin listener.",
)
@click.option(
    "--key",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    default=None,
    help="The operator certificate's private key.",
)
@click.option(
    "--token-file",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Bearer token file (default: admin.token_file of the configuration).",
)
@click.option(
    "--tls/--no-tls",
    "use_tls",
    default=None,
    help="Whether the admin listener serves TLS (default: with --cert, or admin.tls).",
)
@click.option("--timeout", type=float, default=30.0, show_default=True)
@one_line_errors
def reload_command(
    config_path: Path | None,
    cert: Path | None,
    key: Path | None,
    token_file: Path | None,
    use_tls: bool | None,
    timeout: float,
) -> None:
    """Reload configuration, certificates, CRLs, pins, partners and agreements without restart."""
    settings = settings_from(config_path)
    if (cert is None) != (key is None):
        raise click.UsageError("--cert and --key go together")
    tls = use_tls if use_tls is not None else (cert is not None or _admin_tls(settings))
    token_path = token_file or settings.admin.token_file
    headers = {"Content-Type": "application/json"}
    if cert is None:
        if token_path is None:
            raise ConfigError(
                "no operator certificate (--cert/--key) and no admin.token_file "
                "to authenticate with",
                code=ErrorCode.CONFIG_NO_OPERATOR_CREDENTIAL,
            )
        headers["Authorization"] = "Bearer " + read_token(token_path).decode()
    context = _client_context(settings, cert, key) if tls else None
    host = settings.admin.host
    url = f"{'https' if tls else 'http'}://{_bracket(host)}:{settings.admin.port}/v1/reload"
    answer = _post(url, headers, context, timeout)
    click.echo(_summary(answer))


def _admin_tls(settings: Settings) -> bool:
    return settings.admin.tls


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _client_context(settings: Settings, cert: Path | None, key: Path | None) -> ssl.SSLContext:
    """Trust only this gateway's own CA; present the operator certificate if given."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    # the admin listener presents the gateway's partner-facing certificate, whose name is
    # the public host name, not the loopback address; the own CA is the only anchor
    ctx.check_hostname = False
    try:
        ctx.load_verify_locations(cafile=str(settings.tls.ca))
        if cert is not None and key is not None:
            ctx.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"operator TLS material: {exc}") from None
    return ctx


def _post(
    url: str, headers: dict[str, str], context: ssl.SSLContext | None, timeout: float
) -> dict[str, Any]:
    request = urllib.request.Request(url, data=b"{}", headers=headers, method="POST")  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=context) as resp:  # noqa: S310
            return _json(resp.read())
    except urllib.error.HTTPError as exc:
        if exc.code in (401, 403):
            raise AuthError(
                "the admin listener refused the operator credential",
                code=ErrorCode.AUTH_OPERATOR_REQUIRED,
            ) from None
        body = _json(exc.read())
        raise GatewayError(
            str(body.get("reason") or f"the gateway answered {exc.code}"),
            code=str(body.get("code") or ErrorCode.RELOAD_FAILED),
        ) from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise GatewayError(
            f"admin listener at {url} not reachable: {reason}", code=ErrorCode.ADMIN_UNREACHABLE
        ) from None


def _json(data: bytes) -> dict[str, Any]:
    try:
        value = json.loads(data or b"{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _summary(answer: dict[str, Any]) -> str:
    parts = [f"reloaded by {answer.get('actor')}: partners {', '.join(answer.get('partners', []))}"]
    for name in ("added", "removed"):
        if answer.get(name):
            parts.append(f"{name} {', '.join(answer[name])}")
    parts.append(
        f"connections closed {answer.get('connections_closed', 0)}, "
        f"kept {answer.get('connections_kept', 0)}"
    )
    lines = ["; ".join(parts)]
    lines += [f"warning: {w}" for w in answer.get("warnings", [])]
    return "\n".join(lines)

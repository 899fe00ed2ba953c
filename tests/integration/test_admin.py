"""The admin listener over real HTTP and TLS on loopback: operators only, and who they are."""

from __future__ import annotations

import asyncio
import os
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import structlog
from click.testing import CliRunner

from gateway.ca import authority
from gateway.cli.reload import reload_command
from gateway.config.files import load_settings
from gateway.config.models import Settings
from gateway.errors import ConfigError
from gateway.service.gateway import Gateway

TOKEN = "s3cret-operator-token-0123456789"


def with_token_file(settings: Settings, mode: int = 0o600) -> Settings:
    """XB's settings with ``admin.token_file`` pointing at a token file of this mode."""
    token = settings.path.parent / "admin.token"
    token.write_text(TOKEN + "\n")
    token.chmod(mode)
    text = settings.path.read_text().replace("[admin]\n", '[admin]\ntoken_file = "admin.token"\n')
    settings.path.write_text(text)
    return load_settings(settings.path)


@pytest.fixture
async def xb(pair: dict[str, Settings]) -> AsyncIterator[Gateway]:
    """XB running with a token file, its admin listener serving TLS."""
    gateway = Gateway(with_token_file(pair["XB"]), admin_tls=True)
    await gateway.start()
    try:
        yield gateway
    finally:
        await gateway.stop()


def admin_context(settings: Settings, cert: Path | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(settings.tls.ca))
    ctx.check_hostname = False
    if cert is not None:
        ctx.load_cert_chain(cert, cert.with_suffix(".key"))
    return ctx


async def call(
    gw: Gateway, method: str, path: str, *, cert: Path | None = None, token: str | None = None
) -> tuple[int, dict[str, object]]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    url = f"https://127.0.0.1:{gw.admin_port}{path}"
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, url, ssl=admin_context(gw.settings, cert), headers=headers) as resp,
    ):
        body = await resp.json() if resp.content_type == "application/json" else {}
        return resp.status, body


def issue(gw: Gateway, kind: str, name: str, out: Path) -> Path:
    authority.issue(gw.settings.tls.ca.parent, kind, name, out)
    return out / f"{name}.pem"


@pytest.mark.parametrize(("method", "path"), [("GET", "/readyz"), ("POST", "/v1/reload")])
async def test_unauthenticated_requests_are_refused_and_audited(
    xb: Gateway, method: str, path: str
) -> None:
    """Without an operator certificate or the token, readiness and reload answer 401 and are audited."""
    status, _ = await call(xb, method, path)
    wrong, _ = await call(xb, method, path, token="not-the-token-at-all")
    assert (status, wrong) == (401, 401)
    await asyncio.sleep(0.1)
    refused = await xb.runtime.audit.search(event="auth_failure")
    assert [e.code for e in refused] == ["AUTH_OPERATOR_REQUIRED"] * 2
    assert await xb.runtime.audit.search(event="operator_action") == []


async def test_healthz_is_open_and_readyz_reports_its_checks(xb: Gateway) -> None:
    """/healthz needs no credential; /readyz with the token reports broker, stores and certificates."""
    health, _ = await call(xb, "GET", "/healthz")
    status, body = await call(xb, "GET", "/readyz", token=TOKEN)
    assert (health, status) == (200, 200)
    assert body == {
        "ready": True,
        "checks": {"broker": True, "state": True, "audit": True, "certificates": True},
    }


@pytest.mark.parametrize(
    ("kind", "name", "status", "actor"),
    [("operator", "alice", 200, "alice"), ("tls-client", "mallory", 401, None)],
)
async def test_an_operator_certificate_is_the_actor_of_the_reload(
    xb: Gateway, tmp_path: Path, kind: str, name: str, status: int, actor: str | None
) -> None:
    """An operator certificate from the own CA may reload and is audited as the actor; another kind may not."""
    cert = issue(xb, kind, name, tmp_path / "operator")
    got, body = await call(xb, "POST", "/v1/reload", cert=cert)
    assert got == status
    actions = await xb.runtime.audit.search(event="operator_action")
    assert [e.actor for e in actions] == ([actor] if actor else [])
    if actor:
        assert body["ok"] is True


async def test_the_token_is_the_actor_of_a_reload_through_the_cli(xb: Gateway) -> None:
    """``maagw reload --config`` with the token file reloads, audited as token:<file name>."""
    result = await asyncio.to_thread(
        CliRunner().invoke, reload_command, ["--config", str(xb.settings.path), "--tls"]
    )
    assert result.exit_code == 0, result.output
    assert "reloaded by token:admin.token" in result.output
    [entry] = await xb.runtime.audit.search(event="operator_action")
    assert (entry.actor, entry.outcome) == ("token:admin.token", "ok")


async def test_the_cli_exits_1_when_the_listener_refuses(xb: Gateway, tmp_path: Path) -> None:
    """``maagw reload`` with a token the gateway does not know exits 1 with one line on stderr."""
    other = tmp_path / "other.token"
    other.write_text("a-different-token-of-enough-length")
    other.chmod(0o600)
    result = await asyncio.to_thread(
        CliRunner().invoke,
        reload_command,
        ["--config", str(xb.settings.path), "--tls", "--token-file", str(other)],
    )
    assert result.exit_code == 1
    assert "AUTH_OPERATOR_REQUIRED" in result.output


async def test_a_token_file_others_can_read_refuses_to_start(pair: dict[str, Settings]) -> None:
    """A token file with mode 0644 is a configuration error at start."""
    gateway = Gateway(with_token_file(pair["XB"], mode=0o644))
    with pytest.raises(ConfigError) as caught:
        await gateway.start()
    assert caught.value.code == "CONFIG_TOKEN_MODE"


def _replace_token(path: Path, token: str, mode: int = 0o600) -> None:
    """Rotate the token the way an operator should: a new file moved over the old one."""
    fresh = path.with_name(path.name + ".new")
    fresh.write_text(token + "\n")
    fresh.chmod(mode)
    os.replace(fresh, path)


async def test_a_rotated_token_takes_effect_for_the_reload_that_presents_it(xb: Gateway) -> None:
    """After the token file is rotated, ``maagw reload`` (which presents the new token) succeeds and the old token is refused."""
    new = "rotated-operator-token-9876543210"
    assert xb.settings.admin.token_file is not None
    _replace_token(xb.settings.admin.token_file, new)
    result = await asyncio.to_thread(
        CliRunner().invoke, reload_command, ["--config", str(xb.settings.path), "--tls"]
    )
    assert result.exit_code == 0, result.output
    old_status, _ = await call(xb, "GET", "/readyz", token=TOKEN)
    new_status, _ = await call(xb, "GET", "/readyz", token=new)
    assert (old_status, new_status) == (401, 200)


async def test_a_token_file_others_can_read_after_rotation_refuses_every_token(
    xb: Gateway, tmp_path: Path
) -> None:
    """A token file turned readable by others refuses its token (old and new) while an operator certificate still works."""
    assert xb.settings.admin.token_file is not None
    _replace_token(xb.settings.admin.token_file, TOKEN, mode=0o644)
    with structlog.testing.capture_logs() as logs:
        status, _ = await call(xb, "GET", "/readyz", token=TOKEN)
    assert status == 401
    assert [e["code"] for e in logs if e["event"] == "admin_token_unusable"] == [
        "CONFIG_TOKEN_MODE"
    ]
    cert = issue(xb, "operator", "alice", tmp_path / "operator")
    by_cert, _ = await call(xb, "GET", "/readyz", cert=cert)
    assert by_cert == 200


async def test_token_file_may_point_elsewhere_after_a_reload(xb: Gateway, tmp_path: Path) -> None:
    """A reload that points ``[admin] token_file`` at another file applies it: the new token works, the old one no longer does."""
    other = xb.settings.path.parent / "other.token"
    _replace_token(other, "another-operator-token-000111222")
    text = xb.settings.path.read_text()
    xb.settings.path.write_text(
        text.replace('token_file = "admin.token"', 'token_file = "other.token"')
    )
    cert = issue(xb, "operator", "alice", tmp_path / "operator")
    status, body = await call(xb, "POST", "/v1/reload", cert=cert)
    assert (status, body.get("code")) == (200, "RELOAD_OK"), body
    old_status, _ = await call(xb, "GET", "/readyz", token=TOKEN)
    new_status, _ = await call(xb, "GET", "/readyz", token="another-operator-token-000111222")
    assert (old_status, new_status) == (401, 200)


@pytest.fixture
async def public_readyz(pair: dict[str, Settings]) -> AsyncIterator[Gateway]:
    """XB with a token file and ``[admin] readyz_public = true``, over TLS."""
    settings = with_token_file(pair["XB"])
    text = settings.path.read_text().replace("[admin]\n", "[admin]\nreadyz_public = true\n")
    settings.path.write_text(text)
    gateway = Gateway(load_settings(settings.path), admin_tls=True)
    await gateway.start()
    try:
        yield gateway
    finally:
        await gateway.stop()


async def test_a_public_readyz_tells_anyone_only_whether_the_gateway_is_ready(
    public_readyz: Gateway,
) -> None:
    """With readyz_public, /readyz answers without credentials with the status and {"ready"} only; the checks need the token."""
    status, body = await call(public_readyz, "GET", "/readyz")
    authed, detail = await call(public_readyz, "GET", "/readyz", token=TOKEN)
    wrong, _ = await call(public_readyz, "GET", "/readyz", token="not-the-token-at-all")
    reload_status, _ = await call(public_readyz, "POST", "/v1/reload")
    assert (status, body) == (200, {"ready": True})
    assert (authed, detail["checks"]) == (
        200,
        {"broker": True, "state": True, "audit": True, "certificates": True},
    )
    assert (wrong, reload_status) == (401, 401)
    # the publishing channel gone: the relay is not ready (the consumers keep theirs)
    channel = public_readyz.runtime.relay._channel
    assert channel is not None
    await channel.close()
    down, body = await call(public_readyz, "GET", "/readyz")
    assert (down, body) == (503, {"ready": False})

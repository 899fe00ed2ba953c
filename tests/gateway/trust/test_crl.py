"""Tests for gateway/trust/crl.py: CRL freshness, where a partner's CRL comes from, and what is accepted."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from gateway.ca import authority
from gateway.config.models import Partner
from gateway.errors import CrlError
from gateway.trust import crl
from gateway.trust.identity import PartnerTrust, TrustStore

NOW = dt.datetime.now(dt.UTC)


class Pki:
    """XA's CA (with a signing certificate) and another CA, in a temporary directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        authority.init_ca("XA Customs Gateway CA", root / "xa-ca")
        authority.init_ca("Other CA", root / "other-ca")
        self.crl_file = root / "partners" / "XA-crl.pem"
        authority.make_crl(root / "xa-ca", self.crl_file)  # number 1

    def crl(self, ca: str = "xa-ca", **kw: object) -> bytes:
        out = self.root / "made.pem"
        authority.make_crl(self.root / ca, out, **kw)  # type: ignore[arg-type]
        return out.read_bytes()

    def partner(self, **kw: object) -> Partner:
        fields: dict[str, object] = {
            "id": "XA",
            "url": "https://xa.test",
            "ca": self.root / "xa-ca" / "ca.pem",
            "crl": self.crl_file,
        }
        fields.update(kw)
        return Partner(**fields)  # type: ignore[arg-type]

    def trust(self, **kw: object) -> PartnerTrust:
        return TrustStore({"XA": self.partner(**kw)}).partners["XA"]


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return Pki(tmp_path)


def test_a_newer_crl_of_the_partners_ca_is_accepted_and_the_same_one_changes_nothing(
    pki: Pki,
) -> None:
    """A CRL with a higher number replaces the one in force; the very same CRL is no change."""
    trust = pki.trust()
    assert crl.accept(crl.parse(pki.crl()), trust) is True
    assert crl.accept(crl.parse(pki.crl_file.read_bytes()), trust) is False


@pytest.mark.parametrize(
    ("make", "code"),
    [
        (lambda p: p.crl("other-ca"), "CRL_FETCH_WRONG_SIGNER"),
        (lambda p: p.crl(now=NOW - dt.timedelta(days=9), next_update_days=1), "CRL_FETCH_STALE"),
        (lambda p: b"\x30\x03\x02\x01\x00", "CRL_FETCH_CORRUPT"),
    ],
)
def test_an_unusable_crl_is_refused_with_its_reason(pki: Pki, make: object, code: str) -> None:
    """A CRL of another CA, one past nextUpdate, or bytes that are no CRL are refused with a stable code."""
    trust = pki.trust()
    with pytest.raises(CrlError) as caught:
        crl.accept(crl.parse(make(pki)), trust)  # type: ignore[operator]
    assert caught.value.code == code


def test_an_older_crl_than_the_one_in_force_is_refused(pki: Pki) -> None:
    """A replayed older CRL (lower CRL number) never replaces a newer one."""
    older = pki.crl_file.read_bytes()
    pki.crl_file.write_bytes(pki.crl())  # number 2 in force
    with pytest.raises(CrlError) as caught:
        crl.accept(crl.parse(older), pki.trust())
    assert caught.value.code == "CRL_FETCH_OLDER"


def test_sources_prefer_crl_url_then_distribution_points(pki: Pki) -> None:
    """crl_url wins; else the distribution points of the signing, then CA certificates; none without a crl file."""
    authority.issue(
        pki.root / "xa-ca", "signing", "sig", pki.root, crl_url="http://crl.xa.test/ca.crl"
    )
    signing = (pki.root / "sig.pem",)
    assert crl.sources(pki.partner(signing_certs=signing), pki.trust(signing_certs=signing)) == [
        "http://crl.xa.test/ca.crl"
    ]
    url = "https://pki.xa.test/xa.crl"
    with_url = {"signing_certs": signing, "crl_url": url}
    assert crl.sources(pki.partner(**with_url), pki.trust(**with_url)) == [url]
    no_file = TrustStore({"XA": pki.partner(crl=None)}).partners["XA"]
    assert crl.sources(pki.partner(crl=None, signing_certs=signing), no_file) == []


def test_crl_url_must_be_http_and_needs_a_crl_file(pki: Pki) -> None:
    """A partner's crl_url is http(s) only, and needs the crl file the gateway keeps current."""
    with pytest.raises(ValueError, match="http"):
        pki.partner(crl_url="ldap://pki.xa.test/cn=crl")
    with pytest.raises(ValueError, match="crl_url needs crl"):
        pki.partner(crl=None, crl_url="http://pki.xa.test/xa.crl")


@pytest.mark.parametrize(
    ("hours", "state", "cut_off"),
    [(100, crl.OK, False), (30, crl.EXPIRING, False), (-1, crl.STALE, True)],
)
def test_status_says_ok_expiring_or_stale(pki: Pki, hours: int, state: str, cut_off: bool) -> None:
    """Within the horizon before nextUpdate a CRL is expiring; past it stale (cutting the partner off)."""
    trust = pki.trust()
    assert trust.crl is not None and trust.crl.next_update_utc is not None
    now = trust.crl.next_update_utc - dt.timedelta(hours=hours)
    st = crl.status(trust, dt.timedelta(days=2), now)
    assert st is not None and (st.state, st.cut_off, st.crl_number) == (state, cut_off, 1)
    assert st.as_json()["state"] == state


class Http:
    """A local HTTP server: /crl answers ``body``, /big more than 1000 bytes, others 404."""

    def __init__(self) -> None:
        self.body = b""
        self.base = ""


@pytest.fixture
async def http() -> AsyncIterator[Http]:
    """The running local HTTP server."""
    state = Http()

    async def crl_body(_: web.Request) -> web.Response:
        return web.Response(body=state.body)

    async def big(_: web.Request) -> web.Response:
        return web.Response(body=b"x" * 5000)

    app = web.Application()
    app.router.add_get("/crl", crl_body)
    app.router.add_get("/big", big)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server = site._server
    assert isinstance(server, asyncio.base_events.Server)
    state.base = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    yield state
    await runner.cleanup()


@pytest.mark.parametrize(
    ("path", "code"), [("/big", "CRL_FETCH_TOO_LARGE"), ("/missing", "CRL_FETCH_HTTP")]
)
async def test_download_refuses_large_answers_and_http_errors(
    http: Http, path: str, code: str
) -> None:
    """An answer over the size bound or with a non-200 status is refused, not read on."""
    with pytest.raises(CrlError) as caught:
        await crl.download(http.base + path, timeout=10, max_bytes=1000)
    assert caught.value.code == code


async def test_fetch_keeps_the_file_on_failure_and_writes_a_newer_crl(pki: Pki, http: Http) -> None:
    """fetch leaves the crl file alone when the answer is unusable and replaces it with a newer CRL."""
    before = pki.crl_file.read_bytes()
    partner = pki.partner(crl_url=http.base + "/crl")
    http.body = b"not a crl"
    bad = await crl.fetch(partner, pki.trust(), timeout=10, max_bytes=10**6)
    assert bad.error is not None and bad.error.code == "CRL_FETCH_CORRUPT" and not bad.changed
    assert pki.crl_file.read_bytes() == before
    http.body = pki.crl()
    good = await crl.fetch(partner, pki.trust(), timeout=10, max_bytes=10**6)
    assert good.error is None and good.changed and good.crl is not None
    assert crl.crl_number(good.crl) == 2 and pki.crl_file.read_bytes() == http.body


def test_newer_file_finds_a_crl_written_by_another_process(pki: Pki) -> None:
    """A newer CRL in the partner's file is found; once in force, it is no longer newer."""
    in_force = pki.trust()
    assert crl.newer_file(in_force) is None
    pki.crl_file.write_bytes(pki.crl())
    newer = crl.newer_file(in_force)
    assert newer is not None and crl.crl_number(newer) == 2
    assert crl.newer_file(pki.trust()) is None

"""Tests for gateway/cli/certs.py: the `maagw certs` commands."""

from __future__ import annotations

import datetime as dt
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from gateway import pem
from gateway.ca import authority, partner_import
from gateway.cli.certs import certs as certs_cli
from maagw_testing.pki import NOW, issue_one

pytestmark = pytest.mark.usefixtures("logs")


def run(*args: str, env: dict[str, str] | None = None):
    """Invoke `maagw certs ARGS` and return the click Result."""
    return CliRunner().invoke(certs_cli, list(args), env=env)


def test_cli_init_issue_list_revoke_crl_check(tmp_path: Path) -> None:
    """The commands chain as an operator would use them, each printing what it wrote."""
    ca, out = tmp_path / "ca", tmp_path / "out"
    result = run("init-ca", "--name", "XA CA", "--out", str(ca))
    assert result.exit_code == 0, result.output
    assert result.stdout.split() == [str(ca / "ca.key"), str(ca / "ca.pem"), str(ca / "index.json")]

    result = run("issue", "--ca", str(ca), "--kind", "tls-server", "--name", "gw.xa.test",
                 "--san", "gw.xa.test", "--san", "127.0.0.1", "--out", str(out))  # fmt: skip
    assert result.exit_code == 0, result.output
    assert str(out / "gw.xa.test.pem") in result.stdout.split()
    serial = pem.serial_hex(pem.load_cert(out / "gw.xa.test.pem").serial_number)

    result = run("issue", "--ca", str(ca), "--kind", "signing", "--name", "soon", "--days", "5",
                 "--out", str(out))  # fmt: skip
    assert result.exit_code == 0, result.output

    result = run("list", str(out))
    assert result.exit_code == 0, result.output
    lines = {line.split("\t")[0]: line.split("\t") for line in result.stdout.splitlines()}
    assert lines["CN=gw.xa.test"][1:3] == [serial, "tls-server"]
    assert lines["CN=soon"][-1] == "EXPIRING" and lines["CN=soon"][4] in {"4d", "5d"}

    result = run("revoke", "--ca", str(ca), serial.lower(), "--reason", "keyCompromise")
    assert result.exit_code == 0 and result.stdout.split() == [str(ca / "index.json")]

    result = run("crl", "--ca", str(ca), "--out", str(tmp_path / "crl.pem"))
    assert result.exit_code == 0 and str(tmp_path / "crl.pem") in result.stdout.split()

    result = run("check", str(out / "soon.pem"), str(out / "soon.key"), "--ca", str(ca))
    assert result.exit_code == 0 and "warning" in result.stderr

    result = run("check", str(out / "gw.xa.test.pem"), str(out / "gw.xa.test.key"), "--ca", str(ca))
    assert result.exit_code == 1 and "revoked" in result.stderr


def test_cli_check_prints_one_line_per_problem(ca_dir: Path, out: Path) -> None:
    """check exits 1 with one 'problem:' line for each problem found."""
    _, cert_path, _ = issue_one(
        ca_dir, out, name="a", not_before=NOW - dt.timedelta(days=50), days=1
    )
    _, _, other_key = issue_one(ca_dir, out, name="b")
    other_key.chmod(0o644)
    result = run("check", str(cert_path), str(other_key))
    assert result.exit_code == 1
    problems = [line for line in result.stderr.splitlines() if line.startswith("problem:")]
    assert len(problems) == 3, result.stderr
    assert result.stdout == ""


def test_cli_passphrase_env_encrypts_and_missing_variable_is_usage(tmp_path: Path) -> None:
    """--passphrase-env reads the variable; an unset variable is a usage error (exit 2)."""
    ca = tmp_path / "ca"
    result = run("init-ca", "--name", "CA", "--out", str(ca), "--passphrase-env", "CA_PW",
                 env={"CA_PW": "pw-1"})  # fmt: skip
    assert result.exit_code == 0, result.output
    assert b"ENCRYPTED" in (ca / "ca.key").read_bytes()
    args = ["issue", "--ca", str(ca), "--kind", "operator", "--name", "op", "--out", str(tmp_path)]
    result = run(*args, "--ca-passphrase-env", "NOT_SET_ANYWHERE")
    assert result.exit_code == 2 and "NOT_SET_ANYWHERE" in result.stderr
    result = run(*args, "--ca-passphrase-env", "CA_PW", env={"CA_PW": "pw-1"})
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize(
    "args",
    [
        ["issue", "--kind", "signing", "--name", "x", "--out", "o"],  # no --ca
        ["list", "--config", "{ca}/missing.toml"],
        ["revoke", "--ca", "{ca}", "ABCD", "--reason", "keyCompromise"],
        ["revoke", "--ca", "{ca}", "zz", "--reason", "keyCompromise"],
        ["init-ca", "--name", "again", "--out", "{ca}"],
    ],
)
def test_cli_usage_and_config_errors_exit_2_with_one_line(ca_dir: Path, args: list[str]) -> None:
    """Usage and configuration errors exit 2 and say why on stderr, without a traceback."""
    result = run(*[a.format(ca=ca_dir) for a in args])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and result.stderr.strip()


def test_cli_rotate_prints_both_pins_and_the_next_step(ca_dir: Path, out: Path) -> None:
    """rotate prints the files written, the old and new pins, and tells the operator to publish."""
    old, _, _ = issue_one(ca_dir, out, "signing", "sig")
    result = run("rotate", "--ca", str(ca_dir), "--name", "sig", "--out", str(out),
                 "--overlap-days", "10")  # fmt: skip
    assert result.exit_code == 0, result.output
    new_pem = next(p for p in result.stdout.split() if p.endswith(".pem"))
    assert pem.spki_pin(old) in result.stderr
    assert pem.spki_pin(pem.load_cert(Path(new_pem))) in result.stderr
    assert "publish" in result.stderr


def test_cli_import_partner_writes_the_partner_file(partner: Path) -> None:
    """import-partner writes ID.toml and the copied CA and prints their paths."""
    dest = partner / "partners"
    result = run("import-partner", "--id", "XB", "--ca", str(partner / "xb-ca" / "ca.pem"),
                 "--tls-cert", str(partner / "xb" / "gw.xb.test.pem"),
                 "--signing-cert", str(partner / "xb" / "xb-sig.pem"),
                 "--url", "https://127.0.0.1:8444", "--out", str(dest))  # fmt: skip
    assert result.exit_code == 0, result.output
    assert str(dest / "XB.toml") in result.stdout.split()
    assert str(dest / "certs" / "XB-ca.pem") in result.stdout.split()
    assert len(tomllib.loads((dest / "XB.toml").read_text())["tls_pins"]) == 1


def write_config(root: Path) -> Path:
    """A gateway XA config (own CA, TLS and signing certs) with partner XB imported; its path."""
    own, partner = root / "certs", root / "xb"
    authority.init_ca("XA CA", own / "ca")
    for kind, name in [("tls-server", "server"), ("tls-client", "client"), ("signing", "sig")]:
        authority.issue(own / "ca", kind, name, own)
    authority.init_ca("XB CA", partner / "ca")
    authority.issue(partner / "ca", "signing", "xb-sig", partner, days=10)
    authority.issue(partner / "ca", "tls-client", "xb-client", partner)
    partner_import.import_partner(
        "XB",
        partner / "ca" / "ca.pem",
        root / "config" / "partners",
        tls_certs=[partner / "xb-client.pem"],
        signing_certs=[partner / "xb-sig.pem"],
        url="https://127.0.0.1:8444",
    )
    config = root / "config" / "gateway.toml"
    config.write_text(
        '[gateway]\nid = "XA"\n\n[tls]\nca = "../certs/ca/ca.pem"\n'
        'server_cert = "../certs/server.pem"\nserver_key = "../certs/server.key"\n'
        'client_cert = "../certs/client.pem"\nclient_key = "../certs/client.key"\n\n'
        '[signing]\ncert = "../certs/sig.pem"\nkey = "../certs/sig.key"\n'
    )
    return config


def test_imported_partner_file_is_accepted_by_the_config_loader(tmp_path: Path) -> None:
    """The loader reads import-partner's TOML: the CA, pins and signing certs it names."""
    from gateway.config.files import load_settings

    settings = load_settings(write_config(tmp_path))
    xb = settings.partners["XB"]
    assert pem.load_cert(xb.ca) == pem.load_cert(tmp_path / "xb" / "ca" / "ca.pem")
    assert xb.tls_pins == (pem.spki_pin(pem.load_cert(tmp_path / "xb" / "xb-client.pem")),)
    assert [pem.load_cert(p) for p in xb.signing_certs] == [
        pem.load_cert(tmp_path / "xb" / "xb-sig.pem")
    ]
    assert xb.crl is None


def test_cli_list_config_lists_own_and_partner_certificates(tmp_path: Path) -> None:
    """list --config shows the gateway's own certificates and the partners', flagging expiry."""
    config = write_config(tmp_path)
    result = run("list", "--config", str(config))
    assert result.exit_code == 0, result.output
    rows = {line.split("\t")[0]: line.split("\t") for line in result.stdout.splitlines()}
    assert sorted(rows) == sorted(
        ["CN=XA CA", "CN=server", "CN=client", "CN=sig", "CN=XB CA", "CN=xb-sig"]
    )
    assert rows["CN=xb-sig"][2] == "signing" and rows["CN=xb-sig"][-1] == "EXPIRING"
    assert rows["CN=server"][2] == "tls-server" and rows["CN=server"][-1] != "EXPIRING"


def test_cli_list_without_arguments_reads_maagw_config(tmp_path: Path) -> None:
    """With neither --config nor DIR, list reads the configuration named by $MAAGW_CONFIG."""
    config = write_config(tmp_path)
    result = run("list", env={"MAAGW_CONFIG": str(config)})
    assert result.exit_code == 0, result.output
    assert len(result.stdout.splitlines()) == 6


def test_rotate_with_config_is_an_audited_operator_action(tmp_path: Path) -> None:
    """`certs rotate --config` records the rotation, with its actor and pins, in the gateway's audit log."""
    import asyncio

    from gateway.audit.log import AuditLog
    from gateway.config.files import load_settings
    from gateway.demo import provision

    prov = provision(tmp_path / "gw", "amqp://guest:guest@127.0.0.1:5672/", ids=("XA", "XB"))
    config = prov["XA"].config
    base = config.parent
    result = CliRunner().invoke(
        certs_cli,
        [
            "rotate",
            "--ca",
            str(base / "ca"),
            "--name",
            "signing",
            "--out",
            str(base / "certs"),
            "--config",
            str(config),
            "--actor",
            "op:bob",
        ],
    )
    assert result.exit_code == 0, result.output
    settings = load_settings(config)

    async def entries() -> list:  # type: ignore[type-arg]
        audit = await AuditLog.open(settings.audit_url, gateway_id="XA")
        try:
            return await audit.search(event="operator_action")
        finally:
            await audit.close()

    found = asyncio.run(entries())
    assert [(e.code, e.actor) for e in found] == [("CERT_ROTATED", "op:bob")]
    assert found[0].details_obj()["old_pin"] != found[0].details_obj()["new_pin"]


def _xb_crl(root: Path, **kw: object) -> Path:
    """Give XB's partner file (from write_config) a CRL of XB's CA; the CRL's path."""
    crl = root / "config" / "partners" / "certs" / "XB-crl.pem"
    authority.make_crl(root / "xb" / "ca", crl, **kw)  # type: ignore[arg-type]
    toml = root / "config" / "partners" / "XB.toml"
    toml.write_text(toml.read_text().replace('crl = ""', 'crl = "certs/XB-crl.pem"'))
    return crl


@pytest.mark.parametrize(("next_update_days", "flag"), [(7, ""), (1, "EXPIRING")])
def test_cli_list_config_shows_partner_crls_with_next_update(
    tmp_path: Path, next_update_days: int, flag: str
) -> None:
    """list --config has a line per partner CRL: issuer, CRL number, crl, nextUpdate, days left, file, flag."""
    config = write_config(tmp_path)
    crl = _xb_crl(tmp_path, next_update_days=next_update_days)
    result = run("list", "--config", str(config))
    assert result.exit_code == 0, result.output
    [row] = [line.split("\t") for line in result.stdout.splitlines() if "\tcrl\t" in line]
    assert row[:3] == ["CN=XB CA", "01", "crl"]
    assert row[4] == f"{next_update_days - 1}d" and Path(row[5]) == crl
    assert (row[6] if len(row) > 6 else "") == flag


def test_cli_list_dir_shows_a_stale_crl(ca_dir: Path, out: Path) -> None:
    """list DIR includes CRL files and flags one past its nextUpdate STALE."""
    issue_one(ca_dir, out)
    authority.make_crl(ca_dir, out / "ca.crl", now=NOW - dt.timedelta(days=10), next_update_days=1)
    result = run("list", str(out))
    assert result.exit_code == 0, result.output
    [row] = [line.split("\t") for line in result.stdout.splitlines() if "\tcrl\t" in line]
    assert row[-1] == "STALE" and row[-2] == str(out / "ca.crl")


class _CrlHttp:
    """A stdlib HTTP server in a thread answering every GET with ``body`` (for CLI tests)."""

    def __init__(self) -> None:
        import http.server
        import threading

        state = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Length", str(len(state.body)))
                self.end_headers()
                self.wfile.write(state.body)

            def log_message(self, *args: object) -> None:
                pass

        self.body = b""
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/xb.crl"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def crl_http() -> Iterator[_CrlHttp]:
    server = _CrlHttp()
    yield server
    server.close()


def test_cli_fetch_crl_replaces_a_stale_crl_and_is_audited(
    tmp_path: Path, crl_http: _CrlHttp
) -> None:
    """fetch-crl writes a fresh CRL over a stale one (which the gateway would refuse to load) and audits it."""
    import asyncio

    from gateway.audit.log import AuditLog
    from gateway.config.files import load_settings

    config = write_config(tmp_path)
    crl = _xb_crl(tmp_path, now=NOW - dt.timedelta(days=10), next_update_days=1)
    toml = tmp_path / "config" / "partners" / "XB.toml"
    toml.write_text(toml.read_text() + f'crl_url = "{crl_http.url}"\n')
    fresh = tmp_path / "fresh.pem"
    authority.make_crl(tmp_path / "xb" / "ca", fresh)
    crl_http.body = fresh.read_bytes()
    result = run("fetch-crl", "--config", str(config), "--actor", "op:carol")
    assert result.exit_code == 0, result.output
    assert result.stdout.split() == [str(crl)] and crl.read_bytes() == fresh.read_bytes()
    assert "XB: CRL number 2" in result.stderr
    settings = load_settings(config)

    async def actions() -> list:  # type: ignore[type-arg]
        audit = await AuditLog.open(settings.audit_url, gateway_id="XA")
        try:
            return await audit.search(event="operator_action")
        finally:
            await audit.close()

    [entry] = asyncio.run(actions())
    assert (entry.code, entry.partner, entry.actor) == ("CRL_FETCHED", "XB", "op:carol")


def test_cli_fetch_crl_keeps_the_file_and_exits_1_when_the_answer_is_unusable(
    tmp_path: Path, crl_http: _CrlHttp
) -> None:
    """An unusable answer leaves the CRL file untouched, says why on stderr and exits 1."""
    config = write_config(tmp_path)
    crl = _xb_crl(tmp_path)
    before = crl.read_bytes()
    toml = tmp_path / "config" / "partners" / "XB.toml"
    toml.write_text(toml.read_text() + f'crl_url = "{crl_http.url}"\n')
    crl_http.body = b"<html>not a CRL</html>"
    result = run("fetch-crl", "--config", str(config))
    assert result.exit_code == 1
    assert "CRL_FETCH_CORRUPT" in result.stderr and crl.read_bytes() == before


def test_cli_rotate_finds_the_configuration_and_lists_partners_to_import(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without --config, rotate uses config/gateway.toml of the working directory, records the certificate and lists partners."""
    import asyncio

    from gateway.audit.log import AuditLog
    from gateway.config.files import load_settings

    config = write_config(tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MAAGW_CONFIG", raising=False)
    result = run("rotate", "--ca", str(tmp_path / "certs" / "ca"), "--name", "sig",
                 "--out", str(tmp_path / "certs"))  # fmt: skip
    assert result.exit_code == 0, result.output
    new = pem.load_cert(next(Path(p) for p in result.stdout.split() if p.endswith(".pem")))
    assert f"cert_sha256={pem.cert_sha256(new)}" in result.stderr
    assert f"serial={pem.serial_hex(new.serial_number)}" in result.stderr
    assert "recorded: the new signing certificate in the audit log of XA" in result.stderr
    assert (
        "XB (https://127.0.0.1:8444): maagw certs import-partner --id XA --ca ca.pem"
        in result.stderr
    )
    settings = load_settings(config)

    async def recorded() -> list:  # type: ignore[type-arg]
        audit = await AuditLog.open(settings.audit_url, gateway_id="XA")
        try:
            return await audit.cert_records()
        finally:
            await audit.close()

    shas = [r.sha256 for r in asyncio.run(recorded())]
    assert shas == [
        pem.cert_sha256(pem.load_cert(tmp_path / "certs" / "sig.pem")),
        pem.cert_sha256(new),
    ]


def test_cli_rotate_says_when_it_could_not_record(
    ca_dir: Path, out: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With no configuration to find, rotate still rotates and says plainly that nothing was recorded."""
    issue_one(ca_dir, out, "signing", "sig")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MAAGW_CONFIG", raising=False)
    result = run("rotate", "--ca", str(ca_dir), "--name", "sig", "--out", str(out))
    assert result.exit_code == 0, result.output
    assert "not recorded in an audit log: no configuration at config/gateway.toml" in result.stderr


def test_cli_rotate_refuses_a_configuration_of_another_certificate(
    tmp_path: Path, ca_dir: Path, out: Path
) -> None:
    """An explicit --config whose signing certificate is not the one rotated is refused before anything is issued."""
    config = write_config(tmp_path / "gw")
    issue_one(ca_dir, out, "signing", "other")
    result = run(
        "rotate", "--ca", str(ca_dir), "--name", "other", "--out", str(out), "--config", str(config)
    )
    assert result.exit_code == 2 and "CONFIG_ROTATION_MISMATCH" in result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["other.key", "other.pem"]

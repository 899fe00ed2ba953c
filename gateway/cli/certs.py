"""``maagw certs``: the operator's certificate commands.

A click group the main CLI attaches with ``main.add_command(certs)``. Each
command prints the paths it wrote, one per line. Exit status: 0 done; 1 a
check failed; 2 usage or configuration error (one line on stderr).
"""

from __future__ import annotations

import functools
import getpass
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

import click
from cryptography import x509

from gateway import pem
from gateway.ca import authority, inspect, partner_import
from gateway.ca.rotation import Rotation, is_signing_family, rotate
from gateway.errors import ConfigError, ErrorCode, GatewayError, exit_status

if TYPE_CHECKING:
    from gateway.config.models import Settings


P = ParamSpec("P")


R = TypeVar("R")


_PathArg = click.Path(path_type=Path)


_ExistingFile = click.Path(path_type=Path, exists=True, dir_okay=False)


_ExistingDir = click.Path(path_type=Path, exists=True, file_okay=False)


def _one_line_errors(func: Callable[P, R]) -> Callable[P, R]:
    """Turn a GatewayError into one line on stderr and exit 2 (config) or 1."""

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return func(*args, **kwargs)
        except GatewayError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(exit_status(exc))

    return wrapper


def _passphrase(var: str | None, option: str) -> bytes | None:
    if var is None:
        return None
    value = os.environ.get(var)
    if value is None:
        raise click.UsageError(f"{option} {var}: environment variable {var} is not set")
    return value.encode("utf-8")


def _print_paths(paths: list[Path]) -> None:
    for path in paths:
        click.echo(str(path))


_key_type = click.option(
    "--key-type",
    type=click.Choice(["ec", "rsa"]),
    default="ec",
    show_default=True,
    help="ECDSA P-256 or RSA-3072.",
)


_passphrase_env = click.option(
    "--passphrase-env",
    metavar="VAR",
    help="Encrypt the new private key with the passphrase in this environment variable.",
)


_ca_passphrase_env = click.option(
    "--ca-passphrase-env",
    metavar="VAR",
    help="Environment variable holding the passphrase of an encrypted CA key.",
)


@click.group(name="certs")
def certs() -> None:
    """Create a CA, issue, list, revoke, check and rotate certificates."""


@certs.command("init-ca")
@click.option("--name", required=True, help="Common name of the CA.")
@click.option(
    "--out", required=True, type=_PathArg, help="Directory for ca.pem, ca.key, index.json."
)
@_key_type
@click.option("--days", type=int, default=3650, show_default=True)
@click.option("--org", help="Organization (O) of the subject.")
@_passphrase_env
@_one_line_errors
def init_ca_cmd(
    name: str, out: Path, key_type: str, days: int, org: str | None, passphrase_env: str | None
) -> None:
    """Create a certificate authority in DIR (refuses to replace an existing one)."""
    _print_paths(
        authority.init_ca(
            name,
            out,
            key_type="rsa" if key_type == "rsa" else "ec",
            days=days,
            passphrase=_passphrase(passphrase_env, "--passphrase-env"),
            org=org,
        )
    )


@certs.command("issue")
@click.option("--ca", "ca_dir", required=True, type=_ExistingDir, help="CA directory.")
@click.option("--kind", required=True, type=click.Choice(list(pem.KINDS)))
@click.option("--name", required=True, help="Common name; also the file name NAME.pem/NAME.key.")
@click.option("--san", multiple=True, help="DNS name or IP address (repeatable).")
@click.option("--days", type=int, default=397, show_default=True)
@_key_type
@click.option("--out", required=True, type=_PathArg, help="Directory for NAME.pem and NAME.key.")
@click.option("--org", help="Organization (O) of the subject.")
@click.option("--crl-url", help="CRL distribution point URL to put in the certificate.")
@_passphrase_env
@_ca_passphrase_env
@_one_line_errors
def issue_cmd(
    ca_dir: Path,
    kind: str,
    name: str,
    san: tuple[str, ...],
    days: int,
    key_type: str,
    out: Path,
    org: str | None,
    crl_url: str | None,
    passphrase_env: str | None,
    ca_passphrase_env: str | None,
) -> None:
    """Issue a TLS server, TLS client, signing or operator certificate."""
    _print_paths(
        authority.issue(
            ca_dir,
            kind,
            name,
            out,
            sans=san,
            days=days,
            key_type="rsa" if key_type == "rsa" else "ec",
            passphrase=_passphrase(passphrase_env, "--passphrase-env"),
            ca_passphrase=_passphrase(ca_passphrase_env, "--ca-passphrase-env"),
            org=org,
            crl_url=crl_url,
        )
    )


def _settings_paths(config: Path) -> tuple[list[Path], list[Path], float]:
    from gateway.config.files import load_settings  # only `list --config` needs the whole config

    settings = load_settings(config)
    return (
        inspect.configured_cert_paths(settings, base=config.parent),
        inspect.configured_crl_paths(settings),
        settings.crl.warning_days,
    )


@certs.command("list")
@click.option(
    "--config",
    type=_PathArg,
    help="Gateway configuration [default: $MAAGW_CONFIG, then config/gateway.toml].",
)
@click.argument("directory", required=False, type=_ExistingDir)
@_one_line_errors
def list_cmd(config: Path | None, directory: Path | None) -> None:
    """List certificates and CRLs, one tab-separated line each.

    Certificates: subject, serial (hex, as openssl prints it), kind, not-after, days
    left, file, flag — EXPIRING under 30 days, EXPIRED past expiry. CRLs: issuer, CRL
    number (hex), "crl", nextUpdate, days left, file, flag — EXPIRING within [crl]
    warning_days (2) of nextUpdate, STALE past it. Without DIR, lists the gateway's own
    certificates and every partner's configured ones and CRLs.
    """
    if directory is not None and config is not None:
        raise click.UsageError("give either --config PATH or a DIR, not both")
    warning_days = inspect.CRL_WARNING_DAYS
    if directory is not None:
        paths, crl_paths = pem.pem_files(directory), inspect.crl_files(directory)
    else:
        paths, crl_paths, warning_days = _settings_paths(config or _default_config())
    rows = inspect.describe(paths)
    for row in rows:
        flag = "EXPIRED" if row.days_left < 0 else "EXPIRING" if row.expiring else ""
        click.echo(
            "\t".join(
                [
                    row.subject,
                    row.serial,
                    row.kind,
                    f"{row.not_after:%Y-%m-%dT%H:%M:%SZ}",
                    f"{row.days_left}d",
                    str(row.path),
                    flag,
                ]
            ).rstrip()
        )
    for crl in inspect.describe_crls(crl_paths, warning_days=warning_days):
        click.echo(
            "\t".join(
                [
                    crl.issuer,
                    crl.number,
                    "crl",
                    f"{crl.next_update:%Y-%m-%dT%H:%M:%SZ}" if crl.next_update else "-",
                    f"{crl.days_left}d" if crl.days_left is not None else "-",
                    str(crl.path),
                    crl.flag,
                ]
            ).rstrip()
        )
    if not rows and not crl_paths:
        click.echo("no certificates found", err=True)


def _default_config() -> Path:
    return Path(os.environ.get("MAAGW_CONFIG") or "config/gateway.toml")


@certs.command("revoke")
@click.option("--ca", "ca_dir", required=True, type=_ExistingDir, help="CA directory.")
@click.argument("serial")
@click.option(
    "--reason",
    default="unspecified",
    show_default=True,
    help="RFC 5280 reason: keyCompromise, superseded, cessationOfOperation, affiliationChanged, …",
)
@_one_line_errors
def revoke_cmd(ca_dir: Path, serial: str, reason: str) -> None:
    """Revoke SERIAL (hex, as openssl prints it); publish with `maagw certs crl`."""
    written = authority.revoke(ca_dir, serial, reason)
    if not written:
        click.echo(
            f"serial {pem.serial_hex(pem.parse_serial(serial))} was already revoked",
            err=True,
        )
    _print_paths(written)


@certs.command("crl")
@click.option("--ca", "ca_dir", required=True, type=_ExistingDir, help="CA directory.")
@click.option("--out", required=True, type=_PathArg, help="File for the PEM CRL.")
@click.option("--next-update-days", type=float, default=7, show_default=True)
@_ca_passphrase_env
@_one_line_errors
def crl_cmd(
    ca_dir: Path, out: Path, next_update_days: float, ca_passphrase_env: str | None
) -> None:
    """Sign and write a CRL of every certificate the CA has revoked."""
    _print_paths(
        authority.make_crl(
            ca_dir,
            out,
            next_update_days=next_update_days,
            ca_passphrase=_passphrase(ca_passphrase_env, "--ca-passphrase-env"),
        )
    )


@certs.command("check")
@click.argument("cert", type=_ExistingFile)
@click.argument("key", type=_ExistingFile)
@click.option("--ca", type=click.Path(path_type=Path, exists=True), help="CA directory or file.")
@_passphrase_env
@_one_line_errors
def check_cmd(cert: Path, key: Path, ca: Path | None, passphrase_env: str | None) -> None:
    """Check that KEY matches CERT, the chain, expiry, key strength and key file mode."""
    result = inspect.check(
        cert, key, ca=ca, passphrase=_passphrase(passphrase_env, "--passphrase-env")
    )
    for warning in result.warnings:
        click.echo(f"warning: {warning}", err=True)
    for problem in result.problems:
        click.echo(f"problem: {problem}", err=True)
    if not result.ok:
        sys.exit(1)
    click.echo(f"ok: {cert}")


@certs.command("rotate")
@click.option("--ca", "ca_dir", required=True, type=_ExistingDir, help="CA directory.")
@click.option("--name", required=True, help="Name of the current signing certificate.")
@click.option("--out", required=True, type=_ExistingDir, help="Directory holding NAME.pem.")
@click.option("--overlap-days", type=int, default=30, show_default=True)
@click.option("--days", type=int, default=397, show_default=True)
@click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="The gateway whose audit log records the rotation and whose partners must import "
    "the new certificate [default: $MAAGW_CONFIG, then config/gateway.toml, if present].",
)
@click.option("--actor", default=None, help="Who rotates (default: os:<user>).")
@_key_type
@_passphrase_env
@_ca_passphrase_env
@_one_line_errors
def rotate_cmd(
    ca_dir: Path,
    name: str,
    out: Path,
    overlap_days: int,
    days: int,
    config_path: Path | None,
    actor: str | None,
    key_type: str,
    passphrase_env: str | None,
    ca_passphrase_env: str | None,
) -> None:
    """Issue a successor signing certificate NAME-<date> next to the current one.

    With the gateway's configuration (--config, $MAAGW_CONFIG or config/gateway.toml),
    the new certificate is recorded in its audit log (so that `maagw audit verify`
    trusts the checkpoints it will sign, and the old one's after the switch), the
    rotation is audited as an operator action, and every partner that must import
    the new certificate is listed with the command it runs.
    """
    settings, why_not = _rotation_settings(config_path, out, name)
    rotation = rotate(
        ca_dir,
        name,
        out,
        overlap_days=overlap_days,
        days=days,
        key_type="rsa" if key_type == "rsa" else "ec",
        passphrase=_passphrase(passphrase_env, "--passphrase-env"),
        ca_passphrase=_passphrase(ca_passphrase_env, "--ca-passphrase-env"),
    )
    _print_paths(rotation.written)
    old, new = pem.load_cert(rotation.old_cert), pem.load_cert(rotation.new_cert)
    click.echo(f"old: {rotation.old_cert} {pem.cert_labels(old)}", err=True)
    click.echo(f"new: {rotation.new_cert} {pem.cert_labels(new)}", err=True)
    until = f"{rotation.overlap_until:%Y-%m-%d}"
    if settings is None:
        click.echo(
            f"not recorded in an audit log: {why_not}; give --config PATH (or set "
            "MAAGW_CONFIG) so that `maagw audit verify` trusts the checkpoints of both "
            "certificates after the switch",
            err=True,
        )
    else:
        who = actor or f"os:{getpass.getuser()}"
        seq = _audit_rotation(settings, who, rotation, old, new)
        click.echo(
            f"recorded: the new signing certificate in the audit log of {settings.gateway_id} "
            f"(up to entry {seq}, actor {who})",
            err=True,
        )
        _warn_if_not_own_ca(settings, new)
        _print_partners(settings, rotation)
    click.echo(
        f"next: publish {rotation.new_cert.name} to every partner now (they run `maagw certs "
        "import-partner --signing-cert` on their side and accept old and new until "
        f"{until}); then point [signing] cert/key at the new files and `maagw reload`; after "
        "the overlap revoke the old certificate with --reason superseded",
        err=True,
    )


def _rotation_settings(
    config_path: Path | None, out: Path, name: str
) -> tuple[Settings | None, str]:
    """The configuration of the gateway whose signing certificate is rotated, or why none.

    The configuration's [signing] cert must be NAME.pem or NAME-*.pem in OUT. An
    explicit --config (or $MAAGW_CONFIG) that does not load or does not match is an
    error, before anything is issued; the default path is used only when it matches.
    """
    from gateway.config.files import load_settings

    explicit = config_path or (
        Path(os.environ["MAAGW_CONFIG"]) if os.environ.get("MAAGW_CONFIG") else None
    )
    path = explicit or _default_config()
    if explicit is None and not path.is_file():
        return None, f"no configuration at {path}"
    try:
        settings = load_settings(path)
    except ConfigError as exc:
        if explicit is not None:
            raise
        return None, f"the configuration at {path} does not load ({exc.code})"
    if is_signing_family(settings.signing.cert, out, name):
        return settings, ""
    mismatch = (
        f"the signing certificate of {path} ({settings.signing.cert}) is not "
        f"{name}.pem or {name}-*.pem in {out}"
    )
    if explicit is not None:
        raise ConfigError(mismatch, code=ErrorCode.CONFIG_ROTATION_MISMATCH)
    return None, mismatch


def _warn_if_not_own_ca(settings: Settings, new: x509.Certificate) -> None:
    try:
        cas = pem.load_certs(settings.tls.ca)
    except ConfigError:
        cas = []
    if not any(pem.issued_directly_by(new, ca) for ca in cas):
        click.echo(
            f"warning: the new certificate is not issued by tls.ca ({settings.tls.ca}); "
            "`maagw audit verify` trusts the checkpoints it signs only while it is the "
            "configured signing certificate",
            err=True,
        )


def _print_partners(settings: Settings, rotation: Rotation) -> None:
    """Every configured partner must import the new certificate before the switch."""
    partners = sorted(settings.partners.values(), key=lambda p: p.id)
    if not partners:
        click.echo("partners: none configured", err=True)
        return
    click.echo(
        f"partners that must import {rotation.new_cert.name} before the switch "
        f"({len(partners)}), each running:",
        err=True,
    )
    for partner in partners:
        click.echo(
            f"  {partner.id} ({partner.url or 'no url'}): maagw certs import-partner "
            f"--id {settings.gateway_id} --ca {settings.tls.ca.name} "
            f"--signing-cert {rotation.new_cert.name}",
            err=True,
        )


def _audit_rotation(
    settings: Settings,
    actor: str,
    rotation: Rotation,
    old: x509.Certificate,
    new: x509.Certificate,
) -> int:
    """Record the new (and, if missing, the old) signing certificate and audit the rotation.

    Returns the seq of the last entry written.
    """
    import asyncio

    from gateway.audit.certs import record_event
    from gateway.audit.chain import AuditEvent
    from gateway.audit.log import AuditLog

    async def record() -> int:
        audit = await AuditLog.open(settings.audit_url, gateway_id=settings.gateway_id)
        try:
            held = {r.sha256 for r in await audit.cert_records()}
            events = [
                record_event(cert, actor=actor, source=source)
                for cert, source in ((old, "rotation: current"), (new, "rotation: successor"))
                if pem.cert_sha256(cert) not in held
            ]
            events.append(
                AuditEvent(
                    event="operator_action",
                    actor=actor,
                    outcome="ok",
                    code=ErrorCode.CERT_ROTATED,
                    reason=f"successor signing certificate {rotation.new_cert.name} issued",
                    details={
                        "action": "certificate_rotation",
                        "old_pin": rotation.old_pin,
                        "new_pin": rotation.new_pin,
                        "old_cert_sha256": pem.cert_sha256(old),
                        "new_cert_sha256": pem.cert_sha256(new),
                        "new_serial": pem.serial_hex(new.serial_number),
                        "overlap_until": f"{rotation.overlap_until:%Y-%m-%d}",
                    },
                )
            )
            return (await audit.append_many(events))[-1]
        finally:
            await audit.close()

    return asyncio.run(record())


@certs.command("fetch-crl")
@click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Gateway configuration [default: $MAAGW_CONFIG, then config/gateway.toml].",
)
@click.option("--partner", "partner_ids", multiple=True, help="Only this partner (repeatable).")
@click.option("--actor", default=None, help="Who fetches (default: os:<user>).")
@_one_line_errors
def fetch_crl_cmd(
    config_path: Path | None, partner_ids: tuple[str, ...], actor: str | None
) -> None:
    """Fetch partners' CRLs now and write the newer ones to their crl files.

    What the gateway does on its own every [crl] fetch_interval_seconds; for a CRL
    that went stale while the gateway was down (it refuses to load one). A running
    gateway puts the new files in force within [crl] check_seconds (or `maagw reload`).
    Exit 1 when a fetch failed (the old CRL file is kept).
    """
    import asyncio

    from gateway.config.files import load_settings
    from gateway.trust import crl
    from gateway.trust.identity import TrustStore

    settings = load_settings(config_path or _default_config())
    unknown = sorted(set(partner_ids) - set(settings.partners))
    if unknown:
        raise ConfigError(
            f"unknown partner(s): {', '.join(unknown)}", code=ErrorCode.CONFIG_PARTNER_ID
        )
    chosen = {p: settings.partners[p] for p in partner_ids or sorted(settings.partners)}
    trust = TrustStore(chosen, allow_stale_crl=True)

    async def fetch_all() -> list[crl.Fetched]:
        return [
            await crl.fetch(
                partner,
                trust.partners[pid],
                timeout=settings.crl.fetch_timeout_seconds,
                max_bytes=settings.crl.max_bytes,
            )
            for pid, partner in chosen.items()
            if trust.partners[pid].crl_path is not None
        ]

    results = asyncio.run(fetch_all())
    failed = False
    installed = []
    for result in results:
        path = trust.partners[result.partner].crl_path
        if result.error is not None:
            failed = True
            click.echo(f"{result.partner}: {result.error} (kept {path})", err=True)
        elif result.write_error is not None:
            failed = True
            click.echo(f"{result.partner}: cannot write {result.write_error}", err=True)
        elif result.changed and result.crl is not None:
            about = crl.describe(result.crl)
            installed.append((result, about))
            click.echo(str(path))
            click.echo(
                f"{result.partner}: CRL number {about['crl_number']}, nextUpdate "
                f"{about['next_update']}, {about['revoked']} revoked, from {result.url}",
                err=True,
            )
        else:
            click.echo(f"{result.partner}: unchanged ({result.url})", err=True)
    if not results:
        click.echo("no partner has a crl file to keep current", err=True)
    if installed:
        _audit_crl_fetch(settings, actor or f"os:{getpass.getuser()}", installed)
    if failed:
        sys.exit(1)


def _audit_crl_fetch(
    settings: Settings, actor: str, installed: list[tuple[Any, dict[str, object]]]
) -> None:
    import asyncio

    from gateway.audit.chain import AuditEvent
    from gateway.audit.log import AuditLog

    async def record() -> None:
        audit = await AuditLog.open(settings.audit_url, gateway_id=settings.gateway_id)
        try:
            await audit.append_many(
                [
                    AuditEvent(
                        event="operator_action",
                        partner=result.partner,
                        actor=actor,
                        outcome="ok",
                        code=ErrorCode.CRL_FETCHED,
                        reason=f"CRL of {result.partner} fetched by the operator",
                        details={"action": "crl_fetch", "source": result.url, **about},
                    )
                    for result, about in installed
                ]
            )
        finally:
            await audit.close()

    asyncio.run(record())


@certs.command("import-partner")
@click.option("--id", "partner_id", required=True, help="Partner id, e.g. XB.")
@click.option("--ca", "ca_file", required=True, type=_ExistingFile, help="The partner's CA.")
@click.option("--tls-cert", multiple=True, type=_ExistingFile, help="Pin this TLS certificate.")
@click.option("--signing-cert", multiple=True, type=_ExistingFile, help="Accept this signer.")
@click.option("--url", help="The partner gateway's URL.")
@click.option("--name", help="Display name of the partner.")
@click.option("--server-name", help="Host name expected in the partner's server certificate.")
@click.option("--crl", type=_ExistingFile, help="The partner's CRL file.")
@click.option("--replace", is_flag=True, help="Replace pins and signing certs instead of adding.")
@click.option(
    "--out", type=_PathArg, default=Path("config/partners"), show_default=True, help="Partners dir."
)
@_one_line_errors
def import_partner_cmd(
    partner_id: str,
    ca_file: Path,
    tls_cert: tuple[Path, ...],
    signing_cert: tuple[Path, ...],
    url: str | None,
    name: str | None,
    server_name: str | None,
    crl: Path | None,
    replace: bool,
    out: Path,
) -> None:
    """Write or update config/partners/ID.toml with a partner's CA, pins and signers."""
    _print_paths(
        partner_import.import_partner(
            partner_id,
            ca_file,
            out,
            tls_certs=tls_cert,
            signing_certs=signing_cert,
            url=url,
            name=name,
            server_name=server_name,
            crl=crl,
            replace=replace,
        )
    )

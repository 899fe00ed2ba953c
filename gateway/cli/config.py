"""``maagw config check | topology``."""

from __future__ import annotations

from pathlib import Path

import click

from gateway.cli.common import config_option, one_line_errors, settings_from
from gateway.errors import ConfigError


@click.group("config")
def config_group() -> None:
    """Check configuration."""


@config_group.command("check")
@config_option
@one_line_errors
def config_check(config_path: Path | None) -> None:
    """Load and validate gateway.toml, partners/ and agreements/; exit 2 on a problem.

    A partner CRL past its nextUpdate is a problem (CONFIG_CRL_STALE) unless the partner
    says crl_stale = "warn"; one within [crl] warning_days of it is a warning line.
    """
    from datetime import timedelta

    from gateway.trust import crl
    from gateway.trust.identity import TrustStore

    settings = settings_from(config_path)
    # every partner's CA, signing certificates and CRL readable, no CRL already stale
    trust = TrustStore(settings.partners)
    horizon = timedelta(days=settings.crl.warning_days)
    for _, partner_trust in sorted(trust.partners.items()):
        st = crl.status(partner_trust, horizon)
        if st is not None and st.state != crl.OK:
            click.echo(f"warning: {crl.warning_text(st)}", err=True)
    for path in (
        settings.tls.server_cert,
        settings.tls.server_key,
        settings.tls.client_cert,
        settings.tls.client_key,
        settings.signing.cert,
        settings.signing.key,
    ):
        if not path.is_file():
            raise ConfigError(f"{settings.path}: {path}: file not found")
    click.echo(
        f"{settings.path}: ok — gateway {settings.gateway_id}, "
        f"{len(settings.partners)} partner(s): {', '.join(sorted(settings.partners)) or '-'}; "
        f"{len(settings.agreements)} agreement(s): {', '.join(sorted(settings.agreements)) or '-'}"
    )


@config_group.command("topology")
@config_option
@click.option(
    "--out",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Write here instead of standard output.",
)
@click.option("--no-prefix", is_flag=True, help="Names without this gateway's broker prefix.")
@click.option(
    "--vhost",
    default=None,
    help="The vhost the definitions name (default: the vhost of broker.url, '/' if none).",
)
@one_line_errors
def config_topology(
    config_path: Path | None, out: Path | None, no_prefix: bool, vhost: str | None
) -> None:
    """The broker topology as a RabbitMQ definitions file (rabbitmqctl import_definitions)."""
    import json

    from gateway.relay.topology import Names, topology, url_vhost

    settings = settings_from(config_path)
    names = Names("" if no_prefix else settings.broker.prefix)
    vhost = vhost or url_vhost(settings.broker.urls[0])
    text = json.dumps(topology(names, settings.partners, vhost), indent=2) + "\n"
    if out is None:
        click.echo(text, nl=False)
    else:
        out.write_text(text)
        click.echo(f"wrote {out}")

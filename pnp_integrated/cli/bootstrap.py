"""``pnpp bootstrap``: the lines a device needs to find the gateway, addressed to the VIP."""

from __future__ import annotations

import click

from ..cns.bootstrap import cns_lines, pnp_lines
from ..config import ConfigError, load_settings


@click.command("bootstrap")
@click.option("--protocol", type=click.Choice(["cns", "pnp"]), required=True,
              help="cns: IOS CNS agents; pnp: the Open PnP agent")
@click.option("--tls", is_flag=True, help="encrypted event connection (CNS) or HTTPS transport (Open PnP)")
def bootstrap(protocol: str, tls: bool) -> None:
    """Print the bootstrap configuration devices need, addressed to the VIP."""
    try:
        settings = load_settings()
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    lines = cns_lines(settings, tls) if protocol == "cns" else pnp_lines(settings, tls)
    click.echo("\n".join(lines))

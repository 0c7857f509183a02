"""The ``pnpp`` command: one group, one module per command family."""

from __future__ import annotations

import click

from ..prime.commands import prime
from .bootstrap import bootstrap
from .ha import ha
from .images import image, token
from .keys import profile_keys
from .lab import lab
from .node import certs, config, db, run, status
from .setup import setup
from .simulate import simulate
from .users import user


@click.group()
@click.version_option(package_name="pnp-integrated", prog_name="pnpp")
def main() -> None:
    """pnp-integrated: the Prime Infrastructure integrated Plug and Play gateway."""


for command in (run, status, db, certs, config, setup, bootstrap, image, token, profile_keys, simulate, lab, prime,
                ha, user):
    main.add_command(command)

__all__ = ["main"]

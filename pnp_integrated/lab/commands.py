"""``pnpp lab``: build and remove the HA lab (two Prime nodes and a devices network in namespaces; root only)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from . import MOVERS, HaLab, LabError

DEFAULT_DIR = "pnp-lab"


def _dir_option(func: object) -> object:
    return click.option("--dir", "root", type=click.Path(file_okay=False, path_type=Path), default=DEFAULT_DIR,
                        show_default=True, help="where the lab keeps its state, databases and logs")(func)


@click.group()
def lab() -> None:
    """The HA lab: two Prime nodes (simulated Prime + gateway) and a devices namespace on one host."""


@lab.command("up")
@_dir_option
@click.option("--mover", type=click.Choice(MOVERS), default="prime", show_default=True,
              help="what moves the VIP: the simulated Prime pair, or keepalived (VRRP)")
@click.option("--prefix", default="pnplab", show_default=True, help="namespace and interface name prefix")
@click.option("--subnet", default="10.77.0", show_default=True, help="the lab's /24 (first three octets)")
@click.option("--workers", type=click.IntRange(1, 16), default=2, show_default=True, help="gateway workers per node")
def lab_up(root: Path, mover: str, prefix: str, subnet: str, workers: int) -> None:
    """Build the lab and start both nodes; returns once both answer /status."""
    if (root / "lab.json").exists():
        try:
            if any(n.pid for n in HaLab.load(root).plan.nodes):
                click.echo(f"pnpp lab: a lab already runs from {root}; `pnpp lab down --dir {root}` first", err=True)
                sys.exit(1)
        except LabError:
            pass
    try:
        built = HaLab.create(root, prefix=prefix, subnet=subnet, mover=mover, workers=workers)
        built.up()
    except LabError as exc:
        click.echo(f"pnpp lab: {exc}", err=True)
        sys.exit(1)
    click.echo(built.describe())


@lab.command("down")
@_dir_option
def lab_down(root: Path) -> None:
    """Stop every process of the lab and remove its namespaces, bridge and PostgreSQL server."""
    try:
        HaLab.load(root).down()
    except LabError as exc:
        click.echo(f"pnpp lab: {exc}", err=True)
        sys.exit(1)
    click.echo(f"lab in {root} is down")


@lab.command("status")
@_dir_option
def lab_status(root: Path) -> None:
    """Which node is ACTIVE and which holds the VIP."""
    try:
        click.echo(HaLab.load(root).describe())
    except LabError as exc:
        click.echo(f"pnpp lab: {exc}", err=True)
        sys.exit(1)

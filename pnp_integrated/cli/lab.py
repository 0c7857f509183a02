"""``pnpp lab``: build and remove the HA lab (two Prime nodes and a devices network in namespaces; root only), or
the standalone lab (a gateway pair and Prime servers of its own)."""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import click

from ..lab import HaLab
from ..lab.fleet import FLEET_CONFIG, FLEET_POST, FLEET_PROFILE
from ..lab.plan import MOVERS, PRIME_HA_MODES, STANDALONE_MOVERS, LabError

DEFAULT_DIR = "pnp-lab"


def _dir_option(func: object) -> object:
    return click.option("--dir", "root", type=click.Path(file_okay=False, path_type=Path), default=DEFAULT_DIR,
                        show_default=True, help="where the lab keeps its state, databases and logs")(func)


@click.group()
def lab() -> None:
    """The HA lab: two Prime nodes (simulated Prime + gateway) and a devices namespace on one host."""


@lab.command("up")
@_dir_option
@click.option("--mover", type=click.Choice(sorted({*MOVERS, *STANDALONE_MOVERS})), default=None,
              help="what moves the VIP: the simulated Prime pair (default), or keepalived (VRRP); standalone: the "
                   "gateways' built-in mover (default) or keepalived")
@click.option("--standalone", is_flag=True,
              help="a standalone gateway pair with Prime servers of its own instead of two Prime nodes")
@click.option("--prime-ha", type=click.Choice(PRIME_HA_MODES), default="none", show_default=True,
              help="standalone: Prime without HA (one server), with a VIP, or with different addresses")
@click.option("--prefix", default="pnplab", show_default=True, help="namespace and interface name prefix")
@click.option("--subnet", default="10.77.0", show_default=True, help="the lab's /24 (first three octets)")
@click.option("--workers", type=click.IntRange(1, 16), default=2, show_default=True, help="gateway workers per node")
def lab_up(root: Path, mover: str | None, standalone: bool, prime_ha: str, prefix: str, subnet: str,
           workers: int) -> None:
    """Build the lab and start both nodes; returns once both answer /status."""
    from ..lab.standalone import StandaloneLab

    if (root / "lab.json").exists():
        try:
            if any(n.pid for n in HaLab.load(root).plan.nodes):
                click.echo(f"pnpp lab: a lab already runs from {root}; `pnpp lab down --dir {root}` first", err=True)
                sys.exit(1)
        except LabError:
            pass
    try:
        if standalone:
            built: HaLab = StandaloneLab.create(root, prefix=prefix, subnet=subnet, mover=mover or "builtin",
                                                workers=workers, prime_ha=prime_ha)
        elif prime_ha != "none":
            raise LabError("--prime-ha is for the standalone lab (--standalone); the integrated lab's Prime pair "
                           "moves its VIP")
        else:
            built = HaLab.create(root, prefix=prefix, subnet=subnet, mover=mover or "prime", workers=workers)
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


@lab.command("fleet")
@click.option("--cns", "cns_count", type=click.IntRange(0, 20_000), default=150, show_default=True,
              help="CNS devices (event agent through the plain dispatcher)")
@click.option("--pnp", "pnp_count", type=click.IntRange(0, 20_000), default=150, show_default=True,
              help="Open PnP devices (HTTP)")
@click.option("--serial-prefix", default="FLT", show_default=True, help="serials are <prefix>C<n> and <prefix>P<n>")
@click.option("--ramp", type=click.FloatRange(0), default=10.0, show_default=True,
              help="seconds over which the devices start")
@click.option("--deadline", type=click.FloatRange(1), default=150.0, show_default=True,
              help="seconds every device has to finish its day 0")
@click.option("--time-scale", type=click.FloatRange(0, 1), default=0.01, show_default=True,
              help="Open PnP backoffs and Retry-After pauses are multiplied by this")
@click.option("--results", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="write one JSON line per device here as it finishes")
def lab_fleet(cns_count: int, pnp_count: int, serial_prefix: str, ramp: float, deadline: float, time_scale: float,
              results: Path | None) -> None:
    """Play CNS and Open PnP devices that ride out gateway failovers (run it in the devices namespace).

    A profile claims the serials first (needs the database). Exit 1 unless every device finished its day 0.
    """
    from ..lab.fleet import FleetResult, result_line, run_fleet
    from .common import app_or_exit, settings_or_exit

    settings = settings_or_exit()
    cns = [f"{serial_prefix}C{n:05d}" for n in range(1, cns_count + 1)]
    pnp = [f"{serial_prefix}P{n:05d}" for n in range(1, pnp_count + 1)]
    with app_or_exit().app_context():
        ensure_fleet_profile(cns + pnp)
    lock = threading.Lock()
    out = results.open("a") if results is not None else None

    def record(result: FleetResult) -> None:
        if out is not None:
            with lock:
                out.write(result_line(result) + "\n")
                out.flush()

    click.echo(f"{len(cns)} CNS and {len(pnp)} Open PnP devices against {settings.vip} ...", err=True)
    started = time.monotonic()
    try:
        done = run_fleet(cns, pnp, host=settings.vip, dispatcher_port=settings.dispatcher_plain_port,
                         http_port=settings.http_port, ramp=ramp, deadline=deadline, time_scale=time_scale,
                         on_result=record)
    finally:
        if out is not None:
            out.close()
    failed = [r for r in done if not r.ok]
    for r in failed[:20]:
        click.echo(f"{r.serial} ({r.protocol}) FAILED after {r.seconds:.1f}s: {r.detail}")
    click.echo(f"{len(done) - len(failed)}/{len(done)} devices finished day 0 in {time.monotonic() - started:.1f}s, "
               f"{sum(r.reconnects for r in done)} reconnects or retries, {len(failed)} failed")
    sys.exit(1 if failed else 0)


def ensure_fleet_profile(serials: list[str]) -> None:
    """A profile claiming ``serials`` with a configuration and a post-PnP template (app context needed)."""
    from sqlalchemy import select

    from ..models import Profile, db

    profile = db.session.scalar(select(Profile).where(Profile.name == FLEET_PROFILE))
    if profile is None:
        profile = Profile(name=FLEET_PROFILE, match_serials=[])
        db.session.add(profile)
    known = set(profile.match_serials or [])
    profile.match_serials = [*(profile.match_serials or []), *(s for s in serials if s not in known)]
    profile.config_template = FLEET_CONFIG
    profile.post_template = FLEET_POST
    db.session.commit()

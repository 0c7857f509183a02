"""``pnpp ha``: the standalone gateway pair: hand the VIP back to the primary, and the pair's watch process."""

from __future__ import annotations

import os
import subprocess
import sys

import click

from ..children import die_with_parent, port_holder
from ..config import Settings
from .common import fail, settings_or_exit

WATCH_MODULE = "pnp_integrated.vip_pair"


def _pair_settings() -> Settings:
    settings = settings_or_exit()
    if not settings.standalone:
        fail("the integrated gateway follows Prime's VIP and moves nothing itself: hand Prime back to its primary "
             "with `pnpp prime failback` (the simulated Prime) or Prime's own `ncs ha failback`")
    if not settings.gateway_in_pair:
        fail("this standalone gateway has no HA peer (PNP_GATEWAY_HA is none): there is nothing to fail back")
    return settings


@click.group()
def ha() -> None:
    """The standalone gateway HA pair (PNP_GATEWAY_HA=pair)."""


@ha.command()
def failback() -> None:
    """Hand the gateway VIP back to the primary gateway; run it on either gateway of the pair.

    With the built-in mover the active secondary gives the VIP up and the primary takes it within a second or two
    (it then serves devices once it holds the database lease too). With keepalived, keepalived decides: this says
    what to do instead.
    """
    from ..healthcheck import ask_health

    settings = _pair_settings()
    if settings.gateway_vip_mover == "keepalived":
        fail("keepalived moves the gateway VIP (PNP_GATEWAY_VIP_MOVER=keepalived), with nopreempt so that it stays "
             "on the secondary: restart keepalived on the secondary gateway (`systemctl restart keepalived` there); "
             "it gives the VIP up as it stops, and the primary, whose priority is higher, takes it")
    answer = ask_health(settings.node_addr, settings.health_port, "/ha/failback", "POST", timeout=10.0)
    if answer is None:
        fail(f"the pair's health monitor does not answer on {settings.node_addr}:{settings.health_port}: is "
             "`pnpp run` up on this gateway?")
    if not answer.get("ok"):
        fail(f"failback refused: {answer.get('detail') or answer.get('error') or answer}")
    click.echo(f"failback: {answer.get('detail', 'done')}")


@ha.command()
def watch() -> None:
    """Run the pair's health monitor and VIP watch in the foreground (``pnpp run`` starts it by itself).

    For a gateway whose gunicorn a supervisor starts directly: run this beside it, under the same settings.
    """
    _pair_settings()
    os.execv(sys.executable, [sys.executable, "-m", WATCH_MODULE])


def start_pair_watch(settings: Settings) -> subprocess.Popen[bytes] | None:
    """``pnpp run`` in a standalone gateway pair: start the pair's watch beside gunicorn (``None`` elsewhere).

    Returns at once (the watch comes up while gunicorn does); exits with a message when its port is taken. A watch
    that dies leaves this gateway without the VIP, and its peer, finding no answer, takes it over.
    """
    if not (settings.standalone and settings.gateway_in_pair):
        return None
    holder = port_holder(settings.health_port)
    if holder:
        fail(f"the gateway pair's health monitor cannot start: port {settings.health_port} (PNP_HEALTH_PORT) is held "
             f"by {holder}; stop that process or move PNP_HEALTH_PORT on both gateways", 2)
    return subprocess.Popen([sys.executable, "-m", WATCH_MODULE], preexec_fn=die_with_parent)


def stop_pair_watch(child: subprocess.Popen[bytes] | None) -> None:
    """SIGTERM the pair's watch (it gives the VIP up) and wait for it; kill it if it hangs."""
    if child is None or child.poll() is not None:
        return
    child.terminate()
    try:
        child.wait(10)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait(5)

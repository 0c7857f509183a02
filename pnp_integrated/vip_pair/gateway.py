"""The standalone gateway pair's own watch: the process ``pnpp run`` starts beside gunicorn in a gateway pair.

It serves the pair's health monitor on ``health_port`` at the gateway's own address (a standalone host has no Prime
of its own there) and watches the peer gateway's. With ``gateway_vip_mover = builtin`` it moves the gateway VIP by
the rules of :mod:`.watch`; with keepalived it only reports (whether the VIP is here, and the peer as last seen),
for the status table's "PnP Gateway HA state" row.

Holding the VIP is half of ACTIVE: the gateway's workers follow the VIP (``pnp_integrated.ha``) and still need the
database leader lease, so two gateways that both hold the VIP never both serve devices. A gateway is healthy while
its monitoring port is served and the database's port accepts a connection (a gateway cut off from the database
cannot serve, and is then the one that was cut off, not its peer). Served means a listener is there: a connection
refused says no worker listens (not started yet, or gone), while one that is slow to be accepted or to finish its
handshake says a worker is busy, with a storm of devices, say. A busy gateway is a healthy one: moving the VIP away
from it would only move the storm to its peer and back (gunicorn itself replaces a worker that hangs). The checks
run in the background (:class:`ServingProbe`), so a slow one never delays the watch.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import ssl
import threading
import time

from ..config import Settings
from .health import HealthMonitor, HealthState
from .placement import VipPlacement, address_is_local
from .watch import PeerWatch

log = logging.getLogger(__name__)

PORT_TIMEOUT = 0.5  # the monitoring port: longer only means busy, which is served
DATABASE_TIMEOUT = 1.0  # the database's port: longer means cut off (a pulled cable answers nothing)
WATCH_NICENESS = -10  # the watch process runs ahead of the workers (it needs root for the VIP anyway)


def monitoring_port_served(port: int, timeout: float = PORT_TIMEOUT) -> bool:
    """Whether a listener serves the gateway's monitoring port on this host (refused: nobody does).

    The TLS handshake is completed when it can be, so a check leaves no "handshake refused" line in the gateway's
    log; one that does not finish within ``timeout`` is a busy worker's, and counts as served.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # liveness only: nothing is read from it
    try:
        raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    except TimeoutError:
        return True  # the accept queue is full: a worker is there, and busy
    except OSError:
        return False
    try:
        with ctx.wrap_socket(raw, server_hostname="127.0.0.1"):
            pass
    except (OSError, ssl.SSLError):
        pass  # accepted by a listener: served, whatever became of the handshake
    finally:
        raw.close()
    return True


def database_endpoint(url: str) -> tuple[str, int] | None:
    """(host, port) of a PostgreSQL URL reached over TCP; ``None`` for SQLite or a Unix socket."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if parsed.get_backend_name() != "postgresql" or not parsed.host or parsed.host.startswith("/"):
        return None
    return parsed.host, parsed.port or 5432


def reachable(endpoint: tuple[str, int] | None, timeout: float = DATABASE_TIMEOUT) -> bool:
    """Whether a TCP connection to ``endpoint`` opens within ``timeout`` (no endpoint: nothing to reach)."""
    if endpoint is None:
        return True
    try:
        with socket.create_connection(endpoint, timeout=timeout):
            return True
    except OSError:
        return False


class ServingProbe:
    """The gateway's own check, measured in the background every ``interval``: its monitoring port is served and the
    database is reachable. Calling it returns the last reading (False until the first one succeeds)."""

    def __init__(self, settings: Settings, interval: float = 1.0) -> None:
        self.monitoring_port = settings.monitoring_port
        self.database = database_endpoint(settings.sqlalchemy_url)
        self.interval = interval
        self.ok = False
        self._stopping = threading.Event()

    def measure(self) -> bool:
        self.ok = monitoring_port_served(self.monitoring_port) and reachable(self.database)
        return self.ok

    def run(self) -> None:
        while not self._stopping.is_set():
            started = time.monotonic()
            self.measure()
            self._stopping.wait(max(0.05, self.interval - (time.monotonic() - started)))

    def stop(self) -> None:
        self._stopping.set()

    def __call__(self) -> bool:
        return self.ok


def gateway_pair_watch(settings: Settings, probe: ServingProbe, *, interval: float = 1.0) -> PeerWatch:
    """The watch of this gateway of a pair (starts standby: the pair decides who takes the VIP)."""
    state = HealthState(settings.node_name, settings.gateway_role, "standby", "pair", settings.vip,
                        settings.gateway_peer)
    placement = None
    observe = None
    if settings.gateway_vip_mover == "builtin":
        placement = VipPlacement(settings.vip, settings.gateway_vip_prefix, settings.gateway_vip_interface)
    else:
        def observe() -> bool:
            return address_is_local(settings.vip)
    return PeerWatch(state, settings.gateway_peer, settings.health_port, placement=placement, interval=interval,
                     failback=settings.gateway_failback, hold_down=settings.gateway_hold_down,
                     healthy=probe, observe=observe, heal="longest", subject="gateway")


def serve_gateway_pair(settings: Settings) -> None:
    """Run the pair's health monitor and watch until SIGTERM or SIGINT (gevent-patched process).

    A clean stop gives the VIP up at once (as keepalived does); a crash leaves it for the peer to take over.
    """
    import gevent
    from gevent.event import Event

    try:
        # A watch starved of CPU by the gateway's own busy workers would answer its peer late and look dead to it.
        os.nice(WATCH_NICENESS)
    except OSError:
        log.info("gateway pair: running at normal priority (raising it needs CAP_SYS_NICE)")
    probe = ServingProbe(settings)
    watch = gateway_pair_watch(settings, probe)
    monitor = HealthMonitor(settings, watch.state, host=settings.node_addr, failback=watch.failback,
                            trusted=(settings.node_addr,))
    done = Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        gevent.signal_handler(sig, done.set)
    monitor.start()
    watch.start_state()
    greenlets = [gevent.spawn(probe.run), gevent.spawn(watch.run)]
    log.info("gateway pair: %s (%s) watching %s (VIP %s moved by %s, failback %s)", settings.node_name,
             settings.gateway_role, settings.gateway_peer, settings.vip, settings.gateway_vip_mover,
             settings.gateway_failback + (f", hold-down {settings.gateway_hold_down:g} s"
                                          if settings.gateway_failback == "auto" else ""))
    try:
        done.wait()
    finally:
        watch.stop()
        probe.stop()
        gevent.joinall(greenlets, timeout=3)
        watch.release()
        monitor.stop()

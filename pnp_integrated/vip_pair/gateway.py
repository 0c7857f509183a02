"""The standalone gateway pair's own watch: the process ``pnpp run`` starts beside gunicorn in a gateway pair.

It serves the pair's health monitor on ``health_port`` at the gateway's own address (a standalone host has no Prime
of its own there) and watches the peer gateway's. With ``gateway_vip_mover = builtin`` it moves the gateway VIP by
the rules of :mod:`.watch`; with keepalived it only reports (whether the VIP is here, and the peer as last seen),
for the status table's "PnP Gateway HA state" row.

Holding the VIP is half of ACTIVE: the gateway's workers follow the VIP (``pnp_integrated.ha``) and still need the
database leader lease, so two gateways that both hold the VIP never both serve devices. A gateway is healthy when its
monitoring port completes a TLS handshake (a worker is up and answering) and the database's port accepts a
connection (a gateway cut off from the database cannot serve, and is then the one that was cut off, not its peer).
The two are measured in the background with a generous time limit (:class:`ServingProbe`): a gateway busy with
thousands of devices answers slowly, and a slow answer must delay the reading, not move the VIP away from it.
"""

from __future__ import annotations

import logging
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

PROBE_TIMEOUT = 5.0  # each of the gateway's own checks: milliseconds when idle, seconds under a storm of devices


def monitoring_port_answers(port: int, timeout: float = PROBE_TIMEOUT) -> bool:
    """Whether the gateway's monitoring port on this host completes a TLS handshake within ``timeout``."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # liveness only: nothing is read from it
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as raw, \
                ctx.wrap_socket(raw, server_hostname="127.0.0.1"):
            return True
    except (OSError, ssl.SSLError):
        return False


def database_endpoint(url: str) -> tuple[str, int] | None:
    """(host, port) of a PostgreSQL URL reached over TCP; ``None`` for SQLite or a Unix socket."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if parsed.get_backend_name() != "postgresql" or not parsed.host or parsed.host.startswith("/"):
        return None
    return parsed.host, parsed.port or 5432


def reachable(endpoint: tuple[str, int] | None, timeout: float = PROBE_TIMEOUT) -> bool:
    """Whether a TCP connection to ``endpoint`` opens within ``timeout`` (no endpoint: nothing to reach)."""
    if endpoint is None:
        return True
    try:
        with socket.create_connection(endpoint, timeout=timeout):
            return True
    except OSError:
        return False


class ServingProbe:
    """The gateway's own check, measured in the background every ``interval``: its monitoring port answers and the
    database is reachable. Calling it returns the last reading (False until the first one succeeds)."""

    def __init__(self, settings: Settings, interval: float = 1.0, timeout: float = PROBE_TIMEOUT) -> None:
        self.monitoring_port = settings.monitoring_port
        self.database = database_endpoint(settings.sqlalchemy_url)
        self.interval = interval
        self.timeout = timeout
        self.ok = False
        self._stopping = threading.Event()

    def measure(self) -> bool:
        self.ok = (monitoring_port_answers(self.monitoring_port, self.timeout)
                   and reachable(self.database, self.timeout))
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

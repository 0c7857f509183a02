"""The simulated Prime node process: broker, health monitor and the Prime-side event sink.

``python -m pnp_integrated.prime`` (or ``pnpp prime serve``) runs it in the foreground under gevent. The broker is
the embedded one (:mod:`.broker`) or Debian's ActiveMQ (:mod:`.activemq`); either way it listens with TLS on
``broker_port`` and in plain text on ``127.0.0.1:bus_port``. The sink consumes gateway events over the plain port
into ``<data_dir>/prime/events.sqlite3``. With a peer, the node takes part in Prime HA (:mod:`.ha`): the pair
watches each other's health monitors and the active node holds the VIP.
"""

from __future__ import annotations

import logging
import signal
import socket
import time
from pathlib import Path
from typing import Any

from ..children import die_with_parent
from ..config import Settings
from .accounts import PRIME_LOGIN, AccountStore, accounts_path, authenticator, prime_passcode
from .broker import Broker, BrokerController, BrokerPorts, MessageStore, require_client_certificates
from .ha import PeerWatch, VipPlacement
from .health import HealthMonitor, HealthState
from .sink import EventSink, EventStore

log = logging.getLogger(__name__)

BROKERS = ("embedded", "activemq")


def prime_dir(settings: Settings) -> Path:
    return settings.data_dir / "prime"


def events_path(settings: Settings) -> Path:
    return prime_dir(settings) / "events.sqlite3"


class PrimeServer:
    """Everything one simulated Prime node runs; ``start`` returns once every port is bound."""

    def __init__(self, settings: Settings, *, broker: str = "embedded", role: str = "primary",
                 state: str = "active", peer: str = "", placement: VipPlacement | None = None,
                 failback: str = "manual", hold_down: float = 30.0, ha_interval: float = 1.0,
                 address: str = "0.0.0.0") -> None:
        if broker not in BROKERS:
            raise ValueError(f"broker {broker!r} must be one of {', '.join(BROKERS)}")
        self.settings = settings
        self.broker_kind = broker
        self.address = address  # where the broker's TLS port and the health monitor listen (every address: 0.0.0.0)
        self.health_state = HealthState(settings.node_name, role, state, settings.ha_mode, settings.vip, peer)
        self.watch: PeerWatch | None = None
        if peer:
            self.watch = PeerWatch(settings, self.health_state, peer, placement=placement, interval=ha_interval,
                                   failback=failback, hold_down=hold_down)
        self._watch_greenlet: Any = None
        self.broker: BrokerController | None = None
        self.activemq: Any = None
        self.health: HealthMonitor | None = None
        self.sink: EventSink | None = None
        self._sink_greenlet: Any = None
        self._store: MessageStore | None = None

    def start(self) -> None:
        """Start the broker, then the health monitor, then the sink; undo everything on failure."""
        import gevent

        from ..tls import server_context

        prime_dir(self.settings).mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            passcode = prime_passcode(self.settings, activemq=self.broker_kind == "activemq")
            if self.broker_kind == "embedded":
                self._store = MessageStore(prime_dir(self.settings) / "broker.sqlite3")
                core = Broker(self._store, node=self.settings.node_name)
                ports = BrokerPorts(self.address, self.settings.broker_port, "127.0.0.1", self.settings.bus_port)
                context = server_context(self.settings)
                if self.settings.broker_client_ca_file:
                    require_client_certificates(context, self.settings.broker_client_ca_file)
                # The process is gevent-patched: the pool's threads are real ones, and scrypt releases the GIL.
                authenticate = authenticator(AccountStore(accounts_path(self.settings)),
                                             offload=gevent.get_hub().threadpool.apply)
                self.broker = BrokerController(core, ports, context=context,
                                               authenticate=authenticate,
                                               handshake_timeout=self.settings.tls_handshake_timeout,
                                               idle_timeout=self.settings.broker_idle_timeout)
                self.broker.start()
            else:
                from .activemq import ActiveMQProcess

                self.activemq = ActiveMQProcess(self.settings)
                self.activemq.start()
            self.health = HealthMonitor(self.settings, self.health_state, host=self.address,
                                        failback=self.watch.failback if self.watch is not None else None)
            self.health.start()
            if self.watch is not None:
                self.watch.start_state()
                self._watch_greenlet = gevent.spawn(self.watch.run)
            self.sink = EventSink(EventStore(events_path(self.settings)), "127.0.0.1", self.settings.bus_port,
                                  login=(PRIME_LOGIN, passcode))
            self._sink_greenlet = gevent.spawn(self.sink.run)
        except BaseException:
            self.stop()
            raise
        clients = (f" (client certificates from {self.settings.broker_client_ca_file})"
                   if self.settings.broker_client_ca_file else "")
        log.info("simulated Prime %s (%s, %s) up: broker %s TLS :%s%s, bus 127.0.0.1:%s, health :%s",
                 self.settings.node_name, self.health_state.role, self.health_state.state, self.broker_kind,
                 self.settings.broker_port, clients, self.settings.bus_port, self.settings.health_port)

    def stop(self) -> None:
        """Stop the HA watch, the sink, the health monitor and the broker (draining connections).

        The VIP stays where it is: a stopped Prime node is a failed one, and its peer takes the VIP over.
        """
        if self.watch is not None:
            self.watch.stop()
            if self._watch_greenlet is not None:
                self._watch_greenlet.join(timeout=3)
                self._watch_greenlet = None
        if self.sink is not None:
            self.sink.stop()
            if self._sink_greenlet is not None:
                self._sink_greenlet.join(timeout=3)
                self._sink_greenlet.kill(block=False)
            self.sink.store.close()
            self.sink = None
        if self.health is not None:
            self.health.stop()
            self.health = None
        if self.broker is not None:
            self.broker.stop(self.settings.drain_timeout)
            self.broker = None
        if self.activemq is not None:
            self.activemq.stop()
            self.activemq = None
        if self._store is not None:
            self._store.close()
            self._store = None


def serve_forever(server: PrimeServer) -> None:
    """Run until SIGTERM or SIGINT (gevent-patched process)."""
    import gevent
    from gevent.event import Event

    done = Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        gevent.signal_handler(sig, done.set)
    server.start()
    try:
        done.wait()
    finally:
        log.info("simulated Prime stopping")
        server.stop()


def wait_for_ports(ports: list[tuple[str, int]], timeout: float, alive: Any = None) -> None:
    """Return once every (host, port) accepts connections; raise ``TimeoutError`` naming what is missing.

    ``alive`` (optional) is called between attempts; when it returns False waiting stops with ``RuntimeError``.
    """
    deadline = time.monotonic() + timeout
    pending = list(ports)
    while pending:
        host, port = pending[0]
        try:
            with socket.create_connection((host, port), timeout=0.5):
                pending.pop(0)
                continue
        except OSError:
            pass
        if alive is not None and not alive():
            raise RuntimeError(f"the process exited before {host}:{port} was listening")
        if time.monotonic() > deadline:
            raise TimeoutError(f"nothing listening on {', '.join(f'{h}:{p}' for h, p in pending)} after {timeout:g}s")
        time.sleep(0.1)


class PrimeProcess:
    """The simulated Prime as a child process (``pnpp run``, tests): ``start`` returns once its ports accept."""

    def __init__(self, settings: Settings, *, broker: str = "embedded", env: dict[str, str] | None = None,
                 start_timeout: float | None = None, stderr: Any = None) -> None:
        self.settings = settings
        self.broker = broker
        self.env = env
        self.start_timeout = start_timeout or (120.0 if broker == "activemq" else 30.0)
        self.stderr = stderr
        self.process: Any = None

    def start(self) -> None:
        """Start it and wait for the bus, broker and health ports; raise ``RuntimeError`` when it does not come up."""
        import subprocess
        import sys

        cmd = [sys.executable, "-m", "pnp_integrated.prime", "serve", "--broker", self.broker]
        # Own process group: kill() takes an ActiveMQ grandchild down with it; and it stops when its parent dies.
        self.process = subprocess.Popen(cmd, env=self.env, stderr=self.stderr, start_new_session=True,
                                        preexec_fn=die_with_parent)
        ports = [("127.0.0.1", self.settings.bus_port), ("127.0.0.1", self.settings.broker_port),
                 ("127.0.0.1", self.settings.health_port)]
        try:
            wait_for_ports(ports, self.start_timeout, alive=lambda: self.process.poll() is None)
        except (TimeoutError, RuntimeError) as exc:
            self.stop()
            raise RuntimeError(f"the simulated Prime ({self.broker} broker) did not start: {exc}") from exc

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM (the broker drains), SIGKILL after ``timeout``."""
        import subprocess

        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)

    def kill(self) -> None:
        """SIGKILL: a crash, nothing flushed (its process group too, so an ActiveMQ child dies with it)."""
        import os

        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            process.wait(10)

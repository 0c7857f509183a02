"""Leader election among the gateway's workers (and, in HA, nodes): the ``leader`` lease decides who runs the bridge.

Every worker runs a :class:`LeaderLoop`. Each round it tries to take or renew the lease; the holder starts the
:class:`~.bridge.PrimeBridge` and keeps it running while the lease is renewed, and stops it as soon as a renewal
fails. A worker that exits releases the lease so another one takes over at its next round instead of at expiry.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from flask import Flask

from ..extension import gateway_state
from . import lease
from .bridge import PrimeBridge

log = logging.getLogger(__name__)

EXTENSION_KEY = "pnp_bus"


class LeaderLoop:
    """Competes for the lease every ``renew_every`` seconds and runs the bridge while it holds it."""

    def __init__(self, app: Flask, *, ttl: float = 15.0, renew_every: float = 5.0, bridge_options: Any = None) -> None:
        self.app = app
        self.ttl = ttl
        self.renew_every = renew_every
        self.holder = lease.holder_id(gateway_state(app).settings.node_name)
        self.term: int | None = None
        self._held_until = 0.0
        self._bridge_options = dict(bridge_options or {})
        self.bridge: PrimeBridge | None = None
        self._bridge_thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def is_leader(self) -> bool:
        """True while our last successful renewal has not expired (checked by the bridge before each batch)."""
        return self.term is not None and time.monotonic() < self._held_until

    def start(self) -> None:
        # A thread is a greenlet once gevent has patched the worker; tests run it as a real thread.
        self._thread = threading.Thread(target=self._run, name="pnp-leader", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the bridge, release the lease, end the loop."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self._stop_bridge(timeout)
        if self.term is not None:
            with self.app.app_context():
                lease.release(self.holder)
            self.term = None

    def _run(self) -> None:
        while not self._stopping.is_set():
            started = time.monotonic()
            try:
                with self.app.app_context():
                    term = lease.try_hold(self.holder, self.ttl)
            except Exception:  # the database may be briefly unreachable: not leader this round
                log.exception("leader lease check failed")
                term = None
            if term is not None:
                if self.term != term:
                    log.info("%s is the leader (term %s): starting the Prime bridge", self.holder, term)
                self.term = term
                self._held_until = started + self.ttl * 0.8  # renew well before others may take it
                if self._bridge_thread is None or not self._bridge_thread.is_alive():
                    self._start_bridge()
            elif self.term is not None:
                log.warning("%s lost the leader lease: stopping the Prime bridge", self.holder)
                self.term = None
                self._stop_bridge()
            self._stopping.wait(self.renew_every)

    def _start_bridge(self) -> None:
        self.bridge = PrimeBridge(self.app, holder=self.holder, is_leader=lambda: self.is_leader,
                                  **self._bridge_options)
        self._bridge_thread = threading.Thread(target=self.bridge.run, name="pnp-prime-bridge", daemon=True)
        self._bridge_thread.start()

    def _stop_bridge(self, timeout: float = 10.0) -> None:
        if self.bridge is not None:
            self.bridge.stop()
        if self._bridge_thread is not None:
            self._bridge_thread.join(timeout)
        self.bridge = None
        self._bridge_thread = None


def start_leader_loop(app: Flask, **options: Any) -> LeaderLoop:
    """Start this worker's leader loop (gunicorn ``post_worker_init`` via ``runtime.start_worker``)."""
    loop = LeaderLoop(app, **options)
    app.extensions[EXTENSION_KEY] = loop
    loop.start()
    return loop


def stop_leader_loop(app: Flask) -> None:
    """Stop this worker's leader loop, if any (``worker_exit`` via ``runtime.stop_worker``)."""
    loop = app.extensions.pop(EXTENSION_KEY, None)
    if loop is not None:
        loop.stop(gateway_state(app).settings.drain_timeout)

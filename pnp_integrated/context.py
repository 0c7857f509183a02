"""The per-app state of a gateway node: one typed object behind one ``app.extensions`` key, and its accessors.

Everything a worker knows about itself lives here: the settings and certificates it was built with, its HA role
(a cache of facts whose source of truth is the kernel's address table and the lease row), and the objects its
process started (listeners, CNS worker, leader loop, the lease's engine). The modules that own those objects fill
the fields in; the rest of the package reads them through the functions below, so no module needs the wiring in
:mod:`.extension` and no two modules reach into each other's keys.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

from flask import Flask, current_app, has_app_context

from .config import Settings
from .models import utcnow
from .tls import CertPaths

EXTENSION_KEY = "pnp_gateway"
RETRY_AFTER_SECONDS = 10  # what a device refused while the node is PASSIVE is told to wait
# ... while the VIP is already here and the node is taking the leader lease over: it is ACTIVE within a second, and
# a device told to wait 10 s then would come back long after every other one.
TAKING_OVER_RETRY_AFTER_SECONDS = 2
# How long a device that arrives while the node is taking over is held for the lease instead of being sent away: the
# lease is takeable at most HA_STALE_AFTER (3 s) after the dead holder's last renewal, and the VIP itself moves about
# 3 s after a death, so the wait is a fraction of a second, where a refusal costs the device its Retry-After.
TAKING_OVER_HOLD_SECONDS = 2.0
TAKING_OVER_POLL_SECONDS = 0.05

log = logging.getLogger(__name__)


@dataclass
class NodeRole:
    """This worker's view of the node's HA role: ACTIVE needs the VIP here and, with HA, the leader lease."""

    settings: Settings
    vip_ok: bool = True
    lease_node: str = ""
    lease_expires: dt.datetime | None = None
    transitions: int = 0
    state: str = field(default="ACTIVE")

    @property
    def node_leads(self) -> bool:
        """Whether the leader lease was last seen held by a worker of this node (which: ``LeaderLoop.is_leader``)."""
        return self.lease_node == self.settings.node_name

    def evaluate(self, now: dt.datetime) -> str:
        """Recompute ACTIVE/PASSIVE from the cached facts; count transitions."""
        if not self.settings.gateway_in_pair:
            new = "ACTIVE"
        else:
            lease_ok = self.node_leads and self.lease_expires is not None and self.lease_expires > now
            new = "ACTIVE" if self.vip_ok and lease_ok else "PASSIVE"
        if new != self.state:
            self.transitions += 1
            log.info("gateway is now %s (VIP %s on this node: %s, lease holder: %s)",
                     new, self.settings.vip, self.vip_ok, self.lease_node or "none")
            self.state = new
        return new

    @property
    def reason(self) -> str:
        if self.state == "ACTIVE":
            return f"VIP {self.settings.vip} here" + (", lease held" if self.settings.gateway_in_pair else "")
        if not self.vip_ok:
            return f"VIP {self.settings.vip} is not on this node"
        return f"leader lease held by {self.lease_node or 'nobody'}"


@dataclass
class GatewayState:
    """Everything per app and per worker process; created by the extension, filled in by the modules that own it."""

    settings: Settings
    certs: CertPaths
    role: NodeRole
    migrate: Any = None  # flask_migrate.Migrate
    write_turn: Any = None  # database.SQLiteWriteTurn on SQLite, None on PostgreSQL
    listeners: Any = None  # this process's listeners.ListenerController, once started
    cns_worker: Any = None  # cns.worker.CnsWorker of this process (its pid says which)
    leader: Any = None  # bus.leader.LeaderLoop of this process, while it runs
    lease_engine: Any = None  # bus.lease: the PostgreSQL engine of lease calls, made after the fork
    disk: Any = None  # storage.DiskWatch: this worker's last reading of the node's free space
    readings: dict[str, Any] = field(default_factory=dict)  # status.SharedReading by name (status, metrics)
    status_gate: Any = None  # a semaphore: how many /status requests this worker serves at once


def gateway_state(app: Flask | None = None) -> GatewayState:
    """The :class:`GatewayState` of ``app`` (default: the current app); a clear error outside a gateway app."""
    if app is None:
        if not has_app_context():
            raise RuntimeError("no gateway app here: call this inside an app context (app.app_context())")
        app = current_app._get_current_object()  # type: ignore[attr-defined]
    state = app.extensions.get(EXTENSION_KEY)
    if not isinstance(state, GatewayState):
        raise RuntimeError(f"{app.name} is not a gateway app: create it with pnp_integrated.create_app()")
    return state


def current_settings() -> Settings:
    return gateway_state().settings


def node_role(app: Flask | None = None) -> NodeRole:
    return gateway_state(app).role


def accepting_devices(app: Flask | None = None, *, hold: float = 0.0) -> bool:
    """Whether this node serves devices right now (ACTIVE). Protocol adapters refuse new sessions when False.

    The lease expiry is re-checked at every call, so a node whose leader vanished stops accepting without waiting
    for the next round of its leader loop. ``hold``: while the node is taking over (the VIP here, the lease not yet
    taken), wait up to that many seconds for it to turn ACTIVE (a cooperative sleep in a gevent worker).
    """
    role = node_role(app)
    if role.evaluate(utcnow()) == "ACTIVE":
        return True
    deadline = time.monotonic() + hold
    while role.vip_ok and time.monotonic() < deadline:
        time.sleep(TAKING_OVER_POLL_SECONDS)
        if role.evaluate(utcnow()) == "ACTIVE":
            return True
    return False


def retry_after(app: Flask | None = None) -> int:
    """Seconds a device refused while PASSIVE should wait before trying again (the Retry-After of 503 answers).

    Short while the VIP is here and only the lease is still to be taken (the node is taking over), else the standby's.
    """
    return TAKING_OVER_RETRY_AFTER_SECONDS if node_role(app).vip_ok else RETRY_AFTER_SECONDS


def sqlite_write_turn() -> Any:
    """A context manager: the caller's turn to write to a SQLite database (a no-op for PostgreSQL)."""
    turn = gateway_state().write_turn
    return nullcontext() if turn is None else turn

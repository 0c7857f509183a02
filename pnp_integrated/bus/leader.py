"""Leader election among the gateway's workers (and, in HA, nodes): the ``leader`` lease decides who runs the bridge.

Every worker runs a :class:`LeaderLoop`. Each round it tries to take or renew the lease; the holder starts the
:class:`~.bridge.PrimeBridge` and keeps it running while the lease is renewed, and stops it as soon as a renewal
fails. A worker that exits releases the lease so another one takes over at its next round instead of at expiry.

In HA (a gateway pair: ``ha_mode = vip`` integrated, ``gateway_ha = pair`` standalone) the lease is only taken or
renewed while the VIP condition holds (the worker's :class:`~pnp_integrated.ha.VipFollower` keeps
``NodeRole.vip_ok`` and wakes the loop on change); when the VIP leaves, the lease is released at once. Every round
also reads the lease row, so workers that do not hold it know whether their node leads, and carries out the node's
role changes (see :mod:`pnp_integrated.ha`).

A transaction of the leader's worker that wrote outbox events wakes the bridge as it commits, so those events leave
at once; the bridge finds the events of the other workers at its next poll.

The loop takes the lease; once held, a :class:`LeaseKeeper` renews it on a native thread of its own, on time
whatever the worker's event loop is doing (under a storm of devices a greenlet's sleep or lock wait comes back
seconds late, and renewals that missed the lease's whole ttl moved it between two busy workers again and again).
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from typing import Any

from flask import Flask, has_app_context
from gevent.monkey import get_original
from sqlalchemy import event
from sqlalchemy.orm import Session, SessionTransaction

from .. import ha, outbox
from ..context import gateway_state, node_role
from ..models import db, utcnow
from ..statements import AFTER_OWN_COMMIT, OwnTransaction
from . import lease, retention
from .bridge import PrimeBridge

log = logging.getLogger(__name__)

# In HA the lease is short so a crashed node is replaced within seconds, not the minutes Prime documents.
HA_TTL = 8.0
HA_RENEW_EVERY = 1.0
# A node with the VIP takes the lease from a holder that missed this many seconds of renewals (3 rounds, as Prime's
# health monitor counts 3 missed beats), instead of waiting out the TTL: ACTIVE within a second of the VIP arriving.
HA_STALE_AFTER = 3.0


class _Doze:
    """A native thread's sleep that another thread may cut short; raw locks, never the worker's patched ones."""

    def __init__(self) -> None:
        self._lock = get_original("_thread", "allocate_lock")()
        self._lock.acquire()

    def wait(self, seconds: float) -> None:
        """Sleep up to ``seconds``, less when woken (a wake before the sleep ends the next one at once)."""
        self._lock.acquire(timeout=max(0.0, seconds))

    def wake(self) -> None:
        try:
            self._lock.release()
        except RuntimeError:  # a wake is already pending
            pass


class LeaseKeeper:
    """Renews the lease this worker holds, every ``renew_every`` seconds, on a native thread of its own.

    It needs nothing of the worker's event loop: an engine of its own (:func:`.lease.keeper_engine`), waits that
    block only its thread (the GIL is released in them), raw locks. ``held_until`` (monotonic) is how long this worker
    may act as leader after the last renewal; a renewal that finds the lease released or taken sets ``term`` to
    ``None`` and calls ``lost`` (from the keeper's thread: it must be thread-safe, as setting an Event is).
    """

    def __init__(self, app: Flask, holder: str, ttl: float, renew_every: float, lost: Any) -> None:
        self.app = app
        self.holder = holder
        self.ttl = ttl
        self.renew_every = renew_every
        self._lost = lost
        self.term: int | None = None
        self.held_until = 0.0
        self._doze = _Doze()
        self._stopping = False
        self._running = False

    def hold(self, term: int, renewed_at: float) -> None:
        """Renew ``term`` from now on (the loop took or renewed it at monotonic time ``renewed_at``)."""
        self.held_until = renewed_at + self.ttl * 0.8  # renewed well before others may take it
        self.term = term
        if not self._running:
            self._running = True
            get_original("_thread", "start_new_thread")(self._run, ())

    def drop(self) -> None:
        """Stop renewing (the lease is being released, or was lost)."""
        self.term = None
        self.held_until = 0.0

    def stop(self) -> None:
        self.drop()
        self._stopping = True
        self._doze.wake()

    def _run(self) -> None:
        engine = None
        try:
            with self.app.app_context():
                engine = lease.keeper_engine(lock_wait=self.renew_every)
            with Session(engine, expire_on_commit=False) as session:
                while not self._stopping:
                    self._doze.wait(self.renew_every)
                    if not self._stopping:
                        self._renew(session)
        except Exception:  # never expected; the loop takes the lease again once it expires
            log.exception("%s: the leader lease keeper stopped", self.holder)
            self.drop()
            self._lost()
        finally:
            self._running = False
            if engine is not None:
                engine.dispose()

    def _renew(self, session: Session) -> None:
        term = self.term
        if term is None:
            return
        started = time.monotonic()
        try:
            renewed = lease.renew(session, self.holder, self.ttl)
        except Exception as exc:  # busy or away: held until held_until all the same, tried again next round
            log.warning("%s: leader lease not renewed (%s)", self.holder, type(exc).__name__)
            return
        if self.term != term:  # dropped meanwhile (the VIP left, the worker stops)
            return
        if renewed is None:
            self.drop()
            self._lost()
            return
        self.held_until = started + self.ttl * 0.8


class LeaderLoop:
    """Competes for the lease every ``renew_every`` seconds and runs the bridge while it holds it."""

    def __init__(self, app: Flask, *, ttl: float | None = None, renew_every: float | None = None,
                 bridge_options: Any = None) -> None:
        self.app = app
        settings = gateway_state(app).settings
        in_ha = settings.gateway_in_pair
        self.ttl = ttl if ttl is not None else (HA_TTL if in_ha else 15.0)
        self.renew_every = renew_every if renew_every is not None else (HA_RENEW_EVERY if in_ha else 5.0)
        self.stale_after = HA_STALE_AFTER if in_ha else None
        self.holder = lease.holder_id(settings.node_name)
        self.term: int | None = None
        self.keeper = LeaseKeeper(app, self.holder, self.ttl, self.renew_every, self.wake)
        self._bridge_options = dict(bridge_options or {})
        self.bridge: PrimeBridge | None = None
        self._bridge_thread: threading.Thread | None = None
        self._bridge_ended = threading.Event()  # set when the bridge's thread returns: is_set() never yields
        self._stopping = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._follower: Any = None
        self._was_leading = False
        self._acted_state = node_role(app).state
        self._purged_at = time.monotonic()  # the first purge an hour after start, not during start-up
        self._purge_thread: threading.Thread | None = None

    @property
    def is_leader(self) -> bool:
        """True while our last successful renewal has not expired (checked by the bridge before each batch)."""
        return self.term is not None and time.monotonic() < self.keeper.held_until

    def wake(self) -> None:
        """Run the next round now (the VIP arrived or left)."""
        self._wake.set()

    def start(self) -> None:
        self._follower = ha.start_follower(self.app, self.wake)
        # A thread is a greenlet once gevent has patched the worker; tests run it as a real thread.
        self._thread = threading.Thread(target=self._run, name="pnp-leader", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the bridge, release the lease, end the loop."""
        self._stopping.set()
        self._wake.set()
        if self._follower is not None:
            self._follower.stop()
        if self._thread is not None:
            self._thread.join(timeout)
        self._stop_bridge(timeout)
        self.keeper.stop()
        if self.term is not None:
            with self.app.app_context():
                lease.release(self.holder)
            self.term = None

    def _run(self) -> None:
        while not self._stopping.is_set():
            self._round()
            self._wake.wait(self._next_round_in())
            self._wake.clear()

    def _next_round_in(self) -> float:
        """Seconds to the next round: right after the lease's expiry when only another node's lease keeps this node
        PASSIVE with the VIP here (its node died: take over at once, not up to a renewal period later)."""
        role = node_role(self.app)
        if (self.term is not None or not role.vip_ok or role.lease_expires is None
                or role.node_leads):
            return self.renew_every
        left = (role.lease_expires - utcnow()).total_seconds()
        if self.stale_after is not None:  # takeable once the holder missed stale_after seconds of renewals
            left -= self.ttl - self.stale_after
        return min(self.renew_every, max(0.05, left + 0.05))

    def _round(self) -> None:
        role = node_role(self.app)
        started = time.monotonic()
        term: int | None = None
        if role.vip_ok and self.term is not None and self.keeper.term == self.term:
            term = self.term  # held: the keeper renews it
        elif role.vip_ok:
            try:
                with self.app.app_context():
                    # Only with the VIP here (this branch): the VIP is what says the stale holder's node is gone.
                    term = lease.try_hold(self.holder, self.ttl, stale_after=self.stale_after)
            except Exception:  # the database may be briefly unreachable: not leader this round
                log.exception("leader lease check failed")
            if term is not None:
                self.keeper.hold(term, started)
        elif self.term is not None:
            log.warning("%s: the VIP left this node; releasing the leader lease at once", self.holder)
            self._release()
        if term is not None and self._stopping.is_set():  # taken while the worker stops: not for long
            self.term = term
            return
        if term is not None:
            if self.term != term:
                log.info("%s is the leader (term %s): starting the Prime bridge", self.holder, term)
            self.term = term
            if self._bridge_thread is None or self._bridge_ended.is_set():
                self._start_bridge()
        elif self.term is not None:
            log.warning("%s lost the leader lease: stopping the Prime bridge", self.holder)
            self.term = None
            self._stop_bridge()
        if role is not None and role.settings.gateway_in_pair:
            self._observe_lease(role, term)
            self._act_on(role)
        if term is not None and time.monotonic() - self._purged_at > retention.PURGE_EVERY:
            self._start_purge()

    def _start_purge(self) -> None:
        """Delete old history on a thread (a greenlet under gevent) of its own: the round must stay short."""
        if self._purge_thread is not None and self._purge_thread.is_alive():
            return
        self._purged_at = time.monotonic()
        days = gateway_state(self.app).settings.retention_days

        def purge() -> None:
            try:
                with self.app.app_context():
                    retention.purge_history(days)
            except Exception as exc:  # tried again at the next purge
                log.warning("retention purge failed: %s", exc)

        self._purge_thread = threading.Thread(target=purge, name="pnp-retention", daemon=True)
        self._purge_thread.start()

    def _release(self) -> None:
        self.keeper.drop()
        self._stop_bridge()
        try:
            with self.app.app_context():
                lease.release(self.holder)
        except Exception:  # unreachable database: the lease simply expires
            log.exception("could not release the leader lease")
        self.term = None

    def _observe_lease(self, role: ha.NodeRole, term: int | None) -> None:
        """Record which node holds the lease and until when (read from the row unless this worker holds it)."""
        if term is not None:
            role.lease_node = role.settings.node_name
            role.lease_expires = utcnow() + dt.timedelta(seconds=self.ttl * 0.8)
        else:
            try:
                with self.app.app_context():
                    row = lease.current()
                    role.lease_node = ha.lease_holder_node(row.holder) if row is not None else ""
                    role.lease_expires = row.expires_at if row is not None else None
            except Exception:  # unknown is not ours: the cached expiry runs out and the node turns PASSIVE
                log.warning("could not read the leader lease")
        role.evaluate(utcnow())

    def _act_on(self, role: ha.NodeRole) -> None:
        """Carry out a change of the node's role once per change, in this worker."""
        state, leading = role.state, self.is_leader
        if state != self._acted_state:
            self._acted_state = state
            if state == "ACTIVE":
                ha.became_active(self.app, role, leader=leading)
            else:
                ha.became_passive(self.app, role, was_leader=self._was_leading)
        self._was_leading = leading

    def _start_bridge(self) -> None:
        bridge = PrimeBridge(self.app, holder=self.holder, is_leader=lambda: self.is_leader,
                             term=self.term or 0, **self._bridge_options)
        ended = threading.Event()

        def run() -> None:
            try:
                bridge.run()
            finally:
                ended.set()

        self.bridge, self._bridge_ended = bridge, ended
        self._bridge_thread = threading.Thread(target=run, name="pnp-prime-bridge", daemon=True)
        self._bridge_thread.start()

    def _stop_bridge(self, timeout: float = 10.0) -> None:
        if self.bridge is not None:
            self.bridge.stop()
        if self._bridge_thread is not None:
            self._bridge_thread.join(timeout)
        self.bridge = None
        self._bridge_thread = None


def _wake_bridge_at_commit(session: Session) -> None:
    """``after_commit`` of the sessions of this process: a transaction that wrote events wakes this worker's bridge,
    if it runs here. It must never raise: the transaction is already committed."""
    if session.in_nested_transaction() or not outbox.events_written(session.info):
        return  # a savepoint's release is not the commit: the outer transaction may still roll back
    _wake_bridge()


def _wake_bridge_after_own_commit(own: OwnTransaction) -> None:
    """The same for the engine's own transactions (device requests), which run outside the session."""
    if outbox.events_written(own.info):
        _wake_bridge()


def _wake_bridge() -> None:
    if not has_app_context():
        return
    try:
        loop = gateway_state().leader
    except RuntimeError:  # an app that is not a gateway: no bridge
        return
    bridge = loop.bridge if loop is not None else None
    if bridge is not None:
        bridge.wake()


def _forget_events_at_end(session: Session, transaction: SessionTransaction) -> None:
    """``after_transaction_end``: a transaction rolled back (or closed) takes its events, and so its mark, along."""
    if transaction.parent is None:
        outbox.events_written(session.info)


# Once per process, at import: every worker imports this module before it serves anything.
event.listen(db.session, "after_commit", _wake_bridge_at_commit)
event.listen(db.session, "after_transaction_end", _forget_events_at_end)
AFTER_OWN_COMMIT.append(_wake_bridge_after_own_commit)


def start_leader_loop(app: Flask, **options: Any) -> LeaderLoop:
    """Start this worker's leader loop (gunicorn ``post_worker_init`` via ``runtime.start_worker``)."""
    loop = LeaderLoop(app, **options)
    gateway_state(app).leader = loop
    loop.start()
    return loop


def stop_leader_loop(app: Flask) -> None:
    """Stop this worker's leader loop, if any (``worker_exit`` via ``runtime.stop_worker``)."""
    state = gateway_state(app)
    loop, state.leader = state.leader, None
    if loop is not None:
        loop.stop(gateway_state(app).settings.drain_timeout)

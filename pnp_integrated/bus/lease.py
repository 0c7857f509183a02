"""The ``leader`` lease: one row with a holder and an expiry; whoever holds an unexpired lease leads.

Taking and renewing are single conditional UPDATEs (atomic on SQLite and PostgreSQL): the row changes only when it is
ours or has expired. ``term`` grows each time the holder changes, so a stale leader can tell it was replaced.

In HA a node that has the VIP may also take a lease whose holder stopped renewing ``stale_after`` seconds ago (its
renewals come every second): the VIP only moves when the other node stopped answering VRRP or the health monitor, so
waiting out the whole expiry would only lengthen the outage. A holder that still renews (a node whose keepalived
crashed with the VIP left on it) keeps its lease, which is what stops two nodes from both being ACTIVE.

A worker of the same node also takes the lease at once from a sibling whose process is gone (a crash, the kernel's
OOM killer): the node's Prime bridge resumes within a round instead of after the expiry.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import and_, case, create_engine, or_, update
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session

from ..context import gateway_state
from ..models import LeaderLease, db, utcnow

LEADER = "leader"


@contextmanager
def _lease_session() -> Iterator[Session]:
    """The session lease calls run in.

    On PostgreSQL it comes from a small pool of its own: device traffic that exhausts the main pool must never delay
    a renewal past the lease's expiry (the node would turn PASSIVE under load). SQLite has a single writer anyway,
    and its cooperative lock waits are set up on the main engine, so it keeps the app's session.
    """
    if db.engine.dialect.name != "postgresql":
        yield db.session
        return
    state = gateway_state()
    engine = state.lease_engine
    if engine is None:  # created lazily, so each gunicorn worker gets its own after the fork
        from ..database import postgres_connect_args

        # Autocommit and no pre-ping: a renewal is one round trip (UPDATE ... RETURNING). Under load each round trip
        # of a greenlet waits for a turn of the worker's event loop, so fewer round trips is a renewal that stays
        # well inside the lease, even with thousands of devices on the worker.
        engine = create_engine(db.engine.url, pool_size=2, max_overflow=0, isolation_level="AUTOCOMMIT",
                               connect_args=postgres_connect_args(state.settings.db_dead_peer_timeout))
        state.lease_engine = engine
    with Session(engine, expire_on_commit=False) as session:
        yield session


def holder_id(node_name: str) -> str:
    """``<node>:<pid>``: which node leads, and which worker on it."""
    return f"{node_name}:{os.getpid()}"


def try_hold(holder: str, ttl: float, name: str = LEADER, *, stale_after: float | None = None) -> int | None:
    """Take or renew the lease for ``ttl`` seconds; the term when held, ``None`` when another holder has it.

    ``stale_after``: also take it from a holder whose last renewal is older than that (renewals set the expiry to
    renewal time + ``ttl``, the same ``ttl`` for every holder).
    """
    now = utcnow()
    expires = now + dt.timedelta(seconds=ttl)
    stale_if_before = None if stale_after is None else expires - dt.timedelta(seconds=stale_after)
    with _lease_session() as session:
        return _try_hold(session, holder, name, now, expires, stale_if_before)


def _try_hold(session: Session, holder: str, name: str, now: dt.datetime, expires: dt.datetime,
              stale_if_before: dt.datetime | None = None) -> int | None:
    takeable = or_(LeaderLease.holder == holder, LeaderLease.expires_at < now)
    if stale_if_before is not None:
        # expires_at = last renewal + ttl, so "renewed before now - stale_after" is "expires before this". Only from
        # another node: a sibling worker slowed down by load is not a dead node, and leadership stays where it is.
        node = holder.rsplit(":", 1)[0]
        takeable = or_(takeable, and_(LeaderLease.expires_at < stale_if_before,
                                      ~LeaderLease.holder.startswith(node + ":", autoescape=True)))
    try:
        term = _take(session, holder, name, expires, takeable)
        if term is not None:
            return term
        current = session.get(LeaderLease, name)
        if current is not None:
            other = current.holder
            session.rollback()
            if sibling_gone(holder, other):
                return _take(session, holder, name, expires, LeaderLease.holder == other)
            return None
        session.add(LeaderLease(name=name, holder=holder, term=1, expires_at=expires))
        session.commit()
        return 1
    except (IntegrityError, OperationalError):
        # Another worker created the row first, or the database was busy: not ours this round.
        session.rollback()
        return None


def _take(session: Session, holder: str, name: str, expires: dt.datetime, takeable: Any) -> int | None:
    """One conditional UPDATE: the term when the row was ours to take (committed), else None (rolled back)."""
    result = session.execute(
        update(LeaderLease)
        .where(LeaderLease.name == name, takeable)
        .values(
            holder=holder,
            expires_at=expires,
            term=case((LeaderLease.holder == holder, LeaderLease.term), else_=LeaderLease.term + 1),
        )
        .returning(LeaderLease.term)
    )
    term = result.scalar()
    if term is None:
        session.rollback()
        return None
    session.commit()
    return int(term)


def sibling_gone(holder: str, other: str) -> bool:
    """Whether ``other`` is a worker of ``holder``'s node whose process no longer exists."""
    node, _, _pid = holder.rpartition(":")
    other_node, _, other_pid = other.rpartition(":")
    if other_node != node or other == holder or not other_pid.isdigit():
        return False
    try:
        os.kill(int(other_pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, under another user
        pass
    return False


def release(holder: str, name: str = LEADER) -> None:
    """Give the lease up at once (clean shutdown), so another worker need not wait for expiry."""
    with _lease_session() as session:
        _release(session, holder, name)


def _release(session: Session, holder: str, name: str) -> None:
    try:
        session.execute(
            update(LeaderLease)
            .where(LeaderLease.name == name, LeaderLease.holder == holder)
            .values(expires_at=utcnow())
        )
        session.commit()
    except OperationalError:
        session.rollback()


def current(name: str = LEADER) -> LeaderLease | None:
    """The unexpired lease row, or ``None``."""
    with _lease_session() as session:
        lease = session.get(LeaderLease, name)
        if lease is not None and lease.expires_at < utcnow():
            return None
        return lease

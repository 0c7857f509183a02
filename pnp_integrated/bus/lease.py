"""The ``leader`` lease: one row with a holder and an expiry; whoever holds an unexpired lease leads.

Taking and renewing are single conditional UPDATEs (atomic on SQLite and PostgreSQL): the row changes only when it is
ours or has expired. ``term`` grows each time the holder changes, so a stale leader can tell it was replaced.

In HA a node that has the VIP may also take a lease whose holder stopped renewing ``stale_after`` seconds ago (its
renewals come every second): the VIP only moves when the other node stopped answering VRRP or the health monitor, so
waiting out the whole expiry would only lengthen the outage. A holder that still renews (a node whose keepalived
crashed with the VIP left on it) keeps its lease, which is what stops two nodes from both being ACTIVE.

A worker of the same node also takes the lease at once from a sibling whose process is gone (a crash, the kernel's
OOM killer): the node's Prime bridge resumes within a round instead of after the expiry. A sibling that lives keeps
the lease through late renewals, for :data:`SIBLING_HUNG_AFTER` past the expiry: under a storm of devices every
worker of the node is as busy as the holder, so moving the lease would only stop and restart the bridge, and a worker
that stopped answering is killed by gunicorn's arbiter before then (the sibling then takes it at once). A released
lease (:func:`release`) is anyone's at once.

The holder renews with :func:`renew`, which only ever extends a lease it still holds: a renewal cannot take back a
lease that was released or taken meanwhile.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Engine, and_, case, create_engine, event, or_, update
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session

from ..context import gateway_state
from ..models import LeaderLease, db, utcnow

LEADER = "leader"
# How long after its expiry a sibling that lives keeps the lease: a worker that missed renewals this long is hung,
# not busy (gunicorn's arbiter kills a worker that stopped answering for 60 s, deploy/gunicorn.conf.py).
SIBLING_HUNG_AFTER = 60.0
# The expiry of a released lease: long past for every contender, a sibling included.
RELEASED_AT = dt.datetime(1970, 1, 1)


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
    node = holder.rsplit(":", 1)[0]
    sibling = LeaderLease.holder.startswith(node + ":", autoescape=True)
    takeable = or_(
        LeaderLease.holder == holder,
        LeaderLease.expires_at <= RELEASED_AT,
        # Another node's expired lease; a sibling's only once it is hung (a busy worker keeps leading).
        and_(LeaderLease.expires_at < now, ~sibling),
        LeaderLease.expires_at < now - dt.timedelta(seconds=SIBLING_HUNG_AFTER),
    )
    if stale_if_before is not None:
        # expires_at = last renewal + ttl, so "renewed before now - stale_after" is "expires before this". Only from
        # another node: a sibling worker slowed down by load is not a dead node, and leadership stays where it is.
        takeable = or_(takeable, and_(LeaderLease.expires_at < stale_if_before, ~sibling))
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


def renew(session: Session, holder: str, ttl: float, name: str = LEADER) -> int | None:
    """Extend a lease ``holder`` still holds by ``ttl`` seconds from now, in ``session`` (the lease keeper's own, see
    :func:`keeper_engine`); its term, or ``None`` when it was released or another holder has it (it never takes
    one). Database errors are raised: the lease is then neither renewed nor known to be lost."""
    expires = utcnow() + dt.timedelta(seconds=ttl)
    try:
        return _take(session, holder, name, expires,
                     and_(LeaderLease.holder == holder, LeaderLease.expires_at > RELEASED_AT))
    except BaseException:
        session.rollback()
        raise


def keeper_engine(lock_wait: float) -> Engine:
    """An engine of the lease keeper's own, for a native thread of its own (needs an application context).

    Its waits block only that thread, which the GIL is released for: on SQLite, the write lock is waited for inside
    sqlite3 (for ``lock_wait`` seconds at most) instead of the app's cooperative retries, which need the worker's event
    loop; on PostgreSQL, an autocommit connection of its own (a renewal is one round trip).
    """
    url = db.engine.url
    if db.engine.dialect.name == "sqlite":
        engine = create_engine(url, pool_size=1, max_overflow=0, connect_args={"timeout": lock_wait})
        event.listen(engine, "connect", _sqlite_keeper_pragmas)
        return engine
    from ..database import postgres_connect_args

    return create_engine(url, pool_size=1, max_overflow=0, isolation_level="AUTOCOMMIT",
                         connect_args=postgres_connect_args(gateway_state().settings.db_dead_peer_timeout))


def _sqlite_keeper_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA synchronous=NORMAL")  # as the app's connections: the database is in WAL mode
    cursor.close()


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
    """Give the lease up at once (clean shutdown, the VIP left), so another worker or node need not wait for expiry:
    its expiry becomes :data:`RELEASED_AT`."""
    with _lease_session() as session:
        _release(session, holder, name)


def _release(session: Session, holder: str, name: str) -> None:
    try:
        session.execute(
            update(LeaderLease)
            .where(LeaderLease.name == name, LeaderLease.holder == holder)
            .values(expires_at=RELEASED_AT)
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

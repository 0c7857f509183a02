"""The ``leader`` lease: one row with a holder and an expiry; whoever holds an unexpired lease leads.

Taking and renewing are single conditional UPDATEs (atomic on SQLite and PostgreSQL): the row changes only when it is
ours or has expired. ``term`` grows each time the holder changes, so a stale leader can tell it was replaced.
"""

from __future__ import annotations

import datetime as dt
import os

from sqlalchemy import case, or_, select, update
from sqlalchemy.exc import IntegrityError, OperationalError

from ..models import LeaderLease, db, utcnow

LEADER = "leader"


def holder_id(node_name: str) -> str:
    """``<node>:<pid>``: which node leads, and which worker on it."""
    return f"{node_name}:{os.getpid()}"


def try_hold(holder: str, ttl: float, name: str = LEADER) -> int | None:
    """Take or renew the lease for ``ttl`` seconds; the term when held, ``None`` when another holder has it."""
    now = utcnow()
    expires = now + dt.timedelta(seconds=ttl)
    try:
        result = db.session.execute(
            update(LeaderLease)
            .where(LeaderLease.name == name, or_(LeaderLease.holder == holder, LeaderLease.expires_at < now))
            .values(
                holder=holder,
                expires_at=expires,
                term=case((LeaderLease.holder == holder, LeaderLease.term), else_=LeaderLease.term + 1),
            )
        )
        if result.rowcount == 1:  # type: ignore[attr-defined]
            db.session.commit()
            return db.session.scalar(select(LeaderLease.term).where(LeaderLease.name == name))
        db.session.rollback()
        if db.session.get(LeaderLease, name) is not None:
            db.session.rollback()
            return None
        db.session.add(LeaderLease(name=name, holder=holder, term=1, expires_at=expires))
        db.session.commit()
        return 1
    except (IntegrityError, OperationalError):
        # Another worker created the row first, or the database was busy: not ours this round.
        db.session.rollback()
        return None


def release(holder: str, name: str = LEADER) -> None:
    """Give the lease up at once (clean shutdown), so another worker need not wait for expiry."""
    try:
        db.session.execute(
            update(LeaderLease)
            .where(LeaderLease.name == name, LeaderLease.holder == holder)
            .values(expires_at=utcnow())
        )
        db.session.commit()
    except OperationalError:
        db.session.rollback()


def current(name: str = LEADER) -> LeaderLease | None:
    lease = db.session.get(LeaderLease, name)
    if lease is not None and lease.expires_at < utcnow():
        return None
    return lease

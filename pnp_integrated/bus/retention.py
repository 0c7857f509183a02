"""History that would otherwise grow without end: closed device sessions and events Prime already has.

Every reconnect of a CNS device leaves a closed ``device_sessions`` row and two outbox events (connected,
disconnected); a fleet of thousands that reconnects after each failover or keepalive loss adds them by the thousand.
The leader deletes what is older than ``retention_days``: closed sessions, and outbox events that were sent (an
unsent event is never deleted, however old). Batches keep each transaction short.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from sqlalchemy import delete, select

from ..models import DeviceSession, OutboxEvent, db, utcnow

log = logging.getLogger(__name__)

PURGE_EVERY = 3600.0  # seconds between purges by the leader
BATCH = 5000


def purge_history(retention_days: float, now: dt.datetime | None = None) -> tuple[int, int]:
    """Delete closed sessions and sent events older than ``retention_days``; (sessions, events) deleted.

    Needs an application context.
    """
    cutoff = (now or utcnow()) - dt.timedelta(days=retention_days)
    sessions = _purge(DeviceSession, DeviceSession.closed_at, cutoff)
    events = _purge(OutboxEvent, OutboxEvent.sent_at, cutoff)
    if sessions or events:
        log.info("retention: deleted %d closed device sessions and %d sent events older than %g days", sessions,
                 events, retention_days)
    return sessions, events


def _purge(model: type[DeviceSession] | type[OutboxEvent], ended: Any, cutoff: dt.datetime) -> int:
    deleted = 0
    while True:
        ids = list(db.session.scalars(select(model.id).where(ended.isnot(None), ended < cutoff).limit(BATCH)))
        if not ids:
            return deleted
        db.session.execute(delete(model).where(model.id.in_(ids)).execution_options(synchronize_session=False))
        db.session.commit()
        deleted += len(ids)

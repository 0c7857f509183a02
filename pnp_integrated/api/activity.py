"""``GET /api/v1/activity``: provisioning completions and failures per minute, and the node's HA transitions.

What a roll-out looks like over the last hours: how many jobs ended in each minute, by how they ended, and when the
gateway changed role (the ``gateway.state`` events it wrote for Prime: ACTIVE after a start or a take-over, PASSIVE
when it lost the VIP or the lease). Minutes are grouped by the database, from the index on the jobs' end
(``ix_jobs_finished_at_state``); only minutes in which a job ended are listed.

An open overview asks every few seconds, and a roll-out of 100,000 devices over three hours ends 500 jobs a minute:
recounting them all each time would cost a tenth of a second. A minute more than :data:`SETTLED_AFTER` old can no
longer change (a job's end is written as it happens, and committed within seconds), so each worker keeps the counts
of such minutes and asks the database only for the minutes after them.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import ColumnElement, func, literal_column, select, text

from ..models import GATEWAY_STATE_EVENTS, OutboxEvent, ProvisioningJob, db, utcnow
from ..outbox import rfc3339
from ..provisioning.types import TERMINAL_STATES
from . import blueprint, schemas
from .contract import operation
from .schemas import MAX_MINUTES, MAX_TRANSITIONS

# Longer than any transaction that ends a job takes to commit (lock waits are bounded well below), with room for the
# clock of the other node of a pair.
SETTLED_AFTER = dt.timedelta(minutes=2)


def minute_of(column: Any, dialect: str) -> ColumnElement[str]:
    """The minute ``column`` falls in, as RFC 3339 UTC text (``2026-01-31T12:34:00Z``), computed by the database."""
    if dialect == "postgresql":
        return func.to_char(func.date_trunc("minute", column), literal_column("'YYYY-MM-DD\"T\"HH24:MI:00\"Z\"'"))
    return func.strftime("%Y-%m-%dT%H:%M:00Z", column)


Counts = dict[str, dict[str, int]]  # minute (RFC 3339) -> job state -> jobs that ended in it


def _count(start: dt.datetime, end: dt.datetime, inclusive: bool) -> Counts:
    """Jobs that ended from ``start`` to ``end`` (``end`` itself too when ``inclusive``), by minute and state."""
    minute = minute_of(ProvisioningJob.finished_at, db.session.get_bind().dialect.name).label("minute")
    upper = ProvisioningJob.finished_at <= end if inclusive else ProvisioningJob.finished_at < end
    rows = db.session.execute(
        select(minute, ProvisioningJob.state, func.count())
        .where(ProvisioningJob.finished_at >= start, upper)
        .group_by(minute, ProvisioningJob.state))
    counts: Counts = {}
    for at, state, count in rows:
        if state in TERMINAL_STATES:
            counts.setdefault(str(at), dict.fromkeys(TERMINAL_STATES, 0))[state] += int(count)
    return counts


@dataclass(frozen=True)
class SettledMinutes:
    """The counts of the minutes from ``start`` to ``end`` (excluded) of one database, which no longer change."""

    database: str
    start: dt.datetime
    end: dt.datetime
    counts: Counts = field(default_factory=dict)


_settled: dict[str, SettledMinutes] = {}  # by database URL; this worker's


def _counts(since: dt.datetime, until: dt.datetime) -> Counts:
    database = db.engine.url.render_as_string(hide_password=True)
    settled_end = max(since, (until - SETTLED_AFTER).replace(second=0, microsecond=0))
    known = _settled.get(database)
    if known is None or since < known.start or known.end > settled_end:
        known = SettledMinutes(database, since, settled_end, _count(since, settled_end, inclusive=False))
    elif known.end < settled_end:
        known = SettledMinutes(database, known.start, settled_end,
                               {**known.counts, **_count(known.end, settled_end, inclusive=False)})
    horizon = until - dt.timedelta(minutes=MAX_MINUTES + 1)
    if known.start < horizon:  # forget what no window reaches any more
        start = horizon.replace(second=0, microsecond=0)
        known = SettledMinutes(database, start, known.end, {m: c for m, c in known.counts.items()
                                                            if m >= start.strftime("%Y-%m-%dT%H:%M:00Z")})
    _settled[database] = known
    first = since.strftime("%Y-%m-%dT%H:%M:00Z")
    counts = {m: c for m, c in known.counts.items() if m >= first}
    counts.update(_count(settled_end, until, inclusive=True))
    return counts


def activity(minutes: int, now: dt.datetime | None = None) -> dict[str, Any]:
    """Job endings per minute and HA transitions over the ``minutes`` up to ``now`` (naive UTC)."""
    until = now or utcnow()
    since = (until - dt.timedelta(minutes=minutes - 1)).replace(second=0, microsecond=0)
    per_minute = [{"minute": m, **c} for m, c in sorted(_counts(since, until).items())]
    # The index's own condition, as text: a bound parameter would keep the database from using the partial index.
    events = list(db.session.execute(
        select(OutboxEvent.created_at, OutboxEvent.payload)
        .where(text(GATEWAY_STATE_EVENTS), OutboxEvent.created_at >= since, OutboxEvent.created_at <= until)
        .order_by(OutboxEvent.created_at.desc()).limit(MAX_TRANSITIONS)))
    transitions = [{"at": rfc3339(at), "state": str(payload.get("state", "")), "node": str(payload.get("node", "")),
                    "reason": str(payload.get("reason", ""))} for at, payload in reversed(events)]
    return {"since": rfc3339(since), "until": rfc3339(until), "minutes": minutes,
            "per_minute": per_minute, "transitions": transitions}


@blueprint.get("/activity")
@operation(answer=schemas.Activity, errors=(422,))
def get_activity(query: schemas.ActivityQuery) -> schemas.Activity:
    """Provisioning activity: jobs ended per minute (completed, failed, cancelled) and the gateway's HA
    transitions, over the last minutes"""
    return schemas.Activity.model_validate(activity(query.minutes))

"""The transactional outbox: events for Prime are rows written in the same transaction as the change they report.

The leader's bridge reads unsent rows in id order and marks them sent only after the broker's RECEIPT. A
transaction that wrote events carries a mark in its session's ``info`` (or its own transaction's) until it ends, so
the leader's worker can wake its bridge at the commit (:func:`events_written`) instead of leaving the events to its
next poll.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Row, bindparam, insert, select, update

from .models import Device, OutboxEvent, db, new_uuid, utcnow
from .statements import PlainStatement, transaction_info

# Fields every message carries; a payload cannot overwrite them.
ENVELOPE = ("id", "type", "at", "gateway")
# Key in the transaction's ``info`` (the session's, or its own transaction's): set while it holds events not yet
# committed.
EVENTS_WRITTEN = "pnp_outbox_events_written"


# Run on the DBAPI connection: every device step writes one or two.
_INSERT_EVENT = PlainStatement(insert(OutboxEvent.__table__))


def record_event(type_: str, payload: dict[str, Any]) -> None:
    """Write an event in the caller's transaction; it is sent to Prime once that transaction commits.

    A plain INSERT on the transaction's connection, not an ORM object: every device step writes one or two, and
    nothing reads them back in the transaction that writes them.
    """
    _INSERT_EVENT.run({"event_id": new_uuid(), "type": type_, "payload": payload, "created_at": utcnow(),
                       "attempts": 0})
    transaction_info()[EVENTS_WRITTEN] = True


def events_written(info: dict[str, Any]) -> bool:
    """Whether the transaction of this ``info`` that ends now wrote events; the mark goes with the transaction."""
    return bool(info.pop(EVENTS_WRITTEN, False))


def device_payload(device: Device) -> dict[str, Any]:
    """The ``device`` object of the broker contract."""
    return {"id": device.id, "serial": device.serial, "pid": device.pid, "udi": device.udi,
            "protocol": device.protocol, "address": device.address, "port": None}


def job_payload(job_id: int, device: Device, profile: str | None, step: str, state: str, attempt: int,
                detail: str = "") -> dict[str, Any]:
    """The ``job`` object of the broker contract."""
    return {"id": job_id, "device": device_payload(device), "profile": profile, "step": step, "state": state,
            "attempt": attempt, "detail": detail}


def rfc3339(when: dt.datetime) -> str:
    """A naive-UTC database timestamp as RFC 3339 UTC (``2025-01-31T12:00:00.123Z``)."""
    return when.replace(tzinfo=None).isoformat(timespec="milliseconds") + "Z"


def event_message(event: OutboxEvent | Row[Any], gateway: str) -> bytes:
    """The JSON body of an event per the broker contract: id, type, at, gateway, then the payload's fields."""
    body = {k: v for k, v in (event.payload or {}).items() if k not in ENVELOPE}
    body.update(id=event.event_id, type=event.type, at=rfc3339(event.created_at), gateway=gateway)
    return json.dumps(body, separators=(",", ":"), default=str).encode()


# The columns a message is made of, read as plain rows: no ORM objects for what is only sent and marked sent.
_UNSENT = (select(OutboxEvent.id, OutboxEvent.event_id, OutboxEvent.type, OutboxEvent.payload, OutboxEvent.created_at)
           .where(OutboxEvent.sent_at.is_(None)).order_by(OutboxEvent.id).limit(bindparam("limit")))


def unsent(limit: int = 100) -> list[Row[Any]]:
    """The oldest unsent events (``id``, ``event_id``, ``type``, ``payload``, ``created_at``), in the order they were
    written."""
    return list(db.session.execute(_UNSENT, {"limit": limit}))


# Built once, on the table (no ORM objects to bring up to date): a batch's ids and the time are its parameters.
_OUTBOX = OutboxEvent.__table__
_MARK_SENT = (update(_OUTBOX).where(_OUTBOX.c.id.in_(bindparam("ids", expanding=True)))
              .values(sent_at=bindparam("now"), attempts=_OUTBOX.c.attempts + 1))
_COUNT_SEND = (update(_OUTBOX).where(_OUTBOX.c.id.in_(bindparam("ids", expanding=True)))
               .values(attempts=_OUTBOX.c.attempts + 1))


def mark_sent(confirmed: list[int], unconfirmed: Sequence[int] = ()) -> None:
    """After a batch was sent: mark ``confirmed`` sent (the broker confirmed each with a RECEIPT) and count the send
    of every event of the batch, ``unconfirmed`` ones (sent, no RECEIPT seen: they stay unsent) too, in one commit.

    The send is counted after it, not before: what makes delivery at least once is only that an event stays unsent
    until its RECEIPT, so a bridge that dies mid-batch leaves the batch to be sent again (Prime de-duplicates by id).
    """
    if not confirmed and not unconfirmed:
        return
    connection = db.session.connection()
    if confirmed:
        connection.execute(_MARK_SENT, {"ids": confirmed, "now": utcnow()})
    if unconfirmed:
        connection.execute(_COUNT_SEND, {"ids": list(unconfirmed)})
    db.session.commit()


def pending_count() -> int:
    from sqlalchemy import func

    return int(db.session.scalar(select(func.count()).select_from(OutboxEvent).where(OutboxEvent.sent_at.is_(None)))
               or 0)

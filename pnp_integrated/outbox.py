"""The transactional outbox: events for Prime are rows written in the same transaction as the change they report.

The leader's bridge reads unsent rows in id order and marks them sent only after the broker's RECEIPT.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from sqlalchemy import insert, select, update

from .models import Device, OutboxEvent, db, new_uuid, utcnow

# Fields every message carries; a payload cannot overwrite them.
ENVELOPE = ("id", "type", "at", "gateway")


# Built once: a statement's compiled form is cached against it, so executing it again costs only its parameters.
_INSERT_EVENT = insert(OutboxEvent.__table__)


def record_event(type_: str, payload: dict[str, Any]) -> None:
    """Write an event in the caller's transaction; it is sent to Prime once that transaction commits.

    A plain INSERT on the transaction's connection, not an ORM object: every device step writes one or two, and
    nothing reads them back in the transaction that writes them.
    """
    db.session.connection().execute(_INSERT_EVENT, {"event_id": new_uuid(), "type": type_, "payload": payload,
                                                    "created_at": utcnow(), "attempts": 0})


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


def event_message(event: OutboxEvent, gateway: str) -> bytes:
    """The JSON body of an event per the broker contract: id, type, at, gateway, then the payload's fields."""
    body = {k: v for k, v in (event.payload or {}).items() if k not in ENVELOPE}
    body.update(id=event.event_id, type=event.type, at=rfc3339(event.created_at), gateway=gateway)
    return json.dumps(body, separators=(",", ":"), default=str).encode()


def unsent(limit: int = 100) -> list[OutboxEvent]:
    """The oldest unsent events, in the order they were written."""
    return list(
        db.session.scalars(select(OutboxEvent).where(OutboxEvent.sent_at.is_(None)).order_by(OutboxEvent.id)
                           .limit(limit))
    )


def note_attempt(ids: list[int]) -> None:
    if ids:
        db.session.execute(
            update(OutboxEvent).where(OutboxEvent.id.in_(ids)).values(attempts=OutboxEvent.attempts + 1)
            .execution_options(synchronize_session=False)  # no objects of the session to bring up to date
        )
        db.session.commit()


def mark_sent(ids: list[int]) -> None:
    """Mark events sent (the broker confirmed each with a RECEIPT)."""
    if ids:
        db.session.execute(update(OutboxEvent).where(OutboxEvent.id.in_(ids)).values(sent_at=utcnow())
                           .execution_options(synchronize_session=False))
        db.session.commit()


def pending_count() -> int:
    from sqlalchemy import func

    return int(db.session.scalar(select(func.count()).select_from(OutboxEvent).where(OutboxEvent.sent_at.is_(None)))
               or 0)

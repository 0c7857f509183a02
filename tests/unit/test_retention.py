"""History retention: old closed sessions and delivered events go; live sessions and undelivered events never do."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

from flask import Flask
from sqlalchemy import select

from pnp_integrated.bus.retention import purge_history
from pnp_integrated.models import DeviceSession, OutboxEvent, db, utcnow


def session(key: str, closed: dt.datetime | None) -> DeviceSession:
    return DeviceSession(device_key=key, protocol="cns", node="n1", worker_pid=1, port=11013, tls=False,
                         address="192.0.2.1", subjects=[], closed_at=closed)


def test_purge_keeps_what_is_recent_live_or_undelivered(app_factory: Callable[..., Flask]) -> None:
    app = app_factory(retention_days=7)
    now = utcnow()
    old, recent = now - dt.timedelta(days=8), now - dt.timedelta(days=1)
    with app.app_context():
        db.session.add_all([session("OLD", old), session("RECENT", recent), session("LIVE", None)])
        db.session.add_all([
            OutboxEvent(type="device.connected", payload={"n": "sent-old"}, created_at=old, sent_at=old),
            OutboxEvent(type="device.connected", payload={"n": "sent-recent"}, created_at=recent, sent_at=recent),
            OutboxEvent(type="device.connected", payload={"n": "unsent-old"}, created_at=old, sent_at=None),
        ])
        db.session.commit()

        assert purge_history(7, now) == (1, 1)
        assert sorted(db.session.scalars(select(DeviceSession.device_key))) == ["LIVE", "RECENT"]
        assert sorted(e.payload["n"] for e in db.session.scalars(select(OutboxEvent))) == ["sent-recent",
                                                                                            "unsent-old"]
        assert purge_history(7, now) == (0, 0)

"""A node that dies in the middle of a transaction must not block the surviving node for hours.

Its PostgreSQL backend keeps the dead node's row locks until TCP notices, unless the session was opened with a bound
on idle transactions. The "dead node" here is a connection of the same engine that takes a device row lock and then
never speaks again, which is what the database sees when a node loses power or its cable.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest
import sqlalchemy.exc
from flask import Flask
from sqlalchemy import Connection, text

from pnp_integrated.models import Device, db

pytestmark = pytest.mark.postgres


def lock_device_row(serial: str) -> Connection:
    """A new device row, and a connection of the app's engine that holds its row lock (app context needed)."""
    db.session.add(Device(serial=serial))
    db.session.commit()
    holder = db.engine.connect()
    holder.begin()
    holder.execute(text("SELECT id FROM devices WHERE serial = :serial FOR UPDATE"), {"serial": serial})
    return holder


def test_a_dead_nodes_row_locks_are_released_after_the_dead_peer_timeout(
    app_factory: Callable[..., Flask], postgres_url: str
) -> None:
    app = app_factory(database_url=postgres_url, db_dead_peer_timeout=1.5)
    with app.app_context():
        dead = lock_device_row("DEAD0001")  # ... and the node holding that lock is gone.

        started = time.monotonic()
        with db.engine.begin() as survivor:
            survivor.execute(text("UPDATE devices SET hostname = 'taken-over' WHERE serial = 'DEAD0001'"))
        waited = time.monotonic() - started

        assert 1.0 < waited < 6.0  # blocked by the dead transaction, then freed by the server, not hung
        assert db.session.scalar(text("SELECT hostname FROM devices WHERE serial = 'DEAD0001'")) == "taken-over"
        with pytest.raises(sqlalchemy.exc.DBAPIError, match="idle-in-transaction timeout"):
            dead.execute(text("SELECT 1"))  # the server ended the dead node's session
        dead.close()


def test_a_lock_wait_longer_than_twice_the_timeout_fails_instead_of_hanging(
    app_factory: Callable[..., Flask], postgres_url: str
) -> None:
    app = app_factory(database_url=postgres_url, db_dead_peer_timeout=1.0)
    with app.app_context():
        holder = lock_device_row("SLOW0001")

        def keep_busy() -> None:  # a live holder that keeps talking, so only the lock-wait bound can end the wait
            for _ in range(12):
                holder.execute(text("SELECT pg_sleep(0.4)"))

        talker = threading.Thread(target=keep_busy)
        talker.start()
        started = time.monotonic()
        with pytest.raises(sqlalchemy.exc.OperationalError, match="lock timeout"), db.engine.begin() as waiter:
            waiter.execute(text("UPDATE devices SET hostname = 'x' WHERE serial = 'SLOW0001'"))
        waited = time.monotonic() - started
        talker.join()
        holder.rollback()
        holder.close()
        assert 1.5 < waited < 4.0

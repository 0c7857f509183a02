"""Leader election: of the workers competing for the ``leader`` lease exactly one runs the Prime bridge."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from flask import Flask
from sqlalchemy import update

from pnp_integrated.bus import lease
from pnp_integrated.bus.leader import LeaderLoop
from pnp_integrated.devsim.node import node_settings
from pnp_integrated.models import LeaderLease, db, utcnow
from tests.support import wait_until


def worker(app: Flask, name: str) -> LeaderLoop:
    loop = LeaderLoop(app, ttl=2.0, renew_every=0.2, bridge_options={"max_backoff": 0.5, "connect_timeout": 1})
    loop.holder = f"node-a:{name}"  # two workers of one node, as gunicorn would run them
    return loop


def test_one_worker_leads_and_another_takes_over_when_it_stops(app: Flask) -> None:
    first, second = worker(app, "1"), worker(app, "2")
    first.start()
    wait_until(lambda: first.is_leader, 5, "the first worker to lead")
    second.start()
    try:
        time.sleep(0.8)  # several rounds: the second must not take a lease that is being renewed
        assert first.is_leader and not second.is_leader
        assert first.bridge is not None and second.bridge is None
        first.stop()  # releases the lease
        wait_until(lambda: second.is_leader, 3, "the second worker to take over")
        assert second.bridge is not None
        with app.app_context():
            row = db.session.get(LeaderLease, lease.LEADER)
            assert row is not None and row.holder == "node-a:2" and row.term == 2
    finally:
        first.stop()
        second.stop()


def test_expired_lease_is_taken_and_a_held_one_is_not(app: Flask) -> None:
    with app.app_context():
        assert lease.try_hold("node-a:1", ttl=0.3) == 1
        assert lease.try_hold("node-b:1", ttl=5) is None  # held by node-a
        assert lease.try_hold("node-a:1", ttl=0.3) == 1  # renewal keeps the term
        time.sleep(0.4)
        assert lease.try_hold("node-b:1", ttl=5) == 2  # expired: taken over, new term
        current = lease.current()
        assert current is not None and current.holder == "node-b:1"


def test_a_holder_that_stopped_renewing_loses_the_lease_to_the_vip_holder_before_it_expires(app: Flask) -> None:
    with app.app_context():
        assert lease.try_hold("node-a:1", ttl=8) == 1
        # Renewing every round: nobody takes it early.
        assert lease.try_hold("node-b:1", ttl=8, stale_after=0.3) is None
        time.sleep(0.4)  # node-a missed its renewals; its lease has 7.6 s left
        assert lease.try_hold("node-b:1", ttl=8) is None  # without the VIP's say-so, the expiry is waited out
        assert lease.try_hold("node-b:1", ttl=8, stale_after=0.3) == 2
        assert lease.try_hold("node-a:1", ttl=8) is None  # node-a, back, finds it replaced
        time.sleep(0.4)
        assert lease.try_hold("node-b:2", ttl=8, stale_after=0.3) is None  # never from a sibling worker
        current = lease.current()
        assert current is not None and current.holder == "node-b:1"


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_a_sibling_worker_that_died_is_replaced_at_once(app_factory: Callable[..., Flask], database: str,
                                                        request: pytest.FixtureRequest) -> None:
    app = app_factory(**({"database_url": request.getfixturevalue("postgres_url")} if database == "postgresql" else {}))
    crashed = subprocess.Popen(["true"])
    crashed.wait()  # a worker that held the lease and is gone (gunicorn starts another)
    with app.app_context():
        assert lease.try_hold(f"node-a:{crashed.pid}", ttl=300) == 1
        assert lease.try_hold("node-b:1", ttl=300) is None  # another node waits for the expiry
        assert lease.try_hold(f"node-a:{os.getpid()}", ttl=300) == 2  # its sibling: no wait for the expiry
        assert lease.try_hold("node-a:1", ttl=300) is None  # and never from a sibling that lives
        current = lease.current()
        assert current is not None and current.holder == f"node-a:{os.getpid()}"


def test_lease_is_renewed_while_device_traffic_holds_every_pooled_connection(
    app_factory: Callable[..., Flask], postgres_url: str
) -> None:
    """On PostgreSQL a busy node must keep its lease: renewal never waits for the main pool."""
    app = app_factory(database_url=postgres_url)
    with app.app_context():
        assert lease.try_hold("node-a:1", ttl=30) == 1
        options = app.config["SQLALCHEMY_ENGINE_OPTIONS"]
        held = [db.engine.connect() for _ in range(options["pool_size"] + options["max_overflow"])]
        try:
            assert lease.try_hold("node-a:1", ttl=30) == 1  # renewed, same term, while the pool is exhausted
            row = lease.current()
            assert row is not None and row.holder == "node-a:1"
        finally:
            for conn in held:
                conn.close()
            db.engine.dispose()


def test_a_live_sibling_keeps_its_lease_through_late_renewals(app: Flask) -> None:
    """A worker busy with a storm of devices renews late; its sibling, as busy, must not take the lease from it (the
    bridge would stop and start again for nothing). Another node still takes an expired lease, and a sibling takes
    one whose holder is hung (no renewal for SIBLING_HUNG_AFTER past the expiry)."""
    busy = f"node-a:{os.getpid()}"  # a worker that lives
    with app.app_context():
        assert lease.try_hold(busy, ttl=0.2) == 1
        time.sleep(0.3)  # its renewal is late: the lease expired
        assert lease.try_hold("node-a:1", ttl=5) is None  # its sibling leaves it where it is
        assert lease.renew(db.session, busy, ttl=5) == 1  # the late renewal lands, same term
        db.session.execute(update(LeaderLease).values(
            expires_at=utcnow() - dt.timedelta(seconds=lease.SIBLING_HUNG_AFTER + 1)))
        db.session.commit()
        assert lease.try_hold("node-a:1", ttl=5) == 2  # hung: taken
        assert lease.renew(db.session, busy, ttl=5) is None  # and the hung worker cannot renew it back
        db.session.execute(update(LeaderLease).values(expires_at=utcnow() - dt.timedelta(seconds=1)))
        db.session.commit()
        assert lease.try_hold("node-b:1", ttl=5) == 3  # another node waits for the expiry only


def test_a_released_lease_cannot_be_renewed_back(app: Flask) -> None:
    with app.app_context():
        assert lease.try_hold("node-a:1", ttl=30) == 1
        lease.release("node-a:1")
        assert lease.renew(db.session, "node-a:1", ttl=30) is None  # a renewal in flight at the release
        assert lease.try_hold("node-a:2", ttl=30) == 2  # a sibling takes a released lease at once


# A worker whose event loop is held (a turn of thousands of TLS handshakes) for several times the lease's ttl.
STALLED_WORKER = """
from gevent import monkey
monkey.patch_all()
import json, sys, time
from pnp_integrated import create_app
from pnp_integrated.bus.leader import LeaderLoop

app = create_app({**json.loads(sys.argv[1]), "TESTING": True})
loop = LeaderLoop(app, ttl=1.0, renew_every=0.25, bridge_options={"max_backoff": 0.5, "connect_timeout": 1})
loop.start()
while not loop.is_leader:
    time.sleep(0.05)
print("leading", flush=True)
end = time.monotonic() + 4.0
while time.monotonic() < end:  # nothing else of the worker runs meanwhile
    pass
print("leader" if loop.is_leader else "lapsed", flush=True)
"""


def test_the_lease_is_renewed_while_the_worker_is_too_busy_to_run_anything_else(
        app_factory: Callable[..., Flask], tmp_path: Path) -> None:
    """Seen from another worker or node, the leader's lease never expires while its worker is merely busy."""
    settings = node_settings(tmp_path / "node")
    app = app_factory(**{k: v for k, v in settings.items() if k != "data_dir"}, data_dir=settings["data_dir"])
    worker = subprocess.Popen([sys.executable, "-c", STALLED_WORKER, json.dumps(settings)], stdout=subprocess.PIPE,
                              text=True, cwd=Path(__file__).resolve().parents[2])
    try:
        assert worker.stdout is not None
        assert worker.stdout.readline().strip() == "leading"
        lapses = 0
        for _ in range(30):  # the 4 s the worker is held, read from here
            time.sleep(0.1)
            with app.app_context():
                lapses += lease.current() is None
                db.session.remove()
        assert lapses == 0
        assert worker.stdout.readline().strip() == "leader"  # its bridge may go on sending
    finally:
        worker.kill()
        worker.wait(10)

"""The gateway's bridge to the simulated Prime: commands apply exactly once, status, trust.

Broker and gateway crashes, with both brokers: ``test_bus_resilience.py``.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import event, func, select

from pnp_integrated.bus.bridge import PrimeBridge
from pnp_integrated.bus.leader import LeaderLoop, start_leader_loop, stop_leader_loop
from pnp_integrated.config import load_settings
from pnp_integrated.destinations import COMMANDS_QUEUE
from pnp_integrated.devsim.node import node_environment
from pnp_integrated.models import AuditEntry, OutboxEvent, ProcessedCommand, Profile, db
from pnp_integrated.outbox import record_event
from pnp_integrated.prime.accounts import enrol_local_gateway
from pnp_integrated.prime.server import PrimeProcess, events_path
from pnp_integrated.provisioning import engine
from pnp_integrated.provisioning.types import DeviceIdentity
from tests.support import prime_client, wait_until

Node = tuple[Flask, PrimeProcess]



def sink_events(app: Flask) -> list[tuple[str, str, int, dict[str, Any]]]:
    """(id, type, deliveries, body) of every event Prime stored."""
    path = events_path(app.extensions["pnp_gateway"].settings)
    if not path.exists():
        return []
    with sqlite3.connect(path, timeout=10) as conn:
        try:
            rows = conn.execute("SELECT event_id, type, deliveries, body FROM events ORDER BY seq").fetchall()
        except sqlite3.OperationalError:
            return []
    return [(r[0], r[1], r[2], json.loads(r[3])) for r in rows]


@pytest.fixture
def node(app_factory: Callable[..., Flask], tmp_path: Path) -> Iterator[Node]:
    """A gateway app and the simulated Prime sharing one data dir (and so one CA), as ``pnpp run`` does."""
    app = app_factory(data_dir=tmp_path / "node")
    settings = app.extensions["pnp_gateway"].settings
    env = node_environment({k: v for k, v in settings.public_dict().items() if k in (
        "data_dir", "broker_port", "bus_port", "health_port", "node_name", "vip")})
    enrol_local_gateway(settings)
    prime = PrimeProcess(settings, env=env)
    prime.start()
    yield app, prime
    prime.stop()


@pytest.fixture
def bridge(node: Node) -> Iterator[PrimeBridge]:
    app, _ = node
    bridge = PrimeBridge(app, holder="test:1", receipt_timeout=3, connect_timeout=3, poll_interval=0.1,
                         max_backoff=0.5, heartbeats=(1000, 1000))
    thread = threading.Thread(target=bridge.run, daemon=True)
    thread.start()
    wait_until(lambda: bridge.connected, 10, "the bridge to connect")
    yield bridge
    bridge.stop()
    thread.join(10)
    assert not thread.is_alive(), "the bridge did not stop"


# Far longer than any test waits: an event that reaches Prime was sent without a poll.
NO_POLL = 600.0


@pytest.fixture
def leader(node: Node) -> Iterator[LeaderLoop]:
    """This process as the node's leader worker, as gunicorn runs it, with a bridge that (nearly) never polls."""
    app, _ = node
    loop = start_leader_loop(app, renew_every=0.5, bridge_options={
        "poll_interval": NO_POLL, "receipt_timeout": 3, "connect_timeout": 3, "max_backoff": 0.5,
        "heartbeats": (1000, 1000)})
    try:
        wait_until(lambda: loop.bridge is not None and loop.bridge.connected, 15, "the leader's bridge to connect")
        time.sleep(0.5)  # it looked for events once connected and now waits for the poll
        yield loop
    finally:
        stop_leader_loop(app)


def job_steps(app: Flask, count: int, job: int) -> list[str]:
    """Write ``count`` job.step events in one transaction, as a device's step does; their event ids."""
    with app.app_context():
        first = db.session.scalar(select(func.max(OutboxEvent.id))) or 0
        for step in range(count):
            record_event("job.step", {"job": {"id": job, "step": f"step-{step}", "state": "ended"}})
        db.session.commit()
        return list(db.session.scalars(select(OutboxEvent.event_id).where(OutboxEvent.id > first)
                                       .order_by(OutboxEvent.id)))


def unsent_events(app: Flask) -> int:
    with app.app_context():
        return int(db.session.scalar(select(func.count()).where(OutboxEvent.sent_at.is_(None))) or 0)


def test_events_committed_in_the_leaders_worker_reach_prime_without_waiting_for_the_poll(
        node: Node, leader: LeaderLoop) -> None:
    app, _ = node
    [event_id] = job_steps(app, 1, job=7)
    arrived = wait_until(lambda: [e for e in sink_events(app) if e[0] == event_id], 20,
                         f"the event at Prime, long before the bridge's next poll ({NO_POLL:g}s)")
    assert arrived[0][1] == "job.step" and arrived[0][3]["job"]["id"] == 7
    wait_until(lambda: unsent_events(app) == 0, 10, "the event marked sent")
    # And again, once the bridge waits anew: every commit wakes it, not only the first.
    [again] = job_steps(app, 1, job=8)
    wait_until(lambda: again in {e[0] for e in sink_events(app)}, 20, "the second event at Prime")


def test_a_device_requests_events_reach_prime_without_waiting_for_the_poll(node: Node, leader: LeaderLoop) -> None:
    """A device's request is the engine's own transaction, outside the session: its commit wakes the bridge too."""
    app, _ = node
    with app.app_context():
        engine.contact(DeviceIdentity(serial="WAKE0001", protocol="pnp", address="192.0.2.7"))
    arrived = wait_until(lambda: [e for e in sink_events(app) if e[1] == "device.connected"], 20,
                         f"the device's event at Prime, long before the bridge's next poll ({NO_POLL:g}s)")
    assert arrived[0][3]["device"]["serial"] == "WAKE0001"


def test_a_batch_of_events_costs_the_bridge_one_commit(node: Node, bridge: PrimeBridge) -> None:
    app, _ = node
    with app.app_context():
        engine = db.engine
    commits: list[str] = []
    writer = threading.current_thread()

    def on_commit(_conn: Any) -> None:
        if threading.current_thread() is not writer:  # the bridge's thread: nothing else here commits
            commits.append("commit")

    event.listen(engine, "commit", on_commit)
    try:
        written = job_steps(app, 50, job=9)
        wait_until(lambda: set(written) <= {e[0] for e in sink_events(app)}, 20, "the 50 events at Prime")
        wait_until(lambda: unsent_events(app) == 0, 10, "the events marked sent")
    finally:
        event.remove(engine, "commit", on_commit)
    stored = [e for e in sink_events(app) if e[0] in set(written)]
    assert [e[0] for e in stored] == written  # in the order they were written, each once
    assert all(e[2] == 1 for e in stored)
    assert len(commits) == 1, f"the bridge committed {len(commits)} times for one batch"
    with app.app_context():
        assert set(db.session.scalars(select(OutboxEvent.attempts).where(OutboxEvent.event_id.in_(written)))) == {1}


def send_command(app: Flask, body: bytes | dict[str, Any]) -> None:
    settings = app.extensions["pnp_gateway"].settings
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    with prime_client(settings.data_dir, settings.bus_port) as client:
        client.send(COMMANDS_QUEUE, data, {"persistent": "true", "content-type": "application/json"})


def test_duplicate_command_is_applied_once(node: Node, bridge: PrimeBridge) -> None:
    app, _ = node
    command_id = str(uuid.uuid4())
    first = {"id": command_id, "type": "profile.upsert", "profile": {"name": "branch", "match_pid": "ISR4331"}}
    again = {"id": command_id, "type": "profile.upsert", "profile": {"name": "branch", "match_pid": "C9300"}}
    marker = {"id": str(uuid.uuid4()), "type": "profile.upsert", "profile": {"name": "marker"}}
    for body in (first, again, marker):
        send_command(app, body)

    def applied() -> bool:
        with app.app_context():
            return db.session.scalar(select(Profile).where(Profile.name == "marker")) is not None

    wait_until(applied, 10, "the commands to be applied")
    with app.app_context():
        profile = db.session.scalar(select(Profile).where(Profile.name == "branch"))
        assert profile is not None and profile.match_pid == "ISR4331"  # the repeat changed nothing
        assert db.session.scalar(select(func.count()).select_from(ProcessedCommand)
                                 .where(ProcessedCommand.command_id == command_id)) == 1
        assert db.session.scalar(select(func.count()).select_from(AuditEntry).where(AuditEntry.action ==
                                                                                    "profile.upsert")) == 2
        assert db.session.scalar(select(func.count()).select_from(OutboxEvent)
                                 .where(OutboxEvent.type == "command.rejected")) == 0


def test_malformed_and_unknown_commands_are_rejected_to_prime(node: Node, bridge: PrimeBridge) -> None:
    app, _ = node
    send_command(app, b"{not json")
    send_command(app, {"id": "cmd-unknown", "type": "device.teleport"})
    send_command(app, {"id": "cmd-bad-profile", "type": "profile.upsert", "profile": {"name": 7}})

    def rejections() -> list[dict[str, Any]]:
        return [e[3] for e in sink_events(app) if e[1] == "command.rejected"]

    found = wait_until(lambda: len(r := rejections()) >= 3 and r, 15, "three command.rejected events at Prime")
    reasons = {e["command_id"]: e["reason"] for e in found}
    assert "malformed command: not JSON" in reasons[""]
    assert "device.teleport" in reasons["cmd-unknown"] and "not supported" in reasons["cmd-unknown"]
    assert "wrong type" in reasons["cmd-bad-profile"]
    # Each was acknowledged: nothing is left for a redelivery.
    time.sleep(0.5)
    assert len(rejections()) == 3


def test_status_shows_the_prime_broker_connection(node: Node, bridge: PrimeBridge) -> None:
    app, prime = node
    settings = app.extensions["pnp_gateway"].settings
    client = app.test_client()

    def rows() -> dict[str, dict[str, str]]:
        return {r["service"]: r for r in client.get("/status").get_json()["rows"]}

    up = rows()
    assert up["Prime Infrastructure Broker"]["status"] == "UP"
    assert up["Prime Infrastructure Broker"]["mode"] == "SSL"
    assert up["Prime Infrastructure Broker"]["info"] == (
        f"Connection: 1; Connection Detail: {settings.vip}:{settings.broker_port}")
    assert up["Event Messaging Bus"]["status"] == "UP" and up["Event Messaging Bus"]["mode"] == "PLAIN TEXT"

    prime.kill()
    down = wait_until(lambda: (r := rows())["Prime Infrastructure Broker"]["status"] == "DOWN" and r, 10,
                      "the broker row to go DOWN")
    assert down["Prime Infrastructure Broker"]["info"].startswith("Connection: 0")
    assert down["Event Messaging Bus"]["status"] == "DOWN"
    prime.start()
    wait_until(lambda: rows()["Prime Infrastructure Broker"]["status"] == "UP", 15, "the bridge to reconnect")


def test_bridge_refuses_a_broker_whose_certificate_it_does_not_trust(node: Node, tmp_path: Path) -> None:
    app, _ = node
    other = load_settings({"data_dir": str(tmp_path / "other")})
    from pnp_integrated.bus.bridge import BridgeTarget
    from pnp_integrated.tls import ensure_certificates

    other.data_dir.mkdir(parents=True)
    foreign_ca = ensure_certificates(other).ca
    settings = app.extensions["pnp_gateway"].settings
    bridge = PrimeBridge(app, BridgeTarget(settings.vip, settings.broker_port, foreign_ca), connect_timeout=3,
                         max_backoff=0.5)
    thread = threading.Thread(target=bridge.run, daemon=True)
    thread.start()
    try:
        time.sleep(2)
        assert not bridge.connected
        assert bridge.connections == 0
    finally:
        bridge.stop()
        thread.join(10)
    status = {r["service"]: r for r in app.test_client().get("/status").get_json()["rows"]}
    assert status["Prime Infrastructure Broker"]["status"] == "DOWN"

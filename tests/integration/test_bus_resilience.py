"""Nothing is lost and nothing applied twice when the broker or the gateway dies, with either broker Prime may run.

Every test runs against the embedded broker and against ActiveMQ 5.17 (one simulated Prime per broker for the
module). Gateways are either a bridge thread in the test process or, where the gateway itself must die, a bridge in
a child process (``python -m tests.integration.test_bus_resilience SETTINGS``) that the test SIGKILLs.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import ssl
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import func, select

from pnp_integrated.bus.bridge import BridgeTarget, PrimeBridge
from pnp_integrated.config import Settings, load_settings
from pnp_integrated.credentials import BrokerCredentials
from pnp_integrated.destinations import COMMANDS_QUEUE, EVENTS_QUEUE
from pnp_integrated.devsim.node import node_environment, node_settings
from pnp_integrated.models import AuditEntry, OutboxEvent, ProcessedCommand, Profile, db
from pnp_integrated.outbox import record_event
from pnp_integrated.prime.accounts import enrol_local_gateway
from pnp_integrated.prime.client import StompClient
from pnp_integrated.prime.server import PrimeProcess, events_path
from pnp_integrated.prime.stomp import make_frame
from pnp_integrated.tls import ensure_certificates
from tests.support import prime_client, wait_until

ROOT = Path(__file__).resolve().parents[2]
BRIDGE_OPTIONS: dict[str, Any] = {"receipt_timeout": 3, "connect_timeout": 3, "poll_interval": 0.1,
                                  "max_backoff": 0.5, "heartbeats": (1000, 1000)}


@dataclass
class Prime:
    settings: Settings
    process: PrimeProcess
    kind: str
    gateway_login: BrokerCredentials  # what the gateways of this module log in with

    @property
    def target(self) -> BridgeTarget:
        return BridgeTarget("127.0.0.1", self.settings.broker_port, self.settings.certs_dir / "ca.pem")

    def stored(self) -> dict[str, tuple[str, int, dict[str, Any]]]:
        """event id -> (type, deliveries, body) of every event Prime's sink stored."""
        path = events_path(self.settings)
        if not path.exists():
            return {}
        try:
            with sqlite3.connect(path, timeout=10) as conn:
                rows = conn.execute("SELECT event_id, type, deliveries, body FROM events").fetchall()
        except sqlite3.OperationalError:
            return {}
        return {r[0]: (r[1], r[2], json.loads(r[3])) for r in rows}

    def rejected(self) -> int:
        path = events_path(self.settings)
        with sqlite3.connect(path, timeout=10) as conn:
            return int(conn.execute("SELECT count(*) FROM rejected").fetchone()[0])

    def client(self) -> StompClient:
        """A client of the plain bus port logged in as Prime; ``with`` connects it."""
        return prime_client(self.settings.data_dir, self.settings.bus_port, timeout=10)

    def gateway_client(self) -> StompClient:
        """A client of the plain bus port logged in as a gateway (what sends events)."""
        login = (self.gateway_login.login, self.gateway_login.passcode)
        return StompClient("127.0.0.1", self.settings.bus_port, timeout=10, login=login)


@pytest.fixture(scope="module", params=["embedded", "activemq"])
def prime(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prime]:
    data_dir = tmp_path_factory.mktemp(f"prime-{request.param}")
    values = {k: v for k, v in node_settings(data_dir).items()
              if k in ("data_dir", "broker_port", "bus_port", "health_port")}
    values["broker_credentials_file"] = str(data_dir / "gateway-credentials.json")
    settings = load_settings(values, environ={})
    ensure_certificates(settings)
    login = enrol_local_gateway(settings, activemq=request.param == "activemq")
    process = PrimeProcess(settings, broker=request.param, env=node_environment(values))
    process.start()
    yield Prime(settings, process, request.param, login)
    process.stop()


@pytest.fixture
def gateway(app_factory: Callable[..., Flask], prime: Prime) -> Flask:
    """A gateway app with its own database, talking to the module's Prime."""
    return app_factory(broker_port=prime.settings.broker_port, bus_port=prime.settings.bus_port,
                       broker_credentials_file=prime.settings.broker_credentials_file)



class BridgeThread:
    """The gateway's bridge in this process."""

    def __init__(self, app: Flask, prime: Prime) -> None:
        self.bridge = PrimeBridge(app, prime.target, holder="test:1", **BRIDGE_OPTIONS)
        self.thread = threading.Thread(target=self.bridge.run, daemon=True)

    def __enter__(self) -> PrimeBridge:
        self.thread.start()
        wait_until(lambda: self.bridge.connected, 15, "the bridge to connect")
        return self.bridge

    def __exit__(self, *_exc: object) -> None:
        self.bridge.stop()
        self.thread.join(15)
        assert not self.thread.is_alive(), "the bridge did not stop"


class GatewayProcess:
    """The bridge in a child process on the same database: a gateway that can really die (SIGKILL)."""

    def __init__(self, app: Flask, prime: Prime, log_path: Path, *, die_after_command: bool = False) -> None:
        spec = {"settings": app.config["PNP_SETTINGS"],
                "broker_port": prime.settings.broker_port, "ca": str(prime.target.ca_file),
                "die_after_command": die_after_command}
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.log_path = log_path
        with log_path.open("ab") as log:
            self.process = subprocess.Popen([sys.executable, "-m", "tests.integration.test_bus_resilience",
                                             json.dumps(spec, default=str)], cwd=ROOT, env=env, stdout=log,
                                            stderr=subprocess.STDOUT)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()


def run_gateway(spec: dict[str, Any]) -> None:
    """Child process: run the bridge until SIGTERM (or die right after applying the first command)."""
    import logging

    from pnp_integrated import create_app
    from pnp_integrated.bus import bridge as bridge_module

    logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(name)s %(message)s")
    logging.getLogger("pnp_integrated.bus.bridge").setLevel(logging.DEBUG)
    app = create_app({**spec["settings"], "TESTING": True})
    if spec["die_after_command"]:
        apply = bridge_module.apply_command

        def apply_then_die(body: Any) -> Any:
            outcome = apply(body)  # committed ...
            print(f"applied {outcome.command_id}; dying before the ACK", flush=True)
            os.kill(os.getpid(), signal.SIGKILL)  # ... but never acknowledged
            return outcome

        bridge_module.apply_command = apply_then_die  # type: ignore[assignment]
    target = BridgeTarget("127.0.0.1", int(spec["broker_port"]), Path(spec["ca"]))
    bridge = PrimeBridge(app, target, holder=f"child:{os.getpid()}", **BRIDGE_OPTIONS)
    signal.signal(signal.SIGTERM, lambda *_: bridge.stop())
    bridge.run()


def produce(app: Flask, total: int, batch: int = 10, pause: float = 0.01) -> threading.Thread:
    """Write ``total`` job.step events to the outbox in small transactions, as provisioning does."""

    def work() -> None:
        with app.app_context():
            for start in range(0, total, batch):
                for i in range(start, min(total, start + batch)):
                    record_event("job.step", {"job": {"id": i, "step": "config", "state": "ended"}})
                db.session.commit()
                time.sleep(pause)

    thread = threading.Thread(target=work)
    thread.start()
    return thread


def outbox_ids(app: Flask) -> list[str]:
    with app.app_context():
        return list(db.session.scalars(select(OutboxEvent.event_id).order_by(OutboxEvent.id)))


def unsent(app: Flask) -> int:
    with app.app_context():
        return int(db.session.scalar(select(func.count()).where(OutboxEvent.sent_at.is_(None))) or 0)


def assert_each_event_once(app: Flask, prime: Prime, total: int, timeout: float = 60) -> None:
    """Every event the gateway wrote is at Prime, once; nothing else from this gateway; the outbox is empty."""
    written = outbox_ids(app)
    assert len(written) == total

    def arrived() -> dict[str, tuple[str, int, dict[str, Any]]] | None:
        stored = prime.stored()
        return stored if all(i in stored for i in written) else None

    stored = wait_until(arrived, timeout, f"all {total} events at Prime")
    mine = {i: stored[i] for i in written}
    assert sorted(body["job"]["id"] for _, _, body in mine.values()) == list(range(total))
    wait_until(lambda: unsent(app) == 0, 15, "every outbox row marked sent")


# ---- the broker dies ------------------------------------------------------------------------------------------------
def test_events_survive_a_broker_kill_and_reach_prime_exactly_once(gateway: Flask, prime: Prime) -> None:
    total = 500
    with BridgeThread(gateway, prime) as bridge:
        producer = produce(gateway, total, pause=0.05)
        wait_until(lambda: sum(1 for i in outbox_ids(gateway) if i in prime.stored()) >= 100, 30,
                   "the first events at Prime")
        prime.process.kill()  # mid-stream: receipts lost, messages in flight, the sink's acks lost
        assert producer.is_alive()  # provisioning goes on while the broker is down
        wait_until(lambda: not bridge.connected, 10, "the bridge to notice")
        prime.process.start()
        producer.join(60)
        assert not producer.is_alive()
        assert_each_event_once(gateway, prime, total)
        assert bridge.connected and bridge.connections >= 2  # it reconnected by itself


# ---- the gateway dies -----------------------------------------------------------------------------------------------
def test_gateway_killed_mid_stream_loses_nothing(gateway: Flask, prime: Prime, tmp_path: Path) -> None:
    total = 800
    first = GatewayProcess(gateway, prime, tmp_path / "gateway1.log")
    try:
        wait_until(lambda: "connected to Prime broker" in first.log(), 40, "the first gateway to connect")
        # 40 s of provisioning: still going when the first 50 events are at Prime, on a loaded machine too
        producer = produce(gateway, total, pause=0.05)
        wait_until(lambda: sum(1 for i in outbox_ids(gateway) if i in prime.stored()) >= 50, 40,
                   "the first gateway's events at Prime")
        first.kill()  # SIGKILL mid-stream: some events sent without their receipt seen, others not sent yet
        assert producer.is_alive()
    finally:
        first.kill()
    second = GatewayProcess(gateway, prime, tmp_path / "gateway2.log")
    try:
        producer.join(90)
        assert_each_event_once(gateway, prime, total)
    finally:
        second.stop()
    assert "connected to Prime broker" in second.log()


def send_command(prime: Prime, body: bytes | dict[str, Any]) -> None:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    with prime.client() as client:
        client.send(COMMANDS_QUEUE, data, {"persistent": "true", "content-type": "application/json"})


def test_command_redelivered_after_the_gateway_died_before_acking_is_applied_once(
        gateway: Flask, prime: Prime, tmp_path: Path) -> None:
    command_id = str(uuid.uuid4())
    send_command(prime, {"id": command_id, "type": "profile.upsert",
                         "profile": {"name": "branch", "match_pid": "ISR4331"}})
    dying = GatewayProcess(gateway, prime, tmp_path / "dying.log", die_after_command=True)
    try:
        dying.process.wait(40)
    finally:
        dying.kill()
    assert f"applied {command_id}; dying before the ACK" in dying.log()

    survivor = GatewayProcess(gateway, prime, tmp_path / "survivor.log")
    try:
        # The broker redelivers the unacknowledged command; the gateway sees it was applied and only acknowledges it.
        wait_until(lambda: f"command {command_id}: duplicate" in survivor.log(), 30, "the redelivered command")
        marker = str(uuid.uuid4())
        send_command(prime, {"id": marker, "type": "profile.upsert", "profile": {"name": "marker"}})
        wait_until(lambda: f"command {marker}: applied" in survivor.log(), 15, "a later command")
    finally:
        survivor.stop()
    assert survivor.log().count(f"command {command_id}:") == 1  # acknowledged at last: not redelivered again
    with gateway.app_context():
        profile = db.session.scalar(select(Profile).where(Profile.name == "branch"))
        assert profile is not None and profile.match_pid == "ISR4331"
        assert db.session.scalar(select(func.count()).select_from(AuditEntry)
                                 .where(AuditEntry.target == "branch")) == 1
        assert db.session.scalar(select(func.count()).select_from(ProcessedCommand)
                                 .where(ProcessedCommand.command_id == command_id)) == 1
        assert db.session.scalar(select(func.count()).select_from(OutboxEvent)
                                 .where(OutboxEvent.type == "command.rejected")) == 0


# ---- garbage on the wire --------------------------------------------------------------------------------------------
JUNK_FRAMES = [
    b"\x00\x01\x02\xff\xfe garbage \x00\n",
    b"HELLO\n\n\x00",  # no such command
    b"CONNECT\naccept-version:1.2\nhost:x\n\n\x00SEND\ndestination:/queue/junk\ncontent-length:zz\n\nx\x00",
    b"CONNECT\naccept-version:1.2\nhost:x\n\n\x00SUBSCRIBE\n\n\x00",  # no destination, no id
    b"CONNECT\naccept-version:1.2\nhost:x\n\n\x00SEND\ndestination:/queue/junk\ncontent-length:50\n\nshort",
    b"CONNECT\naccept-version:1.2\nhost:x\n\n\x00SEND\n\xc3\x28:\xff\n\n\x00",  # headers that are not UTF-8
]


def throw_junk(port: int, data: bytes, context: ssl.SSLContext | None = None) -> None:
    """Send ``data`` and hang up, whatever the broker answers."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
            sock = context.wrap_socket(raw) if context is not None else raw
            sock.sendall(data)
            sock.settimeout(0.5)  # an ERROR frame, a close, or (ActiveMQ) silence until the frame completes
            try:
                sock.recv(4096)
            except OSError:
                pass
    except OSError:
        pass


def test_bad_frames_and_bad_json_crash_neither_side(gateway: Flask, prime: Prime) -> None:
    tls = ssl.create_default_context(cafile=str(prime.target.ca_file))
    tls.check_hostname = False
    with BridgeThread(gateway, prime) as bridge:
        # Bad frames on both broker ports, while the bridge and the sink are connected.
        for data in JUNK_FRAMES:
            throw_junk(prime.settings.bus_port, data)
            throw_junk(prime.settings.broker_port, data, tls)
        throw_junk(prime.settings.broker_port, b"CONNECT\naccept-version:1.2\n\n\x00")  # plain text on the TLS port
        # Bad events for Prime's sink, bad commands for the gateway.
        bad_bodies = [b"{not json", b"[" * 100_000, b"\xff\xfe\xfa", b"[]", b'{"type": "job.step"}',
                      b'{"id": "\\ud800", "type": "x"}']
        with prime.gateway_client() as client:
            for body in bad_bodies:
                client.send(EVENTS_QUEUE, body, {"persistent": "true"})
        bad_commands = [*bad_bodies[:4], b'{"id": 5, "type": "job.cancel"}', b'{"id": "c-1", "type": 7}',
                        b'{"id": "c-2", "type": "job.cancel", "job": {"id": "x"}}']
        for body in bad_commands:
            send_command(prime, body)
        # Both sides keep working: a real command is applied, a real event reaches Prime, on the same connection.
        good = str(uuid.uuid4())
        send_command(prime, {"id": good, "type": "profile.upsert", "profile": {"name": "after-the-junk"}})
        with gateway.app_context():
            record_event("job.step", {"job": {"id": 0, "step": "config", "state": "ended"}})
            db.session.commit()
            event_id = db.session.scalar(select(OutboxEvent.event_id).where(OutboxEvent.type == "job.step"))

        def applied() -> bool:
            with gateway.app_context():
                return db.session.scalar(select(Profile).where(Profile.name == "after-the-junk")) is not None

        wait_until(applied, 20, "the good command to be applied")
        wait_until(lambda: event_id in prime.stored(), 20, "the good event at Prime")
        # Still connected and working; a heart-beat reconnect on a loaded machine is allowed, a crash is not.
        assert bridge.connected
        with gateway.app_context():
            rejected = db.session.scalars(select(OutboxEvent).where(OutboxEvent.type == "command.rejected")).all()
        reasons = [e.payload["reason"] for e in rejected]
        assert len(reasons) == 7, reasons
        assert sum("malformed command" in r for r in reasons) == 6
        wait_until(lambda: prime.rejected() >= len(bad_bodies), 20, "the sink to set the bad events aside")
    # The broker still serves new clients on both ports.
    with prime.client() as client:
        subscribe = make_frame("SUBSCRIBE", {"destination": EVENTS_QUEUE, "id": "probe", "ack": "client-individual"})
        assert client.request(subscribe).command == "RECEIPT"
    client = StompClient("127.0.0.1", prime.settings.broker_port, context=tls, timeout=10,
                         login=(prime.gateway_login.login, prime.gateway_login.passcode))
    assert client.connect().command == "CONNECTED"
    client.disconnect()


if __name__ == "__main__":
    run_gateway(json.loads(sys.argv[1]))

"""HA wiring in a worker: the leader loop follows the VIP condition, device requests are refused while PASSIVE.

Two gateway apps share one database, as the two nodes of an HA pair do. Their VIP is a loopback address (it cannot
move), so each follows its co-located Prime health monitor, played here by a small HTTPS server whose answer a test
changes, just as a Prime failover would.
"""

from __future__ import annotations

import json
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import select

from pnp_integrated.bus.leader import LeaderLoop
from pnp_integrated.context import accepting_devices, gateway_state, node_role, retry_after
from pnp_integrated.models import OutboxEvent, db
from tests.support import wait_until


@dataclass
class FakePrimeHealth:
    """An HTTPS ``/health`` answering ``{"state": state}`` on the node's health port."""

    app: Flask
    state: str = "standby"
    server: Any = field(default=None, repr=False)

    def start(self) -> FakePrimeHealth:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                settings = gateway_state(owner.app).settings
                body = json.dumps({"node": settings.node_name, "role": "primary", "state": owner.state,
                                   "ha_mode": "vip", "vip": settings.vip, "peer": ""}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        state = gateway_state(self.app)
        self.server = ThreadingHTTPServer(("127.0.0.1", state.settings.health_port), Handler)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(state.certs.cert, state.certs.key)
        self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()



@dataclass
class Node:
    app: Flask
    prime: FakePrimeHealth
    loop: LeaderLoop

    def state(self) -> str:
        return self.app.test_client().get("/status").get_json()["state"]


@pytest.fixture
def pair(app_factory: Callable[..., Flask], tmp_path: Path) -> Iterator[Callable[..., Node]]:
    started: list[Node] = []
    database = f"sqlite:///{tmp_path / 'shared.sqlite3'}"

    def make(name: str, ttl: float = 3.0) -> Node:
        app = app_factory(node_name=name, ha_mode="vip", vip="127.0.0.1", database_url=database)
        prime = FakePrimeHealth(app).start()
        loop = LeaderLoop(app, ttl=ttl, renew_every=0.3, bridge_options={"max_backoff": 0.5, "connect_timeout": 1})
        node = Node(app, prime, loop)
        started.append(node)
        loop.start()
        return node

    yield make
    for node in started:
        node.loop.stop()
        node.prime.stop()


def test_passive_node_answers_device_requests_503_with_retry_after(app_factory: Callable[..., Flask]) -> None:
    app = app_factory(ha_mode="vip", vip="192.0.2.10", node_name="prime-b")
    client = app.test_client()
    for path in ("/pnp/HELLO", "/cns/config.asp?DeviceID=X", "/images/ios.bin", "/resources/day0.cfg"):
        answer = client.get(path)
        assert answer.status_code == 503, path
        assert answer.headers["Retry-After"] == str(retry_after(app))
        assert b"PASSIVE" in answer.data
    status = client.get("/status")
    assert status.status_code == 200  # operators can always ask
    data = status.get_json()
    assert data["state"] == "PASSIVE"
    row = next(r for r in data["rows"] if r["service"] == "PnP Gateway HA state")
    assert row["status"] == "PASSIVE" and "192.0.2.10 is not on this node" in row["info"]
    prime_row = next(r for r in data["rows"] if r["service"] == "Prime Infrastructure HA status")
    assert prime_row["status"] == "DOWN" and "not reachable" in prime_row["info"]


def test_without_ha_devices_are_served(app_factory: Callable[..., Flask]) -> None:
    app = app_factory()
    assert accepting_devices(app)
    assert app.test_client().get("/pnp/HELLO").status_code == 200
    assert app.test_client().get("/status").get_json()["state"] == "ACTIVE"


def test_active_node_follows_prime_and_hands_over_at_once(pair: Callable[..., Node]) -> None:
    # A lease far longer than the wait below: prime-b can only take over because prime-a released it.
    a, b = pair("prime-a", ttl=120), pair("prime-b", ttl=120)
    a.prime.state = "active"
    wait_until(lambda: a.state() == "ACTIVE", 5, "prime-a to become ACTIVE")
    assert b.state() == "PASSIVE" and not accepting_devices(b.app)
    assert a.app.test_client().get("/pnp/HELLO").status_code == 200

    # Prime fails over: prime-a's health monitor says standby, prime-b's active.
    a.prime.state, b.prime.state = "standby", "active"
    wait_until(lambda: b.state() == "ACTIVE", 30, "prime-b to become ACTIVE (prime-a must release its lease)")
    assert a.state() == "PASSIVE"
    assert a.app.test_client().get("/pnp/HELLO").status_code == 503
    assert b.app.test_client().get("/pnp/HELLO").status_code == 200
    with b.app.app_context():
        states = [(e.payload["node"], e.payload["state"]) for e in db.session.scalars(
            select(OutboxEvent).where(OutboxEvent.type == "gateway.state").order_by(OutboxEvent.id))]
    assert states == [("prime-a", "ACTIVE"), ("prime-a", "PASSIVE"), ("prime-b", "ACTIVE")]
    assert node_role(a.app).transitions == 2


def test_two_nodes_claiming_the_vip_never_both_serve(pair: Callable[[str], Node]) -> None:
    a = pair("prime-a")
    a.prime.state = "active"
    wait_until(lambda: a.state() == "ACTIVE", 5, "prime-a to become ACTIVE")
    b = pair("prime-b")
    b.prime.state = "active"  # both believe they hold the VIP (a keepalived without fencing)
    for _ in range(15):
        time.sleep(0.1)
        assert (a.state(), b.state()) == ("ACTIVE", "PASSIVE")
    row = next(r for r in b.app.test_client().get("/status").get_json()["rows"]
               if r["service"] == "PnP Gateway HA state")
    assert "leader lease held by prime-a" in row["info"]

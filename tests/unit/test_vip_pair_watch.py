"""The rules of a VIP pair's watch, one check at a time, against a peer's health monitor over real HTTPS.

The peer is a small HTTPS server whose answer each test sets, as the other node's monitor would give it; the watch
moves no address (no placement), so what is asserted is the state it reports and what it asks the peer.
"""

from __future__ import annotations

import json
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from pnp_integrated.config import load_settings
from pnp_integrated.tls import ensure_certificates
from pnp_integrated.vip_pair import HealthState, PeerWatch, health_app


@dataclass
class PeerMonitor:
    """The peer's ``/health`` on 127.0.0.1: answers ``answer`` (or nothing while ``down``), records failbacks."""

    cert: Path
    key: Path
    answer: dict[str, Any] = field(default_factory=dict)
    down: bool = False
    failbacks: list[float] = field(default_factory=list)
    server: Any = None

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def start(self) -> PeerMonitor:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def _send(self, body: dict[str, Any]) -> None:
                if owner.down:  # a peer that died: the connection closes without an answer
                    self.close_connection = True
                    return
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                self._send(owner.answer)

            def do_POST(self) -> None:
                if not owner.down:
                    owner.failbacks.append(time.monotonic())
                self._send({"ok": True, "detail": "handed over"})

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(self.cert, self.key)
        self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self


@pytest.fixture
def peer(tmp_path: Path) -> Iterator[PeerMonitor]:
    settings = load_settings({"data_dir": str(tmp_path)}, environ={})
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    paths = ensure_certificates(settings)
    monitor = PeerMonitor(paths.cert, paths.key).start()
    yield monitor
    monitor.server.shutdown()


class Health:
    """This node's own check, as the test sets it."""

    def __init__(self) -> None:
        self.ok = True

    def __call__(self) -> bool:
        return self.ok


def watch_of(peer: PeerMonitor, role: str, state: str = "standby", health: Health | None = None,
             **options: Any) -> PeerWatch:
    me = HealthState("me", role, state, "pair", "192.0.2.10", "127.0.0.1")
    return PeerWatch(me, "127.0.0.1", peer.port, healthy=health, subject="gateway", **options)


def answer(state: str, role: str = "secondary", **extra: Any) -> dict[str, Any]:
    return {"node": "peer", "role": role, "state": state, "ha_mode": "pair", "vip": "192.0.2.10", "peer": "x",
            "peer_state": "", "healthy": True, "starting": False, "active_for": 0.0, "peer_seen": 0.0, "note": "",
            **extra}


def test_a_standby_node_takes_over_after_three_missed_checks_and_only_when_healthy(peer: PeerMonitor) -> None:
    health = Health()
    watch = watch_of(peer, "secondary", health=health)
    peer.down = True
    health.ok = False
    for _ in range(5):  # a node cut off from what it serves takes nothing over
        watch.check()
    assert watch.state.state == "standby"
    assert watch.state.peer_state.startswith("unreachable")
    health.ok = True
    watch.missed = 0
    watch.check()
    watch.check()
    assert watch.state.state == "standby"
    watch.check()
    assert watch.state.state == "active"


def test_a_peer_that_is_still_starting_is_not_overtaken(peer: PeerMonitor) -> None:
    watch = watch_of(peer, "secondary")
    peer.answer = answer("standby", "primary", healthy=False, starting=True)
    for _ in range(5):
        watch.check()
    assert watch.state.state == "standby"
    assert watch.state.peer_state == "standby (starting)"
    peer.answer = answer("standby", "primary", healthy=False, starting=False)  # its grace is over, still broken
    for _ in range(3):
        watch.check()
    assert watch.state.state == "active"


def test_an_active_node_that_stays_unhealthy_gives_the_vip_up(peer: PeerMonitor) -> None:
    health = Health()
    watch = watch_of(peer, "primary", "active", health)
    peer.answer = answer("standby")
    health.ok = False
    watch.check()
    watch.check()
    assert watch.state.state == "active"
    watch.check()
    assert watch.state.state == "standby"
    # Healthy again, it takes the VIP back from a standby secondary (start-up and manual failback rule).
    health.ok = True
    watch.check()
    assert watch.state.state == "active"


def test_automatic_failback_waits_a_whole_hold_down_and_a_flap_starts_it_again(peer: PeerMonitor) -> None:
    hold_down = 1.0
    watch = watch_of(peer, "primary", failback="auto", hold_down=hold_down)
    peer.answer = answer("active", active_for=100.0)
    watch.check()
    assert watch.state.note.startswith("automatic failback in")
    time.sleep(hold_down * 0.5)
    peer.down = True  # the link flaps: one missed check
    watch.check()
    peer.down = False
    watch.check()
    time.sleep(hold_down * 0.5)
    watch.check()
    assert peer.failbacks == []  # over a hold-down since the first check, but never a whole one without a break
    time.sleep(hold_down * 0.6)
    watch.check()
    assert len(peer.failbacks) == 1
    # The secondary did not hand over: the next request waits a whole hold-down again, however often it checks.
    deadline = time.monotonic() + 2.2 * hold_down
    while time.monotonic() < deadline:
        watch.check()
        time.sleep(0.05)
    assert 2 <= len(peer.failbacks) <= 3
    assert all(b - a >= hold_down for a, b in zip(peer.failbacks, peer.failbacks[1:], strict=False))


def test_manual_failback_is_asked_by_no_one_but_the_operator(peer: PeerMonitor) -> None:
    watch = watch_of(peer, "primary")
    peer.answer = answer("active", active_for=100.0)
    for _ in range(5):
        watch.check()
    assert watch.state.state == "standby"
    assert peer.failbacks == []
    done, detail = watch.failback()  # `pnpp ha failback` on the primary: forwarded to the active secondary
    assert done, detail
    assert len(peer.failbacks) == 1


def test_a_healed_partition_leaves_the_vip_where_it_has_been_longest(peer: PeerMonitor) -> None:
    primary = watch_of(peer, "primary", "active", heal="longest")
    peer.answer = answer("active", "secondary", active_for=120.0)
    primary.check()
    assert primary.state.state == "standby"  # the primary that became active while cut off steps down

    secondary = watch_of(peer, "secondary", "active", heal="longest")
    secondary.state.active_since = time.monotonic() - 120
    peer.answer = answer("active", "primary", active_for=3.0)
    secondary.check()
    assert secondary.state.state == "active"

    both = watch_of(peer, "secondary", "active", heal="longest")
    peer.answer = answer("active", "primary", active_for=1.0)  # the same moment: the secondary steps down
    both.check()
    assert both.state.state == "standby"

    prime_rule = watch_of(peer, "primary", "active")  # a Prime pair: the primary wins whatever the times
    peer.answer = answer("active", "secondary", active_for=120.0)
    prime_rule.check()
    assert prime_rule.state.state == "active"


def test_the_secondary_hands_over_only_to_a_healthy_primary(peer: PeerMonitor) -> None:
    watch = watch_of(peer, "secondary", "active")
    peer.answer = answer("standby", "primary", healthy=False)
    done, detail = watch.failback()
    assert not done and "not healthy" in detail
    assert watch.state.state == "active"
    peer.answer = answer("standby", "primary")
    done, detail = watch.failback()
    assert done and "handed over" in detail
    assert watch.state.state == "standby"


def test_a_pair_node_says_more_than_a_lone_one_and_answers_503_when_unhealthy() -> None:
    def get(state: HealthState) -> tuple[str, dict[str, Any]]:
        seen: list[str] = []
        body = b"".join(health_app(state)({"PATH_INFO": "/health", "REQUEST_METHOD": "GET"},
                                          lambda status, headers: seen.append(status)))
        return seen[0], json.loads(body)

    lone = HealthState("p", "primary", "active", "none", "127.0.0.1")
    status, body = get(lone)
    assert status == "200 OK" and set(body) == {"node", "role", "state", "ha_mode", "vip", "peer", "peer_state"}
    pair = HealthState("g", "primary", "active", "pair", "192.0.2.10", "192.0.2.12", healthy=False)
    status, body = get(pair)
    assert status.startswith("503") and body["healthy"] is False and body["active_for"] >= 0

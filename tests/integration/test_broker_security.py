"""Nobody in without a login: what an attacker who reaches the broker ports gets, and what an operator sees.

Per-destination grants on both brokers are in ``test_broker_conformance.py``; this file covers the rest of the
broker's security: idle clients without heart-beats, password guessing, a gateway with a wrong passcode (the bridge
and ``pnpp run``), and secrets that stay out of files others can read, logs, status and metrics.
"""

from __future__ import annotations

import json
import selectors
import socket
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from pnp_integrated.bus.bridge import BridgeTarget, PrimeBridge
from pnp_integrated.config import Settings, load_settings
from pnp_integrated.credentials import BrokerCredentials, gateway_credentials, store_gateway_credentials
from pnp_integrated.devsim.node import NodeDidNotStart, node_environment, node_settings, start_node
from pnp_integrated.prime.accounts import (
    AccountStore,
    LoginThrottle,
    accounts_path,
    authenticator,
    enrol_local_gateway,
    prime_passcode,
)
from pnp_integrated.prime.client import StompClient, StompClientError
from pnp_integrated.prime.server import PrimeProcess
from pnp_integrated.prime.stomp import encode_frame, make_frame
from pnp_integrated.tls import ensure_certificates
from tests.support import prime_client, wait_until


@pytest.fixture
def prime(tmp_path: Path) -> Iterator[Settings]:
    """A simulated Prime whose broker closes a client without heart-beats after 1.5 s of silence."""
    values = {k: v for k, v in node_settings(tmp_path / "prime").items()
              if k in ("data_dir", "broker_port", "bus_port", "health_port")}
    values["broker_idle_timeout"] = 1.5
    settings = load_settings(values, environ={})
    settings.data_dir.mkdir(parents=True)
    ensure_certificates(settings)
    process = PrimeProcess(settings, env=node_environment(values))
    process.start()
    yield settings
    process.stop()


def closed_within(client: object, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            client.receive(0.2)  # type: ignore[attr-defined]
        except StompClientError:
            return True
        if not client.is_open:  # type: ignore[attr-defined]
            return True
    return False


def test_a_client_that_agreed_no_heartbeats_is_closed_once_idle(prime: Settings) -> None:
    silent = prime_client(prime.data_dir, prime.bus_port, heartbeat=(0, 0), timeout=5)
    beating = prime_client(prime.data_dir, prime.bus_port, heartbeat=(500, 0), timeout=5)
    silent.connect()
    beating.connect()
    try:
        started = time.monotonic()
        assert closed_within(silent, 6), "a silent client without heart-beats was kept open"
        assert time.monotonic() - started >= 1.0  # not before the idle timeout
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:  # one that keeps its heart-beat promise stays
            beating.heartbeat()
            beating.receive(0.3)
        assert beating.is_open
    finally:
        silent.close()
        beating.close()


def test_password_guessing_is_cut_off_without_locking_out_other_logins(tmp_path: Path) -> None:
    store = AccountStore(tmp_path / "accounts.json")
    store.put("pnp-gateway", "gateway", "right-passcode-1")
    store.put("prime", "prime", "prime-passcode-2")
    authenticate = authenticator(store, LoginThrottle(per_login=3, per_source=5, window=60))
    answers = [authenticate("pnp-gateway", f"guess-{i}", "192.0.2.9") for i in range(3)]
    assert all(a == "login refused: unknown login or wrong passcode" for a in answers)
    # The fourth try is refused unchecked, even with the right passcode: guessing stops here.
    assert "too many failed logins" in str(authenticate("pnp-gateway", "right-passcode-1", "192.0.2.9"))
    other_source = authenticate("pnp-gateway", "right-passcode-1", "192.0.2.10")
    assert getattr(other_source, "login", None) == "pnp-gateway"  # another source is not held to the first's failures
    assert getattr(authenticate("prime", "prime-passcode-2", "192.0.2.9"), "login", None) == "prime"
    for i in range(2):  # trying other logins from the same source stops at the per-source bound
        authenticate(f"user{i}", "whatever-passcode", "192.0.2.9")
    assert "too many failed logins" in str(authenticate("prime", "prime-passcode-2", "192.0.2.9"))


class Guesses:
    """CONNECTs with a wrong passcode, sent on many connections at once; :meth:`poll` collects the answers."""

    def __init__(self, port: int, logins: list[str]) -> None:
        self._waiting = selectors.DefaultSelector()
        self.answers: dict[socket.socket, bytes] = {}
        sockets = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in logins]
        for sock, login in zip(sockets, logins, strict=True):  # one burst: every passcode to check at once
            sock.sendall(encode_frame(make_frame("CONNECT", {"accept-version": "1.2", "login": login,
                                                             "passcode": "a-wrong-passcode"})))
            self._waiting.register(sock, selectors.EVENT_READ)
            self.answers[sock] = b""

    @property
    def pending(self) -> bool:
        return bool(self._waiting.get_map())

    def poll(self, timeout: float = 0) -> None:
        """Read what has arrived within ``timeout``; a connection is answered at its first whole frame or EOF."""
        for key, _ in self._waiting.select(timeout):
            sock: socket.socket = key.fileobj  # type: ignore[assignment]
            chunk = sock.recv(4096)
            self.answers[sock] += chunk
            if not chunk or b"\x00" in chunk:
                self._waiting.unregister(sock)
                sock.close()

    def wait(self, timeout: float) -> list[str]:
        deadline = time.monotonic() + timeout
        while self.pending and time.monotonic() < deadline:
            self.poll(0.5)
        return [answer.decode(errors="replace") for answer in self.answers.values()]


CHECKED = "unknown login or wrong passcode"


def test_logins_being_checked_do_not_hold_up_connected_clients(prime: Settings) -> None:
    AccountStore(accounts_path(prime)).put("round-trip", "test", "round-trip-pass1",
                                           send=["/queue/round-trip"], receive=["/queue/round-trip"])
    round_trips_while_checking = 0
    with StompClient("127.0.0.1", prime.bus_port, timeout=10, login=("round-trip", "round-trip-pass1")) as client:
        client.subscribe("/queue/round-trip", "loop")
        # 60 wrong logins from one address stay under the per-source bound; one login each, so none is cut off.
        guesses = Guesses(prime.bus_port, [f"guess-{i}" for i in range(60)])
        deadline = time.monotonic() + 60
        while guesses.pending and time.monotonic() < deadline:
            client.send("/queue/round-trip", b"ping", receipt=False)
            message = client.receive(30)
            assert message is not None and message.body == b"ping"
            guesses.poll()
            round_trips_while_checking += guesses.pending
    # The connected client's messages went round while the guesses were being checked, and every guess was checked.
    assert round_trips_while_checking >= 20
    assert all(CHECKED in answer for answer in guesses.wait(5))


def test_guesses_sent_at_once_are_throttled_like_guesses_in_a_row(prime: Settings) -> None:
    answers = Guesses(prime.bus_port, ["pnp-gateway"] * 30).wait(60)
    # Ten wrong passcodes for one login from one address are checked; the rest are refused unchecked.
    assert sum(CHECKED in answer for answer in answers) == 10
    assert sum("too many failed logins" in answer for answer in answers) == 20


def test_logins_that_succeed_never_count_towards_the_throttle(tmp_path: Path) -> None:
    store = AccountStore(tmp_path / "accounts.json")
    store.put("pnp-gateway", "gateway", "right-passcode-1")
    authenticate = authenticator(store, LoginThrottle(per_login=3, per_source=3, window=60))
    for _ in range(5):  # a gateway that reconnects often
        assert getattr(authenticate("pnp-gateway", "right-passcode-1", "192.0.2.9"), "login", None) == "pnp-gateway"
    authenticate("pnp-gateway", "a-wrong-passcode", "192.0.2.9")
    assert getattr(authenticate("pnp-gateway", "right-passcode-1", "192.0.2.9"), "login", None) == "pnp-gateway"


def test_secrets_are_readable_by_their_owner_only(prime: Settings) -> None:
    enrol_local_gateway(prime)
    prime_dir = prime.data_dir / "prime"
    assert prime_dir.stat().st_mode & 0o077 == 0
    for path in (accounts_path(prime), prime_dir / "secrets" / "prime-passcode",
                 prime.data_dir / "secrets" / "broker-credentials.json"):
        assert path.stat().st_mode & 0o077 == 0, f"{path} is readable by others"
    text = accounts_path(prime).read_text()
    assert gateway_credentials(prime).passcode not in text and prime_passcode(prime) not in text  # hashes only


@pytest.fixture
def gateway_of(app_factory: Callable[..., Flask], prime: Settings) -> Callable[[str], PrimeBridge]:
    """The bridge of a gateway app of the Prime above whose stored passcode is the one given."""

    def make(passcode: str, **options: Any) -> PrimeBridge:
        AccountStore(accounts_path(prime)).put("pnp-gateway", "gateway", "the-real-passcode-1")
        app = app_factory(broker_port=prime.broker_port, bus_port=prime.bus_port,
                          broker_credentials_file=str(prime.data_dir / "gw-credentials.json"))
        store_gateway_credentials(app.extensions["pnp_gateway"].settings, BrokerCredentials("pnp-gateway", passcode))
        target = BridgeTarget("127.0.0.1", prime.broker_port, prime.certs_dir / "ca.pem")
        return PrimeBridge(app, target, max_backoff=0.5, **options)

    return make


def test_a_gateway_with_a_wrong_passcode_says_so_and_never_shows_it(gateway_of: Callable[..., PrimeBridge],
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    bridge = gateway_of("a-wrong-passcode-9", connect_timeout=2)
    app = bridge.app
    thread = threading.Thread(target=bridge.run, daemon=True)
    thread.start()
    client = app.test_client()
    try:
        row = wait_until(lambda: next((r for r in client.get("/status").get_json()["rows"]
                                       if r["service"] == "Prime Infrastructure Broker" and "login" in r["info"]),
                                      None), 15, "the broker row to say why")
    finally:
        bridge.stop()
        thread.join(10)
    assert row["status"] == "DOWN" and "refused the gateway's login 'pnp-gateway'" in row["info"]
    assert bridge.connections == 0
    seen = client.get("/status").get_data(as_text=True) + client.get("/metrics").get_data(as_text=True) + caplog.text
    assert "a-wrong-passcode-9" not in seen and "the-real-passcode-1" not in seen


def test_the_right_passcode_connects(gateway_of: Callable[..., PrimeBridge]) -> None:
    bridge = gateway_of("the-real-passcode-1", connect_timeout=5)
    thread = threading.Thread(target=bridge.run, daemon=True)
    thread.start()
    try:
        wait_until(lambda: bridge.connected, 15, "the bridge to connect")
    finally:
        bridge.stop()
        thread.join(10)


def test_pnpp_run_stops_when_its_prime_refuses_the_gateway_login(tmp_path: Path) -> None:
    data_dir = tmp_path / "node" / "data"
    settings = load_settings({"data_dir": str(data_dir)}, environ={})
    # Prime holds one passcode for the gateway, the gateway another (rotated on one side only).
    AccountStore(accounts_path(settings)).put("pnp-gateway", "gateway", "rotated-on-prime-1")
    store_gateway_credentials(settings, BrokerCredentials("pnp-gateway", "stale-on-gateway-2"))
    with pytest.raises(NodeDidNotStart) as failed:
        start_node(tmp_path / "node")
    text = str(failed.value)
    assert "exited with 2" in text
    assert "Prime's broker refused the gateway's login 'pnp-gateway'" in text and "pnpp prime trust" in text
    assert "stale-on-gateway-2" not in text and "rotated-on-prime-1" not in text
    assert "Traceback" not in text


def test_a_new_node_enrols_its_gateway_and_the_broker_row_is_up(tmp_path: Path) -> None:
    node = start_node(tmp_path / "node")
    try:
        def broker_row() -> dict[str, str] | None:
            _, status = node.get_json("/status")
            row = next(r for r in status["rows"] if r["service"] == "Prime Infrastructure Broker")
            return row if row["status"] == "UP" else None

        wait_until(broker_row, 30, "the bridge to log in to the node's own Prime")
        passcode = json.loads((node.data_dir / "secrets" / "broker-credentials.json").read_text())["passcode"]
        with urllib.request.urlopen(node.url("/metrics"), timeout=10) as resp:
            metrics = resp.read().decode()
        assert passcode not in metrics and passcode not in node.log_text()
    finally:
        node.stop()

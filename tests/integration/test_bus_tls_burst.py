"""Regression: a stomp.py TLS consumer keeps up with a burst (stomp.py 9.0.0 stalled here; 8.2.0 is pinned)."""

from __future__ import annotations

import importlib.metadata
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import stomp

from pnp_integrated.config import Settings, load_settings
from pnp_integrated.credentials import gateway_credentials
from pnp_integrated.destinations import COMMANDS_QUEUE
from pnp_integrated.devsim.node import node_environment, node_settings
from pnp_integrated.prime.accounts import enrol_local_gateway
from pnp_integrated.prime.server import PrimeProcess
from pnp_integrated.tls import ensure_certificates
from tests.support import prime_client


@pytest.fixture
def prime(tmp_path: Path) -> Iterator[Settings]:
    values = {k: v for k, v in node_settings(tmp_path).items()
              if k in ("data_dir", "broker_port", "bus_port", "health_port")}
    settings = load_settings(values, environ={})
    ensure_certificates(settings)
    enrol_local_gateway(settings)
    process = PrimeProcess(settings, env=node_environment(values))
    process.start()
    yield settings
    process.stop()


def test_stomp_py_version_is_the_pinned_one() -> None:
    assert importlib.metadata.version("stomp.py") == "8.2.0"


def test_tls_consumer_receives_2000_messages_of_1kb_within_10s(prime: Settings) -> None:
    received: list[Any] = []
    done = threading.Event()

    class Counter(stomp.ConnectionListener):  # type: ignore[misc]
        def on_message(self, frame: Any) -> None:
            received.append(frame)
            if len(received) == 2000:
                done.set()

    host_port = ("127.0.0.1", prime.broker_port)
    consumer = stomp.Connection12([host_port], prefer_localhost=False, try_loopback_connect=False,
                                  heartbeats=(4000, 4000), heart_beat_receive_scale=2.5)
    consumer.set_ssl(for_hosts=[host_port], ca_certs=str(prime.certs_dir / "ca.pem"))
    consumer.set_listener("count", Counter())
    login = gateway_credentials(prime)
    consumer.connect(login.login, login.passcode, wait=True)
    try:
        consumer.subscribe(COMMANDS_QUEUE, id="burst", ack="auto")  # a queue keeps messages until it is in place
        started = time.monotonic()
        with prime_client(prime.data_dir, prime.bus_port) as producer:
            for i in range(2000):
                producer.send(COMMANDS_QUEUE, (f"{i:04d}" + "x" * 1020).encode(), receipt=False)
        assert done.wait(10), f"only {len(received)} of 2000 messages arrived within 10 s"
        elapsed = time.monotonic() - started
    finally:
        consumer.disconnect()
    assert elapsed < 10
    assert [int(f.body[:4]) for f in received] == list(range(2000))  # in order, none lost
    assert all(len(f.body) == 1024 for f in received)

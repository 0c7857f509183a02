"""The listening-socket scan behind the status rows: /status reads afresh, scrapes and refreshes may reuse 2 s."""

from __future__ import annotations

import socket

import pytest

from pnp_integrated.status import LISTENING_FRESH_FOR, ListeningScan


def test_a_reading_is_reused_only_when_asked_and_only_while_fresh(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [1000.0]
    monkeypatch.setattr("pnp_integrated.status.time.monotonic", lambda: clock[0])
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    scan = ListeningScan()
    assert port in scan.read(fresh_for=LISTENING_FRESH_FOR)
    listener.close()

    clock[0] += LISTENING_FRESH_FOR / 2
    assert port in scan.read(fresh_for=LISTENING_FRESH_FOR)  # a dashboard refresh: the reading of a second ago
    assert port not in scan.read()  # /status: measured now
    listener = socket.create_server(("127.0.0.1", port))
    try:
        clock[0] += LISTENING_FRESH_FOR
        assert port in scan.read(fresh_for=LISTENING_FRESH_FOR)  # too old to reuse: measured again
    finally:
        listener.close()

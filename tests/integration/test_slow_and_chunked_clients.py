"""Clients the campaign found held or misread: one that trickles its headers a byte at a time (slowloris) is closed
after the header deadline, on HTTP and HTTPS; a chunked JSON body past the limit is a 413, not "broken JSON"."""

from __future__ import annotations

import http.client
import socket
import subprocess
import time
from collections.abc import Callable, Iterator

import pytest

from pnp_integrated.devsim.node import PNPP, RunningNode

HEADER_TIMEOUT = 2.0


@pytest.fixture(scope="module")
def node(node_launcher: Callable[..., RunningNode], tmp_path_factory: pytest.TempPathFactory
         ) -> Iterator[RunningNode]:
    # The idle limit is longer than the whole test: only the header deadline can close the trickling client.
    launched = node_launcher(tmp_path_factory.mktemp("slow-clients"), http_header_timeout=HEADER_TIMEOUT,
                             http_idle_timeout=60, workers=1)
    yield launched
    launched.stop()


@pytest.mark.parametrize("tls", [False, True], ids=["http", "https"])
def test_a_client_trickling_its_headers_is_closed_after_the_header_deadline(node: RunningNode, tls: bool) -> None:
    sock = socket.create_connection(("127.0.0.1", node.port("https_port" if tls else "http_port")), timeout=10)
    if tls:
        sock = node.client_context().wrap_socket(sock)
    with sock:
        sock.sendall(b"GET /pnp/HELLO HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        started = time.monotonic()
        answer = b""
        try:
            while time.monotonic() - started < 4 * HEADER_TIMEOUT:
                sock.sendall(b"x")  # a byte well within the idle limit, every time
                time.sleep(0.25)
        except OSError:
            pass
        try:
            answer = sock.recv(4096)
        except OSError:
            pass
        held = time.monotonic() - started
    assert answer.startswith(b"HTTP/1.1 408"), answer
    assert held < 4 * HEADER_TIMEOUT  # closed, not held until the client gave up
    # A kept-alive client that asks again after more than the header deadline is served (its wait is the idle limit's).
    connection = http.client.HTTPConnection("127.0.0.1", node.port("http_port"), timeout=10)
    connection.request("GET", "/pnp/HELLO")
    assert connection.getresponse().read() == b""
    time.sleep(HEADER_TIMEOUT + 1)
    connection.request("GET", "/pnp/HELLO")
    assert connection.getresponse().status == 200
    connection.close()


def test_a_chunked_json_body_past_the_limit_is_413(node: RunningNode) -> None:
    token = subprocess.run([PNPP, "token", "create", "--role", "admin"], env=node.env, check=True,
                           capture_output=True, text=True).stdout.strip()

    def send(body: bytes) -> tuple[int, bytes]:
        connection = http.client.HTTPConnection("127.0.0.1", node.port("http_port"), timeout=30)
        connection.putrequest("POST", "/api/v1/profiles")
        for name, value in (("Authorization", f"Bearer {token}"), ("Content-Type", "application/json"),
                            ("Transfer-Encoding", "chunked")):
            connection.putheader(name, value)
        connection.endheaders()
        for start in range(0, len(body), 65536):
            part = body[start:start + 65536]
            connection.send(b"%x\r\n" % len(part) + part + b"\r\n")
        connection.send(b"0\r\n\r\n")
        reply = connection.getresponse()
        return reply.status, reply.read()

    assert send(b'{"name": "' + b"x" * (2 * 1024 * 1024) + b'"}')[0] == 413
    assert send(b'{"name": "chunked"}')[0] == 201

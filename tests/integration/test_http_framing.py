"""Ambiguous HTTP framing is refused on the plain and the TLS port alike, as a proxy in front would expect: a
request two parsers could split differently never reaches the application."""

from __future__ import annotations

import socket
import ssl
from collections.abc import Callable

import pytest

from pnp_integrated.devsim.node import RunningNode

POST = b"POST /pnp/WORK-REQUEST HTTP/1.1\r\nHost: x\r\nContent-Type: text/xml\r\n"
AMBIGUOUS = {
    "Content-Length and Transfer-Encoding": POST + b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "two Content-Lengths": POST + b"Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
    "a signed Content-Length": POST + b"Content-Length: +5\r\n\r\nhello",
    "a folded Transfer-Encoding": POST + b"Transfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n",
    "an unknown transfer coding": POST + b"Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
    "a bad chunk line": POST + b"Transfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
    "NUL in a header value": b"GET /pnp/HELLO HTTP/1.1\r\nHost: x\r\nX-Probe: a\x00b\r\n\r\n",
    "a bare CR in a header value": b"GET /pnp/HELLO HTTP/1.1\r\nHost: x\r\nX-Probe: a\rb\r\n\r\n",
    "a space before a header's colon": b"GET /pnp/HELLO HTTP/1.1\r\nHost : x\r\n\r\n",
}


def first_line(node: RunningNode, raw: bytes, tls: bool) -> bytes:
    sock = socket.create_connection(("127.0.0.1", node.port("https_port" if tls else "http_port")), timeout=10)
    if tls:
        sock = node.client_context().wrap_socket(sock)
    with sock:
        sock.sendall(raw)
        data = b""
        try:
            while b"\r\n" not in data:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                data += chunk
        except (ConnectionResetError, ssl.SSLError):
            pass
    return data.split(b"\r\n", 1)[0]


@pytest.mark.parametrize("tls", [False, True], ids=["http", "https"])
def test_ambiguous_requests_are_400(running_node: Callable[..., RunningNode], tls: bool) -> None:
    node = running_node()
    answers = {name: first_line(node, raw, tls) for name, raw in AMBIGUOUS.items()}
    assert all(line.startswith(b"HTTP/1.1 400") for line in answers.values()), answers
    assert first_line(node, b"GET /pnp/HELLO HTTP/1.1\r\nHost: x\r\n\r\n", tls).startswith(b"HTTP/1.1 200")
    assert "Traceback" not in node.log_text()

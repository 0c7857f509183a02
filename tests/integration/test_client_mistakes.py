"""What clients get wrong is logged in a line each, a bounded number of lines, never a traceback."""

from __future__ import annotations

import random
import socket
import ssl
from collections.abc import Callable

from pnp_integrated.devsim.node import RunningNode
from pnp_integrated.logs import CLIENT_MISTAKES_PER_MINUTE
from tests.support import wait_until

SCANS = 300


def test_refused_handshakes_and_clients_gone_mid_response_leave_few_lines_and_no_traceback(
        running_node: Callable[..., RunningNode]) -> None:
    node = running_node()
    https = node.port("https_port")
    for _ in range(SCANS):  # a scanner speaking plain text to the TLS port
        with socket.create_connection(("127.0.0.1", https), timeout=5) as sock:
            sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
            try:
                sock.recv(100)
            except ConnectionResetError:  # refused: the node may reset the connection
                pass
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    for _ in range(5):  # a client that sends a request and vanishes before the answer
        tls = context.wrap_socket(socket.create_connection(("127.0.0.1", https), timeout=5))
        tls.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        tls.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")  # RST on close
        tls.close()
    wait_until(lambda: "TLS handshake refused" in node.log_text(), 5, "the refusals logged")
    log = node.log_text()
    assert "Traceback" not in log
    # Two workers share the port: each logs at most its allowance of refusals a minute.
    assert 1 <= log.count(f"TLS handshake refused on port {https} ") <= 2 * CLIENT_MISTAKES_PER_MINUTE < SCANS


# Every byte str.split() takes for a space once the request line is decoded as latin-1 (NUL, controls and 0x80 up
# stay in): the random requests below are one word each, never a request line gevent could parse.
_SPACES = bytes(b for b in range(256) if chr(b).isspace())


def _malformed_requests(count: int) -> list[bytes]:
    """Request lines gevent refuses, each naming PROBE: a NUL in the method, random bytes, a four-word line, and a
    line of a few kilobytes."""
    rng = random.Random(7)
    shapes = [
        lambda: b"PROBE\x00 / HTTP/1.1 x\r\n\r\n",
        lambda: b"PROBE" + rng.randbytes(60).translate(None, _SPACES) + b"\r\n\r\n",
        lambda: b"PROBE / HTTP/1.1 extra\r\n\r\n",
        lambda: b"PROBE " * 1000 + b"\r\n\r\n",
    ]
    return [shapes[i % len(shapes)]() for i in range(count)]


def _send(sock: socket.socket, request: bytes) -> bytes:
    sock.sendall(request)
    answer = b""
    try:
        while chunk := sock.recv(4096):
            answer += chunk
    except (ConnectionResetError, ssl.SSLError):  # refused: the node may close without a TLS goodbye
        pass
    return answer


def test_malformed_requests_on_the_http_ports_leave_few_lines_and_no_traceback(
        running_node: Callable[..., RunningNode]) -> None:
    node = running_node()
    http, https = node.port("http_port"), node.port("https_port")
    context = node.client_context()
    answers = []
    for request in _malformed_requests(SCANS):
        with socket.create_connection(("127.0.0.1", http), timeout=5) as sock:
            answers.append(_send(sock, request))
        with context.wrap_socket(socket.create_connection(("127.0.0.1", https), timeout=5)) as tls:
            answers.append(_send(tls, request))
    assert all(answer.startswith(b"HTTP/1.1 400") for answer in answers)
    assert node.get_json("/status")[0] == 200
    wait_until(lambda: "PROBE" in node.log_text(), 5, "the refused requests logged")
    log = node.log_text()
    assert "Traceback" not in log
    lines = [line for line in log.splitlines() if "PROBE" in line]
    # Two workers share each port: each logs at most its allowance a minute, and every line names its port.
    assert len(lines) <= 2 * 2 * CLIENT_MISTAKES_PER_MINUTE < 2 * SCANS
    for port in (http, https):
        assert 1 <= sum(f"port {port} " in line for line in lines) <= 2 * CLIENT_MISTAKES_PER_MINUTE
    assert max(len(line) for line in lines) < 500  # a line of kilobytes is cut, not copied into the log

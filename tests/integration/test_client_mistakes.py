"""What clients get wrong is logged in a line each, a bounded number of lines, never a traceback."""

from __future__ import annotations

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

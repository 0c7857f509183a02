"""Ambiguous HTTP framing is refused on the plain and the TLS port alike, as a proxy in front would expect: a
request two parsers could split differently never reaches the application."""

from __future__ import annotations

import hashlib
import json
import socket
import ssl
import subprocess
import urllib.request
from collections.abc import Callable

import pytest

from pnp_integrated.devsim.node import PNPP, RunningNode

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


@pytest.mark.parametrize("tls", [False, True], ids=["http", "https"])
def test_a_multipart_upload_reaches_the_api(running_node: Callable[..., RunningNode], tls: bool) -> None:
    """A browser's or curl's ``-F file=@image.bin`` upload: its multipart Content-Type is not a malformed header."""
    node = running_node()
    created = subprocess.run([PNPP, "token", "create", "--role", "admin", "--name", "upload"], env=node.env,
                             capture_output=True, text=True, timeout=60)
    assert created.returncode == 0, created.stderr
    image = b"\x7fELF" + bytes(range(256)) * 64
    boundary = "----pnp-upload-7d3a"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"isr4300.17.09.04a.SPA.bin\""
            f"\r\nContent-Type: application/octet-stream\r\n\r\n").encode() + image + f"\r\n--{boundary}--\r\n".encode()
    request = urllib.request.Request(node.url("/api/v1/images", tls=tls), data=body, method="POST", headers={
        "Authorization": f"Bearer {created.stdout.strip()}",
        "Content-Type": f"multipart/form-data; boundary={boundary}"})
    with urllib.request.urlopen(request, timeout=30, context=node.client_context() if tls else None) as answer:
        assert answer.status == 201
        stored = json.loads(answer.read())
    assert (stored["md5"], stored["size"], stored["version"]) == (hashlib.md5(image).hexdigest(), len(image),
                                                                  "17.09.04a")

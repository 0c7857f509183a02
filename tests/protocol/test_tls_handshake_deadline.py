"""The TLS handshake deadline of the gateway's raw ports is the peer's: a device that does its part in time is not
closed because the worker, busy with a storm of devices, comes to its bytes after the deadline.

The server side runs in a gevent-patched process, as in a gunicorn worker (the tests' own process is not patched).
"""

from __future__ import annotations

import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

from flask import Flask

from pnp_integrated.context import gateway_state

# One accepted connection, shaken hands with by tls_handshake (1 s deadline) in a worker whose turns are busy from
# 0.8 s to 1.3 s (the deadline passes meanwhile) and again until 2.3 s before it comes to the deadline.
SERVER = """
from gevent import monkey
monkey.patch_all()
import socket, ssl, sys, time
import gevent
from pnp_integrated.listeners import tls_handshake

context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(sys.argv[1], sys.argv[2])
listener = socket.socket()
listener.bind(("127.0.0.1", 0))
listener.listen(1)
print(listener.getsockname()[1], flush=True)
raw, address = listener.accept()

def busy(seconds):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass

gevent.spawn_later(0.8, busy, 0.5)
gevent.spawn_later(1.1, busy, 1.0)
tls = tls_handshake(raw, address, context, 1.0, 0)
if tls is not None:
    tls.sendall(b"shaken\\n")
    tls.recv(1)
"""


def test_a_device_on_time_is_not_closed_when_the_worker_shakes_hands_late(app: Flask) -> None:
    certs = gateway_state(app).certs
    server = subprocess.Popen([sys.executable, "-c", SERVER, str(certs.cert), str(certs.key)],
                              stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[2])
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline())
        raw = socket.create_connection(("127.0.0.1", port), timeout=10)
        time.sleep(1.5)  # the device does its part here: well within 1 s of the worker's first look
        context = ssl.create_default_context()
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
        with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            assert tls.recv(64) == b"shaken\n"
    finally:
        server.kill()
        server.wait(10)

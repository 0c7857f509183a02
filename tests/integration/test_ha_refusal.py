"""Prime HA with different primary and secondary addresses is refused at the entry points not covered elsewhere.

``pnpp run`` (tests/integration/test_node.py), ``pnpp status`` (test_config_cli.py), the settings themselves
(tests/unit/test_config.py) and ``pnpp setup --ha-mode different-ip`` (tests/unit/test_setup.py) have their tests.
Here: the WSGI entry point under gunicorn, and ``pnpp setup`` next to a Prime whose HA uses different addresses.
"""

from __future__ import annotations

import json
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from pnp_integrated.devsim.node import PNPP, node_environment, node_settings, port_accepts

ROOT = Path(__file__).resolve().parents[2]
GUNICORN = str(Path(sys.executable).with_name("gunicorn"))


def test_gunicorn_entry_point_refuses_with_the_message_and_opens_no_port(tmp_path: Path) -> None:
    settings = node_settings(tmp_path / "data", ha_mode="different-ip")
    ports = [settings["http_port"], settings["https_port"], settings["cns_port_base"], settings["health_port"]]
    opened: set[int] = set()
    proc = subprocess.Popen([GUNICORN, "-c", "deploy/gunicorn.conf.py", "wsgi:app"], cwd=ROOT,
                            env=node_environment(settings), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    deadline = time.monotonic() + 60
    while proc.poll() is None and time.monotonic() < deadline:
        opened.update(p for p in ports if port_accepts(p, timeout=0.2))
        time.sleep(0.1)
    if proc.poll() is None:
        proc.kill()
    out, err = proc.communicate()
    assert proc.returncode not in (0, None), out + err
    assert "PNP_HA_MODE" in err and "deploy a standalone PnP gateway" in err
    assert "Traceback" not in err
    assert sorted(opened) == []
    assert not (tmp_path / "data" / "pnp.sqlite3").exists()


@pytest.fixture
def prime_with_different_addresses(tmp_path: Path) -> Iterator[int]:
    """A co-located Prime health monitor reporting HA with different primary/secondary addresses; its port."""
    key, cert = tmp_path / "prime.key", tmp_path / "prime.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=prime",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)

    class Health(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = json.dumps({"node": "prime-a", "role": "primary", "state": "active", "ha_mode": "different-ip",
                               "vip": "", "peer": "192.0.2.12"}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Health)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()


def test_setup_next_to_a_prime_with_different_addresses_refuses_and_writes_nothing(
        prime_with_different_addresses: int, tmp_path: Path) -> None:
    path = tmp_path / "gw.toml"
    env = node_environment({"health_port": prime_with_different_addresses})
    done = subprocess.run([PNPP, "setup", "--config", str(path), "--yes"], env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "HA mode: different-ip" in done.stdout  # what was detected is shown before the refusal
    assert "deploy a standalone PnP gateway" in done.stderr and "Nothing was written." in done.stderr
    assert not path.exists()

"""Integration fixtures: a real node (``pnpp run``: simulated Prime + gunicorn/gevent) on moved ports.

``running_node(**settings)`` starts a node for one test; ``node_launcher(data_dir, **settings)`` does the same for
fixtures of a wider scope (one node shared by a module). Both wait until GET /status answers on the HTTP port and
stop every node they started, collecting its log.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import node_environment, node_settings

PNPP = str(Path(sys.executable).with_name("pnpp"))
READY_TIMEOUT = 120.0  # generous: a loaded CI machine boots workers slowly; `make run` itself is ready in seconds


@dataclass
class RunningNode:
    """A ``pnpp run`` process and what a test needs to talk to it."""

    settings: dict[str, Any]
    env: dict[str, str]
    process: subprocess.Popen[bytes]
    log_path: Path
    exit_code: int | None = None
    stop_seconds: float | None = None
    _log: Any = field(default=None, repr=False)

    @property
    def data_dir(self) -> Path:
        return Path(self.settings["data_dir"])

    @property
    def ca_file(self) -> Path:
        return self.data_dir / "certs" / "ca.pem"

    def port(self, name: str) -> int:
        return int(self.settings[name])

    def log_text(self) -> str:
        """Everything the node (Prime child, gunicorn master and workers) wrote so far."""
        return self.log_path.read_text(errors="replace")

    def url(self, path: str, tls: bool = False) -> str:
        """URL of ``path`` on the node's HTTP port, or its HTTPS port with ``tls``."""
        if tls:
            return f"https://127.0.0.1:{self.port('https_port')}{path}"
        return f"http://127.0.0.1:{self.port('http_port')}{path}"

    def client_context(self) -> ssl.SSLContext:
        """A client context pinned to the node's generated CA."""
        ctx = ssl.create_default_context(cafile=str(self.ca_file))
        ctx.check_hostname = False
        return ctx

    def get_json(self, path: str, tls: bool = False, timeout: float = 10.0) -> tuple[int, Any]:
        """(HTTP status, decoded JSON body) of a GET."""
        context = self.client_context() if tls else None
        with urllib.request.urlopen(self.url(path, tls), timeout=timeout, context=context) as resp:
            return resp.status, json.loads(resp.read())

    def tcp_ports(self) -> list[int]:
        """Every port the gateway serves: HTTP, HTTPS, monitoring, 2 dispatchers, 10 gateway ports."""
        base = self.port("cns_port_base")
        return [self.port("http_port"), self.port("https_port"), *range(base, base + 13)]

    def tls_ports(self) -> dict[str, int]:
        """Every TLS port of the gateway, by role."""
        base = self.port("cns_port_base")
        ports = {"https": self.port("https_port"), "monitoring": base, "dispatcher": base + 2}
        ports.update({f"gateway {p}": p for p in range(base + 4, base + 13, 2)})
        return ports

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"pnpp run exited with {self.process.returncode}:\n{self.log_text()}")
            try:
                status, _ = self.get_json("/status", timeout=2)
                if status == 200:
                    return
            except (OSError, ValueError) as exc:
                last = exc
            time.sleep(0.2)
        raise AssertionError(f"node not ready after {timeout}s ({last}):\n{self.log_text()}")

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM ``pnpp run`` (it forwards the signal to gunicorn and stops Prime); kill it if it hangs."""
        if self.exit_code is not None:
            return self.exit_code
        started = time.monotonic()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(5)
        self.stop_seconds = time.monotonic() - started
        self.exit_code = self.process.returncode
        # Children left behind by a crash would hold the ports of later tests.
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        if self._log is not None:
            self._log.close()
        return self.exit_code


def start_node(data_dir: Path, **overrides: Any) -> RunningNode:
    """Start ``pnpp run`` on a private data dir with every port moved; returns once /status answers."""
    data_dir.mkdir(parents=True, exist_ok=True)
    settings = node_settings(data_dir / "data", **overrides)
    env = node_environment(settings)
    log_path = data_dir / "node.log"
    log = log_path.open("wb")
    process = subprocess.Popen(
        [PNPP, "run"], env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        start_new_session=True,  # its own process group, so a hung node can be killed with all its children
    )
    node = RunningNode(settings=settings, env=env, process=process, log_path=log_path, _log=log)
    try:
        node.wait_ready()
    except BaseException:
        node.stop(timeout=10)
        raise
    return node


def port_accepts(port: int, host: str = "127.0.0.1", timeout: float = 2.0) -> bool:
    """True when something accepts TCP connections on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


@pytest.fixture(scope="session")
def node_launcher() -> Iterator[Callable[..., RunningNode]]:
    """``launch(data_dir, **settings)``: a node for fixtures of any scope; stopped at the end of the session."""
    nodes: list[RunningNode] = []

    def launch(data_dir: Path, **overrides: Any) -> RunningNode:
        node = start_node(data_dir, **overrides)
        nodes.append(node)
        return node

    yield launch
    for node in nodes:
        node.stop()


@pytest.fixture
def running_node(tmp_path: Path) -> Iterator[Callable[..., RunningNode]]:
    """``running_node(**settings)``: a ready node for this test, stopped when the test ends."""
    nodes: list[RunningNode] = []

    def launch(**overrides: Any) -> RunningNode:
        node = start_node(tmp_path / f"node{len(nodes)}", **overrides)
        nodes.append(node)
        return node

    yield launch
    for node in nodes:
        node.stop()

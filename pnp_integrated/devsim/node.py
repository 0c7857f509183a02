"""A gateway node started for tests and benchmarks: ``pnpp run`` on a private data directory, every port moved.

:func:`start_node` returns a :class:`RunningNode` once GET /status answers; :meth:`RunningNode.stop` stops it with
every process it started. The settings are the node's (``http_port`` ...), passed as ``PNP_*`` variables.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PNP_ENV_PREFIX = "PNP_"

def free_port_block(count: int = 1) -> int:
    """The first of ``count`` consecutive TCP ports that are free on 127.0.0.1 right now.

    Blocks are drawn at random below the kernel's ephemeral range (32768+), so the client sockets of a busy test run
    cannot take a port of a node between the moment it is chosen and the moment the node binds it.
    """
    rng = random.SystemRandom()
    for _ in range(200):
        start = rng.randrange(20000, 32700 - count)
        socks = []
        try:
            for port in range(start, start + count):
                s = socket.socket()
                s.bind(("127.0.0.1", port))
                socks.append(s)
            return start
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no free block of ports")


def node_settings(data_dir: Path, **overrides: Any) -> dict[str, Any]:
    """Settings of a node started here: private data dir, every port moved to a free block."""
    base = free_port_block(19)
    settings: dict[str, Any] = {
        "data_dir": str(data_dir),
        "http_port": base + 13,
        "https_port": base + 14,
        "cns_port_base": base,
        "broker_port": base + 15,
        "bus_port": base + 16,
        "health_port": base + 17,
        "drain_timeout": 2,
    }
    settings.update(overrides)
    return settings


def node_environment(settings: dict[str, Any]) -> dict[str, str]:
    """The same settings as PNP_* variables, for subprocesses (``pnpp run``, gunicorn)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(PNP_ENV_PREFIX)}
    env.update({f"PNP_{k.upper()}": str(v) for k, v in settings.items()})
    return env


PNPP = str(Path(sys.executable).with_name("pnpp"))
READY_TIMEOUT = 120.0  # generous: a loaded CI machine boots workers slowly; `make run` itself is ready in seconds


class NodeDidNotStart(RuntimeError):
    """``pnpp run`` exited or never answered GET /status (the message carries its log)."""


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
                raise NodeDidNotStart(f"pnpp run exited with {self.process.returncode}:\n{self.log_text()}")
            try:
                status, _ = self.get_json("/status", timeout=2)
                if status == 200:
                    return
            except (OSError, ValueError) as exc:
                last = exc
            time.sleep(0.2)
        raise NodeDidNotStart(f"node not ready after {timeout}s ({last}):\n{self.log_text()}")

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


@dataclass
class RunningPrime:
    """A simulated Prime server (``pnpp prime serve``) on one address of this host, as a standalone gateway sees it:
    another machine, with its broker and health monitor on that address."""

    address: str
    settings: dict[str, Any]
    env: dict[str, str]
    process: subprocess.Popen[bytes]
    log_path: Path
    _log: Any = field(default=None, repr=False)

    @property
    def data_dir(self) -> Path:
        return Path(self.settings["data_dir"])

    def health(self, timeout: float = 2.0) -> dict[str, Any] | None:
        from ..healthcheck import ask_health

        return ask_health(self.address, int(self.settings["health_port"]), timeout=timeout)

    def event_ids(self) -> list[str]:
        """Ids of the gateway events this Prime server received, in arrival order (repeats counted once)."""
        from ..prime.sink import EventStore

        path = self.data_dir / "prime" / "events.sqlite3"
        if not path.exists():
            return []
        store = EventStore(path)
        try:
            return [event.event_id for event in store.events()]
        finally:
            store.close()

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise NodeDidNotStart(f"pnpp prime serve exited with {self.process.returncode}:\n{self.log_text()}")
            if self.health(timeout=1.0) is not None:
                return
            time.sleep(0.2)
        raise NodeDidNotStart(f"Prime on {self.address} not ready after {timeout}s:\n{self.log_text()}")

    def freeze(self) -> None:
        """A server that hangs or loses power: SIGSTOP, so its connections stay open but nothing answers."""
        os.killpg(self.process.pid, signal.SIGSTOP)

    def kill(self) -> None:
        """A crash: SIGKILL the server (its clients see their connections reset)."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)

    def stop(self, timeout: float = 20.0) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                os.killpg(self.process.pid, signal.SIGCONT)  # a frozen server sees its SIGTERM only once it runs
            except ProcessLookupError:
                pass
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        if self._log is not None:
            self._log.close()
            self._log = None


def start_prime(data_dir: Path, address: str, *, role: str = "primary", state: str | None = None, peer: str = "",
                **overrides: Any) -> RunningPrime:
    """Start a simulated Prime server bound to ``address`` (e.g. a loopback alias 127.0.0.2); returns once its
    health monitor answers. ``overrides`` are its settings (the ports a gateway uses must be the gateway's)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    settings: dict[str, Any] = {"data_dir": str(data_dir / "data"), "vip": address, "node_name": f"prime-{address}"}
    settings.update(overrides)
    env = node_environment(settings)
    log_path = data_dir / "prime.log"
    log = log_path.open("wb")
    command = [PNPP, "prime", "serve", "--address", address, "--role", role]
    if state:
        command += ["--state", state]
    if peer:
        command += ["--peer", peer]
    process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                               start_new_session=True)
    prime = RunningPrime(address=address, settings=settings, env=env, process=process, log_path=log_path, _log=log)
    try:
        prime.wait_ready()
    except BaseException:
        prime.stop(timeout=5)
        raise
    return prime

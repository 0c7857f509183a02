"""`pnpp run` as an operator runs it: a whole node on moved ports, its status, a clean stop, and refusals."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest

from pnp_integrated.devsim.node import PNPP, RunningNode, node_environment, node_settings, port_accepts, start_node
from pnp_integrated.status import STATUS_MAX_AGE

DRAIN = 2.0
GRACE = 5.0  # gunicorn kills workers still alive PNP_DRAIN_TIMEOUT + 5 s after SIGTERM (deploy/gunicorn.conf.py)
SLACK = 8.0  # process start-up and shutdown on a busy 2-core machine; the SIGKILL check below is the strict one


def read_until_closed(sock: socket.socket, timeout: float = 2.0) -> bytes:
    """Everything the peer sends until it closes; fails when it keeps the connection open."""
    sock.settimeout(timeout)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ConnectionResetError:
        pass
    except TimeoutError:
        pytest.fail(f"the connection stayed open after sending {data!r}")
    return data


def wait_healthy(node: RunningNode, timeout: float = 30.0) -> dict[str, Any]:
    """The /status JSON once every row is UP (the Prime bridge connects a moment after the ports open)."""
    deadline = time.monotonic() + timeout
    while True:
        _, data = node.get_json("/status")
        down = [row for row in data["rows"] if row["status"] != "UP" and row["status"] != "ACTIVE"]
        if not down or time.monotonic() > deadline:
            assert not down, f"still DOWN after {timeout}s: {down}\n{node.log_text()}"
            return data
        time.sleep(0.3)


def test_node_serves_status_and_every_port_then_stops_cleanly(running_node: Callable[..., RunningNode]) -> None:
    # Long protocol timeouts: only the drain can end the silent devices' connections below.
    node = running_node(drain_timeout=DRAIN, tls_handshake_timeout=30, cns_hello_timeout=30)

    status, data = node.get_json("/status")
    assert status == 200
    assert data["state"] == "ACTIVE" and data["vip"] == "127.0.0.1"
    for port in node.tcp_ports():
        assert port_accepts(port), f"port {port} refuses connections"

    data = wait_healthy(node)
    listed = " ".join(row["service"] + " " + row["info"] for row in data["rows"])
    for port in node.tcp_ports():
        assert str(port) in listed
    # Each worker answers from a reading at most STATUS_MAX_AGE old: past it, every worker has seen the node healthy.
    time.sleep(STATUS_MAX_AGE)

    result = subprocess.run([PNPP, "status"], env=node.env, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["SERVICE", "MODE", "STATUS", "ADDITIONAL", "INFO"]
    base = node.port("cns_port_base")
    for port in range(base + 3, base + 13):
        row = next(line for line in lines if f"CNS Gateway port: {port}" in line)
        assert " UP " in row and ("SSL" if (port - base) % 2 == 0 else "PLAIN TEXT") in row

    # Devices that stay connected (one silent before its TLS handshake, one before its CNS hello) must not hold the
    # node up: it waits PNP_DRAIN_TIMEOUT for them, then closes them.
    held = [socket.create_connection(("127.0.0.1", port)) for port in (base + 3, node.port("https_port"))]
    try:
        assert node.stop() == 0, node.log_text()
        assert node.stop_seconds is not None
        assert node.stop_seconds < DRAIN + GRACE + SLACK, f"stop took {node.stop_seconds:.1f}s"
        for sock in held:
            read_until_closed(sock)  # a gateway port may say goodbye first; what matters is that it closes
    finally:
        for sock in held:
            sock.close()
    still_open = [port for port in node.tcp_ports() if port_accepts(port, timeout=0.5)]
    assert still_open == []
    after = subprocess.run([PNPP, "status"], env=node.env, capture_output=True, text=True, timeout=30)
    assert after.returncode == 1
    assert "Connection refused" in after.stdout
    log = node.log_text()
    assert "Traceback" not in log
    assert "Shutting down: Master" in log
    assert "SIGKILL" not in log  # the workers drained and exited by themselves


def run_refused(tmp_path: Path, settings: dict[str, Any], watch: list[int]) -> tuple[subprocess.CompletedProcess[str],
                                                                                    list[int]]:
    """Run ``pnpp run`` expecting it to give up; also report which of ``watch`` opened while it ran."""
    env = node_environment(settings)
    log_path = tmp_path / "refused.log"
    opened: set[int] = set()
    with log_path.open("w") as log:
        proc = subprocess.Popen([PNPP, "run"], env=env, stdout=log, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True)
        deadline = time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < deadline:
            opened.update(p for p in watch if port_accepts(p, timeout=0.2))
            time.sleep(0.1)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
            pytest.fail(f"pnpp run kept running although it should refuse:\n{log_path.read_text()}")
    result = subprocess.CompletedProcess(proc.args, proc.returncode, log_path.read_text(), "")
    return result, sorted(opened)


@pytest.mark.parametrize("taken", ["http_port", "gateway_tls_port"])
def test_port_taken_by_another_program_stops_the_node_with_the_port_named(tmp_path: Path, taken: str) -> None:
    settings = node_settings(tmp_path / "data")
    port = settings["cns_port_base"] + 8 if taken == "gateway_tls_port" else settings[taken]
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        result, _ = run_refused(tmp_path, settings, [])
    assert result.returncode != 0
    assert f"127.0.0.1:{port}" in result.stdout
    assert "another program holds this port" in result.stdout
    setting = "PNP_CNS_PORT_BASE" if taken == "gateway_tls_port" else f"PNP_{taken.upper()}"
    assert setting in result.stdout
    assert "Traceback" not in result.stdout
    # Nothing of the node is left behind holding the other ports.
    others = [settings["http_port"], settings["https_port"], settings["cns_port_base"], settings["broker_port"]]
    assert [p for p in others if p != port and port_accepts(p, timeout=0.5)] == []


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("tls_min_version", "ssl3", "SSLv2/SSLv3 are broken (POODLE) and can never be enabled"),
        ("ha_mode", "different-ip", "deploy a standalone PnP gateway"),
        ("cns_port_base", "65530", "leaves no room for the 13 CNS ports"),
    ],
)
def test_wrong_setting_refuses_to_start_and_opens_no_port(tmp_path: Path, variable: str, value: str,
                                                          expected: str) -> None:
    settings = node_settings(tmp_path / "data")
    watch = [settings["http_port"], settings["https_port"], settings["broker_port"], settings["health_port"]]
    settings[variable] = value
    result, opened = run_refused(tmp_path, settings, watch)
    assert result.returncode == 2
    assert f"PNP_{variable.upper()}" in result.stdout
    assert expected in result.stdout
    assert "Traceback" not in result.stdout
    assert opened == []
    assert not (tmp_path / "data" / "pnp.sqlite3").exists()


def test_unreachable_database_refuses_to_start_without_a_traceback(tmp_path: Path) -> None:
    settings = node_settings(tmp_path / "data")
    closed_port = settings["health_port"] + 1  # inside the free block, nothing listens there
    settings["database_url"] = f"postgresql+psycopg://pnp@127.0.0.1:{closed_port}/pnp"
    result, opened = run_refused(tmp_path, settings, [settings["http_port"], settings["broker_port"]])
    assert result.returncode == 1
    assert f"pnpp: cannot prepare the database 127.0.0.1:{closed_port}/pnp: connection failed" in result.stdout
    assert "Traceback" not in result.stdout
    assert opened == []


def test_a_killed_node_takes_its_prime_and_gateway_with_it_and_starts_again(tmp_path: Path) -> None:
    node = start_node(tmp_path / "node")
    ports = [node.port("broker_port"), node.port("bus_port"), node.port("health_port"), node.port("http_port")]
    children = psutil.Process(node.process.pid).children(recursive=True)
    assert children, "pnpp run started no children"
    node.process.send_signal(signal.SIGKILL)  # only pnpp run itself, as the OOM killer would
    node.process.wait(10)
    _, alive = psutil.wait_procs(children, timeout=30)
    try:
        assert alive == [], f"left running after pnpp run died: {[p.pid for p in alive]}"
        assert [p for p in ports if port_accepts(p, timeout=0.5)] == []
        again = start_node(tmp_path / "node", **{k: v for k, v in node.settings.items() if k != "data_dir"})
        again.stop()
    finally:
        for proc in alive:
            proc.kill()
        node.stop(timeout=5)


def test_a_prime_port_held_by_another_process_stops_the_node_naming_it(tmp_path: Path) -> None:
    settings = node_settings(tmp_path / "data")
    with socket.socket() as squatter:
        squatter.bind(("0.0.0.0", settings["broker_port"]))
        squatter.listen()
        result, _ = run_refused(tmp_path, settings, [])
    assert result.returncode == 2
    assert f"port {settings['broker_port']} (PNP_BROKER_PORT) is held by pid {os.getpid()}" in result.stdout
    assert "Traceback" not in result.stdout


def test_what_a_node_creates_is_readable_by_its_owner_only(tmp_path: Path) -> None:
    node = start_node(tmp_path / "node")
    try:
        data = node.data_dir
        created = [data, data / "pnp.sqlite3", data / "certs", data / "prime", data / "prime" / "events.sqlite3",
                   data / "prime" / "broker.sqlite3", data / "secrets" / "broker-credentials.json"]
        created += sorted((data / "certs").glob("*.pem"))
        for path in created:
            assert path.exists(), path
            assert path.stat().st_mode & 0o077 == 0, f"{path} is {oct(path.stat().st_mode & 0o777)}"
    finally:
        node.stop()

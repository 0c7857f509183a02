"""CNS on a real node (``pnpp run``, gunicorn with 2 gevent workers): dispatching, replacement and DELIVER across
workers, TLS with the node's CA, and the status table's device counts."""

from __future__ import annotations

import fcntl
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from pnp_integrated import create_app
from pnp_integrated.cns.worker import deliver
from pnp_integrated.devsim.link import CnsLink, connect, dispatch
from pnp_integrated.devsim.node import RunningNode
from pnp_integrated.models import DeviceSession, db
from pnp_integrated.status import STATUS_MAX_AGE
from tests.support import wait_until

HOST = "127.0.0.1"
CONFIG_LOAD = "cisco.mgmt.cns.config.load"


@pytest.fixture(scope="module")
def node(node_launcher: Callable[..., RunningNode], tmp_path_factory: pytest.TempPathFactory) -> RunningNode:
    return node_launcher(Path(tmp_path_factory.mktemp("cns-node")), workers=2, cns_hello_timeout=3)


@pytest.fixture(scope="module")
def observer(node: RunningNode) -> Iterator[Any]:
    """An app on the node's database in this (third) process: it holds no device socket."""
    app = create_app({**node.settings, "TESTING": True})
    yield app


def live(observer: Any, device: str | None = None) -> list[DeviceSession]:
    with observer.app_context():
        query = select(DeviceSession).where(DeviceSession.closed_at.is_(None)).order_by(DeviceSession.id)
        if device:
            query = query.where(DeviceSession.device_key == device)
        rows = list(db.session.scalars(query))
        db.session.expunge_all()
        db.session.remove()
        return rows


def gateway_ports(node: RunningNode, tls: bool = False) -> list[int]:
    base = node.port("cns_port_base")
    return list(range(base + (4 if tls else 3), base + 13, 2))


def on_two_workers(node: RunningNode, observer: Any, prefix: str) -> dict[int, tuple[str, CnsLink]]:
    """Connect devices until two different workers hold one each: {worker pid: (device id, link)}."""
    held: dict[int, tuple[str, CnsLink]] = {}
    spare: list[CnsLink] = []
    for i in range(60):
        device = f"{prefix}{i}"
        link, welcome = connect(HOST, gateway_ports(node)[i % 5], device, subjects=(CONFIG_LOAD,))
        assert welcome.command == "WELCOME"
        pid = live(observer, device)[0].worker_pid
        if pid in held:
            spare.append(link)
        else:
            held[pid] = (device, link)
        if len(held) == 2:
            break
    for link in spare:
        link.close()
    assert len(held) == 2, "the kernel never spread connections over both workers"
    return held


def test_dispatcher_redirects_to_the_vip_on_both_transports(node: RunningNode) -> None:
    plain = dispatch(HOST, node.port("cns_port_base") + 1, "D1")
    assert (plain.command, plain.get("Host")) == ("REDIRECT", "127.0.0.1")
    assert int(plain.get("Port") or 0) in gateway_ports(node)
    secure = dispatch(HOST, node.port("cns_port_base") + 2, "D2", tls=True)
    assert secure.command == "REDIRECT" and int(secure.get("Port") or 0) in gateway_ports(node, tls=True)


def test_tls_gateway_port_with_the_node_ca(node: RunningNode, observer: Any) -> None:
    with CnsLink.open(HOST, gateway_ports(node, tls=True)[0], tls=True, context=node.client_context()) as link:
        link.command("HELLO", {"Device-Id": "SECURE1"})
        assert link.receive().command == "WELCOME"
        assert live(observer, "SECURE1")[0].tls is True


def test_deliver_reaches_devices_on_every_worker(node: RunningNode, observer: Any) -> None:
    held = on_two_workers(node, observer, "DLV")
    try:
        with observer.app_context():
            for device, _link in held.values():
                assert deliver(device, CONFIG_LOAD, f"<config-event><identifier>{device}</identifier></config-event>")
        for device, link in held.values():
            frame = link.receive()
            assert (frame.command, frame.get("Subject")) == ("DELIVER", CONFIG_LOAD)
            assert device.encode() in frame.body
    finally:
        for _device, link in held.values():
            link.close()


def test_replacement_across_workers(node: RunningNode, observer: Any) -> None:
    old, welcome = connect(HOST, gateway_ports(node)[0], "MOVER")
    first_pid = live(observer, "MOVER")[0].worker_pid
    links = [old]
    try:
        for _ in range(40):  # reconnect until the new session lands on the other worker
            new, welcome = connect(HOST, gateway_ports(node)[1], "MOVER")
            links.append(new)
            assert welcome.command == "WELCOME"
            kicked = old.receive()
            assert (kicked.command, kicked.get("Code")) == ("ERROR", "409")
            assert old.closed_by_peer()
            [row] = live(observer, "MOVER")
            assert row.token == welcome.get("Session")
            if row.worker_pid != first_pid:
                break
            old = new
        else:
            pytest.fail("the kernel never gave the second connection to the other worker")
    finally:
        for link in links:
            link.close()


def test_status_counts_devices_per_gateway_port(node: RunningNode, observer: Any) -> None:
    port = gateway_ports(node)[4]
    links = [connect(HOST, port, f"COUNT{i}")[0] for i in range(3)]
    try:
        def port_row_with_three() -> dict[str, str] | None:
            _, status = node.get_json("/status")
            [row] = [r for r in status["rows"] if r["service"] == f"CNS Gateway port: {port}"]
            return row if "devices: 3" in row["info"] else None

        # /status answers from a reading at most STATUS_MAX_AGE old: the three devices show within it.
        row = wait_until(port_row_with_three, STATUS_MAX_AGE + 2, "the three devices in the port's status row")
        assert row["status"] == "UP"
    finally:
        for link in links:
            link.close()
    deadline = time.monotonic() + 5
    while any(r.port == port for r in live(observer)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(r.port == port for r in live(observer))


def test_a_welcomed_device_is_receipted_while_the_engine_waits_for_the_database(node: RunningNode) -> None:
    """Under a storm the engine's contact of a new device waits long for the node's SQLite write turn; the device's
    first frame must be receipted meanwhile (it gave up after 120 s, and came back with two more handshakes)."""
    with (node.data_dir / "db-write.lock").open("a+") as turn:
        fcntl.flock(turn, fcntl.LOCK_EX)  # another writer of the node holds the turn
        try:
            with CnsLink.open(HOST, gateway_ports(node)[3], timeout=10) as link:
                link.command("HELLO", {"Device-Id": "WAITS1"})
                assert link.receive().command == "WELCOME"
                link.command("SUBSCRIBE", {"Subject": CONFIG_LOAD, "Receipt": "first"})
                answer = link.receive(timeout=5)
                assert (answer.command, answer.get("Receipt-Id")) == ("RECEIPT", "first")
        finally:
            fcntl.flock(turn, fcntl.LOCK_UN)

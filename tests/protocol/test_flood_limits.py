"""Unauthenticated writes that would grow storage are bounded: new unknown devices per source per minute, and what
one CNS session may PUBLISH. What is refused is counted in /metrics."""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Callable, Iterator

import pytest
from flask import Flask
from sqlalchemy import func, select

from pnp_integrated.cns.codec import Frame
from pnp_integrated.devsim.link import CnsLink, connect, hello_frame
from pnp_integrated.models import Device, OutboxEvent, db
from tests.support import CSR_WORK_REQUEST, CnsNode, wait_until

HOST = "127.0.0.1"
NETWORK_SOURCE = "192.0.2.199"  # TEST-NET-1: never a real neighbour
CONFIG_EVENT = b"<config-success><identifier>X</identifier></config-success>"


def counts(app: Flask) -> tuple[int, int]:
    """(devices, device.unclaimed events) the node has stored."""
    with app.app_context():
        devices = db.session.scalar(select(func.count()).select_from(Device)) or 0
        events = db.session.scalar(select(func.count()).select_from(OutboxEvent)
                                   .where(OutboxEvent.type == "device.unclaimed")) or 0
        db.session.remove()
        return devices, events


def refused_metric(app: Flask, reason: str) -> float:
    text = app.test_client().get("/metrics").get_data(as_text=True)
    for line in text.splitlines():
        if line.startswith(f'pnp_refused_total{{reason="{reason}"}}'):
            return float(line.split()[-1])
    return 0.0


def test_one_source_introduces_a_bounded_number_of_unknown_devices_a_minute(app_factory: Callable[..., Flask]) -> None:
    app = app_factory(new_devices_per_source_per_minute=3)  # the test client's REMOTE_ADDR is not loopback
    flood = app.test_client()
    flood.environ_base["REMOTE_ADDR"] = "192.0.2.66"
    for i in range(3):
        assert flood.get(f"/cns/config.asp?DeviceID=FLOOD{i}").status_code == 404  # unclaimed, as before
    assert counts(app) == (3, 3)
    for i in range(3, 10):
        answer = flood.get(f"/cns/config.asp?DeviceID=FLOOD{i}")
        assert answer.status_code == 429 and answer.headers["Retry-After"] == "60"
        assert b"192.0.2.66 introduced 3 new devices this minute" in answer.data
    assert counts(app) == (3, 3)  # nothing more stored, nothing more sent to Prime
    # An Open PnP device from that source is told to back off, and is not recorded either.
    work = flood.post("/pnp/WORK-REQUEST", data=CSR_WORK_REQUEST, content_type="text/xml")
    assert work.status_code == 200 and b"backoff" in work.data and b"introduced 3 new devices" in work.data
    assert counts(app) == (3, 3)
    # A device it already knows is still served, and another source is not affected.
    assert flood.get("/cns/config.asp?DeviceID=FLOOD0").status_code == 404
    other = app.test_client()
    other.environ_base["REMOTE_ADDR"] = "192.0.2.77"
    assert other.get("/cns/config.asp?DeviceID=ELSEWHERE").status_code == 404
    assert counts(app) == (4, 4)
    assert refused_metric(app, "new-devices-per-source") == 8


@pytest.fixture
def network_source() -> Iterator[str]:
    """An address of this host that is not loopback (on ``lo``), to connect from as a device on the network would:
    loopback sources, this host's own simulators, are not limited."""
    subprocess.run(["ip", "addr", "add", f"{NETWORK_SOURCE}/32", "dev", "lo"], check=True)
    try:
        yield NETWORK_SOURCE
    finally:
        subprocess.run(["ip", "addr", "del", f"{NETWORK_SOURCE}/32", "dev", "lo"], check=False)


def hello_from(source: str, port: int, device_id: str) -> tuple[CnsLink, Frame]:
    link = CnsLink(HOST, port, sock=socket.create_connection((HOST, port), timeout=10, source_address=(source, 0)))
    link.send(hello_frame(device_id))
    return link, link.receive()


def test_unknown_cns_devices_beyond_the_allowance_are_told_busy(node_factory: Callable[..., CnsNode],
                                                                 network_source: str) -> None:
    node = node_factory(new_devices_per_source_per_minute=2)
    links = []
    try:
        for i in range(2):
            link, welcome = hello_from(network_source, node.plain[0], f"NEWCNS{i}")
            links.append(link)
            assert welcome.command == "WELCOME"
        wait_until(lambda: counts(node.app)[0] == 2, 5, "both devices recorded")
        link, answer = hello_from(network_source, node.plain[0], "NEWCNS2")
        links.append(link)
        assert (answer.command, answer.get("Retry-After")) == ("BUSY", "60")
        assert "introduced too many new devices" in (answer.get("Message") or "")
        assert len(node.outbox("device.connected")) == 2  # Prime never heard of the refused one
        link, again = hello_from(network_source, node.plain[1], "NEWCNS0")  # a device it knows: welcome
        links.append(link)
        assert again.command == "WELCOME"
        link, local = connect(HOST, node.plain[2], "LOCALSIM")  # this host's own simulator: not limited
        links.append(link)
        assert local.command == "WELCOME"
    finally:
        for link in links:
            link.close()


def test_a_publish_flood_on_one_session_is_cut_off(node_factory: Callable[..., CnsNode]) -> None:
    node = node_factory(cns_publish_per_minute=5)
    link, welcome = connect(HOST, node.plain[0], "CHATTY")
    with link:
        assert welcome.command == "WELCOME"
        for i in range(5):
            link.command("PUBLISH", {"Subject": "cisco.mgmt.cns.config.complete", "Receipt": f"r{i}"},
                         CONFIG_EVENT)
            assert link.receive().command == "RECEIPT"
        link.command("PUBLISH", {"Subject": "cisco.mgmt.cns.config.complete", "Receipt": "r5"}, CONFIG_EVENT)
        answer = link.receive()
        assert (answer.command, answer.get("Code"), answer.get("Retry-After")) == ("ERROR", "413", "60")
        assert "too much PUBLISH" in (answer.get("Message") or "")
        assert link.closed_by_peer()
    assert len(node.outbox("cns.event")) == 5  # the sixth was never stored
    assert refused_metric(node.app, "cns-publish-flood") == 1


def test_a_session_may_publish_only_so_many_octets_a_minute(node_factory: Callable[..., CnsNode]) -> None:
    node = node_factory(cns_publish_bytes_per_minute=4096)
    link, _ = connect(HOST, node.plain[0], "BULKY")
    with link:
        body = b"<config-success><identifier>" + b"x" * 3000 + b"</identifier></config-success>"
        link.command("PUBLISH", {"Subject": "cisco.mgmt.cns.config.complete", "Receipt": "a"}, body)
        assert link.receive().command == "RECEIPT"
        link.command("PUBLISH", {"Subject": "cisco.mgmt.cns.config.complete", "Receipt": "b"}, body)
        assert link.receive().get("Code") == "413"
    assert len(node.outbox("cns.event")) == 1

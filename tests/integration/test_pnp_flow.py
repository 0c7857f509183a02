"""Open PnP day 0 against a real node (``pnpp run``: gunicorn, gevent workers, HTTPS listener, SQLite).

Many simulated agents at once over HTTP and HTTPS: image install with reload, config-upgrade, post-PnP cli-config,
write memory, injected device errors, a device that keeps failing, an unclaimed device, stale correlators on the
wire, bad requests, and the ``pnpp simulate pnp`` command.
"""

from __future__ import annotations

import hashlib
import http.client
import socket
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from flask import Flask
from sqlalchemy import select

from pnp_integrated import create_app
from pnp_integrated.devsim.node import PNPP, RunningNode
from pnp_integrated.devsim.pnp import PROVISIONED, UNCLAIMED, SimulatedDevice, simulate
from pnp_integrated.models import Device, Image, OutboxEvent, Profile, ProvisioningJob, db
from pnp_integrated.pnp.messages import (
    Bye,
    DeviceInfoRequest,
    Udi,
    WorkRequest,
    WorkResponse,
    encode,
    parse_server_message,
)

FLEET_PID = "C9300-24U"
NEW_VERSION = "17.6.1"
IMAGE = b"PNPSIM-VERSION=" + NEW_VERSION.encode() + b"\n" + bytes(range(256)) * 400
CONFIG = "hostname {{ serial }}\ninterface Vlan1\n ip address dhcp\n"
POST = "ntp server 192.0.2.1\n!\nlogging host 192.0.2.2\n"


@pytest.fixture(scope="module")
def node(node_launcher: Callable[..., RunningNode], tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningNode]:
    running = node_launcher(tmp_path_factory.mktemp("pnp-node"), workers=2)
    observer = observer_app(running)
    with observer.app_context():
        (running.data_dir / "images" / "cat9k-17.6.1.bin").write_bytes(IMAGE)
        image = Image(name="cat9k-17.6.1", filename="cat9k-17.6.1.bin", version=NEW_VERSION,
                      md5=hashlib.md5(IMAGE).hexdigest(), size=len(IMAGE))
        db.session.add(image)
        db.session.flush()
        db.session.add(Profile(name="fleet", match_pid=FLEET_PID, config_template=CONFIG, post_template=POST,
                               image_id=image.id, apply_to="running"))
        db.session.add(Profile(name="broken", match_serials=["BAD0001"], config_template=CONFIG))
        db.session.commit()
    yield running
    running.stop()


def observer_app(node: RunningNode) -> Flask:
    """An app on the node's database, to set up profiles and look at what the node recorded."""
    return create_app({**node.settings, "TESTING": True})


def fleet(prefix: str, count: int, **fields: object) -> list[SimulatedDevice]:
    return [SimulatedDevice(serial=f"{prefix}{n:04d}", pid=FLEET_PID, version="17.3.4a", **fields)  # type: ignore
            for n in range(count)]


def collapsed(services: list[str]) -> list[str]:
    """The services in order, a retried request counted once."""
    return [s for i, s in enumerate(services) if i == 0 or services[i - 1] != s]


def test_day0_of_many_devices_over_http_and_https(node: RunningNode) -> None:
    plain = fleet("HTP", 12) + fleet("ERR", 4, error_rate=0.25)
    tls = fleet("TLS", 6)
    bad = SimulatedDevice(serial="BAD0001", pid=FLEET_PID, fail_services=frozenset({"config-upgrade"}))
    stranger = SimulatedDevice(serial="NOBODY01", pid="ISR1100-4G")
    options = {"time_scale": 0.005, "reload_seconds": 20, "deadline": 90}
    reports = simulate([*plain, bad, stranger], node.url(""), concurrency=20, **options)  # type: ignore[arg-type]
    reports += simulate(tls, node.url("", tls=True), context=node.client_context(), concurrency=6,
                        **options)  # type: ignore[arg-type]
    by_serial = {r.serial: r for r in reports}

    for device in [*plain, *tls]:
        report = by_serial[device.serial]
        assert report.outcome == PROVISIONED, (report.serial, report.outcome, report.reason, report.services)
        # The image was downloaded, checked, booted; then the configuration, post-PnP lines and write memory.
        assert (device.version, device.reloads) == (NEW_VERSION, 1)
        assert device.image_file == "bootflash:cat9k-17.6.1.bin"
        assert f"hostname {device.serial}" in device.startup_config
        assert "logging host 192.0.2.2" in device.startup_config
        assert collapsed(report.services) == ["device-info", "image-install", "device-info", "config-upgrade",
                                              "cli-config", "cli-exec"]
    assert sum(by_serial[d.serial].injected_errors for d in plain if d.serial.startswith("ERR")) > 0

    assert by_serial["BAD0001"].outcome == "failed"
    assert "simulated config-upgrade failure" in by_serial["BAD0001"].reason
    assert by_serial["BAD0001"].services.count("config-upgrade") == 3  # tried max_attempts times
    assert by_serial["NOBODY01"].outcome == UNCLAIMED
    assert "config-upgrade" not in by_serial["NOBODY01"].services

    with observer_app(node).app_context():
        devices = {d.serial: d for d in db.session.scalars(select(Device))}
        for device in [*plain, *tls]:
            row = devices[device.serial]
            assert (row.state, row.protocol, row.software_version) == ("provisioned", "pnp", NEW_VERSION)
        assert devices["NOBODY01"].state == "unclaimed"
        job = db.session.get(ProvisioningJob, devices["BAD0001"].current_job_id)
        assert job is not None and job.state == "failed" and "simulated config-upgrade failure" in job.detail
        unclaimed = [e.payload["device"]["serial"] for e in db.session.scalars(
            select(OutboxEvent).where(OutboxEvent.type == "device.unclaimed"))]
        assert unclaimed.count("NOBODY01") == 1  # reported once, however often it asks


def post(node: RunningNode, endpoint: str, body: bytes) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", node.port("http_port"), timeout=10)
    try:
        conn.request("POST", f"/pnp/{endpoint}", body=body, headers={"Content-Type": "text/xml"})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def test_stale_correlator_on_the_wire_does_not_advance(node: RunningNode) -> None:
    udi = Udi(FLEET_PID, "V01", "STALE001")
    status, data = post(node, "WORK-REQUEST", encode(WorkRequest(udi, "CiscoPnP-1.0-1")))
    first = parse_server_message(data)
    assert status == 200 and isinstance(first, DeviceInfoRequest)
    stale = WorkResponse(udi, "device-info", first.correlator + "-old", True)
    status, data = post(node, "WORK-RESPONSE", encode(stale))
    assert status == 200 and parse_server_message(data) == Bye(udi, stale.correlator)
    _, data = post(node, "WORK-REQUEST", encode(WorkRequest(udi, "CiscoPnP-1.0-2")))
    assert parse_server_message(data) == replace(first, correlator="CiscoPnP-1.0-2")  # the same request again


def test_bad_requests_get_clear_errors_and_the_node_carries_on(node: RunningNode) -> None:
    status, data = post(node, "WORK-REQUEST", b"<pnp xmlns='urn:cisco:pnp'><info")
    assert status == 400 and b"malformed" in data and b"Traceback" not in data
    status, data = post(node, "WORK-RESPONSE", b"x" * (2 * 1024 * 1024))
    assert status == 413
    # A chunked upload has no Content-Length to refuse up front: it is cut off at the limit all the same.
    with socket.create_connection(("127.0.0.1", node.port("http_port")), timeout=10) as sock:
        sock.sendall(b"POST /pnp/WORK-REQUEST HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                     b"Content-Type: text/xml\r\nConnection: close\r\n\r\n")
        chunk = b"<" * 65536
        try:
            for _ in range(20):
                sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            sock.sendall(b"0\r\n\r\n")
        except OSError:
            pass  # the server may answer and close before the upload ends
        answer = sock.recv(4096)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:100]
    assert node.get_json("/status")[0] == 200


def test_pnpp_simulate_pnp_over_https(node: RunningNode, tmp_path: Path) -> None:
    result = subprocess.run(
        [PNPP, "simulate", "pnp", "--devices", "4", "--https", "--pid", FLEET_PID, "--serial-prefix", "CLI",
         "--time-scale", "0.005", "--timeout", "90"],
        env=node.env, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "4 devices in" in result.stdout and "4 provisioned" in result.stdout
    assert "WORK-REQUEST" in result.stdout and "image download" in result.stdout


def test_pnpp_simulate_pnp_reports_unclaimed_devices(node: RunningNode, tmp_path: Path) -> None:
    result = subprocess.run(
        [PNPP, "simulate", "pnp", "--devices", "2", "--pid", "ISR1100-4G", "--serial-prefix", "LOST",
         "--time-scale", "0.002", "--timeout", "60"],
        env=node.env, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert result.returncode == 1
    assert "2 unclaimed" in result.stdout
    assert "LOST000001: unclaimed: server keeps backing off: no profile matches this device" in result.stdout

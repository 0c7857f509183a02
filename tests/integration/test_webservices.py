"""Config, Image and Resource web services on a real node, over HTTP and HTTPS."""

from __future__ import annotations

import hashlib
import http.client
import os
from collections.abc import Callable, Iterator

import pytest
from sqlalchemy import select

from pnp_integrated import create_app
from pnp_integrated.devsim.node import RunningNode
from pnp_integrated.models import Device, Image, OutboxEvent, Profile, db

IMAGE = bytes(range(256)) * 64 + b"tail"
IMAGE_MD5 = hashlib.md5(IMAGE).hexdigest()
SECRET = b"enable secret of the node\n"


@pytest.fixture(scope="module")
def node(node_launcher: Callable[..., RunningNode], tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningNode]:
    running = node_launcher(tmp_path_factory.mktemp("ws-node"), workers=1)
    data = running.data_dir
    (data / "images" / "csr-17.6.1.bin").write_bytes(IMAGE)
    (data / "images" / "loose.bin").write_bytes(b"dropped in by hand")
    (data / "images" / ".csr-17.6.2.bin.1234.part").write_bytes(b"half copied")
    resources = data / "resources"
    (resources / "scripts").mkdir()
    (resources / "scripts" / "day0.tcl").write_bytes(b"puts hello\n")
    (resources / "banner.txt").write_bytes(b"Authorised access only\n")
    (data / "secret.txt").write_bytes(SECRET)
    os.symlink(data / "secret.txt", resources / "escape.txt")
    os.symlink("/etc", resources / "etc")
    os.symlink(resources / "banner.txt", resources / "scripts" / "banner-link.txt")
    with create_app({**running.settings, "TESTING": True}).app_context():
        db.session.add(Image(name="csr-17.6.1", filename="csr-17.6.1.bin", version="17.6.1", md5=IMAGE_MD5,
                             size=len(IMAGE)))
        db.session.add(Profile(name="one", match_serials=["FOC1"], config_template="hostname {{ serial }}\n"))
        db.session.commit()
    yield running
    running.stop()


def fetch(node: RunningNode, path: str, method: str = "GET", headers: dict[str, str] | None = None,
          tls: bool = False) -> tuple[int, http.client.HTTPMessage, bytes]:
    """Send ``path`` exactly as written (no client-side dot-segment clean-up)."""
    if tls:
        conn: http.client.HTTPConnection = http.client.HTTPSConnection(
            "127.0.0.1", node.port("https_port"), timeout=10, context=node.client_context())
    else:
        conn = http.client.HTTPConnection("127.0.0.1", node.port("http_port"), timeout=10)
    try:
        conn.request(method, path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.headers, resp.read()
    finally:
        conn.close()


@pytest.mark.parametrize("tls", [False, True], ids=["http", "https"])
def test_image_is_served_with_length_and_md5_etag(node: RunningNode, tls: bool) -> None:
    status, headers, body = fetch(node, "/images/csr-17.6.1.bin", tls=tls)
    assert status == 200 and body == IMAGE
    assert headers["Content-Length"] == str(len(IMAGE))
    assert headers["ETag"] == f'"{IMAGE_MD5}"'
    assert headers["Accept-Ranges"] == "bytes"
    status, headers, body = fetch(node, "/images/csr-17.6.1.bin", "HEAD", tls=tls)
    assert (status, body) == (200, b"")
    assert headers["Content-Length"] == str(len(IMAGE)) and headers["ETag"] == f'"{IMAGE_MD5}"'


def test_image_range_requests(node: RunningNode) -> None:
    size = len(IMAGE)
    status, headers, body = fetch(node, "/images/csr-17.6.1.bin", headers={"Range": "bytes=100-199"})
    assert (status, body) == (206, IMAGE[100:200])
    assert headers["Content-Range"] == f"bytes 100-199/{size}"
    status, headers, body = fetch(node, "/images/csr-17.6.1.bin", headers={"Range": "bytes=-4"})
    assert (status, body) == (206, b"tail")
    status, headers, body = fetch(node, "/images/csr-17.6.1.bin", headers={"Range": "bytes=16000-"})
    assert (status, body) == (206, IMAGE[16000:])
    # A download resumed against the same file continues; against a changed file it starts over.
    status, _, body = fetch(node, "/images/csr-17.6.1.bin",
                            headers={"Range": "bytes=10-19", "If-Range": f'"{IMAGE_MD5}"'})
    assert (status, body) == (206, IMAGE[10:20])
    status, _, body = fetch(node, "/images/csr-17.6.1.bin", headers={"Range": "bytes=10-19", "If-Range": '"other"'})
    assert (status, body) == (200, IMAGE)
    status, headers, _ = fetch(node, "/images/csr-17.6.1.bin", headers={"Range": f"bytes={size + 10}-"})
    assert status == 416 and headers["Content-Range"] == f"bytes */{size}"


def test_image_conditional_get(node: RunningNode) -> None:
    status, _, body = fetch(node, "/images/csr-17.6.1.bin", headers={"If-None-Match": f'"{IMAGE_MD5}"'})
    assert (status, body) == (304, b"")
    status, _, body = fetch(node, "/images/csr-17.6.1.bin", headers={"If-None-Match": '"0123"'})
    assert (status, body) == (200, IMAGE)


def test_unregistered_image_gets_its_computed_md5(node: RunningNode) -> None:
    status, headers, _ = fetch(node, "/images/loose.bin", "HEAD")
    assert status == 200 and headers["ETag"] == f'"{hashlib.md5(b"dropped in by hand").hexdigest()}"'


@pytest.mark.parametrize("path", ["/images/missing.bin", "/images/.csr-17.6.2.bin.1234.part",
                                  "/images/..%2fpnp.sqlite3", "/images/%2e%2e", "/images/../pnp.sqlite3"])
def test_image_not_found(node: RunningNode, path: str) -> None:
    status, _, body = fetch(node, path)
    assert status in (400, 404)
    assert b"SQLite" not in body and b"half copied" not in body


def test_resources_are_served(node: RunningNode) -> None:
    status, headers, body = fetch(node, "/resources/scripts/day0.tcl")
    assert (status, body) == (200, b"puts hello\n")
    status, headers, body = fetch(node, "/resources/banner.txt", "HEAD", tls=True)
    assert (status, body) == (200, b"") and headers["Content-Length"] == "23"
    status, _, body = fetch(node, "/resources/banner.txt", headers={"Range": "bytes=0-9"})
    assert (status, body) == (206, b"Authorised")
    # A link that stays inside the resource root is fine.
    assert fetch(node, "/resources/scripts/banner-link.txt")[2] == b"Authorised access only\n"


@pytest.mark.parametrize("path", [
    "/resources/../secret.txt",
    "/resources/%2e%2e/secret.txt",
    "/resources/scripts/../../secret.txt",
    "/resources/scripts/%2e%2e/%2e%2e/secret.txt",
    "/resources/..%2fsecret.txt",
    "/resources/%2E%2E%2Fsecret.txt",
    "/resources//etc/passwd",
    "/resources/escape.txt",  # a symlink pointing outside the root
    "/resources/etc/passwd",  # a symlinked directory outside the root
    "/resources/scripts",  # a directory
    "/resources/",
    "/resources/nothing.txt",
    "/resources/scripts/%00day0.tcl",
])
def test_resources_never_leave_the_root(node: RunningNode, path: str) -> None:
    status, _, body = fetch(node, path)
    assert status in (400, 404), (path, status)
    assert SECRET not in body and b"root:" not in body


def test_config_for_a_known_device(node: RunningNode) -> None:
    status, headers, body = fetch(node, "/cns/config.asp?DeviceID=FOC1")
    assert (status, body) == (200, b"hostname FOC1\n")
    assert headers["Content-Type"].startswith("text/plain")
    assert headers["Cache-Control"] == "no-store"
    status, _, body = fetch(node, "/cns/config.asp?DeviceID=FOC1&Identifier=job1-9-stale", tls=True)
    assert status == 404  # a request that is not the pending one gets nothing


def test_config_for_an_unknown_device_is_404_and_recorded(node: RunningNode) -> None:
    status, _, body = fetch(node, "/cns/config.asp?DeviceID=STRANGER9")
    assert status == 404 and b"STRANGER9" in body and b"hostname" not in body
    with create_app({**node.settings, "TESTING": True}).app_context():
        device = db.session.scalar(select(Device).where(Device.serial == "STRANGER9"))
        assert device is not None and device.state == "unclaimed"
        events = [e.payload["device"]["serial"] for e in db.session.scalars(
            select(OutboxEvent).where(OutboxEvent.type == "device.unclaimed"))]
        assert "STRANGER9" in events


@pytest.mark.parametrize("query", ["", "?Identifier=x", "?DeviceID=", "?DeviceID=A&DeviceID=B",
                                   "?DeviceID=%20FOC1", "?DeviceID=FOC1%0A", "?DeviceID=" + "9" * 300,
                                   "?DeviceID=FOC1&Identifier=" + "x" * 200])
def test_config_bad_parameters_are_400(node: RunningNode, query: str) -> None:
    status, _, body = fetch(node, "/cns/config.asp" + query)
    assert status == 400 and body.startswith(b"bad request:")
    assert b"hostname" not in body

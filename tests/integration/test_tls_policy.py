"""The TLS policy on every TLS port of a real node: versions accepted and refused, SSLv3 never, handshake time limit."""

from __future__ import annotations

import os
import re
import socket
import ssl
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pnp_integrated.devsim.node import RunningNode

TLS10, TLS11, TLS12, TLS13 = "1.0", "1.1", "1.2", "1.3"
with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)  # naming TLS 1.0/1.1 is the point of these tests
    CLIENT_VERSIONS = {
        TLS10: ssl.TLSVersion.TLSv1,
        TLS11: ssl.TLSVersion.TLSv1_1,
        TLS12: ssl.TLSVersion.TLSv1_2,
        TLS13: ssl.TLSVersion.TLSv1_3,
    }
NEGOTIATED = {TLS10: "TLSv1", TLS11: "TLSv1.1", TLS12: "TLSv1.2", TLS13: "TLSv1.3"}


def offer_only(version: str, ca_file: Path) -> ssl.SSLContext:
    """A client that offers exactly one TLS version (OpenSSL 3 needs security level 0 to offer 1.0/1.1 at all)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(str(ca_file))
    ctx.check_hostname = False
    ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx.minimum_version = CLIENT_VERSIONS[version]
        ctx.maximum_version = CLIENT_VERSIONS[version]
    return ctx


def handshake(port: int, version: str, ca_file: Path) -> str:
    """The negotiated version, or ``refused: <reason>``; the server certificate must chain to the node's CA."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
                offer_only(version, ca_file).wrap_socket(raw) as tls:
            return tls.version() or "none"
    except ssl.SSLError as exc:
        return f"refused: {exc.reason}"
    except ConnectionError as exc:
        return f"refused: {type(exc).__name__}"


def versions_on_every_port(node: RunningNode, version: str) -> dict[str, str]:
    return {role: handshake(port, version, node.ca_file) for role, port in node.tls_ports().items()}


def client_hello(version: bytes) -> bytes:
    """A minimal ClientHello offering only ``version`` (b"\\x03\\x00" is SSL 3.0) in record and hello, built by hand
    because no current client library can offer SSLv3."""
    suites = bytes.fromhex("c009c00ac013c014002f003500ff")  # ECDHE-ECDSA first: the node's key is ECDSA
    # ECDHE needs the client's curves (P-256) and point formats (uncompressed).
    extensions = bytes.fromhex("000a00040002" "0017" "000b00020100")
    body = (version + os.urandom(32) + b"\x00" + len(suites).to_bytes(2, "big") + suites + b"\x01\x00"
            + len(extensions).to_bytes(2, "big") + extensions)
    hello = b"\x01" + len(body).to_bytes(3, "big") + body
    return b"\x16" + version + len(hello).to_bytes(2, "big") + hello


def first_answer(port: int, version: bytes) -> bytes:
    """The record type and version the server sends back to :func:`client_hello` (empty when it just closes)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(client_hello(version))
        try:
            return sock.recv(3)
        except ConnectionError:
            return b""


@pytest.fixture(scope="module")
def default_node(node_launcher: Callable[..., RunningNode], tmp_path_factory: pytest.TempPathFactory
                 ) -> Iterator[RunningNode]:
    """A node with the default floor (TLS 1.2), a 1 s handshake limit and a 2 s HTTPS idle limit."""
    node = node_launcher(tmp_path_factory.mktemp("tls-default"), tls_handshake_timeout=1, http_idle_timeout=2,
                         workers=1)
    yield node
    node.stop()


@pytest.fixture(scope="module")
def strict_node(node_launcher: Callable[..., RunningNode], tmp_path_factory: pytest.TempPathFactory
                ) -> Iterator[RunningNode]:
    node = node_launcher(tmp_path_factory.mktemp("tls-strict"), tls_min_version="1.3", workers=1)
    yield node
    node.stop()


@pytest.fixture(scope="module")
def legacy_node(node_launcher: Callable[..., RunningNode], tmp_path_factory: pytest.TempPathFactory
                ) -> Iterator[RunningNode]:
    """A node whose operator opted in to TLS 1.0 for old device images."""
    node = node_launcher(tmp_path_factory.mktemp("tls-legacy"), tls_min_version="1.0", workers=1)
    yield node
    node.stop()


def test_every_tls_port_is_counted(default_node: RunningNode) -> None:
    # HTTPS, monitoring, the TLS dispatcher and the 5 TLS gateway ports.
    assert len(set(default_node.tls_ports().values())) == 8


@pytest.mark.parametrize("version", [TLS10, TLS11])
def test_default_refuses_tls_1_0_and_1_1_on_every_port(default_node: RunningNode, version: str) -> None:
    results = versions_on_every_port(default_node, version)
    assert all(r.startswith("refused") for r in results.values()), results
    # The device hears the alert before the node writes its log line: the log is read until every port shows.
    expected = [rf"TLS handshake refused on port {port} from 127\.0\.0\.1: UNSUPPORTED_PROTOCOL"
                for port in default_node.tls_ports().values()]
    deadline = time.monotonic() + 5
    log = default_node.log_text()
    while not all(re.search(line, log) for line in expected) and time.monotonic() < deadline:
        time.sleep(0.1)
        log = default_node.log_text()
    missing = [line for line in expected if not re.search(line, log)]
    assert not missing, missing
    assert "Traceback" not in log


@pytest.mark.parametrize("version", [TLS12, TLS13])
def test_default_accepts_tls_1_2_and_1_3_on_every_port(default_node: RunningNode, version: str) -> None:
    results = versions_on_every_port(default_node, version)
    assert results == {role: NEGOTIATED[version] for role in default_node.tls_ports()}


def test_https_and_monitoring_serve_status_over_tls(default_node: RunningNode) -> None:
    status, data = default_node.get_json("/status", tls=True)
    assert status == 200 and data["vip"] == "127.0.0.1"
    monitoring = default_node.port("cns_port_base")
    ctx = offer_only(TLS12, default_node.ca_file)
    with socket.create_connection(("127.0.0.1", monitoring), timeout=5) as raw, ctx.wrap_socket(raw) as tls:
        tls.sendall(b"GET /status HTTP/1.1\r\nHost: gateway\r\nConnection: close\r\n\r\n")
        reply = b""
        while chunk := tls.recv(65536):
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 200")
    assert b'"rows"' in reply


def test_floor_1_3_refuses_1_2_on_every_port(strict_node: RunningNode) -> None:
    refused = versions_on_every_port(strict_node, TLS12)
    assert all(r.startswith("refused") for r in refused.values()), refused
    accepted = versions_on_every_port(strict_node, TLS13)
    assert accepted == {role: "TLSv1.3" for role in strict_node.tls_ports()}


@pytest.mark.parametrize("version", [TLS10, TLS11])
def test_opt_in_floor_1_0_accepts_old_device_versions(legacy_node: RunningNode, version: str) -> None:
    results = versions_on_every_port(legacy_node, version)
    assert results == {role: NEGOTIATED[version] for role in legacy_node.tls_ports()}


SSL3, TLS1 = b"\x03\x00", b"\x03\x01"
HANDSHAKE, ALERT = b"\x16", b"\x15"


def test_hand_built_hello_is_answered_when_its_version_is_allowed(legacy_node: RunningNode) -> None:
    # The control for the SSLv3 test below: the same hello offering TLS 1.0 gets a ServerHello.
    answers = {role: first_answer(port, TLS1) for role, port in legacy_node.tls_ports().items()}
    assert answers == dict.fromkeys(legacy_node.tls_ports(), HANDSHAKE + TLS1)


@pytest.mark.parametrize("node_name", ["default_node", "legacy_node"])
def test_sslv3_is_never_negotiated(request: pytest.FixtureRequest, node_name: str) -> None:
    node: RunningNode = request.getfixturevalue(node_name)
    answers = {role: first_answer(port, SSL3) for role, port in node.tls_ports().items()}
    # A handshake record would be a ServerHello; the server must answer with an alert or close.
    assert all(answer[:1] in (b"", ALERT) for answer in answers.values()), answers
    assert "Traceback" not in node.log_text()


def test_silent_client_is_closed_after_the_handshake_limit_with_one_log_line(default_node: RunningNode) -> None:
    ports = default_node.tls_ports()
    probes = {role: ports[role] for role in ("https", "monitoring", "dispatcher", f"gateway {ports['dispatcher'] + 2}")}
    held = {role: socket.create_connection(("127.0.0.1", port), timeout=5) for role, port in probes.items()}
    started = time.monotonic()
    closed_after: dict[str, float] = {}
    try:
        for role, sock in held.items():
            try:
                data = sock.recv(1)
            except ConnectionError:
                data = b""
            assert data == b"", f"{role}: the server sent {data!r} to a client that never said hello"
            closed_after[role] = time.monotonic() - started
    finally:
        for sock in held.values():
            sock.close()
    assert all(0.8 <= t <= 4 for t in closed_after.values()), closed_after

    deadline = time.monotonic() + 5
    while True:
        log = default_node.log_text()
        counts = {role: len(re.findall(rf"TLS handshake refused on port {port} from 127\.0\.0\.1: "
                                       r"no handshake within 1s\n", log)) for role, port in probes.items()}
        if all(c >= 1 for c in counts.values()) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert counts == dict.fromkeys(probes, 1)
    assert "Traceback" not in log


@pytest.mark.parametrize("sent", [b"", b"GET /status HTTP/1.1\r\nHost: x\r\n"], ids=["silent", "half-request"])
def test_https_client_that_goes_quiet_after_the_handshake_is_closed(default_node: RunningNode, sent: bytes) -> None:
    with socket.create_connection(("127.0.0.1", default_node.port("https_port")), timeout=10) as raw:
        with default_node.client_context().wrap_socket(raw) as tls:
            tls.sendall(sent)
            started = time.monotonic()
            try:
                data = tls.recv(65536)
            except (ConnectionError, ssl.SSLError):
                data = b""
            waited = time.monotonic() - started
    assert b"200 OK" not in data
    assert 1.5 <= waited <= 8, f"closed after {waited:.1f}s, the idle limit is 2s"


@pytest.mark.parametrize("sent", [b"", b"GET /status HTTP/1.1\r\nHost: x\r\n"], ids=["silent", "half-request"])
def test_plain_http_client_that_goes_quiet_is_closed_too(default_node: RunningNode, sent: bytes) -> None:
    with socket.create_connection(("127.0.0.1", default_node.port("http_port")), timeout=10) as sock:
        sock.sendall(sent)
        started = time.monotonic()
        try:
            data = sock.recv(65536)
        except ConnectionError:
            data = b""
        waited = time.monotonic() - started
    assert b"200 OK" not in data
    assert 1.5 <= waited <= 8, f"closed after {waited:.1f}s, the idle limit is 2s"

"""Devices' SUDI client certificates on a real node's HTTPS port (PNP_DEVICE_CA_FILE, PNP_DEVICE_CERT_REQUIRED).

The certificates are made here the way Cisco's SUDI CA makes them: the subject's serialNumber is "PID:<pid> SN:<sn>".
"""

from __future__ import annotations

import http.client
import ssl
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from pnp_integrated.devsim.node import RunningNode
from pnp_integrated.pnp.messages import Udi, WorkRequest, encode
from tests.client_certificates import CertificateAuthority

PID = "ISR4451-X/K9"


class SudiCa:
    """A stand-in for Cisco's SUDI CA: issues device certificates under ``directory``."""

    def __init__(self, directory: Path, name: str) -> None:
        self.directory = directory
        self.ca = CertificateAuthority(directory / "ca.pem", x509.Name([
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Cisco"), x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        self.bundle = self.ca.ca_file

    def device(self, serial_number: str | None) -> tuple[Path, Path]:
        """(certificate, key) files of a device whose subject serialNumber is ``serial_number`` (none: no such)."""
        names = [x509.NameAttribute(NameOID.COMMON_NAME, PID), x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Cisco")]
        if serial_number is not None:
            names.insert(0, x509.NameAttribute(NameOID.SERIAL_NUMBER, serial_number))
        stem = (serial_number or "no-serial").replace(" ", "_").replace(":", "").replace("/", "")
        return self.ca.issue(self.directory / f"{stem}.crt", self.directory / f"{stem}.key", x509.Name(names))


@pytest.fixture(scope="module")
def sudi(tmp_path_factory: pytest.TempPathFactory) -> SudiCa:
    return SudiCa(tmp_path_factory.mktemp("sudi"), "Cisco SUDI test CA")


@pytest.fixture(scope="module")
def checking_node(node_launcher: Callable[..., RunningNode], tmp_path_factory: pytest.TempPathFactory,
                  sudi: SudiCa) -> Iterator[RunningNode]:
    node = node_launcher(tmp_path_factory.mktemp("sudi-node"), device_ca_file=str(sudi.bundle), workers=1)
    yield node
    node.stop()


@pytest.fixture(scope="module")
def requiring_node(node_launcher: Callable[..., RunningNode], tmp_path_factory: pytest.TempPathFactory,
                   sudi: SudiCa) -> Iterator[RunningNode]:
    node = node_launcher(tmp_path_factory.mktemp("sudi-required"), device_ca_file=str(sudi.bundle),
                         device_cert_required=True, workers=1)
    yield node
    node.stop()


def post(node: RunningNode, path: str, body: bytes = b"", *, tls: bool = True,
         certificate: tuple[Path, Path] | None = None) -> tuple[int, str]:
    if tls:
        context = node.client_context()
        if certificate is not None:
            context.load_cert_chain(str(certificate[0]), str(certificate[1]))
        connection: http.client.HTTPConnection = http.client.HTTPSConnection(
            "127.0.0.1", node.port("https_port"), context=context, timeout=10)
    else:
        connection = http.client.HTTPConnection("127.0.0.1", node.port("http_port"), timeout=10)
    try:
        connection.request("POST" if body else "GET", path, body=body or None,
                           headers={"Content-Type": "text/xml"} if body else {})
        reply = connection.getresponse()
        return reply.status, reply.read().decode(errors="replace")
    finally:
        connection.close()


def work_request(serial: str) -> bytes:
    return encode(WorkRequest(Udi(PID, "V01", serial), "CiscoPnP-1.0-1"))


def test_a_device_speaks_for_the_serial_of_its_certificate_only(checking_node: RunningNode, sudi: SudiCa) -> None:
    mine = sudi.device(f"PID:{PID} SN:FOC0001A")
    assert post(checking_node, "/pnp/WORK-REQUEST", work_request("FOC0001A"), certificate=mine)[0] == 200
    status, text = post(checking_node, "/pnp/WORK-REQUEST", work_request("FOC0002B"), certificate=mine)
    assert status == 403 and "FOC0001A" in text and "FOC0002B" in text
    status, text = post(checking_node, "/cns/config.asp?DeviceID=FOC0002B", certificate=mine)
    assert status == 403 and "cannot speak for FOC0002B" in text
    # Without a certificate the device is served as before (CNS agents and older images present none).
    assert post(checking_node, "/pnp/WORK-REQUEST", work_request("FOC0003C"))[0] == 200
    assert post(checking_node, "/pnp/WORK-REQUEST", work_request("FOC0003C"), tls=False)[0] == 200


def test_a_certificate_from_another_ca_ends_the_handshake(checking_node: RunningNode, tmp_path: Path) -> None:
    forged = SudiCa(tmp_path / "forger", "Cisco SUDI test CA").device(f"PID:{PID} SN:FOC0001A")
    with pytest.raises((ssl.SSLError, ConnectionError)):
        post(checking_node, "/pnp/WORK-REQUEST", work_request("FOC0001A"), certificate=forged)
    port = checking_node.port("https_port")
    deadline = time.monotonic() + 5  # the client hears the alert before the node writes its line
    while f"TLS handshake refused on port {port}" not in checking_node.log_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert f"TLS handshake refused on port {port}" in checking_node.log_text()
    assert checking_node.get_json("/status", tls=True)[0] == 200  # the node is unharmed


def test_a_certificate_without_a_serial_number_is_refused(checking_node: RunningNode, sudi: SudiCa) -> None:
    nameless = sudi.device(None)
    status, text = post(checking_node, "/pnp/WORK-REQUEST", work_request("FOC0001A"), certificate=nameless)
    assert status == 403 and "names no serial number" in text


def test_required_certificates_refuse_open_pnp_without_one(requiring_node: RunningNode, sudi: SudiCa) -> None:
    mine = sudi.device(f"PID:{PID} SN:FOC0009Z")
    assert post(requiring_node, "/pnp/WORK-REQUEST", work_request("FOC0009Z"), certificate=mine)[0] == 200
    assert post(requiring_node, "/pnp/HELLO", certificate=mine)[0] == 200
    for tls in (True, False):
        status, text = post(requiring_node, "/pnp/WORK-REQUEST", work_request("FOC0009Z"), tls=tls)
        assert status == 403 and "PNP_DEVICE_CERT_REQUIRED" in text
        assert post(requiring_node, "/pnp/HELLO", tls=tls)[0] == 403
    # The operator's /status and the CNS agents' config service are not Open PnP: still open to clients without one.
    assert requiring_node.get_json("/status", tls=True)[0] == 200
    assert post(requiring_node, "/cns/config.asp?DeviceID=FOC0009Z", tls=False)[0] == 404
    metrics = post(requiring_node, "/metrics", tls=False)[1]
    assert 'pnp_refused_total{reason="device-certificate"} 4.0' in metrics

"""Broker client certificates: with ``PNP_BROKER_CLIENT_CA_FILE`` Prime's TLS port asks for one beside the login.

The same cases run against the embedded broker and ActiveMQ 5.17 (its generated configuration: ``needClientAuth`` and
a trust store of the client CA): no certificate, a certificate of another CA, the right one with the right login and
with a wrong login. Then the gateway's side: a bridge with ``PNP_BROKER_CLIENT_CERT_FILE`` / ``_KEY_FILE`` connects,
one without says why it cannot, and a whole node with the settings shows its broker row UP.
"""

from __future__ import annotations

import re
import ssl
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from pnp_integrated.bus.bridge import BridgeTarget, PrimeBridge
from pnp_integrated.config import Settings, load_settings
from pnp_integrated.credentials import BrokerCredentials, store_gateway_credentials
from pnp_integrated.devsim.node import NodeDidNotStart, node_environment, node_settings, start_node
from pnp_integrated.prime.accounts import AccountStore, accounts_path, prime_passcode
from pnp_integrated.prime.client import StompClient, StompClientError
from pnp_integrated.prime.server import PrimeProcess
from pnp_integrated.tls import ensure_certificates
from tests.client_certificates import ClientPki, issue_client_pki
from tests.support import wait_until

PASSCODE = "gateway-passcode-1"
TLS_VERSIONS = [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3]


@dataclass
class ClientCaPrime:
    settings: Settings
    broker: str
    trusted: ClientPki  # its CA is the broker's client CA
    stranger: ClientPki  # issued by a CA the broker does not know
    log: Path

    def context(self, pki: ClientPki | None, version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_3) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.settings.certs_dir / "ca.pem"))
        ctx.maximum_version = version
        if pki is not None:
            ctx.load_cert_chain(str(pki.cert), str(pki.key))
        return ctx

    def connect(self, pki: ClientPki | None, passcode: str = PASSCODE,
                version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_3) -> str:
        """The broker's answer to CONNECT over TLS: "CONNECTED", or the client's error."""
        client = StompClient("127.0.0.1", self.settings.broker_port, context=self.context(pki, version), timeout=5,
                             login=("pnp-gateway", passcode))
        try:
            answer = client.connect().command
        except StompClientError as exc:
            return str(exc)
        client.disconnect()
        return answer


@pytest.fixture(scope="module", params=["embedded", "activemq"])
def prime(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClientCaPrime]:
    root = Path(tmp_path_factory.mktemp(f"client-ca-{request.param}"))
    trusted, stranger = issue_client_pki(root / "pki", "gateway"), issue_client_pki(root / "other", "intruder")
    values = {k: v for k, v in node_settings(root / "prime").items()
              if k in ("data_dir", "broker_port", "bus_port", "health_port")}
    values["broker_client_ca_file"] = str(trusted.ca)
    settings = load_settings(values, environ={})
    settings.data_dir.mkdir(parents=True)
    ensure_certificates(settings)
    AccountStore(accounts_path(settings)).put("pnp-gateway", "gateway", PASSCODE, activemq=True)
    prime_passcode(settings, activemq=True)
    log = root / "prime.log"
    with log.open("wb") as stderr:
        process = PrimeProcess(settings, broker=request.param, env=node_environment(values), stderr=stderr)
        process.start()
    yield ClientCaPrime(settings, request.param, trusted, stranger, log)
    process.stop()


def refused_handshakes(prime: ClientCaPrime, reason: str) -> int:
    pattern = rf"TLS handshake refused on port {prime.settings.broker_port} from 127\.0\.0\.1: {reason}"
    return len(re.findall(pattern, prime.log.read_text(errors="replace")))


@pytest.mark.parametrize("version", TLS_VERSIONS, ids=["tls1.2", "tls1.3"])
def test_a_client_without_a_certificate_is_refused_in_the_handshake(prime: ClientCaPrime,
                                                                   version: ssl.TLSVersion) -> None:
    before = refused_handshakes(prime, "PEER_DID_NOT_RETURN_A_CERTIFICATE")
    answer = prime.connect(None, version=version)
    assert answer != "CONNECTED" and "refused CONNECT" not in answer  # never got as far as the login
    assert re.search(r"(?i)alert|certificate|EOF", answer), answer
    if prime.broker == "embedded":  # logged like every refused handshake (ActiveMQ keeps its own log)
        wait_until(lambda: refused_handshakes(prime, "PEER_DID_NOT_RETURN_A_CERTIFICATE") > before, 5,
                   "the refusal logged")


@pytest.mark.parametrize("version", TLS_VERSIONS, ids=["tls1.2", "tls1.3"])
def test_a_certificate_from_another_ca_is_refused(prime: ClientCaPrime, version: ssl.TLSVersion) -> None:
    before = refused_handshakes(prime, "CERTIFICATE_VERIFY_FAILED")
    answer = prime.connect(prime.stranger, version=version)
    assert answer != "CONNECTED" and "refused CONNECT" not in answer
    if prime.broker == "embedded":
        wait_until(lambda: refused_handshakes(prime, "CERTIFICATE_VERIFY_FAILED") > before, 5, "the refusal logged")


@pytest.mark.parametrize("version", TLS_VERSIONS, ids=["tls1.2", "tls1.3"])
def test_the_right_certificate_and_login_connect(prime: ClientCaPrime, version: ssl.TLSVersion) -> None:
    assert prime.connect(prime.trusted, version=version) == "CONNECTED"


def test_the_right_certificate_with_a_wrong_login_is_still_refused(prime: ClientCaPrime) -> None:
    answer = prime.connect(prime.trusted, passcode="not-the-passcode-7")
    assert "refused CONNECT" in answer  # the certificate got it through the handshake, the login stops it


def test_the_loopback_bus_still_takes_the_login_alone(prime: ClientCaPrime) -> None:
    client = StompClient("127.0.0.1", prime.settings.bus_port, timeout=5, login=("pnp-gateway", PASSCODE))
    assert client.connect().command == "CONNECTED"
    client.disconnect()


# ---- the gateway's side ------------------------------------------------------------------------------------------


@pytest.fixture
def bridge_of(app_factory: Callable[..., Flask], prime: ClientCaPrime) -> Iterator[Callable[..., PrimeBridge]]:
    """A bridge of a gateway app (its settings as given) to the Prime above; stopped at the end of the test."""
    started: list[tuple[PrimeBridge, threading.Thread]] = []

    def make(connect_timeout: float = 5, **settings: Any) -> PrimeBridge:
        app = app_factory(broker_port=prime.settings.broker_port, bus_port=prime.settings.bus_port, **settings)
        store_gateway_credentials(app.extensions["pnp_gateway"].settings, BrokerCredentials("pnp-gateway", PASSCODE))
        bridge = PrimeBridge(app, BridgeTarget("127.0.0.1", prime.settings.broker_port,
                                               prime.settings.certs_dir / "ca.pem"), max_backoff=0.5,
                             connect_timeout=connect_timeout)
        thread = threading.Thread(target=bridge.run, daemon=True)
        thread.start()
        started.append((bridge, thread))
        return bridge

    yield make
    for bridge, thread in started:
        bridge.stop()
        thread.join(10)


def broker_row(app: Flask) -> dict[str, str]:
    rows = app.test_client().get("/status").get_json()["rows"]
    return next(r for r in rows if r["service"] == "Prime Infrastructure Broker")


def test_a_gateway_with_its_client_certificate_connects(bridge_of: Callable[..., PrimeBridge],
                                                        prime: ClientCaPrime) -> None:
    bridge = bridge_of(broker_client_cert_file=str(prime.trusted.cert), broker_client_key_file=str(prime.trusted.key))
    wait_until(lambda: bridge.connected, 20, "the bridge to connect with its certificate")
    assert wait_until(lambda: broker_row(bridge.app)["status"] == "UP", 10, "the broker row UP")


def test_a_gateway_without_one_stays_down_and_says_why(bridge_of: Callable[..., PrimeBridge],
                                                      caplog: pytest.LogCaptureFixture) -> None:
    # A long connect timeout: a connection the broker closed is reported at once, not waited out.
    bridge = bridge_of(connect_timeout=120)
    reasons: list[str] = []

    def three_attempts() -> bool:
        row = broker_row(bridge.app)
        if row["info"] not in reasons[-1:]:
            reasons.append(row["info"])
        return caplog.text.count("Prime broker 127.0.0.1:") >= 3

    with caplog.at_level("WARNING", logger="pnp_integrated.bus.bridge"):
        wait_until(three_attempts, 30, "three refused attempts")
    assert bridge.connections == 0
    # Every attempt says why, however early the broker closed (never "internal error").
    assert "failed unexpectedly" not in caplog.text
    assert all("asks for a client certificate and the gateway presents none" in r for r in reasons[1:]), reasons
    assert "set PNP_BROKER_CLIENT_CERT_FILE and PNP_BROKER_CLIENT_KEY_FILE" in reasons[-1]


def test_a_gateway_whose_certificate_another_ca_issued_is_told_so(bridge_of: Callable[..., PrimeBridge],
                                                                   prime: ClientCaPrime) -> None:
    bridge = bridge_of(connect_timeout=120, broker_client_cert_file=str(prime.stranger.cert),
                       broker_client_key_file=str(prime.stranger.key))
    row = wait_until(lambda: (r := broker_row(bridge.app))["status"] == "DOWN" and "certificate" in r["info"] and r,
                     20, "the broker row to say why")
    assert f"refused the gateway's client certificate {prime.stranger.cert}" in row["info"]
    assert bridge.connections == 0


def test_a_node_with_the_client_certificate_settings_has_its_broker_row_up(tmp_path: Path) -> None:
    pki = issue_client_pki(tmp_path / "pki", "gateway")
    # Co-located: the node's own Prime asks for certificates of this CA, and its gateway presents one.
    node = start_node(tmp_path / "node", broker_client_ca_file=str(pki.ca), broker_client_cert_file=str(pki.cert),
                      broker_client_key_file=str(pki.key))
    try:
        def row() -> dict[str, str] | None:
            _, status = node.get_json("/status")
            found = next(r for r in status["rows"] if r["service"] == "Prime Infrastructure Broker")
            return found if found["status"] == "UP" else None

        wait_until(row, 30, "the bridge to connect to its Prime with the client certificate")
    finally:
        node.stop()


def test_a_key_that_is_not_the_certificates_stops_the_node_naming_the_settings(tmp_path: Path) -> None:
    pki, other = issue_client_pki(tmp_path / "pki", "gateway"), issue_client_pki(tmp_path / "other", "other")
    with pytest.raises(NodeDidNotStart) as failed:
        start_node(tmp_path / "node", broker_client_cert_file=str(pki.cert), broker_client_key_file=str(other.key))
    text = str(failed.value)
    assert "exited with 2" in text and "Traceback" not in text
    assert "PNP_BROKER_CLIENT_CERT_FILE, PNP_BROKER_CLIENT_KEY_FILE" in text and "KEY_VALUES_MISMATCH" in text

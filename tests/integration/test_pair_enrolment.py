"""The primary's `pnpp setup` enrols its secondary over HTTPS, and takes it out of service when HA is removed.

Two real standalone gateways on one host, on the loopback aliases 127.0.0.2 (the primary) and 127.0.0.3 (the
secondary), sharing a real PostgreSQL database. The secondary runs as a single standalone gateway (`pnpp run` with
its own configuration file); its operator hands over an admin token and the certificate fingerprint `pnpp certs
show` prints. The primary's setup, run with the flags an unattended set-up uses, enrols it: the secondary comes back,
in the same process, as the secondary of the pair. Neither Prime nor the VIP is needed here (the VIP never moves).
"""

from __future__ import annotations

import json
import os
import signal
import ssl
import subprocess
import time
import tomllib
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from pnp_integrated.config import load_settings
from pnp_integrated.credentials import BrokerCredentials, gateway_credentials, store_gateway_credentials
from pnp_integrated.devsim.node import PNPP, free_port_block, node_settings, port_accepts
from pnp_integrated.tls import store_prime_trust, trusted_prime_hosts
from tests.client_certificates import issue_client_pki

pytestmark = pytest.mark.postgres

PRIMARY, SECONDARY, PRIME = "127.0.0.2", "127.0.0.3", "127.0.0.4"
VIP = "192.0.2.80"  # the pair's VIP: on no interface of this host, so neither node ever holds it here


def _environment(config: Path) -> dict[str, str]:
    """A gateway's environment: its configuration file and nothing else of ours (as a service manager starts it)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PNP_")}
    env["PNP_CONFIG"] = str(config)
    return env


def _write_config(path: Path, values: dict[str, Any]) -> None:
    from pnp_integrated.api.enrolment import configuration_text

    path.write_text(configuration_text(values))


def _ready_for_prime(config: Path, prime_certificate: str, login: BrokerCredentials) -> None:
    """What a standalone gateway needs before `pnpp run` starts it: Prime's certificates and its broker login."""
    settings = load_settings(environ={"PNP_CONFIG": str(config)})
    store_prime_trust(settings, PRIME, [prime_certificate])
    store_gateway_credentials(settings, login)


@dataclass
class StandaloneGateway:
    """`pnpp run` of a standalone gateway on its own configuration file, as its host's operator starts it."""

    config: Path
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    _log: Any = field(default=None, repr=False)

    @property
    def env(self) -> dict[str, str]:
        return _environment(self.config)

    def settings(self) -> dict[str, Any]:
        return tomllib.loads(self.config.read_text())

    @property
    def monitoring_port(self) -> int:
        return int(self.settings()["cns_port_base"])

    def start(self) -> None:
        self._log = self.log_path.open("ab")
        self.process = subprocess.Popen([PNPP, "run"], env=self.env, stdout=self._log, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, start_new_session=True)
        self.wait_ready()

    def status(self, timeout: float = 2.0) -> dict[str, Any]:
        context = ssl.create_default_context()
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
        url = f"https://{SECONDARY}:{self.monitoring_port}/status"
        with urllib.request.urlopen(url, timeout=timeout, context=context) as answer:
            return dict(json.load(answer))

    def wait_ready(self, timeout: float = 120.0) -> dict[str, Any]:
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"pnpp run exited with {self.process.returncode}:\n{self.log()}")
            try:
                return self.status()
            except (OSError, ValueError):
                time.sleep(0.3)
        raise AssertionError(f"the gateway did not answer within {timeout}s:\n{self.log()}")

    def pnpp(self, *args: str) -> str:
        done = subprocess.run([PNPP, *args], env=self.env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                pass
        if self.process is not None:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if self._log is not None:
            self._log.close()
            self._log = None


@dataclass
class Pair:
    """The secondary (running, single) and what the primary's setup needs: its file, the secondary's hand-over."""

    secondary: StandaloneGateway
    primary_config: Path
    token: str
    fingerprint: str
    login: BrokerCredentials
    database_url: str

    def setup(self, *args: str, token: str | None = None) -> subprocess.CompletedProcess[str]:
        """The primary's `pnpp setup`, unattended; the secondary's token is read from stdin."""
        return subprocess.run([PNPP, "setup", "--config", str(self.primary_config), "--yes", *args],
                              input=(token if token is not None else self.token) + "\n",
                              env=_environment(self.primary_config), capture_output=True, text=True, timeout=300)

    def enrol(self, *extra: str, fingerprint: str | None = None,
              token: str | None = None) -> subprocess.CompletedProcess[str]:
        return self.setup("--mode", "standalone", "--ha-mode", "none", "--prime-address", PRIME,
                          "--gateway-ha", "pair", "--vip", VIP, "--virtual-host-name", "pnp-gw.example.net",
                          "--node-address", PRIMARY, "--secondary-address", SECONDARY,
                          "--database-url", self.database_url, "--gateway-failback", "1",
                          "--gateway-hold-down", "45", "--secondary-port", str(self.secondary.monitoring_port),
                          "--secondary-fingerprint", fingerprint or self.fingerprint,
                          "--secondary-token-file", "-", *extra, token=token)


@pytest.fixture
def pair(tmp_path: Path, postgres_url: str) -> Iterator[Pair]:
    prime_certificate = issue_client_pki(tmp_path / "prime-pki", "prime").cert.read_text()
    login = BrokerCredentials("pnp-gateway", "the-pairs-broker-passcode")
    # The secondary: a single standalone gateway on its own address, ports and SQLite database.
    secondary_config = tmp_path / "secondary" / "gateway.toml"
    secondary_config.parent.mkdir(parents=True)
    _write_config(secondary_config, {
        "mode": "standalone", "ha_mode": "none", "prime_address": PRIME, "vip": SECONDARY, "node_name": "gw-b",
        **node_settings(tmp_path / "secondary" / "data"), "broker_port": free_port_block(1)})
    _ready_for_prime(secondary_config, prime_certificate, BrokerCredentials("gw-b-alone", "its-own-passcode"))
    secondary = StandaloneGateway(secondary_config, tmp_path / "secondary" / "node.log")
    # The primary: its node name, data directory and ports; setup writes the rest.
    primary_config = tmp_path / "primary" / "gateway.toml"
    primary_config.parent.mkdir(parents=True)
    primary_ports = node_settings(tmp_path / "primary" / "data")
    _write_config(primary_config, {"node_name": "gw-a", **primary_ports,
                                   "broker_port": secondary.settings()["broker_port"]})
    _ready_for_prime(primary_config, prime_certificate, login)
    try:
        secondary.start()
        token = secondary.pnpp("token", "create", "--role", "admin", "--name", "enrolment-by-gw-a").strip()
        shown = secondary.pnpp("certs", "show")
        fingerprint = next(line.split()[1] for line in shown.splitlines() if line.startswith("sha256"))
        yield Pair(secondary, primary_config, token, fingerprint, login, postgres_url)
    finally:
        secondary.stop()


def _file_state(pair: Pair) -> dict[str, str | None]:
    """Every file an enrolment could write, on both sides (None: absent)."""
    sides = [pair.primary_config, pair.secondary.config]
    for config in sides[:]:
        data = Path(tomllib.loads(config.read_text())["data_dir"])
        sides += [data / "secrets" / "broker-credentials.json", data / "secrets" / "profile-keys.json",
                  data / "certs" / "prime-trust.pem", data / "certs" / "gateway-peer.pem"]
    return {str(p): p.read_text() if p.exists() else None for p in sides}


def test_a_wrong_fingerprint_or_token_is_refused_and_nothing_is_written(pair: Pair) -> None:
    before = _file_state(pair)
    other = "ab:" * 31 + "ab"
    done = pair.enrol(fingerprint=other)
    assert done.returncode == 2, done.stdout + done.stderr
    assert f"presented SHA-256 {pair.fingerprint}, not the {other} given" in done.stderr
    assert "Nothing was sent or written" in done.stderr

    done = pair.enrol(token="pnp_not-the-secondarys-token")
    assert done.returncode == 2, done.stdout + done.stderr
    assert "the secondary refused the token (the token is invalid or revoked)" in done.stderr
    assert "pnpp token create --role admin" in done.stderr and "nothing was written" in done.stderr

    assert _file_state(pair) == before
    rows = {row["service"]: row for row in pair.secondary.status()["rows"]}
    assert pair.secondary.settings()["vip"] == SECONDARY and "gateway_ha" not in pair.secondary.settings()
    assert rows["System"]["status"] == "UP"


def test_the_primary_enrols_its_secondary_which_comes_back_in_pair_mode_and_leaves_when_ha_is_removed(
        pair: Pair) -> None:
    secondary = pair.secondary
    assert secondary.process is not None
    pid = secondary.process.pid
    before_enrolment = secondary.config.read_text()
    own_ca = (Path(secondary.settings()["data_dir"]) / "certs" / "ca.pem").read_text()

    done = pair.enrol()
    assert done.returncode == 0, done.stdout + done.stderr + secondary.log()
    assert "the-pairs-broker-passcode" not in done.stdout + done.stderr
    assert "The secondary gw-b accepted the pair's settings" in done.stdout
    assert "The secondary gw-b is the secondary of the pair now (PASSIVE)" in done.stdout

    # The same process, restarted in place with the settings the primary sent, on the pair's database and ports.
    assert secondary.process.poll() is None and secondary.process.pid == pid
    assert "restarting with the new settings" in secondary.log()
    settings = load_settings(environ={"PNP_CONFIG": str(secondary.config)})
    assert (settings.gateway_ha, settings.gateway_role, settings.gateway_peer, settings.node_address) == (
        "pair", "secondary", PRIMARY, SECONDARY)
    assert (settings.vip, settings.virtual_host_name, settings.gateway_failback, settings.gateway_hold_down) == (
        VIP, "pnp-gw.example.net", "auto", 45.0)
    assert settings.database_url == pair.database_url and settings.node_name == "gw-b"
    primary = load_settings(environ={"PNP_CONFIG": str(pair.primary_config)})
    assert (settings.http_port, settings.cns_port_base) == (primary.http_port, primary.cns_port_base)
    assert (primary.gateway_role, primary.gateway_peer, primary.node_address) == ("primary", SECONDARY, PRIMARY)
    # The shared secrets, readable by the secondary's owner only; the primary's passcode replaced its own.
    assert gateway_credentials(settings) == pair.login
    keys = settings.data_dir / "secrets" / "profile-keys.json"
    assert keys.read_text() == (primary.data_dir / "secrets" / "profile-keys.json").read_text()
    assert list(trusted_prime_hosts(settings)) == [PRIME]
    for path in (secondary.config, keys, settings.data_dir / "secrets" / "broker-credentials.json"):
        assert path.stat().st_mode & 0o777 == 0o600, path
    assert secondary.wait_ready()["rows"]  # it answers its status on the pair's monitoring port
    # One CA for both: a device that trusts the primary's CA trusts the secondary's certificate after a failover,
    # and that certificate names the pair's VIP and name as well as the secondary's own address.
    presented = x509.load_pem_x509_certificate(
        ssl.get_server_certificate((SECONDARY, settings.monitoring_port), timeout=10).encode())
    assert (settings.data_dir / "certs" / "ca.pem").read_text() == (primary.data_dir / "certs" / "ca.pem").read_text()
    presented.verify_directly_issued_by(x509.load_pem_x509_certificate((primary.data_dir / "certs" / "ca.pem")
                                                                      .read_bytes()))
    names = presented.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {VIP, SECONDARY} <= {str(ip) for ip in names.get_values_for_type(x509.IPAddress)}
    assert "pnp-gw.example.net" in names.get_values_for_type(x509.DNSName)
    # The primary pinned that certificate, not the one the secondary had before it joined.
    assert (primary.data_dir / "certs" / "gateway-peer.pem").read_text().strip() == \
        presented.public_bytes(serialization.Encoding.PEM).decode().strip()
    # Setup again on the primary: the enrolled secondary gets the new settings, with nobody's token.
    updated = pair.setup("--gateway-failback", "0", token="")
    assert updated.returncode == 0, updated.stdout + updated.stderr + secondary.log()
    assert "The secondary 127.0.0.3 is enrolled already" in updated.stdout
    assert "The secondary gw-b is the secondary of the pair now (PASSIVE)" in updated.stdout
    settings = load_settings(environ={"PNP_CONFIG": str(secondary.config)})
    assert settings.gateway_failback == "manual" and secondary.process.pid == pid

    # Removing HA on the primary: the secondary leaves, puts back what it had and stops.
    removed = pair.setup("--gateway-ha", "none", "--vip", PRIMARY)
    assert removed.returncode == 0, removed.stdout + removed.stderr + secondary.log()
    assert "The secondary 127.0.0.3 left the pair" in removed.stdout
    assert f"a device whose `cns event` line names the secondary {SECONDARY}" in removed.stdout
    assert f"`cns event {PRIMARY} {primary.cns_port_base + 1} keepalive 60 3`" in removed.stdout
    assert secondary.process.wait(60) == 0
    assert not port_accepts(settings.monitoring_port, SECONDARY, timeout=1)
    assert secondary.config.read_text() == before_enrolment
    assert (settings.data_dir / "certs" / "ca.pem").read_text() == own_ca  # its own identity again
    assert gateway_credentials(load_settings(environ={"PNP_CONFIG": str(secondary.config)})).login == "gw-b-alone"
    after = tomllib.loads(pair.primary_config.read_text())
    assert after["vip"] == PRIMARY and "gateway_ha" not in after and "gateway_peer" not in after

    # Started again, it is the single gateway it was; the token its operator handed over was used up.
    secondary.start()
    assert "gateway_ha" not in secondary.settings()
    again = pair.enrol()
    assert again.returncode == 2, again.stdout + again.stderr
    assert "the secondary refused the token (the token is invalid or revoked)" in again.stderr

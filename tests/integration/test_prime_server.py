"""The simulated Prime node as an operator meets it: health JSON, ``pnpp prime`` commands, clear errors."""

from __future__ import annotations

import json
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from pnp_integrated.cli import main
from pnp_integrated.config import Settings, load_settings
from pnp_integrated.credentials import gateway_credentials
from pnp_integrated.destinations import COMMANDS_QUEUE, EVENTS_QUEUE
from pnp_integrated.devsim.node import node_environment, node_settings
from pnp_integrated.prime.accounts import enrol_local_gateway
from pnp_integrated.prime.client import StompClient
from pnp_integrated.prime.server import PrimeProcess
from pnp_integrated.tls import ensure_certificates

Prime = tuple[Settings, dict[str, str]]


@pytest.fixture
def prime(tmp_path: Path) -> Iterator[Prime]:
    values = {k: v for k, v in node_settings(tmp_path / "prime").items()
              if k in ("data_dir", "broker_port", "bus_port", "health_port")}
    values["node_name"] = "prime-a"
    settings = load_settings(values, environ={})
    settings.data_dir.mkdir(parents=True)
    ensure_certificates(settings)
    env = node_environment(values)
    enrol_local_gateway(settings)
    process = PrimeProcess(settings, env=env)
    process.start()
    yield settings, {k: v for k, v in env.items() if k.startswith("PNP_")}
    process.stop()


def test_health_reports_role_and_state_over_https(prime: Prime) -> None:
    settings, _ = prime
    ctx = ssl.create_default_context(cafile=str(settings.certs_dir / "ca.pem"))
    with urllib.request.urlopen(f"https://127.0.0.1:{settings.health_port}/health", context=ctx, timeout=5) as resp:
        assert resp.headers["Content-Type"] == "application/json"
        body = json.load(resp)
    assert body == {"node": "prime-a", "role": "primary", "state": "active", "ha_mode": "none",
                    "vip": "127.0.0.1", "peer": "", "peer_state": ""}
    with pytest.raises(urllib.error.HTTPError) as missing:
        urllib.request.urlopen(f"https://127.0.0.1:{settings.health_port}/nope", context=ctx, timeout=5)
    assert missing.value.code == 404


def test_send_events_and_trust_commands(prime: Prime, tmp_path: Path) -> None:
    settings, env = prime
    runner = CliRunner()
    payload = tmp_path / "profile.json"
    payload.write_text(json.dumps({"profile": {"name": "branch"}}))
    result = runner.invoke(main, ["prime", "send", "profile.upsert", str(payload), "--id", "cmd-1"], env=env)
    assert result.exit_code == 0, result.output
    assert "sent profile.upsert cmd-1" in result.output
    gateway = gateway_credentials(settings)
    with StompClient("127.0.0.1", settings.bus_port, login=(gateway.login, gateway.passcode)) as client:
        client.subscribe(COMMANDS_QUEUE, "peek")
        frame = client.receive(5)
        assert frame is not None and json.loads(frame.body)["profile"] == {"name": "branch"}
        assert json.loads(frame.body)["type"] == "profile.upsert"
        for i in (1, 2, 1):  # the repeat of id e-1 is delivered twice but listed once
            client.send(EVENTS_QUEUE, json.dumps({"id": f"e-{i}", "type": "gateway.state", "at": "2025-01-01T00:00:00Z",
                                                   "gateway": "gw-1", "state": "ACTIVE"}).encode(),
                        {"persistent": "true"})

    deadline = time.monotonic() + 5
    while True:
        listed = runner.invoke(main, ["prime", "events"], env=env)
        if listed.output.count("gateway.state") == 2 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert listed.exit_code == 0, listed.output
    lines = listed.output.strip().splitlines()
    assert len(lines) == 2 and "e-1 (delivered 2x)" in lines[0] and lines[1].endswith("e-2")
    as_json = runner.invoke(main, ["prime", "events", "--json"], env=env)
    assert [json.loads(line)["id"] for line in as_json.output.splitlines()] == ["e-1", "e-2"]

    trusted = runner.invoke(main, ["prime", "trust", "--from", f"127.0.0.1:{settings.broker_port}"], env=env)
    assert trusted.exit_code == 0, trusted.output
    stored = (settings.certs_dir / "prime-trust.pem").read_text()
    assert stored.count("BEGIN CERTIFICATE") == 2  # server certificate and CA, shared by both endpoints
    assert stored.split("-----END CERTIFICATE-----")[1].strip() in (settings.certs_dir / "ca.pem").read_text()

    # With --login the gateway's broker credentials are stored as well, readable by their owner only.
    elsewhere = tmp_path / "gateway-credentials.json"
    trusted = runner.invoke(main, ["prime", "trust", "--from", f"127.0.0.1:{settings.broker_port}", "--login",
                                   "gw-7", "--passcode-file", "-"], input="the-passcode-of-gw-7\n",
                            env={**env, "PNP_BROKER_CREDENTIALS_FILE": str(elsewhere)})
    assert trusted.exit_code == 0, trusted.output
    assert "the-passcode" not in trusted.output
    assert oct(elsewhere.stat().st_mode & 0o777) == "0o600"
    stored_login = gateway_credentials(load_settings({"broker_credentials_file": str(elsewhere)}, environ={}))
    assert (stored_login.login, stored_login.passcode) == ("gw-7", "the-passcode-of-gw-7")


def test_bad_input_gets_a_clear_error(prime: Prime, tmp_path: Path) -> None:
    _settings, env = prime
    runner = CliRunner()
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2")
    result = runner.invoke(main, ["prime", "send", "profile.upsert", str(bad)], env=env)
    assert result.exit_code == 1 and "is not JSON" in result.output
    bad.write_text("[1, 2]")
    result = runner.invoke(main, ["prime", "send", "profile.upsert", str(bad)], env=env)
    assert result.exit_code == 1 and "must hold a JSON object" in result.output
    result = runner.invoke(main, ["prime", "trust", "--from", "127.0.0.1:notaport"], env=env)
    assert result.exit_code == 1 and "is not HOST:PORT" in result.output
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    result = runner.invoke(main, ["prime", "trust", "--from", f"127.0.0.1:{closed_port}"], env=env)
    assert result.exit_code == 1 and f"127.0.0.1:{closed_port}" in result.output
    assert "Traceback" not in result.output


def test_second_prime_on_the_same_ports_fails_clearly(prime: Prime) -> None:
    settings, env = prime
    result = subprocess.run([sys.executable, "-m", "pnp_integrated.prime", "serve"], env={**node_environment({}),
                            **env}, capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert f"cannot listen on 0.0.0.0:{settings.broker_port}" in result.stderr
    assert "Traceback" not in result.stderr

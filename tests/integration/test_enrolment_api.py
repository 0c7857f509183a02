"""``/api/v1/ha/enrolment`` refuses what it must, says why, and agrees with the OpenAPI document about it.

The whole enrolment (two real nodes, a real PostgreSQL database) is tests/integration/test_pair_enrolment.py; here
the refusals an operator meets, through the app itself: plain HTTP, a read token, a gateway that cannot be enrolled,
an enrolment that would leave the node unable to start. A refused enrolment writes nothing.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from cryptography.fernet import Fernet
from flask import Flask

from pnp_integrated.api.enrolment import PAIR_SETTINGS, RUN_PID_VARIABLE, configuration_text
from pnp_integrated.api.tokens import issue_token
from pnp_integrated.config import Settings
from pnp_integrated.context import gateway_state
from tests.client_certificates import issue_client_pki

HTTPS = "https://localhost"
PATH = "/api/v1/ha/enrolment"


@pytest.fixture
def standalone(app_factory: Callable[..., Flask]) -> Flask:
    return app_factory(mode="standalone", prime_address="10.0.0.10")


def token(app: Flask, role: str = "admin") -> dict[str, str]:
    with app.app_context():
        return {"Authorization": f"Bearer {issue_token(f'{role}-ops', role)}"}


@pytest.fixture
def run_by_pnpp(standalone: Flask, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The gateway as `pnpp run` starts it: a configuration file, and a process that would restart it (a sleeper)."""
    settings = gateway_state(standalone).settings
    config = tmp_path / "gateway.toml"
    config.write_text(configuration_text({
        "mode": "standalone", "prime_address": "10.0.0.10", "data_dir": str(settings.data_dir),
        "http_port": settings.http_port, "https_port": settings.https_port, "cns_port_base": settings.cns_port_base,
        "health_port": settings.health_port, "broker_port": settings.broker_port, "bus_port": settings.bus_port}))
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
    monkeypatch.setenv("PNP_CONFIG", str(config))
    monkeypatch.setenv(RUN_PID_VARIABLE, str(sleeper.pid))
    try:
        yield config
    finally:
        sleeper.kill()
        sleeper.wait()


def enrolment_body(tmp_path: Path, **changes: Any) -> dict[str, Any]:
    """A body the document accepts: the pair's settings as a primary sends them, and its secrets."""
    pem = issue_client_pki(tmp_path / "pki").cert.read_text()
    defaults = Settings()
    settings: dict[str, Any] = {name: getattr(defaults, name) for name in PAIR_SETTINGS}
    settings.update(mode="standalone", ha_mode="none", prime_address="10.0.0.10", gateway_ha="pair",
                    gateway_role="secondary", vip="192.0.2.80", node_address="192.0.2.12", gateway_peer="192.0.2.11",
                    database_url="postgresql+psycopg://pnp@127.0.0.1:1/pnp")
    settings.update(changes)
    return {"settings": settings, "secrets": {
        "broker_login": {"login": "pnp-gateway", "passcode": "the-pairs-passcode"},
        "profile_keys": {"keys": [{"id": "k1", "key": Fernet.generate_key().decode()}]},
        "prime_trust": {"10.0.0.10": [pem]}, "peer_certificate": pem}}


def written(app: Flask, config: Path) -> dict[Path, bytes]:
    """The configuration file and every file an enrolment could write (secrets, certificates), with their bytes."""
    data_dir = gateway_state(app).settings.data_dir
    files = [config, *(data_dir / "secrets").glob("*"), *(data_dir / "certs").glob("*")]
    return {path: path.read_bytes() for path in files if path.is_file()}


def document(app: Flask) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_wsgi("/api/v1/openapi.json", app)


def body_is_valid(app: Flask, body: Any) -> bool:
    found = document(app).find_operation_by_label("POST /ha/enrolment")
    assert found is not None
    return bool(found.body[0].is_valid(body))


def documented(app: Flask, label: str, status: int) -> str:
    found = document(app).find_operation_by_label(label)
    assert found is not None
    answer = found.definition.raw["responses"][str(status)]
    return str(answer["description"])


def test_only_https_and_only_admin_tokens(standalone: Flask) -> None:
    client = standalone.test_client()
    admin = token(standalone)
    for method in ("GET", "POST", "DELETE"):
        answer = client.open(PATH, method=method, headers=admin, json={} if method == "POST" else None)
        assert answer.status_code == 403, method
        assert answer.get_json()["error"]["code"] == "https_required"
        assert "only over HTTPS" in answer.get_json()["error"]["message"]
    assert "plain HTTP" in documented(standalone, "GET /ha/enrolment", 403)
    read = client.get(PATH, headers=token(standalone, "read"), base_url=HTTPS)
    assert read.status_code == 403 and "needs admin" in read.get_json()["error"]["message"]


def test_a_gateway_that_cannot_be_enrolled_says_why(standalone: Flask, app: Flask) -> None:
    facts = standalone.test_client().get(PATH, headers=token(standalone), base_url=HTTPS)
    assert facts.status_code == 200
    found = document(standalone).find_operation_by_label("GET /ha/enrolment")
    assert found is not None and found.is_valid_response(facts)
    assert facts.get_json()["enrolment"]["possible"] is False
    assert "PNP_CONFIG=<file> pnpp run" in facts.get_json()["enrolment"]["refusal"]
    # An integrated gateway follows Prime's HA; it is never a gateway pair's secondary.
    integrated = app.test_client().get(PATH, headers=token(app), base_url=HTTPS).get_json()
    assert integrated["mode"] == "integrated" and integrated["enrolment"]["possible"] is False


def test_an_enrolment_the_node_could_not_start_with_is_refused_and_writes_nothing(
        standalone: Flask, run_by_pnpp: Path, tmp_path: Path) -> None:
    client = standalone.test_client()
    admin = token(standalone)
    before = written(standalone, run_by_pnpp)
    facts = client.get(PATH, headers=admin, base_url=HTTPS).get_json()
    assert facts["enrolment"] == {"possible": True, "refusal": ""}

    unreachable = enrolment_body(tmp_path)
    assert body_is_valid(standalone, unreachable)
    answer = client.post(PATH, headers=admin, json=unreachable, base_url=HTTPS)
    assert answer.status_code == 422, answer.get_json()
    assert "cannot reach the pair's database 127.0.0.1:1/pnp" in answer.get_json()["error"]["message"]
    assert "cannot reach the pair's database" in documented(standalone, "POST /ha/enrolment", 422)

    same_address = enrolment_body(tmp_path, vip="192.0.2.12")
    assert body_is_valid(standalone, same_address)
    answer = client.post(PATH, headers=admin, json=same_address, base_url=HTTPS)
    assert answer.status_code == 422 and "would not start" in answer.get_json()["error"]["message"]
    assert "VIP must differ" in answer.get_json()["error"]["message"]

    untrusted = enrolment_body(tmp_path, ha_mode="different-ip", prime_secondary_address="10.0.0.20")
    assert body_is_valid(standalone, untrusted)
    answer = client.post(PATH, headers=admin, json=untrusted, base_url=HTTPS)
    assert answer.status_code == 422 and "names no certificate of Prime 10.0.0.20" in answer.get_json()["error"][
        "message"]

    not_secondary = enrolment_body(tmp_path, gateway_role="primary")
    assert not body_is_valid(standalone, not_secondary)
    refused = client.post(PATH, headers=admin, json=not_secondary, base_url=HTTPS)
    assert refused.status_code == 422 and refused.get_json()["error"]["fields"] == ["settings"]
    assert refused.get_json()["error"]["message"].startswith("an enrolment makes this gateway the secondary")

    os.environ["PNP_VIP"] = "192.0.2.99"
    try:
        overridden = client.post(PATH, headers=admin, json=enrolment_body(tmp_path), base_url=HTTPS)
    finally:
        del os.environ["PNP_VIP"]
    assert overridden.status_code == 409 and "environment sets PNP_VIP" in overridden.get_json()["error"]["message"]

    assert written(standalone, run_by_pnpp) == before
    # Nothing was used up either: the token still works.
    assert client.get(PATH, headers=admin, base_url=HTTPS).status_code == 200


def test_a_single_gateway_has_no_pair_to_leave(standalone: Flask, run_by_pnpp: Path) -> None:
    answer = standalone.test_client().delete(PATH, headers=token(standalone), base_url=HTTPS)
    assert answer.status_code == 409 and "no pair to leave" in answer.get_json()["error"]["message"]
    assert "is not a secondary" in documented(standalone, "DELETE /ha/enrolment", 409)

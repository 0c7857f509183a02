"""The REST API as an operator's script sees it: tokens, profiles, devices, jobs, images, bootstrap, errors."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select

from pnp_integrated.api.tokens import issue_token
from pnp_integrated.models import ApiToken, AuditEntry, db
from pnp_integrated.provisioning import engine
from pnp_integrated.provisioning.types import ActionKind, DeviceIdentity, Outcome

Call = Callable[..., Any]


@pytest.fixture
def tokens(app: Flask) -> dict[str, str]:
    with app.app_context():
        return {"admin": issue_token("ops-admin", "admin"), "read": issue_token("noc", "read")}


@pytest.fixture
def api(client: FlaskClient, tokens: dict[str, str]) -> Call:
    """``api(method, path, role="admin", **kw)`` -> response."""

    def call(method: str, path: str, role: str | None = "admin", **kw: Any) -> Any:
        headers = kw.pop("headers", {})
        if role:
            headers["Authorization"] = f"Bearer {tokens[role]}"
        return client.open(f"/api/v1{path}", method=method, headers=headers, **kw)

    return call


def error_of(response: Any) -> dict[str, Any]:
    body = response.get_json()
    assert set(body) == {"error"}, body
    return dict(body["error"])


def test_tokens_and_roles(api: Call, app: Flask) -> None:
    assert api("GET", "/profiles", role=None).status_code == 401
    assert error_of(api("GET", "/profiles", role=None))["code"] == "unauthorized"
    bad = api("GET", "/profiles", role=None, headers={"Authorization": "Bearer nope"})
    assert bad.status_code == 401 and "invalid" in error_of(bad)["message"]
    assert api("GET", "/profiles", role="read").status_code == 200
    denied = api("POST", "/profiles", role="read", json={"name": "x"})
    assert denied.status_code == 403 and error_of(denied)["code"] == "forbidden"
    with app.app_context():
        stored = db.session.scalars(select(ApiToken.token_sha256)).all()
    assert all(len(s) == 64 for s in stored) and len(stored) == 2


def test_profile_crud_with_audit_and_hidden_credentials(api: Call, app: Flask) -> None:
    created = api("POST", "/profiles", json={
        "name": "branch", "match_pid": "ISR43*", "config_template": "hostname {{ site }}",
        "variables": {"site": "lyon"}, "credentials": {"username": "admin", "password": "s3cret"}})
    assert created.status_code == 201, created.get_json()
    body = created.get_json()
    assert body["has_credentials"] is True and "credentials" not in body and "s3cret" not in created.get_data(True)
    assert api("POST", "/profiles", json={"name": "branch"}).status_code == 409
    patched = api("PATCH", "/profiles/branch", json={"match_serials": ["FOC1"]})
    assert patched.get_json()["match_serials"] == ["FOC1"] and patched.get_json()["match_pid"] == "ISR43*"
    replaced = api("PUT", "/profiles/branch", json={"config_template": "hostname x"})
    assert replaced.get_json()["match_pid"] == "" and replaced.get_json()["has_credentials"] is False
    assert [p["name"] for p in api("GET", "/profiles", role="read").get_json()["items"]] == ["branch"]
    assert api("DELETE", "/profiles/branch").status_code == 204
    assert api("GET", "/profiles/branch").status_code == 404
    with app.app_context():
        actions = [(a.actor, a.action) for a in db.session.scalars(select(AuditEntry).order_by(AuditEntry.id))]
    assert ("ops-admin", "profile.create") in actions and ("ops-admin", "profile.delete") in actions


@pytest.mark.parametrize(("body", "field"), [
    ({"name": "p", "colour": "blue", "size": 3}, "colour"),
    ({"name": "p", "config_template": "hostname {% if %}"}, "config_template"),
    ({"name": "p", "post_template": "{{ x | nosuchfilter }}"}, "post_template"),
    ({"name": "p", "match_pid": "re:("}, "match_pid"),
    ({"name": "p", "is_default": "yes"}, "is_default"),
    ({"name": "p", "image": "missing.bin"}, "image"),
    ({"name": "p/q"}, "name"),
    ({"config_template": "x"}, "name"),
])
def test_profile_validation_names_the_field(api: Call, body: dict[str, Any], field: str) -> None:
    response = api("POST", "/profiles", json=body)
    assert response.status_code == 422
    error = error_of(response)
    assert error["code"] == "validation_error" and field in error["fields"] and field in error["message"]


def test_bad_json_and_unknown_routes_answer_json(api: Call) -> None:
    broken = api("POST", "/profiles", data="{not json", content_type="application/json")
    assert broken.status_code == 400 and error_of(broken)["code"] == "bad_request"
    assert api("POST", "/profiles", json=[1, 2]).status_code == 422
    assert error_of(api("GET", "/nowhere"))["code"] == "not_found"
    assert api("DELETE", "/devices").status_code == 405
    assert api("GET", "/jobs/abc").status_code == 404


def test_second_default_profile_conflicts(api: Call) -> None:
    assert api("POST", "/profiles", json={"name": "a", "is_default": True}).status_code == 201
    response = api("POST", "/profiles", json={"name": "b", "is_default": True})
    assert response.status_code == 409 and "'a'" in error_of(response)["message"]


def provision_devices(app: Flask, count: int) -> None:
    with app.app_context():
        for i in range(count):
            engine.contact(DeviceIdentity(serial=f"FOC{i:02d}", protocol="pnp" if i % 2 else "cns", pid="ISR4331"))
        engine.contact(DeviceIdentity(serial="JAE99", protocol="pnp", pid="C9300"))


def test_device_list_filters_and_pages(api: Call, app: Flask) -> None:
    api("POST", "/profiles", json={"name": "isr", "match_pid": "ISR*", "config_template": "hostname {{ serial }}"})
    provision_devices(app, 7)
    first = api("GET", "/devices?serial=FOC&limit=3", role="read").get_json()
    assert first["total"] == 7 and [d["serial"] for d in first["items"]] == ["FOC00", "FOC01", "FOC02"]
    page = api("GET", f"/devices?serial=FOC&limit=3&cursor={first['next']}", role="read").get_json()
    assert [d["serial"] for d in page["items"]] == ["FOC03", "FOC04", "FOC05"]
    unclaimed = api("GET", "/devices?state=unclaimed").get_json()
    assert [d["serial"] for d in unclaimed["items"]] == ["JAE99"]
    cns = api("GET", "/devices?protocol=cns&state=provisioning").get_json()
    assert cns["total"] == 4 and all(d["profile"] == "isr" for d in cns["items"])
    wrong = api("GET", "/devices?colour=red")
    assert wrong.status_code == 422 and error_of(wrong)["fields"] == ["colour"]
    assert api("GET", "/devices?limit=0").status_code == 422
    assert api("GET", "/devices?serial=FOC_").get_json()["total"] == 0  # '_' is a character, not a wildcard


def test_device_variables_history_and_job_control(api: Call, app: Flask) -> None:
    api("POST", "/profiles", json={"name": "all", "is_default": True, "config_template": "hostname {{ name }}"})
    expected = api("PUT", "/devices/FOC9/variables", json={"variables": {"name": "edge-9"}})
    assert expected.status_code == 201 and expected.get_json()["state"] == "expected"
    assert api("PUT", "/devices/FOC9/variables", json={"vars": {}}).status_code == 422
    assert api("PUT", "/devices/FOC9/variables", json={"variables": {"bad-name": 1}}).status_code == 422
    with app.app_context():
        identify = engine.contact(DeviceIdentity(serial="FOC9", protocol="pnp"))
        config = engine.report("FOC9", identify.correlator, Outcome(True))
    assert config.config_text == "hostname edge-9"

    history = api("GET", "/devices/FOC9/history", role="read").get_json()
    job = history["jobs"][0]
    assert history["device"]["state"] == "provisioning" and job["step"] == "config" and job["pending"] == "config"
    assert [s["step"] for s in job["steps"]][:2] == ["identify", "image"]

    assert api("POST", f"/jobs/{job['id']}/retry").status_code == 409  # still running
    cancelled = api("POST", f"/jobs/{job['id']}/cancel", json={"reason": "wrong site"})
    assert cancelled.status_code == 200 and cancelled.get_json()["state"] == "cancelled"
    assert api("POST", f"/jobs/{job['id']}/cancel").status_code == 409
    with app.app_context():
        assert engine.contact(DeviceIdentity(serial="FOC9", protocol="pnp")).kind is ActionKind.CANCELLED

    retried = api("POST", f"/jobs/{job['id']}/retry")
    assert retried.status_code == 201 and retried.get_json()["state"] == "running"
    with app.app_context():
        assert engine.contact(DeviceIdentity(serial="FOC9", protocol="pnp")).kind is ActionKind.IDENTIFY
    jobs = api("GET", "/jobs?serial=FOC9").get_json()
    assert [j["state"] for j in jobs["items"]] == ["running", "cancelled"]
    assert api("GET", "/jobs?state=bogus").status_code == 422
    assert api("GET", "/jobs/999").status_code == 404
    assert api("GET", "/devices/NOPE").status_code == 404


def test_image_upload_multipart_raw_limits_and_use(api: Call, app_factory: Callable[..., Flask]) -> None:
    data = b"\x7fELF" + bytes(range(256)) * 40
    multipart = api("POST", "/images", data={"file": (io.BytesIO(data), "isr4300.17.09.04a.SPA.bin")},
                    content_type="multipart/form-data")
    assert multipart.status_code == 201, multipart.get_json()
    image = multipart.get_json()
    assert (image["md5"], image["size"], image["version"]) == (hashlib.md5(data).hexdigest(), len(data), "17.09.04a")
    raw = api("POST", "/images?name=c9k.bin&version=17.12.1", data=data, content_type="application/octet-stream")
    assert raw.status_code == 201 and raw.get_json()["version"] == "17.12.1"
    assert api("POST", "/images?name=c9k.bin", data=data).status_code == 409
    assert api("POST", "/images?name=../etc", data=data).status_code == 422
    assert api("POST", "/images?name=e.bin", data=b"").status_code == 422
    assert [i["name"] for i in api("GET", "/images").get_json()["items"]] == ["c9k.bin", "isr4300.17.09.04a.SPA.bin"]

    assert api("POST", "/profiles", json={"name": "c9k", "image": "c9k.bin"}).status_code == 201
    in_use = api("DELETE", "/images/c9k.bin")
    assert in_use.status_code == 409 and "c9k" in error_of(in_use)["message"]
    assert api("DELETE", "/images/isr4300.17.09.04a.SPA.bin").status_code == 204


def test_image_size_limit(app_factory: Callable[..., Flask]) -> None:
    app = app_factory(PNP_API_IMAGE_MAX_BYTES=1000)
    with app.app_context():
        admin = issue_token("ops", "admin")
    client = app.test_client()
    headers = {"Authorization": f"Bearer {admin}"}
    too_big = client.post("/api/v1/images?name=big.bin", data=b"x" * 5000, headers=headers)
    assert too_big.status_code == 413 and too_big.get_json()["error"]["code"] == "payload_too_large"
    multipart = client.post("/api/v1/images", headers=headers, content_type="multipart/form-data",
                            data={"file": (io.BytesIO(b"y" * 5000), "big.bin")})
    assert multipart.status_code == 413
    assert client.get("/api/v1/images", headers=headers).get_json()["total"] == 0


def test_bootstrap_rendering(api: Call, app: Flask) -> None:
    api("POST", "/profiles", json={
        "name": "cns-branch", "match_serials": ["FOC5"],
        "bootstrap_template": "hostname {{ name }}\ncns config initial {{ gateway }} {{ http_port }}\n"})
    api("PUT", "/devices/FOC5/variables", json={"variables": {"name": "branch-5"}})
    rendered = api("POST", "/bootstrap", role="read", json={"serial": "FOC5", "protocol": "cns"})
    assert rendered.status_code == 200, rendered.get_json()
    http_port = app.extensions["pnp_gateway"].settings.http_port
    assert rendered.get_json()["config"] == f"hostname branch-5\ncns config initial 127.0.0.1 {http_port}\n"
    missing_var = api("POST", "/bootstrap", json={"profile": "cns-branch"})
    assert missing_var.status_code == 422 and "name" in error_of(missing_var)["message"]
    assert api("POST", "/bootstrap", json={"serial": "UNKNOWN"}).status_code == 404
    assert api("POST", "/bootstrap", json={"serial": "FOC5", "protocol": "xmpp"}).status_code == 422


def test_openapi_lists_every_route(client: FlaskClient, app: Flask) -> None:
    doc = client.get("/api/v1/openapi.json").get_json()
    assert doc["openapi"].startswith("3.")
    documented = {(path, method.upper()) for path, ops in doc["paths"].items() for method in ops
                  if method != "parameters"}
    routes = set()
    for rule in app.url_map.iter_rules():
        if rule.endpoint.startswith("api."):
            path = rule.rule.removeprefix("/api/v1").replace("<int:job_id>", "{job_id}")
            path = path.replace("<name>", "{name}").replace("<serial>", "{serial}")
            routes |= {(path, m) for m in rule.methods or () if m not in ("HEAD", "OPTIONS")}
    assert routes == documented


def test_claim_an_unclaimed_device(api: Call, app: Flask) -> None:
    api("POST", "/profiles", json={"name": "edge", "config_template": "hostname {{ serial }}-edge"})
    with app.app_context():
        assert engine.contact(DeviceIdentity(serial="JAE7", protocol="pnp", pid="C9300")).kind is ActionKind.UNCLAIMED
    assert [d["serial"] for d in api("GET", "/devices?state=unclaimed", role="read").get_json()["items"]] == ["JAE7"]

    assert api("POST", "/devices/JAE7/claim", role="read", json={"profile": "edge"}).status_code == 403
    missing = api("POST", "/devices/JAE7/claim", json={"profile": "nope"})
    assert missing.status_code == 422 and error_of(missing)["fields"] == ["profile"]
    assert api("POST", "/devices/JAE7/claim", json={}).status_code == 422
    assert api("POST", "/devices/NOPE/claim", json={"profile": "edge"}).status_code == 404

    claimed = api("POST", "/devices/JAE7/claim", json={"profile": "edge"})
    assert claimed.status_code == 200, claimed.get_json()
    assert (claimed.get_json()["state"], claimed.get_json()["profile"]) == ("claimed", "edge")
    assert api("GET", "/devices?state=unclaimed").get_json()["total"] == 0
    with app.app_context():
        identify = engine.contact(DeviceIdentity(serial="JAE7", protocol="pnp", pid="C9300"))
        assert engine.report("JAE7", identify.correlator, Outcome(True)).config_text == "hostname JAE7-edge"
        audit = db.session.scalar(select(AuditEntry).where(AuditEntry.action == "device.claim"))
        assert audit is not None and (audit.actor, audit.target) == ("ops-admin", "JAE7")
        assert audit.detail == {"profile": "edge", "previous_state": "unclaimed"}

    running = api("POST", "/devices/JAE7/claim", json={"profile": "edge"})
    assert running.status_code == 409 and "cancel" in error_of(running)["message"]
    history = api("GET", "/devices/JAE7/history").get_json()
    assert [j["state"] for j in history["jobs"]] == ["running"] and history["device"]["state"] == "provisioning"


def test_inputs_found_by_the_property_run_are_refused_not_crashed(api: Call) -> None:
    huge = api("GET", "/jobs?offset=168527037115317682176")
    assert huge.status_code == 422 and error_of(huge)["fields"] == ["limit", "offset"]
    unnamed = (b'--XX\r\nContent-Disposition: form-data\r\n\r\nvalue\r\n'
               b'--XX\r\nContent-Disposition: form-data; name="file"; filename="a.bin"\r\n\r\nabc\r\n--XX--\r\n')
    upload = api("POST", "/images", data=unnamed, content_type="multipart/form-data; boundary=XX")
    assert upload.status_code == 422 and error_of(upload)["fields"] == ["(unnamed part)"]
    assert api("GET", "/images").get_json()["total"] == 0
    assert api("PUT", "/devices/FOC1/variables", json={"variables": {"façade": 1}}).status_code == 422

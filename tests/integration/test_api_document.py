"""The served OpenAPI document and the server agree, case by case: what the document declares valid the server takes,
what the server refuses the document refuses too, and a refusal no schema can state is one the document lists.

Each request is checked against the document as a generated client would read it (schemathesis' own validators, over
``GET /api/v1/openapi.json``), then sent to the server.
"""

from __future__ import annotations

import io
from typing import Any

import pytest
import schemathesis
from flask import Flask
from flask.testing import FlaskClient
from schemathesis.schemas import APIOperation

from pnp_integrated.api.tokens import issue_token
from pnp_integrated.models import db
from pnp_integrated.provisioning import engine
from pnp_integrated.provisioning.types import DeviceIdentity

BAD_VARIABLE_NAMES = ("site-code", "", "código")


@pytest.fixture
def admin(app: Flask) -> dict[str, str]:
    with app.app_context():
        return {"Authorization": f"Bearer {issue_token('ops', 'admin')}"}


@pytest.fixture
def document(app: Flask, client: FlaskClient, admin: dict[str, str]) -> schemathesis.BaseSchema:
    """The served document, with a profile ``edge`` that renders a bootstrap for device FOC1 (known, no job)."""
    created = client.post("/api/v1/profiles", headers=admin, json={
        "name": "edge", "match_serials": ["FOC1"], "bootstrap_template": "cns config initial {{ gateway }}"})
    assert created.status_code == 201, created.get_json()
    with app.app_context():
        engine.contact(DeviceIdentity(serial="JAE1", protocol="pnp", pid="C9300"))  # no profile matches it
        db.session.commit()
    return schemathesis.openapi.from_wsgi("/api/v1/openapi.json", app)


def operation(document: schemathesis.BaseSchema, label: str) -> APIOperation:
    found = document.find_operation_by_label(label)
    assert found is not None, label
    return found


def body_is_valid(document: schemathesis.BaseSchema, label: str, body: Any,
                  media_type: str = "application/json") -> bool:
    alternatives = [b for b in operation(document, label).body if b.media_type == media_type]
    assert alternatives, f"{label} takes no {media_type} body"
    return alternatives[0].is_valid(body)


def query_is_valid(document: schemathesis.BaseSchema, label: str, query: dict[str, str]) -> bool:
    params = {p.name: p for p in operation(document, label).query}
    return all(name in params and params[name].is_valid(value) for name, value in query.items())


def refusal_of(document: schemathesis.BaseSchema, label: str, status: int) -> str:
    """The description of the operation's documented answer with ``status`` (it must have one)."""
    responses = operation(document, label).definition.raw["responses"]
    assert str(status) in responses, f"{label} does not document {status}"
    answer = responses[str(status)]
    if "$ref" in answer:
        answer = document.raw_schema["components"]["responses"][answer["$ref"].rsplit("/", 1)[-1]]
    return str(answer["description"])


# ---- template variable names ----------------------------------------------------------------------------------------

VARIABLE_BODIES = {  # operation -> (path, body carrying the variables)
    "PUT /devices/{serial}/variables": ("/devices/FOC9/variables", lambda v: {"variables": v}),
    "POST /profiles": ("/profiles", lambda v: {"name": "branch", "variables": v}),
    "PATCH /profiles/{name}": ("/profiles/edge", lambda v: {"variables": v}),
    "PUT /profiles/{name}": ("/profiles/edge", lambda v: {"variables": v}),
    "POST /bootstrap": ("/bootstrap", lambda v: {"profile": "edge", "variables": v}),
}


@pytest.mark.parametrize("label", sorted(VARIABLE_BODIES))
@pytest.mark.parametrize("name", BAD_VARIABLE_NAMES)
def test_a_variable_name_the_server_refuses_is_refused_by_the_document(
        document: schemathesis.BaseSchema, client: FlaskClient, admin: dict[str, str], label: str, name: str) -> None:
    path, body = VARIABLE_BODIES[label]
    method = label.split()[0]
    assert not body_is_valid(document, label, body({name: "x"}))
    answer = client.open(f"/api/v1{path}", method=method, headers=admin, json=body({name: "x"}))
    assert answer.status_code == 422 and answer.get_json()["error"]["fields"] == ["variables"]


@pytest.mark.parametrize("label", sorted(VARIABLE_BODIES))
def test_a_variable_name_the_document_allows_is_taken(
        document: schemathesis.BaseSchema, client: FlaskClient, admin: dict[str, str], label: str) -> None:
    path, body = VARIABLE_BODIES[label]
    variables = {"site_code": "x", "_vlan2": 20}
    assert body_is_valid(document, label, body(variables))
    answer = client.open(f"/api/v1{path}", method=label.split()[0], headers=admin, json=body(variables))
    assert answer.status_code in (200, 201), answer.get_json()


# ---- bootstrap: a profile or a serial, not empty -------------------------------------------------------------------


@pytest.mark.parametrize("body", [{"profile": ""}, {"serial": ""}, {"profile": "", "serial": ""}, {"pid": "ISR4331"}])
def test_a_bootstrap_without_a_profile_or_serial_is_refused_by_both(
        document: schemathesis.BaseSchema, client: FlaskClient, admin: dict[str, str], body: dict[str, str]) -> None:
    assert not body_is_valid(document, "POST /bootstrap", body)
    assert client.post("/api/v1/bootstrap", headers=admin, json=body).status_code == 422


@pytest.mark.parametrize("body", [{"profile": "", "serial": "FOC1"}, {"profile": "edge", "serial": ""}])
def test_an_empty_profile_or_serial_beside_the_other_is_taken(
        document: schemathesis.BaseSchema, client: FlaskClient, admin: dict[str, str], body: dict[str, str]) -> None:
    assert body_is_valid(document, "POST /bootstrap", body)
    rendered = client.post("/api/v1/bootstrap", headers=admin, json=body)
    assert rendered.status_code == 200 and rendered.get_json()["profile"] == "edge"
    assert operation(document, "POST /bootstrap").is_valid_response(rendered)  # serial is null without one


# ---- image uploads --------------------------------------------------------------------------------------------------


def upload(client: FlaskClient, admin: dict[str, str], form: dict[str, Any], query: str = "") -> Any:
    return client.post(f"/api/v1/images{query}", headers=admin, content_type="multipart/form-data", data=form)


@pytest.mark.parametrize("form", [
    {"name": "-starts-with-a-dash.bin"},
    {"name": "has space.bin"},
    {"version": "v" * 101},
    {"notes": "not a field of the upload"},
    {"content": ""},
], ids=["name-dash", "name-space", "version-101", "unknown-field", "empty-file"])
def test_a_multipart_upload_the_server_refuses_is_refused_by_the_document(
        document: schemathesis.BaseSchema, client: FlaskClient, admin: dict[str, str], form: dict[str, str]) -> None:
    fields = dict(form)
    content = fields.pop("content", "image bytes")
    assert not body_is_valid(document, "POST /images", {"file": content, **fields}, "multipart/form-data")
    answer = upload(client, admin, {"file": (io.BytesIO(content.encode()), "ios.bin"), **fields})
    assert answer.status_code == 422, answer.get_json()


def test_a_multipart_upload_the_document_allows_is_taken(
        document: schemathesis.BaseSchema, client: FlaskClient, admin: dict[str, str]) -> None:
    # An empty name falls back to the file part's name; a version of 100 characters is the longest there is.
    fields = {"name": "", "version": "v" * 100}
    assert body_is_valid(document, "POST /images", {"file": "image bytes", **fields}, "multipart/form-data")
    answer = upload(client, admin, {"file": (io.BytesIO(b"image bytes"), "ios-xe.17.9.4.bin"), **fields})
    assert answer.status_code == 201 and answer.get_json()["name"] == "ios-xe.17.9.4.bin"


@pytest.mark.parametrize(("query", "content"), [
    ({"name": "-dash.bin"}, "image bytes"),
    ({"name": "ios.bin", "version": "v" * 101}, "image bytes"),
    ({"name": "ios.bin"}, ""),
], ids=["name-dash", "version-101", "empty-body"])
def test_a_raw_upload_the_server_refuses_is_refused_by_the_document(
        document: schemathesis.BaseSchema, client: FlaskClient, admin: dict[str, str], query: dict[str, str],
        content: str) -> None:
    assert not (query_is_valid(document, "POST /images", query)
                and body_is_valid(document, "POST /images", content, "application/octet-stream"))
    answer = client.post("/api/v1/images", headers=admin, query_string=query, data=content.encode(),
                         content_type="application/octet-stream")
    assert answer.status_code == 422, answer.get_json()


def test_a_raw_upload_the_document_allows_is_taken(
        document: schemathesis.BaseSchema, client: FlaskClient, admin: dict[str, str]) -> None:
    query = {"name": "c9300-universalk9.17.09.04a.SPA.bin", "version": "v" * 100}
    assert query_is_valid(document, "POST /images", query)
    assert body_is_valid(document, "POST /images", "image bytes", "application/octet-stream")
    answer = client.post("/api/v1/images", headers=admin, query_string=query, data=b"image bytes",
                         content_type="application/octet-stream")
    assert answer.status_code == 201, answer.get_json()


# ---- refusals no schema can state: listed in the operation's 422 ----------------------------------------------------


def test_a_profile_image_must_name_a_stored_image(
        document: schemathesis.BaseSchema, client: FlaskClient, admin: dict[str, str]) -> None:
    body = {"name": "core", "image": "missing.bin"}
    assert body_is_valid(document, "POST /profiles", body)
    answer = client.post("/api/v1/profiles", headers=admin, json=body)
    assert answer.status_code == 422 and answer.get_json()["error"]["fields"] == ["image"]
    assert "'image' names no stored image" in refusal_of(document, "POST /profiles", 422)
    # A name no stored image can have is refused by the document itself.
    assert not body_is_valid(document, "POST /profiles", {"name": "core", "image": "not an image name"})


def test_a_claim_must_name_a_profile(document: schemathesis.BaseSchema, client: FlaskClient,
                                     admin: dict[str, str]) -> None:
    assert body_is_valid(document, "POST /devices/{serial}/claim", {"profile": "nope"})
    answer = client.post("/api/v1/devices/JAE1/claim", headers=admin, json={"profile": "nope"})
    assert answer.status_code == 422 and answer.get_json()["error"]["fields"] == ["profile"]
    assert "'profile' names no profile" in refusal_of(document, "POST /devices/{serial}/claim", 422)


def test_a_reprovision_needs_a_matching_profile(document: schemathesis.BaseSchema, client: FlaskClient,
                                                admin: dict[str, str]) -> None:
    assert client.post("/api/v1/devices/JAE1/reprovision", headers=admin).status_code == 422
    assert "no profile matches" in refusal_of(document, "POST /devices/{serial}/reprovision", 422)


def test_upload_query_parameters_go_with_a_raw_body_only(
        document: schemathesis.BaseSchema, client: FlaskClient, admin: dict[str, str]) -> None:
    described = refusal_of(document, "POST /images", 422)
    assert query_is_valid(document, "POST /images", {"name": "ios.bin"})
    with_query = upload(client, admin, {"file": (io.BytesIO(b"image bytes"), "ios.bin")}, "?name=ios.bin")
    assert with_query.status_code == 422 and "multipart body with any query parameter" in described
    assert body_is_valid(document, "POST /images", "image bytes", "application/octet-stream")
    unnamed = client.post("/api/v1/images", headers=admin, data=b"image bytes", content_type="application/octet-stream")
    assert unnamed.status_code == 422 and "raw body without ?name=" in described


def test_a_json_body_over_the_node_limit_is_a_documented_413(
        app: Flask, document: schemathesis.BaseSchema, client: FlaskClient, admin: dict[str, str]) -> None:
    # Within every length the schema states, yet over the byte limit: each 'é' is six bytes as a JSON escape.
    body = {"name": "huge", "config_template": "é" * (app.config["MAX_CONTENT_LENGTH"] // 6 + 1)}
    assert body_is_valid(document, "POST /profiles", body)
    answer = client.post("/api/v1/profiles", headers=admin, json=body)
    assert answer.status_code == 413
    assert "limit" in refusal_of(document, "POST /profiles", 413)
    assert operation(document, "POST /profiles").is_valid_response(answer)

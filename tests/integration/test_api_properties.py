"""Property-based run over the OpenAPI document: whatever a client sends, the API never answers 500, and every
answer is one the document lists for that operation, with the documented body. What the document declares valid is
taken (never a 422 or 400), except for the refusals each operation's 422 answer names; what it declares invalid is
refused."""

from __future__ import annotations

import io
from typing import Any

import pytest
import schemathesis
from flask import Flask
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import CheckContext, CheckFunction, not_a_server_error
from schemathesis.core.transport import Response
from schemathesis.schemas import APIOperation
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    positive_data_acceptance,
    response_schema_conformance,
    status_code_conformance,
)

from pnp_integrated.api.contract import document
from pnp_integrated.api.tokens import issue_token
from pnp_integrated.models import db
from pnp_integrated.provisioning import engine
from pnp_integrated.provisioning.types import DeviceIdentity, Outcome

MAX_EXAMPLES = 20  # per operation and mode: the whole run stays around a minute
# What seed() stores, by path parameter: valid requests name these half the time, so that they reach an existing
# profile, device, job or image (a random name only ever finds a 404).
SEEDED = {"name": ["branch", "spare", "ios.17.9.4.bin"], "serial": ["FOC1", "LOST1", "FOC2"], "job_id": [1, 2]}


def seed(app: Flask) -> str:
    """A little of everything (an image, profiles, devices in several states, jobs); returns an admin token."""
    client = app.test_client()
    with app.app_context():
        token = issue_token("fuzzer", "admin")
    headers = {"Authorization": f"Bearer {token}"}
    assert client.post("/api/v1/images", headers=headers, content_type="multipart/form-data",
                       data={"file": (io.BytesIO(b"image" * 100), "ios.17.9.4.bin")}).status_code == 201
    for body in ({"name": "branch", "image": "ios.17.9.4.bin", "match_pid": "ISR*",
                  "config_template": "hostname {{ serial }}"},
                 {"name": "spare", "bootstrap_template": "cns config initial {{ gateway }}"}):
        assert client.post("/api/v1/profiles", headers=headers, json=body).status_code == 201
    with app.app_context():
        engine.contact(DeviceIdentity(serial="FOC1", protocol="pnp", pid="ISR4331"))
        engine.contact(DeviceIdentity(serial="LOST1", protocol="cns", pid="C9300"))
        first = engine.contact(DeviceIdentity(serial="FOC2", protocol="pnp", pid="ISR4451"))
        engine.report("FOC2", first.correlator, Outcome(False, detail="boom"))
        db.session.commit()
    return token


# Operations are listed from the document itself, so a route added to it is fuzzed without touching this file.
OPERATIONS = [op.ok() for op in schemathesis.openapi.from_dict(document()).get_all_operations()]
# Negative data needs something to get wrong: a parameter or a body.
CASES = sorted((op.label, mode) for op in OPERATIONS for mode in GenerationMode
               if mode is GenerationMode.POSITIVE or op.path_parameters or op.query or op.body)
# No 500, only documented statuses, content types and bodies; what breaks the schema is refused.
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
# Image uploads are multipart or raw bytes: every form field is text on the wire, a "number" is a fine version.
TEXT_BODIES = {"POST /images"}

# Schema-valid input the server refuses with 422 all the same, as the operation's 422 answer in the document says:
# rules about what is stored or what compiles, which no JSON Schema can state. By operation, the error.fields such a
# refusal names (an empty set: it names none, being about the device's or profile's state, not a field).
_PROFILE_RULES = {frozenset({name}) for name in ("image", "match_pid", "bootstrap_template", "config_template",
                                                 "post_template")}
DOCUMENTED_REFUSALS: dict[str, set[frozenset[str]]] = {
    "POST /profiles": _PROFILE_RULES, "PUT /profiles/{name}": _PROFILE_RULES, "PATCH /profiles/{name}": _PROFILE_RULES,
    "POST /devices/{serial}/claim": {frozenset({"profile"})},  # no profile of that name
    "POST /devices/{serial}/reprovision": {frozenset()}, "POST /jobs/{job_id}/retry": {frozenset()},  # none matches
    "POST /bootstrap": {frozenset()},  # no bootstrap template, or it fails to render
    "GET /devices": {frozenset({"cursor"})},  # not a cursor this server handed out, or one of another walk
}


def _upload_pairing_refused(case: schemathesis.Case, fields: frozenset[str]) -> bool:
    """POST /images: query parameters belong to the raw body only, and it needs ?name= (the document says so in words:
    OpenAPI parameters are per operation, not per body type)."""
    query = frozenset(case.query or {})
    if case.media_type == "multipart/form-data":
        return bool(query) and fields == query
    return "name" not in query and fields == {"name"}


def _documented_refusal(case: schemathesis.Case, response: Response, body_limit: int) -> bool:
    if response.status_code == 413:
        # The node's limit is on bytes, not on anything a schema counts: a valid body can be too long for it.
        return int(response.request.headers.get("Content-Length") or 0) > body_limit
    if response.status_code != 422:
        return False
    fields = frozenset(response.json().get("error", {}).get("fields") or ())
    if case.operation.label == "POST /images":
        return _upload_pairing_refused(case, fields)
    return fields in DOCUMENTED_REFUSALS.get(case.operation.label, set())


def checks_for(mode: GenerationMode, label: str, body_limit: int) -> list[CheckFunction]:
    """What the answers to valid (POSITIVE) or invalid (NEGATIVE) requests of this operation must show."""

    def valid_data_is_accepted(ctx: CheckContext, response: Response, case: schemathesis.Case) -> bool | None:
        """schemathesis' positive_data_acceptance, but a refusal the operation documents is an answer, not a failure."""
        if _documented_refusal(case, response, body_limit):
            return None
        return positive_data_acceptance(ctx, response, case)

    def invalid_data_is_refused(ctx: CheckContext, response: Response, case: schemathesis.Case) -> bool | None:
        """schemathesis' negative_data_rejection, counting 413 as a refusal (a body over the limit goes unread)."""
        if response.status_code == 413:
            return None
        return negative_data_rejection(ctx, response, case)

    if mode is GenerationMode.POSITIVE:
        return [*CHECKS, valid_data_is_accepted]
    return CHECKS if label in TEXT_BODIES else [*CHECKS, invalid_data_is_refused]


def _toward_seeded(operation: APIOperation,
                   cases: st.SearchStrategy[schemathesis.Case]) -> st.SearchStrategy[schemathesis.Case]:
    """Valid cases whose path parameters, half the time, name what seed() stored."""
    known = {p.name: [v for v in SEEDED.get(p.name, ()) if p.is_valid(v)] for p in operation.path_parameters}
    known = {name: values for name, values in known.items() if values}
    if not known:
        return cases

    def aim(case: schemathesis.Case, values: dict[str, Any] | None) -> schemathesis.Case:
        if values:
            case.path_parameters = {**(case.path_parameters or {}), **values}
        return case

    seeded = st.fixed_dictionaries({name: st.sampled_from(values) for name, values in known.items()})
    return st.builds(aim, cases, st.none() | seeded)


@pytest.mark.parametrize(("label", "mode"), CASES, ids=[f"{label} {mode}" for label, mode in CASES])
def test_no_input_makes_the_api_fail(app: Flask, label: str, mode: GenerationMode) -> None:
    token = seed(app)
    operation = schemathesis.openapi.from_wsgi("/api/v1/openapi.json", app).find_operation_by_label(label)
    assert operation is not None, label
    auth = {"Authorization": f"Bearer {token}"}
    cases = operation.as_strategy(mode, headers=auth)  # the token is never what is wrong
    if mode is GenerationMode.POSITIVE:
        cases = _toward_seeded(operation, cases)
    checks = checks_for(mode, label, app.config["MAX_CONTENT_LENGTH"])

    @given(case=cases)
    @settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    def requests_from_the_document(case: schemathesis.Case) -> None:
        case.call_and_validate(checks=checks)

    requests_from_the_document()

"""Property-based run over the OpenAPI document: whatever a client sends, the API never answers 500, and every
answer is one the document lists for that operation, with the documented body."""

from __future__ import annotations

import io

import pytest
import schemathesis
from flask import Flask
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

from pnp_integrated.api.openapi import SPEC
from pnp_integrated.api.tokens import issue_token
from pnp_integrated.models import db
from pnp_integrated.provisioning import engine
from pnp_integrated.provisioning.types import DeviceIdentity, Outcome

MAX_EXAMPLES = 20  # per operation and mode: the whole run stays around a minute


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
OPERATIONS = [op.ok() for op in schemathesis.openapi.from_dict(SPEC).get_all_operations()]
# Negative data needs something to get wrong: a parameter or a body.
CASES = sorted((op.label, mode) for op in OPERATIONS for mode in GenerationMode
               if mode is GenerationMode.POSITIVE or op.path_parameters or op.query or op.body)
# No 500, only documented statuses, content types and bodies; what breaks the schema is refused.
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
# Image uploads are multipart or raw bytes: every form field is text on the wire, a "number" is a fine version.
TEXT_BODIES = {"POST /images"}


@pytest.mark.parametrize(("label", "mode"), CASES, ids=[f"{label} {mode}" for label, mode in CASES])
def test_no_input_makes_the_api_fail(app: Flask, label: str, mode: GenerationMode) -> None:
    token = seed(app)
    operation = schemathesis.openapi.from_wsgi("/api/v1/openapi.json", app).find_operation_by_label(label)
    assert operation is not None, label
    auth = {"Authorization": f"Bearer {token}"}
    checks = CHECKS if label in TEXT_BODIES else [*CHECKS, negative_data_rejection]

    @given(case=operation.as_strategy(mode, headers=auth))  # the token is never what is wrong
    @settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    def requests_from_the_document(case: schemathesis.Case) -> None:
        case.call_and_validate(checks=checks)

    requests_from_the_document()

"""The OpenAPI document is generated from the views' declarations: every route of the API's blueprint is in it, with
its answers, and the document is a valid OpenAPI 3.1 description (a route added without its schemas fails here)."""

from __future__ import annotations

import re
from typing import Any

import pytest
import schemathesis
from flask import Flask

from pnp_integrated.api import blueprint
from pnp_integrated.api.contract import PREFIX, document

IGNORED_METHODS = {"HEAD", "OPTIONS"}


def blueprint_routes() -> set[tuple[str, str]]:
    """Every (path as the document writes it, method) the blueprint serves."""
    app = Flask("routes", static_folder=None)
    app.register_blueprint(blueprint)
    routes = set()
    for rule in app.url_map.iter_rules():
        path = "/".join("{" + part[1:-1].rsplit(":", 1)[-1] + "}" if part.startswith("<") else part
                        for part in rule.rule.removeprefix(PREFIX).split("/"))
        routes |= {(path, method) for method in rule.methods or () if method not in IGNORED_METHODS}
    return routes


def operations() -> list[tuple[str, str, dict[str, Any]]]:
    return [(path, method.upper(), op) for path, ops in document()["paths"].items() for method, op in ops.items()]


def test_every_route_of_the_blueprint_is_documented() -> None:
    documented = {(path, method) for path, method, _ in operations()}
    assert blueprint_routes() == documented


@pytest.mark.parametrize(("path", "method", "op"), operations(), ids=[f"{m} {p}" for p, m, _ in operations()])
def test_every_operation_says_what_it_answers(path: str, method: str, op: dict[str, Any]) -> None:
    answers = op["responses"]
    assert op["summary"] and any(status.startswith("2") for status in answers)
    assert answers["422"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ErrorAnswer"}
    if op.get("security") != []:  # a token is needed: its refusals are documented
        assert {"401", "403"} <= set(answers)
    if "application/json" in op.get("requestBody", {}).get("content", {}):
        assert {"400", "413", "415"} <= set(answers)
    documented = {p["name"] for p in op.get("parameters", []) if p["in"] == "path"}
    assert documented == set(re.findall(r"{(\w+)}", path))  # every part of the path that varies, and no other


def test_the_document_is_openapi_3_1_with_resolvable_schemas() -> None:
    doc = document()
    assert doc["openapi"] == "3.1.0" and doc["servers"] == [{"url": PREFIX}]
    assert doc["components"]["securitySchemes"] == {"bearer": {"type": "http", "scheme": "bearer"}}
    schema = schemathesis.openapi.from_dict(doc)
    schema.validate()
    labels = {op.ok().label for op in schema.get_all_operations()}
    assert labels == {f"{method} {path}" for path, method, _ in operations()}

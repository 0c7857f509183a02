"""The API's contract: each operation's schemas, read from every request and published as the OpenAPI document.

A view is declared with :func:`operation`: the status and schema of its answer, the errors it can give, and, by its
own parameters, what it reads: ``query`` (the query string) and ``json`` (the body), each annotated with its schema
from :mod:`.schemas`. spectree assembles the OpenAPI document (``GET /api/v1/openapi.json``) from these
declarations and the blueprint's routes, so a route has no other description to keep in step. Its Flask backend is
replaced by :class:`GatewayPlugin`, which keeps the API's wire contract: the body is read within the node's limit
(413), must be declared JSON (415) and parse (400), and a request that breaks its schema gets the API's own 422
(:mod:`.reading`); the model a view returns is its answer, serialised by pydantic.

The document is the API's specification: a request it declares valid is one the server takes, except for the
refusals each operation's 422 answer names (what no schema can say).
"""

from __future__ import annotations

import copy
import functools
import inspect
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from flask import Flask, Response, jsonify
from pydantic import BaseModel
from spectree import Response as Answers
from spectree import SpecTree
from spectree.plugins.flask_plugin import FlaskPlugin

from ..version import __version__
from . import blueprint
from .reading import json_body, read, read_query
from .schemas import ErrorAnswer

View = TypeVar("View", bound=Callable[..., Any])
PREFIX = "/api/v1"
OPERATION = "api_operation"  # the attribute of a view that holds its declaration
ERRORS = {
    400: "the body is not valid JSON",
    401: "no or invalid token",
    403: "a read token on a write",
    404: "not found",
    409: "conflict",
    413: "the body is larger than the node's limit (PNP_HTTP_MAX_BODY_BYTES; an image upload has the image "
         "repository's own)",
    415: "the body is not declared as JSON",
    422: "invalid input (fields named in error.fields)",
}
# A JSON body that is not JSON (400), over the node's size limit (413) or not declared as JSON (415) is refused
# before any field is looked at.
BODY_ERRORS = (400, 413, 415)


@dataclass(frozen=True)
class Operation:
    """What the document says of a view beyond its schemas, and how its body is read."""

    path: type[BaseModel] | None = None  # the path parameters' schemas (the view itself answers 404 to others)
    optional_body: bool = False  # no body at all reads as {}
    extra: dict[str, Any] = field(default_factory=dict)  # merged into the operation's document as is
    reads: frozenset[str] = frozenset()  # which of query and json the view takes as parameters


def operation(ok: int = 200, answer: type[BaseModel] | None = None, *, description: str = "success",
              errors: tuple[int, ...] = (), refused: str = "", also: tuple[int, str] | None = None,
              path: type[BaseModel] | None = None, optional_body: bool = False, public: bool = False,
              query: type[BaseModel] | None = None, body: type[BaseModel] | None = None,
              form: type[BaseModel] | None = None,
              extra: dict[str, Any] | None = None, error_descriptions: dict[int, str] | None = None,
              ) -> Callable[[View], View]:
    """Declare a view: ``ok`` with ``answer`` (``also``: a second success status and its description, same body),
    the ``errors`` it gives besides 401 and 403 (``public``: no token needed, so neither), and ``refused``: the
    422 refusals of schema-valid input. ``query``, ``body`` (JSON) and ``form`` given here are documented only:
    the view reads them itself, when its own checks come first (what a view takes as its ``query`` or ``json``
    parameter is read before it runs)."""

    def declare(view: View) -> View:
        reads = frozenset(inspect.signature(view).parameters) & {"query", "json"}
        has_body = "json" in reads or body is not None or form is not None
        codes: dict[str, Any] = {f"HTTP_{ok}": (answer, description)}
        if also is not None:
            codes[f"HTTP_{also[0]}"] = (answer, also[1])
        statuses = {*errors, *(BODY_ERRORS if has_body else ()), *(() if public else (401, 403))}
        said = {**ERRORS, **(error_descriptions or {})}
        for status in sorted(statuses):
            codes[f"HTTP_{status}"] = (ErrorAnswer, said[status])
        codes["HTTP_422"] = (ErrorAnswer, f"invalid input (fields named in error.fields), or valid input refused: "
                                          f"{refused}" if refused else said[422])
        setattr(view, OPERATION, Operation(path, optional_body, extra or {}, reads))
        checked = spec.validate(resp=Answers(**codes), query=query, json=body, form=form,
                                security={} if public else None)
        return checked(view)  # type: ignore[no-any-return]

    return declare


def _answer(result: Any) -> Any:
    """The Flask response of what a view returned: a model (with a status) is serialised as JSON."""
    model, status = result if isinstance(result, tuple) else (result, 200)
    if isinstance(model, BaseModel):
        # Only what the view set: a page's total, say, comes with the first page only.
        return Response(model.model_dump_json(exclude_unset=True), status=status, mimetype="application/json")
    return result


class GatewayPlugin(FlaskPlugin):
    """spectree's Flask backend, reading requests and answering as the API's contract says (see the module)."""

    def validate(self, func: Callable[..., Any], query: Any, json: Any, form: Any, headers: Any, cookies: Any,
                 resp: Any, before: Any, after: Any, validation_error_status: int, skip_validation: bool,
                 force_resp_serialize: bool, *args: Any, **kwargs: Any) -> Any:
        declared: Operation = getattr(func, OPERATION)
        if "query" in declared.reads:
            kwargs["query"] = read_query(query)
        if "json" in declared.reads:
            kwargs["json"] = read(json, json_body(optional=declared.optional_body))
        return _answer(func(*args, **kwargs))

    def parse_path(self, route: Any, path_parameter_descriptions: Any) -> tuple[str, list[Any]]:
        path, parameters = super().parse_path(route, path_parameter_descriptions)
        declared: Operation | None = getattr(self.get_current_app().view_functions[route.endpoint], OPERATION, None)
        if declared is not None and declared.path is not None:
            schemas = declared.path.model_json_schema()["properties"]
            for parameter in parameters:
                parameter["schema"] = _bare(schemas[parameter["name"]])
                parameter.pop("description", None)
        return path, parameters


def _bare(schema: dict[str, Any]) -> dict[str, Any]:
    """A field's schema without what only a model's property has (its title, a default of none)."""
    out = {k: v for k, v in schema.items() if k != "title" and not (k == "default" and v is None)}
    if out.get("description") == "":
        out.pop("description")
    return out


spec = SpecTree(
    "flask", backend=GatewayPlugin, mode="strict", page_templates={},
    title="pnp-integrated REST API", version=__version__,
    description="Profiles, devices, provisioning jobs and images of the integrated PnP gateway. Authenticate with "
                "`Authorization: Bearer <token>` (`pnpp token create`).",
    servers=[{"url": PREFIX}], security_schemes=[{"name": "bearer", "data": {"type": "http", "scheme": "bearer"}}],
    security={"bearer": []}, validation_error_model=ErrorAnswer,
    naming_strategy=lambda model: model.__name__, nested_naming_strategy=lambda _parent, child: child)


@functools.cache
def document() -> dict[str, Any]:
    """The OpenAPI document, generated once per process from the blueprint's routes and their declarations."""
    app = Flask(__name__, static_folder=None)  # the API's routes alone, whatever app serves them
    app.register_blueprint(blueprint)
    with app.app_context():
        generated = copy.deepcopy(spec.spec)
    paths: dict[str, Any] = {}
    for path, operations in generated["paths"].items():
        for method, described in operations.items():
            declared = _declaration(app, path, method)
            for parameter in described.get("parameters", []):
                parameter["schema"] = _bare(parameter["schema"])
                if not parameter.get("description"):
                    parameter.pop("description", None)
            if declared.optional_body and "requestBody" in described:
                described["requestBody"]["required"] = False
            _merge(described, declared.extra)
            for unused in ("tags", "description"):
                if not described.get(unused):
                    described.pop(unused, None)
        paths[path.removeprefix(PREFIX) or "/"] = operations
    generated["paths"] = paths
    if not generated.get("tags"):
        generated.pop("tags", None)
    _drop_unused_schemas(generated)
    return json.loads(json.dumps(generated))  # plain JSON values (spectree's enums are str subclasses)


def _drop_unused_schemas(generated: dict[str, Any]) -> None:
    """Leave out the components nothing refers to (a query string's model: its fields are the parameters)."""
    schemas = generated["components"]["schemas"]
    while unused := [name for name in schemas if f'"#/components/schemas/{name}"' not in json.dumps(generated)]:
        for name in unused:
            del schemas[name]


def _declaration(app: Flask, path: str, method: str) -> Operation:
    rule = next(r for r in app.url_map.iter_rules() if _documented_path(r.rule) == path
                and method.upper() in (r.methods or ()))
    declared: Operation = getattr(app.view_functions[rule.endpoint], OPERATION)
    return declared


def _documented_path(rule: str) -> str:
    """``/api/v1/jobs/<int:job_id>`` as the document writes it: ``/api/v1/jobs/{job_id}``."""
    parts = []
    for part in rule.split("/"):
        if part.startswith("<") and part.endswith(">"):
            part = "{" + part[1:-1].rsplit(":", 1)[-1] + "}"
        parts.append(part)
    return "/".join(parts)


def _merge(target: dict[str, Any], extra: dict[str, Any]) -> None:
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(target.get(key), dict):
            _merge(target[key], value)
        else:
            target[key] = value


@blueprint.get("/openapi.json")
@operation(description="OpenAPI 3 document", public=True)
def openapi() -> Response:
    """This document"""
    return jsonify(document())

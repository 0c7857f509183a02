"""Reading a request into its schema: a JSON body or a query string, or the 422 that names what is wrong.

A refusal names one problem, in the order a client fixes them: the names the schema does not know (all of them),
then the ones it needs and did not get, then the first field, in the request's order, whose value breaks its
schema: its type, its length, or the rule its :class:`~.schemas.Refusal` states.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Literal, TypeVar

from flask import request
from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from ..bodies import limited_body
from .errors import ApiError, invalid
from .schemas import Refusal

Model = TypeVar("Model", bound=BaseModel)
Where = Literal["body", "query"]

# A value of the wrong JSON type, in the words a refusal uses.
_KINDS = {"string_type": "a string", "bool_type": "true or false", "int_type": "an integer", "int_parsing":
          "an integer", "float_type": "a number", "float_parsing": "a number", "list_type": "a list",
          "dict_type": "an object", "model_type": "an object", "model_attributes_type": "an object",
          "literal_error": "one of its values", "none_required": "absent"}
_LENGTHS = ("string_too_long", "too_long")


def json_body(data: bytes | None = None, optional: bool = False) -> dict[str, Any]:
    """The request's JSON object; ``data``: the body, when the caller has read it; ``optional``: no body is ``{}``.

    415 when the body is not declared as JSON, 400 when it is not JSON, 413 past the node's limit, 422 when it is
    not an object.
    """
    if optional:
        data = limited_body() if data is None else data
        if not data:
            return {}
    if not request.is_json:
        raise ApiError(415, "unsupported_media_type", "send a JSON body with Content-Type: application/json")
    try:
        # 413 past the limit, chunked or not (a chunked body cut at the limit would otherwise read as broken JSON).
        body = json.loads(limited_body() if data is None else data)
    except ValueError:
        raise ApiError(400, "bad_request", "the body is not valid JSON") from None
    if not isinstance(body, dict):
        raise invalid("the body must be a JSON object")
    return body


def read(model: type[Model], data: Mapping[str, Any], where: Where = "body") -> Model:
    """``data`` (a JSON object, or the query string's first value of each name) as ``model``; or a 422."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise refusal(model, data, exc.errors(include_url=False), where) from None


def read_query(model: type[Model]) -> Model:
    return read(model, request.args.to_dict(), "query")


def refusal(model: type[BaseModel], data: Mapping[str, Any], errors: list[ErrorDetails], where: Where) -> ApiError:
    """The 422 for ``errors``: the first problem a client should fix, by name."""
    top = [e for e in errors if len(e["loc"]) == 1]
    noun = "field(s)" if where == "body" else "query parameter(s)"
    unknown = sorted(str(e["loc"][0]) for e in top if e["type"] == "extra_forbidden")
    if unknown:
        return invalid(f"unknown {noun}: {', '.join(unknown)}", fields=unknown)
    missing = sorted(str(e["loc"][0]) for e in top if e["type"] == "missing")
    if missing:
        return invalid(f"missing {noun}: {', '.join(missing)}", fields=missing)
    order = {name: i for i, name in enumerate(data)}
    first = min(errors, key=lambda e: order.get(str(e["loc"][0]), len(order)) if e["loc"] else -1)
    if not first["loc"]:  # about the whole object (a rule between its fields)
        return invalid(first["msg"])
    name = str(first["loc"][0])
    inner = _refusal_at(model, first["loc"])
    if inner is not None:  # a rule of a nested object's field (an enrolment's settings): its words, as they stand
        return invalid(inner.message, fields=list(inner.fields) or [name])
    return invalid(_message(model, name, data.get(name), first, where), fields=_fields(model, name))


def _refusal_at(model: type[BaseModel], loc: tuple[int | str, ...]) -> Refusal | None:
    """The :class:`Refusal` of the field a nested error names (``settings.gateway_role``), if it states one."""
    for depth, part in enumerate(loc[:-1]):
        info = model.model_fields.get(str(part))
        inner = info.annotation if info is not None else None
        if not (isinstance(inner, type) and issubclass(inner, BaseModel)):
            return None
        model = inner
        if depth == len(loc) - 2:
            return _refusal_of(model, str(loc[-1]))
    return None


def _refusal_of(model: type[BaseModel], name: str) -> Refusal | None:
    info = model.model_fields.get(name)
    found = [m for m in info.metadata if isinstance(m, Refusal)] if info is not None else []
    return found[0] if found else None


def _fields(model: type[BaseModel], name: str) -> list[str]:
    refusal = _refusal_of(model, name)
    return list(refusal.fields) if refusal is not None and refusal.fields else [name]


def _message(model: type[BaseModel], name: str, value: Any, error: ErrorDetails, where: Where) -> str:
    # The field's own value failed (not an entry, key or member of it): its type or its length is what is wrong.
    whole = error["input"] is value
    label = f"field {name!r}" if where == "body" else name
    refusal = _refusal_of(model, name)
    if refusal is not None and (where == "query" or not whole or error["type"] not in (*_KINDS, *_LENGTHS)):
        return f"{label}: {refusal.message}" if where == "body" else refusal.message
    ctx = error.get("ctx") or {}
    if whole and error["type"] in _KINDS:
        return f"{label} must be {_KINDS[error['type']]}"
    if whole and (error["type"] == "string_too_long" or (error["type"] == "too_long" and isinstance(value, str))):
        return f"{label} is longer than {ctx.get('max_length')} characters"
    if whole and error["type"] == "too_long":
        return f"{label}: at most {ctx.get('max_length')} entries"
    text = str(ctx["error"]) if error["type"] == "value_error" and "error" in ctx else error["msg"]
    within = ".".join(str(part) for part in error["loc"][1:] if not _is_union_tag(part))
    if within and not whole:
        text = f"{within}: {text}"
    return f"{label}: {text}"


def _is_union_tag(part: Any) -> bool:
    """A location part that names a member of a union (``str``, ``none``, ``literal['a']``), not a key."""
    return isinstance(part, str) and (part in ("str", "none", "int", "bool", "float", "dict", "list")
                                      or "[" in part)

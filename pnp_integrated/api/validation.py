"""Validation of API input: JSON bodies and query strings, unknown names rejected by name."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from flask import request

from ..bodies import limited_body
from .errors import ApiError, invalid

MAX_TEXT = 256 * 1024  # a template larger than this is a mistake, not a configuration
VARIABLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")  # what the OpenAPI document promises, ASCII only


@dataclass(frozen=True)
class Field:
    """An accepted field: its JSON type(s), a length limit for strings, and an extra check returning a problem."""

    kinds: tuple[type, ...]
    max_length: int | None = None
    check: Callable[[Any], str | None] | None = None
    nullable: bool = False


def _type_name(kinds: tuple[type, ...]) -> str:
    names = {str: "a string", bool: "true or false", int: "an integer", list: "a list", dict: "an object"}
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def json_body(data: bytes | None = None) -> dict[str, Any]:
    """The request's JSON object (422 when it is not one); ``data``: the body, when the caller has read it."""
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


def check_fields(data: Mapping[str, Any], spec: Mapping[str, Field], required: Iterable[str] = ()) -> dict[str, Any]:
    """Validate ``data`` against ``spec``; raise a 422 naming unknown, missing and malformed fields."""
    unknown = sorted(set(data) - set(spec))
    if unknown:
        raise invalid(f"unknown field(s): {', '.join(unknown)}", fields=unknown)
    missing = sorted(name for name in required if name not in data)
    if missing:
        raise invalid(f"missing field(s): {', '.join(missing)}", fields=missing)
    for name, value in data.items():
        field = spec[name]
        if value is None and field.nullable:
            continue
        # JSON true is a Python int too: an integer field must not accept it.
        if not isinstance(value, field.kinds) or (isinstance(value, bool) and bool not in field.kinds):
            raise invalid(f"field {name!r} must be {_type_name(field.kinds)}", fields=[name])
        if field.max_length is not None and isinstance(value, str) and len(value) > field.max_length:
            raise invalid(f"field {name!r} is longer than {field.max_length} characters", fields=[name])
        problem = field.check(value) if field.check else None
        if problem:
            raise invalid(f"field {name!r}: {problem}", fields=[name])
    return dict(data)


def query_args(allowed: Iterable[str]) -> dict[str, str]:
    """The query string, refusing names outside ``allowed``."""
    args = request.args.to_dict()
    unknown = sorted(set(args) - set(allowed))
    if unknown:
        raise invalid(f"unknown query parameter(s): {', '.join(unknown)}", fields=unknown)
    return args


MAX_OFFSET = 2**31 - 1  # beyond any table here, and within every database's integer
MAX_IMAGE_VERSION = 100  # the image repository's limit on a version (store_image), stated for the OpenAPI document


def page(args: Mapping[str, str], default_limit: int = 50, max_limit: int = 500) -> tuple[int, int]:
    """(limit, offset) from the query string."""
    try:
        limit = int(args.get("limit", default_limit))
        offset = int(args.get("offset", 0))
    except ValueError as exc:
        raise invalid("limit and offset must be integers", fields=["limit", "offset"]) from exc
    if not 1 <= limit <= max_limit or not 0 <= offset <= MAX_OFFSET:
        raise invalid(f"limit must be 1 to {max_limit} and offset 0 to {MAX_OFFSET}", fields=["limit", "offset"])
    return limit, offset


def string_list(max_items: int, max_length: int) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        if len(value) > max_items:
            return f"at most {max_items} entries"
        if not all(isinstance(v, str) and 0 < len(v) <= max_length for v in value):
            return f"every entry must be a non-empty string of at most {max_length} characters"
        return None

    return check


def string_map(value: Any) -> str | None:
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        return "keys and values must be strings"
    return None


def variable_map(value: Any) -> str | None:
    if len(value) > 1000:
        return "at most 1000 variables"
    for key in value:
        if not VARIABLE_NAME.fullmatch(key):
            return f"variable name {key!r} is not a valid template name (letters, digits, '_')"
    return None

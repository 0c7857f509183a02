"""``GET /api/v1/openapi.json``: the API described in OpenAPI 3.1 (written by hand, checked against the routes).

The document is the API's specification: a request it declares valid is one the server takes, so a generated client
never meets a 422 it could not have predicted. Its schemas are JSON Schema 2020-12 (OpenAPI 3.1), because 3.0 has no
way to say which names a template variable may have (``propertyNames``). What no schema can say (a stored image or
profile that must exist, a template or regular expression that must compile) is a refusal listed in the operation's
422 answer.
"""

from __future__ import annotations

from typing import Any

from flask import Response, jsonify

from ..config import Settings
from ..credentials import LOGIN_PATTERN
from ..provisioning.images import NAME_PATTERN
from ..provisioning.types import DEVICE_STATES, RUNNING, TERMINAL_STATES
from ..version import __version__
from . import blueprint
from .enrolment import MAX_KEYS, MAX_PEM, PAIR_SETTINGS
from .inventory import (
    DEFAULT_LIMIT,
    FILTERS,
    HISTORY_EVENTS,
    MAX_CURSOR,
    MAX_LIMIT,
    ORDERS,
    PROTOCOLS,
    SEARCH_COUNT_LIMIT,
    SORT_KEYS,
    SORTS,
)
from .validation import MAX_IMAGE_VERSION, MAX_OFFSET, MAX_TEXT, VARIABLE_NAME


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"content": {"application/json": {"schema": schema}}}


def _op(summary: str, ok: int = 200, result: dict[str, Any] | None = None, body: dict[str, Any] | None = None,
        errors: tuple[int, ...] = (), params: tuple[str, ...] = (), body_required: bool = True,
        also: tuple[int, str] | None = None, refused: str = "") -> dict[str, Any]:
    """One operation; ``also`` is a second success status (with the same body), e.g. 201 beside 200; ``refused``
    names the 422 refusals of schema-valid input (rules no schema can express)."""
    responses: dict[str, Any] = {str(ok): {"description": "success", **(_json(result) if result else {})}}
    if also is not None:
        responses[str(also[0])] = {"description": also[1], **(_json(result) if result else {})}
    # A JSON body that is not JSON (400), over the node's size limit (413) or not declared as JSON (415) is refused
    # before any field is looked at.
    body_errors = (400, 413, 415) if body is not None else ()
    for status in sorted({401, 403, *errors, *body_errors}):
        responses[str(status)] = {"$ref": f"#/components/responses/E{status}"}
    if refused:
        responses["422"] = {"description": f"invalid input (fields named in error.fields), or valid input refused: "
                                           f"{refused}", **_json(_ref("Error"))}
    op: dict[str, Any] = {"summary": summary, "responses": responses}
    if body is not None:
        op["requestBody"] = {"required": body_required, **_json(body)}
    if params:
        op["parameters"] = [_PARAMS[p] for p in params]
    return op


def _query(name: str, description: str, kind: str = "string", **schema: Any) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "description": description,
            "schema": {"type": kind, **schema}}


def _path(name: str, kind: str = "string", **schema: Any) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": {"type": kind, **schema}}


_PROFILE_NAME = {"maxLength": 255, "pattern": r"^[A-Za-z0-9._-]+( +[A-Za-z0-9._-]+)*$"}
_SERIAL = {"minLength": 1, "maxLength": 255}
# Every stored image has such a name (the repository refuses others), so no other name can refer to one.
_IMAGE_NAME = {"pattern": f"^{NAME_PATTERN.pattern}$"}
_IMAGE_VERSION = {"maxLength": MAX_IMAGE_VERSION}
_PARAMS = {
    "name": _path("name", **_PROFILE_NAME), "serial": _path("serial", **_SERIAL),
    "image": _path("name", **_IMAGE_NAME),
    "job_id": _path("job_id", "integer", minimum=1),
    "device_state": _query("state", "filter by device state", enum=list(DEVICE_STATES)),
    "job_state": _query("state", "filter by job state", enum=[RUNNING, *TERMINAL_STATES]),
    "protocol": _query("protocol", "filter by protocol", enum=list(PROTOCOLS)),
    "serial_prefix": {**_query("serial", "serial number prefix, case-insensitive", maxLength=FILTERS["serial"]),
                      "name": "serial"},
    "search": _query("search", "serial number or hostname prefix, case-insensitive (empty: every device)",
                     maxLength=FILTERS["search"]),
    "profile_filter": _query("profile", "profile name: the devices it is assigned to (empty: devices with none)",
                             maxLength=FILTERS["profile"]),
    "pid": _query("pid", "product ID, exact", maxLength=FILTERS["pid"]),
    "software_version": _query("software_version", "software version the device reported, exact",
                               maxLength=FILTERS["software_version"]),
    "last_seen_after": _query("last_seen_after", "devices last seen at or after this time", format="date-time",
                              maxLength=FILTERS["last_seen_after"]),
    "last_seen_before": _query("last_seen_before", "devices last seen before this time", format="date-time",
                               maxLength=FILTERS["last_seen_before"]),
    "device_sort": _query("sort", "sort key; devices of equal key follow by serial. Default: serial, or with a "
                          "search (search, serial) the match order: the devices whose serial starts with it, by "
                          "serial in lower case, then those whose hostname does, by hostname in lower case. A "
                          "search in a sort reads and sorts all its matches: sort one once it is narrow (its "
                          "first page's total_capped false)", enum=list(SORT_KEYS)),
    "order": _query("order", "sort order (default asc)", enum=list(ORDERS)),
    "cursor": _query("cursor", "where the page starts: the previous answer's next, with the same filters (and the "
                     "same sort and order, or none)", pattern="^[A-Za-z0-9_-]+$", maxLength=MAX_CURSOR),
    "device_limit": _query("limit", f"page size (default {DEFAULT_LIMIT})", "integer", minimum=1,
                           maximum=MAX_LIMIT),
    "serial_exact": {**_query("serial", "device serial number"), "name": "serial"},
    "limit": _query("limit", "page size (default 50)", "integer", minimum=1, maximum=500),
    "offset": _query("offset", "rows to skip", "integer", minimum=0, maximum=MAX_OFFSET),
    "image_name": _query("name", "image name: required with a raw body, refused with a multipart one", **_IMAGE_NAME),
    "image_version": _query("version", "software version (raw body only; guessed from the name if absent)",
                            **_IMAGE_VERSION),
}


def _page(item: str) -> dict[str, Any]:
    return {"type": "object", "properties": {"items": {"type": "array", "items": _ref(item)},
                                             "total": {"type": "integer"}, "limit": {"type": "integer"},
                                             "offset": {"type": "integer"}}}


_STR, _BOOL, _INT = {"type": "string"}, {"type": "boolean"}, {"type": "integer"}
_NULL_STR, _NULL_INT = {"type": ["string", "null"]}, {"type": ["integer", "null"]}
_OBJ = {"type": "object", "additionalProperties": True}
# Template variables: names a template can use, at most 1000 of them (``propertyNames`` needs OpenAPI 3.1).
_VARIABLES = {"type": "object", "additionalProperties": True, "maxProperties": 1000,
              "propertyNames": {"pattern": f"^{VARIABLE_NAME.pattern}$"}}
_TEXT = {"type": "string", "maxLength": MAX_TEXT, "description": "Jinja2 template (sandboxed)"}
_PROFILE_IN = {
    "type": "object", "additionalProperties": False,
    "properties": {
        "name": {"type": "string", **_PROFILE_NAME, "description": "letters, digits, '.', '_', '-' and inner spaces"},
        "match_serials": {"type": "array", "maxItems": 10000,
                          "items": {"type": "string", "minLength": 1, "maxLength": 255}},
        "match_pid": {"type": "string", "maxLength": 255,
                      "description": "shell pattern (ISR43*) or 're:' + regular expression"},
        "is_default": _BOOL, "bootstrap_template": _TEXT, "config_template": _TEXT, "post_template": _TEXT,
        "image": {"type": ["string", "null"], "maxLength": 255, **_IMAGE_NAME,
                  "description": "name of a stored image (422 when there is none of that name)"},
        "reload_after_install": _BOOL,
        "apply_to": {"type": "string", "enum": ["running", "startup"]}, "variables": _VARIABLES,
        "credentials": {"type": "object", "additionalProperties": _STR, "writeOnly": True},
    },
}
_PROFILE_CREATE = {**_PROFILE_IN, "required": ["name"]}
# What the schema cannot say about a profile: the server checks these against the repository and the template engine.
_PROFILE_REFUSED = ("'image' names no stored image; a template ('bootstrap_template', 'config_template', "
                    "'post_template') does not compile or fails with the profile's variables; 'match_pid' is "
                    "'re:' and a regular expression that does not compile")

# The enrolment of a gateway pair's secondary (api/enrolment.py): admin tokens only, HTTPS only.
_ENROLMENT_403 = {"description": "a read token, or the request came over plain HTTP (error.code https_required: "
                                 "an enrolment travels only over HTTPS)", **_json(_ref("Error"))}
_ENROLMENT_409 = ("this gateway cannot be enrolled or leave now (the error says why): it has no configuration file "
                  "(PNP_CONFIG), is not run by `pnpp run`, is integrated, is in another pair (or is not a secondary, "
                  "to leave), or its environment sets a pair setting")
_PEM = {"type": "string", "maxLength": MAX_PEM, "description": "PEM certificate"}
_PAIR_SETTING_TYPES = {str: {"type": "string", "maxLength": 1024}, bool: _BOOL, int: _INT, float: {"type": "number"}}


def _pair_setting(name: str) -> dict[str, Any]:
    default = getattr(Settings(), name)
    kind = next(k for k in (bool, int, float, str) if isinstance(default, k))
    fixed = {"mode": "standalone", "gateway_ha": "pair", "gateway_role": "secondary"}
    if name in fixed:
        return {"type": "string", "enum": [fixed[name]]}
    return dict(_PAIR_SETTING_TYPES[kind])


_ENROLMENT_IN = {
    "type": "object", "required": ["settings", "secrets"], "additionalProperties": False,
    "properties": {
        "settings": {"type": "object", "required": list(PAIR_SETTINGS), "additionalProperties": False,
                     "description": "the pair's settings, as the secondary's configuration file holds them (an "
                                    "empty string: the default)",
                     "properties": {name: _pair_setting(name) for name in PAIR_SETTINGS}},
        "secrets": {"type": "object", "required": ["broker_login", "profile_keys", "prime_trust", "peer_certificate"],
                    "additionalProperties": False, "properties": {
                        "broker_login": {"type": "object", "required": ["login", "passcode"],
                                         "additionalProperties": False, "writeOnly": True, "properties": {
                                             "login": {"type": "string",
                                                       "pattern": f"^{LOGIN_PATTERN.pattern}$"},
                                             "passcode": {"type": "string", "minLength": 1, "maxLength": 1024}}},
                        "profile_keys": {"type": "object", "required": ["keys"], "additionalProperties": False,
                                         "writeOnly": True, "properties": {"keys": {
                                             "type": "array", "minItems": 1, "maxItems": MAX_KEYS, "items": {
                                                 "type": "object", "required": ["id", "key"],
                                                 "additionalProperties": False,
                                                 "properties": {"id": _STR, "key": _STR}}}}},
                        "prime_trust": {"type": "object", "minProperties": 1, "maxProperties": 4,
                                        "description": "Prime server address -> the certificates it presented",
                                        "propertyNames": {"anyOf": [{"format": "ipv4"}, {"format": "ipv6"}]},
                                        "additionalProperties": {"type": "array", "minItems": 1, "maxItems": 10,
                                                                 "items": _PEM}},
                        "peer_certificate": {**_PEM, "description": "the primary's own certificate (PEM)"}}},
    },
}
_ENROLMENT_REFUSED = ("with these settings the gateway would not start (a rule of its configuration, named in the "
                      "message), it cannot reach the pair's database, a certificate is not PEM, a profile key is "
                      "not a Fernet key, or prime_trust lacks a Prime address the settings name")


def _enrolment_op(summary: str, ok: int, result: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    op = _op(summary, ok, result, **kwargs)
    op["responses"]["403"] = _ENROLMENT_403
    if "409" in op["responses"]:
        op["responses"]["409"] = {"description": _ENROLMENT_409, **_json(_ref("Error"))}
    return op


# The device inventory (api/inventory.py).
_CURSOR_REFUSED = ("'cursor' is not one this server handed out, or continues a walk with other filters, another "
                   "sort or another order")
_STEP = {"id": _INT, "step": _STR, "state": _STR, "attempt": _INT, "detail": _STR, "started_at": _STR,
         "ended_at": _NULL_STR}
_JOB = {k: _STR for k in ("device", "protocol", "state", "step", "detail", "created_at", "updated_at")} | {
    "id": _INT, "profile_id": _NULL_INT, "attempt": _INT, "max_attempts": _INT,
    "pending": {**_NULL_STR, "description": "the kind of request the device has to answer"},
    "failed_step": _NULL_STR, "finished_at": _NULL_STR}
_COUNTS = {"type": "object", "additionalProperties": _INT}

SPEC: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {"title": "pnp-integrated REST API", "version": __version__,
             "description": "Profiles, devices, provisioning jobs and images of the integrated PnP gateway. "
                            "Authenticate with `Authorization: Bearer <token>` (`pnpp token create`)."},
    "servers": [{"url": "/api/v1"}],
    "security": [{"bearer": []}],
    "paths": {
        "/profiles": {
            "get": _op("List profiles", result=_page("Profile")),
            "post": _op("Create a profile", 201, _ref("Profile"), _PROFILE_CREATE, (409, 422),
                        refused=_PROFILE_REFUSED),
        },
        "/profiles/{name}": {
            "parameters": [_PARAMS["name"]],
            "get": _op("Get a profile", result=_ref("Profile"), errors=(404,)),
            "put": _op("Replace a profile (missing fields get defaults)", result=_ref("Profile"), body=_PROFILE_IN,
                       errors=(404, 409, 422), refused=_PROFILE_REFUSED),
            "patch": _op("Change some fields of a profile", result=_ref("Profile"), body=_PROFILE_IN,
                         errors=(404, 409, 422), refused=_PROFILE_REFUSED),
            "delete": _op("Delete a profile (not while it provisions devices)", 204, errors=(404, 409)),
        },
        "/devices": {"get": _op(
            "The device inventory: filters, a sort, and pages by cursor (each answer's next)",
            result=_ref("DevicePage"), errors=(422,), refused=_CURSOR_REFUSED,
            params=("device_state", "protocol", "profile_filter", "pid", "software_version", "last_seen_after",
                    "last_seen_before", "search", "serial_prefix", "device_sort", "order", "cursor",
                    "device_limit"))},
        "/devices/counts": {"get": _op("The fleet overview: devices by state and by protocol",
                                       result=_ref("DeviceCounts"))},
        "/devices/{serial}": {"parameters": [_PARAMS["serial"]],
                              "get": _op("Get a device (a device whose serial is 'counts': GET "
                                         "/devices?serial=counts)", result=_ref("Device"), errors=(404,))},
        "/devices/{serial}/history": {
            "parameters": [_PARAMS["serial"]],
            "get": _op(f"A device's jobs with every step, newest first, and the latest {HISTORY_EVENTS} events for "
                       "Prime that name it", errors=(404,), result=_ref("DeviceHistory")),
        },
        "/devices/{serial}/variables": {
            "parameters": [_PARAMS["serial"]],
            "put": _op("Replace a device's template variables (records an expected device if unknown)",
                       result=_ref("Device"), errors=(422,), also=(201, "an expected device was recorded"),
                       body={"type": "object", "required": ["variables"], "additionalProperties": False,
                             "properties": {"variables": _VARIABLES}}),
        },
        "/devices/{serial}/claim": {
            "parameters": [_PARAMS["serial"]],
            "post": _op("Claim a device for a profile: its next contact starts a job with it, before any matching rule",
                        result=_ref("Device"), errors=(404, 409, 422), refused="'profile' names no profile",
                        body={"type": "object", "required": ["profile"], "additionalProperties": False,
                              "properties": {"profile": {"type": "string", "maxLength": 255,
                                                         "description": "name of the profile"}}}),
        },
        "/devices/{serial}/reprovision": {
            "parameters": [_PARAMS["serial"]],
            "post": _op("Provision a device again with a new job", 201, _ref("Job"), errors=(404, 409, 422),
                        refused="no profile matches the device"),
        },
        "/jobs": {"get": _op("List jobs, newest first", result=_page("Job"), errors=(422,),
                             params=("job_state", "serial_exact", "limit", "offset"))},
        "/jobs/{job_id}": {"parameters": [_PARAMS["job_id"]],
                           "get": _op("Get a job with its steps", result=_ref("Job"), errors=(404,))},
        "/jobs/{job_id}/cancel": {
            "parameters": [_PARAMS["job_id"]],
            "post": _op("Cancel an unfinished job", result=_ref("Job"), errors=(404, 409, 422), body_required=False,
                        body={"type": "object", "additionalProperties": False,
                              "properties": {"reason": {"type": "string", "maxLength": 500}}}),
        },
        "/jobs/{job_id}/retry": {
            "parameters": [_PARAMS["job_id"]],
            "post": _op("Start a new job for the device of a failed or cancelled job", 201, _ref("Job"),
                        errors=(404, 409, 422), refused="no profile matches the device any more"),
        },
        "/images": {
            "get": _op("List images", result=_page("Image")),
            "post": {**_op("Upload an image: multipart (file, name, version) or a raw body with ?name=&version=",
                           201, _ref("Image"), errors=(409, 413, 422), params=("image_name", "image_version"),
                           # Parameters are per operation, not per body type: this pairing is said in words.
                           refused="a multipart body with any query parameter; a raw body without ?name="),
                     "requestBody": {"required": True, "content": {
                         "multipart/form-data": {"schema": {
                             "type": "object", "required": ["file"], "additionalProperties": False, "properties": {
                                 "file": {"type": "string", "format": "binary", "minLength": 1},
                                 "name": {"type": "string", "pattern": f"^({NAME_PATTERN.pattern})?$",
                                          "description": "image name; empty or absent: the file part's file name"},
                                 "version": {"type": "string", **_IMAGE_VERSION}}}},
                         "application/octet-stream": {"schema": {"type": "string", "format": "binary",
                                                                 "minLength": 1}}}}},
        },
        "/images/{name}": {
            "parameters": [_PARAMS["image"]],
            "get": _op("Get an image", result=_ref("Image"), errors=(404,)),
            "delete": _op("Delete an image no profile uses", 204, errors=(404, 409)),
        },
        "/bootstrap": {
            "post": _op("Render a device's bootstrap configuration (allowed for read tokens)", errors=(404, 422),
                        result={"type": "object", "properties": {"profile": _STR, "serial": _NULL_STR,
                                                                 "protocol": _STR, "config": _STR}},
                        refused="the profile has no bootstrap template, or it fails to render with these variables",
                        body={"type": "object", "additionalProperties": False,
                              # An empty name is no name: the server needs one of the two non-empty.
                              "anyOf": [{"required": ["profile"], "properties": {"profile": {"minLength": 1}}},
                                        {"required": ["serial"], "properties": {"serial": {"minLength": 1}}}],
                              "properties": {
                                  "serial": {"type": "string", "maxLength": 255},
                                  "pid": {"type": "string", "maxLength": 255},
                                  "profile": {"type": "string", "maxLength": 255},
                                  "protocol": {"type": "string", "enum": ["cns", "pnp"]}, "variables": _VARIABLES}}),
        },
        "/ha/enrolment": {
            "get": _enrolment_op("What this gateway is, and whether it can be enrolled as a pair's secondary now "
                                 "(admin tokens only)", 200, _ref("EnrolmentFacts")),
            "post": _enrolment_op("Become the secondary of a gateway pair: the settings and shared secrets are "
                                  "written (0600) and `pnpp run` restarts the node into the pair; the token is "
                                  "revoked by this use", 202, _ref("EnrolmentAccepted"), body=_ENROLMENT_IN,
                                  errors=(409, 422), refused=_ENROLMENT_REFUSED),
            "delete": _enrolment_op("Leave the pair: the configuration and secrets from before the enrolment come "
                                    "back and the node stops; the token is revoked by this use", 202,
                                    {"type": "object", "properties": {"node": _STR, "left": _BOOL,
                                                                      "stopping": _BOOL, "restored": _BOOL}},
                                    errors=(409,)),
        },
        "/openapi.json": {"get": {"summary": "This document", "security": [],
                                  "responses": {"200": {"description": "OpenAPI 3 document"}}}},
    },
    "components": {
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        "responses": {
            f"E{status}": {"description": text, **_json(_ref("Error"))}
            for status, text in ((400, "the body is not valid JSON"), (401, "no or invalid token"),
                                 (403, "a read token on a write"), (415, "the body is not declared as JSON"),
                                 (404, "not found"), (409, "conflict"),
                                 (413, "the body is larger than the node's limit (PNP_HTTP_MAX_BODY_BYTES; an image "
                                       "upload has the image repository's own)"),
                                 (422, "invalid input (fields named in error.fields)"))
        },
        "schemas": {
            "Error": {"type": "object", "properties": {"error": {"type": "object", "properties": {
                "code": _STR, "message": _STR, "fields": {"type": "array", "items": _STR}}}}},
            "Profile": {"type": "object", "properties": {
                **{k: v for k, v in _PROFILE_IN["properties"].items() if k != "credentials"},
                "id": _INT, "has_credentials": _BOOL, "created_at": _STR, "updated_at": _STR}},
            "Device": {"type": "object", "properties": {
                k: _STR for k in ("serial", "pid", "udi", "hostname", "protocol", "address", "software_version",
                                  "first_seen", "last_seen")} | {
                "id": _INT, "state": {"type": "string", "enum": list(DEVICE_STATES)},
                "profile": {**_NULL_STR, "description": "assigned (claimed) or matched profile"},
                "current_job_id": _NULL_INT, "variables": _OBJ}},
            "Job": {"type": "object", "properties": {
                **_JOB, "steps": {"type": "array", "items": _ref("JobStep")}}},
            "JobStep": {"type": "object", "properties": _STEP},
            "DevicePage": {"type": "object", "required": ["items", "limit", "sort", "order", "next"], "properties": {
                "items": {"type": "array", "items": _ref("Device")}, "limit": _INT,
                "sort": {"type": "string", "enum": list(SORTS)}, "order": {"type": "string", "enum": list(ORDERS)},
                "next": {**_NULL_STR, "description": "cursor of the next page; null on the last"},
                "total": {**_INT, "description": "devices matching the filters (first page only: without cursor); "
                                                  f"a search counts up to {SEARCH_COUNT_LIMIT}"},
                "total_capped": {**_BOOL, "description": f"the search matches more than {SEARCH_COUNT_LIMIT} devices "
                                                         "(first page only)"}}},
            "DeviceCounts": {"type": "object", "required": ["total", "by_state", "by_protocol", "groups"],
                             "properties": {
                "total": _INT,
                "by_state": {**_COUNTS, "required": list(DEVICE_STATES),
                             "properties": {state: _INT for state in DEVICE_STATES}},
                "by_protocol": {**_COUNTS, "required": [*PROTOCOLS, "none"],
                                "properties": {p: _INT for p in PROTOCOLS} | {
                                    "none": {**_INT, "description": "known only through the API, never seen"}}},
                "groups": {"type": "array", "description": "the grouped query's rows: devices by state and protocol",
                           "items": {"type": "object", "properties": {"state": _STR, "protocol": _STR,
                                                                      "count": _INT}}}}},
            "DeviceHistory": {"type": "object", "required": ["device", "jobs", "events", "more_events"],
                              "properties": {
                "device": _ref("Device"),
                "jobs": {"type": "array", "items": _ref("HistoryJob")},
                "events": {"type": "array", "items": _ref("OutboxEvent")},
                "more_events": {**_BOOL, "description": f"the device has more than the {HISTORY_EVENTS} events "
                                                        "listed"}}},
            "HistoryJob": {"type": "object", "properties": {
                **_JOB, "steps": {"type": "array", "items": _ref("HistoryStep")}}},
            "HistoryStep": {"type": "object", "properties": _STEP | {
                "requested_at": {**_NULL_STR, "description": "the step's request went out (null: skipped)"},
                "answered_at": {**_NULL_STR, "description": "the device's answer came (null: none, e.g. skipped, "
                                                            "cancelled or still waiting)"},
                "duration_ms": {**_NULL_INT, "description": "from start to end of the step"},
                "error": {**_NULL_STR, "description": "why the step failed, in the device's words where it gave "
                                                      "them"}}},
            "OutboxEvent": {"type": "object", "properties": {
                "id": _STR, "type": _STR, "created_at": _STR,
                "sent_at": {**_NULL_STR, "description": "Prime's broker took it (null: not yet)"},
                "attempts": _INT, "payload": _OBJ}},
            "EnrolmentFacts": {"type": "object", "properties": {
                **{k: _STR for k in ("node", "version", "mode", "gateway_ha", "gateway_role", "gateway_peer", "vip",
                                     "node_address", "state")},
                "started": {"type": "number", "description": "when the worker that answered started (Unix time)"},
                "ports": {"type": "object", "properties": {"http": _INT, "https": _INT, "cns_port_base": _INT}},
                "enrolment": {"type": "object", "properties": {"possible": _BOOL, "refusal": _STR}}}},
            "EnrolmentAccepted": {"type": "object", "properties": {
                **{k: _STR for k in ("node", "gateway_role", "gateway_peer", "vip", "config_file")},
                "restarting": _BOOL, "at": {"type": "number", "description": "when it was accepted (Unix time)"}}},
            "Image": {"type": "object", "properties": {
                "id": _INT, "name": _STR, "version": _STR, "md5": _STR, "size": _INT, "path": _STR,
                "created_at": _STR}},
        },
    },
}


@blueprint.get("/openapi.json")
def openapi() -> Response:
    return jsonify(SPEC)

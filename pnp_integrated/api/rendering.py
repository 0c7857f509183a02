"""A device's rendered configuration, and a preview of templates not saved yet, rendered for a chosen device.

``GET /api/v1/devices/<serial>/configuration`` renders the templates of the profile the device is (or would be)
provisioned with: its current job's profile, else its assigned or matching profile. A configuration holds what the
templates put in it (passwords, keys), so it is for admin tokens only, like every change.

``POST /api/v1/templates/preview`` renders template texts (a profile being edited) with the variables the device
would have under them: the device's facts, the given profile variables, the device's own variables, as
provisioning renders them. A template that fails is reported by its field, next to the ones that render.
"""

from __future__ import annotations

from typing import Any

from flask import Response, jsonify
from sqlalchemy import select

from ..context import current_settings
from ..models import Device, Profile, ProvisioningJob, db
from ..provisioning.engine import profile_for
from ..provisioning.templates import TemplateProblem, device_variables, render_template
from . import blueprint
from .auth import current_token
from .errors import ApiError, not_found
from .openapi import SPEC
from .validation import MAX_TEXT, VARIABLE_NAME, Field, check_fields, json_body, variable_map

TEMPLATES = {"bootstrap_template": "bootstrap template", "config_template": "configuration template",
             "post_template": "post-PnP template"}


def _device(serial: str) -> Device:
    device = db.session.scalar(select(Device).where(Device.serial == serial))
    if device is None:
        raise not_found(f"device {serial!r}")
    return device


def _gateway_variables(protocol: str) -> dict[str, Any]:
    """What a bootstrap template may name about the gateway (as ``POST /bootstrap`` renders it)."""
    settings = current_settings()
    return {"gateway": settings.vip, "http_port": settings.http_port, "https_port": settings.https_port,
            "cns_port": settings.dispatcher_plain_port, "cns_tls_port": settings.dispatcher_tls_port,
            "protocol": protocol or "pnp"}


def render_for(device: Device, templates: dict[str, str], profile: Profile | None) -> dict[str, Any]:
    """Each non-empty template rendered for ``device`` with ``profile``'s variables: texts and problems by field."""
    rendered: dict[str, str] = {}
    problems: dict[str, str] = {}
    variables = device_variables(profile, device)
    for field, label in TEMPLATES.items():
        source = templates.get(field) or ""
        if not source:
            continue
        extra = _gateway_variables(device.protocol) if field == "bootstrap_template" else {}
        try:
            rendered[field] = render_template(source, {**extra, **variables}, label=label)
        except TemplateProblem as exc:
            problems[field] = str(exc)
    return {"serial": device.serial, "rendered": rendered, "problems": problems}


@blueprint.get("/devices/<serial>/configuration")
def device_configuration(serial: str) -> Response:
    """The device's templates rendered as it receives them (admin tokens only: configurations hold secrets)."""
    if current_token().role != "admin":
        raise ApiError(403, "forbidden", "a device's configuration is shown to admin tokens only")
    device = _device(serial)
    job = db.session.get(ProvisioningJob, device.current_job_id) if device.current_job_id else None
    profile = db.session.get(Profile, job.profile_id) if job is not None and job.profile_id else None
    profile = profile or profile_for(device)
    if profile is None:
        return jsonify({"serial": device.serial, "profile": None, "rendered": {}, "problems": {}})
    answer = render_for(device, {f: getattr(profile, f) or "" for f in TEMPLATES}, profile)
    return jsonify({**answer, "profile": profile.name})


_PREVIEW_SPEC = {
    "serial": Field((str,), 255),
    "templates": Field((dict,), check=lambda value: _templates_problem(value)),
    "variables": Field((dict,), check=variable_map),
}


def _templates_problem(value: dict[str, Any]) -> str | None:
    unknown = sorted(set(value) - set(TEMPLATES))
    if unknown:
        return f"unknown template(s): {', '.join(unknown)} (one of {', '.join(TEMPLATES)})"
    for name, text in value.items():
        if not isinstance(text, str) or len(text) > MAX_TEXT:
            return f"{name} must be a string of at most {MAX_TEXT} characters"
    return None


@blueprint.post("/templates/preview")
def preview_templates() -> Response:
    """Render template texts for a device with the given profile variables; nothing is saved."""
    data = check_fields(json_body(), _PREVIEW_SPEC, required=("serial", "templates"))
    device = _device(data["serial"])
    draft = Profile(variables=data.get("variables") or {})  # never added: only its variables are read
    try:
        return jsonify(render_for(device, data["templates"], draft))
    finally:
        db.session.rollback()


_STR = {"type": "string"}
_TEXTS = {"type": "object", "additionalProperties": False,
          "properties": {name: {"type": "string", "maxLength": MAX_TEXT} for name in TEMPLATES}}
_RENDERED = {"type": "object", "required": ["serial", "rendered", "problems"], "properties": {
    "serial": _STR,
    "rendered": {"type": "object", "description": "each template that rendered, by field",
                 "additionalProperties": _STR},
    "problems": {"type": "object", "description": "why each other template failed, by field",
                 "additionalProperties": _STR}}}


def _errors(*statuses: int) -> dict[str, Any]:
    return {str(status): {"$ref": f"#/components/responses/E{status}"} for status in statuses}


def _success(schema: dict[str, Any]) -> dict[str, Any]:
    return {"200": {"description": "success", "content": {"application/json": {"schema": schema}}}}


SPEC["paths"]["/devices/{serial}/configuration"] = {
    "parameters": [{"name": "serial", "in": "path", "required": True,
                    "schema": {"type": "string", "minLength": 1, "maxLength": 255}}],
    "get": {"summary": "A device's configuration: its profile's templates rendered for it (admin tokens only)",
            "responses": {**_success({**_RENDERED, "properties": {
                **_RENDERED["properties"],
                "profile": {"type": ["string", "null"], "description": "the profile rendered (null: none)"}}}),
                **_errors(401, 403, 404)}},
}
SPEC["paths"]["/templates/preview"] = {"post": {
    "summary": "Render template texts for a device with the given profile variables (nothing is saved)",
    "requestBody": {"required": True, "content": {"application/json": {"schema": {
        "type": "object", "required": ["serial", "templates"], "additionalProperties": False, "properties": {
            "serial": {"type": "string", "maxLength": 255, "description": "the device to render for"},
            "templates": _TEXTS,
            "variables": {"type": "object", "additionalProperties": True, "maxProperties": 1000,
                          "propertyNames": {"pattern": f"^{VARIABLE_NAME.pattern}$"},
                          "description": "the profile's variables (the device's own override them)"}}}}}},
    "responses": {**_success(_RENDERED), **_errors(400, 401, 403, 404, 413, 415, 422)},
}}

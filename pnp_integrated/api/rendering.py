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

from sqlalchemy import select

from ..context import current_settings
from ..models import Device, Profile, ProvisioningJob, db
from ..provisioning.engine import profile_for
from ..provisioning.templates import TemplateProblem, device_variables, render_template
from . import blueprint, schemas
from .auth import current_token
from .contract import operation
from .errors import ApiError, not_found
from .schemas import TEMPLATES


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
@operation(answer=schemas.DeviceConfiguration, errors=(404,), path=schemas.DevicePath)
def device_configuration(serial: str) -> schemas.DeviceConfiguration:
    """A device's configuration: its profile's templates rendered for it (admin tokens only)

    The templates are rendered as the device receives them; a configuration holds secrets, so it is shown to admin
    tokens only.
    """
    if current_token().role != "admin":
        raise ApiError(403, "forbidden", "a device's configuration is shown to admin tokens only")
    device = _device(serial)
    job = db.session.get(ProvisioningJob, device.current_job_id) if device.current_job_id else None
    profile = db.session.get(Profile, job.profile_id) if job is not None and job.profile_id else None
    profile = profile or profile_for(device)
    if profile is None:
        return schemas.DeviceConfiguration(serial=device.serial, profile=None, rendered={}, problems={})
    answer = render_for(device, {f: getattr(profile, f) or "" for f in TEMPLATES}, profile)
    return schemas.DeviceConfiguration(**answer, profile=profile.name)


@blueprint.post("/templates/preview")
@operation(answer=schemas.RenderedTemplates, errors=(404, 422))
def preview_templates(json: schemas.TemplatePreview) -> schemas.RenderedTemplates:
    """Render template texts for a device with the given profile variables (nothing is saved)"""
    device = _device(json.serial)
    draft = Profile(variables=json.variables)  # never added: only its variables are read
    try:
        return schemas.RenderedTemplates(**render_for(device, json.templates.model_dump(), draft))
    finally:
        db.session.rollback()

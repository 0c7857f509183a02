"""``POST /api/v1/bootstrap``: the day-0 configuration that points a device at this gateway.

The operator puts it on the device (TFTP, USB, console); it is rendered from the profile's bootstrap template with
the device's variables and the gateway's own address and ports (``gateway``, ``http_port``, ``https_port``,
``cns_port``, ``cns_tls_port``, ``protocol``).
"""

from __future__ import annotations

from sqlalchemy import select

from ..context import current_settings
from ..models import Device, Profile, db
from ..provisioning.matching import match_profile
from ..provisioning.templates import TemplateProblem, device_variables, render_template
from . import blueprint, schemas
from .contract import operation
from .errors import invalid, not_found


@blueprint.post("/bootstrap")
@operation(answer=schemas.BootstrapRendering, errors=(404, 422),
           refused="the profile has no bootstrap template, or it fails to render with these variables")
def render_bootstrap(json: schemas.BootstrapRequest) -> schemas.BootstrapRendering:
    """Render a device's bootstrap configuration (allowed for read tokens)"""
    data = json.model_dump(exclude_unset=True)
    serial, pid = data.get("serial", ""), data.get("pid", "")
    if not data.get("profile") and not serial:
        raise invalid("give a 'profile' or a device 'serial' (matched like a contacting device)",
                      fields=["profile", "serial"])
    device = db.session.scalar(select(Device).where(Device.serial == serial)) if serial else None
    if device is None:
        device = Device(serial=serial, pid=pid, variables={})  # never added: only its variables are used
    if data.get("profile"):
        profile = db.session.scalar(select(Profile).where(Profile.name == data["profile"]))
        if profile is None:
            raise not_found(f"profile {data['profile']!r}")
    else:
        profile = match_profile(serial, pid or device.pid or "")
        if profile is None:
            raise not_found(f"a profile matching device {serial!r}")
    if not profile.bootstrap_template:
        raise invalid(f"profile {profile.name!r} has no bootstrap template")
    settings = current_settings()
    protocol = data.get("protocol", "pnp")
    gateway = {"gateway": settings.vip, "http_port": settings.http_port, "https_port": settings.https_port,
               "cns_port": settings.dispatcher_plain_port, "cns_tls_port": settings.dispatcher_tls_port,
               "protocol": protocol}
    variables = {**gateway, **device_variables(profile, device, data.get("variables"))}
    try:
        text = render_template(profile.bootstrap_template, variables,
                               label=f"bootstrap template of profile {profile.name}")
    except TemplateProblem as exc:
        raise invalid(str(exc)) from exc
    finally:
        db.session.rollback()  # the unsaved device must never reach the database
    return schemas.BootstrapRendering(profile=profile.name, serial=serial or None, protocol=protocol, config=text)

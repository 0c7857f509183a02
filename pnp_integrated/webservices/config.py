"""Config Web Service: ``GET /cns/config.asp?DeviceID=<serial>[&Identifier=<correlator>]`` -> ``text/plain`` CLI.

Without Identifier it is the device's initial configuration (the CNS config agent's day-0 pull); with one, the text
of that pending configuration request (Open PnP config-upgrade points here). An unknown device gets a 404, is
recorded as unclaimed (the engine reports it to Prime) and never receives another device's configuration.
"""

from __future__ import annotations

import logging

from flask import Blueprint, Response, request

from ..context import current_settings
from ..device_certificates import refusal as certificate_refusal
from ..logs import client_mistake
from ..models import Device, db
from ..provisioning import engine, url_tokens
from ..provisioning.types import ActionKind, DeviceIdentity
from ..refusals import CONFIG_URL_TOKEN, DEVICE_CERTIFICATE, count_refusal

log = logging.getLogger(__name__)

blueprint = Blueprint("config_service", __name__)

MAX_DEVICE_ID = 255
MAX_IDENTIFIER = 128
MAX_TOKEN = 64


def _plain(text: str, status: int) -> Response:
    response = Response(text, status, content_type="text/plain; charset=utf-8")
    response.headers["Cache-Control"] = "no-store"  # configurations carry secrets
    return response


def _parameter(name: str, limit: int) -> tuple[str | None, str | None]:
    """(value, problem) of a query parameter; its name is matched case-insensitively, as IOS agents vary."""
    values = [v for key, v in request.args.items(multi=True) if key.lower() == name.lower()]
    if not values:
        return None, None
    if len(values) > 1:
        return None, f"{name} is given {len(values)} times"
    value = values[0]
    if not value or len(value) > limit or not value.isprintable() or value != value.strip():
        return None, f"{name} must be 1 to {limit} printable characters without surrounding spaces"
    return value, None


@blueprint.get("/cns/config.asp")
def config_asp() -> Response:
    """The device's configuration as plain CLI text."""
    device_id, problem = _parameter("DeviceID", MAX_DEVICE_ID)
    if problem is None and device_id is None:
        problem = "DeviceID is required"
    identifier, id_problem = _parameter("Identifier", MAX_IDENTIFIER)
    expires, expires_problem = _parameter(url_tokens.EXPIRES, MAX_TOKEN)
    token, token_problem = _parameter(url_tokens.TOKEN, MAX_TOKEN)
    problem = problem or id_problem or expires_problem or token_problem
    if problem is not None or device_id is None:
        return _plain(f"bad request: {problem}\n", 400)
    settings = current_settings()
    refused = certificate_refusal(settings, request.environ, device_id, open_pnp=False)
    if refused is not None:
        count_refusal(DEVICE_CERTIFICATE)
        log.info("config.asp: refused %s from %s: %s", device_id[:64], request.remote_addr, refused,
                 extra=client_mistake("device-certificate"))
        return _plain(f"forbidden: {refused}\n", 403)
    refused = url_tokens.refusal(settings, device_id, identifier or "", expires, token)
    if refused is not None:
        # Checked before the device is looked up, so a refusal says nothing about which serials exist.
        count_refusal(CONFIG_URL_TOKEN)
        log.info("config.asp: refused %s from %s: %s", device_id[:64], request.remote_addr, refused,
                 extra=client_mistake("config-url-token"))
        return _plain(f"forbidden: {refused}\n", 403)

    text = engine.rendered_config(device_id, identifier)
    if text is None and identifier is None and db.session.scalar(
            db.select(Device.id).where(Device.serial == device_id)) is None:
        # First sight of this device: the engine records it (unclaimed, reported once) or claims it for a profile,
        # in which case its initial configuration exists now.
        action = engine.contact(DeviceIdentity(serial=device_id, protocol="cns", address=request.remote_addr or ""))
        if action.kind == ActionKind.REFUSED:
            return Response(f"{action.detail}\n", 429, {"Retry-After": str(action.wait_seconds)},
                            content_type="text/plain; charset=utf-8")
        text = engine.rendered_config(device_id, None)
    if text is None:
        what = f"device {device_id}" + (f" and request {identifier}" if identifier else "")
        log.info("config.asp: no configuration for %s", what)
        return _plain(f"no configuration for {what}\n", 404)
    if text and not text.endswith("\n"):
        text += "\n"
    return _plain(text, 200)

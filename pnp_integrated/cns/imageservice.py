"""Image Web Service for the CNS image agent: ``POST /cns/HttpMsgDispatcher`` (docs/cns-wire.md section 4).

The image agent reports what it runs (``image-inventory``) and is told what to do (``image-instruction``), then
reports progress (``image-status``). For the provisioning engine the inventory answers IDENTIFY (the device's facts)
and the ``activated``/``failed`` status answers IMAGE_INSTALL. When the engine's next step is one the event
connection carries (configuration, post-PnP configuration, save), it is pushed to the device's CNS session on
whichever worker holds it.
"""

from __future__ import annotations

import logging
import re
from typing import Any
from xml.sax.saxutils import quoteattr

from flask import Blueprint, Response, request
from sqlalchemy import or_, select

from ..bodies import limited_body
from ..context import gateway_state
from ..models import Image, db
from ..provisioning import engine
from ..provisioning.types import ActionKind, DeviceFacts, DeviceIdentity, Outcome
from ..urls import DeviceUrls
from . import provision
from .messages import Document, XmlRefused, image_instruction_download, image_instruction_none, parse_xml

log = logging.getLogger(__name__)

blueprint = Blueprint("cns_images", __name__)

IMAGE_STATES = ("downloading", "downloaded", "activated", "failed")
_DEVICE_ID = re.compile(r"[^\s\x00-\x1f\x7f]{1,255}")


def _xml(body: str, status: int = 200) -> Response:
    return Response(body, status=status, mimetype="application/xml")


def _error(status: int, message: str) -> Response:
    return _xml(f"<error>{_escape(message)}</error>", status)


def _escape(text: str) -> str:
    return quoteattr(text)[1:-1]


@blueprint.post("/cns/HttpMsgDispatcher")
def http_msg_dispatcher() -> Response:
    """Answer an image-agent message: ``image-inventory`` -> ``image-instruction``; ``image-status`` -> ``ack``."""
    try:
        doc = parse_xml(limited_body())
    except XmlRefused as exc:
        return _error(400, str(exc))
    device_id = doc.attributes.get("device-id", "")
    if doc.root not in ("image-inventory", "image-status"):
        return _error(400, f"expected <image-inventory> or <image-status>, got <{doc.root}>")
    if not _DEVICE_ID.fullmatch(device_id):
        return _error(400, f"<{doc.root}> needs a device-id attribute (1-255 printable characters, no spaces)")
    try:
        if doc.root == "image-inventory":
            return _xml(_inventory(device_id, doc))
        return _status(device_id, doc)
    finally:
        db.session.remove()


def _facts(doc: Document) -> Any:
    """DeviceFacts from an inventory: the running image (version from the image repository when it is known there,
    or from a ``version`` attribute) and the free space of each filesystem."""
    element = doc.element
    assert element is not None
    running = element.find("image")
    image_file = running.get("name", "") if running is not None else ""
    version = running.get("version", "") if running is not None else ""
    if image_file and not version:
        known = db.session.scalars(select(Image).where(or_(Image.filename == image_file, Image.name == image_file))
                                   .limit(1)).first()
        version = known.version if known is not None else ""
    filesystems: dict[str, int] = {}
    for fs in element.iter("filesystem"):
        name, free = fs.get("name", ""), fs.get("free", "")
        if name and free.isdigit():
            filesystems[name] = int(free)
    return DeviceFacts(version=version, image_file=image_file, filesystems=filesystems)


def _inventory(device_id: str, doc: Document) -> str:
    settings = gateway_state().settings
    address = request.remote_addr or ""
    action = engine.contact(DeviceIdentity(serial=device_id, protocol="cns", address=address))
    if action.kind == ActionKind.IDENTIFY:
        action = engine.report(device_id, action.correlator, Outcome(success=True, facts=_facts(doc),
                                                                            raw={"inventory": True}),
                               must_record=True)
        provision.push(action, device_id, device_id, settings)
    if action.kind == ActionKind.IMAGE_INSTALL and action.image is not None:
        image = action.image
        filesystem = image.filesystem or "flash:"
        url = DeviceUrls.http(settings).file(image.path)
        destination = f"{filesystem}{image.path.rsplit('/', 1)[-1]}"
        return image_instruction_download(action.correlator, url, image.md5, image.size, destination, image.reload)
    return image_instruction_none()


def _status(device_id: str, doc: Document) -> Response:
    state = doc.text.get("state", "").lower()
    if state not in IMAGE_STATES:
        return _error(400, f"<state> must be one of {', '.join(IMAGE_STATES)}")
    identifier = doc.attributes.get("identifier", "")
    if state in ("activated", "failed") and identifier:
        detail = doc.text.get("detail", "")
        outcome = Outcome(success=state == "activated", detail=detail or f"image {state}",
                                 error_code="" if state == "activated" else "image-failed", raw={"state": state})
        action = engine.report(device_id, identifier, outcome, must_record=True)  # no <ack/> before it is recorded
        provision.push(action, device_id, device_id, gateway_state().settings)
    log.info("image agent of %s: %s %s", device_id, state, identifier)
    return _xml("<ack/>")

"""The Open PnP HTTP endpoints (served on the HTTP and the HTTPS port by the same app).

``GET /pnp/HELLO`` answers 200 with an empty body. ``POST /pnp/WORK-REQUEST`` asks the engine for the device's
current action and answers with one service request (or a backoff). ``POST /pnp/WORK-RESPONSE`` reports the result
to the engine and answers with the work-info bye. Bad XML is a 400 with a one-line reason, an oversized body a 413.
"""

from __future__ import annotations

import logging

from flask import Blueprint, Response, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from ..bodies import limited_body
from ..context import current_settings
from ..device_certificates import refusal as certificate_refusal
from ..logs import client_mistake
from ..provisioning import engine, url_tokens
from ..refusals import DEVICE_CERTIFICATE, count_refusal
from ..urls import DeviceUrls
from .conversation import identity_of, outcome_of, reply_to_work_request
from .messages import Bye, Fault, PnpProtocolError, SyslogEvent, encode, parse_work_request, parse_work_response

log = logging.getLogger(__name__)

blueprint = Blueprint("pnp", __name__, url_prefix="/pnp")

XML_TYPE = "text/xml; charset=utf-8"


def _xml(data: bytes) -> Response:
    return Response(data, 200, content_type=XML_TYPE)


def _urls() -> DeviceUrls:
    # Devices are sent to the VIP (never a node address), on the transport they used to reach us.
    settings = current_settings()
    tls = request.scheme == "https"
    return DeviceUrls.on(settings.vip, settings.https_port if tls else settings.http_port, tls,
                         url_tokens.signer(settings))


class CertificateRefused(Exception):
    """The device's client certificate does not allow this request (403 with the reason)."""


def _speaks_for(serial: str | None) -> None:
    """Refuse a request its client certificate does not allow (PNP_DEVICE_CA_FILE); ``None``: no serial yet."""
    refused = certificate_refusal(current_settings(), request.environ, serial, open_pnp=True)
    if refused is not None:
        raise CertificateRefused(refused)


@blueprint.before_request
def _certificate_required() -> None:
    _speaks_for(None)


@blueprint.errorhandler(CertificateRefused)
def certificate_refused(exc: CertificateRefused) -> Response:
    count_refusal(DEVICE_CERTIFICATE)
    log.info("pnp: refused %s %s from %s: %s", request.method, request.path, request.remote_addr, exc,
             extra=client_mistake("device-certificate"))
    return Response(f"forbidden: {exc}\n", 403, content_type="text/plain; charset=utf-8")


@blueprint.route("/HELLO", methods=["GET", "POST"])
def hello() -> Response:
    """The agent checks that a PnP server is here (some agents POST an empty ``<info/>``)."""
    if request.method == "POST":
        limited_body()
    return Response(b"", 200, content_type=XML_TYPE)


@blueprint.post("/WORK-REQUEST")
def work_request() -> Response:
    """A device asks for work."""
    message = parse_work_request(limited_body(), current_settings().http_max_body_bytes)
    _speaks_for(message.udi.serial)
    action = engine.contact(identity_of(message, request.remote_addr or ""), device_correlator=message.correlator)
    reply = reply_to_work_request(action, message, _urls())
    log.debug("pnp %s: %s -> %s", message.udi.serial, action.kind.value, type(reply).__name__)
    return _xml(encode(reply))


@blueprint.post("/WORK-RESPONSE")
def work_response() -> Response:
    """A device reports the result of a request; the answer is always the bye (the next WORK-REQUEST gets work)."""
    message = parse_work_response(limited_body(), current_settings().http_max_body_bytes)
    serial = message.udi.serial
    _speaks_for(serial)
    if isinstance(message, SyslogEvent):
        # Unsolicited (Cisco's syslog service): the lines are the device's own log; there is nothing to answer.
        for line in message.lines:
            log.info("pnp %s syslog: %s", serial, line, extra={"device": serial})
        return Response(b"", 200, content_type=XML_TYPE)
    if isinstance(message, Fault):
        # A fault carries no correlator: it answers whatever request the device holds, which is the pending one.
        current = engine.pending(serial)
        if current is not None and current.correlator:
            engine.report(serial, current.correlator, outcome_of(message))
        log.info("pnp %s: fault %s: %s", serial, message.code, message.string)
        return _xml(encode(Bye(message.udi, "")))
    engine.report(serial, message.correlator, outcome_of(message))
    return _xml(encode(Bye(message.udi, message.correlator)))


@blueprint.errorhandler(PnpProtocolError)
def protocol_error(exc: PnpProtocolError) -> Response:
    log.info("pnp: refused a message from %s: %s", request.remote_addr, exc)
    return Response(f"malformed Open PnP message: {exc}\n", 400, content_type="text/plain; charset=utf-8")


@blueprint.errorhandler(RequestEntityTooLarge)
def too_large(_exc: HTTPException) -> Response:
    limit = current_settings().http_max_body_bytes
    return Response(f"message larger than {limit} bytes\n", 413, content_type="text/plain; charset=utf-8")

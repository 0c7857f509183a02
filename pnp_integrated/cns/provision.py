"""The CNS side of the provisioning engine: who is talking, what the device reported, what to push next.

The engine is protocol-neutral (:mod:`pnp_integrated.provisioning.engine`): ``contact``, ``report`` and ``pending``
return an :class:`Action`. Over the event connection the gateway can push two of them: the post-PnP configuration
(a ``config-event`` on ``cisco.mgmt.cns.config.load``), the configuration (a pull ``config-event`` naming the
Config Web Service URL) and saving the configuration (``write memory`` as an exec command). Facts (IDENTIFY) and
images go through the image agent (``/cns/HttpMsgDispatcher``), which needs no push.

A database that is unavailable never breaks a device session: it is logged and the session carries on. The one
exception is a device's result that the database could not record (busy, away, a lock that never came):
:func:`report` raises :class:`ResultNotRecorded`, and the gateway withholds the RECEIPT, so the device sends the
result again. Anything else the engine raises is a bug, and ends the session with an internal error.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

from flask import Flask
from sqlalchemy.exc import SQLAlchemyError

from ..config import Settings
from ..provisioning import engine, url_tokens
from ..provisioning.types import Action, ActionKind, DeviceIdentity, EngineBusy, Outcome
from ..urls import DeviceUrls
from .messages import CONFIG_LOAD, EXEC_CMD, Document, config_load_pull, config_load_push, device_result, exec_cmd
from .session import Hello

log = logging.getLogger(__name__)

_T = TypeVar("_T")


class ResultNotRecorded(Exception):
    """The engine could not record a device's result now: the device must send it again."""


def _in_app(app: Flask, what: str, device: str, call: Callable[[], _T], *, must_record: bool = False) -> _T | None:
    """Run an engine call in an app context; the database being unavailable is the one failure expected here.

    ``must_record``: the caller acknowledges the device only once the call is recorded, so an unavailable database
    raises :class:`ResultNotRecorded` (the device sends it again); otherwise it is logged and ``None`` returned.
    """
    try:
        with app.app_context():
            return call()
    except (SQLAlchemyError, EngineBusy) as exc:
        if must_record:
            raise ResultNotRecorded(f"{type(exc).__name__}: {str(exc).splitlines()[0]}") from exc
        log.warning("provisioning engine %s for %s: database unavailable (%s)", what, device, type(exc).__name__)
        return None


def identity(hello: Hello, address: str) -> DeviceIdentity:
    """The engine's DeviceIdentity of a CNS device: keyed by its ConfigID (the Device-Id when none is given)."""
    return DeviceIdentity(serial=hello.config_id, protocol="cns", address=address)


def contact(app: Flask, hello: Hello, address: str) -> Action | None:
    """Tell the engine the device is here; its next Action (``None`` while the database is unavailable)."""
    return _in_app(app, "contact", hello.config_id, lambda: engine.contact(identity(hello, address)))


def new_device_refused(app: Flask, hello: Hello, address: str) -> bool:
    """Whether the device is unknown and its source over its new-device allowance (then it is not admitted)."""
    refused = _in_app(app, "new-device check", hello.config_id,
                      lambda: engine.new_device_refused(hello.config_id, address))
    return bool(refused)


def pending_action(app: Flask, hello: Hello | None, *, must_record: bool = False) -> Action | None:
    """The Action the engine is waiting on for this device, if any."""
    if hello is None:
        return None
    return _in_app(app, "pending", hello.config_id, lambda: engine.pending(hello.config_id), must_record=must_record)


def report(app: Flask, hello: Hello, subject: str, document: Document) -> Action | None:
    """Report a config/exec result to the engine; the next Action, or ``None`` for other events.

    Raises :class:`ResultNotRecorded` when the database could not take the result.
    """
    result = device_result(subject, document)
    if result is None:
        return None
    correlator = result.correlator
    if not correlator:
        # The day-0 initial configuration is pulled without an identifier: it answers a CONFIG step in progress
        # (the Config Web Service served that step's text), and nothing else.
        pending = pending_action(app, hello, must_record=True)
        if pending is None or pending.kind != ActionKind.CONFIG:
            return None
        correlator = pending.correlator
    outcome = Outcome(success=result.success, detail=result.detail, error_code=result.error_code,
                      raw={"subject": subject, "root": document.root, **document.text})
    return _in_app(app, "report", hello.config_id,
                   lambda: engine.report(hello.config_id, correlator, outcome, must_record=True), must_record=True)


def config_url(settings: Settings, config_id: str, identifier: str) -> str:
    """The Config Web Service URL of a job's configuration, on the VIP."""
    return DeviceUrls.http(settings, url_tokens.signer(settings)).config(config_id, identifier)


def delivery_for(action: Action, config_id: str, settings: Settings) -> tuple[str, str] | None:
    """The (subject, XML) to DELIVER for ``action``, or ``None`` when nothing is pushed over the connection.

    CONFIG: a pull event naming the Config Web Service URL (with the identifier, so the result is correlated);
    POST_CONFIG: the configuration itself; SAVE: ``write memory`` through the exec agent.
    """
    correlator = action.correlator
    if not correlator:
        return None
    if action.kind == ActionKind.CONFIG:
        return CONFIG_LOAD, config_load_pull(correlator, config_id, config_url(settings, config_id, correlator))
    if action.kind == ActionKind.POST_CONFIG and action.config_text:
        return CONFIG_LOAD, config_load_push(correlator, config_id, action.config_text)
    if action.kind == ActionKind.SAVE:
        return EXEC_CMD, exec_cmd(correlator, "write memory")
    return None


def push(action: Action, device_key: str, config_id: str, settings: Settings) -> bool:
    """DELIVER what ``action`` needs to the device's live event session, on whichever worker holds it.

    Used where the action was decided outside the device's connection (the image agent's HTTP requests). Needs an
    application context.
    """
    delivery = delivery_for(action, config_id, settings)
    if delivery is None:
        return False
    from .worker import deliver

    return deliver(device_key, *delivery)

"""The CNS side of the provisioning engine: who is talking, what the device reported, what to push next.

The engine is protocol-neutral (:mod:`pnp_integrated.provisioning.engine`): ``contact``, ``report`` and ``pending``
return an :class:`Action`. Over the event connection the gateway can push two of them: the post-PnP configuration
(a ``config-event`` on ``cisco.mgmt.cns.config.load``), the configuration (a pull ``config-event`` naming the
Config Web Service URL) and saving the configuration (``write memory`` as an exec command). Facts (IDENTIFY) and
images go through the image agent (``/cns/HttpMsgDispatcher``), which needs no push.

An engine failure never breaks a device session: it is logged and the session carries on. The one exception is a
device's result that the database could not record (busy, away, a lock that never came): :func:`report` raises
:class:`ResultNotRecorded`, and the gateway withholds the RECEIPT, so the device sends the result again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from flask import Flask
from sqlalchemy.exc import SQLAlchemyError

from ..config import Settings
from ..urls import DeviceUrls
from .messages import CONFIG_LOAD, EXEC_CMD, Document, config_load_pull, config_load_push, device_result, exec_cmd
from .session import Hello

log = logging.getLogger(__name__)


def _engine_function(name: str) -> Callable[..., Any] | None:
    try:
        from ..provisioning import engine
    except ImportError:
        return None
    function = getattr(engine, name, None)
    return function if callable(function) else None


class ResultNotRecorded(Exception):
    """The engine could not record a device's result now: the device must send it again."""


def _call(app: Flask, name: str, *args: Any, strict: bool = False, **kwargs: Any) -> Any:
    """Call engine function ``name`` in an app context; ``strict``: database failures raise ResultNotRecorded."""
    function = _engine_function(name)
    if function is None:
        return None
    from ..provisioning.engine import EngineBusy

    try:
        with app.app_context():
            return function(*args, **kwargs)
    except (SQLAlchemyError, EngineBusy) as exc:
        if strict:
            raise ResultNotRecorded(f"{type(exc).__name__}: {str(exc).splitlines()[0]}") from exc
        log.warning("provisioning engine %s for %s: database unavailable (%s)", name, args[0] if args else "",
                    type(exc).__name__)
        return None
    except Exception:
        log.exception("provisioning engine %s failed for %s", name, args[0] if args else "")
        return None


def identity(hello: Hello, address: str) -> Any:
    """The engine's DeviceIdentity of a CNS device: keyed by its ConfigID (the Device-Id when none is given)."""
    from ..provisioning.engine import DeviceIdentity

    return DeviceIdentity(serial=hello.config_id, protocol="cns", address=address)


def contact(app: Flask, hello: Hello, address: str) -> Any:
    """Tell the engine the device is here; its next Action (or ``None`` without an engine)."""
    return _call(app, "contact", identity(hello, address))


def pending_action(app: Flask, hello: Hello | None, *, strict: bool = False) -> Any:
    """The Action the engine is waiting on for this device, if any."""
    if hello is None:
        return None
    return _call(app, "pending", hello.config_id, strict=strict)


def report(app: Flask, hello: Hello, subject: str, document: Document) -> Any:
    """Report a config/exec result to the engine; the next Action, or ``None`` for other events.

    Raises :class:`ResultNotRecorded` when the database could not take the result.
    """
    from ..provisioning.engine import Outcome

    result = device_result(subject, document)
    if result is None:
        return None
    correlator = result.correlator
    if not correlator:
        # The day-0 initial configuration is pulled without an identifier: it answers a CONFIG step in progress
        # (the Config Web Service served that step's text), and nothing else.
        pending = pending_action(app, hello, strict=True)
        if str(getattr(pending, "kind", "")) != "config":
            return None
        correlator = getattr(pending, "correlator", "") or ""
    outcome = Outcome(success=result.success, detail=result.detail, error_code=result.error_code,
                      raw={"subject": subject, "root": document.root, **document.text})
    return _call(app, "report", hello.config_id, correlator, outcome, strict=True, must_record=True)


def config_url(settings: Settings, config_id: str, identifier: str) -> str:
    """The Config Web Service URL of a job's configuration, on the VIP."""
    return DeviceUrls.http(settings).config(config_id, identifier)


def delivery_for(action: Any, config_id: str, settings: Settings) -> tuple[str, str] | None:
    """The (subject, XML) to DELIVER for ``action``, or ``None`` when nothing is pushed over the connection.

    CONFIG: a pull event naming the Config Web Service URL (with the identifier, so the result is correlated);
    POST_CONFIG: the configuration itself; SAVE: ``write memory`` through the exec agent.
    """
    kind = str(getattr(action, "kind", ""))
    correlator = getattr(action, "correlator", "") or ""
    if not correlator:
        return None
    if kind == "config":
        return CONFIG_LOAD, config_load_pull(correlator, config_id, config_url(settings, config_id, correlator))
    if kind == "post_config" and getattr(action, "config_text", ""):
        return CONFIG_LOAD, config_load_push(correlator, config_id, action.config_text)
    if kind == "save":
        return EXEC_CMD, exec_cmd(correlator, "write memory")
    return None


def push(action: Any, device_key: str, config_id: str, settings: Settings) -> bool:
    """DELIVER what ``action`` needs to the device's live event session, on whichever worker holds it.

    Used where the action was decided outside the device's connection (the image agent's HTTP requests). Needs an
    application context.
    """
    delivery = delivery_for(action, config_id, settings)
    if delivery is None:
        return False
    from .worker import deliver

    return deliver(device_key, *delivery)

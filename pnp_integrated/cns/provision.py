"""The CNS side of the provisioning engine: who is talking, what the device reported, what to push next.

The engine is protocol-neutral (:mod:`pnp_integrated.provisioning.engine`): ``contact``, ``report`` and ``pending``
return an :class:`Action`. Over the event connection the gateway can push two of them: the post-PnP configuration
(a ``config-event`` on ``cisco.mgmt.cns.config.load``) and saving the configuration (``write memory`` as an exec
command). The initial configuration is pulled by the config agent itself (``GET /cns/config.asp``) and images go
through the image agent (``/cns/HttpMsgDispatcher``), so those actions need no push.

An engine failure never breaks a device session: it is logged and the session carries on.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from flask import Flask

from ..config import Settings
from ..models import db
from .messages import CONFIG_LOAD, EXEC_CMD, Document, config_load_push, device_result, exec_cmd
from .session import Hello

log = logging.getLogger(__name__)


def _engine_function(name: str) -> Callable[..., Any] | None:
    try:
        from ..provisioning import engine
    except ImportError:
        return None
    function = getattr(engine, name, None)
    return function if callable(function) else None


def _call(app: Flask, name: str, *args: Any) -> Any:
    function = _engine_function(name)
    if function is None:
        return None
    with app.app_context():
        try:
            return function(*args)
        except Exception:
            log.exception("provisioning engine %s failed for %s", name, args[0] if args else "")
            db.session.rollback()
            return None
        finally:
            db.session.remove()


def identity(hello: Hello, address: str) -> Any:
    """The engine's DeviceIdentity of a CNS device: keyed by its ConfigID (the Device-Id when none is given)."""
    from ..provisioning.engine import DeviceIdentity

    return DeviceIdentity(serial=hello.config_id, protocol="cns", address=address)


def contact(app: Flask, hello: Hello, address: str) -> Any:
    """Tell the engine the device is here; its next Action (or ``None`` without an engine)."""
    return _call(app, "contact", identity(hello, address))


def pending_action(app: Flask, hello: Hello | None) -> Any:
    """The Action the engine is waiting on for this device, if any."""
    if hello is None:
        return None
    return _call(app, "pending", hello.config_id)


def report(app: Flask, hello: Hello, subject: str, document: Document) -> Any:
    """Report a config/exec result to the engine; the next Action, or ``None`` for other events."""
    from ..provisioning.engine import Outcome

    result = device_result(subject, document)
    if result is None:
        return None
    correlator = result.correlator
    if not correlator:
        # The day-0 initial configuration is pulled without an identifier: it answers the CONFIG step in progress.
        pending = pending_action(app, hello)
        correlator = getattr(pending, "correlator", "") or ""
        if not correlator:
            return None
    outcome = Outcome(success=result.success, detail=result.detail, error_code=result.error_code,
                      raw={"subject": subject, "root": document.root, **document.text})
    return _call(app, "report", hello.config_id, correlator, outcome)


def delivery_for(action: Any, hello: Hello, settings: Settings) -> tuple[str, str] | None:
    """The (subject, XML) to DELIVER for ``action``, or ``None`` when nothing is pushed over the connection."""
    kind = str(getattr(action, "kind", ""))
    correlator = getattr(action, "correlator", "") or ""
    if kind == "post_config" and getattr(action, "config_text", ""):
        return CONFIG_LOAD, config_load_push(correlator, hello.config_id, action.config_text)
    if kind == "save":
        return EXEC_CMD, exec_cmd(correlator, "write memory")
    return None

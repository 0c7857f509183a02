"""Commands from Prime: applied exactly once, in one transaction, before the broker is acknowledged.

Each command carries an ``id``; a :class:`~pnp_integrated.models.ProcessedCommand` row with that id is written in
the same transaction as the change, so a redelivered command changes nothing. A command that cannot be applied
(malformed JSON, unknown type, bad fields) is recorded too and reported to Prime as a ``command.rejected`` event.

Commands and their fields (besides the envelope ``id``, ``type``, ``at``, ``gateway``):

=====================  =================================================================================================
``profile.upsert``     ``profile`` {name, match_serials, match_pid, is_default, templates, variables, image ...}
``profile.delete``     ``name``
``device.reprovision`` ``device``: serial (Open PnP UDI SN, CNS ConfigID); the device's last job must have ended
``job.cancel``         ``job``: job id, or ``device``: serial (its running job); optional ``reason``
``cns.config.push``    ``device``: CNS Device-Id, ``identifier``; ``config`` (CLI text, pushed) or ``url`` (pulled)
                       or neither (pull of the device's own configuration from the Config Web Service); optional
                       ``mode`` (push|pull) and ``config_id`` (default: the Device-Id)
``cns.exec``           ``device``: CNS Device-Id, ``identifier``, ``command``: one exec command line
=====================  =================================================================================================

The two CNS commands reach the device over its live event session, on whichever worker holds it; a device that is
not connected to this gateway gets nothing and the command is rejected with that reason (Prime, like an operator,
learns at once that nothing was pushed, and can send it again later under a new id). The device's answer
(``config.complete`` / ``config.failure`` / ``exec.rsp`` carrying the identifier) reaches Prime as a ``cns.event``.
The push happens before the command is recorded, so a gateway that dies in between pushes once more on redelivery:
for a device, applying the same configuration twice is harmless, losing it is not.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError, InterfaceError, OperationalError

from ..context import current_settings
from ..models import AuditEntry, Device, Image, ProcessedCommand, Profile, ProvisioningJob, db
from ..outbox import record_event
from ..provisioning import operations
from ..provisioning.types import JobConflict
from ..sealing import seal

log = logging.getLogger(__name__)

MAX_ID_LENGTH = 64  # ProcessedCommand.command_id
MAX_IDENTIFIER = 128  # CNS correlators Prime chooses
MAX_EXEC_COMMAND = 1024
MAX_CONFIG_TEXT = 512 * 1024  # a DELIVER body stays well under the CNS 1 MiB limit


class CommandRejected(Exception):
    """The command cannot be applied; the message is the ``reason`` Prime receives."""


@dataclass(frozen=True)
class CommandOutcome:
    """What happened to one delivered command: ``applied``, ``duplicate`` or ``rejected``."""

    status: str
    command_id: str
    type: str = ""
    reason: str = ""


CommandHandler = Callable[[dict[str, Any]], str]  # returns the audit target (e.g. the profile name)

_PROFILE_FIELDS: dict[str, type | tuple[type, ...]] = {
    "name": str,
    "match_serials": list,
    "match_pid": str,
    "is_default": bool,
    "bootstrap_template": str,
    "config_template": str,
    "post_template": str,
    "reload_after_install": bool,
    "apply_to": str,
    "variables": dict,
    "credentials": dict,
    "image": (str, type(None)),
}


def upsert_profile(command: dict[str, Any]) -> str:
    """``profile.upsert``: ``profile`` {name, match_serials, match_pid, templates, image (by name) ...}."""
    spec = command.get("profile")
    if not isinstance(spec, dict):
        raise CommandRejected("profile.upsert needs a 'profile' object")
    unknown = sorted(set(spec) - set(_PROFILE_FIELDS))
    if unknown:
        raise CommandRejected(f"unknown profile fields: {', '.join(unknown)}")
    for key, kind in _PROFILE_FIELDS.items():
        if key in spec and not isinstance(spec[key], kind):
            raise CommandRejected(f"profile field {key!r} has the wrong type")
    name = spec.get("name")
    if not name or not name.strip():
        raise CommandRejected("profile.upsert needs profile.name")
    if not all(isinstance(s, str) for s in spec.get("match_serials", [])):
        raise CommandRejected("profile.match_serials must be a list of serial numbers")
    if spec.get("apply_to", "running") not in ("running", "startup"):
        raise CommandRejected("profile.apply_to must be 'running' or 'startup'")
    profile = db.session.scalar(select(Profile).where(Profile.name == name))
    if profile is None:
        profile = Profile(name=name)
        db.session.add(profile)
    for key, value in spec.items():
        if key == "image":
            image = None
            if value:
                image = db.session.scalar(select(Image).where(Image.name == value))
                if image is None:
                    raise CommandRejected(f"no image named {value!r} in the repository")
            profile.image = image
        elif key == "credentials":
            profile.credentials = seal(current_settings(), value)  # never stored in the clear
        elif key != "name":
            setattr(profile, key, value)
    return str(name)


def delete_profile(command: dict[str, Any]) -> str:
    """``profile.delete``: ``name``."""
    name = command.get("name")
    if not isinstance(name, str) or not name:
        raise CommandRejected("profile.delete needs a 'name'")
    profile = db.session.scalar(select(Profile).where(Profile.name == name))
    if profile is None:
        raise CommandRejected(f"no profile named {name!r}")
    db.session.delete(profile)
    return name


def _text(command: dict[str, Any], key: str, limit: int, *, required: bool = True, strip: bool = True) -> str:
    """A string field of ``command``, stripped unless ``strip`` is off (configuration keeps its indentation)."""
    value = command.get(key)
    if value is None and not required:
        return ""
    if not isinstance(value, str) or not value.strip():
        raise CommandRejected(f"{command['type']} needs {key!r} (a non-empty string)")
    if len(value) > limit:
        raise CommandRejected(f"{command['type']}: {key!r} is longer than {limit} characters")
    return value.strip() if strip else value


def _known_device(serial: str) -> Device:
    device = db.session.scalar(select(Device).where(Device.serial == serial))
    if device is None:
        raise CommandRejected(f"no device with serial {serial!r} has been seen by this gateway")
    return device


def reprovision_device(command: dict[str, Any]) -> str:
    """``device.reprovision``: ``device`` (serial); a new job from the first step, started at the next contact."""
    serial = _text(command, "device", 255)
    device = _known_device(serial)
    try:
        job = operations.reprovision(device)
    except JobConflict as exc:
        raise CommandRejected(f"{exc}; send job.cancel first") from exc
    if job is None:
        raise CommandRejected(f"no profile matches device {serial!r}: create one (profile.upsert) first")
    return f"{serial} job {job.id}"


def cancel_job(command: dict[str, Any]) -> str:
    """``job.cancel``: ``job`` (id) or ``device`` (serial: its current job), optional ``reason``."""

    reason = _text(command, "reason", 500, required=False) or f"cancelled by Prime (command {command['id']})"
    job_id = command.get("job")
    if job_id is not None:
        if isinstance(job_id, dict):
            job_id = job_id.get("id")
        if isinstance(job_id, bool) or not isinstance(job_id, int):
            raise CommandRejected("job.cancel: 'job' must be a job id (an integer)")
        job = db.session.get(ProvisioningJob, job_id)
        if job is None:
            raise CommandRejected(f"no job {job_id}")
    elif "device" in command:
        device = _known_device(_text(command, "device", 255))
        job = db.session.get(ProvisioningJob, device.current_job_id) if device.current_job_id else None
        if job is None:
            raise CommandRejected(f"device {device.serial!r} has no job")
    else:
        raise CommandRejected("job.cancel needs 'job' (a job id) or 'device' (a serial)")
    try:
        operations.cancel_job(job, reason)
    except JobConflict as exc:
        raise CommandRejected(str(exc)) from exc
    return f"job {job.id}"


def _deliver(device_id: str, subject: str, xml: str) -> None:
    """DELIVER to the device's live CNS session; rejected when it has none (or did not subscribe to ``subject``)."""
    from ..cns.worker import deliver

    if not deliver(device_id, subject, xml):
        raise CommandRejected(f"CNS device {device_id!r} is not connected to this gateway (or has not subscribed to"
                              f" {subject}): nothing was sent; send the command again once it is connected")


def push_config(command: dict[str, Any]) -> str:
    """``cns.config.push``: a ``config-event`` on ``cisco.mgmt.cns.config.load``, with the configuration or a URL."""
    from ..cns.messages import CONFIG_LOAD, config_load_pull, config_load_push

    device_id = _text(command, "device", 255)
    identifier = _text(command, "identifier", MAX_IDENTIFIER)
    config_id = _text(command, "config_id", 255, required=False) or device_id
    config = command.get("config")
    url = command.get("url")
    mode = command.get("mode") or ("push" if config is not None else "pull")
    if mode not in ("push", "pull"):
        raise CommandRejected("cns.config.push: 'mode' must be 'push' or 'pull'")
    if mode == "push":
        if url is not None:
            raise CommandRejected("cns.config.push: a push carries 'config', not 'url'")
        text = _text(command, "config", MAX_CONFIG_TEXT, strip=False)
        xml = config_load_push(identifier, config_id, text)
    else:
        if config is not None:
            raise CommandRejected("cns.config.push: a pull carries 'url' (or nothing), not 'config'")
        if url is None:
            url = own_config_url(config_id)
        elif not isinstance(url, str) or not url.startswith(("http://", "https://")) or len(url) > 2048:
            raise CommandRejected("cns.config.push: 'url' must be an http:// or https:// URL")
        xml = config_load_pull(identifier, config_id, url)
    _deliver(device_id, CONFIG_LOAD, xml)
    return f"{device_id} {mode} {identifier}"


def run_exec(command: dict[str, Any]) -> str:
    """``cns.exec``: an ``exec-cmd-event`` on ``cisco.mgmt.cns.exec.cmd`` running one exec command."""
    from ..cns.messages import EXEC_CMD, exec_cmd

    device_id = _text(command, "device", 255)
    identifier = _text(command, "identifier", MAX_IDENTIFIER)
    line = _text(command, "command", MAX_EXEC_COMMAND)
    if "\n" in line or "\r" in line:
        raise CommandRejected("cns.exec: 'command' is one exec command line")
    _deliver(device_id, EXEC_CMD, exec_cmd(identifier, line))
    return f"{device_id} exec {identifier}"


def own_config_url(config_id: str) -> str:
    """The device's configuration on this gateway's Config Web Service (on the VIP), rendered from its profile.

    Without an ``Identifier`` the service answers with the device's configuration, not one job step's request.
    """
    from ..context import gateway_state
    from ..provisioning import url_tokens
    from ..urls import DeviceUrls

    settings = gateway_state().settings
    return DeviceUrls.http(settings, url_tokens.signer(settings)).config(config_id)


# Command types of the contract that this gateway applies; others are rejected with a reason.
HANDLERS: dict[str, CommandHandler] = {
    "profile.upsert": upsert_profile,
    "profile.delete": delete_profile,
    "device.reprovision": reprovision_device,
    "job.cancel": cancel_job,
    "cns.config.push": push_config,
    "cns.exec": run_exec,
}


def _parse(body: bytes | str) -> tuple[dict[str, Any] | None, str, str]:
    """(command, id, problem): the problem is empty when the envelope is usable."""
    try:
        command = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        return None, "", f"not JSON: {exc}"
    except RecursionError:
        return None, "", "not JSON: nested too deeply"
    if not isinstance(command, dict):
        return None, "", "not a JSON object"
    command_id = command.get("id")
    if not isinstance(command_id, str) or not command_id.strip():
        return command, "", "no 'id'"
    if len(command_id) > MAX_ID_LENGTH:
        return command, command_id[:MAX_ID_LENGTH], f"'id' longer than {MAX_ID_LENGTH} characters"
    if not isinstance(command.get("type"), str) or not command["type"]:
        return command, command_id, "no 'type'"
    return command, command_id, ""


def _reject(command_id: str, type_: str, reason: str) -> CommandOutcome:
    """Report a rejection; a rejected command with an id is remembered, so a redelivery is not reported again."""
    record_event("command.rejected", {"command_id": command_id, "reason": reason})
    if command_id:
        db.session.add(ProcessedCommand(command_id=command_id, type=type_[:64] or "unknown"))
    try:
        db.session.commit()
    except IntegrityError:
        db.session.rollback()
        return CommandOutcome("duplicate", command_id, type_)
    log.info("command %s (%s) rejected: %s", command_id or "without id", type_ or "no type", reason)
    return CommandOutcome("rejected", command_id, type_, reason)


def apply_command(body: bytes | str, actor: str = "prime") -> CommandOutcome:
    """Apply one command message in one transaction (app context required).

    Never raises for bad input or a failing handler (the command is rejected); raises when the database cannot be
    reached, so the caller does not acknowledge the command and the broker delivers it again.
    """
    command, command_id, problem = _parse(body)
    type_ = str(command.get("type", "")) if command else ""
    if problem:
        return _reject(command_id, type_, f"malformed command: {problem}")
    assert command is not None
    if db.session.scalar(select(ProcessedCommand.id).where(ProcessedCommand.command_id == command_id)) is not None:
        return CommandOutcome("duplicate", command_id, type_)
    handler = HANDLERS.get(type_)
    if handler is None:
        return _reject(command_id, type_, f"command type {type_!r} is not supported by this gateway"
                                          f" (supported: {', '.join(sorted(HANDLERS))})")
    try:
        target = handler(command)
        db.session.add(ProcessedCommand(command_id=command_id, type=type_))
        db.session.add(AuditEntry(actor=actor, action=type_, target=target, detail={"command_id": command_id}))
        db.session.commit()
    except CommandRejected as exc:
        db.session.rollback()
        return _reject(command_id, type_, str(exc))
    except IntegrityError:
        db.session.rollback()
        if db.session.scalar(select(ProcessedCommand.id).where(ProcessedCommand.command_id == command_id)):
            return CommandOutcome("duplicate", command_id, type_)  # applied meanwhile by a redelivery elsewhere
        return _reject(command_id, type_, "the change conflicts with the gateway's data")
    except (OperationalError, InterfaceError):
        # The database is unreachable or locked: raise, so the command stays unacknowledged and comes back later.
        db.session.rollback()
        raise
    except Exception as exc:
        # Never leave a command unacknowledged because of a bug: it would come back for ever (a poison message).
        log.exception("command %s (%s) failed", command_id, type_)
        db.session.rollback()
        return _reject(command_id, type_, f"the gateway could not apply it: {type(exc).__name__}")
    log.info("command %s (%s) applied to %s", command_id, type_, target)
    return CommandOutcome("applied", command_id, type_)

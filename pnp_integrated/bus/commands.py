"""Commands from Prime: applied exactly once, in one transaction, before the broker is acknowledged.

Each command carries an ``id``; a :class:`~pnp_integrated.models.ProcessedCommand` row with that id is written in
the same transaction as the change, so a redelivered command changes nothing. A command that cannot be applied
(malformed JSON, unknown type, bad fields) is recorded too and reported to Prime as a ``command.rejected`` event.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from ..models import AuditEntry, Image, ProcessedCommand, Profile, db
from .outbox import record_event

log = logging.getLogger(__name__)

MAX_ID_LENGTH = 64  # ProcessedCommand.command_id


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


# Command types of the contract that this gateway applies; others are rejected with a reason.
HANDLERS: dict[str, CommandHandler] = {
    "profile.upsert": upsert_profile,
    "profile.delete": delete_profile,
}


def _parse(body: bytes | str) -> tuple[dict[str, Any] | None, str, str]:
    """(command, id, problem): the problem is empty when the envelope is usable."""
    try:
        command = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        return None, "", f"not JSON: {exc}"
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
    """Apply one command message in one transaction (app context required); never raises for bad input."""
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
    log.info("command %s (%s) applied to %s", command_id, type_, target)
    return CommandOutcome("applied", command_id, type_)

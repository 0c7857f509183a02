"""Which profile a device gets: its serial number first, then its PID, then the default profile.

``Profile.match_pid`` is a shell-style pattern (``ISR43*``, case-insensitive) or, prefixed with ``re:``, a regular
expression that must match the whole PID (``re:C9[23]00-.*``). Among several profiles of the same rank the oldest
(lowest id) wins, so adding a profile never silently re-routes devices already matched by an older one.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Sequence
from typing import Protocol, TypeVar

from sqlalchemy import select

from ..models import Profile, db

REGEX_PREFIX = "re:"


def pid_pattern_problem(pattern: str) -> str | None:
    """Why ``pattern`` is not a usable PID pattern, or None."""
    if pattern.startswith(REGEX_PREFIX):
        try:
            re.compile(pattern[len(REGEX_PREFIX):])
        except re.error as exc:
            return f"match_pid is not a valid regular expression: {exc}"
    return None


def pid_matches(pattern: str, pid: str) -> bool:
    """True when ``pid`` matches ``pattern`` (see the module docstring); an empty pattern matches nothing."""
    if not pattern or not pid:
        return False
    if pattern.startswith(REGEX_PREFIX):
        try:
            return re.fullmatch(pattern[len(REGEX_PREFIX):], pid, flags=re.IGNORECASE) is not None
        except re.error:
            return False
    return fnmatch.fnmatchcase(pid.upper(), pattern.upper())


class MatchRules(Protocol):
    """What matching reads of a profile: an ORM row, or the engine's plain record of one."""

    id: int
    match_serials: list[str]
    match_pid: str
    is_default: bool


_P = TypeVar("_P", bound=MatchRules)


def match_profile(serial: str, pid: str, *, assigned: int | None = None) -> Profile | None:
    """The profile for a device with this serial and PID, or None (the device is unclaimed); see :func:`first_match`."""
    return first_match(list(db.session.scalars(select(Profile).order_by(Profile.id))), serial, pid, assigned=assigned)


def first_match(profiles: Sequence[_P], serial: str, pid: str, *, assigned: int | None = None) -> _P | None:
    """The first of ``profiles`` (oldest first) for a device with this serial and PID: serial, PID, default.

    ``assigned``: the id of the profile assigned to the device, which wins when it is among them.
    """
    if assigned is not None:
        for profile in profiles:
            if profile.id == assigned:
                return profile
    for profile in profiles:
        if serial in (profile.match_serials or []):
            return profile
    for profile in profiles:
        if pid_matches(profile.match_pid or "", pid):
            return profile
    for profile in profiles:
        if profile.is_default:
            return profile
    return None

"""The console's users: a name, a role (``admin`` or ``read``, as API tokens have) and a scrypt hash of the password.

Passwords are hashed with scrypt from :mod:`hashlib` at the cost OWASP's password storage guidance gives for it
(N=2^15, r=8, p=3: 32 MiB and a few hundred milliseconds of CPU per hash). The stored form names its parameters
(``scrypt$N$r$p$salt$hash``), so a later release can raise them and still check older hashes. A gevent worker
hashes on its thread pool: hashlib releases the GIL, so the worker's other greenlets (devices) keep running, and at
most :data:`CONCURRENT_HASHES` hashes run at once per process, however many sign-ins arrive.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, select

from ..models import AuditEntry, ConsoleSession, ConsoleUser, SignInFailure, db, utcnow

ROLES = ("admin", "read")
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")
MIN_PASSWORD = 12
MAX_PASSWORD = 1024  # a longer "password" is an attempt to make the hash expensive, not a password
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**15, 8, 3
SCRYPT_MAXMEM = 64 * 1024 * 1024  # 128 * r * N = 32 MiB, and room for OpenSSL's own
CONCURRENT_HASHES = 2


class UserProblem(ValueError):
    """A user cannot be created or changed; the message says why."""


def _offloaded(call: Callable[..., bytes], *args: Any) -> bytes:
    # In a gevent worker the hash runs on the hub's thread pool: the loop keeps serving devices meanwhile.
    monkey = sys.modules.get("gevent.monkey")
    if monkey is not None and monkey.is_module_patched("threading"):
        import gevent

        return bytes(gevent.get_hub().threadpool.apply(call, args))
    return call(*args)


_hash_turns: threading.BoundedSemaphore | None = None
_turns_guard = threading.Lock()


def _turns() -> threading.BoundedSemaphore:
    # Made on first use, i.e. in the worker after gevent patched threading (a semaphore made before would block the
    # whole worker instead of one greenlet).
    global _hash_turns
    with _turns_guard:
        if _hash_turns is None:
            _hash_turns = threading.BoundedSemaphore(CONCURRENT_HASHES)
        return _hash_turns


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int, length: int) -> bytes:
    with _turns():
        return _offloaded(lambda: hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, dklen=length,
                                                 maxmem=SCRYPT_MAXMEM))


def hash_password(password: str) -> str:
    """The stored form of ``password``: ``scrypt$N$r$p$<salt>$<hash>`` (base64)."""
    salt = secrets.token_bytes(16)
    digest = _scrypt(password, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P, 32)
    b64 = base64.b64encode
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${b64(salt).decode()}${b64(digest).decode()}"


def check_password(password: str, stored: str) -> bool:
    """Whether ``password`` is the one ``stored`` was made from (constant-time comparison)."""
    if len(password) > MAX_PASSWORD:
        return False
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        want = base64.b64decode(digest)
        got = _scrypt(password, base64.b64decode(salt), int(n), int(r), int(p), len(want))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, want)


_dummy_hash: str | None = None


def check_unknown_user(password: str) -> bool:
    """Spend what checking a real user's password costs, so that the answer's timing does not tell which names
    exist; always False."""
    global _dummy_hash
    if _dummy_hash is None:
        _dummy_hash = hash_password(secrets.token_urlsafe(16))
    check_password(password, _dummy_hash)
    return False


def password_problem(password: str) -> str | None:
    if len(password) < MIN_PASSWORD:
        return f"a password has at least {MIN_PASSWORD} characters"
    if len(password) > MAX_PASSWORD:
        return f"a password has at most {MAX_PASSWORD} characters"
    return None


@dataclass(frozen=True)
class UserRow:
    """What ``pnpp user list`` shows of a user."""

    name: str
    role: str
    created_at: str
    last_sign_in_at: str


def find_user(name: str) -> ConsoleUser | None:
    if not NAME.fullmatch(name):
        return None
    return db.session.scalar(select(ConsoleUser).where(ConsoleUser.name == name))


def create_user(name: str, role: str, password: str, actor: str = "cli") -> ConsoleUser:
    """Add a user and commit; :class:`UserProblem` for a bad name, role or password, or a name already taken."""
    if not NAME.fullmatch(name):
        raise UserProblem("a user name is 1 to 64 letters, digits, '.', '_', '@' or '-', starting with a letter or "
                          "digit")
    if role not in ROLES:
        raise UserProblem(f"the role is one of {', '.join(ROLES)}")
    problem = password_problem(password)
    if problem:
        raise UserProblem(problem)
    if find_user(name) is not None:
        raise UserProblem(f"a user named {name!r} already exists")
    user = ConsoleUser(name=name, role=role, password_hash=hash_password(password))
    db.session.add(user)
    db.session.add(AuditEntry(actor=actor, action="user.create", target=name, detail={"role": role}))
    db.session.commit()
    return user


def set_password(name: str, password: str, actor: str = "cli") -> None:
    """Give a user a new password: their sessions end and their failed sign-ins are forgotten."""
    user = find_user(name)
    if user is None:
        raise UserProblem(f"no user named {name!r}")
    problem = password_problem(password)
    if problem:
        raise UserProblem(problem)
    user.password_hash = hash_password(password)
    user.password_set_at = utcnow()
    db.session.execute(delete(ConsoleSession).where(ConsoleSession.user_id == user.id))
    db.session.execute(delete(SignInFailure).where(SignInFailure.key == f"user:{name}"))
    db.session.add(AuditEntry(actor=actor, action="user.password", target=name, detail={}))
    db.session.commit()


def delete_user(name: str, actor: str = "cli") -> bool:
    """Remove a user and end their sessions; False when there is no such user."""
    user = find_user(name)
    if user is None:
        return False
    db.session.execute(delete(ConsoleSession).where(ConsoleSession.user_id == user.id))
    db.session.delete(user)
    db.session.add(AuditEntry(actor=actor, action="user.delete", target=name, detail={}))
    db.session.commit()
    return True


def list_users() -> Sequence[UserRow]:
    def when(value: Any) -> str:
        return value.strftime("%Y-%m-%d %H:%M:%S") if value else "never"

    return [UserRow(u.name, u.role, when(u.created_at), when(u.last_sign_in_at))
            for u in db.session.scalars(select(ConsoleUser).order_by(ConsoleUser.name))]

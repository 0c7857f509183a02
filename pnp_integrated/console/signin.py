"""Signing in to the console: sessions, their cookie, CSRF tokens, and the throttle against guessing.

Theory of operation
-------------------
An operator signs in with a user's name and password (``pnpp user create``) or with an API token. Either opens a
*session*: a row holding the SHA-256 of a random secret, the operator (user or token), a CSRF token and an absolute
expiry (:data:`SESSION_SECONDS`). The browser keeps the secret in the ``pnp_console`` cookie, signed (itsdangerous,
with a key derived from the node's profile keys, which both nodes of a pair hold, so a session survives a failover)
and timestamped, so that a forged or stale cookie is refused before the database is asked. The cookie is HttpOnly
(no script reads it), SameSite=Strict (no other site's page makes the browser send it), Secure when signed in over
HTTPS, and expires with the session. Every request reads the session with its user or token, so deleting a user,
revoking a token or signing out ends the session at once.

Every request that changes something must carry the session's CSRF token (form field ``csrf_token`` or header
``X-CSRF-Token``) and, when the browser names one, the node's own origin. The sign-in form, having no session yet,
carries a token that must match a cookie the form's page set (double submit), so that no other site can sign a
browser in under an account of its choosing.

Failed sign-ins are counted per user name and per source address (:class:`~pnp_integrated.models.SignInFailure`,
shared by the node's workers and by a pair): after :data:`FREE_FAILURES` of them each further attempt must wait
twice as long as the one before, up to :data:`LONGEST_WAIT`, and is refused without hashing until then, so guessing
is slow and costs the node no CPU.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import math
import secrets
from dataclasses import dataclass
from pathlib import Path

from flask import g, request
from itsdangerous import BadData, URLSafeTimedSerializer
from sqlalchemy import delete, select
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from ..api.tokens import token_for
from ..context import current_settings
from ..models import ApiToken, ConsoleSession, ConsoleUser, SignInFailure, db, utcnow
from ..sealing import keys_path, load_keys
from .users import MAX_PASSWORD, check_password, check_unknown_user, find_user

COOKIE = "pnp_console"
FORM_COOKIE = "pnp_console_form"
SESSION_SECONDS = 8 * 3600
FORM_SECONDS = 3600
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "X-CSRF-Token"
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
FREE_FAILURES = 5
LONGEST_WAIT = 900.0
FORGET_FAILURES_AFTER = dt.timedelta(days=1)
_COOKIE_SALT = "pnp-integrated console session"
_KEY_PURPOSE = b"pnp-integrated console session cookie"


@dataclass(frozen=True)
class Operator:
    """Who is signed in, in this request."""

    session_id: int
    name: str
    role: str
    via: str  # "password" (a user) or "token"
    csrf_token: str
    expires_at: dt.datetime

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    @property
    def actor(self) -> str:
        """The name the audit log records for this operator's changes."""
        return f"user:{self.name}" if self.via == "password" else self.name


class SignInRefused(Exception):
    """A sign-in that did not succeed: the status to answer, what to tell the operator, and how long to wait."""

    def __init__(self, status: int, message: str, retry_after: int = 0) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.retry_after = retry_after


# ---- the cookie -----------------------------------------------------------------------------------------------------

_derived: dict[Path, tuple[int, list[bytes]]] = {}


def _mtime(path: Path) -> int:
    try:
        return path.stat().st_mtime_ns
    except FileNotFoundError:
        return -1


def signing_keys() -> list[bytes]:
    """The cookie's signing keys, oldest first (itsdangerous signs with the last and checks with all): one per
    profile key, derived for this purpose alone. A rotation of the profile keys signs every browser out."""
    settings = current_settings()
    path = keys_path(settings)
    cached = _derived.get(path)
    if cached is not None and cached[0] == _mtime(path):
        return cached[1]
    keys = load_keys(settings)  # newest first; created on first use
    derived = [hmac.new(base64.urlsafe_b64decode(key["key"]), _KEY_PURPOSE, hashlib.sha256).digest()
               for key in reversed(keys)]
    _derived[path] = (_mtime(path), derived)
    return derived


def _serializer() -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(signing_keys(), salt=_COOKIE_SALT)


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _operator_for(cookie: str) -> Operator | None:
    if not cookie or len(cookie) > 512:
        return None
    try:
        secret = _serializer().loads(cookie, max_age=SESSION_SECONDS)
    except BadData:
        return None
    if not isinstance(secret, str):
        return None
    row = db.session.execute(
        select(ConsoleSession, ConsoleUser, ApiToken)
        .outerjoin(ConsoleUser, ConsoleUser.id == ConsoleSession.user_id)
        .outerjoin(ApiToken, ApiToken.id == ConsoleSession.token_id)
        .where(ConsoleSession.secret_sha256 == _digest(secret), ConsoleSession.expires_at > utcnow())
    ).first()
    if row is None:
        return None
    session, user, token = row
    if user is not None:
        name, role, via = user.name, user.role, "password"
    elif token is not None and token.revoked_at is None:
        name, role, via = token.name, token.role, "token"
    else:
        return None
    return Operator(session.id, name, role, via, session.csrf_token, session.expires_at)


def current_operator() -> Operator | None:
    """The operator signed in on this request's cookie (read once per request)."""
    if "console_operator" not in g:
        g.console_operator = _operator_for(request.cookies.get(COOKIE, ""))
        db.session.commit()  # end the read: the request's other work must not hold its connection
    operator: Operator | None = g.console_operator
    return operator


def _open_session(user: ConsoleUser | None, token: ApiToken | None) -> tuple[str, Operator]:
    """Open a session for ``user`` or ``token`` and commit; the cookie value and the operator."""
    now = utcnow()
    db.session.execute(delete(ConsoleSession).where(ConsoleSession.expires_at <= now))  # housekeeping, indexed
    secret = secrets.token_urlsafe(32)
    row = ConsoleSession(secret_sha256=_digest(secret), user_id=user.id if user else None,
                         token_id=token.id if token else None, csrf_token=secrets.token_urlsafe(32),
                         address=(request.remote_addr or "")[:64], created_at=now,
                         expires_at=now + dt.timedelta(seconds=SESSION_SECONDS))
    db.session.add(row)
    if user is not None:
        user.last_sign_in_at = now
    db.session.flush()
    if user is not None:
        operator = Operator(row.id, user.name, user.role, "password", row.csrf_token, row.expires_at)
    else:
        assert token is not None
        operator = Operator(row.id, token.name, token.role, "token", row.csrf_token, row.expires_at)
    db.session.commit()
    return _serializer().dumps(secret), operator


def close_session(operator: Operator) -> None:
    """Sign out: the session's row goes, so its cookie opens nothing any more, wherever it was copied."""
    db.session.execute(delete(ConsoleSession).where(ConsoleSession.id == operator.session_id))
    db.session.commit()


# ---- signing in -----------------------------------------------------------------------------------------------------


def _throttle_keys(name: str) -> list[str]:
    return [f"address:{(request.remote_addr or 'unknown')[:64]}", f"user:{name[:64]}"]


def _wait(failures: int) -> float:
    if failures < FREE_FAILURES:
        return 0.0
    return min(LONGEST_WAIT, 2.0 ** (failures - FREE_FAILURES))


def seconds_to_wait(keys: list[str]) -> float:
    """How long the throttle still holds any of ``keys`` (0: a sign-in may be tried now)."""
    now = utcnow()
    rows = db.session.execute(select(SignInFailure.failures, SignInFailure.last_failure_at)
                              .where(SignInFailure.key.in_(keys))).all()
    waits = [(last + dt.timedelta(seconds=_wait(count)) - now).total_seconds() for count, last in rows]
    return max([0.0, *waits])


def _record_failure(keys: list[str]) -> None:
    now = utcnow()
    insert = sqlite_insert if db.session.get_bind().dialect.name == "sqlite" else postgresql_insert
    for key in keys:
        statement = insert(SignInFailure).values(key=key, failures=1, last_failure_at=now)
        db.session.execute(statement.on_conflict_do_update(
            index_elements=[SignInFailure.key],
            set_={"failures": SignInFailure.failures + 1, "last_failure_at": now}))
    db.session.execute(delete(SignInFailure).where(SignInFailure.last_failure_at < now - FORGET_FAILURES_AFTER))
    db.session.commit()


def _forget_failures(keys: list[str]) -> None:
    db.session.execute(delete(SignInFailure).where(SignInFailure.key.in_(keys)))


def _refuse_while_throttled(keys: list[str]) -> None:
    wait = seconds_to_wait(keys)
    db.session.commit()
    if wait > 0:
        seconds = max(1, math.ceil(wait))
        raise SignInRefused(429, f"Too many failed sign-ins: try again in {seconds} s.", seconds)


def sign_in_with_password(name: str, password: str) -> tuple[str, Operator]:
    """Check a user's password (throttled); the new session's cookie value and operator, or :class:`SignInRefused`."""
    keys = _throttle_keys(name)
    _refuse_while_throttled(keys)
    user = find_user(name) if len(password) <= MAX_PASSWORD else None
    stored = user.password_hash if user is not None else ""
    db.session.commit()  # no transaction (nor connection) held across the hash
    good = check_password(password, stored) if user is not None else check_unknown_user(password)
    if not good:
        _record_failure(keys)
        raise SignInRefused(401, "Wrong user name or password.")
    user = find_user(name)
    if user is None:  # deleted while its password was checked
        raise SignInRefused(401, "Wrong user name or password.")
    _forget_failures(keys)
    return _open_session(user, None)


def sign_in_with_token(raw: str) -> tuple[str, Operator]:
    """Sign in with an API token (throttled per address); the cookie value and operator, or :class:`SignInRefused`."""
    keys = _throttle_keys("")[:1]
    _refuse_while_throttled(keys)
    token = token_for(raw.strip())
    if token is None:
        _record_failure(keys)
        raise SignInRefused(401, "That token is not valid (or was revoked).")
    _forget_failures(keys)
    return _open_session(None, token)


def cookie_options() -> dict[str, object]:
    """How the session cookie is set: HttpOnly, SameSite=Strict, Secure over HTTPS, for the session's lifetime."""
    return {"max_age": SESSION_SECONDS, "httponly": True, "samesite": "Strict", "secure": request.is_secure,
            "path": "/"}


# ---- CSRF -----------------------------------------------------------------------------------------------------------


def form_token() -> str:
    """The sign-in form's token: the one in this browser's form cookie, or a new one (set by the response)."""
    existing = request.cookies.get(FORM_COOKIE, "")
    if 20 <= len(existing) <= 64:
        return existing
    if "console_form_token" not in g:
        g.console_form_token = secrets.token_urlsafe(24)
    token: str = g.console_form_token
    return token


def new_form_token() -> str | None:
    """A form token this response must set as a cookie (None: the browser has one)."""
    token: str | None = g.get("console_form_token")
    return token


def form_token_matches() -> bool:
    """The sign-in form carries the token its page set in this browser's cookie."""
    cookie = request.cookies.get(FORM_COOKIE, "")
    sent = request.form.get(CSRF_FIELD, "")
    return bool(cookie) and hmac.compare_digest(cookie.encode(), sent.encode())


def csrf_token_matches(operator: Operator, *, header_only: bool = False) -> bool:
    """The request carries the session's CSRF token (header, or form field unless ``header_only``)."""
    sent = request.headers.get(CSRF_HEADER, "")
    if not sent and not header_only:
        sent = request.form.get(CSRF_FIELD, "")
    return bool(sent) and hmac.compare_digest(sent.encode(), operator.csrf_token.encode())


def foreign_origin() -> bool:
    """The browser says the request comes from a page of another origin (``Origin`` names another)."""
    origin = request.headers.get("Origin")
    return origin is not None and origin != request.host_url.rstrip("/")

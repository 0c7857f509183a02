"""Who may use the simulated Prime's broker, and for what.

Every connection, on the TLS port and the loopback bus alike, logs in with CONNECT ``login`` / ``passcode``. The
accounts live in ``<data_dir>/prime/broker-accounts.json`` (0600): per login a role and a scrypt hash of the passcode,
never the passcode itself. A role is a set of grants, ActiveMQ style: a destination the account may SEND to, or
SUBSCRIBE to (read). The contract's two parties get exactly what the contract gives them:

=========  ==================================================  ==================================================
role       send                                                subscribe
=========  ==================================================  ==================================================
gateway    /queue/pnp.gateway.events                           /queue/pnp.gateway.commands
prime      /queue/pnp.gateway.commands                         /queue/pnp.gateway.events, /queue/ActiveMQ.DLQ
=========  ==================================================  ==================================================

Anybody else gets nothing: an unknown login, a wrong passcode or a destination outside the grants is an ERROR frame
and a closed connection. An account may also carry explicit grants (``name.>`` matches every destination under
``name.``), for tools outside the contract. A source that keeps failing is refused without hashing for a while, so
a password-guessing flood costs the broker no CPU.

ActiveMQ 5's simple authentication compares passcodes in the clear, so an account created for it (``activemq``)
also keeps its passcode, in the same 0600 file; the embedded broker never needs that.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import Settings
from ..credentials import (
    DEFAULT_GATEWAY_LOGIN,
    LOGIN_PATTERN,
    BrokerCredentials,
    credentials_path,
    gateway_credentials,
    store_gateway_credentials,
    write_secret,
)
from ..destinations import COMMANDS_QUEUE, DLQ, EVENTS_QUEUE

log = logging.getLogger(__name__)

ROLES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "gateway": ((EVENTS_QUEUE,), (COMMANDS_QUEUE,)),
    "prime": ((COMMANDS_QUEUE,), (EVENTS_QUEUE, DLQ)),
}
PRIME_LOGIN = "prime"  # the simulated Prime's own clients: its event sink and `pnpp prime send`
_SCRYPT = {"n": 2**14, "r": 8, "p": 1}

# Runs ``func(*args)`` and returns its result: in the calling thread by default; the broker passes gevent's thread
# pool (``threadpool.apply``), so that the tens of milliseconds of a scrypt check do not stall its other clients.
Offload = Callable[[Callable[..., Any], tuple[Any, ...]], Any]


def in_caller(func: Callable[..., Any], args: tuple[Any, ...]) -> Any:
    return func(*args)


class AccountError(ValueError):
    """An account cannot be created or the accounts file is unusable; the message says why."""


def hash_passcode(passcode: str) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(passcode.encode(), salt=salt, dklen=32, **_SCRYPT)
    b64 = base64.b64encode
    return f"scrypt${_SCRYPT['n']}${_SCRYPT['r']}${_SCRYPT['p']}${b64(salt).decode()}${b64(digest).decode()}"


def check_passcode(passcode: str, stored: str) -> bool:
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        want = base64.b64decode(digest)
        got = hashlib.scrypt(passcode.encode(), salt=base64.b64decode(salt), n=int(n), r=int(r), p=int(p),
                             dklen=len(want))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, want)


_DUMMY_HASH = hash_passcode(secrets.token_urlsafe(8))  # an unknown login costs what a wrong passcode costs


def matches(pattern: str, destination: str) -> bool:
    if pattern.endswith(">"):
        return destination.startswith(pattern[:-1])
    return destination == pattern


@dataclass(frozen=True)
class Account:
    """One login and what it may do."""

    login: str
    role: str
    send: tuple[str, ...]
    receive: tuple[str, ...]

    def may_send(self, destination: str) -> bool:
        return any(matches(p, destination) for p in self.send)

    def may_receive(self, destination: str) -> bool:
        return any(matches(p, destination) for p in self.receive)


def accounts_path(settings: Settings) -> Path:
    return settings.data_dir / "prime" / "broker-accounts.json"


def prime_passcode_path(settings: Settings) -> Path:
    return settings.data_dir / "prime" / "secrets" / "prime-passcode"


class AccountStore:
    """The accounts file; re-read when it changes, so an account added while the broker runs counts at once."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp: tuple[float, int] | None = None
        self._entries: dict[str, dict[str, Any]] = {}

    def entries(self) -> dict[str, dict[str, Any]]:
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            self._stamp, self._entries = None, {}
            return {}
        stamp = (stat.st_mtime, stat.st_size)
        if stamp != self._stamp:
            try:
                data = json.loads(self.path.read_text())
            except (OSError, ValueError) as exc:
                raise AccountError(f"{self.path} is not a readable accounts file ({exc}); fix or remove it") from exc
            accounts = data.get("accounts") if isinstance(data, dict) else None
            if not isinstance(accounts, dict):
                raise AccountError(f"{self.path} has no 'accounts' object; fix or remove it")
            self._entries, self._stamp = accounts, stamp
        return self._entries

    def account(self, login: str) -> Account | None:
        entry = self.entries().get(login)
        if not isinstance(entry, dict):
            return None
        role = str(entry.get("role", ""))
        send, receive = ROLES.get(role, ((), ()))
        return Account(login, role, tuple(entry.get("send", send)), tuple(entry.get("receive", receive)))

    def authenticate(self, login: str, passcode: str, *, offload: Offload = in_caller) -> Account | None:
        """The account when ``passcode`` is its passcode; only the hash check itself runs through ``offload``."""
        entry = self.entries().get(login)
        stored = entry.get("scrypt", "") if isinstance(entry, dict) else ""
        ok = offload(check_passcode, (passcode, stored or _DUMMY_HASH)) and bool(stored)
        return self.account(login) if ok else None

    def activemq_users(self) -> list[tuple[Account, str]]:
        """Every account with the passcode ActiveMQ needs; :class:`AccountError` names one created without it."""
        users = []
        for login, entry in sorted(self.entries().items()):
            passcode = entry.get("activemq_passcode") if isinstance(entry, dict) else None
            if not passcode:
                raise AccountError(
                    f"broker account {login!r} was created for the embedded broker only (its passcode is kept "
                    f"hashed, and ActiveMQ 5 compares passcodes in the clear): re-create it with "
                    f"`pnpp prime account create {login} --role ROLE --activemq`")
            account = self.account(login)
            assert account is not None
            users.append((account, str(passcode)))
        return users

    def put(self, login: str, role: str, passcode: str, *, activemq: bool = False,
            send: Iterable[str] | None = None, receive: Iterable[str] | None = None) -> Account:
        """Create or replace an account (the file is rewritten whole, 0600)."""
        if not LOGIN_PATTERN.fullmatch(login):
            raise AccountError(f"login {login!r}: use 1-64 letters, digits and . _ @ - (starting with a letter or "
                               "digit)")
        if role not in ROLES and (send is None and receive is None):
            raise AccountError(f"role {role!r} is not one of {', '.join(ROLES)}")
        if len(passcode) < 12:
            raise AccountError("a broker passcode needs at least 12 characters")
        entries = dict(self.entries())
        entry: dict[str, Any] = {"role": role, "scrypt": hash_passcode(passcode), "created": time.time()}
        if send is not None:
            entry["send"] = list(send)
        if receive is not None:
            entry["receive"] = list(receive)
        if activemq:
            entry["activemq_passcode"] = passcode
        entries[login] = entry
        self._write(entries)
        account = self.account(login)
        assert account is not None
        return account

    def delete(self, login: str) -> bool:
        entries = dict(self.entries())
        if entries.pop(login, None) is None:
            return False
        self._write(entries)
        return True

    def _write(self, entries: dict[str, dict[str, Any]]) -> None:
        write_secret(self.path, json.dumps({"accounts": entries}, indent=1, sort_keys=True) + "\n")
        self._stamp = None


def new_passcode() -> str:
    return secrets.token_urlsafe(24)


def prime_passcode(settings: Settings, *, activemq: bool = False) -> str:
    """The passcode of Prime's own clients, creating their account on first use."""
    path = prime_passcode_path(settings)
    store = AccountStore(accounts_path(settings))
    passcode = path.read_text().strip() if path.exists() else ""
    entry = store.entries().get(PRIME_LOGIN)
    if not passcode or entry is None or (activemq and not entry.get("activemq_passcode")) \
            or not check_passcode(passcode, str(entry.get("scrypt", ""))):
        passcode = passcode or new_passcode()
        store.put(PRIME_LOGIN, "prime", passcode, activemq=activemq)
        write_secret(path, passcode + "\n")
    return passcode


@dataclass
class LoginThrottle:
    """Failed logins per (source, login) and per source; over a limit, logins are refused without hashing.

    Per login, so that guessing one account's passcode stops after ``per_login`` tries; per source with a higher
    bound, so that trying many logins stops too. Keyed by the address, never the passcode.
    """

    per_login: int = 10
    per_source: int = 100
    window: float = 60.0
    _failures: dict[tuple[str, str], list[float]] = field(default_factory=dict)

    def _recent(self, key: tuple[str, str], now: float) -> int:
        recent = [t for t in self._failures.get(key, ()) if now - t < self.window]
        if recent:
            self._failures[key] = recent
        else:
            self._failures.pop(key, None)
        return len(recent)

    def blocked(self, source: str, login: str, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        return self._recent((source, login), now) >= self.per_login or self._recent((source, ""), now) >= \
            self.per_source

    def failed(self, source: str, login: str, now: float | None = None) -> float:
        """Count a failed login; returns its time, for :meth:`forgive`."""
        now = time.monotonic() if now is None else now
        for key in ((source, login), (source, "")):
            self._failures.setdefault(key, []).append(now)
        while len(self._failures) > 10000:  # many sources or logins must not grow this without bound
            self._failures.pop(next(iter(self._failures)))
        return now

    def forgive(self, source: str, login: str, at: float) -> None:
        """Take back the failure counted at ``at`` (the login it stood for succeeded)."""
        for key in ((source, login), (source, "")):
            times = self._failures.get(key)
            if times and at in times:
                times.remove(at)
                if not times:
                    del self._failures[key]


def authenticator(store: AccountStore, throttle: LoginThrottle | None = None, *,
                  offload: Offload = in_caller) -> Any:
    """The broker's ``authenticate(login, passcode, source)``: the account, or why the login is refused.

    ``offload`` runs the passcode check (see :data:`Offload`); the throttle is consulted and updated by the caller.
    """
    throttle = throttle or LoginThrottle()

    def authenticate(login: str, passcode: str, source: str) -> Account | str:
        if throttle.blocked(source, login):
            return f"login refused: too many failed logins from {source}; wait {throttle.window:g}s"
        if not login or not passcode:
            throttle.failed(source, login)
            return "login refused: CONNECT needs a login and a passcode"
        # Counted as failed until it succeeds: checks that run side by side (offloaded) must not all get past the
        # throttle before the first of them has failed.
        attempt = throttle.failed(source, login)
        try:
            account = store.authenticate(login, passcode, offload=offload)
        except AccountError as exc:
            throttle.forgive(source, login, attempt)
            log.error("%s", exc)
            return "login refused: the broker cannot read its accounts"
        if account is None:
            return "login refused: unknown login or wrong passcode"
        throttle.forgive(source, login, attempt)
        return account

    return authenticate


def enrol_local_gateway(settings: Settings, *, activemq: bool = False) -> BrokerCredentials:
    """A co-located node: give the gateway an account on this node's own Prime, once.

    Without stored credentials a new passcode is made and stored on both sides. With stored credentials whose
    login this Prime does not know yet (a new Prime data directory, the peer of an HA pair), the account is created
    from them. An account that exists is never changed: a passcode that no longer matches is reported by the log-in
    check that follows, not papered over.
    """
    store = AccountStore(accounts_path(settings))
    path = credentials_path(settings)
    if path.exists():
        credentials = gateway_credentials(settings)  # CredentialsMissing: a broken file is the operator's to fix
        entry = store.entries().get(credentials.login)
        if entry is None or (activemq and not entry.get("activemq_passcode")
                             and check_passcode(credentials.passcode, str(entry.get("scrypt", "")))):
            store.put(credentials.login, "gateway", credentials.passcode, activemq=activemq)
        return credentials
    credentials = BrokerCredentials(DEFAULT_GATEWAY_LOGIN, new_passcode())
    store.put(credentials.login, "gateway", credentials.passcode, activemq=activemq)
    store_gateway_credentials(settings, credentials)
    return credentials

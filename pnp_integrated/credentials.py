"""Secrets on disk: files only their owner can read, and the gateway's login to Prime's broker.

A secret file is written whole (a temporary file renamed over it), mode 0600 in a directory of mode 0700, so a
reader never sees half a secret and nobody else on the host sees it at all. The gateway's broker credentials are one
JSON object ``{"login": ..., "passcode": ...}`` in ``PNP_BROKER_CREDENTIALS_FILE`` (default
``<data_dir>/secrets/broker-credentials.json``), written by ``pnpp prime trust --login`` or, on a co-located node,
by ``pnpp run`` when it creates the gateway's account on its own Prime.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .config import Settings

LOGIN_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")
DEFAULT_GATEWAY_LOGIN = "pnp-gateway"


class CredentialsMissing(RuntimeError):
    """The gateway has no usable broker credentials; the message says what to run."""


@dataclass(frozen=True)
class BrokerCredentials:
    """A STOMP login; ``repr`` never shows the passcode (it ends up in logs otherwise)."""

    login: str
    passcode: str

    def __repr__(self) -> str:
        return f"BrokerCredentials(login={self.login!r}, passcode=***)"


def write_secret(path: Path, text: str) -> None:
    """Replace ``path`` atomically with ``text``, readable by its owner only (directory 0700)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def credentials_path(settings: Settings) -> Path:
    if settings.broker_credentials_file:
        return Path(settings.broker_credentials_file)
    return settings.data_dir / "secrets" / "broker-credentials.json"


def store_gateway_credentials(settings: Settings, credentials: BrokerCredentials) -> Path:
    path = credentials_path(settings)
    write_secret(path, json.dumps({"login": credentials.login, "passcode": credentials.passcode}) + "\n")
    return path


def gateway_credentials(settings: Settings) -> BrokerCredentials:
    """The login the gateway presents to Prime's broker; :class:`CredentialsMissing` says how to get one."""
    path = credentials_path(settings)
    hint = ("store the login Prime's administrator gave the gateway with `pnpp prime trust --from HOST:PORT "
            "--login LOGIN` (a co-located node's `pnpp run` creates one on its own Prime)")
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise CredentialsMissing(f"no broker credentials in {path}: {hint}") from None
    except OSError as exc:
        raise CredentialsMissing(f"cannot read the broker credentials in {path} ({exc.strerror}): {hint}") from None
    except ValueError:
        raise CredentialsMissing(f"{path} is not a JSON object with login and passcode: {hint}") from None
    login = data.get("login") if isinstance(data, dict) else None
    passcode = data.get("passcode") if isinstance(data, dict) else None
    if not isinstance(login, str) or not LOGIN_PATTERN.fullmatch(login) or not isinstance(passcode, str) \
            or not passcode:
        raise CredentialsMissing(f"{path} does not hold a valid login and passcode: {hint}")
    return BrokerCredentials(login, passcode)

"""Profile credentials at rest: sealed with the node's keys, so the database alone gives away no device password.

A profile may carry the login a device needs for the gateway's requests (Open PnP ``authRequired``). It is stored
as ``{"sealed": <Fernet token>, "key": <key id>}`` (Fernet: AES-128-CBC with HMAC-SHA256, from the cryptography
package), never as text. The keys live in ``PNP_PROFILE_KEYS_FILE`` (default ``<data dir>/secrets/profile-keys.json``,
0600), newest first: the newest seals, every one of them opens. The file is created with one key on first use.
``pnpp profile-keys rotate`` adds a key, seals every profile again with it, then drops the old ones. Both nodes of
an HA pair need the same file (the shared database holds what it opens).

Profiles written before sealing existed hold their credentials as a plain object; they are still read, and
:func:`seal_plaintext` (run by ``pnpp run`` at start and by ``rotate``) seals them.
"""

from __future__ import annotations

import json
import secrets
from pathlib import Path
from typing import Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from sqlalchemy import select

from .config import Settings
from .credentials import write_secret
from .models import Profile, db


class SealError(RuntimeError):
    """Credentials that this node's keys cannot open (the keys file is missing one, or the row was altered)."""


def keys_path(settings: Settings) -> Path:
    if settings.profile_keys_file:
        return Path(settings.profile_keys_file)
    return settings.data_dir / "secrets" / "profile-keys.json"


def _new_key() -> dict[str, str]:
    return {"id": secrets.token_hex(4), "key": Fernet.generate_key().decode()}


def load_keys(settings: Settings, *, create: bool = True) -> list[dict[str, str]]:
    """The node's keys, newest first; created (one key) when the file does not exist and ``create``.

    Never created while the database holds credentials sealed before (needs an app context then): a new key would
    seal new profiles with a key the lost file's restored copy does not have.
    """
    path = keys_path(settings)
    if not path.exists():
        if not create:
            return []
        if any(is_sealed(stored) for stored in db.session.scalars(select(Profile.credentials))):
            raise SealError(f"{path} is missing but profiles hold credentials sealed with it: restore it from the "
                            "other node or a backup (PNP_PROFILE_KEYS_FILE)")
        keys = [_new_key()]
        write_secret(path, json.dumps({"keys": keys}) + "\n")
        return keys
    try:
        keys = json.loads(path.read_text())["keys"]
        for key in keys:
            Fernet(key["key"].encode())  # a malformed key fails here, with the file named below
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SealError(f"{path}: not a profile keys file ({exc}); restore it from the other node or a backup "
                        "(PNP_PROFILE_KEYS_FILE)") from exc
    if not keys:
        raise SealError(f"{path} holds no key; restore it from the other node or a backup (PNP_PROFILE_KEYS_FILE)")
    return list(keys)


def _fernet(keys: list[dict[str, str]]) -> MultiFernet:
    return MultiFernet([Fernet(key["key"].encode()) for key in keys])


def is_sealed(stored: Any) -> bool:
    return isinstance(stored, dict) and set(stored) == {"sealed", "key"}


def seal(settings: Settings, values: dict[str, str], keys: list[dict[str, str]] | None = None) -> dict[str, str]:
    """What to store for ``values``: ``{}`` when there are none, else the sealed form."""
    if not values:
        return {}
    keys = keys or load_keys(settings)
    token = _fernet(keys).encrypt(json.dumps(values, sort_keys=True).encode()).decode()
    return {"sealed": token, "key": keys[0]["id"]}


def unseal(settings: Settings, stored: Any) -> dict[str, str]:
    """The credentials a profile row holds (a plain object from before sealing is returned as it is)."""
    if not stored:
        return {}
    if not is_sealed(stored):
        return {str(k): str(v) for k, v in dict(stored).items()}
    keys = load_keys(settings, create=False)
    try:
        return dict(json.loads(_fernet(keys).decrypt(stored["sealed"].encode())))
    except (InvalidToken, ValueError) as exc:
        raise SealError(f"profile credentials sealed with key {stored.get('key')!r} cannot be opened with the keys "
                        f"in {keys_path(settings)}: copy the keys file from the node that wrote them") from exc


def seal_plaintext(settings: Settings) -> int:
    """Seal every profile's credentials still stored in the clear; how many. Needs an app context; commits."""
    count = 0
    for profile in db.session.scalars(select(Profile)):
        if profile.credentials and not is_sealed(profile.credentials):
            profile.credentials = seal(settings, unseal(settings, profile.credentials))
            count += 1
    db.session.commit()
    return count


def rotate(settings: Settings) -> tuple[str, int]:
    """A new key seals every profile again; the old keys are dropped once nothing needs them. (new key id, count)

    The keys file holds the new key and the old ones while the rows change, so a crash in between leaves every row
    readable; the old keys go only after the commit.
    """
    old = load_keys(settings)
    new = _new_key()
    path = keys_path(settings)
    write_secret(path, json.dumps({"keys": [new, *old]}) + "\n")
    count = 0
    for profile in db.session.scalars(select(Profile)):
        if profile.credentials:
            profile.credentials = seal(settings, unseal(settings, profile.credentials), [new])
            count += 1
    db.session.commit()
    write_secret(path, json.dumps({"keys": [new]}) + "\n")
    return new["id"], count

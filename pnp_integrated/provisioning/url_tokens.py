"""Configuration URLs that only their device can use (``PNP_CONFIG_URL_TOKENS``).

The Config Web Service answers ``config.asp?DeviceID=<serial>``: without tokens, whoever knows or guesses a serial
reads that device's configuration, secrets included. With tokens, every configuration URL the gateway hands out
(the Open PnP config-upgrade, the CNS pull event, Prime's ``cns.config.push``) carries ``Expires`` and ``Token``,
an HMAC-SHA256 of the serial, the request's identifier and the expiry, and the service serves nothing without a
valid one. A token with an identifier is bound to that one pending request: once the device reports (or the step is
retried under a new identifier) the service no longer serves it, whatever the token says. A token without one (the
device's own configuration, ``cns.config.push``) lasts until it expires.

The HMAC key is derived from the node's profile keys (:mod:`pnp_integrated.sealing`), so both nodes of an HA pair,
which share that file, accept each other's URLs, and a key rotation keeps the URLs of the old key valid while the
file still holds it. Nothing is stored per URL: a repeated device question gets a freshly signed URL for the same
request.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Callable, Mapping

from ..config import Settings
from ..sealing import load_keys

EXPIRES, TOKEN = "Expires", "Token"
_PURPOSE = b"pnp-integrated config url token"
_TOKEN_BYTES = 18  # 144 bits: far beyond guessing, 24 URL-safe characters


def _mac(key: str, serial: str, identifier: str, expires: int) -> str:
    derived = hmac.new(base64.urlsafe_b64decode(key), _PURPOSE, hashlib.sha256).digest()
    message = f"{serial}\n{identifier}\n{expires}".encode()
    return base64.urlsafe_b64encode(hmac.new(derived, message, hashlib.sha256).digest()[:_TOKEN_BYTES]).decode()


def grant(settings: Settings, serial: str, identifier: str = "", *, now: float | None = None) -> dict[str, str]:
    """The query parameters that let ``serial`` fetch the configuration ``identifier`` names (its own without)."""
    expires = int((time.time() if now is None else now) + settings.config_url_token_lifetime)
    newest = load_keys(settings)[0]["key"]
    return {EXPIRES: str(expires), TOKEN: _mac(newest, serial, identifier, expires)}


def signer(settings: Settings) -> Callable[[str, str], Mapping[str, str]] | None:
    """What :class:`~pnp_integrated.urls.DeviceUrls` signs configuration URLs with; ``None`` when tokens are off."""
    if not settings.config_url_tokens:
        return None
    return lambda serial, identifier: grant(settings, serial, identifier)


def refusal(settings: Settings, serial: str, identifier: str, expires: str | None, token: str | None,
            *, now: float | None = None) -> str | None:
    """Why a configuration request may not be served (``None``: it may). Needs an app context (the keys file)."""
    if not settings.config_url_tokens:
        return None
    if not token or not expires or not token.isascii():
        return ("this gateway serves configurations only at the URL it sent the device (with its Token and "
                "Expires; PNP_CONFIG_URL_TOKENS is on)")
    if not expires.isascii() or not expires.isdigit() or len(expires) > 12:
        return "Expires is not a time"
    if int(expires) < (time.time() if now is None else now):
        return "the configuration URL has expired; the device gets a new one when it asks again"
    for key in load_keys(settings, create=False):
        if hmac.compare_digest(_mac(key["key"], serial, identifier, int(expires)), token):
            return None
    return "the Token is not valid for this request"

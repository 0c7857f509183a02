"""The primary's side of a gateway pair's enrolment: what ``pnpp setup`` sends its secondary, and how.

Every request goes over HTTPS to the secondary's monitoring port (it answers on every address, also once the
secondary's HTTPS port has moved to the pair's VIP), with the secondary's certificate pinned by its SHA-256
fingerprint: the handshake is made, the certificate compared with the pin, and only then is the token (or any
secret) sent on that connection. A certificate that does not match ends the connection with nothing sent.

The first enrolment uses the admin token the secondary's operator gave; once the secondary shares the pair's
database, the primary needs nobody's token: it issues one in that database for each request (revoked by its use or
right after), pinned to the certificate it stored at the enrolment (``certs/gateway-peer.pem``).
"""

from __future__ import annotations

import http.client
import json
import re
import ssl
import time
from dataclasses import dataclass
from typing import Any

from flask import Flask

from ..api.enrolment import PAIR_SETTINGS, certificate_fingerprint
from ..config import Settings
from ..credentials import BrokerCredentials

ENROLMENT_PATH = "/api/v1/ha/enrolment"
RESTART_WAIT_SECONDS = 180.0  # a node restarts in seconds; a loaded host or a slow database gets far more
FINGERPRINT = re.compile(r"[0-9a-f]{64}")


class SecondaryUnreachable(RuntimeError):
    """No TLS connection to the secondary (refused, timed out, not TLS)."""


class PinMismatch(RuntimeError):
    """The secondary presented another certificate than the one pinned: nothing was sent."""


class EnrolmentRefused(RuntimeError):
    """The secondary answered with an error; ``status`` and ``code`` are its, the message is its own words."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


def normalise_fingerprint(text: str) -> str:
    """A SHA-256 fingerprint as 64 lower-case hex digits, whatever colons and case it was typed with ("" if none)."""
    digits = re.sub(r"[\s:]", "", text).lower()
    return digits if FINGERPRINT.fullmatch(digits) else ""


def shown(fingerprint: str) -> str:
    """``fingerprint`` as ``pnpp certs show`` prints it (pairs of hex digits with colons)."""
    return ":".join(fingerprint[i:i + 2] for i in range(0, len(fingerprint), 2))


@dataclass(frozen=True)
class Presented:
    """The certificate the secondary presented: PEM, subject and SHA-256 fingerprint (64 hex digits)."""

    pem: str
    subject: str
    fingerprint: str


@dataclass(frozen=True)
class SecondaryLink:
    """The secondary's monitoring port over HTTPS, its certificate pinned to ``pin`` (64 hex digits)."""

    host: str
    port: int
    pin: str = ""
    timeout: float = 15.0

    @property
    def where(self) -> str:
        target = f"[{self.host}]" if ":" in self.host else self.host
        return f"https://{target}:{self.port}"

    def _connect(self) -> http.client.HTTPSConnection:
        context = ssl.create_default_context()
        context.check_hostname = False  # the pin is the check: a self-generated certificate names no CA we know
        context.verify_mode = ssl.CERT_NONE
        connection = http.client.HTTPSConnection(self.host, self.port, timeout=self.timeout, context=context)
        try:
            connection.connect()
        except (OSError, ssl.SSLError) as exc:
            connection.close()
            raise SecondaryUnreachable(f"no TLS connection to the secondary at {self.where}: "
                                       f"{getattr(exc, 'strerror', None) or exc}") from None
        return connection

    def presented(self) -> Presented:
        """What the secondary presents, fetched with a handshake and nothing sent."""
        connection = self._connect()
        try:
            return _presented(connection)
        finally:
            connection.close()

    def call(self, method: str, token: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        """One request to the enrolment operation; its JSON answer, or :class:`EnrolmentRefused`."""
        connection = self._connect()
        try:
            found = _presented(connection)
            if found.fingerprint != self.pin:
                raise PinMismatch(f"the secondary at {self.where} presented the certificate {found.subject} with "
                                  f"SHA-256 {shown(found.fingerprint)}, not the pinned {shown(self.pin)}: nothing "
                                  "was sent to it")
            data = json.dumps(body).encode() if body is not None else None
            headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
            if data is not None:
                headers["Content-Type"] = "application/json"
            try:
                connection.request(method, ENROLMENT_PATH, body=data, headers=headers)
                response = connection.getresponse()
                raw = response.read()
            except (OSError, http.client.HTTPException) as exc:
                raise SecondaryUnreachable(f"the secondary at {self.where} did not answer ({exc})") from None
        finally:
            connection.close()
        try:
            answer = json.loads(raw)
        except ValueError:
            answer = {}
        if response.status >= 400:
            error = answer.get("error", {}) if isinstance(answer, dict) else {}
            raise EnrolmentRefused(response.status, str(error.get("code", "")),
                                   str(error.get("message") or f"HTTP {response.status}"))
        return answer if isinstance(answer, dict) else {}


def _presented(connection: http.client.HTTPSConnection) -> Presented:
    from cryptography import x509

    sock = connection.sock
    assert isinstance(sock, ssl.SSLSocket)
    der = sock.getpeercert(binary_form=True)
    if der is None:
        raise SecondaryUnreachable(f"{connection.host}:{connection.port} presented no certificate")
    pem = ssl.DER_cert_to_PEM_cert(der)
    cert = x509.load_der_x509_certificate(der)
    return Presented(pem, cert.subject.rfc4514_string(), certificate_fingerprint(pem).replace(":", ""))


# ---- the pair's database and secrets ----------------------------------------------------------------------------
def pair_database(settings: Settings) -> Flask:
    """An app on the pair's database, its schema brought to this code's (an empty database is created).

    In a pair only the node that leads migrates a database in use: one at an older revision is refused here.
    """
    from flask_migrate import upgrade

    from ..database import migration_lock, schema_revisions
    from .common import app_of

    app = app_of(settings, check_schema=False)
    with app.app_context(), migration_lock():
        before, head = schema_revisions()
        if before is not None and before != head:
            raise RuntimeError(f"the pair's database is at revision {before} and this code needs {head}: upgrade it "
                               "with `pnpp db upgrade` on the node that leads it first")
        if before is None:
            upgrade()
    return app


def issue_pair_token(app: Flask, purpose: str) -> str:
    """An admin token in the pair's database, for one request of this setup to the secondary."""
    from ..api.tokens import issue_token

    with app.app_context():
        return issue_token(f"pnpp-setup-{purpose}", "admin", actor="pnpp setup")


def revoke_pair_tokens(app: Flask, purpose: str) -> None:
    from ..api.tokens import revoke_token

    with app.app_context():
        revoke_token(f"pnpp-setup-{purpose}", actor="pnpp setup")


def shared_secrets(app: Flask, settings: Settings, credentials: BrokerCredentials,
                   pair: Settings | None = None) -> dict[str, Any]:
    """What both nodes of the pair must hold: the broker login, the profile keys, Prime's certificates, this node's
    own certificate (the secondary pins it as its peer's) and the CA that issues both nodes' certificates."""
    from ..sealing import load_keys
    from ..tls import ensure_certificates, gateway_ca, leaf_certificate, trusted_prime_hosts

    with app.app_context():
        keys = load_keys(settings)  # created here when this node has none yet: the pair starts with one set
    trusted = trusted_prime_hosts(settings)
    untrusted = [host for host in settings.prime_addresses if host not in trusted]
    if untrusted:
        raise RuntimeError(f"this node does not trust Prime {', '.join(untrusted)} yet, so it has nothing to give "
                           f"the secondary: run `pnpp prime trust --from {untrusted[0]}:{settings.broker_port}` first")
    # This node's certificate as the pair's settings want it (their VIP and name): what the secondary pins.
    certificates = ensure_certificates(pair or settings)
    return {
        "broker_login": {"login": credentials.login, "passcode": credentials.passcode},
        "profile_keys": {"keys": keys},
        "prime_trust": {host: trusted[host] for host in settings.prime_addresses},
        "peer_certificate": leaf_certificate(certificates),
        "gateway_ca": gateway_ca(certificates),
    }


def secondary_settings(settings: Settings) -> dict[str, Any]:
    """The primary's pair settings as the secondary must hold them: its own address, this node as its peer."""
    values: dict[str, Any] = {name: getattr(settings, name) for name in PAIR_SETTINGS}
    values.update(gateway_role="secondary", node_address=settings.gateway_peer, gateway_peer=settings.node_address)
    return values


def wait_for_secondary(link: SecondaryLink, token: str, peer: str, accepted_at: float,
                       timeout: float = RESTART_WAIT_SECONDS) -> dict[str, Any]:
    """The secondary's facts once it answers, restarted since ``accepted_at`` (its clock), as the secondary of the
    pair with ``peer``; TimeoutError otherwise."""
    deadline = time.monotonic() + timeout
    last = "it has not answered yet"
    while time.monotonic() < deadline:
        try:
            facts = link.call("GET", token)
        except (SecondaryUnreachable, EnrolmentRefused) as exc:
            last = str(exc)  # restarting: refused connections, then a node still starting
        else:
            restarted = float(facts.get("started") or 0) > accepted_at
            if restarted and (facts.get("gateway_ha"), facts.get("gateway_role"), facts.get("gateway_peer")) == \
                    ("pair", "secondary", peer):
                return facts
            last = ("it answers as the secondary, not yet restarted" if not restarted else
                    f"it answers as {facts.get('gateway_role') or 'a single gateway'}, not as the secondary")
        time.sleep(1.0)
    raise TimeoutError(last)

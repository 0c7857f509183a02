"""``/api/v1/ha/enrolment``: a standalone gateway becomes the secondary of a gateway pair, and leaves it.

The primary's ``pnpp setup`` configures its secondary without a session on the secondary's host. The secondary runs
as a single standalone gateway; its operator gives the primary's operator an admin token of it and its certificate
fingerprint (``pnpp token create --role admin``, ``pnpp certs show``). The primary then, over HTTPS with that
certificate pinned:

``GET``
    asks what the gateway is (mode, pair, role, ports) and whether it can be enrolled now;
``POST``
    sends the pair's settings and the secrets both nodes share (the gateway's login on Prime's broker, the profile
    keys, Prime's certificates, the primary's own certificate). The gateway checks that the result would start,
    keeps what it had before, writes its configuration file and the secrets (0600) and asks ``pnpp run`` to restart
    it: it comes back as the pair's secondary, on the pair's database;
``DELETE``
    tells the secondary to leave: it puts back the configuration and secrets it had before the enrolment and stops,
    so it never keeps running with the pair's VIP.

Only an admin token, only over HTTPS (the answer to plain HTTP is a 403 that names the HTTPS port); the token a
``POST`` or ``DELETE`` came with is revoked by that use. Restarting and stopping go through ``pnpp run``: it
passes its process id to gunicorn in :data:`RUN_PID_VARIABLE`, and the worker signals it once the answer is sent
(:data:`RESTART_SIGNAL` to restart with the new settings, SIGTERM to stop). A gateway not run by ``pnpp run``, or
without a configuration file (``PNP_CONFIG``), cannot be enrolled, and says so in the ``GET`` answer.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import tempfile
import time
import tomllib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from cryptography import x509
from flask import Response, request

from ..config import ConfigError, Settings, load_settings
from ..context import current_settings, node_role
from ..credentials import credentials_path, write_secret
from ..models import db, utcnow
from ..sealing import keys_path
from ..tls import trust_path
from ..version import __version__
from . import blueprint, schemas
from .auth import audit, current_token
from .contract import operation
from .errors import ApiError, conflict, invalid
from .reading import json_body, read
from .schemas import PAIR_SETTINGS

log = logging.getLogger(__name__)

RUN_PID_VARIABLE = "PNPP_RUN_PID"  # set by `pnpp run` for gunicorn: who restarts or stops the node
RESTART_SIGNAL = signal.SIGUSR1
PEER_CERTIFICATE = "gateway-peer.pem"  # the other gateway's certificate, as pinned at the enrolment
BEFORE_PAIR = "before-pair.json"  # what the enrolment replaced, put back when the node leaves the pair

# What a node that leaves the pair drops when it has no record of what it was before.
PAIR_ONLY_SETTINGS = ("gateway_ha", "gateway_role", "gateway_peer", "gateway_failback", "gateway_hold_down",
                      "gateway_vip_mover", "gateway_vip_interface", "gateway_vip_prefix", "virtual_host_name",
                      "node_address", "database_url")
# When this worker started (its app is built at its start): a primary that enrolled the node waits for workers that
# started after its enrolment was answered, not for the ones that answered it.
WORKER_STARTED = time.time()


# ---- the configuration file ---------------------------------------------------------------------------------------
def configuration_text(values: dict[str, Any]) -> str:
    """A flat TOML document (strings, integers, floats, booleans) in the order given, as ``pnpp setup`` writes it."""
    lines = ["# pnp-integrated gateway settings, written by `pnpp setup`", ""]
    for key, value in values.items():
        if isinstance(value, bool):
            rendered = "true" if value else "false"
        elif isinstance(value, int | float):
            rendered = repr(value)
        else:
            rendered = json.dumps(str(value))  # a JSON string is a valid TOML basic string
        lines.append(f"{key} = {rendered}")
    return "\n".join(lines) + "\n"


def read_configuration(path: Path) -> dict[str, Any]:
    """The settings in the TOML file ``path``, tables flattened ({} when it does not exist).

    Raises ``OSError`` or ``tomllib.TOMLDecodeError`` for a file that cannot be read.
    """
    if not path.exists():
        return {}
    with path.open("rb") as fh:
        data = tomllib.load(fh)
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(value)
        else:
            flat[key] = value
    return flat


def peer_certificate_path(settings: Settings) -> Path:
    """Where a node of a pair keeps the other node's certificate, pinned when the secondary was enrolled."""
    return settings.certs_dir / PEER_CERTIFICATE


def certificate_fingerprint(pem: str) -> str:
    """SHA-256 of a PEM certificate, as ``pnpp certs show`` prints it (lower-case hex, colons)."""
    from cryptography.hazmat.primitives import hashes

    return x509.load_pem_x509_certificate(pem.encode()).fingerprint(hashes.SHA256()).hex(":")


def _before_pair_path(settings: Settings) -> Path:
    return settings.data_dir / "secrets" / BEFORE_PAIR


# ---- what this node is ----------------------------------------------------------------------------------------------
def _config_path() -> Path | None:
    value = os.environ.get("PNP_CONFIG", "")
    return Path(value) if value else None


def _run_pid() -> int | None:
    try:
        return int(os.environ.get(RUN_PID_VARIABLE, ""))
    except ValueError:
        return None


def enrolment_refusal(settings: Settings) -> str:
    """Why this gateway cannot be enrolled (or leave a pair) now; empty when it can."""
    if _config_path() is None:
        return ("this gateway runs without a configuration file: an enrolment writes its settings there. Start it "
                "with PNP_CONFIG=<file> pnpp run (pnpp setup writes one)")
    if _run_pid() is None:
        return ("this gateway is not run by `pnpp run`, which restarts it into the pair (or stops it when it "
                "leaves); start it with pnpp run")
    if not settings.standalone:
        return ("this gateway is integrated (on a Prime server, following Prime's HA); only a standalone gateway "
                "can be the secondary of a gateway pair: configure it with pnpp setup --mode standalone")
    return ""


def _facts(settings: Settings) -> dict[str, Any]:
    refusal = enrolment_refusal(settings)
    return {
        "node": settings.node_name, "version": __version__, "started": WORKER_STARTED, "mode": settings.mode,
        "gateway_ha": settings.gateway_ha,
        "gateway_role": settings.gateway_role if settings.gateway_in_pair else "",
        "gateway_peer": settings.gateway_peer, "vip": settings.vip, "node_address": settings.node_address,
        "state": node_role().state,
        "ports": {"http": settings.http_port, "https": settings.https_port, "cns_port_base": settings.cns_port_base},
        "enrolment": {"possible": not refusal, "refusal": refusal},
    }


def _require_https() -> None:
    if request.scheme != "https":
        settings = current_settings()
        raise ApiError(403, "https_required", "an enrolment travels only over HTTPS: use https://<this gateway>:"
                       f"{settings.monitoring_port} (or the HTTPS port {settings.https_port})")


# An enrolment: admin tokens only, HTTPS only.
_ENROLMENT_ERRORS = {
    403: "a read token, or the request came over plain HTTP (error.code https_required: an enrolment travels only "
         "over HTTPS)",
    409: "this gateway cannot be enrolled or leave now (the error says why): it has no configuration file "
         "(PNP_CONFIG), is not run by `pnpp run`, is integrated, is in another pair (or is not a secondary, to "
         "leave), or its environment sets a pair setting"}
_REFUSED = ("with these settings the gateway would not start (a rule of its configuration, named in the message), it "
            "cannot reach the pair's database, a certificate is not PEM, a profile key is not a Fernet key, or "
            "prime_trust lacks a Prime address the settings name")


@blueprint.get("/ha/enrolment")
@operation(answer=schemas.EnrolmentFacts, error_descriptions=_ENROLMENT_ERRORS)
def enrolment_facts() -> schemas.EnrolmentFacts:
    """What this gateway is, and whether it can be enrolled as a pair's secondary now (admin tokens only)

    For the primary that is about to enrol it (or waits for it to come back).
    """
    _require_https()
    if current_token().role != "admin":
        raise ApiError(403, "forbidden", f"token {current_token().name!r} has the read role; an enrolment needs admin")
    return schemas.EnrolmentFacts.model_validate(_facts(current_settings()))


# ---- the enrolment ------------------------------------------------------------------------------------------------


def _merged(existing: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """``existing`` with ``changes`` applied; an empty string removes the setting (its default applies)."""
    values = dict(existing)
    for key, value in changes.items():
        if value == "":
            values.pop(key, None)
        else:
            values[key] = value
    return values


def _environment_overrides(values: dict[str, Any], names: Iterable[str]) -> list[str]:
    """The ``PNP_*`` variables of this gateway's environment that would override what the file now says."""
    overrides = []
    for name in names:
        variable = f"PNP_{name.upper()}"
        if os.environ.get(variable, "") != "" and os.environ[variable] != str(values.get(name, "")):
            overrides.append(variable)
    return overrides


def _settings_from_file(text: str, directory: Path) -> Settings:
    """The settings this gateway would start with if its configuration file held ``text`` (its environment too)."""
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".enrolment.", suffix=".toml")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        return load_settings(environ={**os.environ, "PNP_CONFIG": tmp})
    finally:
        Path(tmp).unlink(missing_ok=True)


def _database_problem(url: str) -> str:
    """Why this gateway cannot reach the pair's database (empty when it can)."""
    from sqlalchemy import create_engine, text

    engine = create_engine(url, connect_args={"connect_timeout": 5} if url.startswith("postgresql") else {})
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except Exception as exc:  # the driver's own words are what the primary's operator needs
        return " ".join(str(getattr(exc, "orig", None) or exc).split())
    finally:
        engine.dispose()
    return ""


def _replaced_files(settings: Settings, config: Path) -> list[Path]:
    """Every file an enrolment writes, in the order a node that leaves puts them back."""
    from ..tls import TRUST_INDEX, cert_paths

    certs = cert_paths(settings)
    own_identity = [certs.ca, certs.ca_key, certs.cert, certs.key] if certs.generated else []
    return [config, credentials_path(settings), keys_path(settings), trust_path(settings),
            settings.certs_dir / TRUST_INDEX, peer_certificate_path(settings), *own_identity]


def _keep_what_was_there(settings: Settings, files: list[Path]) -> None:
    """Record the files the first enrolment replaces (a later one, from the same primary, keeps that record)."""
    record = _before_pair_path(settings)
    if record.exists():
        return
    before = {str(path): path.read_text() if path.exists() else None for path in files}
    write_secret(record, json.dumps({"files": before}) + "\n")


def _write_pair(settings: Settings, config: Path, text: str, secrets: dict[str, Any]) -> str:
    """Write the shared secrets, then the configuration file (the switch: it names the pair's database); the
    certificate this node presents from its restart on, issued by the pair's CA ("" when none was sent)."""
    from ..tls import TRUST_INDEX, adopt_gateway_ca, cert_paths, store_prime_trust

    write_secret(credentials_path(settings), json.dumps(secrets["broker_login"]) + "\n")
    write_secret(keys_path(settings), json.dumps(secrets["profile_keys"]) + "\n")
    (settings.certs_dir / TRUST_INDEX).unlink(missing_ok=True)  # exactly the primary's Prime servers, no others
    for host, pems in secrets["prime_trust"].items():
        store_prime_trust(settings, host, pems)
    write_secret(peer_certificate_path(settings), secrets["peer_certificate"])
    certificate = ""
    if secrets.get("gateway_ca") and cert_paths(settings).generated:
        # Devices that trust the primary's CA trust this node's certificate after a failover.
        certificate = adopt_gateway_ca(settings, secrets["gateway_ca"]["certificate"], secrets["gateway_ca"]["key"])
    write_secret(config, text)
    return certificate


def _after_the_answer(response: Response, signum: int, what: str) -> Response:
    """Signal ``pnpp run`` once the answer has gone out (the primary reads it before the node goes away)."""
    pid = _run_pid()

    def send() -> None:
        if pid is not None:
            log.warning("%s: signalling pnpp run (pid %d)", what, pid)
            os.kill(pid, signum)

    response.call_on_close(send)
    return response


def _use_up_token(action: str, target: str, **detail: Any) -> None:
    """Revoke the token this request came with (an enrolment token serves once) and record who did what."""
    token = current_token()
    token.revoked_at = utcnow()
    audit(action, target, token=token.name, **detail)
    db.session.commit()


def _checked_request(settings: Settings) -> tuple[Path, dict[str, Any], dict[str, Any]]:
    """The configuration file, the sent settings and secrets, once every rule an enrolment obeys holds."""
    refusal = enrolment_refusal(settings)
    if refusal:
        raise conflict(refusal)
    config = _config_path()
    assert config is not None
    body = read(schemas.Enrolment, json_body())
    sent: dict[str, Any] = body.settings.model_dump()
    secrets = body.secrets.model_dump()
    if settings.gateway_in_pair and (settings.gateway_role, settings.gateway_peer) != ("secondary",
                                                                                      sent["gateway_peer"]):
        raise conflict(f"this gateway is already the {settings.gateway_role} of the pair with {settings.gateway_peer}:"
                       f" remove HA there (pnpp setup, answering n) before {sent['gateway_peer']} enrols it")
    missing = [a for a in (sent["prime_address"], sent["prime_secondary_address"]) if a and a not in
               secrets["prime_trust"]]
    if missing:
        raise invalid(f"prime_trust names no certificate of Prime {', '.join(missing)}: the secondary could not "
                      "verify it", fields=["secrets"])
    return config, sent, secrets


@blueprint.post("/ha/enrolment")
@operation(202, schemas.EnrolmentAccepted, errors=(409, 422), refused=_REFUSED, body=schemas.Enrolment,
           error_descriptions=_ENROLMENT_ERRORS)
def enrol() -> Response:
    """Become the secondary of a gateway pair: the settings and shared secrets are written (0600) and `pnpp run`
    restarts the node into the pair; the token is revoked by this use

    The body describes the pair; ``pnpp run`` restarts the node once the answer is out.
    """
    _require_https()
    settings = current_settings()
    config, sent, secrets = _checked_request(settings)
    try:
        values = _merged(read_configuration(config), sent)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise conflict(f"this gateway cannot read its configuration file {config} ({exc})") from exc
    overridden = _environment_overrides(values, PAIR_SETTINGS)
    if overridden:
        raise conflict(f"this gateway's environment sets {', '.join(overridden)}, which would override the pair's "
                       "settings in its configuration file: unset them where it is started, then enrol it again")
    text = configuration_text(values)
    try:
        future = _settings_from_file(text, config.parent)
    except ConfigError as exc:
        raise invalid(f"with these settings this gateway would not start: {exc}", fields=["settings"]) from exc
    problem = _database_problem(future.sqlalchemy_url)
    if problem:
        raise invalid(f"this gateway cannot reach the pair's database {future.sqlalchemy_url.split('@')[-1]}: "
                      f"{problem}", fields=["settings"])
    files = _replaced_files(future, config)
    _keep_what_was_there(future, files)
    certificate = _write_pair(future, config, text, secrets)
    _use_up_token("ha.enrolment", sent["gateway_peer"], vip=sent["vip"], role="secondary")
    log.warning("enrolled as the secondary of the gateway pair with %s (VIP %s): restarting", sent["gateway_peer"],
                sent["vip"])
    accepted = schemas.EnrolmentAccepted(node=future.node_name, gateway_role="secondary",
                                         gateway_peer=future.gateway_peer, vip=future.vip, restarting=True,
                                         config_file=str(config), at=time.time(), certificate=certificate)
    answer = Response(accepted.model_dump_json(), status=202, mimetype="application/json")
    return _after_the_answer(answer, RESTART_SIGNAL, "enrolled")


def _restore(settings: Settings, config: Path) -> bool:
    """Put back what the enrolment replaced; without its record, drop the pair's settings. Whether it was there."""
    record = _before_pair_path(settings)
    try:
        before: dict[str, str | None] = json.loads(record.read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError):
        values = _merged(read_configuration(config), dict.fromkeys(PAIR_ONLY_SETTINGS, ""))
        values["vip"] = settings.node_address or settings.vip
        write_secret(config, configuration_text(values))
        return False
    for name, text in before.items():
        path = Path(name)
        if text is None:
            path.unlink(missing_ok=True)
        else:
            write_secret(path, text)
    record.unlink()
    return True


@blueprint.delete("/ha/enrolment")
@operation(202, schemas.PairLeft, errors=(409,), error_descriptions=_ENROLMENT_ERRORS)
def leave() -> Response:
    """Leave the pair: the configuration and secrets from before the enrolment come back and the node stops; the
    token is revoked by this use"""
    _require_https()
    settings = current_settings()
    refusal = enrolment_refusal(settings)
    if refusal:
        raise conflict(refusal)
    if not (settings.gateway_in_pair and settings.gateway_role == "secondary"):
        raise conflict("this gateway is not the secondary of a gateway pair: there is no pair to leave")
    config = _config_path()
    assert config is not None
    _use_up_token("ha.leave", settings.gateway_peer, vip=settings.vip)
    restored = _restore(settings, config)
    log.warning("left the gateway pair with %s (VIP %s): stopping", settings.gateway_peer, settings.vip)
    left = schemas.PairLeft(node=settings.node_name, left=True, stopping=True, restored=restored)
    answer = Response(left.model_dump_json(), status=202, mimetype="application/json")
    return _after_the_answer(answer, signal.SIGTERM, "left the pair")


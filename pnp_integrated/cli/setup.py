"""``pnpp setup`` and ``pnpp setup advance``: write the gateway's TOML configuration, as Prime's setup does.

``setup`` asks what Prime's asks: it detects the co-located Prime's HA mode from its health monitor, shows the virtual
IP the gateway will follow and asks for confirmation. ``setup advance`` also asks for the node's name and address,
the database, the data directory, the ports and the TLS floor. Every question has a flag for unattended use; with
``--yes`` nothing is asked and unanswered settings keep their current (or default) values.

The gateway's login on Prime's broker is asked for too, as Prime's setup asks it: by ``setup advance`` always, by
``setup`` when the broker the gateway follows is not this node's own simulated Prime (whose ``pnpp run`` creates the
gateway's account itself). The passcode is typed hidden and twice, or read from ``--broker-passcode-file`` or the
``PNP_BROKER_PASSCODE`` variable, never from the command line (every user of the host can read a process's
arguments); it is stored 0600 in ``PNP_BROKER_CREDENTIALS_FILE`` once the settings are written, and never shown.

Both commands first ask the gateway's mode. Integrated (on a Prime server) is the flow above. Standalone (a host of
its own, no co-located Prime: nothing to detect) asks Prime's HA mode and address(es) (primary and secondary with
``different-ip``), then "Configure HA": without HA, the address devices reach the gateway on; with HA (a gateway
pair), the pair's VIP, its virtual host name, this gateway's own address, the secondary's address, the database both
share, failback 0 (manual, the default Prime recommends) or 1 (automatic, then the hold-down), and the secondary's
admin token. The node that runs it is the primary; it then enrols the secondary itself over HTTPS, its certificate
pinned by the fingerprint the operator confirms (see :mod:`.enrolment` and ``docs/security.md``). Answering "n" on
the primary of a pair tells the secondary to leave it: the secondary puts back what it had and stops.

Prime HA with different primary and secondary addresses cannot be followed by an integrated gateway: the documented
message is shown and setup offers standalone mode instead; declined (or unattended), nothing is written and the exit
code is 2.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import click

from ..config import (
    DIFFERENT_IP_REFUSAL,
    HA_MODES,
    MODES,
    TLS_VERSIONS,
    VIP_MOVERS,
    ConfigError,
    Settings,
    load_settings,
)
from ..credentials import (
    LOGIN_PATTERN,
    BrokerCredentials,
    CredentialsMissing,
    credentials_path,
    gateway_credentials,
    store_gateway_credentials,
)

DEFAULT_CONFIG = "pnp-integrated.toml"
# Written in this order; the advanced settings follow the basic ones.
BASIC_KEYS = ("mode", "ha_mode", "prime_address", "prime_secondary_address", "vip", "gateway_ha", "virtual_host_name",
              "node_address", "gateway_peer", "gateway_role", "gateway_failback", "gateway_hold_down",
              "gateway_vip_mover", "gateway_vip_interface", "gateway_vip_prefix", "database_url")
ADVANCED_KEYS = ("node_name", "node_address", "data_dir", "database_url", "http_port", "https_port",
                 "cns_port_base", "health_port", "workers", "tls_min_version", "broker_client_cert_file",
                 "broker_client_key_file")
# Settings of a standalone gateway, and of its pair; an integrated gateway has none of them.
STANDALONE_KEYS = ("mode", "prime_address", "prime_secondary_address")
PAIR_KEYS = ("gateway_ha", "gateway_peer", "gateway_role", "gateway_failback", "gateway_hold_down",
             "gateway_vip_mover", "gateway_vip_interface", "gateway_vip_prefix", "virtual_host_name")
PASSCODE_VARIABLE = "PNP_BROKER_PASSCODE"  # read by setup only; the gateway reads the credentials file
TOKEN_VARIABLE = "PNP_SECONDARY_TOKEN"  # read by setup only: the secondary's admin token, for its enrolment
LOGIN_RULE = "use 1-64 letters, digits and . _ @ - (starting with a letter or digit)"
HOST_NAME = re.compile(r"(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]"
                       r"{0,61}[A-Za-z0-9])?)*")
FAILBACK_ANSWERS = {"0": "manual", "1": "auto", "manual": "manual", "auto": "auto"}


def _fail(message: str, code: int = 2) -> NoReturn:
    click.echo(f"pnpp setup: {message}", err=True)
    sys.exit(code)


@dataclass(frozen=True)
class PrimeFacts:
    """What the co-located Prime's health monitor said (``None`` fields when it did not answer)."""

    reachable: bool
    node: str = ""
    role: str = ""
    state: str = ""
    ha_mode: str = ""
    vip: str = ""
    peer: str = ""

    def describe(self, port: int) -> str:
        if not self.reachable:
            return (f"No Prime Infrastructure health monitor answered on https://127.0.0.1:{port}/health: "
                    "the HA mode cannot be detected.")
        peer = f", peer {self.peer}" if self.peer else ""
        return (f"Prime Infrastructure on this host: {self.node} ({self.role}, {self.state}{peer}); "
                f"HA mode: {self.ha_mode or 'unknown'}; virtual IP: {self.vip or 'none'}")


def detect_prime(settings: Settings) -> PrimeFacts:
    """Ask the co-located Prime's health monitor who it is and how its HA is set up."""
    from ..ha import prime_health

    health = prime_health(settings, timeout=3.0)
    if health is None:
        return PrimeFacts(False)
    return PrimeFacts(True, **{f.name: str(health.get(f.name, "") or "")
                               for f in dataclasses.fields(PrimeFacts) if f.name != "reachable"})


def read_config(path: Path) -> dict[str, Any]:
    """The settings already in ``path`` (flattened like :func:`~pnp_integrated.config.load_settings` does)."""
    from ..api.enrolment import read_configuration

    try:
        return read_configuration(path)
    except tomllib.TOMLDecodeError as exc:
        _fail(f"{path} is not valid TOML ({exc}); fix or remove it first")
    except OSError as exc:
        _fail(f"cannot read {path} ({exc.strerror or exc})")


def toml_text(values: dict[str, Any]) -> str:
    """A flat TOML document (strings, integers, floats, booleans) in the order given."""
    from ..api.enrolment import configuration_text

    return configuration_text(values)


def write_config(path: Path, values: dict[str, Any]) -> None:
    """Replace ``path`` atomically (a reader never sees half a file); 0600, as it may name a database password."""
    from ..credentials import write_secret

    write_secret(path, toml_text(values))


def _ip(text: str) -> str:
    try:
        return str(ipaddress.ip_address(text.strip()))
    except ValueError:
        raise click.BadParameter(f"{text!r} is not an IP address") from None


def _host_name(text: str) -> str:
    name = text.strip()
    if name and not HOST_NAME.fullmatch(name):
        raise click.BadParameter(f"{name!r} is not a host name (letters, digits, '-' and dots)")
    return name


def _ask(label: str, given: Any, default: Any, interactive: bool, value_type: Any = str) -> Any:
    """The flag's value if given; otherwise a prompt (or the default with --yes)."""
    if given is not None:
        return given
    if not interactive:
        return default
    if callable(value_type) and value_type in (_ip, _host_name):
        return click.prompt(label, default=default, value_proc=value_type)
    return click.prompt(label, default=default, type=value_type)


def _ask_ip(label: str, flag: str, given: str | None, default: str, interactive: bool) -> str:
    """An address from its flag, a prompt (asked again until it is one) or the default; ``flag`` names it in errors."""
    if given is None and not interactive and not default:
        _fail(f"{flag} is needed: {label[0].lower()}{label[1:]}")
    try:
        return _ip(_ask(label, given, default or None, interactive, _ip))
    except click.BadParameter as exc:
        _fail(f"{flag}: {exc.message}")


def _login(text: str) -> str:
    login = text.strip()
    if login and not LOGIN_PATTERN.fullmatch(login):
        raise click.BadParameter(f"{login!r} is not a broker login: {LOGIN_RULE}")
    return login


def _runtime_settings(settings: Settings) -> Settings:
    """``settings`` as the gateway will run: its PNP_* variables override the file for where the login is kept."""
    data_dir = os.environ.get("PNP_DATA_DIR")
    credentials_file = os.environ.get("PNP_BROKER_CREDENTIALS_FILE")
    return dataclasses.replace(settings, data_dir=Path(data_dir) if data_dir else settings.data_dir,
                               broker_credentials_file=credentials_file or settings.broker_credentials_file)


def _colocated(prime: PrimeFacts, vip: str) -> bool:
    """Whether the broker the gateway follows is this node's own simulated Prime (its `pnpp run` enrols the gateway)."""
    from ..ha.vip import vip_is_local

    return prime.reachable or ipaddress.ip_address(vip).is_loopback or vip_is_local(vip)


def _given_secret(source: Any, variable: str, flag: str) -> str | None:
    """A secret from its file flag ('-': stdin) or its variable; ``None`` when neither is given."""
    if source is not None:
        secret = source.read().strip()
        where = "stdin" if source.name == "<stdin>" else source.name
        if not secret:
            _fail(f"{flag}: {where} is empty")
        return str(secret)
    secret = os.environ.get(variable, "").strip()
    return secret or None


def _given_passcode(options: dict[str, Any]) -> str | None:
    """The passcode from --broker-passcode-file or PNP_BROKER_PASSCODE (``None`` when neither is given)."""
    source = options.get("broker_passcode_file")
    if source is not None:
        passcode = source.read().strip()
        where = "stdin" if source.name == "<stdin>" else source.name
        if not passcode:
            _fail(f"--broker-passcode-file: {where} holds no passcode")
        return str(passcode)
    passcode = os.environ.get(PASSCODE_VARIABLE, "").strip()
    return passcode or None


def ask_broker_login(options: dict[str, Any], settings: Settings, ask: bool,
                     interactive: bool) -> BrokerCredentials | None:
    """The gateway's new broker login and passcode, or ``None`` to keep what is stored (or nothing, co-located)."""
    login = options.get("broker_login")
    passcode = _given_passcode(options)
    if login is not None:
        try:
            login = _login(login)
        except click.BadParameter as exc:
            _fail(f"--broker-login: {exc.message}")
        if not login:
            _fail(f"--broker-login is empty: {LOGIN_RULE}")
    path = credentials_path(settings)
    try:
        stored: str | None = gateway_credentials(settings).login
    except CredentialsMissing:
        stored = None
    if login is None and interactive and ask:
        click.echo(f"The gateway logs in to Prime's broker with the login and passcode Prime's administrator gives it"
                   f" (kept in {path}" + (f", now {stored!r})." if stored else ")."))
        keep = "keep the stored one" if stored else ("none yet; `pnpp prime trust --login` stores one later"
                                                      if settings.standalone else
                                                      "none yet; a co-located `pnpp run` creates one")
        login = click.prompt(f"Gateway's broker login (empty: {keep})", default="", show_default=False,
                             value_proc=_login) or None
    if login is None:
        if passcode is not None and not interactive:
            _fail(f"a passcode was given (--broker-passcode-file or {PASSCODE_VARIABLE}) without --broker-login: "
                  "say which login it is for")
        return None
    if passcode is None:
        if not interactive:
            _fail(f"--broker-login {login!r} needs its passcode: --broker-passcode-file FILE ('-' for stdin) or "
                  f"the {PASSCODE_VARIABLE} variable (never on the command line)")
        passcode = click.prompt(f"Passcode of {login!r} on Prime's broker", hide_input=True,
                                confirmation_prompt="Once more, to confirm").strip()
    return BrokerCredentials(login, passcode)


# ---- the questions ------------------------------------------------------------------------------------------------
@dataclass
class Answers:
    """What setup has gathered so far: the file's values as they will be written, and what to do besides."""

    values: dict[str, Any]
    current: dict[str, Any]
    interactive: bool
    asked: set[str] = dataclasses.field(default_factory=set)  # settings already asked (advance skips them)
    secondary_token: str | None = None

    def was(self, key: str) -> Any:
        return self.current[key]

    @property
    def was_pair_primary(self) -> bool:
        return (self.was("mode"), self.was("gateway_ha"), self.was("gateway_role")) == ("standalone", "pair",
                                                                                        "primary")

    def drop(self, keys: tuple[str, ...]) -> None:
        for key in keys:
            self.values.pop(key, None)


def _ask_integrated(options: dict[str, Any], prime: PrimeFacts, answers: Answers) -> bool:
    """Prime's HA mode and the VIP the gateway follows; False when Prime HA uses different addresses and the
    operator took the offer of standalone mode instead."""
    interactive = answers.interactive
    detected_mode = prime.ha_mode if prime.ha_mode in HA_MODES else ""
    default_mode = detected_mode or str(answers.was("ha_mode"))
    ha_mode = _ask("Prime HA mode", options["ha_mode"], default_mode, interactive, click.Choice(HA_MODES))
    if ha_mode == "different-ip":
        click.echo(f"pnpp setup: {DIFFERENT_IP_REFUSAL}", err=True)
        if interactive and click.confirm("Set this gateway up in standalone mode instead (a host of its own that "
                                         "follows Prime's primary and secondary addresses)?", default=True):
            answers.values["ha_mode"] = ha_mode
            return False
        click.echo("Nothing was written.", err=True)
        if not interactive:
            click.echo("Unattended, a standalone gateway is set up with: pnpp setup --mode standalone --ha-mode "
                       "different-ip --prime-address PRIMARY --prime-secondary-address SECONDARY ...", err=True)
        sys.exit(2)
    if ha_mode == "vip":
        default_vip = prime.vip if prime.reachable and prime.vip else str(answers.was("vip"))
        label = "Virtual IP of the Prime HA pair (the gateway follows it)"
    else:
        default_vip = str(answers.was("vip"))
        label = "Address devices reach the gateway on"
    vip = _ask_ip(label, "--vip", options["vip"], default_vip, interactive)
    answers.drop((*STANDALONE_KEYS, *PAIR_KEYS))
    answers.values.update(ha_mode=ha_mode, vip=vip)
    return True


def _ask_prime_addresses(options: dict[str, Any], answers: Answers, ha_mode: str | None) -> None:
    """Standalone: Prime's HA mode and where its server(s) are (nothing to detect: Prime is on other hosts)."""
    interactive = answers.interactive
    if ha_mode is None:
        ha_mode = _ask("Prime HA mode (none; vip: one virtual IP; different-ip: primary and secondary addresses)",
                       options["ha_mode"], str(answers.was("ha_mode")), interactive, click.Choice(HA_MODES))
    first = {"none": "Prime server's address", "vip": "Virtual IP of the Prime HA pair",
             "different-ip": "Prime primary server's address"}[ha_mode]
    answers.values.update(mode="standalone", ha_mode=ha_mode,
                          prime_address=_ask_ip(first, "--prime-address", options["prime_address"],
                                                str(answers.was("prime_address")), interactive))
    if ha_mode == "different-ip":
        answers.values["prime_secondary_address"] = _ask_ip(
            "Prime secondary server's address", "--prime-secondary-address", options["prime_secondary_address"],
            str(answers.was("prime_secondary_address")), interactive)
    else:
        answers.values.pop("prime_secondary_address", None)


def _ask_gateway_ha(options: dict[str, Any], answers: Answers, advanced: bool) -> bool:
    """Prime's "Configure HA (y/n)" and, with HA, the pair; whether this gateway is the primary of a pair."""
    interactive = answers.interactive
    was_pair = answers.was("gateway_ha") == "pair"
    given = options["gateway_ha"]
    if given is not None:
        pair = given == "pair"
    elif interactive:
        pair = click.confirm("Configure HA (y/n): a gateway pair, this gateway its primary, with a VIP of its own",
                             default=was_pair)
    else:
        pair = was_pair
    values = answers.values
    if not pair:
        own = str(answers.was("node_address")) if was_pair and answers.was("node_address") else str(answers.was("vip"))
        values["vip"] = _ask_ip("Address devices reach the gateway on", "--vip", options["vip"], own, interactive)
        answers.drop(PAIR_KEYS)
        if was_pair:
            values.pop("node_address", None)
        return False
    values["vip"] = _ask_ip("Gateway virtual IP (devices reach the pair on it)", "--vip", options["vip"],
                            str(answers.was("vip")) if was_pair else "", interactive)
    try:
        values["virtual_host_name"] = _host_name(_ask("Virtual host name of the gateway VIP (empty: none)",
                                                      options["virtual_host_name"], answers.was("virtual_host_name"),
                                                      interactive, _host_name))
    except click.BadParameter as exc:
        _fail(f"--virtual-host-name: {exc.message}")
    values["node_address"] = _ask_ip("This gateway's own address (not the VIP)", "--node-address",
                                     options["node_address"], str(answers.was("node_address")), interactive)
    values["gateway_peer"] = _ask_ip("Secondary gateway's address", "--secondary-address", options["gateway_peer"],
                                     str(answers.was("gateway_peer")), interactive)
    shared = str(answers.was("database_url"))
    url = _ask("Database both gateways share (postgresql+psycopg://user:password@host/name)",
               options["database_url"], shared if shared.startswith("postgresql") else None, interactive)
    if not url:
        _fail("--database-url is needed: the two gateways of a pair share one PostgreSQL database")
    values["database_url"] = url
    failback = options["gateway_failback"]
    if failback is None:
        failback = _ask("Failback: 0 = manual, by `pnpp ha failback` (the default Prime recommends); 1 = automatic",
                        None, "1" if answers.was("gateway_failback") == "auto" else "0", interactive,
                        click.Choice(["0", "1"]))
    values["gateway_failback"] = FAILBACK_ANSWERS[str(failback)]
    if values["gateway_failback"] == "auto":
        values["gateway_hold_down"] = float(_ask(
            "Hold-down: seconds the primary must stay healthy before the VIP moves back to it",
            options["gateway_hold_down"], float(answers.was("gateway_hold_down")), interactive, click.FloatRange(0)))
    else:
        values.pop("gateway_hold_down", None)
    if advanced:
        mover = _ask("How the VIP moves: keepalived, or builtin (labs: the pair's own health watch moves it)",
                     options.get("gateway_vip_mover"), answers.was("gateway_vip_mover"), interactive,
                     click.Choice(VIP_MOVERS))
        values["gateway_vip_mover"] = mover
        if mover == "builtin":
            values["gateway_vip_interface"] = _ask("Interface the VIP goes on (e.g. eth0)",
                                                   options.get("gateway_vip_interface"),
                                                   answers.was("gateway_vip_interface") or None, interactive)
        values["gateway_vip_prefix"] = _ask("Prefix length of the VIP", options.get("gateway_vip_prefix"),
                                            answers.was("gateway_vip_prefix"), interactive, click.IntRange(1, 128))
    values.update(gateway_ha="pair", gateway_role="primary")
    answers.asked.update({"node_address", "database_url"})
    return True


def _ask_secondary_token(options: dict[str, Any], answers: Answers, peer: str) -> str:
    """The admin token the secondary's operator gave (a file, the variable or typed hidden; never an argument)."""
    token = _given_secret(options.get("secondary_token_file"), TOKEN_VARIABLE, "--secondary-token-file")
    if token is not None:
        return token
    if not answers.interactive:
        _fail(f"the secondary {peer} is enrolled with an admin token of it: --secondary-token-file FILE ('-' for "
              f"stdin) or the {TOKEN_VARIABLE} variable (its operator creates it with `pnpp token create --role "
              "admin`)")
    return str(click.prompt(f"Admin token of the secondary {peer} (its operator creates it there with `pnpp token "
                            "create --role admin`)", hide_input=True)).strip()


def _masked(key: str, value: Any) -> Any:
    """A database password is never shown."""
    if key == "database_url" and "@" in str(value) and "://" in str(value):
        scheme, rest = str(value).split("://", 1)
        credentials, host = rest.rsplit("@", 1)
        return f"{scheme}://{credentials.split(':', 1)[0]}:***@{host}" if ":" in credentials else value
    return value


# ---- the pair: enrolment and removal ------------------------------------------------------------------------------
@dataclass
class PairPlan:
    """What setup does to the secondary once the operator confirms: enrol it (first time or again), or remove it."""

    action: str  # "enrol", "update" (the enrolled secondary gets the new settings) or "remove"
    link: Any  # enrolment.SecondaryLink
    node: str = ""
    certificate: str = ""  # the secondary's, as pinned now (stored once it accepted its enrolment)


def _pin_new_secondary(options: dict[str, Any], answers: Answers, link: Any) -> tuple[Any, str]:
    """The secondary's certificate, shown and confirmed (or compared with --secondary-fingerprint): the pinned link
    and the certificate (PEM)."""
    from .enrolment import SecondaryUnreachable, normalise_fingerprint, shown

    try:
        presented = link.presented()
    except SecondaryUnreachable as exc:
        _fail(f"{exc}; nothing was written")
    click.echo(f"The secondary at {link.where} presents the certificate {presented.subject}")
    click.echo(f"  SHA-256 {shown(presented.fingerprint)}")
    given = options.get("secondary_fingerprint")
    if given is not None:
        expected = normalise_fingerprint(given)
        if not expected:
            _fail(f"--secondary-fingerprint {given!r} is not a SHA-256 fingerprint (64 hex digits, colons allowed, "
                  "as `pnpp certs show` prints it)")
        if expected != presented.fingerprint:
            _fail(f"the secondary at {link.where} presented SHA-256 {shown(presented.fingerprint)}, not the "
                  f"{shown(expected)} given (--secondary-fingerprint): it may not be the secondary. Nothing was sent "
                  "or written")
    elif not answers.interactive:
        _fail("unattended, the secondary's certificate is pinned by --secondary-fingerprint (the SHA-256 that "
              "`pnpp certs show` prints on the secondary); nothing was written")
    elif not click.confirm("Is this the SHA-256 that `pnpp certs show` prints on the secondary?", default=False):
        _fail("the secondary's certificate was not confirmed: nothing was sent or written")
    return dataclasses.replace(link, pin=presented.fingerprint), presented.pem


def _stored_pin(settings: Settings) -> str:
    """The fingerprint of the secondary's certificate as pinned at its enrolment ("" when none is stored)."""
    from ..api.enrolment import certificate_fingerprint, peer_certificate_path

    try:
        return certificate_fingerprint(peer_certificate_path(settings).read_text()).replace(":", "")
    except (OSError, ValueError):
        return ""


def _plan_pair(options: dict[str, Any], answers: Answers, settings: Settings, runtime: Settings) -> PairPlan:
    """Reach the secondary before anything is written: its certificate pinned, the token accepted, its facts read."""
    from .enrolment import EnrolmentRefused, SecondaryLink, SecondaryUnreachable

    peer = settings.gateway_peer
    pin = _stored_pin(runtime) if answers.was_pair_primary and answers.was("gateway_peer") == peer else ""
    if pin:
        click.echo(f"The secondary {peer} is enrolled already: it gets the new settings (its certificate is pinned "
                   "since its enrolment, and this node issues the token in the pair's database).")
        return PairPlan("update", SecondaryLink(peer, settings.monitoring_port, pin))
    if answers.was_pair_primary and answers.was("gateway_peer") not in ("", peer):
        _fail(f"the pair's secondary is {answers.was('gateway_peer')}: remove HA first (pnpp setup, answering n), "
              f"then configure it again with the secondary {peer}; nothing was written")
    port = options.get("secondary_port") or settings.monitoring_port
    link, certificate = _pin_new_secondary(options, answers, SecondaryLink(peer, int(port)))
    answers.secondary_token = _ask_secondary_token(options, answers, peer)
    try:
        facts = link.call("GET", answers.secondary_token)
    except (SecondaryUnreachable, EnrolmentRefused) as exc:
        if isinstance(exc, EnrolmentRefused) and exc.status == 401:
            _fail(f"the secondary refused the token ({exc}): its operator creates an admin token there with `pnpp "
                  "token create --role admin`. Nothing was sent but the token, nothing was written")
        _fail(f"the secondary did not accept the request ({exc}); nothing was written")
    enrolment = facts.get("enrolment") or {}
    if not enrolment.get("possible"):
        _fail(f"the secondary {facts.get('node', peer)} cannot be enrolled: {enrolment.get('refusal')}; nothing was "
              "written")
    from ..version import __version__

    role = f"{facts.get('gateway_role')} of the pair with {facts.get('gateway_peer')}" \
        if facts.get("gateway_ha") == "pair" else "single"
    click.echo(f"Secondary: {facts.get('node')} ({facts.get('mode')}, {role}), pnp-integrated {facts.get('version')}")
    if facts.get("version") != __version__:
        click.echo(f"note: this node runs pnp-integrated {__version__}; both nodes of a pair should run the same")
    return PairPlan("enrol", link, str(facts.get("node") or peer), certificate)


def _plan_removal(options: dict[str, Any], answers: Answers, old: Settings) -> PairPlan:
    from .enrolment import SecondaryLink

    pin = _stored_pin(old)
    if not pin and not options.get("secondary_unreachable"):
        _fail(f"this node has no pinned certificate of the secondary {old.gateway_peer}, so it cannot tell it to "
              "leave; with --secondary-unreachable, HA is removed here and its operator stops it")
    return PairPlan("remove", SecondaryLink(old.gateway_peer, old.monitoring_port, pin))


def _enrol(plan: PairPlan, answers: Answers, settings: Settings, runtime: Settings,
           credentials: BrokerCredentials | None, write: Any) -> None:
    """Send the pair's settings and secrets, write this node's file once the secondary accepted, wait for it."""
    from ..api.enrolment import peer_certificate_path
    from ..credentials import write_secret
    from .enrolment import (
        EnrolmentRefused,
        PinMismatch,
        SecondaryUnreachable,
        issue_pair_token,
        pair_database,
        revoke_pair_tokens,
        secondary_settings,
        shared_secrets,
        wait_for_secondary,
    )

    login = credentials
    if login is None:
        try:
            login = gateway_credentials(runtime)
        except CredentialsMissing as exc:
            _fail(f"the pair shares this gateway's login on Prime's broker, and there is none: {exc} (or give it "
                  "with --broker-login); nothing was written")
    try:
        app = pair_database(runtime)
        verify = issue_pair_token(app, "verify")
        token = answers.secondary_token or issue_pair_token(app, "enrol")
        secrets = shared_secrets(app, runtime, login, settings)
    except Exception as exc:  # the database's or the file's own words
        from .common import database_error_text

        _fail(f"cannot prepare the pair: {database_error_text(exc)}; nothing was written")
    try:
        accepted = plan.link.call("POST", token, {"settings": secondary_settings(settings), "secrets": secrets})
    except (SecondaryUnreachable, EnrolmentRefused, PinMismatch) as exc:
        revoke_pair_tokens(app, "verify")
        revoke_pair_tokens(app, "enrol")
        status = f" (HTTP {exc.status})" if isinstance(exc, EnrolmentRefused) else ""
        _fail(f"the secondary did not take the enrolment{status}: {exc}; nothing was written")
    write()
    # Restarted, the secondary presents a certificate from the pair's CA: the one it named over the pinned link.
    named = str(accepted.get("certificate") or "")
    certificate = named or plan.certificate
    if certificate:
        write_secret(peer_certificate_path(runtime), certificate)
    node = accepted.get("node") or plan.node or settings.gateway_peer
    click.echo(f"The secondary {node} accepted the pair's settings and secrets and restarts as the secondary; "
               "waiting for it to come back ...")
    back = dataclasses.replace(plan.link, port=settings.monitoring_port)
    if named:
        from ..api.enrolment import certificate_fingerprint

        back = dataclasses.replace(back, pin=certificate_fingerprint(certificate).replace(":", ""))
    try:
        facts = wait_for_secondary(back, verify, settings.node_address, float(accepted.get("at") or 0))
    except TimeoutError as exc:
        _fail(f"the secondary {node} has not come back as the secondary of the pair ({exc}): see its log and "
              f"`pnpp status` on it", 1)
    finally:
        revoke_pair_tokens(app, "verify")
        revoke_pair_tokens(app, "enrol")
    click.echo(f"The secondary {facts.get('node')} is the secondary of the pair now ({facts.get('state')}), on "
               f"{back.where}; the VIP {settings.vip} moves to it if this node fails.")


def _remove(plan: PairPlan, options: dict[str, Any], old: Settings, new: Settings, write: Any) -> None:
    """Tell the secondary to leave (it stops), then write this node's file and say what devices need."""
    from ..api.enrolment import peer_certificate_path
    from .common import database_error_text
    from .enrolment import (
        EnrolmentRefused,
        PinMismatch,
        SecondaryUnreachable,
        issue_pair_token,
        pair_database,
        revoke_pair_tokens,
    )

    told = False
    if plan.link.pin:
        try:
            app = pair_database(old)
            token = issue_pair_token(app, "leave")
        except Exception as exc:
            _fail(f"cannot issue a token in the pair's database: {database_error_text(exc)}; nothing was written")
        try:
            plan.link.call("DELETE", token)
            told = True
        except (SecondaryUnreachable, EnrolmentRefused, PinMismatch) as exc:
            if not options.get("secondary_unreachable"):
                revoke_pair_tokens(app, "leave")
                _fail(f"the secondary {old.gateway_peer} was not told to leave ({exc}); nothing was written. If it is "
                      "gone for good, --secondary-unreachable removes HA here and its operator stops it")
            click.echo(f"note: the secondary was not told to leave ({exc})")
        revoke_pair_tokens(app, "leave")
    write()
    peer_certificate_path(old).unlink(missing_ok=True)
    if told:
        click.echo(f"The secondary {old.gateway_peer} left the pair: it put back the configuration it had before "
                   "its enrolment and stopped, so it does not keep running with the VIP.")
    else:
        click.echo(f"The secondary {old.gateway_peer} was not told: stop it on its host before it takes the VIP "
                   f"{old.vip} (`pnpp run` there must not start with the pair's settings again).")
    for line in removal_device_lines(old, new):
        click.echo(line)


def removal_device_lines(old: Settings, new: Settings) -> list[str]:
    """What devices' ``cns event`` lines need once the pair is gone (`pnpp bootstrap` prints every line)."""
    from ..cns.bootstrap import cns_lines

    event, encrypted = (next(line for line in cns_lines(new, tls) if line.startswith("cns event ")) for tls in
                        (False, True))
    lines = ["Devices:"]
    if new.vip != old.vip:
        lines.append(f"  a device whose `cns event` line names the pair's VIP {old.vip} needs it to name this "
                     f"gateway instead: `{event}` (TLS: `{encrypted}`)")
    else:
        lines.append(f"  lines naming {new.vip} (the pair's VIP, this gateway's address now) stay as they are")
    lines.append(f"  a device whose `cns event` line names the secondary {old.gateway_peer} (e.g. as its backup event "
                 f"gateway) needs that line removed (`no` before it, as configured), and `{event}` if it has no line "
                 "naming this gateway")
    return lines


# ---- the command ----------------------------------------------------------------------------------------------------
def run_setup(options: dict[str, Any], advanced: bool) -> None:
    """Ask, validate, reach the secondary (HA), confirm, write; ``options`` holds the flags (``None``: not given)."""
    path = Path(options["config"] or os.environ.get("PNP_CONFIG") or DEFAULT_CONFIG)
    interactive = not options["yes"]
    existing = read_config(path)
    base = Settings()
    known = {f.name for f in dataclasses.fields(Settings)}
    current = {**{k: getattr(base, k) for k in known}, **{k: v for k, v in existing.items() if k in known}}
    try:
        port = options.get("health_port") or existing.get("health_port") or os.environ.get("PNP_HEALTH_PORT") \
            or base.health_port
        probe = dataclasses.replace(base, health_port=int(port))
    except (TypeError, ValueError):
        probe = base
    answers = Answers(values=dict(existing), current=current, interactive=interactive)

    click.echo(f"pnp-integrated setup{' (advanced)' if advanced else ''}: settings go to {path}")
    if (current["mode"], current["gateway_ha"], current["gateway_role"]) == ("standalone", "pair", "secondary"):
        _fail(f"this gateway is the secondary of the gateway pair with {current['gateway_peer']}, enrolled by the "
              f"primary's setup: change the pair with `pnpp setup` on {current['gateway_peer']}; nothing was written")
    mode = options["mode"]
    prime = PrimeFacts(False)
    if mode != "standalone":  # a standalone host has no Prime of its own to ask
        prime = detect_prime(probe)
        click.echo(prime.describe(probe.health_port))
    if mode is None:
        mode = _ask("Gateway mode (integrated: on a Prime server, following its HA; standalone: a host of its own)",
                    None, "integrated" if prime.reachable else str(current["mode"]), interactive, click.Choice(MODES))
    pair = False
    preset_ha_mode = None
    if mode == "integrated" and not _ask_integrated(options, prime, answers):
        mode, preset_ha_mode = "standalone", "different-ip"
    if mode == "standalone":
        _ask_prime_addresses(options, answers, preset_ha_mode)
        pair = _ask_gateway_ha(options, answers, advanced)
    values = answers.values

    if advanced:
        prompts = {
            "node_name": ("Node name (shown in the status and in events to Prime)", str),
            "node_address": ("This node's own address (empty: the VIP)", str),
            "data_dir": ("Data directory", str),
            "database_url": ("Database URL (empty: SQLite in the data directory; HA needs PostgreSQL)", str),
            "http_port": ("HTTP port", click.IntRange(1, 65535)),
            "https_port": ("HTTPS port", click.IntRange(1, 65535)),
            "cns_port_base": ("CNS port base (monitoring; dispatchers and gateway ports follow)",
                              click.IntRange(1, 65523)),
            "health_port": ("Prime health monitor port", click.IntRange(1, 65535)),
            "workers": ("Worker processes", click.IntRange(1, 64)),
            "tls_min_version": ("Lowest TLS version accepted", click.Choice(TLS_VERSIONS)),
            "broker_client_cert_file": ("Client certificate the gateway presents to Prime's broker (PEM; empty: "
                                        "none, the login alone)", str),
            "broker_client_key_file": ("Its private key (PEM, unencrypted)", str),
        }
        optional = ("node_address", "database_url", "broker_client_cert_file", "broker_client_key_file")
        for key, (label_text, kind) in prompts.items():
            if key in answers.asked:
                continue
            if key == "broker_client_key_file" and not values.get("broker_client_cert_file") \
                    and options.get(key) is None:
                values.pop(key, None)  # no certificate, no key to ask for
                continue
            default = current[key]
            default = str(default) if isinstance(default, Path) else default
            answer = _ask(label_text, options.get(key), default, interactive, kind)
            if answer in ("", None) and key in optional:
                values.pop(key, None)
            else:
                values[key] = answer
        if values.get("ha_mode") == "vip" and mode == "integrated" and not values.get("database_url"):
            click.echo("note: both nodes of an HA pair must share one PostgreSQL database (database_url)")

    try:
        settings = load_settings({k: v for k, v in values.items() if k in known}, environ={})
    except ConfigError as exc:
        _fail(str(exc))
    ordered = {k: values[k] for k in (*BASIC_KEYS, *ADVANCED_KEYS) if k in values}
    ordered.update({k: v for k, v in values.items() if k not in ordered})
    runtime = _runtime_settings(settings)
    ask_login = settings.standalone or advanced or not _colocated(prime, settings.vip)
    credentials = ask_broker_login(options, runtime, ask_login, interactive)

    plan: PairPlan | None = None
    old: Settings | None = None
    if pair:
        plan = _plan_pair(options, answers, settings, runtime)
    elif answers.was_pair_primary:
        try:
            old = _runtime_settings(load_settings({k: v for k, v in existing.items() if k in known}, environ={}))
        except ConfigError as exc:
            _fail(f"the pair's settings in {path} are not valid, so the secondary cannot be told to leave: {exc}")
        plan = _plan_removal(options, answers, old)

    click.echo("")
    for key, value in ordered.items():
        click.echo(f"  {key:16} = {_masked(key, value)}")
    if credentials is not None:
        click.echo(f"The gateway's broker login {credentials.login!r} and its passcode go to "
                   f"{credentials_path(runtime)} (readable by its owner only).")
    if mode == "integrated" and settings.ha_mode == "vip":
        from ..ha.vip import vip_can_move, vip_is_local

        if vip_can_move(settings.vip):
            where = "it is on this node now" if vip_is_local(settings.vip) else \
                "it is not on this node now: this node starts PASSIVE"
        else:
            where = "a loopback address: the Prime health monitor decides which node serves"
        click.echo(f"The gateway will follow the virtual IP {settings.vip}; {where}.")
    question = f"Write these settings to {path}?"
    if plan is not None and plan.action in ("enrol", "update"):
        click.echo(f"The secondary {settings.gateway_peer} gets, over HTTPS with its certificate pinned: the pair's "
                   "settings (VIP, virtual host name, this node as its peer, role secondary, failback, the shared "
                   "database), the gateway's broker login, the profile keys and Prime's certificates; then it "
                   "restarts as the secondary.")
        question = f"Write these settings to {path} and {'enrol' if plan.action == 'enrol' else 'update'} the " \
                   f"secondary {settings.gateway_peer}?"
    elif plan is not None and old is not None:
        click.echo(f"HA is removed: the secondary {old.gateway_peer} is told to leave the pair; it puts back the "
                   "configuration it had before its enrolment and stops.")
        question = f"Write these settings to {path} and take the secondary {old.gateway_peer} out of service?"
    if interactive and not click.confirm(question, default=True):
        click.echo("Nothing was written.")
        sys.exit(1)

    def write() -> None:
        try:
            write_config(path, ordered)
        except OSError as exc:
            _fail(f"cannot write {path} ({exc.strerror or exc})", 1)
        click.echo(f"Wrote {path}.")
        if credentials is not None:
            try:
                where = store_gateway_credentials(runtime, credentials)
            except OSError as exc:
                _fail(f"cannot store the broker login in {credentials_path(runtime)} ({exc.strerror or exc})", 1)
            click.echo(f"Stored the gateway's broker login {credentials.login!r} in {where} (readable by its owner "
                       "only).")

    if plan is not None and old is not None:
        _remove(plan, options, old, settings, write)
    elif plan is not None:
        _enrol(plan, answers, settings, runtime, credentials, write)
    else:
        write()
    if settings.database_url and not runtime.database_url and runtime.sqlite_path.exists():
        click.echo(f"This gateway's data (profiles, images, devices, jobs) is in its SQLite database: to take it "
                   f"along, stop `pnpp run` and, before starting it again, run `PNP_CONFIG={path} pnpp db copy "
                   f"--from {runtime.sqlalchemy_url} --to URL` with the database URL given here.")
    click.echo(f"Start the gateway with: PNP_CONFIG={path} pnpp run")


def _setting_option(flag: str, *names: str, **kwargs: Any) -> Any:
    """A flag for one setting; its PNP_* variable, when set, counts as the flag (it overrides the file anyway)."""
    setting = names[-1] if names else flag.lstrip("-").replace("-", "_")
    return click.option(flag, *names, envvar="PNP_" + setting.upper(), show_envvar=True, default=None, **kwargs)


def _common(func: Any) -> Any:
    for decorator in reversed([
        click.option("--config", "config", type=click.Path(dir_okay=False), default=None,
                     help=f"TOML file to write (default: $PNP_CONFIG, else ./{DEFAULT_CONFIG})"),
        _setting_option("--mode", type=click.Choice(MODES),
                        help="integrated (on a Prime server) or standalone (a host of its own)"),
        _setting_option("--ha-mode", type=click.Choice(HA_MODES), help="Prime's HA mode"),
        _setting_option("--vip", help="the virtual IP (HA) or the address devices use"),
        _setting_option("--prime-address", help="standalone: Prime's address (its VIP; its primary with different-ip)"),
        _setting_option("--prime-secondary-address", help="standalone, Prime HA different-ip: its secondary's address"),
        _setting_option("--gateway-ha", type=click.Choice(["none", "pair"]),
                        help="standalone: Configure HA, a gateway pair (pair) or not (none)"),
        _setting_option("--virtual-host-name", help="HA: the name of the gateway VIP"),
        _setting_option("--node-address", help="this node's own address (HA: not the VIP)"),
        _setting_option("--secondary-address", "gateway_peer", help="HA: the secondary gateway's address"),
        _setting_option("--database-url", help="the database (HA: the PostgreSQL database both gateways share)"),
        _setting_option("--gateway-failback", type=click.Choice(sorted(FAILBACK_ANSWERS)),
                        help="HA: 0 or manual (`pnpp ha failback`, recommended), 1 or auto"),
        _setting_option("--gateway-hold-down", type=click.FloatRange(0),
                        help="HA, automatic failback: seconds the primary stays healthy before the VIP moves back"),
        click.option("--secondary-token-file", type=click.File("r"), default=None,
                     help=f"HA: read the secondary's admin token from this file ('-' for stdin; or ${TOKEN_VARIABLE})"),
        click.option("--secondary-fingerprint", default=None,
                     help="HA: the SHA-256 of the secondary's certificate (`pnpp certs show` on it); asked otherwise"),
        click.option("--secondary-port", type=click.IntRange(1, 65535), default=None,
                     help="HA: the secondary's monitoring port before its enrolment (default: this node's)"),
        click.option("--secondary-unreachable", is_flag=True, default=False,
                     help="removing HA: go on when the secondary cannot be told to leave (its operator stops it)"),
        click.option("--broker-login", default=None,
                     help="the gateway's login on Prime's broker (its passcode: asked, or --broker-passcode-file, "
                          f"or ${PASSCODE_VARIABLE})"),
        click.option("--broker-passcode-file", type=click.File("r"), default=None,
                     help="read the broker passcode from this file ('-' for stdin)"),
        click.option("--yes", "-y", is_flag=True, help="ask nothing: flags, current values and defaults"),
    ]):
        func = decorator(func)
    return func


@click.group(invoke_without_command=True)
@_common
@click.pass_context
def setup(ctx: click.Context, **options: Any) -> None:
    """Configure the gateway: its mode, Prime's HA mode and address, the gateway pair; write the TOML file.

    Integrated, the co-located Prime's HA mode is detected and the virtual IP confirmed. Standalone with HA, this
    node is the pair's primary and enrols the secondary over HTTPS. A PNP_* variable set in the environment counts as
    the matching flag: it overrides the file at run time, so setup uses (and validates) the value the gateway will
    really run with.
    """
    if ctx.invoked_subcommand is None:
        _note_environment(ctx)
        run_setup(options, advanced=False)


def _note_environment(ctx: click.Context) -> None:
    for param in ctx.command.params:
        if param.name and ctx.get_parameter_source(param.name) is click.core.ParameterSource.ENVIRONMENT:
            envvar = param.envvar if isinstance(param.envvar, str) else "the environment"
            click.echo(f"{param.name} = {ctx.params[param.name]} comes from {envvar}, which overrides the file")


@setup.command("advance")
@_common
@_setting_option("--node-name")
@_setting_option("--data-dir")
@_setting_option("--http-port", type=click.IntRange(1, 65535))
@_setting_option("--https-port", type=click.IntRange(1, 65535))
@_setting_option("--cns-port-base", type=click.IntRange(1, 65523))
@_setting_option("--health-port", type=click.IntRange(1, 65535))
@_setting_option("--workers", type=click.IntRange(1, 64))
@_setting_option("--tls-min-version", type=click.Choice(TLS_VERSIONS))
@_setting_option("--broker-client-cert-file", help="client certificate (PEM) the gateway presents to Prime's broker")
@_setting_option("--broker-client-key-file", help="its private key (PEM, unencrypted)")
@_setting_option("--gateway-vip-mover", type=click.Choice(VIP_MOVERS), help="HA: how the VIP moves")
@_setting_option("--gateway-vip-interface", help="HA, built-in mover: the interface the VIP goes on")
@_setting_option("--gateway-vip-prefix", type=click.IntRange(1, 128), help="HA: the VIP's prefix length")
@click.pass_context
def advance(ctx: click.Context, **options: Any) -> None:
    """Configure every setting of the node (addresses, database, ports, TLS, the broker login, the pair's VIP
    mover), as Prime's `pnp setup advance`."""
    _note_environment(ctx)
    run_setup(options, advanced=True)

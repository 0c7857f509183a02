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

Prime HA with different primary and secondary addresses is refused (the integrated gateway cannot follow it): the
documented message is shown, nothing is written and the exit code is 2.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import os
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import click

from ..config import DIFFERENT_IP_REFUSAL, HA_MODES, TLS_VERSIONS, ConfigError, Settings, load_settings
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
BASIC_KEYS = ("ha_mode", "vip")
ADVANCED_KEYS = ("node_name", "node_address", "data_dir", "database_url", "http_port", "https_port",
                 "cns_port_base", "health_port", "workers", "tls_min_version", "broker_client_cert_file",
                 "broker_client_key_file")
PASSCODE_VARIABLE = "PNP_BROKER_PASSCODE"  # read by setup only; the gateway reads the credentials file
LOGIN_RULE = "use 1-64 letters, digits and . _ @ - (starting with a letter or digit)"


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
    if not path.exists():
        return {}
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        _fail(f"{path} is not valid TOML ({exc}); fix or remove it first")
    except OSError as exc:
        _fail(f"cannot read {path} ({exc.strerror or exc})")
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(value)
        else:
            flat[key] = value
    return flat


def toml_text(values: dict[str, Any]) -> str:
    """A flat TOML document (strings, integers, floats, booleans) in the order given."""
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


def write_config(path: Path, values: dict[str, Any]) -> None:
    """Replace ``path`` atomically (a reader never sees half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(toml_text(values))
    os.replace(tmp, path)


def _ip(text: str) -> str:
    try:
        return str(ipaddress.ip_address(text.strip()))
    except ValueError:
        raise click.BadParameter(f"{text!r} is not an IP address") from None


def _ask(label: str, given: Any, default: Any, interactive: bool, value_type: Any = str) -> Any:
    """The flag's value if given; otherwise a prompt (or the default with --yes)."""
    if given is not None:
        return given
    if not interactive:
        return default
    if callable(value_type) and value_type is _ip:
        return click.prompt(label, default=default, value_proc=_ip)
    return click.prompt(label, default=default, type=value_type)


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
        keep = "keep the stored one" if stored else "none yet; a co-located `pnpp run` creates one"
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


def run_setup(options: dict[str, Any], advanced: bool) -> None:
    """Ask, validate, confirm, write. ``options`` holds the flags (``None`` when not given)."""
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

    click.echo(f"pnp-integrated setup{' (advanced)' if advanced else ''}: settings go to {path}")
    prime = detect_prime(probe)
    click.echo(prime.describe(probe.health_port))

    detected_mode = prime.ha_mode if prime.ha_mode in HA_MODES else ""
    default_mode = detected_mode or str(current["ha_mode"])
    ha_mode = _ask("Prime HA mode", options["ha_mode"], default_mode, interactive,
                   click.Choice(HA_MODES))
    if ha_mode == "different-ip":
        click.echo(f"pnpp setup: {DIFFERENT_IP_REFUSAL}", err=True)
        click.echo("Nothing was written.", err=True)
        sys.exit(2)
    if ha_mode == "vip":
        default_vip = prime.vip if prime.reachable and prime.vip else str(current["vip"])
        label = "Virtual IP of the Prime HA pair (the gateway follows it)"
    else:
        default_vip = str(current["vip"])
        label = "Address devices reach the gateway on"
    try:
        vip = _ip(_ask(label, options["vip"], default_vip, interactive, _ip))
    except click.BadParameter as exc:
        _fail(f"--vip: {exc.message}")
    values: dict[str, Any] = {k: v for k, v in existing.items()}
    values.update(ha_mode=ha_mode, vip=vip)

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
        if ha_mode == "vip" and not values.get("database_url"):
            click.echo("note: both nodes of an HA pair must share one PostgreSQL database (database_url)")

    try:
        settings = load_settings({k: v for k, v in values.items() if k in known}, environ={})
    except ConfigError as exc:
        _fail(str(exc))
    ordered = {k: values[k] for k in (*BASIC_KEYS, *ADVANCED_KEYS) if k in values}
    ordered.update({k: v for k, v in values.items() if k not in ordered})
    runtime = _runtime_settings(settings)
    credentials = ask_broker_login(options, runtime, advanced or not _colocated(prime, settings.vip), interactive)

    click.echo("")
    for key, value in ordered.items():
        click.echo(f"  {key:16} = {value}")
    if credentials is not None:
        click.echo(f"The gateway's broker login {credentials.login!r} and its passcode go to "
                   f"{credentials_path(runtime)} (readable by its owner only).")
    if ha_mode == "vip":
        from ..ha.vip import vip_can_move, vip_is_local

        if vip_can_move(settings.vip):
            where = "it is on this node now" if vip_is_local(settings.vip) else \
                "it is not on this node now: this node starts PASSIVE"
        else:
            where = "a loopback address: the Prime health monitor decides which node serves"
        click.echo(f"The gateway will follow the virtual IP {settings.vip}; {where}.")
    if interactive and not click.confirm(f"Write these settings to {path}?", default=True):
        click.echo("Nothing was written.")
        sys.exit(1)
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
        click.echo(f"Stored the gateway's broker login {credentials.login!r} in {where} (readable by its owner only).")
    click.echo(f"Start the gateway with: PNP_CONFIG={path} pnpp run")


def _setting_option(flag: str, **kwargs: Any) -> Any:
    """A flag for one setting; its PNP_* variable, when set, counts as the flag (it overrides the file anyway)."""
    return click.option(flag, envvar="PNP_" + flag.lstrip("-").upper().replace("-", "_"), show_envvar=True,
                        default=None, **kwargs)


def _common(func: Any) -> Any:
    for decorator in reversed([
        click.option("--config", "config", type=click.Path(dir_okay=False), default=None,
                     help=f"TOML file to write (default: $PNP_CONFIG, else ./{DEFAULT_CONFIG})"),
        _setting_option("--ha-mode", type=click.Choice(HA_MODES), help="Prime's HA mode"),
        _setting_option("--vip", help="the virtual IP (HA) or the address devices use"),
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
    """Configure the gateway: detect Prime's HA mode, confirm the virtual IP, write the TOML file.

    A PNP_* variable set in the environment counts as the matching flag: it overrides the file at run time, so
    setup uses (and validates) the value the gateway will really run with.
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
@_setting_option("--node-address")
@_setting_option("--data-dir")
@_setting_option("--database-url")
@_setting_option("--http-port", type=click.IntRange(1, 65535))
@_setting_option("--https-port", type=click.IntRange(1, 65535))
@_setting_option("--cns-port-base", type=click.IntRange(1, 65523))
@_setting_option("--health-port", type=click.IntRange(1, 65535))
@_setting_option("--workers", type=click.IntRange(1, 64))
@_setting_option("--tls-min-version", type=click.Choice(TLS_VERSIONS))
@_setting_option("--broker-client-cert-file", help="client certificate (PEM) the gateway presents to Prime's broker")
@_setting_option("--broker-client-key-file", help="its private key (PEM, unencrypted)")
@click.pass_context
def advance(ctx: click.Context, **options: Any) -> None:
    """Configure every setting of the node (addresses, database, ports, TLS, the broker login), as Prime's
    `pnp setup advance`."""
    _note_environment(ctx)
    run_setup(options, advanced=True)

"""``pnpp prime``: run the simulated Prime node and talk to it as Prime would."""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
import re
import ssl
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any, NoReturn

import click

from ..config import ConfigError, Settings, load_settings
from ..tls import store_prime_trust, trust_path, trusted_prime_hosts
from .ha import FAILBACK_MODES
from .server import BROKERS, PrimeProcess, events_path

COMMAND_TYPES = ("profile.upsert", "profile.delete", "device.reprovision", "cns.config.push", "cns.exec", "job.cancel")


def _fail(message: str, code: int = 1) -> NoReturn:
    click.echo(f"pnpp prime: {message}", err=True)
    sys.exit(code)


def _settings() -> Settings:
    try:
        return load_settings(gateway=False)
    except ConfigError as exc:
        _fail(str(exc), 2)


@click.group()
def prime() -> None:
    """The simulated Prime Infrastructure server: broker, health monitor, event sink."""


@prime.command()
@click.option("--broker", type=click.Choice(BROKERS), default="embedded", show_default=True,
              help="embedded STOMP broker, or Debian's ActiveMQ 5.17")
@click.option("--role", type=click.Choice(["primary", "secondary"]), default="primary", show_default=True,
              envvar="PNP_PRIME_ROLE")
@click.option("--state", type=click.Choice(["active", "standby"]), default=None, envvar="PNP_PRIME_STATE",
              help="initial state [default: active alone, standby with a peer: the pair decides]")
@click.option("--peer", default="", envvar="PNP_PRIME_PEER", help="the other Prime node's address (HA)")
@click.option("--vip-interface", default="", envvar="PNP_PRIME_VIP_INTERFACE",
              help="HA: the interface the active node puts the VIP on (none: the VIP does not move)")
@click.option("--vip-prefix", type=click.IntRange(1, 128), default=24, show_default=True,
              envvar="PNP_PRIME_VIP_PREFIX")
@click.option("--failback", type=click.Choice(FAILBACK_MODES), default="manual", show_default=True,
              envvar="PNP_PRIME_FAILBACK", help="HA: return to the primary by `pnpp prime failback`, or by itself")
@click.option("--hold-down", type=click.FloatRange(0), default=30.0, show_default=True,
              envvar="PNP_PRIME_HOLD_DOWN", help="automatic failback: seconds the primary waits after it is back")
@click.option("--address", default="0.0.0.0", show_default=True, envvar="PNP_PRIME_LISTEN_ADDRESS",
              help="the address the broker's TLS port and the health monitor listen on (a Prime server's own "
                   "address; the loopback bus stays on 127.0.0.1)")
def serve(broker: str, role: str, state: str | None, peer: str, vip_interface: str, vip_prefix: int,
          failback: str, hold_down: float, address: str) -> None:
    """Run the simulated Prime node in the foreground until SIGTERM/SIGINT."""
    from gevent import monkey

    state = state or ("standby" if peer else "active")
    if not monkey.is_module_patched("socket"):
        # gevent must patch before anything imports ssl/threading: restart under the patched entry point.
        args = [sys.executable, "-m", "pnp_integrated.prime", "serve", "--broker", broker, "--role", role,
                "--state", state, "--peer", peer, "--vip-interface", vip_interface, "--vip-prefix", str(vip_prefix),
                "--failback", failback, "--hold-down", str(hold_down), "--address", address]
        os.execv(sys.executable, args)
    from ..listeners import ListenerBindError
    from ..logs import configure
    from .activemq import ActiveMQError
    from .ha import VipPlacement
    from .server import PrimeServer, serve_forever

    settings = _settings()
    placement = None
    if peer:
        try:
            ipaddress.ip_address(peer)
        except ValueError:
            _fail(f"--peer {peer!r} is not an IP address", 2)
    try:
        ipaddress.ip_address(address)
    except ValueError:
        _fail(f"--address {address!r} is not an IP address", 2)
    if broker != "embedded" and address != "0.0.0.0":
        _fail("--address binds the embedded broker only; ActiveMQ listens where its configuration says", 2)
    if vip_interface:
        if not Path("/sys/class/net", vip_interface).exists():
            _fail(f"--vip-interface {vip_interface!r}: no such network interface", 2)
        placement = VipPlacement(settings.vip, vip_prefix, vip_interface)
    configure(settings.log_format)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    try:
        serve_forever(PrimeServer(settings, broker=broker, role=role, state=state, peer=peer, placement=placement,
                                  failback=failback, hold_down=hold_down, address=address))
    except (ListenerBindError, ActiveMQError) as exc:
        _fail(str(exc), 2)


@prime.command()
def failback() -> None:
    """Hand the active role (and the VIP) back to the primary Prime node; run on either node of the pair."""
    from .ha import ask

    settings = _settings()
    answer = ask("127.0.0.1", settings.health_port, "/ha/failback", "POST", timeout=10.0)
    if answer is None:
        _fail(f"no Prime health monitor on this host (port {settings.health_port}): is the simulated Prime running?")
    if not answer.get("ok"):
        _fail(f"failback refused: {answer.get('detail') or answer.get('error') or answer}")
    click.echo(f"failback: {answer.get('detail', 'done')}")


@prime.command()
@click.option("--type", "type_prefix", default="", help="only events whose type starts with this")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="only the last N events")
@click.option("--json", "as_json", is_flag=True, help="one JSON object per line")
def events(type_prefix: str, limit: int | None, as_json: bool) -> None:
    """List the gateway events Prime received, oldest first: time, gateway, type, device, event id."""
    from .sink import EventStore

    settings = _settings()
    path = events_path(settings)
    if not path.exists():
        _fail(f"no events received yet ({path} does not exist): is the simulated Prime running?")
    store = EventStore(path)
    try:
        for event in store.events(type_prefix, limit):
            if as_json:
                click.echo(json.dumps(event.body))
            else:
                repeats = f" (delivered {event.deliveries}x)" if event.deliveries > 1 else ""
                click.echo(f"{event.at:24} {event.gateway:16} {event.type:22} {_device_of(event.body):16} "
                           f"{event.event_id}{repeats}")
    finally:
        store.close()


def _device_of(body: dict[str, Any]) -> str:
    """The serial (or CNS Device-Id) an event is about, ``-`` for events about no device."""
    device = body.get("device")
    if not isinstance(device, dict):
        job = body.get("job")
        device = job.get("device") if isinstance(job, dict) else None
    serial = device.get("serial") or device.get("id") if isinstance(device, dict) else None
    return str(serial) if serial else "-"


@prime.command()
@click.argument("command_type", metavar="TYPE")
@click.argument("payload_file", metavar="FILE.json", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--id", "command_id", default=None, help="command id (default: the file's 'id', else a new UUID)")
@click.option("--broker", "broker_addr", default=None,
              help="HOST:PORT of the broker's TLS port (default: the plain bus port on 127.0.0.1)")
def send(command_type: str, payload_file: Path, command_id: str | None, broker_addr: str | None) -> None:
    """Send a command of TYPE with the JSON object in FILE.json to /queue/pnp.gateway.commands."""
    from ..destinations import COMMANDS_QUEUE
    from .client import StompClient, StompClientError

    settings = _settings()
    if command_type not in COMMAND_TYPES:
        click.echo(f"pnpp prime: note: {command_type!r} is not a contract command type "
                   f"({', '.join(COMMAND_TYPES)}); the gateway will reject it", err=True)
    try:
        payload = json.loads(payload_file.read_text())
    except OSError as exc:
        _fail(f"cannot read {payload_file}: {exc.strerror or exc}")
    except ValueError as exc:
        _fail(f"{payload_file} is not JSON: {exc}")
    if not isinstance(payload, dict):
        _fail(f"{payload_file} must hold a JSON object (the command's fields), not {type(payload).__name__}")
    body = {
        **payload,
        "id": command_id or payload.get("id") or str(uuid.uuid4()),
        "type": command_type,
        "at": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "gateway": payload.get("gateway") or settings.node_name,
    }
    host, port, context = "127.0.0.1", settings.bus_port, None
    if broker_addr:
        host, port = _host_port(broker_addr)
        context = _trusting_context(settings)
    from .accounts import PRIME_LOGIN, AccountError, prime_passcode

    try:
        login = (PRIME_LOGIN, prime_passcode(settings))
    except (AccountError, OSError) as exc:
        _fail(f"cannot read the simulated Prime's own broker login: {exc}")
    client = StompClient(host, port, context=context, login=login)
    try:
        client.connect()
        client.send(COMMANDS_QUEUE, json.dumps(body).encode(),
                    {"content-type": "application/json", "persistent": "true"})
        client.disconnect()
    except StompClientError as exc:
        _fail(str(exc))
    click.echo(f"sent {command_type} {body['id']} to {COMMANDS_QUEUE} on {host}:{port}")


def _host_port(text: str, default_port: int | None = None) -> tuple[str, int]:
    match = re.fullmatch(r"(?:\[([^\]]+)\]|([^:\[\]\s]+))(?::(\d{1,5}))?", text.strip())
    if not match or (match.group(3) is None and default_port is None):
        _fail(f"{text!r} is not HOST:PORT (IPv6 addresses in brackets: [::1]:61617)")
    port = int(match.group(3)) if match.group(3) else default_port
    assert port is not None
    if not 1 <= port <= 65535:
        _fail(f"{text!r}: {port} is not a TCP port")
    return match.group(1) or match.group(2), port


def _trusting_context(settings: Settings) -> ssl.SSLContext:
    from ..tls import cert_paths

    path = trust_path(settings)
    ctx = ssl.create_default_context(cafile=str(path if path.exists() else cert_paths(settings).ca))
    ctx.check_hostname = False  # the trust pin is the point; Prime is often reached by address
    if settings.broker_client_cert_file:  # a broker that asks for client certificates gets the gateway's
        ctx.load_cert_chain(settings.broker_client_cert_file, settings.broker_client_key_file)
    return ctx


def fetch_chain(host: str, port: int, timeout: float = 10.0) -> list[str]:
    """The PEM certificates (leaf first) that ``host:port`` presents in its TLS handshake."""
    try:
        result = subprocess.run(
            ["openssl", "s_client", "-connect", f"{host}:{port}", "-servername", host, "-showcerts"],
            input="", capture_output=True, text=True, timeout=timeout,
        )
    except FileNotFoundError:
        raise click.ClickException("the openssl command is needed to fetch certificate chains") from None
    except subprocess.TimeoutExpired:
        raise click.ClickException(f"{host}:{port} did not complete a TLS handshake within {timeout:g}s") from None
    chain = re.findall(r"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", result.stdout, re.S)
    if not chain:
        reason = (result.stderr.strip().splitlines() or ["no certificate received"])[-1]
        raise click.ClickException(f"no certificate from {host}:{port}: {reason}")
    return chain


def _describe(pem: str) -> dict[str, Any]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    cert = x509.load_pem_x509_certificate(pem.encode())
    return {"subject": cert.subject.rfc4514_string(), "sha256": cert.fingerprint(hashes.SHA256()).hex(":")}


@prime.command()
@click.option("--from", "source", required=True, metavar="HOST[:PORT]",
              help="Prime's broker endpoint (port default: PNP_BROKER_PORT); the health port is asked too")
@click.option("--health-port", type=click.IntRange(1, 65535), default=None,
              help="Prime's health monitor port (default: PNP_HEALTH_PORT)")
@click.option("--login", default=None, help="the gateway's login on Prime's broker (its passcode is asked for)")
@click.option("--passcode-file", type=click.File("r"), default=None,
              help="read the passcode from this file ('-' for stdin) instead of asking")
def trust(source: str, health_port: int | None, login: str | None, passcode_file: Any) -> None:
    """Fetch and store the certificates of Prime's broker (61617) and health monitor (8082) endpoints.

    The gateway's bridge then verifies Prime's broker against them. With --login, the gateway's credentials for
    that broker are stored too (0600, in PNP_BROKER_CREDENTIALS_FILE).
    """
    from ..credentials import LOGIN_PATTERN, BrokerCredentials, store_gateway_credentials

    settings = _settings()
    if login is not None and not LOGIN_PATTERN.fullmatch(login):
        _fail(f"--login {login!r}: use 1-64 letters, digits and . _ @ -", 2)
    if passcode_file is not None and login is None:
        _fail("--passcode-file needs --login", 2)
    passcode = ""
    if login is not None:
        if passcode_file is not None:
            passcode = passcode_file.read().strip()
        else:
            passcode = click.prompt(f"passcode of {login!r} on Prime's broker", hide_input=True).strip()
        if not passcode:
            _fail("the passcode is empty", 2)
    host, port = _host_port(source, settings.broker_port)
    health = health_port or settings.health_port
    pems: list[str] = []
    try:
        for endpoint_port in (port, health):
            for pem in fetch_chain(host, endpoint_port):
                if pem not in pems:
                    pems.append(pem)
                facts = _describe(pem)
                click.echo(f"{host}:{endpoint_port}  {facts['subject']}  sha256 {facts['sha256']}")
    except click.ClickException as exc:
        _fail(exc.message)
    path = store_prime_trust(settings, host, pems)
    others = sorted(h for h in trusted_prime_hosts(settings) if h != host)
    click.echo(f"stored {len(pems)} certificate(s) of {host} in {path}; the bridge verifies Prime's broker against "
               "them" + (f" (and those of {', '.join(others)}, trusted before)" if others else ""))
    if login is not None:
        where = store_gateway_credentials(settings, BrokerCredentials(login, passcode))
        click.echo(f"stored the gateway's broker login {login!r} in {where} (readable by its owner only)")


def start_prime_child(settings: Settings, broker: str = "embedded") -> PrimeProcess:
    """Start the simulated Prime as a child process and return once its broker and health ports accept connections.

    Used by ``pnpp run``, which starts Prime before the gateway as on a real Prime node. Exits with a message when
    the child dies or its ports stay closed.
    """
    from ..credentials import CredentialsMissing
    from .accounts import AccountError, enrol_local_gateway

    try:
        credentials = enrol_local_gateway(settings, activemq=broker == "activemq")
    except (CredentialsMissing, AccountError) as exc:
        _fail(str(exc), 2)
    from ..children import port_holder

    for name in ("broker_port", "bus_port", "health_port"):
        holder = port_holder(getattr(settings, name))
        if holder:
            _fail(f"the simulated Prime cannot start: port {getattr(settings, name)} (PNP_{name.upper()}) is held by "
                  f"{holder}; stop that process or move PNP_{name.upper()}", 2)
    child = PrimeProcess(settings, broker=broker)
    try:
        child.start()
    except RuntimeError as exc:
        _fail(str(exc), 2)
    refusal = login_refusal(settings, credentials.login, credentials.passcode)
    if refusal:
        stop_prime_child(child)
        _fail(refusal, 2)
    return child


def login_refusal(settings: Settings, login: str, passcode: str) -> str:
    """Why the co-located broker refuses the gateway's login (empty when it accepts it or cannot be asked)."""
    from ..credentials import credentials_path
    from .client import StompClient, StompClientError

    client = StompClient("127.0.0.1", settings.bus_port, timeout=10.0, login=(login, passcode))
    try:
        client.connect()
    except StompClientError as exc:
        if "login refused" not in str(exc):
            return ""  # not reachable: the bridge keeps trying, as for any broker outage
        return (f"Prime's broker refused the gateway's login {login!r}: the passcode in "
                f"{credentials_path(settings)} is not the one Prime holds for it. Store the right one with "
                f"`pnpp prime trust --from HOST:PORT --login {login}`, or on this Prime reset the account with "
                f"`pnpp prime account create {login} --role gateway` and store what it prints")
    client.disconnect()
    return ""


def stop_prime_child(child: PrimeProcess) -> None:
    """SIGTERM the simulated Prime and wait for it (it drains its broker); kill it if it hangs."""
    child.stop()


@prime.group()
def account() -> None:
    """The broker's accounts on this simulated Prime (who may log in, and to which queues)."""


@account.command("create")
@click.argument("login")
@click.option("--role", type=click.Choice(["gateway", "prime"]), required=True,
              help="gateway: sends events, consumes commands; prime: the reverse")
@click.option("--activemq", is_flag=True, help="also keep the passcode for the ActiveMQ broker (it needs it clear)")
def account_create(login: str, role: str, activemq: bool) -> None:
    """Create (or reset) an account; prints its new passcode once, for the gateway's `pnpp prime trust --login`."""
    from .accounts import AccountError, AccountStore, accounts_path, new_passcode

    settings = _settings()
    passcode = new_passcode()
    try:
        AccountStore(accounts_path(settings)).put(login, role, passcode, activemq=activemq)
    except (AccountError, OSError) as exc:
        _fail(str(exc), 2)
    click.echo(f"created broker account {login!r} ({role}); its passcode, shown only now:", err=True)
    click.echo(passcode)


@account.command("list")
def account_list() -> None:
    """Every account with its role and grants (never a passcode)."""
    from .accounts import AccountError, AccountStore, accounts_path

    store = AccountStore(accounts_path(_settings()))
    try:
        logins = sorted(store.entries())
        for login in logins:
            acct = store.account(login)
            assert acct is not None
            click.echo(f"{login:20} {acct.role:8} send {','.join(acct.send) or '-'}  "
                       f"subscribe {','.join(acct.receive) or '-'}")
    except AccountError as exc:
        _fail(str(exc))


@account.command("delete")
@click.argument("login")
def account_delete(login: str) -> None:
    """Remove an account; its open connections keep working until they close."""
    from .accounts import AccountError, AccountStore, accounts_path

    try:
        removed = AccountStore(accounts_path(_settings())).delete(login)
    except (AccountError, OSError) as exc:
        _fail(str(exc))
    if not removed:
        _fail(f"no broker account {login!r}")
    click.echo(f"deleted broker account {login!r}")

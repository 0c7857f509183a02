"""``pnpp run``, ``status``, ``db``, ``certs`` and ``config``: the node itself."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from typing import Any

import click

from ..children import die_with_parent
from ..config import DIFFERENT_IP_REFUSAL, ConfigError, Settings, load_settings
from .common import GUNICORN_CONF, PROJECT_ROOT, app_of, app_or_exit, database_error_text, fail, settings_or_exit

NODE_UMASK = 0o077  # files 0600, directories 0700


# ---- run ----------------------------------------------------------------------------------------------------------
@click.command()
@click.option("--workers", type=int, default=None, help="gevent workers (default: PNP_WORKERS, 2)")
@click.option("--broker", type=click.Choice(["embedded", "activemq"]), default=None,
              help="the co-located simulated Prime's broker: embedded (default) or Debian's ActiveMQ 5.17 (integrated "
                   "mode only)")
@click.option("--log-format", type=click.Choice(["text", "json"]), default=None,
              help="one line per event as text or JSON (default: PNP_LOG_FORMAT, text)")
def run(workers: int | None, broker: str | None, log_format: str | None) -> None:
    """Start the whole single node in the foreground (migrations applied first).

    Integrated, the simulated Prime starts first, as on a Prime node; standalone, Prime is elsewhere and the
    gateway starts only once it trusts every Prime server it may talk to and has its login.
    """
    # Everything the node and its children create (database, Prime's stores, certificates, secrets) is its own only.
    os.umask(NODE_UMASK)
    if workers is not None:
        os.environ["PNP_WORKERS"] = str(workers)
    if log_format is not None:
        os.environ["PNP_LOG_FORMAT"] = log_format
    settings = settings_or_exit()
    if settings.standalone:
        if broker is not None:
            fail(f"--broker {broker}: a standalone gateway runs no Prime of its own (Prime is at "
                 f"{' and '.join(settings.prime_addresses)}); leave --broker out", 2)
        problems = standalone_start_problems(settings)
        if problems:
            fail("a standalone gateway cannot start yet:\n" + "\n".join(f"  - {p}" for p in problems), 2)
    try:
        _upgrade(settings, "head", quiet=True)
    except Exception as exc:  # an unreachable database: the operator needs the message, not a traceback
        fail(f"cannot prepare the database {settings.sqlalchemy_url.split('@')[-1]}: {database_error_text(exc)}")
    click.echo(
        f"pnp-integrated on {settings.node_name}: status http://{settings.vip}:{settings.http_port}/status, "
        f"https://{settings.vip}:{settings.https_port}/status, monitoring https://<node>:{settings.monitoring_port}"
        f"/status; data in {settings.data_dir.resolve()}"
    )
    from ..prime.commands import start_prime_child, stop_prime_child

    # Prime (broker, health) first, as on a Prime node; a standalone gateway's Prime is elsewhere.
    prime_child = None if settings.standalone else start_prime_child(settings, broker or "embedded")
    from .ha import start_pair_watch, stop_pair_watch

    pair_watch = start_pair_watch(settings)  # a standalone gateway pair: its health monitor and VIP watch
    cmd = [sys.executable, "-m", "gunicorn", "-c", str(GUNICORN_CONF), "--chdir", str(PROJECT_ROOT), "wsgi:app"]
    from .restart import GatewayRestart

    restart = GatewayRestart()  # an enrolment as a pair's secondary restarts the node with its new settings
    child = subprocess.Popen(cmd, preexec_fn=die_with_parent,  # gunicorn stops when pnpp run is killed
                             env=restart.child_environment())
    restart.watch(child)

    def forward(signum: int, _frame: Any) -> None:
        child.send_signal(signum)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, forward)
    try:
        code = child.wait()
    finally:
        stop_pair_watch(pair_watch)
        if prime_child is not None:
            stop_prime_child(prime_child)
    restart.restart_if_requested()
    sys.exit(code)


def standalone_start_problems(settings: Settings) -> list[str]:
    """What a standalone gateway lacks to talk to Prime: each Prime server's certificates, and its broker login."""
    from ..credentials import CredentialsMissing, gateway_credentials
    from ..tls import trusted_prime_hosts

    problems = []
    trusted = trusted_prime_hosts(settings)
    named = (("PNP_PRIME_ADDRESS", "primary" if settings.ha_mode == "different-ip" else ""),
             ("PNP_PRIME_SECONDARY_ADDRESS", "secondary"))
    for host, (variable, role) in zip(settings.prime_addresses, named, strict=False):
        if host not in trusted:
            who = f"Prime's {role} {host}" if role else f"Prime {host}"
            problems.append(f"{who} ({variable}) is not trusted yet: run `pnpp prime trust --from "
                            f"{host}:{settings.broker_port}` to fetch and store the certificates of its broker "
                            f"({settings.broker_port}) and health monitor ({settings.health_port})")
    try:
        gateway_credentials(settings)
    except CredentialsMissing as exc:
        problems.append(f"the gateway has no login on Prime's broker: {exc}")
    return problems


# ---- status -------------------------------------------------------------------------------------------------------
@click.command()
@click.option("--json", "as_json", is_flag=True, help="print the same data as JSON")
@click.option("--url", default=None, help="status URL (default: this node's monitoring port)")
def status(as_json: bool, url: str | None) -> None:
    """Show the gateway services table; exit code 1 when something is DOWN."""
    from ..status import format_table, status_is_healthy
    from ..tls import cert_paths, client_context

    try:
        settings = load_settings()
    except ConfigError as exc:
        refused = [p for p in exc.problems if DIFFERENT_IP_REFUSAL in p]
        if not refused:
            fail(str(exc), 2)
        # The node refuses to start in this HA mode; the table says so instead of reporting it merely down.
        data = {"state": "REFUSED", "rows": [
            {"service": "System", "mode": "", "status": "DOWN", "info": "not started: HA mode refused"},
            {"service": "PnP Gateway HA state", "mode": "different-ip", "status": "REFUSED",
             "info": DIFFERENT_IP_REFUSAL},
        ]}
        click.echo(json.dumps(data, indent=2) if as_json else format_table(data))
        sys.exit(1)
    url = url or f"https://127.0.0.1:{settings.monitoring_port}/status"
    try:
        ca = cert_paths(settings).ca
        if url.startswith("https:") and not ca.is_file():
            # No CA yet means no node ever started on this data dir: say that, not "No such file".
            raise FileNotFoundError(f"{ca} not found: no node has started with PNP_DATA_DIR={settings.data_dir}")
        with urllib.request.urlopen(url, timeout=10, context=client_context(settings)) as resp:
            data = json.load(resp)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        data = {
            "node": settings.node_name,
            "state": "DOWN",
            "rows": [{"service": "System", "mode": "", "status": "DOWN",
                      "info": f"gateway not reachable at {url}: {reason}"}],
        }
    if as_json:
        click.echo(json.dumps(data, indent=2))
    else:
        click.echo(format_table(data))
    sys.exit(0 if status_is_healthy(data) else 1)


# ---- db -----------------------------------------------------------------------------------------------------------
@click.group()
def db() -> None:
    """Database schema (Alembic migrations)."""


def _upgrade(settings: Settings, revision: str, quiet: bool = False) -> None:
    from flask_migrate import upgrade

    from ..database import migration_lock, schema_revisions
    from ..extension import create_app

    app = create_app(check_schema=False)
    with app.app_context(), migration_lock():
        before, head = schema_revisions()
        target = head if revision == "head" else revision
        if settings.gateway_in_pair and before is not None and before != target:
            _refuse_unless_leader(settings)
        upgrade(revision=revision)
        after, _ = schema_revisions()
        if after == head:
            from ..sealing import load_keys, seal_plaintext

            sealed = seal_plaintext(settings)  # profiles written before credentials were sealed
            if sealed:
                click.echo(f"sealed the credentials of {sealed} profile(s) stored in the clear")
            if settings.config_url_tokens:
                load_keys(settings)  # the key configuration URLs are signed with, before any worker signs one
            from ..provisioning.images import store_missing_image_chunks

            copied = store_missing_image_chunks()  # images the other node of a pair cannot serve yet
            if copied:
                click.echo(f"stored the content of {copied} image(s) in the database, for every node to serve")
    if not quiet or before != after:
        click.echo(f"database {settings.sqlalchemy_url.split('@')[-1]}: {before or 'empty'} -> {after} (head {head})")


def _refuse_unless_leader(settings: Settings) -> None:
    """In HA only the leader migrates: the other node may be serving devices on the schema it knows."""
    from ..bus import lease
    from ..ha import lease_holder_node

    row = lease.current()
    leader = lease_holder_node(row.holder) if row is not None else ""
    if leader and leader != settings.node_name:
        raise RuntimeError(
            f"node {leader} leads this database: in HA only the leader migrates. Run `pnpp db upgrade` on {leader} "
            "(the README's Upgrades section gives the rolling order)"
        )


@db.command("upgrade")
@click.argument("revision", default="head")
def db_upgrade(revision: str) -> None:
    """Apply migrations up to REVISION (default: head). This is the upgrade step of a new release."""
    settings = settings_or_exit()
    try:
        _upgrade(settings, revision)
    except Exception as exc:  # Alembic raises many types; the operator needs the message, not a traceback
        fail(f"migration failed: {exc}")


@db.command("copy")
@click.option("--to", "target_url", required=True, metavar="URL",
              help="the database to copy into (empty), e.g. postgresql+psycopg://pnp:PASSWORD@10.0.0.9/pnp")
@click.option("--from", "source_url", default=None, metavar="URL",
              help="the database to copy from (default: this node's), e.g. sqlite:////var/lib/pnp/pnp.sqlite3")
def db_copy(target_url: str, source_url: str | None) -> None:
    """Copy this node's data (profiles, images' rows, devices, jobs and their steps, unsent events for Prime, users,
    tokens, the audit log) into an empty database: a single gateway on SQLite becoming a node of a pair.

    Stop `pnpp run` first: what it writes meanwhile would not be copied. Live device sessions, the leader lease and
    console sign-ins are not copied; the images' content goes in when `pnpp run` starts on the new database.
    """
    import dataclasses
    import socket

    from ..database import CopyRefused, copy_database
    from .enrolment import pair_database

    settings = settings_or_exit()
    if source_url:
        settings = dataclasses.replace(settings, database_url=source_url)
    if target_url == settings.sqlalchemy_url:
        fail("--to names the database copied from: give the database to copy into", 2)
    try:
        socket.create_connection(("127.0.0.1", settings.http_port), timeout=1).close()
    except OSError:
        pass
    else:
        fail(f"this node is running (port {settings.http_port} answers): stop `pnpp run` first, so that nothing it "
             "writes meanwhile is left behind", 2)
    from ..extension import SchemaError

    try:  # at the head revision, or the message says to upgrade it first
        source = app_of(settings)
    except (ConfigError, SchemaError) as exc:
        fail(str(exc), 2)
    try:
        target = pair_database(dataclasses.replace(settings, database_url=target_url))
        with source.app_context():
            from ..models import db as source_db

            source_engine = source_db.engine
        with target.app_context():
            from ..models import db as target_db

            copied = copy_database(source_engine, target_db.engine)
    except CopyRefused as exc:
        fail(str(exc), 2)
    except Exception as exc:  # the driver's own words: unreachable, refused login, another revision
        fail(f"cannot copy into {target_url.split('@')[-1]}: {database_error_text(exc)}")
    shown = ", ".join(f"{n} {name}" for name, n in copied.items() if n) or "nothing (this node's database is empty)"
    click.echo(f"copied into {target_url.split('@')[-1]}: {shown}")


@db.command("downgrade")
@click.argument("revision")
def db_downgrade(revision: str) -> None:
    """Revert migrations down to REVISION (``base`` removes every table)."""
    from flask_migrate import downgrade

    app = app_or_exit(check_schema=False)
    with app.app_context():
        try:
            downgrade(revision=revision)
        except Exception as exc:
            fail(f"downgrade failed: {exc}")


@db.command("current")
def db_current() -> None:
    """Print the database revision and the revision this code needs."""
    from ..database import schema_revisions

    app = app_or_exit(check_schema=False)
    with app.app_context():
        current, head = schema_revisions()
    click.echo(f"database: {current or 'empty'}\ncode needs: {head}")
    sys.exit(0 if current == head else 1)


# ---- certs / config -----------------------------------------------------------------------------------------------
@click.group()
def certs() -> None:
    """TLS certificates."""


@certs.command("show")
def certs_show() -> None:
    """Show the server certificate the TLS ports present (generating it on first use)."""
    from ..tls import describe, ensure_certificates

    settings = settings_or_exit()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    for key, value in describe(ensure_certificates(settings)).items():
        click.echo(f"{key:18} {', '.join(value) if isinstance(value, list) else value}")


@click.group()
def config() -> None:
    """Configuration."""


@config.command("show")
def config_show() -> None:
    """Validate the settings and print them."""
    settings = settings_or_exit()
    for key, value in settings.public_dict().items():
        click.echo(f"{key} = {value}")

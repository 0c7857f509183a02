"""Run Debian's ActiveMQ 5.17 as the simulated Prime's broker (``--broker activemq``), without systemd.

The configuration comes from ``deploy/activemq/activemq.xml.in``; key and trust stores are built from the node's PEM
certificates with ``openssl pkcs12`` and ``keytool``. With ``PNP_BROKER_CLIENT_CA_FILE`` the stomp+ssl connector
needs a client certificate (``needClientAuth``) and the trust store holds that bundle's CA certificates instead of the
node's CA. ActiveMQ runs as a child process in the foreground.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import quoteattr

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ..config import Settings, tls_floor
from ..credentials import write_secret
from ..tls import ensure_certificates
from .accounts import AccountError, AccountStore, accounts_path

ACTIVEMQ_HOME = Path("/usr/share/activemq")
ACTIVEMQ_JAR = ACTIVEMQ_HOME / "bin" / "activemq.jar"
TEMPLATE = Path(__file__).resolve().parent.parent.parent / "deploy" / "activemq" / "activemq.xml.in"
MAX_FRAME_BYTES = 10 * 1024 * 1024
MISSING = "ActiveMQ is not installed (no {jar}): install Debian's package with `apt-get install -y activemq`"


class ActiveMQError(RuntimeError):
    """ActiveMQ could not be prepared or started; the message says why and what to do."""


@dataclass(frozen=True)
class ActiveMQLayout:
    base: Path

    @property
    def conf(self) -> Path:
        return self.base / "conf"

    @property
    def data(self) -> Path:
        return self.base / "data"

    @property
    def config_file(self) -> Path:
        return self.conf / "activemq.xml"

    @property
    def keystore(self) -> Path:
        return self.conf / "broker.p12"

    @property
    def truststore(self) -> Path:
        return self.conf / "trust.p12"

    @property
    def truststore_source(self) -> Path:
        """The SHA-256 of the certificates the trust store was built from: rebuilt when they change."""
        return self.conf / "trust.sha256"

    @property
    def password_file(self) -> Path:
        return self.conf / "store-password"

    @property
    def log_file(self) -> Path:
        return self.base / "activemq.log"


def layout(settings: Settings) -> ActiveMQLayout:
    return ActiveMQLayout((settings.data_dir / "prime" / "activemq").resolve())


def _run(cmd: list[str], env: dict[str, str], what: str) -> None:
    try:
        result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
    except FileNotFoundError as exc:
        raise ActiveMQError(f"{what}: {cmd[0]} not found (install openssl and a Java runtime)") from exc
    if result.returncode != 0:
        raise ActiveMQError(f"{what} failed: {(result.stderr or result.stdout).strip()[-400:]}")


def _trusted(settings: Settings, node_ca: Path) -> list[bytes]:
    """The CA certificates (PEM) of the trust store: the client CA bundle when client certificates are required."""
    source = Path(settings.broker_client_ca_file) if settings.broker_client_ca_file else node_ca
    try:
        certificates = x509.load_pem_x509_certificates(source.read_bytes())
    except (OSError, ValueError) as exc:
        raise ActiveMQError(f"{source}: not a PEM bundle of CA certificates ({exc})") from exc
    return [c.public_bytes(serialization.Encoding.PEM) for c in certificates]


def _stores(settings: Settings, where: ActiveMQLayout) -> str:
    """Build the key and trust stores (again when their certificates changed); returns the store password."""
    certs = ensure_certificates(settings)
    where.conf.mkdir(parents=True, exist_ok=True)
    if where.password_file.exists():
        password = where.password_file.read_text().strip()
    else:
        password = secrets.token_urlsafe(18)
        write_secret(where.password_file, password)
    env = {**os.environ, "PNP_STORE_PASSWORD": password}
    newest_cert = max(p.stat().st_mtime for p in (certs.cert, certs.key))
    if not (where.keystore.exists() and where.keystore.stat().st_mtime >= newest_cert):
        exported = where.conf / "export.p12"
        for path in (exported, where.keystore):
            path.unlink(missing_ok=True)
        _run(["openssl", "pkcs12", "-export", "-in", str(certs.cert), "-inkey", str(certs.key), "-name", "broker",
              "-out", str(exported), "-passout", "env:PNP_STORE_PASSWORD"], env, "openssl pkcs12 (key store)")
        _run(["keytool", "-importkeystore", "-noprompt", "-srckeystore", str(exported), "-srcstoretype", "PKCS12",
              "-srcstorepass:env", "PNP_STORE_PASSWORD", "-destkeystore", str(where.keystore), "-deststoretype",
              "PKCS12", "-deststorepass:env", "PNP_STORE_PASSWORD"], env, "keytool -importkeystore")
        exported.unlink(missing_ok=True)
        where.keystore.chmod(0o600)
    trusted = _trusted(settings, certs.ca)
    digest = hashlib.sha256(b"".join(trusted)).hexdigest()
    built_from = where.truststore_source.read_text().strip() if where.truststore_source.exists() else ""
    if not (where.truststore.exists() and built_from == digest):
        where.truststore.unlink(missing_ok=True)
        one = where.conf / "trusted.pem"
        try:
            # keytool takes one certificate per alias: a bundle of several CAs is imported one by one.
            for index, pem in enumerate(trusted):
                one.write_bytes(pem)
                _run(["keytool", "-importcert", "-noprompt", "-alias", f"pnp-ca-{index}", "-file", str(one),
                      "-keystore", str(where.truststore), "-storetype", "PKCS12", "-storepass:env",
                      "PNP_STORE_PASSWORD"], env, "keytool -importcert (trust store)")
        finally:
            one.unlink(missing_ok=True)
        where.truststore.chmod(0o600)
        where.truststore_source.write_text(digest + "\n")
    return password


def security_plugins(store: AccountStore) -> str:
    """ActiveMQ's ``<plugins>``: every account a user in a group of its own, every grant an authorization entry.

    Nobody is anonymous; a destination without an entry is refused to everybody.
    """
    users = store.activemq_users()
    grants: dict[tuple[str, str], dict[str, set[str]]] = {}
    lines = ['<plugins>', '  <simpleAuthenticationPlugin anonymousAccessAllowed="false">', "    <users>"]
    for account, passcode in users:
        group = f"account-{account.login}"
        lines.append(f"      <authenticationUser username={quoteattr(account.login)} password={quoteattr(passcode)}"
                     f" groups={quoteattr(group)}/>")
        for right, patterns in (("write", account.send), ("read", account.receive)):
            for pattern in patterns:
                kind, _, name = pattern.lstrip("/").partition("/")
                acl = grants.setdefault((kind, name), {"read": set(), "write": set(), "admin": set()})
                acl[right].add(group)
                acl["admin"].add(group)  # creating a destination on first use needs admin
    lines += ["    </users>", "  </simpleAuthenticationPlugin>", "  <authorizationPlugin><map><authorizationMap>",
              "    <authorizationEntries>"]
    for (kind, name), acl in sorted(grants.items()):
        rights = " ".join(f"{right}={quoteattr(','.join(sorted(groups)))}" for right, groups in acl.items() if groups)
        lines.append(f"      <authorizationEntry {kind}={quoteattr(name)} {rights}/>")
    lines += ["    </authorizationEntries>", "  </authorizationMap></map></authorizationPlugin>", "</plugins>"]
    return "\n    ".join(lines)


def render_config(settings: Settings, where: ActiveMQLayout, password: str, template: Path = TEMPLATE) -> str:
    """The xbean configuration for these settings (TLS floor from PNP_TLS_MIN_VERSION, never below 1.2; a client
    certificate required on the TLS port with PNP_BROKER_CLIENT_CA_FILE)."""
    protocols = "TLSv1.3" if tls_floor(settings.tls_min_version) == "1.3" else "TLSv1.2,TLSv1.3"
    values = {
        "BROKER_NAME": f"prime-{settings.node_name}".replace(" ", "-"),
        "DATA_DIR": str(where.data),
        "KEYSTORE": str(where.keystore),
        "TRUSTSTORE": str(where.truststore),
        "STORE_PASSWORD": password,
        "TLS_HOST": "0.0.0.0",
        "TLS_PORT": str(settings.broker_port),
        "TLS_PROTOCOLS": protocols,
        "NEED_CLIENT_AUTH": "true" if settings.broker_client_ca_file else "false",
        "PLAIN_HOST": "127.0.0.1",
        "PLAIN_PORT": str(settings.bus_port),
        "MAX_FRAME_BYTES": str(MAX_FRAME_BYTES),
        "SECURITY_PLUGINS": security_plugins(AccountStore(accounts_path(settings))),
    }
    text = template.read_text()
    for key, value in values.items():
        text = text.replace(f"@{key}@", value)
    return text


def prepare(settings: Settings) -> ActiveMQLayout:
    """Write stores and configuration under ``<data_dir>/prime/activemq``."""
    if not ACTIVEMQ_JAR.exists():
        raise ActiveMQError(MISSING.format(jar=ACTIVEMQ_JAR))
    if shutil.which("java") is None:
        raise ActiveMQError("no `java` on PATH: ActiveMQ needs a Java runtime (apt-get install -y activemq pulls one)")
    where = layout(settings)
    password = _stores(settings, where)
    where.data.mkdir(parents=True, exist_ok=True)
    try:
        text = render_config(settings, where, password)
    except AccountError as exc:
        raise ActiveMQError(str(exc)) from exc
    write_secret(where.config_file, text)  # it holds the store password and the accounts' passcodes
    return where


def _listening(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


class ActiveMQProcess:
    """ActiveMQ as a child process; ``start`` returns once both STOMP ports accept connections."""

    def __init__(self, settings: Settings, start_timeout: float = 90.0) -> None:
        self.settings = settings
        self.start_timeout = start_timeout
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        for port in (self.settings.broker_port, self.settings.bus_port):
            if _listening("127.0.0.1", port):
                raise ActiveMQError(f"port {port} is already in use: stop the other broker or move PNP_*_PORT")
        where = prepare(self.settings)
        cmd = [
            "java", "-Xms64M", "-Xmx256M", "-Djava.awt.headless=true",
            f"-Dactivemq.home={ACTIVEMQ_HOME}", f"-Dactivemq.base={where.base}", f"-Dactivemq.conf={where.conf}",
            f"-Dactivemq.data={where.data}", "-jar", str(ACTIVEMQ_JAR), "start", f"xbean:file:{where.config_file}",
        ]
        log_fh = where.log_file.open("ab")
        try:
            self.process = subprocess.Popen(cmd, stdout=log_fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        finally:
            log_fh.close()
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ActiveMQError(f"ActiveMQ exited with code {self.process.returncode}: {self._log_tail(where)}")
            if _listening("127.0.0.1", self.settings.broker_port) and _listening("127.0.0.1", self.settings.bus_port):
                return
            time.sleep(0.3)
        self.stop()
        raise ActiveMQError(f"ActiveMQ did not open its ports within {self.start_timeout:g}s: {self._log_tail(where)}")

    @staticmethod
    def _log_tail(where: ActiveMQLayout) -> str:
        try:
            lines = where.log_file.read_text(errors="replace").strip().splitlines()
        except OSError:
            return "no log"
        return " | ".join(lines[-5:]) + f" (log: {where.log_file})"

    def stop(self, timeout: float = 20.0) -> None:
        """Stop ActiveMQ (SIGTERM: it closes KahaDB cleanly), killing it after ``timeout`` seconds."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)

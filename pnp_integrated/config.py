"""Typed settings: one object, loaded once from a TOML file and ``PNP_*`` environment variables.

Precedence (lowest to highest): built-in defaults, the TOML file named by ``PNP_CONFIG``, environment variables,
explicit overrides passed to :func:`load_settings` (tests, ``create_app(config=...)``). Every problem found is
collected and reported at once in a :class:`ConfigError` whose message names the setting to change.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import os
import re
import socket
import ssl
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MODES = ("integrated", "standalone")
HA_MODES = ("none", "vip", "different-ip")
GATEWAY_HA_MODES = ("none", "pair")
GATEWAY_ROLES = ("primary", "secondary")
FAILBACK_MODES = ("manual", "auto")
VIP_MOVERS = ("keepalived", "builtin")
TLS_VERSIONS = ("1.0", "1.1", "1.2", "1.3")
LOG_FORMATS = ("text", "json")

# Prime documents that the integrated gateway cannot follow an HA pair that uses two addresses.
DIFFERENT_IP_REFUSAL = (
    "Prime HA with different primary and secondary addresses is not supported by the integrated PnP gateway "
    "(Prime documents this limitation): devices would lose the gateway address on failover. Either configure "
    "Prime HA with a virtual IP (PNP_HA_MODE=vip, PNP_VIP=<the virtual IP>) or deploy a standalone PnP gateway "
    "(PNP_MODE=standalone with PNP_PRIME_ADDRESS and PNP_PRIME_SECONDARY_ADDRESS; `pnpp setup advance` sets it up)."
)


class ConfigError(ValueError):
    """A setting is wrong; the message says which one and what to change."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("invalid configuration:\n" + "\n".join(f"  - {p}" for p in problems))


@dataclass(frozen=True)
class Settings:
    """Every knob of the gateway. Field names are the TOML keys; ``PNP_<NAME>`` are the environment variables."""

    data_dir: Path = Path("var")
    # integrated: co-located on a Prime node, following Prime's HA; standalone: a gateway host of its own (or a
    # gateway HA pair) talking to Prime over the network.
    mode: str = "integrated"
    vip: str = "127.0.0.1"
    node_address: str = ""  # this node's own address; defaults to the VIP
    node_name: str = field(default_factory=socket.gethostname)
    http_port: int = 80
    https_port: int = 443
    cns_port_base: int = 11010
    broker_port: int = 61617
    bus_port: int = 61613
    health_port: int = 8082
    database_url: str = ""  # SQLite file in the data dir when empty
    ha_mode: str = "none"  # Prime's HA: none, vip, different-ip (standalone only)
    # Standalone: Prime's address (its VIP with ha_mode=vip, its primary with different-ip), and its secondary's.
    prime_address: str = ""
    prime_secondary_address: str = ""
    # Standalone: a gateway HA pair of its own (two gateways, one shared PostgreSQL, the gateway VIP in ``vip``).
    gateway_ha: str = "none"
    gateway_peer: str = ""  # the other gateway's own address
    gateway_role: str = "primary"
    gateway_failback: str = "manual"  # Prime's recommendation; auto: after gateway_hold_down s of a healthy primary
    gateway_hold_down: float = 300.0
    gateway_vip_mover: str = "keepalived"  # or builtin (labs): the pair's own health watch moves the VIP
    gateway_vip_interface: str = ""
    gateway_vip_prefix: int = 24
    virtual_host_name: str = ""  # the name the gateway VIP is known by (certificates, bootstrap lines)
    tls_min_version: str = "1.2"
    tls_cert_file: str = ""  # operator-supplied server certificate (PEM); generated when empty
    tls_key_file: str = ""
    tls_ca_file: str = ""
    tls_handshake_timeout: float = 10.0
    http_idle_timeout: float = 60.0  # an HTTP(S) client that sends nothing for this long is closed
    http_header_timeout: float = 30.0  # ... and one that has begun a request gets this long for its headers
    cns_hello_timeout: float = 10.0
    cns_port_capacity: int = 500
    cns_max_header_bytes: int = 8192
    cns_max_body_bytes: int = 1024 * 1024
    http_max_body_bytes: int = 1024 * 1024
    workers: int = 2
    log_format: str = "text"
    drain_timeout: float = 10.0
    # PostgreSQL ends a transaction of this node that sits idle this long: a node that dies mid-transaction (power,
    # cable) releases its row locks after this, not when TCP gives up hours later. Also the lock-wait bound.
    db_dead_peer_timeout: float = 5.0
    retention_days: float = 7.0  # closed device sessions and events already sent to Prime are kept this long
    # The gateway's login to Prime's broker (JSON login/passcode, 0600); <data_dir>/secrets/... when empty.
    broker_credentials_file: str = ""
    # The simulated Prime's broker closes a client that agreed no heart-beats and sent nothing for this long.
    broker_idle_timeout: float = 120.0
    # A client certificate (PEM) and its unencrypted key the gateway presents on Prime's broker TLS port, beside its
    # login, for a broker that asks for one; both or neither.
    broker_client_cert_file: str = ""
    broker_client_key_file: str = ""
    # The simulated Prime: CA certificates (PEM) a client of its broker's TLS port must present a certificate from,
    # in addition to the login; empty: no certificate asked for.
    broker_client_ca_file: str = ""
    # Below this much free space where the node writes, it takes no new device work (503 / BUSY, a DOWN Disk row);
    # 0 turns the check off.
    disk_min_free_mb: int = 256
    # The keys that seal profile credentials in the database (JSON, 0600); <data_dir>/secrets/... when empty. Both
    # nodes of an HA pair need the same file.
    profile_keys_file: str = ""
    # What one CNS session may PUBLISH (every event is stored and sent to Prime); 0: no limit.
    cns_publish_per_minute: int = 120
    cns_publish_bytes_per_minute: int = 8 * 1024 * 1024
    # Devices never seen before that one source address may introduce per minute (each is a row and a Prime event);
    # 0: no limit. Loopback sources (this host's own simulators) are not limited.
    new_devices_per_source_per_minute: int = 300
    # Every configuration URL the gateway sends carries a token bound to the one request it serves (and expiring
    # after the lifetime); the Config Web Service serves nothing without a valid one, so knowing a serial is not
    # enough to read a device's configuration.
    config_url_tokens: bool = False
    config_url_token_lifetime: float = 3600.0
    # Devices' client certificates on HTTPS (Cisco SUDI): a CA bundle (PEM). A device that presents a certificate
    # must chain to it, and may then speak only for the serial in it. With device_cert_required, Open PnP is served
    # only to devices with such a certificate.
    device_ca_file: str = ""
    device_cert_required: bool = False

    # ---- derived values -------------------------------------------------------------------------------------
    @property
    def monitoring_port(self) -> int:
        return self.cns_port_base

    @property
    def dispatcher_plain_port(self) -> int:
        return self.cns_port_base + 1

    @property
    def dispatcher_tls_port(self) -> int:
        return self.cns_port_base + 2

    @property
    def gateway_ports(self) -> list[int]:
        """base+3 .. base+12: odd offsets plain, even offsets TLS (11013 plain, 11014 TLS, ...)."""
        return list(range(self.cns_port_base + 3, self.cns_port_base + 13))

    def gateway_port_is_tls(self, port: int) -> bool:
        return (port - self.cns_port_base) % 2 == 0

    @property
    def gateway_plain_ports(self) -> list[int]:
        return [p for p in self.gateway_ports if not self.gateway_port_is_tls(p)]

    @property
    def gateway_tls_ports(self) -> list[int]:
        return [p for p in self.gateway_ports if self.gateway_port_is_tls(p)]

    @property
    def standalone(self) -> bool:
        return self.mode == "standalone"

    @property
    def gateway_in_pair(self) -> bool:
        """Whether this gateway has an HA peer: it serves devices only once it holds the VIP and the lease.

        Integrated, the pair is Prime's (``ha_mode``); standalone, it is the gateways' own (``gateway_ha``).
        """
        return self.gateway_ha == "pair" if self.standalone else self.ha_mode != "none"

    @property
    def prime_addresses(self) -> list[str]:
        """Prime's broker and health monitor addresses, primary first: the co-located node's VIP when integrated."""
        if not self.standalone:
            return [self.vip]
        return [a for a in (self.prime_address, self.prime_secondary_address) if a]

    @property
    def node_addr(self) -> str:
        return self.node_address or self.vip

    @property
    def sqlalchemy_url(self) -> str:
        return self.database_url or f"sqlite:///{self.sqlite_path.resolve()}"

    @property
    def sqlite_path(self) -> Path:
        """The single node's database file, used when no PNP_DATABASE_URL is set."""
        return self.data_dir / "pnp.sqlite3"

    @property
    def certs_dir(self) -> Path:
        return self.data_dir / "certs"

    @property
    def images_dir(self) -> Path:
        return self.data_dir / "images"

    @property
    def resources_dir(self) -> Path:
        return self.data_dir / "resources"

    def public_dict(self) -> dict[str, Any]:
        """Settings safe to show (no secrets are held here, but database passwords are masked)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = str(value) if isinstance(value, Path) else value
        if "@" in out["database_url"]:
            scheme, rest = out["database_url"].split("://", 1)
            out["database_url"] = f"{scheme}://***@{rest.split('@', 1)[1]}"
        return out


_FIELDS = {f.name: f for f in dataclasses.fields(Settings)}


def _env_name(name: str) -> str:
    return "PNP_" + name.upper()


def _coerce(name: str, raw: Any, origin: str, problems: list[str]) -> Any:
    """Convert one raw value to the field's type, recording a readable problem instead of raising."""
    default = _FIELDS[name].default
    if default is dataclasses.MISSING:  # default_factory fields are strings
        default = ""
    try:
        if isinstance(default, bool):
            if isinstance(raw, bool):
                return raw
            return str(raw).strip().lower() in ("1", "true", "yes", "on")
        if isinstance(default, int):
            if isinstance(raw, bool) or not re.fullmatch(r"[+-]?[0-9]+", str(raw).strip()):
                raise ValueError
            return int(str(raw).strip())
        if isinstance(default, float):
            return float(str(raw).strip())
        if isinstance(default, Path):
            return Path(str(raw))
        return str(raw).strip()
    except ValueError:
        kind = type(default).__name__
        problems.append(f"{origin} = {raw!r} is not a valid {'number' if kind in ('int', 'float') else kind}")
        return default


def _read_toml(path: Path, problems: list[str]) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        problems.append(f"PNP_CONFIG={path}: file not found; fix the path or unset PNP_CONFIG")
        return {}
    except tomllib.TOMLDecodeError as exc:
        problems.append(f"PNP_CONFIG={path}: not valid TOML ({exc})")
        return {}
    except OSError as exc:  # a directory, no permission ...
        problems.append(f"PNP_CONFIG={path}: cannot read it ({exc.strerror}); point PNP_CONFIG at a TOML file")
        return {}
    # Tables are accepted for readability ([gateway], [tls] ...) and flattened; keys must be unique overall.
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            for sub, subval in value.items():
                flat[sub if sub in _FIELDS else f"{key}_{sub}"] = subval
        else:
            flat[key] = value
    return flat


def load_settings(
    overrides: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None, *, gateway: bool = True
) -> Settings:
    """Build and validate the settings. Raises :class:`ConfigError` listing every problem.

    ``gateway=False`` (the simulated Prime's processes) leaves out the rules that only a gateway's deployment
    obeys: a Prime pair with different addresses is Prime's own business.
    """
    env = os.environ if environ is None else environ
    problems: list[str] = []
    values: dict[str, Any] = {}
    origins: dict[str, str] = {}

    config_path = env.get("PNP_CONFIG") or (overrides or {}).get("config_file")
    if config_path:
        for key, raw in _read_toml(Path(config_path), problems).items():
            if key not in _FIELDS:
                problems.append(f"{config_path}: unknown setting {key!r}; known settings: {', '.join(_FIELDS)}")
                continue
            values[key] = _coerce(key, raw, f"{config_path}: {key}", problems)
            origins[key] = f"{key} in {config_path}"

    for name in _FIELDS:
        var = _env_name(name)
        if var in env and env[var] != "":
            values[name] = _coerce(name, env[var], var, problems)
            origins[name] = var

    for key, raw in (overrides or {}).items():
        if key == "config_file":
            continue
        if key not in _FIELDS:
            problems.append(f"unknown setting {key!r}")
            continue
        values[key] = _coerce(key, raw, key, problems)
        origins[key] = key

    settings = Settings(**values)
    problems.extend(validate(settings, lambda n: origins.get(n, _env_name(n)), gateway=gateway))
    if problems:
        raise ConfigError(problems)
    return settings


def validate(s: Settings, origin: Any = _env_name, *, gateway: bool = True) -> list[str]:
    """Every rule a setting must satisfy; returns readable problems (empty when all is well)."""
    problems: list[str] = []

    def bad(name: str, text: str) -> None:
        problems.append(f"{origin(name)}: {text}")

    for name in ("http_port", "https_port", "broker_port", "bus_port", "health_port"):
        port = getattr(s, name)
        if not 1 <= port <= 65535:
            bad(name, f"{port} is not a TCP port (1-65535)")
    if not 1 <= s.cns_port_base <= 65535 - 12:
        bad("cns_port_base", f"{s.cns_port_base} leaves no room for the 13 CNS ports (base .. base+12); use 1-65523")
    else:
        cns = set(range(s.cns_port_base, s.cns_port_base + 13))
        for name in ("http_port", "https_port", "broker_port", "bus_port", "health_port"):
            if getattr(s, name) in cns:
                last = s.cns_port_base + 12
                bad(name, f"port {getattr(s, name)} collides with the CNS ports {s.cns_port_base}-{last}")
    seen: dict[int, str] = {}
    for name in ("http_port", "https_port", "broker_port", "bus_port", "health_port"):
        port = getattr(s, name)
        if port in seen:
            bad(name, f"port {port} is already used by {_env_name(seen[port])}")
        seen[port] = name

    for name in ("vip", "node_address"):
        value = getattr(s, name)
        if name == "node_address" and not value:
            continue
        try:
            ipaddress.ip_address(value)
        except ValueError:
            bad(name, f"{value!r} is not an IP address")

    if s.ha_mode not in HA_MODES:
        bad("ha_mode", f"{s.ha_mode!r} is not one of: {', '.join(HA_MODES)}")
    elif s.ha_mode == "different-ip" and gateway and s.mode == "integrated":
        bad("ha_mode", DIFFERENT_IP_REFUSAL)
    if gateway:
        problems.extend(_mode_problems(s, origin))

    version = s.tls_min_version.lower().removeprefix("tlsv").removeprefix("tls")
    if version.startswith(("ssl", "sslv")) or version in ("2", "3", "2.0", "3.0"):
        bad(
            "tls_min_version",
            f"{s.tls_min_version!r}: SSLv2/SSLv3 are broken (POODLE) and can never be enabled;"
            " use 1.2 (default) or 1.3, or 1.0/1.1 only for old device images",
        )
    elif version not in TLS_VERSIONS:
        bad("tls_min_version", f"{s.tls_min_version!r} is not a TLS version; use 1.2 (default), 1.3, 1.1 or 1.0")

    supplied = [n for n in ("tls_cert_file", "tls_key_file") if getattr(s, n)]
    if len(supplied) == 1:
        bad("tls_cert_file", "supply both PNP_TLS_CERT_FILE and PNP_TLS_KEY_FILE, or neither to generate them")
    missing = False
    for name in ("tls_cert_file", "tls_key_file", "tls_ca_file"):
        value = getattr(s, name)
        if value and not Path(value).is_file():
            bad(name, f"{value}: no such file")
            missing = True
    if len(supplied) == 2 and not missing:
        problems.extend(_check_key_pair(s, origin))
    problems.extend(_broker_client_problems(s, origin))

    for name in ("tls_handshake_timeout", "http_idle_timeout", "http_header_timeout", "cns_hello_timeout",
                 "drain_timeout", "db_dead_peer_timeout", "retention_days", "broker_idle_timeout"):
        if not math.isfinite(getattr(s, name)) or getattr(s, name) <= 0:
            bad(name, f"must be a positive number of {'days' if name.endswith('_days') else 'seconds'}")
    for name in ("cns_port_capacity", "workers"):
        if getattr(s, name) < 1:
            bad(name, "must be at least 1")
    for name in ("cns_publish_per_minute", "cns_publish_bytes_per_minute", "new_devices_per_source_per_minute"):
        if getattr(s, name) < 0:
            bad(name, "must be 0 (no limit) or more")
    if not math.isfinite(s.config_url_token_lifetime) or not 60 <= s.config_url_token_lifetime <= 7 * 86400:
        bad("config_url_token_lifetime", "must be a number of seconds from 60 to 604800 (a week)")
    if s.device_ca_file:
        problem = _ca_bundle_problem(Path(s.device_ca_file))
        if problem:
            bad("device_ca_file", f"{s.device_ca_file}: {problem}")
    elif s.device_cert_required:
        bad("device_cert_required", "needs PNP_DEVICE_CA_FILE, the CA bundle device certificates chain to "
            "(Cisco's SUDI CA certificates)")
    if s.disk_min_free_mb < 0:
        bad("disk_min_free_mb", "must be a number of MiB, 0 or more (0 turns the free-space check off)")
    if s.cns_max_header_bytes < 256:
        bad("cns_max_header_bytes", "must be at least 256")
    if s.cns_max_body_bytes < 1024 or s.http_max_body_bytes < 1024:
        bad("cns_max_body_bytes" if s.cns_max_body_bytes < 1024 else "http_max_body_bytes", "must be at least 1024")
    if s.log_format not in LOG_FORMATS:
        bad("log_format", f"{s.log_format!r} is not one of: {', '.join(LOG_FORMATS)}")
    if s.database_url:
        problem = _database_url_problem(s.database_url)
        if problem:
            bad("database_url", f"{problem} (use sqlite:///path or postgresql+psycopg://user@host/db)")
    # The first existing ancestor decides whether the data dir can be created at all.
    existing = next((d for d in (s.data_dir, *s.data_dir.parents) if d.exists()), None)
    if existing is not None and not existing.is_dir():
        bad("data_dir", f"{existing} exists and is not a directory")
    return problems


def _address_problem(value: str) -> str:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return f"{value!r} is not an IP address"
    return ""


def _mode_problems(s: Settings, origin: Any) -> list[str]:
    """The rules of the deployment mode: where Prime is, and the gateway pair (standalone only)."""
    problems: list[str] = []

    def bad(name: str, text: str) -> None:
        problems.append(f"{origin(name)}: {text}")

    for name, choices in (("mode", MODES), ("gateway_ha", GATEWAY_HA_MODES), ("gateway_role", GATEWAY_ROLES),
                          ("gateway_failback", FAILBACK_MODES), ("gateway_vip_mover", VIP_MOVERS)):
        if getattr(s, name) not in choices:
            bad(name, f"{getattr(s, name)!r} is not one of: {', '.join(choices)}")
    if not s.standalone:
        for name in ("prime_address", "prime_secondary_address", "gateway_peer"):
            if getattr(s, name):
                bad(name, "is a setting of a standalone gateway; the integrated gateway's Prime is this node "
                    "(set PNP_MODE=standalone, or unset it)")
        if s.gateway_ha == "pair":
            bad("gateway_ha", "the integrated gateway follows Prime's HA (PNP_HA_MODE=vip); a gateway pair of its "
                "own is for a standalone gateway (PNP_MODE=standalone)")
        return problems
    if not s.prime_address:
        bad("prime_address", "a standalone gateway needs Prime's address (Prime's virtual IP with PNP_HA_MODE=vip, "
            "its primary server with different-ip)")
    for name in ("prime_address", "prime_secondary_address", "gateway_peer"):
        value = getattr(s, name)
        if value and _address_problem(value):
            bad(name, _address_problem(value))
    if s.ha_mode == "different-ip":
        if not s.prime_secondary_address:
            bad("prime_secondary_address", "Prime HA with different addresses: give the secondary server's address "
                "(PNP_PRIME_ADDRESS is the primary's)")
        elif s.prime_secondary_address == s.prime_address:
            bad("prime_secondary_address", "is the primary's address too; with one address use PNP_HA_MODE=vip")
    elif s.prime_secondary_address:
        bad("prime_secondary_address", f"only Prime HA with different addresses has a secondary address "
            f"(PNP_HA_MODE is {s.ha_mode}); set PNP_HA_MODE=different-ip or unset it")
    if s.gateway_ha == "pair":
        if not s.gateway_peer:
            bad("gateway_peer", "a gateway HA pair needs the other gateway's own address")
        if not s.node_address:
            bad("node_address", "a gateway of an HA pair needs its own address (PNP_VIP is the pair's VIP)")
        elif s.gateway_peer and s.gateway_peer == s.node_address:
            bad("gateway_peer", "is this gateway's own address; give the other gateway's")
        if s.node_address and s.vip == s.node_address:
            bad("vip", "the gateway pair's VIP must differ from either gateway's own address")
        if not _address_problem(s.vip) and ipaddress.ip_address(s.vip).is_loopback:
            bad("vip", f"{s.vip} is a loopback address; the gateway pair's VIP must be able to move between hosts")
        if s.gateway_vip_mover == "builtin" and not s.gateway_vip_interface:
            bad("gateway_vip_interface", "the built-in VIP mover needs the interface the VIP goes on (e.g. eth0)")
        if not 1 <= s.gateway_vip_prefix <= 128:
            bad("gateway_vip_prefix", "must be a prefix length (1-128)")
        if not s.database_url.startswith("postgresql"):
            bad("database_url", "the two gateways of a pair share one PostgreSQL database: set "
                "PNP_DATABASE_URL=postgresql+psycopg://...")
        if not math.isfinite(s.gateway_hold_down) or s.gateway_hold_down < 0:
            bad("gateway_hold_down", "must be a number of seconds, 0 or more")
    elif s.gateway_peer:
        bad("gateway_peer", "only a gateway HA pair has a peer; set PNP_GATEWAY_HA=pair or unset it")
    return problems


def _database_url_problem(url: str) -> str:
    """Why SQLAlchemy cannot use ``url`` (empty when it can)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    try:
        parsed = make_url(url)
        if parsed.get_backend_name() not in ("sqlite", "postgresql"):
            return f"{url!r}: only SQLite and PostgreSQL databases are supported"
        parsed.get_dialect().import_dbapi()  # the driver is only imported on first connect otherwise
    except (ArgumentError, NoSuchModuleError, ValueError):
        return f"{url!r} is not a database URL"
    except ImportError as exc:
        return f"{url!r} needs the database driver {exc.name}, which is not installed"
    return ""


def _unreadable(path: str) -> str:
    """Why the process cannot read ``path`` ("" when it can)."""
    try:
        with open(path, "rb"):
            return ""
    except FileNotFoundError:
        return "no such file"
    except IsADirectoryError:
        return "a directory, not a file"
    except OSError as exc:
        return f"cannot read it ({exc.strerror or exc})"


def _broker_client_problems(s: Settings, origin: Any) -> list[str]:
    """The gateway's client certificate for Prime's broker and the simulated Prime's client CA must load, now."""
    problems: list[str] = []
    names = ("broker_client_cert_file", "broker_client_key_file", "broker_client_ca_file")
    unreadable = {n: _unreadable(getattr(s, n)) for n in names if getattr(s, n)}
    for name, why in unreadable.items():
        if why:
            problems.append(f"{origin(name)}: {getattr(s, name)}: {why}; fix the path (or unset it: "
                            + ("no client certificate asked for)" if name == "broker_client_ca_file" else
                               "PNP_BROKER_CLIENT_CERT_FILE and PNP_BROKER_CLIENT_KEY_FILE go together)"))
    cert, key = s.broker_client_cert_file, s.broker_client_key_file
    if bool(cert) != bool(key):
        problems.append(f"{origin('broker_client_key_file' if cert else 'broker_client_cert_file')}: supply both "
                        "PNP_BROKER_CLIENT_CERT_FILE and PNP_BROKER_CLIENT_KEY_FILE (the gateway's client "
                        "certificate for Prime's broker and its key), or neither to log in without one")
    elif cert and not unreadable.get("broker_client_cert_file") and not unreadable.get("broker_client_key_file"):
        try:
            ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_cert_chain(cert, key)
        except (ssl.SSLError, OSError) as exc:
            reason = getattr(exc, "reason", None) or str(exc)
            problems.append(f"{origin('broker_client_cert_file')}, {origin('broker_client_key_file')}: {cert} and "
                            f"{key} are not a PEM certificate and its unencrypted private key ({reason}); give "
                            "the key that belongs to that certificate")
    ca = s.broker_client_ca_file
    if ca and not unreadable.get("broker_client_ca_file"):
        problem = _ca_bundle_problem(Path(ca))
        if problem:
            problems.append(f"{origin('broker_client_ca_file')}: {ca}: {problem}")
    return problems


def _check_key_pair(s: Settings, origin: Any) -> list[str]:
    """The operator's certificate and key must load as a pair, or every TLS listener would fail later."""
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(s.tls_cert_file, s.tls_key_file)
    except (ssl.SSLError, OSError) as exc:
        reason = getattr(exc, "reason", None) or str(exc)
        return [
            f"{origin('tls_cert_file')}, {origin('tls_key_file')}: {s.tls_cert_file} and {s.tls_key_file} are not a "
            f"PEM certificate and its unencrypted private key ({reason})"
        ]
    return []


def _ca_bundle_problem(path: Path) -> str:
    """Why ``path`` cannot be the CA bundle client certificates are checked against ("" when it can)."""
    try:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_verify_locations(cafile=str(path))
    except FileNotFoundError:
        return "no such file"
    except (ssl.SSLError, OSError) as exc:
        return f"not a PEM bundle of CA certificates ({getattr(exc, 'reason', None) or exc})"
    if not context.get_ca_certs():
        return "holds no CA certificate (a certificate with CA:TRUE in PEM)"
    return ""


def tls_floor(version: str) -> str:
    """Normalised minimum TLS version ('1.2' ...) of a validated setting."""
    return version.lower().removeprefix("tlsv").removeprefix("tls")

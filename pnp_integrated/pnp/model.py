"""Open PnP messages, the types: one frozen dataclass per message, the service names and the protocol error.

How they are read and written: :mod:`.parse` (bytes in) and :mod:`.encode` (bytes out); :mod:`.messages` is the face
of all three.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

NS = "urn:cisco:pnp"
WORK_INFO_NS = f"{NS}:work-info"
FAULT_NS = f"{NS}:fault"
ERROR_NS = f"{NS}:error"
DEFAULT_MAX_BYTES = 1024 * 1024
MAX_FIELD = 1024  # identity fields (UDI parts, correlator) longer than this are not from a device
MAX_SERIAL = 255  # devices are keyed by serial; the database holds up to 255 characters

# Services the server may request; the namespace of a request or response is urn:cisco:pnp:<service>.
DEVICE_INFO = "device-info"
CONFIG_UPGRADE = "config-upgrade"
IMAGE_INSTALL = "image-install"
CLI_CONFIG = "cli-config"
CLI_EXEC = "cli-exec"
FILE_TRANSFER = "file-transfer"
RELOAD = "reload"
CAPABILITY = "capability"
BACKOFF = "backoff"
SERVICES = (DEVICE_INFO, CONFIG_UPGRADE, IMAGE_INSTALL, CLI_CONFIG, CLI_EXEC, FILE_TRANSFER, RELOAD, CAPABILITY,
            BACKOFF)
DEVICE_INFO_TYPES = ("all", "image", "hardware", "filesystem", "udi", "profile")

BACKOFF_MAX_HOURS = 47  # callbackAfter accepts hours 0-47, minutes and seconds 0-59
DEFAULT_MINUTES_RANGE = (1, 2880)


class PnpProtocolError(ValueError):
    """The bytes are not a valid Open PnP message; the text says why (safe to show to the client)."""


# ---- UDI ------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Udi:
    """A Unique Device Identifier ``PID:<pid>,VID:<vid>,SN:<serial>``; PIDs hold ``-`` and ``/``, VID may be empty."""

    pid: str
    vid: str
    serial: str

    def __str__(self) -> str:
        return f"PID:{self.pid},VID:{self.vid},SN:{self.serial}"


def parse_udi(text: str) -> Udi:
    """Parse a UDI string; raises :class:`PnpProtocolError` unless it names at least a serial number."""
    if not text or len(text) > MAX_FIELD:
        raise PnpProtocolError("missing or oversized UDI")
    parts: dict[str, str] = {}
    # Split on ',' then on the first ':' only: PIDs such as ISR4451-X/K9 defeat word-character regexes.
    for item in text.split(","):
        key, sep, value = item.partition(":")
        key = key.strip().upper()
        if not sep or key not in ("PID", "VID", "SN"):
            raise PnpProtocolError(f"UDI {text!r} is not PID:<pid>,VID:<vid>,SN:<serial>")
        if key in parts:
            raise PnpProtocolError(f"UDI {text!r} repeats {key}")
        parts[key] = value.strip()
    serial = parts.get("SN", "")
    if not serial:
        raise PnpProtocolError(f"UDI {text!r} has no serial number")
    if len(serial) > MAX_SERIAL:
        raise PnpProtocolError(f"UDI serial number is longer than {MAX_SERIAL} characters")
    if not all(ch.isprintable() for ch in text):
        raise PnpProtocolError("UDI holds control characters")
    return Udi(pid=parts.get("PID", ""), vid=parts.get("VID", ""), serial=serial)


# ---- device -> server -----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class WorkRequest:
    """``POST /pnp/WORK-REQUEST``: the device asks for work."""

    udi: Udi
    correlator: str
    hostname: str = ""
    mac_address: str = ""
    auth_required: bool = False
    via_proxy: bool = False
    reason: str = ""  # e.g. "factory-reset"
    startup_config_present: bool | None = None


@dataclass(frozen=True)
class FileSystem:
    name: str  # as the device spells it ("bootflash", "flash")
    type: str = "disk"
    size: int = 0
    freespace: int = 0
    readable: bool = True
    writable: bool = True


@dataclass(frozen=True)
class DeviceInfo:
    """The interesting part of a device-info result."""

    version: str = ""
    image_file: str = ""
    hostname: str = ""
    platform: str = ""
    board_id: str = ""
    config_register: str = ""
    profile_name: str = ""
    filesystems: tuple[FileSystem, ...] = ()


@dataclass(frozen=True)
class ErrorInfo:
    """``errorInfo`` of a failed response. ``code`` is the numeric last token of ``errorCode``."""

    code: str
    message: str = ""
    raw_code: str = ""


@dataclass(frozen=True)
class CliResult:
    """One ``resultEntry`` of a cli-config result."""

    line_number: int
    cli_string: str
    success: bool
    text: str = ""


@dataclass(frozen=True)
class WorkResponse:
    """``POST /pnp/WORK-RESPONSE``: the result of the request with ``correlator``."""

    udi: Udi
    service: str
    correlator: str
    success: bool
    error: ErrorInfo | None = None
    device_info: DeviceInfo | None = None
    cli_results: tuple[CliResult, ...] = ()
    exec_output: str = ""

    @property
    def detail(self) -> str:
        """One line for people: the device's error, or what it did."""
        if self.error is not None:
            return f"{self.error.raw_code or self.error.code}: {self.error.message}".strip(": ")
        failed = [r for r in self.cli_results if not r.success]
        if failed:
            return f"line {failed[0].line_number} failed: {failed[0].cli_string} {failed[0].text}".strip()
        return f"{self.service} {'succeeded' if self.success else 'failed'}"


@dataclass(frozen=True)
class Fault:
    """``urn:cisco:pnp:fault``: the device could not process the last request; there is no correlator."""

    udi: Udi
    code: str
    string: str
    details: str = ""


@dataclass(frozen=True)
class SyslogEvent:
    """``urn:cisco:pnp:syslog`` ``<event>``: syslog lines the device sends unasked; no correlator, nothing to answer."""

    udi: Udi
    lines: tuple[str, ...]


DeviceMessage = WorkRequest | WorkResponse | Fault | SyslogEvent


# ---- server -> device -----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DeviceInfoRequest:
    udi: Udi
    correlator: str
    info_type: str = "all"
    credentials: Mapping[str, str] | None = None
    service = DEVICE_INFO


@dataclass(frozen=True)
class ConfigUpgradeRequest:
    """Copy the configuration at ``location`` to running or startup configuration."""

    udi: Udi
    correlator: str
    location: str
    apply_to: str = "running"
    checksum: str = ""
    reload: bool = False
    abort_on_syntax_fault: bool = False
    details: str = "all"
    credentials: Mapping[str, str] | None = None
    service = CONFIG_UPGRADE


@dataclass(frozen=True)
class ImageInstallRequest:
    """Copy the image at ``location`` to ``destination`` (``bootflash:<name>``), check its MD5, maybe reload."""

    udi: Udi
    correlator: str
    location: str
    checksum: str
    destination: str
    reload: bool = True
    credentials: Mapping[str, str] | None = None
    service = IMAGE_INSTALL


@dataclass(frozen=True)
class CliConfigRequest:
    udi: Udi
    correlator: str
    lines: tuple[str, ...]
    action_on_fail: str = "stop"
    persist: bool = False
    credentials: Mapping[str, str] | None = None
    service = CLI_CONFIG


@dataclass(frozen=True)
class CliExecRequest:
    udi: Udi
    correlator: str
    command: str
    max_wait_seconds: int = 60
    credentials: Mapping[str, str] | None = None
    service = CLI_EXEC


@dataclass(frozen=True)
class FileTransferRequest:
    udi: Udi
    correlator: str
    source: str
    destination: str
    checksum: str = ""
    credentials: Mapping[str, str] | None = None
    service = FILE_TRANSFER


@dataclass(frozen=True)
class ReloadRequest:
    udi: Udi
    correlator: str
    reason: str = "pnp"
    delay_seconds: int = 0
    save_config: bool = False
    erase_config: bool = False
    credentials: Mapping[str, str] | None = None
    service = RELOAD


@dataclass(frozen=True)
class CapabilityRequest:
    udi: Udi
    correlator: str
    credentials: Mapping[str, str] | None = None
    service = CAPABILITY


@dataclass(frozen=True)
class Backoff:
    """Come back later (``seconds``), change the default poll interval (``default_minutes``), or ``terminate``."""

    udi: Udi
    correlator: str
    reason: str = ""
    seconds: int | None = None
    default_minutes: int | None = None
    terminate: bool = False
    service = BACKOFF

    def __post_init__(self) -> None:
        chosen = sum((self.seconds is not None, self.default_minutes is not None, self.terminate))
        if chosen != 1:
            raise ValueError("a backoff has exactly one of seconds, default_minutes, terminate")
        if self.seconds is not None and not 0 <= self.seconds <= backoff_limit_seconds():
            raise ValueError(f"callbackAfter {self.seconds}s is outside 0..{backoff_limit_seconds()}")
        if self.default_minutes is not None and not (
            DEFAULT_MINUTES_RANGE[0] <= self.default_minutes <= DEFAULT_MINUTES_RANGE[1]
        ):
            raise ValueError(f"defaultMinutes {self.default_minutes} is outside {DEFAULT_MINUTES_RANGE}")


@dataclass(frozen=True)
class Bye:
    """The work-info ``bye`` that ends an exchange (the answer to every WORK-RESPONSE)."""

    udi: Udi
    correlator: str


ServiceRequest = (
    DeviceInfoRequest | ConfigUpgradeRequest | ImageInstallRequest | CliConfigRequest | CliExecRequest
    | FileTransferRequest | ReloadRequest | CapabilityRequest | Backoff
)
ServerMessage = ServiceRequest | Bye


def backoff_limit_seconds() -> int:
    return (BACKOFF_MAX_HOURS * 60 + 59) * 60 + 59


def clamp_backoff(seconds: int) -> int:
    """A wait the callbackAfter element can express (negative -> 0, too long -> 47:59:59)."""
    return max(0, min(int(seconds), backoff_limit_seconds()))

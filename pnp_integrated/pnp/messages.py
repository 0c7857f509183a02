"""Open PnP messages (sans-IO): parse what devices send, build what the server sends, and the reverse for simulators.

Theory of operation
-------------------
Every Open PnP message is one XML document rooted at ``<pnp xmlns="urn:cisco:pnp" version="1.0" udi="...">``. The
agent is always the HTTP client:

* ``POST /pnp/WORK-REQUEST`` carries ``<info xmlns="urn:cisco:pnp:work-info" correlator="...">`` with the device id;
  the server answers with exactly one ``<request xmlns="urn:cisco:pnp:<service>" correlator="...">`` (a service
  request, or a ``backoff``).
* ``POST /pnp/WORK-RESPONSE`` carries ``<response xmlns="urn:cisco:pnp:<service>" correlator="..." success="1|0">``
  (or a ``urn:cisco:pnp:fault`` response without correlator); the server answers with the work-info ``bye``.

The correlator is opaque and copied verbatim. Devices differ in tag case (IOS uses camelCase, some agents lower case),
so child elements are matched by local name, case-insensitively; the root and the service namespaces are checked.

Each message is a frozen dataclass. :func:`encode` turns any of them into bytes; :func:`parse_device_message` and
:func:`parse_server_message` turn bytes into them and raise only :class:`PnpProtocolError`. XML is parsed by
defusedxml with DTDs forbidden (no entities, no external references) and after a size check, so hostile input costs
at most one bounded parse.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any
from xml.etree.ElementTree import Element, ParseError
from xml.sax.saxutils import escape, quoteattr

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import fromstring

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


DeviceMessage = WorkRequest | WorkResponse | Fault


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


# ---- encoding -------------------------------------------------------------------------------------------------------
@dataclass
class _El:
    """A tiny XML element for the encoder; text and attributes are escaped when written."""

    tag: str
    attrs: dict[str, str] = field(default_factory=dict)
    children: list[_El] = field(default_factory=list)
    text: str | None = None

    def write(self, out: list[str]) -> None:
        attrs = "".join(f" {k}={quoteattr(v)}" for k, v in self.attrs.items())
        if self.text is None and not self.children:
            out.append(f"<{self.tag}{attrs}/>")
            return
        out.append(f"<{self.tag}{attrs}>")
        if self.text is not None:
            out.append(escape(self.text, {"\r": "&#13;"}))
        for child in self.children:
            child.write(out)
        out.append(f"</{self.tag}>")


def _e(tag: str, *children: _El, text: str | None = None, **attrs: str) -> _El:
    return _El(tag, {k.replace("_", "-"): v for k, v in attrs.items()}, list(children), text)


def _t(tag: str, value: object) -> _El:
    return _El(tag, text=str(value))


def _flag(value: bool) -> str:
    return "true" if value else "false"


def _envelope(udi: Udi, body: _El, credentials: Mapping[str, str] | None = None) -> bytes:
    attrs = {"xmlns": NS, "version": "1.0", "udi": str(udi)}
    if credentials:
        # Only sent when the device said authRequired; IOS reads them as usr/pwd root attributes.
        attrs["usr"] = credentials.get("username", credentials.get("usr", ""))
        attrs["pwd"] = credentials.get("password", credentials.get("pwd", ""))
    out: list[str] = ['<?xml version="1.0" encoding="UTF-8"?>\n']
    _El("pnp", attrs, [body]).write(out)
    return "".join(out).encode()


def _request(service: str, correlator: str, *children: _El) -> _El:
    return _El("request", {"xmlns": f"{NS}:{service}", "correlator": correlator}, list(children))


def _reload_element(reason: str, delay: int = 0, save_config: bool = False, erase: bool | None = None) -> _El:
    el = _e("reload", _t("reason", reason), _t("delayIn", delay), _t("user", "pnp"),
            _t("saveConfig", _flag(save_config)))
    if erase is not None:
        el.children.append(_t("eraseConfig", _flag(erase)))
    return el


def _hms(seconds: int) -> tuple[int, int, int]:
    hours, rest = divmod(seconds, 3600)
    return hours, rest // 60, rest % 60


def _body(message: Any) -> _El:
    if isinstance(message, DeviceInfoRequest):
        return _request(DEVICE_INFO, message.correlator, _e("deviceInfo", type=message.info_type))
    if isinstance(message, ConfigUpgradeRequest):
        source = _e("source", _t("location", message.location))
        if message.checksum:
            source.children.append(_t("checksum", message.checksum))
        config = _e("config", _e("copy", source, _t("applyTo", message.apply_to)), details=message.details)
        if message.abort_on_syntax_fault:
            config.children.append(_e("abortOnSyntaxFault"))
        config.children.append(_reload_element("pnp config upgrade") if message.reload else _e("noReload"))
        return _request(CONFIG_UPGRADE, message.correlator, config)
    if isinstance(message, ImageInstallRequest):
        copy = _e("copy", _e("source", _t("location", message.location), _t("checksum", message.checksum)),
                  _e("destination", _t("location", message.destination)))
        after = _reload_element("pnp image install") if message.reload else _e("noReload")
        return _request(IMAGE_INSTALL, message.correlator, _e("image", copy), after)
    if isinstance(message, CliConfigRequest):
        data = _e("cli-config-data", *(_t("cmd", line) for line in message.lines))
        apply = _e("configApply", _e("config-data", data), details="all", action_on_fail=message.action_on_fail)
        if message.persist:
            apply.children.append(_e("configPersist"))
        return _request(CLI_CONFIG, message.correlator, apply)
    if isinstance(message, CliExecRequest):
        exec_el = _e("execCLI", _t("cmd", message.command), maxWait=f"PT{message.max_wait_seconds}S", xsd="false")
        return _request(CLI_EXEC, message.correlator, exec_el)
    if isinstance(message, FileTransferRequest):
        source = _e("source", _t("location", message.source))
        if message.checksum:
            source.children.append(_t("checksum", message.checksum))
        copy = _e("copy", source, _e("destination", _t("location", message.destination)))
        return _request(FILE_TRANSFER, message.correlator, _e("fileTransfer", copy))
    if isinstance(message, ReloadRequest):
        return _request(RELOAD, message.correlator, _reload_element(
            message.reason, message.delay_seconds, message.save_config, message.erase_config))
    if isinstance(message, CapabilityRequest):
        return _request(CAPABILITY, message.correlator)
    if isinstance(message, Backoff):
        backoff = _e("backoff", _t("reason", message.reason))
        if message.seconds is not None:
            h, m, s = _hms(message.seconds)
            backoff.children.append(_e("callbackAfter", _t("hours", h), _t("minutes", m), _t("seconds", s)))
        elif message.default_minutes is not None:
            backoff.children.append(_t("defaultMinutes", message.default_minutes))
        else:
            backoff.children.append(_e("terminate"))
        return _request(BACKOFF, message.correlator, backoff)
    if isinstance(message, Bye):
        return _El("info", {"xmlns": WORK_INFO_NS, "correlator": message.correlator}, [_e("workInfo", _e("bye"))])
    if isinstance(message, WorkRequest):
        device_id = _e("deviceId", _t("udi", str(message.udi)), _t("macAddress", message.mac_address),
                       _t("hostname", message.hostname), _t("authRequired", _flag(message.auth_required)),
                       _t("viaProxy", _flag(message.via_proxy)))
        info = _El("info", {"xmlns": WORK_INFO_NS, "correlator": message.correlator}, [device_id])
        if message.reason:
            reload = _e("reload", _t("message", message.reason))
            if message.startup_config_present is not None:
                reload.children.append(_t("startupConfigPresent", _flag(message.startup_config_present)))
            info.children.append(_e("reason", reload))
        return info
    if isinstance(message, WorkResponse):
        return _response_body(message)
    if isinstance(message, Fault):
        detail = _El("xsvc-err:error", {"xmlns:xsvc-err": ERROR_NS}, [_t("xsvc-err:details", message.details)])
        fault = _e("fault", _t("faultcode", message.code), _t("faultstring", message.string), _e("detail", detail))
        return _El("response", {"xmlns": FAULT_NS}, [fault])
    raise TypeError(f"not an Open PnP message: {type(message).__name__}")


def _response_body(message: WorkResponse) -> _El:
    el = _El("response", {"xmlns": f"{NS}:{message.service}", "correlator": message.correlator,
                          "success": "1" if message.success else "0"})
    if message.error is not None:
        el.children.append(_e("errorInfo", _t("errorCode", message.error.raw_code or message.error.code),
                              _t("errorMessage", message.error.message)))
    info = message.device_info
    if info is not None:
        el.children += [
            _e("udi", _t("primary-chassis", str(message.udi))),
            _e("imageInfo", _t("versionString", info.version), _t("imageFile", info.image_file),
               _t("configReg", info.config_register)),
            _e("hardwareInfo", _t("hostname", info.hostname), _t("vendor", "cisco"),
               _t("platformName", info.platform), _t("boardId", info.board_id)),
            _e("fileSystemList", *(
                _e("fileSystem", name=fs.name, type=fs.type, size=str(fs.size), freespace=str(fs.freespace),
                   readable=_flag(fs.readable), writable=_flag(fs.writable)) for fs in info.filesystems)),
        ]
    for entry in message.cli_results:
        result = _El("resultEntry", {"lineNumber": str(entry.line_number), "cliString": entry.cli_string},
                     [_e("success") if entry.success else _e("failure")])
        if entry.text:
            result.children.append(_t("text", entry.text))
        el.children.append(result)
    if message.exec_output:
        el.children.append(_e("execLog", _e("dialogueLog", _e("received", _t("text", message.exec_output)))))
    return el


def encode(message: ServerMessage | DeviceMessage) -> bytes:
    """The XML document of any Open PnP message."""
    credentials = getattr(message, "credentials", None)
    return _envelope(message.udi, _body(message), credentials)


# ---- parsing helpers ------------------------------------------------------------------------------------------------
def _split(tag: str) -> tuple[str, str]:
    if tag.startswith("{"):
        ns, _, local = tag[1:].partition("}")
        return ns, local
    return "", tag


def _local(el: Element) -> str:
    return _split(el.tag)[1].lower() if isinstance(el.tag, str) else ""


def _children(el: Element | None, name: str) -> Iterator[Element]:
    if el is None:
        return
    name = name.lower()
    for child in el:
        if _local(child) == name:
            yield child


def _child(el: Element | None, *path: str) -> Element | None:
    for name in path:
        el = next(_children(el, name), None)
        if el is None:
            return None
    return el


def _text(el: Element | None, *path: str) -> str:
    found = _child(el, *path) if path else el
    return (found.text or "").strip() if found is not None else ""


def _bool(value: str) -> bool:
    return value.strip().lower() in ("true", "1", "yes")


def _int(value: str, what: str) -> int:
    value = value.strip()
    if not value:
        return 0
    if not re.fullmatch(r"-?\d{1,20}", value):
        raise PnpProtocolError(f"{what} {value[:40]!r} is not a number")
    return int(value)


def _attr(el: Element, name: str) -> str:
    lowered = name.lower()
    for key, value in el.attrib.items():
        if _split(key)[1].lower() == lowered:
            return value
    return ""


def _parse_root(data: bytes | str, max_bytes: int) -> tuple[Element, Element]:
    """The ``pnp`` root and its one message element."""
    if isinstance(data, str):
        data = data.encode("utf-8", "surrogatepass")
    if len(data) > max_bytes:
        raise PnpProtocolError(f"message of {len(data)} bytes exceeds the {max_bytes}-byte limit")
    if not data.strip():
        raise PnpProtocolError("empty message")
    try:
        root = fromstring(data, forbid_dtd=True, forbid_entities=True, forbid_external=True)
    except DefusedXmlException as exc:
        raise PnpProtocolError(f"refused XML: {type(exc).__name__}") from None
    except ParseError as exc:
        raise PnpProtocolError(f"malformed XML: {exc}") from None
    except (ValueError, LookupError, UnicodeError, RecursionError) as exc:
        raise PnpProtocolError(f"unreadable XML: {type(exc).__name__}") from None
    ns, local = _split(root.tag) if isinstance(root.tag, str) else ("", "")
    if ns != NS or local != "pnp":
        raise PnpProtocolError(f"root element is {root.tag!r}, expected pnp in namespace {NS}")
    body = [child for child in root if isinstance(child.tag, str)]
    if len(body) != 1:
        raise PnpProtocolError(f"a pnp message holds exactly one element, found {len(body)}")
    return root, body[0]


def _message_udi(root: Element, body: Element) -> Udi:
    text = root.get("udi", "") or _text(body, "deviceId", "udi")
    return parse_udi(text.strip())


def _correlator(body: Element, required: bool = True) -> str:
    correlator = body.get("correlator", "")
    if required and not correlator.strip():
        raise PnpProtocolError("message has no correlator")
    if len(correlator) > MAX_FIELD:
        raise PnpProtocolError("correlator is too long")
    return correlator


def _service(body: Element, expected: str) -> str:
    ns, local = _split(body.tag)
    if local != expected:
        raise PnpProtocolError(f"expected <{expected}>, found <{local}>")
    if ns != FAULT_NS and not ns.startswith(f"{NS}:"):
        raise PnpProtocolError(f"<{local}> is in namespace {ns!r}, not {NS}:<service>")
    return ns.removeprefix(f"{NS}:")


# ---- device messages ------------------------------------------------------------------------------------------------
def parse_device_message(data: bytes | str, max_bytes: int = DEFAULT_MAX_BYTES) -> DeviceMessage:
    """A WORK-REQUEST, WORK-RESPONSE or fault sent by a device. Raises only :class:`PnpProtocolError`."""
    root, body = _parse_root(data, max_bytes)
    udi = _message_udi(root, body)
    local = _split(body.tag)[1]
    if local == "info":
        if _service(body, "info") != "work-info":
            raise PnpProtocolError("a device <info> must be in namespace urn:cisco:pnp:work-info")
        return _work_request(udi, body)
    if local == "response":
        service = _service(body, "response")
        if service == "fault":
            return _fault(udi, body)
        if not service or len(service) > 64:
            raise PnpProtocolError("response names no service")
        return _work_response(udi, service, body)
    raise PnpProtocolError(f"unexpected device message <{local}>")


def parse_work_request(data: bytes | str, max_bytes: int = DEFAULT_MAX_BYTES) -> WorkRequest:
    """The body of ``POST /pnp/WORK-REQUEST``."""
    message = parse_device_message(data, max_bytes)
    if not isinstance(message, WorkRequest):
        raise PnpProtocolError("a WORK-REQUEST carries a work-info <info> element")
    return message


def parse_work_response(data: bytes | str, max_bytes: int = DEFAULT_MAX_BYTES) -> WorkResponse | Fault:
    """The body of ``POST /pnp/WORK-RESPONSE``."""
    message = parse_device_message(data, max_bytes)
    if isinstance(message, WorkRequest):
        raise PnpProtocolError("a WORK-RESPONSE carries a <response> element")
    return message


def _work_request(udi: Udi, body: Element) -> WorkRequest:
    device_id = _child(body, "deviceId")
    reload = _child(body, "reason", "reload")
    startup = _text(reload, "startupConfigPresent")
    return WorkRequest(
        udi=udi,
        correlator=_correlator(body),
        hostname=_text(device_id, "hostname")[:255],
        mac_address=_text(device_id, "macAddress")[:64],
        auth_required=_bool(_text(device_id, "authRequired")),
        via_proxy=_bool(_text(device_id, "viaProxy")),
        reason=_text(reload, "message")[:255],
        startup_config_present=_bool(startup) if startup else None,
    )


def _error_info(body: Element) -> ErrorInfo | None:
    el = _child(body, "errorInfo")
    if el is None:
        return None
    raw = _text(el, "errorCode")
    tokens = raw.split()
    return ErrorInfo(code=tokens[-1] if tokens else "", message=_text(el, "errorMessage")[:2000], raw_code=raw[:255])


def _device_info(body: Element) -> DeviceInfo:
    filesystems = []
    for fs in _children(_child(body, "fileSystemList"), "fileSystem"):
        filesystems.append(FileSystem(
            name=_attr(fs, "name"), type=_attr(fs, "type"), size=_int(_attr(fs, "size"), "filesystem size"),
            freespace=_int(_attr(fs, "freespace"), "filesystem freespace"),
            readable=_bool(_attr(fs, "readable") or "true"), writable=_bool(_attr(fs, "writable") or "false")))
    return DeviceInfo(
        version=_text(body, "imageInfo", "versionString"),
        image_file=_text(body, "imageInfo", "imageFile"),
        hostname=_text(body, "hardwareInfo", "hostname"),
        platform=_text(body, "hardwareInfo", "platformName"),
        board_id=_text(body, "hardwareInfo", "boardId"),
        config_register=_text(body, "imageInfo", "configReg"),
        profile_name=_text(body, "thisProfileName"),
        filesystems=tuple(filesystems),
    )


def _work_response(udi: Udi, service: str, body: Element) -> WorkResponse:
    success_attr = body.get("success", "").strip()
    if success_attr not in ("0", "1", "true", "false"):
        raise PnpProtocolError(f"success={success_attr[:20]!r}: expected 1 or 0")
    success = success_attr in ("1", "true")
    results = []
    for entry in _children(body, "resultEntry"):
        results.append(CliResult(
            line_number=_int(_attr(entry, "lineNumber"), "lineNumber"), cli_string=_attr(entry, "cliString"),
            success=_child(entry, "success") is not None, text=_text(entry, "text")))
    outputs = [_text(r, "text") for r in _children(_child(body, "execLog", "dialogueLog"), "received")]
    return WorkResponse(
        udi=udi, service=service, correlator=_correlator(body), success=success, error=_error_info(body),
        device_info=_device_info(body) if service == DEVICE_INFO and success else None,
        cli_results=tuple(results), exec_output="\n".join(outputs))


def _fault(udi: Udi, body: Element) -> Fault:
    fault = _child(body, "fault")
    if fault is None:
        raise PnpProtocolError("a fault response holds a <fault> element")
    detail = _child(fault, "detail")
    details = " ".join(t.strip() for t in detail.itertext() if t.strip()) if detail is not None else ""
    return Fault(udi=udi, code=_text(fault, "faultcode"), string=_text(fault, "faultstring"), details=details[:2000])


# ---- server messages (parsed by device simulators) -------------------------------------------------------------------
def parse_server_message(data: bytes | str, max_bytes: int = DEFAULT_MAX_BYTES) -> ServerMessage:
    """A service request, backoff or bye as a device receives it. Raises only :class:`PnpProtocolError`."""
    root, body = _parse_root(data, max_bytes)
    udi = parse_udi(root.get("udi", ""))
    credentials = {"username": root.get("usr", ""), "password": root.get("pwd", "")} if root.get("usr") else None
    local = _split(body.tag)[1]
    if local == "info":
        if _service(body, "info") != "work-info" or _child(body, "workInfo", "bye") is None:
            raise PnpProtocolError("a server <info> is the work-info bye")
        return Bye(udi=udi, correlator=_correlator(body, required=False))
    service = _service(body, "request")
    correlator = _correlator(body)
    parse = _REQUEST_PARSERS.get(service)
    if parse is None:
        raise PnpProtocolError(f"unknown service {service[:64]!r}")
    try:
        return parse(udi, correlator, body, credentials)
    except ValueError as exc:  # a dataclass refused the values (backoff ranges)
        if isinstance(exc, PnpProtocolError):
            raise
        raise PnpProtocolError(str(exc)) from None


def _reload_flag(el: Element) -> bool:
    return _child(el, "reload") is not None and _child(el, "noReload") is None


def _parse_device_info(udi: Udi, corr: str, body: Element, cred: Any) -> ServiceRequest:
    el = _child(body, "deviceInfo")
    info_type = _attr(el, "type") if el is not None else ""
    return DeviceInfoRequest(udi, corr, info_type or "all", cred)


def _parse_config_upgrade(udi: Udi, corr: str, body: Element, cred: Any) -> ServiceRequest:
    config = _child(body, "config")
    location = _text(config, "copy", "source", "location")
    if not location:
        raise PnpProtocolError("config-upgrade names no source location")
    return ConfigUpgradeRequest(
        udi, corr, location, apply_to=_text(config, "copy", "applyTo") or "running",
        checksum=_text(config, "copy", "source", "checksum"), reload=config is not None and _reload_flag(config),
        abort_on_syntax_fault=_child(config, "abortOnSyntaxFault") is not None,
        details=_attr(config, "details") if config is not None else "all", credentials=cred)


def _parse_image_install(udi: Udi, corr: str, body: Element, cred: Any) -> ServiceRequest:
    copy = _child(body, "image", "copy")
    location = _text(copy, "source", "location")
    if not location:
        raise PnpProtocolError("image-install names no source location")
    return ImageInstallRequest(udi, corr, location, checksum=_text(copy, "source", "checksum"),
                               destination=_text(copy, "destination", "location"), reload=_reload_flag(body),
                               credentials=cred)


def _parse_cli_config(udi: Udi, corr: str, body: Element, cred: Any) -> ServiceRequest:
    apply = next((el for name in ("configApply", "configTest", "config") if (el := _child(body, name)) is not None),
                 None)
    data = _child(apply, "config-data")
    lines = [_text(cmd) for cmd in _children(_child(data, "cli-config-data"), "cmd")]
    block = _text(data, "cli-config-data-block")
    if block:
        lines += [line for line in block.splitlines() if line.strip()]
    action = (_attr(apply, "action-on-fail") if apply is not None else "") or "stop"
    return CliConfigRequest(udi, corr, tuple(lines), action_on_fail=action,
                            persist=_child(apply, "configPersist") is not None, credentials=cred)


def _parse_cli_exec(udi: Udi, corr: str, body: Element, cred: Any) -> ServiceRequest:
    exec_el = _child(body, "execCLI")
    command = _text(exec_el, "cmd")
    wait = re.fullmatch(r"PT(\d{1,6})S", _attr(exec_el, "maxWait")) if exec_el is not None else None
    return CliExecRequest(udi, corr, command, int(wait.group(1)) if wait else 60, cred)


def _parse_file_transfer(udi: Udi, corr: str, body: Element, cred: Any) -> ServiceRequest:
    copy = _child(body, "fileTransfer", "copy")
    return FileTransferRequest(udi, corr, _text(copy, "source", "location"), _text(copy, "destination", "location"),
                               _text(copy, "source", "checksum"), cred)


def _parse_reload(udi: Udi, corr: str, body: Element, cred: Any) -> ServiceRequest:
    el = _child(body, "reload")
    return ReloadRequest(udi, corr, _text(el, "reason"), _int(_text(el, "delayIn"), "delayIn"),
                         _bool(_text(el, "saveConfig")), _bool(_text(el, "eraseConfig")), cred)


def _parse_capability(udi: Udi, corr: str, body: Element, cred: Any) -> ServiceRequest:
    return CapabilityRequest(udi, corr, cred)


def _parse_backoff(udi: Udi, corr: str, body: Element, cred: Any) -> ServiceRequest:
    el = _child(body, "backoff")
    if el is None:
        raise PnpProtocolError("backoff request holds no <backoff>")
    reason = _text(el, "reason")
    after = _child(el, "callbackAfter")
    if after is not None:
        h, m, s = (_int(_text(after, unit), unit) for unit in ("hours", "minutes", "seconds"))
        if not (0 <= h <= BACKOFF_MAX_HOURS and 0 <= m <= 59 and 0 <= s <= 59):
            raise PnpProtocolError(f"callbackAfter {h}:{m}:{s} is out of range")
        return Backoff(udi, corr, reason, seconds=(h * 60 + m) * 60 + s)
    if _child(el, "defaultMinutes") is not None:
        return Backoff(udi, corr, reason, default_minutes=_int(_text(el, "defaultMinutes"), "defaultMinutes"))
    if _child(el, "terminate") is not None:
        return Backoff(udi, corr, reason, terminate=True)
    raise PnpProtocolError("backoff holds none of callbackAfter, defaultMinutes, terminate")


_REQUEST_PARSERS = {
    DEVICE_INFO: _parse_device_info,
    CONFIG_UPGRADE: _parse_config_upgrade,
    IMAGE_INSTALL: _parse_image_install,
    CLI_CONFIG: _parse_cli_config,
    CLI_EXEC: _parse_cli_exec,
    FILE_TRANSFER: _parse_file_transfer,
    RELOAD: _parse_reload,
    CAPABILITY: _parse_capability,
    BACKOFF: _parse_backoff,
}


def filesystem_for(filesystems: Iterable[FileSystem], size: int) -> str:
    """The device filesystem (``bootflash:``) to copy a file of ``size`` bytes to: writable, flash-like, enough room.

    Raises :class:`LookupError` when none fits (the image must not be offered).
    """
    candidates = [fs for fs in filesystems if fs.writable and fs.type in ("disk", "flash", "") and fs.freespace >= size]
    preferred = ("bootflash", "flash", "flash0", "harddisk")
    candidates.sort(key=lambda fs: (preferred.index(fs.name) if fs.name in preferred else len(preferred),
                                    -fs.freespace))
    if not candidates:
        raise LookupError(f"no writable filesystem has {size} free bytes")
    return candidates[0].name.rstrip(":") + ":"

"""Open PnP messages, read: what devices send (the server's side) and what the server sends (the simulators' side).

XML is parsed by defusedxml with DTDs forbidden (no entities, no external references) and after a size check, so
hostile input costs at most one bounded parse; every problem is a :class:`~.model.PnpProtocolError`.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any
from xml.etree.ElementTree import Element, ParseError

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import fromstring

from .model import (
    BACKOFF,
    BACKOFF_MAX_HOURS,
    CAPABILITY,
    CLI_CONFIG,
    CLI_EXEC,
    CONFIG_UPGRADE,
    DEFAULT_MAX_BYTES,
    DEVICE_INFO,
    FAULT_NS,
    FILE_TRANSFER,
    IMAGE_INSTALL,
    MAX_FIELD,
    NS,
    RELOAD,
    Backoff,
    Bye,
    CapabilityRequest,
    CliConfigRequest,
    CliExecRequest,
    CliResult,
    ConfigUpgradeRequest,
    DeviceInfo,
    DeviceInfoRequest,
    DeviceMessage,
    ErrorInfo,
    Fault,
    FileSystem,
    FileTransferRequest,
    ImageInstallRequest,
    PnpProtocolError,
    ReloadRequest,
    ServerMessage,
    ServiceRequest,
    SyslogEvent,
    Udi,
    WorkRequest,
    WorkResponse,
    parse_udi,
)


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
    if local == "event" and _service(body, "event") == "syslog":
        return SyslogEvent(udi, tuple(_text(msg, "rawFormat")[:1024] for msg in _children(body, "msg"))[:100])
    raise PnpProtocolError(f"unexpected device message <{local}>")


def parse_work_request(data: bytes | str, max_bytes: int = DEFAULT_MAX_BYTES) -> WorkRequest:
    """The body of ``POST /pnp/WORK-REQUEST``."""
    message = parse_device_message(data, max_bytes)
    if not isinstance(message, WorkRequest):
        raise PnpProtocolError("a WORK-REQUEST carries a work-info <info> element")
    return message


def parse_work_response(data: bytes | str,
                        max_bytes: int = DEFAULT_MAX_BYTES) -> WorkResponse | Fault | SyslogEvent:
    """The body of ``POST /pnp/WORK-RESPONSE`` (where a device's unsolicited syslog event is taken too)."""
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


def _status_error(status: Element) -> ErrorInfo:
    """The error of a napp-server ``<service-response-status>``."""
    code = _text(status, "error-status")[:255]
    return ErrorInfo(code=code, message=_text(status, "error-message")[:2000], raw_code=code)


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
    status = _child(body, "service-response-status")
    if not success_attr and status is not None:
        # napp-server answers carry no success attribute; their <transaction-status> says it (Cisco's schema).
        success = _text(status, "transaction-status").strip().upper() == "TRANSACTION SUCCESSFUL"
    elif success_attr not in ("0", "1", "true", "false"):
        raise PnpProtocolError(f"success={success_attr[:20]!r}: expected 1 or 0")
    else:
        success = success_attr in ("1", "true")
    results = []
    for entry in _children(body, "resultEntry"):
        results.append(CliResult(
            line_number=_int(_attr(entry, "lineNumber"), "lineNumber"), cli_string=_attr(entry, "cliString"),
            success=_child(entry, "success") is not None, text=_text(entry, "text")))
    outputs = [_text(r, "text") for r in _children(_child(body, "execLog", "dialogueLog"), "received")]
    return WorkResponse(
        udi=udi, service=service, correlator=_correlator(body), success=success,
        error=_error_info(body) or (_status_error(status) if status is not None and not success else None),
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
        checksum=_text(config, "copy", "source", "checksum"), reload=_reload_flag(body),
        abort_on_syntax_fault=_child(config, "copy", "abortOnSyntaxFault") is not None,
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

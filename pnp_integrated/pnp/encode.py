"""Open PnP messages, written: any message of :mod:`.model` as the XML document a device or the server sends."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from xml.sax.saxutils import escape, quoteattr

from .model import (
    BACKOFF,
    CAPABILITY,
    CLI_CONFIG,
    CLI_EXEC,
    CONFIG_UPGRADE,
    DEVICE_INFO,
    ERROR_NS,
    FAULT_NS,
    FILE_TRANSFER,
    IMAGE_INSTALL,
    NS,
    RELOAD,
    WORK_INFO_NS,
    Backoff,
    Bye,
    CapabilityRequest,
    CliConfigRequest,
    CliExecRequest,
    ConfigUpgradeRequest,
    DeviceInfoRequest,
    DeviceMessage,
    Fault,
    FileTransferRequest,
    ImageInstallRequest,
    ReloadRequest,
    ServerMessage,
    SyslogEvent,
    Udi,
    WorkRequest,
    WorkResponse,
)


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


def _reload_element(reason: str, delay: int = 0, save_config: bool | None = False, erase: bool = False) -> _El:
    el = _e("reload", _t("reason", reason), _t("delayIn", delay), _t("user", "pnp"))
    if save_config is not None:
        el.children.append(_t("saveConfig", _flag(save_config)))
    if erase:  # only when asked: Cisco's reload sample has no eraseConfig, and nothing here erases by default
        el.children.append(_t("eraseConfig", _flag(erase)))
    return el


def _hms(seconds: int) -> tuple[int, int, int]:
    hours, rest = divmod(seconds, 3600)
    return hours, rest // 60, rest % 60


def _device_info_request(message: DeviceInfoRequest) -> _El:
    return _request(DEVICE_INFO, message.correlator, _e("deviceInfo", type=message.info_type))


def _config_upgrade_request(message: ConfigUpgradeRequest) -> _El:
    source = _e("source", _t("location", message.location))
    if message.checksum:
        source.children.append(_t("checksum", message.checksum))
    copy = _e("copy", source, _t("applyTo", message.apply_to))
    if message.abort_on_syntax_fault:
        copy.children.append(_e("abortOnSyntaxFault"))  # inside <copy>, after applyTo (Cisco's schema)
    config = _e("config", copy, details=message.details)
    # <reload> or <noReload> follows <config>, as in Cisco's sample and schema (not inside it).
    after = _reload_element("pnp config upgrade", save_config=None) if message.reload else _e("noReload")
    return _request(CONFIG_UPGRADE, message.correlator, config, after)


def _image_install_request(message: ImageInstallRequest) -> _El:
    copy = _e("copy", _e("source", _t("location", message.location), _t("checksum", message.checksum)),
              _e("destination", _t("location", message.destination)))
    after = _reload_element("pnp image install") if message.reload else _e("noReload")
    return _request(IMAGE_INSTALL, message.correlator, _e("image", copy), after)


def _cli_config_request(message: CliConfigRequest) -> _El:
    data = _e("cli-config-data", *(_t("cmd", line) for line in message.lines))
    apply = _e("configApply", _e("config-data", data), details="all", action_on_fail=message.action_on_fail)  # schema
    if message.persist:
        apply.children.append(_e("configPersist"))
    return _request(CLI_CONFIG, message.correlator, apply)


def _cli_exec_request(message: CliExecRequest) -> _El:
    exec_el = _e("execCLI", _t("cmd", message.command), maxWait=f"PT{message.max_wait_seconds}S", xsd="false")
    return _request(CLI_EXEC, message.correlator, exec_el)


def _file_transfer_request(message: FileTransferRequest) -> _El:
    source = _e("source", _t("location", message.source))
    if message.checksum:
        source.children.append(_t("checksum", message.checksum))
    copy = _e("copy", source, _e("destination", _t("location", message.destination)))
    return _request(FILE_TRANSFER, message.correlator, _e("fileTransfer", copy))


def _reload_request(message: ReloadRequest) -> _El:
    return _request(RELOAD, message.correlator, _reload_element(
        message.reason, message.delay_seconds, message.save_config, message.erase_config))


def _capability_request(message: CapabilityRequest) -> _El:
    return _request(CAPABILITY, message.correlator)


def _backoff(message: Backoff) -> _El:
    backoff = _e("backoff", _t("reason", message.reason))
    if message.seconds is not None:
        h, m, s = _hms(message.seconds)
        backoff.children.append(_e("callbackAfter", _t("hours", h), _t("minutes", m), _t("seconds", s)))
    elif message.default_minutes is not None:
        backoff.children.append(_t("defaultMinutes", message.default_minutes))
    else:
        backoff.children.append(_e("terminate"))
    return _request(BACKOFF, message.correlator, backoff)


def _bye(message: Bye) -> _El:
    return _El("info", {"xmlns": WORK_INFO_NS, "correlator": message.correlator}, [_e("workInfo", _e("bye"))])


def _work_request(message: WorkRequest) -> _El:
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


def _fault(message: Fault) -> _El:
    detail = _El("xsvc-err:error", {"xmlns:xsvc-err": ERROR_NS}, [_t("xsvc-err:details", message.details)])
    fault = _e("fault", _t("faultcode", message.code), _t("faultstring", message.string), _e("detail", detail))
    return _El("response", {"xmlns": FAULT_NS}, [fault])


def _syslog_event(message: SyslogEvent) -> _El:
    return _El("event", {"xmlns": f"{NS}:syslog"}, [_e("msg", _t("rawFormat", line)) for line in message.lines])


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

# One encoder per message type, as the parser has one per service.
_ENCODERS: dict[type, Callable[[Any], _El]] = {
    DeviceInfoRequest: _device_info_request,
    ConfigUpgradeRequest: _config_upgrade_request,
    ImageInstallRequest: _image_install_request,
    CliConfigRequest: _cli_config_request,
    CliExecRequest: _cli_exec_request,
    FileTransferRequest: _file_transfer_request,
    ReloadRequest: _reload_request,
    CapabilityRequest: _capability_request,
    Backoff: _backoff,
    Bye: _bye,
    WorkRequest: _work_request,
    WorkResponse: _response_body,
    Fault: _fault,
    SyslogEvent: _syslog_event,
}


def encode(message: ServerMessage | DeviceMessage) -> bytes:
    """The XML document of any Open PnP message."""
    encoder = _ENCODERS.get(type(message))
    if encoder is None:
        raise TypeError(f"not an Open PnP message: {type(message).__name__}")
    credentials = getattr(message, "credentials", None)
    return _envelope(message.udi, encoder(message), credentials)

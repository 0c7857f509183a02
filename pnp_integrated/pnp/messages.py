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

Each message is a frozen dataclass (:mod:`.model`). :func:`encode` (:mod:`.encode`) turns any of them into bytes;
:func:`parse_device_message` and :func:`parse_server_message` (:mod:`.parse`) turn bytes into them and raise only
:class:`PnpProtocolError`. This module is the face of the three. XML is parsed by defusedxml with DTDs forbidden (no
entities, no external references) and after a size check, so hostile input costs at most one bounded parse.
"""

from __future__ import annotations

from .encode import encode
from .model import (
    BACKOFF,
    BACKOFF_MAX_HOURS,
    CAPABILITY,
    CLI_CONFIG,
    CLI_EXEC,
    CONFIG_UPGRADE,
    DEFAULT_MAX_BYTES,
    DEFAULT_MINUTES_RANGE,
    DEVICE_INFO,
    DEVICE_INFO_TYPES,
    ERROR_NS,
    FAULT_NS,
    FILE_TRANSFER,
    IMAGE_INSTALL,
    MAX_FIELD,
    MAX_SERIAL,
    NS,
    RELOAD,
    SERVICES,
    WORK_INFO_NS,
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
    backoff_limit_seconds,
    clamp_backoff,
    parse_udi,
)
from .parse import (
    parse_device_message,
    parse_server_message,
    parse_work_request,
    parse_work_response,
)

__all__ = [
    "BACKOFF",
    "BACKOFF_MAX_HOURS",
    "CAPABILITY",
    "CLI_CONFIG",
    "CLI_EXEC",
    "CONFIG_UPGRADE",
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MINUTES_RANGE",
    "DEVICE_INFO",
    "DEVICE_INFO_TYPES",
    "ERROR_NS",
    "FAULT_NS",
    "FILE_TRANSFER",
    "IMAGE_INSTALL",
    "MAX_FIELD",
    "MAX_SERIAL",
    "NS",
    "RELOAD",
    "SERVICES",
    "WORK_INFO_NS",
    "Backoff",
    "Bye",
    "CapabilityRequest",
    "CliConfigRequest",
    "CliExecRequest",
    "CliResult",
    "ConfigUpgradeRequest",
    "DeviceInfo",
    "DeviceInfoRequest",
    "DeviceMessage",
    "ErrorInfo",
    "Fault",
    "FileSystem",
    "FileTransferRequest",
    "ImageInstallRequest",
    "PnpProtocolError",
    "ReloadRequest",
    "ServerMessage",
    "ServiceRequest",
    "SyslogEvent",
    "Udi",
    "WorkRequest",
    "WorkResponse",
    "backoff_limit_seconds",
    "clamp_backoff",
    "encode",
    "parse_device_message",
    "parse_server_message",
    "parse_udi",
    "parse_work_request",
    "parse_work_response",
]

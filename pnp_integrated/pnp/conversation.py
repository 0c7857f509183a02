"""Between the provisioning engine and the Open PnP wire (sans-IO): Action -> service request, response -> Outcome.

Correlators: the device names each WORK-REQUEST with a correlator of its own, and, as every known PnP server does, the
reply carries it back verbatim (a request, a backoff alike); the device's WORK-RESPONSE carries it again. The engine
names its requests differently (a new name per attempt, which the Config Web Service URL carries), so the view hands
it the device's correlator with each WORK-REQUEST (``engine.contact(device_correlator=...)``), and a report under that
name answers the request it was given under it. A device that sends no correlator gets the engine's.
"""

from __future__ import annotations

from ..provisioning.types import Action, ActionKind, DeviceFacts, DeviceIdentity, Outcome
from ..urls import DeviceUrls
from .messages import (
    Backoff,
    CliConfigRequest,
    CliExecRequest,
    ConfigUpgradeRequest,
    DeviceInfoRequest,
    Fault,
    ImageInstallRequest,
    ServiceRequest,
    WorkRequest,
    WorkResponse,
    clamp_backoff,
)

DEFAULT_FILESYSTEM = "bootflash:"
SAVE_COMMAND = "write memory"
MIN_CALLBACK_SECONDS = 1  # a zero callbackAfter would make an agent poll in a tight loop


def identity_of(message: WorkRequest, address: str) -> DeviceIdentity:
    """The engine's view of who sent a WORK-REQUEST."""
    return DeviceIdentity(serial=message.udi.serial, protocol="pnp", pid=message.udi.pid, udi=str(message.udi),
                          hostname=message.hostname, address=address)


def cli_lines(text: str) -> tuple[str, ...]:
    """Configuration text as cli-config commands: blank lines and bare ``!`` comment lines carry nothing."""
    return tuple(line.rstrip() for line in text.splitlines() if line.strip() and line.strip() != "!")


def reply_to_work_request(action: Action, message: WorkRequest, urls: DeviceUrls) -> ServiceRequest:
    """The one request that answers a WORK-REQUEST, given what the engine wants from the device."""
    udi = message.udi
    correlator = message.correlator or action.correlator
    # Credentials only go to a device that asked for them (it has a configuration with a login already).
    credentials = action.credentials if message.auth_required and action.credentials else None
    kind = action.kind
    if kind == ActionKind.IDENTIFY and action.correlator:
        return DeviceInfoRequest(udi, correlator, "all", credentials)
    if kind == ActionKind.IMAGE_INSTALL and action.correlator and action.image is not None:
        image = action.image
        filename = image.path.rstrip("/").rsplit("/", 1)[-1] or image.name
        filesystem = image.filesystem or DEFAULT_FILESYSTEM
        if not filesystem.endswith(":"):
            filesystem += ":"
        return ImageInstallRequest(udi, correlator, urls.file(image.path), image.md5, f"{filesystem}{filename}",
                                   reload=image.reload, credentials=credentials)
    if kind == ActionKind.CONFIG and action.correlator:
        return ConfigUpgradeRequest(udi, correlator, urls.config(udi.serial, action.correlator),
                                    apply_to=action.apply_to or "running", credentials=credentials)
    if kind == ActionKind.POST_CONFIG and action.correlator:
        return CliConfigRequest(udi, correlator, cli_lines(action.config_text), action_on_fail="stop",
                                credentials=credentials)
    if kind == ActionKind.SAVE and action.correlator:
        return CliExecRequest(udi, correlator, SAVE_COMMAND, credentials=credentials)
    echo = message.correlator
    if kind == ActionKind.DONE:
        return Backoff(udi, echo, "provisioning complete", terminate=True)
    if kind in (ActionKind.FAILED, ActionKind.CANCELLED):
        return Backoff(udi, echo, f"provisioning {kind.value}: {action.detail}".strip(": "), terminate=True)
    reason = action.detail or ("no profile matches this device" if kind == ActionKind.UNCLAIMED else "wait")
    seconds = max(MIN_CALLBACK_SECONDS, clamp_backoff(action.wait_seconds or 60))
    return Backoff(udi, echo, reason, seconds=seconds)


def outcome_of(message: WorkResponse | Fault) -> Outcome:
    """What the device's answer means to the engine."""
    if isinstance(message, Fault):
        detail = f"the device could not process the request ({message.code}: {message.string})"
        return Outcome(success=False, detail=detail[:2000], error_code=message.code[:64],
                       raw={"service": "fault", "details": message.details})
    facts = None
    if message.device_info is not None:
        info = message.device_info
        filesystems = {f"{fs.name.rstrip(':')}:": fs.freespace for fs in info.filesystems
                       if fs.writable and fs.type in ("disk", "flash", "")}
        facts = DeviceFacts(version=info.version, pid=message.udi.pid, hostname=info.hostname,
                            image_file=info.image_file, filesystems=filesystems)
    failed_lines = [r for r in message.cli_results if not r.success]
    success = message.success and not failed_lines
    error_code = message.error.code if message.error else ""
    raw = {"service": message.service, "correlator": message.correlator, "output": message.exec_output[:2000]}
    return Outcome(success=success, detail=message.detail[:2000], error_code=error_code, facts=facts, raw=raw)

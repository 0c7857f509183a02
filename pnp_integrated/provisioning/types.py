"""What the engine and its callers exchange: actions, outcomes, identities, job and device states, and the errors."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class ActionKind(StrEnum):
    IDENTIFY = "identify"  # ask the device for its facts (Open PnP device-info; CNS image-agent inventory)
    IMAGE_INSTALL = "image_install"  # transfer (and activate) ``Action.image``
    WAIT = "wait"  # nothing to do now (device reloading, job busy elsewhere): come back in ``wait_seconds``
    CONFIG = "config"  # apply the rendered configuration (``Action.config_text``)
    POST_CONFIG = "post_config"  # apply the post-PnP configuration
    SAVE = "save"  # persist the running configuration (``write memory``)
    DONE = "done"  # provisioning finished: end the conversation
    UNCLAIMED = "unclaimed"  # no profile matches: back off, never hand out another device's configuration
    FAILED = "failed"  # the job failed (reason in ``detail``)
    CANCELLED = "cancelled"
    REFUSED = "refused"  # not taken now (too many new devices from its source): nothing recorded, come back later


@dataclass(frozen=True)
class DeviceIdentity:
    """Who is talking. ``serial`` is the key (Open PnP UDI SN, CNS ConfigID)."""

    serial: str
    protocol: str  # "cns" | "pnp"
    pid: str = ""
    udi: str = ""
    hostname: str = ""
    address: str = ""


@dataclass(frozen=True)
class DeviceFacts:
    """What a device reported about itself (device-info, CNS inventory)."""

    version: str = ""
    pid: str = ""
    hostname: str = ""
    image_file: str = ""
    filesystems: dict[str, int] = field(default_factory=dict)  # name ("flash:") -> free bytes


@dataclass(frozen=True)
class ImageRef:
    name: str
    version: str
    md5: str
    size: int
    path: str  # URL path on the Image Web Service, e.g. "/images/csr.bin"
    reload: bool = True
    filesystem: str = ""  # the device filesystem with the most free space, when the device reported any


@dataclass(frozen=True)
class Outcome:
    """The device's answer to the request identified by a correlator."""

    success: bool
    detail: str = ""
    error_code: str = ""
    facts: DeviceFacts | None = None
    raw: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Action:
    """What the device should do next. ``correlator`` identifies the request and must be echoed back."""

    kind: ActionKind
    job_id: int | None = None
    correlator: str = ""
    step: str = ""
    config_text: str = ""
    apply_to: str = "running"
    image: ImageRef | None = None
    wait_seconds: int = 0
    credentials: dict[str, str] | None = None
    detail: str = ""



UNCLAIMED_WAIT_SECONDS = 120  # an unclaimed device asks again this often; a profile may have appeared meanwhile
BUSY_WAIT_SECONDS = 5  # the database stayed contended: the device asks again shortly
NEW_DEVICES_WAIT_SECONDS = 60  # a device refused by the per-source limit on new devices comes back after this

# Job states; the last three are terminal.
RUNNING, COMPLETED, FAILED, CANCELLED = "running", "completed", "failed", "cancelled"
TERMINAL_STATES = (COMPLETED, FAILED, CANCELLED)

# Device states.
DEVICE_UNCLAIMED, DEVICE_PROVISIONING, DEVICE_PROVISIONED = "unclaimed", "provisioning", "provisioned"
DEVICE_FAILED, DEVICE_CANCELLED, DEVICE_EXPECTED = "failed", "cancelled", "expected"
DEVICE_CLAIMED = "claimed"  # an operator assigned a profile; the job starts at the device's next contact
DEVICE_STATES = (DEVICE_EXPECTED, DEVICE_UNCLAIMED, DEVICE_CLAIMED, DEVICE_PROVISIONING, DEVICE_PROVISIONED,
                 DEVICE_FAILED, DEVICE_CANCELLED)



class StepImpossible(Exception):
    """A step cannot be attempted at all (no free space, a template fails): the job fails without retrying."""


class JobConflict(Exception):
    """An operator request does not fit the job's state (cancel a finished job, retry a running one)."""


class EngineBusy(Exception):
    """The database stayed contended or away: the report was not recorded; the device must send it again."""

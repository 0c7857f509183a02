"""``/api/v1/devices``: what the gateway knows about each device, its history, its own template variables."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import selectinload

from ..models import Device, Profile, ProvisioningJob, db
from ..provisioning import operations
from ..provisioning.types import DEVICE_EXPECTED, JobConflict
from . import blueprint, inventory, schemas
from .auth import audit
from .contract import operation
from .errors import conflict, invalid, not_found

_CURSOR_REFUSED = ("'cursor' is not one this server handed out, or continues a walk with other filters, another "
                   "sort or another order")


def _device(serial: str) -> Device:
    device = db.session.scalar(select(Device).where(Device.serial == serial))
    if device is None:
        raise not_found(f"device {serial!r}")
    return device


@blueprint.get("/devices")
@operation(answer=schemas.DevicePage, errors=(422,), refused=_CURSOR_REFUSED)
def list_devices(query: schemas.DeviceQuery) -> schemas.DevicePage:
    """The device inventory: filters, a sort, and pages by cursor (each answer's next)

    ``total`` (the devices matching the filters when the walk begins) comes with the first page only: counting
    costs more than a page, and a walk needs it once. A search counts up to 1,000 matches (``total_capped`` says
    when it stopped there).
    """
    walk = inventory.inventory_query(query)
    devices, cursor = inventory.read_page(walk)
    body = {"items": devices, "limit": walk.limit, "sort": walk.sort, "order": walk.order, "next": cursor}
    if walk.after is None:
        body["total"], body["total_capped"] = inventory.count(walk)
    return schemas.DevicePage.model_validate(body)


@blueprint.get("/devices/counts")
@operation(answer=schemas.DeviceCounts)
def device_counts() -> schemas.DeviceCounts:
    """The fleet overview: devices by state and by protocol"""
    return schemas.DeviceCounts.model_validate(inventory.fleet_counts())


@blueprint.get("/devices/<serial>")
@operation(answer=schemas.Device, errors=(404,), path=schemas.DevicePath)
def get_device(serial: str) -> schemas.Device:
    """Get a device (a device whose serial is 'counts': GET /devices?serial=counts)"""
    return schemas.Device.model_validate(_device(serial))


@blueprint.get("/devices/<serial>/history")
@operation(answer=schemas.DeviceHistory, errors=(404,), path=schemas.DevicePath)
def device_history(serial: str) -> schemas.DeviceHistory:
    """A device's jobs with every step, newest first, and the latest 200 events for Prime that name it"""
    device = _device(serial)
    jobs = db.session.scalars(select(ProvisioningJob).where(ProvisioningJob.device_id == device.id)
                              .order_by(ProvisioningJob.id.desc()).options(selectinload(ProvisioningJob.steps)))
    events = list(db.session.scalars(inventory.device_events_statement(serial)))
    return schemas.DeviceHistory.model_validate({
        "device": device, "jobs": list(jobs), "events": events[:inventory.HISTORY_EVENTS],
        "more_events": len(events) > inventory.HISTORY_EVENTS})


@blueprint.put("/devices/<serial>/variables")
@operation(answer=schemas.Device, errors=(422,), also=(201, "an expected device was recorded"),
           path=schemas.DevicePath)
def put_device_variables(serial: str, json: schemas.DeviceVariables) -> tuple[schemas.Device, int]:
    """Replace a device's template variables (records an expected device if unknown)"""
    if not serial or len(serial) > 255:
        raise invalid("a serial number is 1 to 255 characters")
    device = db.session.scalar(select(Device).where(Device.serial == serial))
    created = device is None
    if device is None:
        device = Device(serial=serial, state=DEVICE_EXPECTED)
        db.session.add(device)
    device.variables = json.variables
    audit("device.variables", serial, names=sorted(json.variables))
    db.session.commit()
    return schemas.Device.model_validate(device), 201 if created else 200


@blueprint.post("/devices/<serial>/reprovision")
@operation(201, schemas.JobDetail, errors=(404, 409, 422), refused="no profile matches the device",
           path=schemas.DevicePath)
def reprovision_device(serial: str) -> tuple[schemas.JobDetail, int]:
    """Provision a device again with a new job

    The device's last job must have ended; its next contact picks the new job up.
    """
    device = _device(serial)
    try:
        job = operations.reprovision(device)
    except JobConflict as exc:
        raise conflict(str(exc)) from exc
    if job is None:
        raise invalid(f"no profile matches device {serial!r}")
    audit("device.reprovision", serial, job=job.id)
    db.session.commit()
    return schemas.JobDetail.model_validate(job), 201


@blueprint.post("/devices/<serial>/claim")
@operation(answer=schemas.Device, errors=(404, 409, 422), refused="'profile' names no profile",
           path=schemas.DevicePath)
def claim_device(serial: str, json: schemas.Claim) -> schemas.Device:
    """Claim a device for a profile: its next contact starts a job with it, before any matching rule"""
    device = _device(serial)
    profile = db.session.scalar(select(Profile).where(Profile.name == json.profile))
    if profile is None:
        raise invalid(f"field 'profile': no profile named {json.profile!r}", fields=["profile"])
    previous = device.state
    try:
        operations.claim(device, profile)
    except JobConflict as exc:
        raise conflict(str(exc)) from exc
    audit("device.claim", serial, profile=profile.name, previous_state=previous)
    db.session.commit()
    return schemas.Device.model_validate(device)

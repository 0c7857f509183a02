"""``/api/v1/devices``: what the gateway knows about each device, its history, its own template variables."""

from __future__ import annotations

from flask import Response, jsonify, request
from sqlalchemy import select
from sqlalchemy.orm import selectinload

from ..models import Device, Profile, ProvisioningJob, db
from ..provisioning import operations
from ..provisioning.types import DEVICE_EXPECTED, DEVICE_STATES, JobConflict
from . import blueprint, inventory
from .auth import audit
from .errors import conflict, invalid, not_found
from .representations import device_json, event_json, history_step_json, job_json
from .validation import Field, check_fields, json_body, query_args, variable_map

DEVICE_STATES = DEVICE_STATES


def _device(serial: str) -> Device:
    device = db.session.scalar(select(Device).where(Device.serial == serial))
    if device is None:
        raise not_found(f"device {serial!r}")
    return device


@blueprint.get("/devices")
def list_devices() -> Response:
    """The inventory: filters, a sort, and keyset pages (each answer's ``next`` is the cursor of the page after it).

    ``total`` (the devices matching the filters when the walk begins) comes with the first page only: counting
    costs more than a page, and a walk needs it once. A search counts up to
    :data:`~.inventory.SEARCH_COUNT_LIMIT` matches (``total_capped`` says when it stopped there).
    """
    if "offset" in request.args:
        raise invalid("devices are paged with cursor (the previous answer's next), not offset", fields=["offset"])
    query = inventory.inventory_query(query_args((*inventory.FILTERS, *inventory.PAGE_PARAMETERS)))
    devices, cursor = inventory.read_page(query)
    body = {"items": [device_json(d) for d in devices], "limit": query.limit, "sort": query.sort,
            "order": query.order, "next": cursor}
    if query.after is None:
        body["total"], body["total_capped"] = inventory.count(query)
    return jsonify(body)


@blueprint.get("/devices/counts")
def device_counts() -> Response:
    """The fleet overview: devices by state and by protocol."""
    return jsonify(inventory.fleet_counts())


@blueprint.get("/devices/<serial>")
def get_device(serial: str) -> Response:
    return jsonify(device_json(_device(serial)))


@blueprint.get("/devices/<serial>/history")
def device_history(serial: str) -> Response:
    """Every job of the device, newest first, with each step's request, answer and error; and the events for Prime
    that name the device, newest first (the latest :data:`~.inventory.HISTORY_EVENTS`)."""
    device = _device(serial)
    jobs = db.session.scalars(select(ProvisioningJob).where(ProvisioningJob.device_id == device.id)
                              .order_by(ProvisioningJob.id.desc()).options(selectinload(ProvisioningJob.steps)))
    events = list(db.session.scalars(inventory.device_events_statement(serial)))
    return jsonify({
        "device": device_json(device),
        "jobs": [{**job_json(j), "steps": [history_step_json(s) for s in j.steps]} for j in jobs],
        "events": [event_json(e) for e in events[:inventory.HISTORY_EVENTS]],
        "more_events": len(events) > inventory.HISTORY_EVENTS,
    })


@blueprint.put("/devices/<serial>/variables")
def put_device_variables(serial: str) -> tuple[Response, int]:
    """Replace the device's template variables; a device not seen yet is recorded as expected."""
    data = check_fields(json_body(), {"variables": Field((dict,), check=variable_map)}, required=("variables",))
    if not serial or len(serial) > 255:
        raise invalid("a serial number is 1 to 255 characters")
    device = db.session.scalar(select(Device).where(Device.serial == serial))
    created = device is None
    if device is None:
        device = Device(serial=serial, state=DEVICE_EXPECTED)
        db.session.add(device)
    device.variables = data["variables"]
    audit("device.variables", serial, names=sorted(data["variables"]))
    db.session.commit()
    return jsonify(device_json(device)), 201 if created else 200


@blueprint.post("/devices/<serial>/reprovision")
def reprovision_device(serial: str) -> tuple[Response, int]:
    """Start a new job for a device whose last job ended (its next contact picks it up)."""
    device = _device(serial)
    try:
        job = operations.reprovision(device)
    except JobConflict as exc:
        raise conflict(str(exc)) from exc
    if job is None:
        raise invalid(f"no profile matches device {serial!r}")
    audit("device.reprovision", serial, job=job.id)
    db.session.commit()
    return jsonify(job_json(job, steps=True)), 201


@blueprint.post("/devices/<serial>/claim")
def claim_device(serial: str) -> Response:
    """Assign a profile to a device (an unclaimed one, typically); its next contact starts the job."""
    data = check_fields(json_body(), {"profile": Field((str,), 255)}, required=("profile",))
    device = _device(serial)
    profile = db.session.scalar(select(Profile).where(Profile.name == data["profile"]))
    if profile is None:
        raise invalid(f"field 'profile': no profile named {data['profile']!r}", fields=["profile"])
    previous = device.state
    try:
        operations.claim(device, profile)
    except JobConflict as exc:
        raise conflict(str(exc)) from exc
    audit("device.claim", serial, profile=profile.name, previous_state=previous)
    db.session.commit()
    return jsonify(device_json(device))

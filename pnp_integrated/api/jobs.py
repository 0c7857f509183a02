"""``/api/v1/jobs``: provisioning jobs, their steps, cancel and retry."""

from __future__ import annotations

from flask import Response, jsonify
from sqlalchemy import func, select

from ..bodies import limited_body
from ..models import Device, ProvisioningJob, db
from ..provisioning import operations
from ..provisioning.types import TERMINAL_STATES, JobConflict
from . import blueprint
from .auth import audit, current_token
from .errors import conflict, invalid, not_found
from .representations import job_json
from .validation import Field, check_fields, json_body, page, query_args

JOB_STATES = ("running", *TERMINAL_STATES)


def _job(job_id: int) -> ProvisioningJob:
    job = db.session.get(ProvisioningJob, job_id)
    if job is None:
        raise not_found(f"job {job_id}")
    return job


def _optional_body(spec: dict[str, Field]) -> dict[str, object]:
    # These POSTs need no body; when one is sent it is validated like any other.
    data = limited_body()
    if not data:
        return {}
    return check_fields(json_body(data), spec)


@blueprint.get("/jobs")
def list_jobs() -> Response:
    """Filters: ``state``, ``serial`` (exact); newest first; pages with ``limit``/``offset``."""
    args = query_args(("state", "serial", "limit", "offset"))
    limit, offset = page(args)
    stmt = select(ProvisioningJob)
    if "state" in args:
        if args["state"] not in JOB_STATES:
            raise invalid(f"state must be one of {', '.join(JOB_STATES)}", fields=["state"])
        stmt = stmt.where(ProvisioningJob.state == args["state"])
    if "serial" in args:
        stmt = stmt.join(Device, Device.id == ProvisioningJob.device_id).where(Device.serial == args["serial"])
    total = db.session.scalar(select(func.count()).select_from(stmt.subquery()))
    rows = db.session.scalars(stmt.order_by(ProvisioningJob.id.desc()).limit(limit).offset(offset))
    return jsonify({"items": [job_json(j) for j in rows], "total": total, "limit": limit, "offset": offset})


@blueprint.get("/jobs/<int:job_id>")
def get_job(job_id: int) -> Response:
    return jsonify(job_json(_job(job_id), steps=True))


@blueprint.post("/jobs/<int:job_id>/cancel")
def cancel_job(job_id: int) -> Response:
    data = _optional_body({"reason": Field((str,), 500)})
    job = _job(job_id)
    reason = str(data.get("reason") or f"cancelled by {current_token().name}")
    try:
        operations.cancel_job(job, reason)
    except JobConflict as exc:
        raise conflict(str(exc)) from exc
    audit("job.cancel", str(job.id), device=job.device.serial, reason=reason)
    db.session.commit()
    return jsonify(job_json(job, steps=True))


@blueprint.post("/jobs/<int:job_id>/retry")
def retry_job(job_id: int) -> tuple[Response, int]:
    """Provision the device of a failed or cancelled job again, from the first step (a new job)."""
    _optional_body({})
    job = _job(job_id)
    try:
        new = operations.restart_job(job)
    except JobConflict as exc:
        raise conflict(str(exc)) from exc
    if new is None:
        raise invalid(f"no profile matches device {job.device.serial!r} any more")
    audit("job.retry", str(job.id), device=job.device.serial, new_job=new.id)
    db.session.commit()
    return jsonify(job_json(new, steps=True)), 201

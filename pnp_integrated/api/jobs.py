"""``/api/v1/jobs``: provisioning jobs, their steps, cancel and retry."""

from __future__ import annotations

from sqlalchemy import func, select

from ..models import Device, ProvisioningJob, db
from ..provisioning import operations
from ..provisioning.types import JobConflict
from . import blueprint, schemas
from .auth import audit, current_token
from .contract import operation
from .errors import conflict, invalid, not_found


def _job(job_id: int) -> ProvisioningJob:
    job = db.session.get(ProvisioningJob, job_id)
    if job is None:
        raise not_found(f"job {job_id}")
    return job


@blueprint.get("/jobs")
@operation(answer=schemas.JobPage, errors=(422,))
def list_jobs(query: schemas.JobQuery) -> schemas.JobPage:
    """List jobs, newest first

    Filters: ``state``, ``serial`` (exact); pages with ``limit`` and ``offset``.
    """
    stmt = select(ProvisioningJob)
    if query.state is not None:
        stmt = stmt.where(ProvisioningJob.state == query.state)
    if query.serial is not None:
        stmt = stmt.join(Device, Device.id == ProvisioningJob.device_id).where(Device.serial == query.serial)
    total = db.session.scalar(select(func.count()).select_from(stmt.subquery()))
    rows = db.session.scalars(stmt.order_by(ProvisioningJob.id.desc()).limit(query.limit).offset(query.offset))
    return schemas.JobPage.model_validate({"items": list(rows), "total": total, "limit": query.limit,
                                           "offset": query.offset})


@blueprint.get("/jobs/<int:job_id>")
@operation(answer=schemas.JobDetail, errors=(404,), path=schemas.JobPath)
def get_job(job_id: int) -> schemas.JobDetail:
    """Get a job with its steps"""
    return schemas.JobDetail.model_validate(_job(job_id))


@blueprint.post("/jobs/<int:job_id>/cancel")
@operation(answer=schemas.JobDetail, errors=(404, 409, 422), path=schemas.JobPath, optional_body=True)
def cancel_job(job_id: int, json: schemas.Cancel) -> schemas.JobDetail:
    """Cancel an unfinished job"""
    job = _job(job_id)
    reason = json.reason or f"cancelled by {current_token().name}"
    try:
        operations.cancel_job(job, reason)
    except JobConflict as exc:
        raise conflict(str(exc)) from exc
    audit("job.cancel", str(job.id), device=job.device.serial, reason=reason)
    db.session.commit()
    return schemas.JobDetail.model_validate(job)


@blueprint.post("/jobs/<int:job_id>/retry")
@operation(201, schemas.JobDetail, errors=(404, 409, 422), refused="no profile matches the device any more",
           path=schemas.JobPath, optional_body=True)
def retry_job(job_id: int, json: schemas.Retry) -> tuple[schemas.JobDetail, int]:
    """Start a new job for the device of a failed or cancelled job

    The device is provisioned again from the first step, by a new job.
    """
    job = _job(job_id)
    try:
        new = operations.restart_job(job)
    except JobConflict as exc:
        raise conflict(str(exc)) from exc
    if new is None:
        raise invalid(f"no profile matches device {job.device.serial!r} any more")
    audit("job.retry", str(job.id), device=job.device.serial, new_job=new.id)
    db.session.commit()
    return schemas.JobDetail.model_validate(new), 201

"""Operator operations on jobs and devices (REST API, Prime's commands, the CLI), in the caller's transaction."""

from __future__ import annotations

import secrets

from sqlalchemy import update
from sqlalchemy.orm.attributes import set_committed_value

from ..models import Device, Profile, ProvisioningJob, db
from ..outbox import device_payload, record_event
from .engine import (
    LostRace,
    attach_job,
    close_open_step,
    current_job,
    finish_job,
    issue_step,
    job_event_payload,
    job_profile,
    locked_device,
    profile_for,
)
from .steps import STEP_NAMES, Work
from .types import (
    CANCELLED,
    DEVICE_CLAIMED,
    DEVICE_PROVISIONING,
    FAILED,
    RUNNING,
    TERMINAL_STATES,
    ActionKind,
    JobConflict,
)


def cancel_job(job: ProvisioningJob, reason: str) -> None:
    """Cancel an unfinished job; the caller commits. Raises :class:`JobConflict` for a finished job."""
    if job.state in TERMINAL_STATES:
        raise JobConflict(f"job {job.id} is already {job.state}")
    work = Work(job, job.device, job_profile(job))
    close_open_step(job, "cancelled")
    job.pending_request = {"kind": ActionKind.CANCELLED.value, "step": job.step}
    finish_job(work, CANCELLED, reason)
    record_event("job.failed", {"job": job_event_payload(work, job.step, CANCELLED, job.attempt, reason)})


def restart_job(job: ProvisioningJob) -> ProvisioningJob:
    """Start a new job for the device of a failed or cancelled ``job``; the caller commits.

    Raises :class:`JobConflict` when the job is unfinished or the device has a newer job.
    """
    device = job.device
    if job.state not in (FAILED, CANCELLED):
        raise JobConflict(f"job {job.id} is {job.state}: only a failed or cancelled job can be retried")
    if device.current_job_id != job.id:
        raise JobConflict(f"device {device.serial} has a newer job ({device.current_job_id})")
    return _restart(device, job)


def reprovision(device: Device) -> ProvisioningJob | None:
    """Provision ``device`` again from the start (its next contact gets the new job); the caller commits.

    Raises :class:`JobConflict` when the device's job is still running. Returns None when no profile matches.
    """
    current = current_job(device)
    if current is not None and current.state not in TERMINAL_STATES:
        raise JobConflict(f"device {device.serial} is being provisioned (job {current.id})")
    return _restart(device, current)


def claim(device: Device, profile: Profile) -> None:
    """Assign ``profile`` to ``device``: its next contact starts a job with it, whatever the matching rules say.

    The caller commits. Raises :class:`JobConflict` while the device's job is running; a device whose last job
    ended is detached from it, so its next contact starts afresh with the claimed profile.
    """
    locked_device(device.serial)  # lock and refresh the row: a contact racing the claim waits, or wins and conflicts
    current = current_job(device)
    if current is not None:
        if current.state not in TERMINAL_STATES:
            raise JobConflict(f"device {device.serial} is being provisioned (job {current.id}); cancel that job first")
        result = db.session.execute(
            update(Device).where(Device.id == device.id, Device.current_job_id == current.id)
            .values(current_job_id=None).execution_options(synchronize_session=False)
        )
        if result.rowcount != 1:  # type: ignore[attr-defined]
            raise JobConflict(f"device {device.serial} got another job meanwhile")
        set_committed_value(device, "current_job_id", None)
    device.profile_id = profile.id
    device.profile = profile
    device.state = DEVICE_CLAIMED
    record_event("device.claimed", {"device": device_payload(device), "profile": profile.name})


def _restart(device: Device, previous: ProvisioningJob | None) -> ProvisioningJob | None:
    profile = profile_for(device)
    if profile is None:
        return None
    job = ProvisioningJob(device_id=device.id, profile_id=profile.id, protocol=device.protocol, state=RUNNING,
                          step=STEP_NAMES[0], context={"nonce": secrets.token_hex(3)})
    db.session.add(job)
    db.session.flush()
    try:
        attach_job(device, job, previous=previous.id if previous is not None else None)
    except LostRace as exc:
        raise JobConflict(f"device {device.serial} got another job meanwhile") from exc
    device.profile_id = profile.id
    device.state = DEVICE_PROVISIONING
    issue_step(Work(job, device, profile), STEP_NAMES[0])
    return job

"""How rows look in API responses. Credentials are never part of any of them."""

from __future__ import annotations

import datetime as dt
from typing import Any

from ..models import Device, Image, JobStep, OutboxEvent, Profile, ProvisioningJob
from ..outbox import rfc3339


def _when(value: dt.datetime | None) -> str | None:
    return rfc3339(value) if value is not None else None


def image_json(image: Image) -> dict[str, Any]:
    return {"id": image.id, "name": image.name, "version": image.version, "md5": image.md5, "size": image.size,
            "path": f"/images/{image.filename}", "created_at": _when(image.created_at)}


def profile_json(profile: Profile) -> dict[str, Any]:
    return {
        "id": profile.id,
        "name": profile.name,
        "match_serials": list(profile.match_serials or []),
        "match_pid": profile.match_pid,
        "is_default": profile.is_default,
        "bootstrap_template": profile.bootstrap_template,
        "config_template": profile.config_template,
        "post_template": profile.post_template,
        "image": profile.image.name if profile.image is not None else None,
        "reload_after_install": profile.reload_after_install,
        "apply_to": profile.apply_to,
        "variables": profile.variables or {},
        "has_credentials": bool(profile.credentials),
        "created_at": _when(profile.created_at),
        "updated_at": _when(profile.updated_at),
    }


def device_json(device: Device) -> dict[str, Any]:
    return {
        "id": device.id,
        "serial": device.serial,
        "pid": device.pid,
        "udi": device.udi,
        "hostname": device.hostname,
        "protocol": device.protocol,
        "address": device.address,
        "software_version": device.software_version,
        "state": device.state,
        "profile": device.profile.name if device.profile is not None else None,
        "current_job_id": device.current_job_id,
        "variables": device.variables or {},
        "first_seen": _when(device.first_seen),
        "last_seen": _when(device.last_seen),
    }


def step_json(step: JobStep) -> dict[str, Any]:
    return {"id": step.id, "step": step.step, "state": step.state, "attempt": step.attempt, "detail": step.detail,
            "started_at": _when(step.started_at), "ended_at": _when(step.ended_at)}


# Step states in which the device answered the step's request (a skipped step was never sent; a cancelled or a
# started one has no answer).
ANSWERED_STEP_STATES = ("succeeded", "failed")


def history_step_json(step: JobStep) -> dict[str, Any]:
    """A step of a device's history: when its request went out and its answer came, how long that took, and the
    device's error text when it failed."""
    ended = step.ended_at
    duration = round((ended - step.started_at).total_seconds() * 1000) if ended is not None else None
    return {**step_json(step),
            "requested_at": _when(step.started_at) if step.state != "skipped" else None,
            "answered_at": _when(ended) if step.state in ANSWERED_STEP_STATES else None,
            "duration_ms": duration,
            "error": step.detail if step.state == "failed" else None}


def event_json(event: OutboxEvent) -> dict[str, Any]:
    """An event for Prime as the outbox holds it: sent (after the broker's receipt) or still waiting."""
    return {"id": event.event_id, "type": event.type, "created_at": _when(event.created_at),
            "sent_at": _when(event.sent_at), "attempts": event.attempts, "payload": event.payload or {}}


def job_json(job: ProvisioningJob, steps: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": job.id,
        "device": job.device.serial,
        "profile_id": job.profile_id,
        "protocol": job.protocol,
        "state": job.state,
        "step": job.step,
        "attempt": job.attempt,
        "max_attempts": job.max_attempts,
        "pending": (job.pending_request or {}).get("kind") if job.state == "running" else None,
        "detail": job.detail,
        "failed_step": job.failed_step or None,
        "created_at": _when(job.created_at),
        "updated_at": _when(job.updated_at),
        "finished_at": _when(job.finished_at),
    }
    if steps:
        out["steps"] = [step_json(s) for s in job.steps]
    return out

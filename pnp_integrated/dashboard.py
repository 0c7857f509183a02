"""The operator dashboard at ``/``: the status table, devices and jobs with their steps, refreshed live.

The page is rendered on the server (it works without JavaScript); a small script re-reads ``/dashboard/data``
every few seconds and redraws the tables in place.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, current_app, jsonify, render_template
from sqlalchemy import select
from sqlalchemy.orm import selectinload

from .models import Device, ProvisioningJob, db
from .version import __version__

blueprint = Blueprint("dashboard", __name__)

ROWS_SHOWN = 50


def _when(value: Any) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value else ""


def dashboard_data() -> dict[str, Any]:
    """Everything the page shows, measured now."""
    from .status import current_status

    devices = db.session.scalars(select(Device).order_by(Device.last_seen.desc()).limit(ROWS_SHOWN)).all()
    jobs = db.session.scalars(
        select(ProvisioningJob).options(selectinload(ProvisioningJob.steps), selectinload(ProvisioningJob.device))
        .order_by(ProvisioningJob.updated_at.desc()).limit(ROWS_SHOWN)
    ).all()
    data = {
        "status": current_status(current_app._get_current_object(), max_age=2.0),  # type: ignore[attr-defined]
        "devices": [
            {"serial": d.serial, "pid": d.pid, "protocol": d.protocol, "address": d.address, "state": d.state,
             "last_seen": _when(d.last_seen)}
            for d in devices
        ],
        "jobs": [
            {"id": j.id, "device": j.device.serial if j.device else "", "state": j.state, "step": j.step,
             "attempt": j.attempt, "detail": j.detail, "updated": _when(j.updated_at),
             "steps": [f"{s.step}:{s.state}" for s in j.steps]}
            for j in jobs
        ],
    }
    db.session.remove()
    return data


@blueprint.get("/")
def dashboard_view() -> str:
    return render_template("dashboard.html", data=dashboard_data(), version=__version__)


@blueprint.get("/dashboard/data")
def dashboard_data_view() -> Any:
    return jsonify(dashboard_data())

"""The fleet overview at ``/``: devices by state and protocol, the activity chart, the node's status rows.

The live part (counts, chart, status) is a fragment the page's script fetches again every few seconds and puts in
place (``/console/overview/live``), so the page follows a roll-out without reloading.
"""

from __future__ import annotations

from typing import Any

from flask import Response, current_app, jsonify, request
from sqlalchemy import select
from sqlalchemy.orm import selectinload

from ..models import Device, ProvisioningJob, db
from ..provisioning.types import DEVICE_STATES
from ..status import current_status
from . import blueprint
from .chart import activity_chart
from .pages import api, page, refusal, signed_in
from .signin import current_operator

WINDOWS = {"1h": 60, "3h": 180, "6h": 360, "12h": 720, "24h": 1440}
DEFAULT_WINDOW = "3h"
REFRESH_MS = 10_000
# The services table is read again at most this often per worker: reading it asks the kernel for every socket of the
# host, which costs more than the rest of a refresh.
STATUS_MAX_AGE = 30.0


def _window() -> str:
    chosen = request.args.get("window", DEFAULT_WINDOW)
    return chosen if chosen in WINDOWS else DEFAULT_WINDOW


def _live_context() -> dict[str, Any] | Response:
    window = _window()
    counts = api("GET", "/devices/counts")
    activity = api("GET", "/activity", query={"minutes": str(WINDOWS[window])})
    for answer in (counts, activity):
        if not answer.ok:
            return refusal(answer.status, answer.message)
    status = current_status(current_app._get_current_object(), max_age=STATUS_MAX_AGE)  # type: ignore[attr-defined]
    return {"counts": counts.body, "states": DEVICE_STATES, "chart": activity_chart(activity.body),
            "node_status": status, "window": window}


@blueprint.get("/")
@signed_in
def overview() -> Response:
    context = _live_context()
    if isinstance(context, Response):
        return context
    return page("console/overview.html", nav="overview", windows=WINDOWS, refresh_ms=REFRESH_MS, **context)


@blueprint.get("/console/overview/live")
@signed_in
def overview_live() -> Response:
    context = _live_context()
    if isinstance(context, Response):
        return context
    return page("console/overview_live.html", **context)


# ---- for scripts: the former dashboard's data ----------------------------------------------------------------------

ROWS_SHOWN = 50


def _when(value: Any) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value else ""


def _bearer_signed_in() -> bool:
    from ..api.tokens import token_for

    scheme, _, raw = request.headers.get("Authorization", "").partition(" ")
    return scheme.lower() == "bearer" and bool(raw.strip()) and token_for(raw.strip()) is not None


@blueprint.get("/dashboard/data")
def dashboard_data() -> Any:
    """The status table and the 50 devices and jobs seen last, as JSON, for a signed-in browser or a script with an
    API token (``Authorization: Bearer``)."""
    if current_operator() is None and not _bearer_signed_in():
        return jsonify({"error": "sign in on the page, or send an API token (Authorization: Bearer <token>)"}), 401
    devices = db.session.scalars(select(Device).order_by(Device.last_seen.desc()).limit(ROWS_SHOWN)).all()
    jobs = db.session.scalars(
        select(ProvisioningJob).options(selectinload(ProvisioningJob.steps), selectinload(ProvisioningJob.device))
        .order_by(ProvisioningJob.updated_at.desc()).limit(ROWS_SHOWN)).all()
    data = {
        "status": current_status(current_app._get_current_object(), max_age=2.0),  # type: ignore[attr-defined]
        "devices": [{"serial": d.serial, "pid": d.pid, "protocol": d.protocol, "address": d.address,
                     "state": d.state, "last_seen": _when(d.last_seen)} for d in devices],
        "jobs": [{"id": j.id, "device": j.device.serial if j.device else "", "state": j.state, "step": j.step,
                  "attempt": j.attempt, "detail": j.detail, "updated": _when(j.updated_at),
                  "steps": [f"{s.step}:{s.state}" for s in j.steps]} for j in jobs],
    }
    db.session.remove()
    return jsonify(data)

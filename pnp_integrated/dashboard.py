"""The operator dashboard at ``/``: the status table, devices and jobs with their steps, refreshed live.

The page is rendered on the server (it works without JavaScript); a small script re-reads ``/dashboard/data``
every few seconds and redraws the tables in place.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, current_app, jsonify, redirect, render_template, request, url_for
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


# The dashboard shows serials, addresses and job steps: it needs an API token (read or admin). A browser signs in
# once with the token; it is kept in a cookie the page's scripts cannot read (HttpOnly), sent only to this node
# (SameSite=Strict: no other site's page can make the browser use it), over HTTPS only when signed in over HTTPS.
COOKIE = "pnp_console"
COOKIE_SECONDS = 8 * 3600


def _signed_in() -> bool:
    from .api.tokens import token_for

    header = request.headers.get("Authorization", "")
    scheme, _, raw = header.partition(" ")
    if scheme.lower() == "bearer" and raw.strip():
        return token_for(raw.strip()) is not None
    return token_for(request.cookies.get(COOKIE, "")) is not None


def _signin_page(problem: str = "", status: int = 401) -> Response:
    return Response(render_template("signin.html", problem=problem), status, content_type="text/html; charset=utf-8")


@blueprint.get("/")
def dashboard_view() -> Response | str:
    if not _signed_in():
        return _signin_page()
    return render_template("dashboard.html", data=dashboard_data(), version=__version__)


@blueprint.post("/dashboard/signin")
def dashboard_signin() -> Response:
    from .api.tokens import token_for

    raw = (request.form.get("token") or "").strip()
    if token_for(raw) is None:
        return _signin_page("That token is not valid (or was revoked).")
    answer = redirect(url_for("dashboard.dashboard_view"), 303)
    answer.set_cookie(COOKIE, raw, max_age=COOKIE_SECONDS, httponly=True, samesite="Strict", secure=request.is_secure)
    return answer


@blueprint.post("/dashboard/signout")
def dashboard_signout() -> Response:
    answer = redirect(url_for("dashboard.dashboard_view"), 303)
    answer.delete_cookie(COOKIE, httponly=True, samesite="Strict")
    return answer


@blueprint.get("/dashboard/data")
def dashboard_data_view() -> Any:
    if not _signed_in():
        return jsonify({"error": "sign in with an API token (Authorization: Bearer <token>, or on the page)"}), 401
    return jsonify(dashboard_data())

"""The device inventory (``/console/devices``) and a device's page, with its actions.

The inventory is the API's: its filters, sorts and keyset pages (a page's ``next`` cursor is the next link's), so a
page of a 100,000-device fleet costs what the first one does. A device's page is its history (every job with its
steps as a timeline, the device's own error text, the events for Prime) and, for admins, its rendered configuration
and the actions: claim to a profile, re-provision, cancel, retry, each one API operation.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

from flask import Response, redirect, request, url_for

from ..provisioning.types import DEVICE_STATES, TERMINAL_STATES
from . import blueprint
from .pages import admin_only, api, operator, page, refusal, signed_in
from .rest import segment

FILTERS = ("search", "state", "protocol", "profile", "pid", "software_version")
SORTS = {"serial": "Serial", "state": "State", "pid": "PID", "last_seen": "Last seen"}
PAGE_SIZES = (50, 100, 200, 500)
NO_PROFILE = "-"  # the profile filter's value for devices without one (the API's empty profile)
DONE = {"claimed": "Claimed: the device's next contact starts its job with that profile.",
        "reprovisioned": "A new job waits for the device's next contact.",
        "cancelled": "The job is cancelled.", "retried": "A new job waits for the device's next contact."}
DEVICE_REFRESH_MS = 5000


def _local_to_rfc3339(value: str) -> str | None:
    """A ``datetime-local`` field's value (taken as UTC) as RFC 3339; None when it is not one."""
    try:
        return dt.datetime.fromisoformat(value).replace(tzinfo=None).isoformat(timespec="seconds") + "Z"
    except ValueError:
        return None


def _inventory_query() -> tuple[dict[str, str], dict[str, str], list[str]]:
    """(the form's values, the API's query, problems with the form) from this request's query string."""
    form = {name: request.args.get(name, "").strip() for name in (*FILTERS, "last_seen_after", "sort", "order",
                                                                  "limit", "cursor", "back")}
    query: dict[str, str] = {}
    problems = []
    for name in FILTERS:
        if form[name]:
            query[name] = "" if name == "profile" and form[name] == NO_PROFILE else form[name]
    if form["last_seen_after"]:
        when = _local_to_rfc3339(form["last_seen_after"])
        if when is None:
            problems.append("last_seen_after")
        else:
            query["last_seen_after"] = when
    form["sort"] = form["sort"] if form["sort"] in SORTS else "serial"
    form["order"] = "desc" if form["order"] == "desc" else "asc"
    form["limit"] = form["limit"] if form["limit"] in {str(s) for s in PAGE_SIZES} else str(PAGE_SIZES[0])
    query.update(sort=form["sort"], order=form["order"], limit=form["limit"])
    if form["cursor"]:
        query["cursor"] = form["cursor"]
    return form, query, problems


# The API's pages go forward only; "Previous page" walks back along the cursors of the pages before this one,
# carried in the URL ("back": the first page is FIRST, the others their cursors, joined by "."), at most BACK_DEPTH.
BACK_DEPTH = 20
FIRST = "0"
_CURSOR = re.compile(r"[A-Za-z0-9_-]{1,1024}")


def _trail(form: dict[str, str]) -> list[str]:
    """The cursors of the pages before this one, nearest last (FIRST for the first page); [] when none or bad."""
    trail = form["back"].split(".") if form["back"] else []
    return trail if len(trail) <= BACK_DEPTH and all(_CURSOR.fullmatch(c) for c in trail) else []


def _link(form: dict[str, str], **changes: str) -> str:
    """The inventory's URL with these filters and ``changes`` (a changed filter or sort starts again at page 1)."""
    values = {k: v for k, v in form.items() if v and k not in ("cursor", "at", "total", "back")}
    values.update(changes)
    return url_for("console.inventory", **{k: v for k, v in values.items() if v})


@blueprint.get("/console/devices")
@signed_in
def inventory() -> Response:
    form, query, problems = _inventory_query()
    profiles = api("GET", "/profiles")
    names = [p["name"] for p in profiles.body.get("items", [])] if profiles.ok else []
    context: dict[str, Any] = {"form": form, "states": DEVICE_STATES, "sorts": SORTS, "page_sizes": PAGE_SIZES,
                               "profiles": names, "no_profile": NO_PROFILE, "link": _link, "devices": [],
                               "next_link": None, "field_problems": set(problems), "nav": "devices"}
    if problems:
        return page("console/devices.html", 422, problem="Last seen after: not a date and time.", **context)
    answer = api("GET", "/devices", query=query)
    if not answer.ok:
        # A filter the API refused (too long, a stale cursor ...): its message, next to the field it names.
        return page("console/devices.html", answer.status, problem=answer.message,
                    **{**context, "field_problems": set(answer.fields)})
    body = answer.body
    at = int(request.args["at"]) if request.args.get("at", "").isdigit() else 0  # where this page starts, shown
    total = body.get("total")
    if total is None and request.args.get("total", "").isdigit():
        total = int(request.args["total"])
    next_link = previous_link = None
    trail = _trail(form) if form["cursor"] else []
    if body.get("next"):
        ahead = [*trail, form["cursor"] or FIRST][-BACK_DEPTH:]
        next_link = _link(form, cursor=body["next"], at=str(at + len(body["items"])), total=str(total or ""),
                          back=".".join(ahead))
    if trail:
        earlier = trail[-1]
        previous_link = _link(form, cursor="" if earlier == FIRST else earlier,
                              at=str(max(0, at - int(form["limit"]))), total=str(total or ""),
                              back=".".join(trail[:-1]) if earlier != FIRST else "")
    return page("console/devices.html", **{**context, "devices": body["items"], "total": total, "at": at,
                                           "next_link": next_link, "previous_link": previous_link})


def _device_context(serial: str) -> dict[str, Any] | Response:
    history = api("GET", f"/devices/{segment(serial)}/history")
    if not history.ok:
        return refusal(history.status, history.message)
    context: dict[str, Any] = {"history": history.body, "device": history.body["device"], "serial": serial,
                               "terminal": TERMINAL_STATES, "refresh_ms": DEVICE_REFRESH_MS}
    jobs = history.body["jobs"]
    context["job"] = jobs[0] if jobs else None
    context["older_jobs"] = jobs[1:]
    context["failing_step"] = next((s for s in reversed(jobs[0]["steps"]) if s["state"] == "failed"), None) \
        if jobs else None
    return context


def _admin_context(serial: str) -> dict[str, Any]:
    if not operator().is_admin:
        return {}
    configuration = api("GET", f"/devices/{segment(serial)}/configuration")
    profiles = api("GET", "/profiles")
    return {"configuration": configuration.body if configuration.ok else None,
            "configuration_problem": "" if configuration.ok else configuration.message,
            "profiles": [p["name"] for p in profiles.body.get("items", [])] if profiles.ok else []}


def _device_page(serial: str, status: int = 200, problem: str = "") -> Response:
    context = _device_context(serial)
    if isinstance(context, Response):
        return context
    notice = DONE.get(request.args.get("done", ""), "")
    return page("console/device.html", status, nav="devices", notice=notice, problem=problem,
                **context, **_admin_context(serial))


@blueprint.get("/console/devices/<serial>")
@signed_in
def device_page(serial: str) -> Response:
    return _device_page(serial)


@blueprint.get("/console/devices/<serial>/live")
@signed_in
def device_live(serial: str) -> Response:
    context = _device_context(serial)
    if isinstance(context, Response):
        return context
    return page("console/device_live.html", **context)


def _after(serial: str, answer: Any, done: str) -> Response:
    """Back to the device's page: with the outcome when the API took the action, with its refusal when not."""
    if answer.ok:
        return redirect(url_for("console.device_page", serial=serial, done=done), 303)  # type: ignore[return-value]
    return _device_page(serial, answer.status, answer.message)


@blueprint.post("/console/devices/<serial>/claim")
@admin_only
def claim_device(serial: str) -> Response:
    answer = api("POST", f"/devices/{segment(serial)}/claim", json={"profile": request.form.get("profile", "")})
    return _after(serial, answer, "claimed")


@blueprint.post("/console/devices/<serial>/reprovision")
@admin_only
def reprovision_device(serial: str) -> Response:
    return _after(serial, api("POST", f"/devices/{segment(serial)}/reprovision"), "reprovisioned")


@blueprint.post("/console/devices/<serial>/jobs/<int:job_id>/cancel")
@admin_only
def cancel_job(serial: str, job_id: int) -> Response:
    reason = request.form.get("reason", "").strip()
    answer = api("POST", f"/jobs/{job_id}/cancel", json={"reason": reason} if reason else None)
    return _after(serial, answer, "cancelled")


@blueprint.post("/console/devices/<serial>/jobs/<int:job_id>/retry")
@admin_only
def retry_job(serial: str, job_id: int) -> Response:
    return _after(serial, api("POST", f"/jobs/{job_id}/retry"), "retried")

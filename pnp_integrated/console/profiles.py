"""Profiles (``/console/profiles``): the list, and a form to create or edit one, with a preview of its templates
rendered for a chosen device before anything is saved.

The form is the API's profile, field by field; what the API refuses comes back with the fields it names, and the
form shows each message next to its field. Templates and variables are configuration: a read operator sees the list
and the matching rules only.
"""

from __future__ import annotations

import json
import re
from typing import Any

from flask import Response, redirect, request, url_for

from . import blueprint
from .pages import admin_only, api, operator, page, refusal, signed_in
from .rest import Answer, segment

TEMPLATE_FIELDS = {"bootstrap_template": "Bootstrap template (day-0 lines a device gets by hand)",
                   "config_template": "Configuration template",
                   "post_template": "Post-PnP template"}
FIELDS = ("name", "match_serials", "match_pid", "is_default", "image", "reload_after_install", "apply_to",
          "variables", *TEMPLATE_FIELDS)


def _images() -> list[str]:
    answer = api("GET", "/images")
    return [i["name"] for i in answer.body.get("items", [])] if answer.ok else []


def _form_of(profile: dict[str, Any]) -> dict[str, Any]:
    """A stored profile (the API's) as the form's values."""
    return {"name": profile["name"], "match_serials": "\n".join(profile.get("match_serials") or []),
            "match_pid": profile.get("match_pid", ""), "is_default": bool(profile.get("is_default")),
            "image": profile.get("image") or "", "reload_after_install": bool(profile.get("reload_after_install")),
            "apply_to": profile.get("apply_to", "running"),
            "variables": json.dumps(profile.get("variables") or {}, indent=2, sort_keys=True),
            **{f: profile.get(f, "") for f in TEMPLATE_FIELDS}}


def _submitted() -> tuple[dict[str, Any], dict[str, Any], dict[str, str]]:
    """(the form as sent, the API body it makes, problems found before asking the API, by field)."""
    form: dict[str, Any] = {name: request.form.get(name, "") for name in FIELDS}
    form["is_default"] = request.form.get("is_default") == "on"
    form["reload_after_install"] = request.form.get("reload_after_install") == "on"
    problems: dict[str, str] = {}
    variables: Any = {}
    if form["variables"].strip():
        try:
            variables = json.loads(form["variables"])
        except ValueError as exc:
            problems["variables"] = f"not JSON: {exc}"
        else:
            if not isinstance(variables, dict):
                problems["variables"] = 'a JSON object of names and values, e.g. {"site": "ams1"}'
    body = {"name": form["name"].strip(),
            "match_serials": [s.strip() for s in form["match_serials"].replace(",", "\n").splitlines() if s.strip()],
            "match_pid": form["match_pid"].strip(), "is_default": form["is_default"],
            "image": form["image"] or None, "reload_after_install": form["reload_after_install"],
            "apply_to": form["apply_to"] or "running", "variables": variables if isinstance(variables, dict) else {},
            **{f: form[f].replace("\r\n", "\n") for f in TEMPLATE_FIELDS}}
    return form, body, problems


def _problems_of(answer: Answer) -> dict[str, str]:
    """The API's refusal, by the form field it concerns (shown next to it, without the field's name)."""
    fields = [f for f in answer.fields if f in FIELDS]
    if fields:
        return dict.fromkeys(fields, re.sub(r"^field '[^']*': ", "", answer.message))
    if answer.status == 409:  # a conflict names no field: the default profile, or a name already taken
        return {"is_default" if "default" in answer.message else "name": answer.message}
    return {"": answer.message}


def _form_page(title: str, action: str, form: dict[str, Any], status: int = 200,
               problems: dict[str, str] | None = None, preview: dict[str, Any] | None = None,
               preview_serial: str = "", notice: str = "") -> Response:
    problems = problems or {}
    return page("console/profile_form.html", status, nav="profiles", title=title, action=action, form=form,
                problems=problems, problem=problems.get("", ""), preview=preview, preview_serial=preview_serial,
                images=_images(), template_fields=TEMPLATE_FIELDS, notice=notice)


def _preview(form: dict[str, Any], body: dict[str, Any], problems: dict[str, str], title: str,
             action: str) -> Response:
    serial = request.form.get("preview_serial", "").strip()
    if not serial:
        return _form_page(title, action, form, 422, {**problems, "preview_serial": "name a device to render for"})
    templates = {f: body[f] for f in TEMPLATE_FIELDS if body[f]}
    answer = api("POST", "/templates/preview",
                 json={"serial": serial, "templates": templates, "variables": body["variables"]})
    if not answer.ok:
        where = "preview_serial" if answer.status == 404 or "serial" in answer.fields else ""
        return _form_page(title, action, form, answer.status, {**problems, where: answer.message},
                          preview_serial=serial)
    found = {**problems, **answer.body["problems"]}
    return _form_page(title, action, form, 200, found, answer.body, serial)


@blueprint.get("/console/profiles")
@signed_in
def profile_list() -> Response:
    answer = api("GET", "/profiles")
    if not answer.ok:
        return refusal(answer.status, answer.message)
    return page("console/profiles.html", nav="profiles", profiles=answer.body["items"])


@blueprint.get("/console/profiles/new")
@admin_only
def new_profile() -> Response:
    blank = {name: "" for name in FIELDS} | {"is_default": False, "reload_after_install": True,
                                             "apply_to": "running", "variables": "{}"}
    return _form_page("New profile", url_for("console.create_profile"), blank)


@blueprint.post("/console/profiles/new")
@admin_only
def create_profile() -> Response:
    form, body, problems = _submitted()
    action = url_for("console.create_profile")
    if request.form.get("do") == "preview":
        return _preview(form, body, problems, "New profile", action)
    if problems:
        return _form_page("New profile", action, form, 422, problems)
    answer = api("POST", "/profiles", json=body)
    if not answer.ok:
        return _form_page("New profile", action, form, answer.status, _problems_of(answer))
    return redirect(url_for("console.profile_page", name=answer.body["name"], saved="created"), 303)  # type: ignore[return-value]


@blueprint.get("/console/profiles/<name>")
@signed_in
def profile_page(name: str) -> Response:
    answer = api("GET", f"/profiles/{segment(name)}")
    if not answer.ok:
        return refusal(answer.status, answer.message)
    if not operator().is_admin:
        return page("console/profile_view.html", nav="profiles", profile=answer.body)
    saved = {"created": "Profile created.", "saved": "Profile saved."}.get(request.args.get("saved", ""), "")
    return _form_page(f"Profile {name}", url_for("console.save_profile", name=name), _form_of(answer.body),
                      notice=saved)


@blueprint.post("/console/profiles/<name>")
@admin_only
def save_profile(name: str) -> Response:
    form, body, problems = _submitted()
    action = url_for("console.save_profile", name=name)
    title = f"Profile {name}"
    if request.form.get("do") == "preview":
        return _preview(form, body, problems, title, action)
    if problems:
        return _form_page(title, action, form, 422, problems)
    answer = api("PATCH", f"/profiles/{segment(name)}", json=body)  # credentials are kept: the form has none
    if not answer.ok:
        return _form_page(title, action, form, answer.status, _problems_of(answer))
    return redirect(url_for("console.profile_page", name=answer.body["name"], saved="saved"), 303)  # type: ignore[return-value]

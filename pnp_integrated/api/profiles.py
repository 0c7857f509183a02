"""``/api/v1/profiles``: what devices receive, and which devices a profile claims."""

from __future__ import annotations

from typing import Any

from flask import Response, jsonify
from sqlalchemy import func, select

from ..context import current_settings
from ..models import Image, Profile, ProvisioningJob, db
from ..provisioning.matching import pid_pattern_problem
from ..provisioning.templates import TemplateProblem, check_template
from ..sealing import seal
from . import blueprint
from .auth import audit
from .errors import conflict, invalid, not_found
from .representations import profile_json
from .validation import MAX_TEXT, Field, check_fields, json_body, query_args, string_list, string_map, variable_map

NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._- ")
TEMPLATES = {"bootstrap_template": "bootstrap template", "config_template": "configuration template",
             "post_template": "post-PnP template"}


def _name_problem(name: str) -> str | None:
    if not name.strip() or not set(name) <= NAME_CHARS or name != name.strip():
        return "a profile name uses letters, digits, '.', '_', '-' and inner spaces"
    return None


def _apply_to_problem(value: str) -> str | None:
    return None if value in ("running", "startup") else "must be 'running' or 'startup'"


def _pid_problem(value: str) -> str | None:
    return pid_pattern_problem(value)


SPEC: dict[str, Field] = {
    "name": Field((str,), 255, _name_problem),
    "match_serials": Field((list,), check=string_list(10000, 255)),
    "match_pid": Field((str,), 255, _pid_problem),
    "is_default": Field((bool,)),
    "bootstrap_template": Field((str,), MAX_TEXT),
    "config_template": Field((str,), MAX_TEXT),
    "post_template": Field((str,), MAX_TEXT),
    "image": Field((str,), 255, nullable=True),
    "reload_after_install": Field((bool,)),
    "apply_to": Field((str,), 16, _apply_to_problem),
    "variables": Field((dict,), check=variable_map),
    "credentials": Field((dict,), check=string_map),
}
DEFAULTS: dict[str, Any] = {
    "match_serials": [], "match_pid": "", "is_default": False, "bootstrap_template": "", "config_template": "",
    "post_template": "", "image": None, "reload_after_install": True, "apply_to": "running", "variables": {},
    "credentials": {},
}


def _profile(name: str) -> Profile:
    profile = db.session.scalar(select(Profile).where(Profile.name == name))
    if profile is None:
        raise not_found(f"profile {name!r}")
    return profile


def _apply(profile: Profile, data: dict[str, Any]) -> None:
    """Set validated fields on ``profile``, checking what needs the database or the other fields."""
    if "name" in data and data["name"] != profile.name:
        if db.session.scalar(select(Profile.id).where(Profile.name == data["name"])) is not None:
            raise conflict(f"a profile named {data['name']!r} already exists")
    if data.get("is_default"):
        other = db.session.scalar(select(Profile).where(Profile.is_default.is_(True), Profile.id != profile.id))
        if other is not None:
            raise conflict(f"profile {other.name!r} is already the default profile; unset it first")
    for key, value in data.items():
        if key == "image":
            image = None
            if value is not None:
                image = db.session.scalar(select(Image).where(Image.name == value))
                if image is None:
                    raise invalid(f"field 'image': no image named {value!r} in the repository", fields=["image"])
            profile.image = image
        elif key == "credentials":
            profile.credentials = seal(current_settings(), value)  # never stored in the clear
        else:
            setattr(profile, key, value)
    # Templates are checked with the variables they will have, so a typo shows now, not at the first device.
    sample = {"serial": "", "pid": "", "hostname": "", "address": "", **(profile.variables or {})}
    for attribute, label in TEMPLATES.items():
        try:
            check_template(getattr(profile, attribute) or "", sample, label=label)
        except TemplateProblem as exc:
            raise invalid(f"field {attribute!r}: {exc}", fields=[attribute]) from exc


@blueprint.get("/profiles")
def list_profiles() -> Response:
    query_args(())
    profiles = list(db.session.scalars(select(Profile).order_by(Profile.name)))
    return jsonify({"items": [profile_json(p) for p in profiles], "total": len(profiles)})


@blueprint.post("/profiles")
def create_profile() -> tuple[Response, int]:
    data = check_fields(json_body(), SPEC, required=("name",))
    if db.session.scalar(select(Profile.id).where(Profile.name == data["name"])) is not None:
        raise conflict(f"a profile named {data['name']!r} already exists")
    profile = Profile(name=data["name"], **{k: v for k, v in DEFAULTS.items() if k != "image"})
    db.session.add(profile)
    _apply(profile, data)
    audit("profile.create", profile.name, fields=sorted(data))
    db.session.commit()
    return jsonify(profile_json(profile)), 201


@blueprint.get("/profiles/<name>")
def get_profile(name: str) -> Response:
    return jsonify(profile_json(_profile(name)))


@blueprint.put("/profiles/<name>")
def replace_profile(name: str) -> Response:
    """Replace every field; fields left out get their defaults (credentials too)."""
    profile = _profile(name)
    data = check_fields(json_body(), SPEC)
    _apply(profile, {**DEFAULTS, **data})
    audit("profile.replace", name, fields=sorted(data))
    db.session.commit()
    return jsonify(profile_json(profile))


@blueprint.patch("/profiles/<name>")
def update_profile(name: str) -> Response:
    """Change only the fields given."""
    profile = _profile(name)
    data = check_fields(json_body(), SPEC)
    _apply(profile, data)
    audit("profile.update", name, fields=sorted(data))
    db.session.commit()
    return jsonify(profile_json(profile))


@blueprint.delete("/profiles/<name>")
def delete_profile(name: str) -> tuple[str, int]:
    profile = _profile(name)
    running = db.session.scalar(select(func.count()).select_from(ProvisioningJob).where(
        ProvisioningJob.profile_id == profile.id, ProvisioningJob.state == "running"))
    if running:
        raise conflict(f"profile {name!r} is provisioning {running} device(s); cancel those jobs first")
    db.session.delete(profile)
    audit("profile.delete", name)
    db.session.commit()
    return "", 204

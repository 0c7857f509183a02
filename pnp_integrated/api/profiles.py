"""``/api/v1/profiles``: what devices receive, and which devices a profile claims."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select

from ..context import current_settings
from ..models import Image, Profile, ProvisioningJob, db
from ..provisioning.templates import TemplateProblem, check_template
from ..sealing import seal
from . import blueprint, schemas
from .auth import audit
from .contract import operation
from .errors import conflict, invalid, not_found

# What a profile has where a client left a field out (PUT), as its schema says.
DEFAULTS: dict[str, Any] = schemas.ProfileChange().model_dump(exclude={"name"})
# What the schema cannot say about a profile: the server checks these against the repository and the template engine.
REFUSED = ("'image' names no stored image; a template ('bootstrap_template', 'config_template', 'post_template') "
           "does not compile or fails with the profile's variables; 'match_pid' is 're:' and a regular expression "
           "that does not compile")


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
    for attribute, label in schemas.TEMPLATES.items():
        try:
            check_template(getattr(profile, attribute) or "", sample, label=label)
        except TemplateProblem as exc:
            raise invalid(f"field {attribute!r}: {exc}", fields=[attribute]) from exc


@blueprint.get("/profiles")
@operation(answer=schemas.ProfilePage)
def list_profiles(query: schemas.NoQuery) -> schemas.ProfilePage:
    """List profiles"""
    profiles = list(db.session.scalars(select(Profile).order_by(Profile.name)))
    return schemas.ProfilePage.model_validate({"items": profiles, "total": len(profiles)})


@blueprint.post("/profiles")
@operation(201, schemas.Profile, errors=(409, 422), refused=REFUSED)
def create_profile(json: schemas.ProfileCreate) -> tuple[schemas.Profile, int]:
    """Create a profile"""
    data = json.model_dump(exclude_unset=True)
    if db.session.scalar(select(Profile.id).where(Profile.name == data["name"])) is not None:
        raise conflict(f"a profile named {data['name']!r} already exists")
    profile = Profile(name=data["name"], **{k: v for k, v in DEFAULTS.items() if k != "image"})
    db.session.add(profile)
    _apply(profile, data)
    audit("profile.create", profile.name, fields=sorted(data))
    db.session.commit()
    return schemas.Profile.model_validate(profile), 201


@blueprint.get("/profiles/<name>")
@operation(answer=schemas.Profile, errors=(404,), path=schemas.ProfilePath)
def get_profile(name: str) -> schemas.Profile:
    """Get a profile"""
    return schemas.Profile.model_validate(_profile(name))


@blueprint.put("/profiles/<name>")
@operation(answer=schemas.Profile, errors=(404, 409, 422), refused=REFUSED, path=schemas.ProfilePath)
def replace_profile(name: str, json: schemas.ProfileChange) -> schemas.Profile:
    """Replace a profile (missing fields get defaults)

    Every field is replaced; the fields left out get their defaults (credentials too).
    """
    profile = _profile(name)
    data = json.model_dump(exclude_unset=True)
    _apply(profile, {**DEFAULTS, **data})
    audit("profile.replace", name, fields=sorted(data))
    db.session.commit()
    return schemas.Profile.model_validate(profile)


@blueprint.patch("/profiles/<name>")
@operation(answer=schemas.Profile, errors=(404, 409, 422), refused=REFUSED, path=schemas.ProfilePath)
def update_profile(name: str, json: schemas.ProfileChange) -> schemas.Profile:
    """Change some fields of a profile"""
    profile = _profile(name)
    data = json.model_dump(exclude_unset=True)
    _apply(profile, data)
    audit("profile.update", name, fields=sorted(data))
    db.session.commit()
    return schemas.Profile.model_validate(profile)


@blueprint.delete("/profiles/<name>")
@operation(204, errors=(404, 409), path=schemas.ProfilePath)
def delete_profile(name: str) -> tuple[str, int]:
    """Delete a profile (not while it provisions devices)"""
    profile = _profile(name)
    running = db.session.scalar(select(func.count()).select_from(ProvisioningJob).where(
        ProvisioningJob.profile_id == profile.id, ProvisioningJob.state == "running"))
    if running:
        raise conflict(f"profile {name!r} is provisioning {running} device(s); cancel those jobs first")
    db.session.delete(profile)
    audit("profile.delete", name)
    db.session.commit()
    return "", 204

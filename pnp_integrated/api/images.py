"""``/api/v1/images``: the software image repository."""

from __future__ import annotations

from typing import Any, BinaryIO

from flask import current_app, request
from sqlalchemy import select

from ..models import Image, Profile, db
from ..provisioning.images import ImageProblem, delete_image, store_image
from . import blueprint, schemas
from .auth import current_token
from .contract import operation
from .errors import ApiError, conflict, invalid, not_found
from .reading import read, read_query

# Images are far larger than any other request body; this limit is the images route's own.
DEFAULT_MAX_IMAGE_BYTES = 4 * 1024**3
# Parameters are per operation, not per body type: this pairing is said in words.
REFUSED = "a multipart body with any query parameter; a raw body without ?name="
# The raw body beside the multipart one (spectree documents the form).
RAW_BODY = {"requestBody": {"content": {"application/octet-stream": {"schema": {
    "type": "string", "format": "binary", "minLength": 1}}}}}


def max_image_bytes() -> int:
    return int(current_app.config.get("PNP_API_IMAGE_MAX_BYTES", DEFAULT_MAX_IMAGE_BYTES))


def _image(name: str) -> Image:
    image = db.session.scalar(select(Image).where(Image.name == name))
    if image is None:
        raise not_found(f"image {name!r}")
    return image


@blueprint.get("/images")
@operation(answer=schemas.ImagePage)
def list_images(query: schemas.NoQuery) -> schemas.ImagePage:
    """List images"""
    images = list(db.session.scalars(select(Image).order_by(Image.name)))
    return schemas.ImagePage.model_validate({"items": images, "total": len(images)})


@blueprint.get("/images/<name>")
@operation(answer=schemas.Image, errors=(404,), path=schemas.ImagePath)
def get_image(name: str) -> schemas.Image:
    """Get an image"""
    return schemas.Image.model_validate(_image(name))


def _upload_form() -> schemas.ImageUpload:
    """The multipart body's parts read into their schema (a part whose name the parser could not read comes back
    under None)."""
    parts: dict[str, Any] = {(str(k) if k is not None else "(unnamed part)"): v for k, v in request.form.items()}
    parts.update({(str(k) if k is not None else "(unnamed part)"): v for k, v in request.files.items()})
    return read(schemas.ImageUpload, parts)


@blueprint.post("/images")
@operation(201, schemas.Image, errors=(409, 413, 422), refused=REFUSED, query=schemas.ImageUploadQuery,
           form=schemas.ImageUpload, extra=RAW_BODY)
def upload_image() -> tuple[schemas.Image, int]:
    """Upload an image: multipart (file, name, version) or a raw body with ?name=&version="""
    limit = max_image_bytes()
    if request.content_length is not None and request.content_length > limit:
        raise ApiError(413, "payload_too_large", f"the image is larger than the limit of {limit} bytes")
    request.max_content_length = limit + 64 * 1024  # room for the multipart envelope
    stream: BinaryIO
    if request.mimetype == "multipart/form-data":
        read_query(schemas.NoQuery)
        form = _upload_form()
        name = form.name or form.file.filename or ""
        version = form.version
        stream = form.file.stream
    else:
        query = read_query(schemas.ImageUploadQuery)
        if query.name is None:
            raise invalid("a raw upload names the image: POST /api/v1/images?name=<file name>", fields=["name"])
        name, version = query.name, query.version
        stream = request.stream
    if db.session.scalar(select(Image.id).where(Image.name == name)) is not None:
        raise conflict(f"an image named {name!r} already exists")
    try:
        image = store_image(stream, name, version, actor=current_token().name, max_bytes=limit)
    except ImageProblem as exc:
        code = {409: "conflict", 413: "payload_too_large"}.get(exc.status, "validation_error")
        raise ApiError(exc.status, code, str(exc)) from exc
    return schemas.Image.model_validate(image), 201


@blueprint.delete("/images/<name>")
@operation(204, errors=(404, 409), path=schemas.ImagePath)
def remove_image(name: str) -> tuple[str, int]:
    """Delete an image no profile uses"""
    image = _image(name)
    users = list(db.session.scalars(select(Profile.name).where(Profile.image_id == image.id)))
    if users:
        raise conflict(f"image {name!r} is used by profile(s) {', '.join(sorted(users))}")
    delete_image(image, actor=current_token().name)
    return "", 204

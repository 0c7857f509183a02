"""``/api/v1/images``: the software image repository."""

from __future__ import annotations

from typing import BinaryIO

from flask import Response, current_app, jsonify, request
from sqlalchemy import select

from ..models import Image, Profile, db
from ..provisioning.images import ImageProblem, delete_image, store_image
from . import blueprint
from .auth import current_token
from .errors import ApiError, conflict, invalid, not_found
from .representations import image_json
from .validation import query_args

# Images are far larger than any other request body; this limit is the images route's own.
DEFAULT_MAX_IMAGE_BYTES = 4 * 1024**3
UPLOAD_FIELDS = ("name", "version")


def max_image_bytes() -> int:
    return int(current_app.config.get("PNP_API_IMAGE_MAX_BYTES", DEFAULT_MAX_IMAGE_BYTES))


def _image(name: str) -> Image:
    image = db.session.scalar(select(Image).where(Image.name == name))
    if image is None:
        raise not_found(f"image {name!r}")
    return image


@blueprint.get("/images")
def list_images() -> Response:
    query_args(())
    images = list(db.session.scalars(select(Image).order_by(Image.name)))
    return jsonify({"items": [image_json(i) for i in images], "total": len(images)})


@blueprint.get("/images/<name>")
def get_image(name: str) -> Response:
    return jsonify(image_json(_image(name)))


@blueprint.post("/images")
def upload_image() -> tuple[Response, int]:
    """Multipart (a ``file`` part, optional ``name`` and ``version`` fields) or a raw body (``?name=&version=``)."""
    limit = max_image_bytes()
    if request.content_length is not None and request.content_length > limit:
        raise ApiError(413, "payload_too_large", f"the image is larger than the limit of {limit} bytes")
    request.max_content_length = limit + 64 * 1024  # room for the multipart envelope
    stream: BinaryIO
    if request.mimetype == "multipart/form-data":
        query_args(())
        # A part whose name the parser could not read comes back under None.
        unknown = sorted(str(k) if k is not None else "(unnamed part)"
                         for k in (set(request.form) - set(UPLOAD_FIELDS)) | (set(request.files) - {"file"}))
        if unknown:
            raise invalid(f"unknown field(s): {', '.join(unknown)}", fields=unknown)
        upload = request.files.get("file")
        if upload is None:
            raise invalid("missing field(s): file", fields=["file"])
        name = request.form.get("name") or upload.filename or ""
        version = request.form.get("version", "")
        stream = upload.stream
    else:
        args = query_args(UPLOAD_FIELDS)
        if "name" not in args:
            raise invalid("a raw upload names the image: POST /api/v1/images?name=<file name>", fields=["name"])
        name, version = args["name"], args.get("version", "")
        stream = request.stream
    if db.session.scalar(select(Image.id).where(Image.name == name)) is not None:
        raise conflict(f"an image named {name!r} already exists")
    try:
        image = store_image(stream, name, version, actor=current_token().name, max_bytes=limit)
    except ImageProblem as exc:
        code = {409: "conflict", 413: "payload_too_large"}.get(exc.status, "validation_error")
        raise ApiError(exc.status, code, str(exc)) from exc
    return jsonify(image_json(image)), 201


@blueprint.delete("/images/<name>")
def remove_image(name: str) -> tuple[str, int]:
    image = _image(name)
    users = list(db.session.scalars(select(Profile.name).where(Profile.image_id == image.id)))
    if users:
        raise conflict(f"image {name!r} is used by profile(s) {', '.join(sorted(users))}")
    delete_image(image, actor=current_token().name)
    return "", 204

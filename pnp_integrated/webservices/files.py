"""Image and Resource web services: files under the data directory, with Range, HEAD and conditional requests.

``/images/<name>`` serves ``settings.images_dir``; its ETag is the image's MD5 (from the repository row, computed when
the image was added), so a device or a proxy can check the file it holds. ``/resources/<path>`` serves
``settings.resources_dir``. A path never leaves its root: ``..`` segments are refused and symbolic links are resolved
before the check, so a link pointing outside is a 404 like a missing file.
"""

from __future__ import annotations

import logging
from pathlib import Path

from flask import Blueprint, Response, abort, send_file
from sqlalchemy import select

from ..context import current_settings
from ..models import Image, db
from ..provisioning.images import ImageUnavailable, cached_image, file_md5

blueprint = Blueprint("file_services", __name__)
log = logging.getLogger(__name__)

MAX_PATH = 1024


def confined(root: Path, relative: str) -> Path | None:
    """The regular file ``relative`` names inside ``root``, or None when it is missing or would leave the root.

    Hidden names (``.x``) are refused too: the image repository writes half-copied files under them.
    """
    if not relative or len(relative) > MAX_PATH or "\x00" in relative or "\\" in relative:
        return None
    parts = relative.split("/")
    if any(part in ("", ".", "..") or part.startswith(".") for part in parts):
        return None
    try:
        base = root.resolve(strict=True)
        candidate = (base / relative).resolve(strict=True)
    except (OSError, RuntimeError):  # missing, unreadable, or a symlink loop
        return None
    if not candidate.is_relative_to(base) or not candidate.is_file():
        return None
    return candidate


def _image_etag(row: Image | None, path: Path) -> str:
    if row is not None and row.md5 and row.size == path.stat().st_size:
        return str(row.md5)
    return file_md5(path)  # a file dropped into the directory by hand: hash it (rare; repository rows are the norm)


def _image_file(name: str, row: Image | None) -> tuple[Path, str]:
    """The file to serve for image ``name`` and its ETag: the repository's file, or (added on the other node of a
    pair) this node's copy from the shared database; 404 without either, 503 for a damaged copy."""
    path = confined(current_settings().images_dir, name)
    if path is not None:
        return path, _image_etag(row, path)
    try:
        path = cached_image(row) if row is not None else None
    except ImageUnavailable as exc:
        log.error("image %s cannot be served: %s", name, exc)
        abort(503)
    if path is None or row is None:
        abort(404)
    return path, row.md5


@blueprint.route("/images/<name>", methods=["GET", "HEAD"])
def image(name: str) -> Response:
    """An image file; ETag is its MD5; Range, If-None-Match and If-Range are honoured."""
    path, etag = _image_file(name, db.session.scalar(select(Image).where(Image.filename == name)))
    response = send_file(path, mimetype="application/octet-stream", conditional=True, etag=etag, max_age=0)
    response.headers["Accept-Ranges"] = "bytes"
    return response


@blueprint.route("/resources/<path:relative>", methods=["GET", "HEAD"], merge_slashes=False)
def resource(relative: str) -> Response:
    """A resource file (script, banner, certificate) confined to the resources directory."""
    path = confined(current_settings().resources_dir, relative)
    if path is None:
        abort(404)
    response = send_file(path, conditional=True, max_age=0)
    response.headers["Accept-Ranges"] = "bytes"
    return response

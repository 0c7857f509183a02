"""The software image repository: files in ``<data_dir>/images`` with a row each (name, version, MD5, size).

MD5 and size are computed once, while the file is copied in, so serving an image never re-reads it to describe it.
A file is written under a temporary name and renamed into place, so a half-copied image is never served.
"""

from __future__ import annotations

import hashlib
import os
import re
import uuid
from pathlib import Path
from typing import BinaryIO

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from ..context import current_settings
from ..models import AuditEntry, Image, db

NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,254}")
CHUNK = 1024 * 1024
# IOS-XE style (16.09.05, 17.3.4a) or classic IOS (15.2(7)E4) version inside a file name.
_VERSION_IN_NAME = re.compile(r"(?<![A-Za-z0-9])(\d+\.\d+\.\d+[a-zA-Z]?\d*|\d+\.\d+\(\d+\)[A-Za-z]*\d*)")


class ImageProblem(ValueError):
    """The image cannot be added; ``status`` is the HTTP status the API answers with."""

    status = 422


class DuplicateImage(ImageProblem):
    status = 409


class ImageTooLarge(ImageProblem):
    status = 413


def name_problem(name: str) -> str | None:
    """Why ``name`` cannot name an image file, or None."""
    if not NAME_PATTERN.fullmatch(name or ""):
        return ("an image name is 1 to 255 characters: letters, digits, '.', '_', '+', '-', "
                "starting with a letter or digit")
    return None


def guess_version(filename: str) -> str:
    """The version embedded in an image file name (``...16.09.05.SPA.bin`` -> ``16.09.05``), or ``""``."""
    found = _VERSION_IN_NAME.search(filename)
    return found.group(1) if found else ""


def image_path(image: Image) -> Path:
    """Where the image's file lives."""
    return current_settings().images_dir / image.filename


def store_image(stream: BinaryIO, name: str, version: str, actor: str, max_bytes: int | None = None) -> Image:
    """Copy ``stream`` into the repository as ``name`` and commit its row with an audit entry.

    Raises :class:`ImageProblem` (bad name), :class:`DuplicateImage`, :class:`ImageTooLarge`.
    """
    problem = name_problem(name)
    if problem:
        raise ImageProblem(problem)
    if len(version) > 100:
        raise ImageProblem("an image version is at most 100 characters")
    directory = current_settings().images_dir
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / name
    if db.session.scalar(select(Image.id).where(Image.name == name)) is not None or target.exists():
        raise DuplicateImage(f"an image named {name!r} already exists")
    partial = directory / f".{name}.{uuid.uuid4().hex}.part"
    digest = hashlib.md5(usedforsecurity=False)
    size = 0
    try:
        with partial.open("wb") as out:
            while chunk := stream.read(CHUNK):
                size += len(chunk)
                if max_bytes is not None and size > max_bytes:
                    raise ImageTooLarge(f"the image is larger than the limit of {max_bytes} bytes")
                digest.update(chunk)
                out.write(chunk)
        if size == 0:
            raise ImageProblem("the image file is empty")
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
    image = Image(name=name, filename=name, version=version or guess_version(name), md5=digest.hexdigest(), size=size)
    db.session.add(image)
    db.session.add(AuditEntry(actor=actor, action="image.add", target=name,
                              detail={"version": image.version, "md5": image.md5, "size": size}))
    try:
        db.session.commit()
    except IntegrityError as exc:
        db.session.rollback()
        target.unlink(missing_ok=True)
        raise DuplicateImage(f"an image named {name!r} already exists") from exc
    return image


def delete_image(image: Image, actor: str) -> None:
    """Remove an image row and its file; the caller has checked no profile uses it."""
    path = image_path(image)
    db.session.add(AuditEntry(actor=actor, action="image.delete", target=image.name, detail={}))
    db.session.delete(image)
    db.session.commit()
    path.unlink(missing_ok=True)

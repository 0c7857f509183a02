"""The software image repository: files in ``<data_dir>/images`` with a row each (name, version, MD5, size).

MD5 and size are computed once, while the file is copied in, so serving an image never re-reads it to describe it.
A file is written under a temporary name and renamed into place, so a half-copied image is never served.

On PostgreSQL, the database HA nodes share, the content is also kept in the database (``image_chunks``, 1 MiB
each, written in the transaction that adds the image): the node that did not receive the upload, the one ACTIVE
after a failover, writes its own copy from them on the first download (``<data_dir>/image-cache``, checked against
the MD5) and serves that. SQLite, a single node's database, keeps files only.
"""

from __future__ import annotations

import hashlib
import os
import re
import uuid
from pathlib import Path
from typing import BinaryIO

from sqlalchemy import delete, exists, insert, select
from sqlalchemy.exc import IntegrityError

from ..context import current_settings
from ..models import AuditEntry, Image, ImageChunk, db

NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,254}")
CHUNK = 1024 * 1024
CHUNKS_PER_STATEMENT = 8  # an INSERT carries at most 8 MiB
CACHE_DIR = "image-cache"
MAX_VERSION = 100  # characters of an image's version
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
    if len(version) > MAX_VERSION:
        raise ImageProblem(f"an image version is at most {MAX_VERSION} characters")
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
        if images_in_database():
            db.session.flush()  # the image's id, for its chunks
            _store_chunks(image.id, target)
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
    db.session.execute(delete(ImageChunk).where(ImageChunk.image_id == image.id))
    db.session.delete(image)
    db.session.commit()
    path.unlink(missing_ok=True)


# ---- the content in the shared database ----------------------------------------------------------------------------
def images_in_database() -> bool:
    """Whether image content is kept in the database too: on PostgreSQL, the database HA nodes share."""
    return bool(db.engine.dialect.name == "postgresql")


def _store_chunks(image_id: int, path: Path) -> None:
    """The file's content as the image's chunks, in the caller's transaction.

    Read back from the file once it is complete, not written while the upload arrives: a slow upload then holds no
    database transaction open, and a refused one leaves nothing to undo.
    """
    batch: list[dict[str, object]] = []
    with path.open("rb") as source:
        seq = 0
        while chunk := source.read(CHUNK):
            batch.append({"image_id": image_id, "seq": seq, "data": chunk})
            seq += 1
            if len(batch) == CHUNKS_PER_STATEMENT:
                db.session.execute(insert(ImageChunk), batch)
                batch = []
    if batch:
        db.session.execute(insert(ImageChunk), batch)


def store_missing_image_chunks() -> int:
    """Give the database the content of every image whose file is here and whose chunks are not (images added
    before the content was kept there, or on a single node that became one of a pair); how many were stored."""
    if not images_in_database():
        return 0
    missing = db.session.scalars(select(Image).where(~exists().where(ImageChunk.image_id == Image.id))).all()
    stored = 0
    for image in missing:
        path = image_path(image)
        if path.is_file() and path.stat().st_size == image.size and file_md5(path) == image.md5:
            _store_chunks(image.id, path)
            db.session.commit()
            stored += 1
    return stored


def file_md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


class ImageUnavailable(Exception):
    """The database's copy of an image does not match its row (incomplete or damaged)."""


def cached_image(image: Image) -> Path | None:
    """This node's copy of an image added on another node, written from the database's chunks on first use and
    checked against the row's MD5; ``None`` when the database holds no content for it."""
    directory = current_settings().data_dir / CACHE_DIR
    target = directory / f"{image.md5}-{image.filename}"
    if target.is_file() and target.stat().st_size == image.size:
        return target
    if db.session.scalar(select(exists().where(ImageChunk.image_id == image.id))) is not True:
        return None
    directory.mkdir(parents=True, exist_ok=True)
    partial = directory / f".{image.filename}.{uuid.uuid4().hex}.part"
    digest = hashlib.md5(usedforsecurity=False)
    try:
        with partial.open("wb") as out:
            rows = db.session.execute(select(ImageChunk.data).where(ImageChunk.image_id == image.id)
                                      .order_by(ImageChunk.seq).execution_options(yield_per=4))
            for (data,) in rows:
                digest.update(data)
                out.write(data)
        if digest.hexdigest() != image.md5 or partial.stat().st_size != image.size:
            raise ImageUnavailable(f"the database's copy of {image.name} does not match its MD5 {image.md5}")
        os.replace(partial, target)  # two requests writing at once replace it with the same bytes
    finally:
        partial.unlink(missing_ok=True)
    return target

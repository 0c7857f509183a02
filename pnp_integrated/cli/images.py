"""``pnpp image`` and ``pnpp token``: the image repository and REST API tokens from the command line."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import TYPE_CHECKING

import click
from sqlalchemy import select

from .progress import Progress, byte_progress

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer


def _app():  # type: ignore[no-untyped-def]
    from .common import app_or_exit

    return app_or_exit()


class CountedReader(io.RawIOBase):
    """A binary file whose reads advance a :class:`Progress` by the bytes they return."""

    def __init__(self, raw: io.BufferedIOBase, progress: Progress) -> None:
        super().__init__()
        self._raw = raw
        self._progress = progress

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer) -> int:
        count = self._raw.readinto(buffer)
        self._progress.advance(count)
        return count


@click.group("image")
def image() -> None:
    """Software images served to devices."""


@image.command("add")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--version", "version", default="", help="software version (default: guessed from the file name)")
@click.option("--name", default=None, help="name in the repository (default: the file name)")
def image_add(file: Path, version: str, name: str | None) -> None:
    """Copy FILE into the repository, computing its MD5 and size once."""
    from ..provisioning.images import ImageProblem, store_image
    from .common import fail

    app = _app()
    with app.app_context(), file.open("rb") as stream:
        progress = byte_progress(os.fstat(stream.fileno()).st_size, f"hashing and copying {file.name}")
        try:
            with progress:
                counted = io.BufferedReader(CountedReader(stream, progress))
                added = store_image(counted, name or file.name, version, actor="cli")
        except ImageProblem as exc:
            fail(str(exc))
        click.echo(f"{added.name}  version {added.version or '(unknown)'}  {added.size} bytes  md5 {added.md5}")
        if not added.version:
            click.echo("warning: no version given or found in the file name; devices will always be upgraded",
                       err=True)


@image.command("list")
def image_list() -> None:
    """List the images in the repository."""
    from ..models import Image, db

    app = _app()
    with app.app_context():
        for row in db.session.scalars(select(Image).order_by(Image.name)):
            click.echo(f"{row.name}  version {row.version or '(unknown)'}  {row.size} bytes  md5 {row.md5}")


@click.group("token")
def token() -> None:
    """REST API bearer tokens."""


@token.command("create")
@click.option("--role", type=click.Choice(["admin", "read"]), required=True, help="admin may change, read may look")
@click.option("--name", default=None, help="who uses it (recorded as the actor of every change)")
def token_create(role: str, name: str | None) -> None:
    """Print a new bearer token; it is shown only this once."""
    from ..api.tokens import issue_token
    from .common import fail

    app = _app()
    with app.app_context():
        try:
            click.echo(issue_token(name or f"{role}-token", role))
        except ValueError as exc:
            fail(str(exc))


@token.command("revoke")
@click.argument("name")
def token_revoke(name: str) -> None:
    """Revoke every token called NAME."""
    from ..api.tokens import revoke_token
    from .common import fail

    app = _app()
    with app.app_context():
        count = revoke_token(name)
    if not count:
        fail(f"no live token named {name!r}")
    click.echo(f"revoked {count} token(s) named {name}")

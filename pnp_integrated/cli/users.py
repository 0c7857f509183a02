"""``pnpp user``: the operator console's users (create, list, delete, a new password).

A password is typed twice, hidden, or read from ``--password-file`` (``-`` for stdin), never from the command line,
where every process on the host can read it.
"""

from __future__ import annotations

import sys
from typing import IO

import click

from .common import app_or_exit, fail


def _password(source: IO[str] | None) -> str:
    if source is None:
        if not sys.stdin.isatty():
            fail("no terminal to type the password on: give it with --password-file FILE (or - for stdin)")
        return str(click.prompt("Password", hide_input=True, confirmation_prompt="Repeat the password"))
    where = "stdin" if source.name == "<stdin>" else source.name
    lines = source.read().splitlines()
    if not lines or not lines[0]:
        fail(f"--password-file: {where} holds no password on its first line")
    return lines[0]


_PASSWORD_FILE = click.option("--password-file", type=click.File("r"), default=None,
                              help="read the password from the first line of this file (- for stdin)")


@click.group("user")
def user() -> None:
    """Users of the operator console at / (roles as API tokens: admin may change, read may look)."""


@user.command("create")
@click.argument("name")
@click.option("--role", type=click.Choice(["admin", "read"]), required=True, help="admin may change, read may look")
@_PASSWORD_FILE
def user_create(name: str, role: str, password_file: IO[str] | None) -> None:
    """Add the user NAME; the password is asked twice (or read from --password-file)."""
    from ..console.users import UserProblem, create_user, find_user

    app = app_or_exit()
    with app.app_context():
        if find_user(name) is not None:  # before asking for a password that would be thrown away
            fail(f"a user named {name!r} already exists")
        try:
            create_user(name, role, _password(password_file))
        except UserProblem as exc:
            fail(str(exc))
    click.echo(f"user {name} created with the {role} role; sign in at the node's / page")


@user.command("password")
@click.argument("name")
@_PASSWORD_FILE
def user_password(name: str, password_file: IO[str] | None) -> None:
    """Give NAME a new password (their sessions end, their failed sign-ins are forgotten)."""
    from ..console.users import UserProblem, find_user, set_password

    app = app_or_exit()
    with app.app_context():
        if find_user(name) is None:
            fail(f"no user named {name!r}")
        try:
            set_password(name, _password(password_file))
        except UserProblem as exc:
            fail(str(exc))
    click.echo(f"new password set for {name}; their sessions are ended")


@user.command("list")
def user_list() -> None:
    """The users, their roles, when they were created and last signed in."""
    from ..console.users import list_users

    app = app_or_exit()
    with app.app_context():
        rows = list_users()
    for row in rows:
        click.echo(f"{row.name}  {row.role}  created {row.created_at}  last sign-in {row.last_sign_in_at}")


@user.command("delete")
@click.argument("name")
def user_delete(name: str) -> None:
    """Remove NAME; their sessions end at once."""
    from ..console.users import delete_user

    app = app_or_exit()
    with app.app_context():
        if not delete_user(name):
            fail(f"no user named {name!r}")
    click.echo(f"user {name} deleted")

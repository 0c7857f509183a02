"""``pnpp user``: the console's users from the command line; a password is typed twice on a terminal or read from a
file, never taken from the command line."""

from __future__ import annotations

import os
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from flask import Flask

from pnp_integrated import create_app
from pnp_integrated.cli.users import user
from pnp_integrated.console.users import check_password, find_user
from pnp_integrated.devsim.node import PNP_ENV_PREFIX, node_environment, node_settings
from pnp_integrated.models import db

PASSWORD = "correct horse battery staple"


@pytest.fixture
def node(tmp_path: Path) -> tuple[Flask, dict[str, str]]:
    """A migrated data dir: the app to look into it, and the PNP_* variables that name it for the command."""
    from flask_migrate import upgrade

    settings = node_settings(tmp_path / "node")
    with create_app({**settings, "TESTING": True}, check_schema=False).app_context():
        upgrade()
    env = {k: v for k, v in node_environment(settings).items() if k.startswith(PNP_ENV_PREFIX)}
    return create_app({**settings, "TESTING": True}), env


def run(env: dict[str, str], *args: str, stdin: str | None = None) -> Result:
    return CliRunner().invoke(user, list(args), env=env, input=stdin)


def password_matches(app: Flask, name: str, password: str) -> bool:
    with app.app_context():
        found = find_user(name)
        stored = found.password_hash if found else ""
        db.session.remove()
    return bool(stored) and check_password(password, stored)


def test_create_list_new_password_and_delete(node: tuple[Flask, dict[str, str]], tmp_path: Path) -> None:
    app, env = node
    secret = tmp_path / "alice.pw"
    secret.write_text(PASSWORD + "\n")
    created = run(env, "create", "alice", "--role", "admin", "--password-file", str(secret))
    assert created.exit_code == 0, created.output
    assert "user alice created with the admin role" in created.output and PASSWORD not in created.output
    assert password_matches(app, "alice", PASSWORD)
    assert run(env, "create", "bob", "--role", "read", "--password-file", "-",
               stdin="another long passphrase\n").exit_code == 0
    listed = run(env, "list")
    assert listed.exit_code == 0
    assert [line.split()[:2] for line in listed.output.splitlines()] == [["alice", "admin"], ["bob", "read"]]

    again = run(env, "create", "alice", "--role", "read", "--password-file", str(secret))
    assert again.exit_code == 1 and "already exists" in again.output

    changed = run(env, "password", "alice", "--password-file", "-", stdin="a brand new passphrase\n")
    assert changed.exit_code == 0, changed.output
    assert password_matches(app, "alice", "a brand new passphrase") and not password_matches(app, "alice", PASSWORD)

    assert run(env, "delete", "bob").exit_code == 0
    gone = run(env, "delete", "bob")
    assert gone.exit_code == 1 and "no user named 'bob'" in gone.output
    assert [line.split()[0] for line in run(env, "list").output.splitlines()] == ["alice"]


def test_a_password_is_never_taken_from_the_command_line_nor_weak(node: tuple[Flask, dict[str, str]]) -> None:
    _, env = node
    assert run(env, "create", "carol", "--role", "read", "--password", PASSWORD).exit_code == 2  # no such option
    no_terminal = run(env, "create", "carol", "--role", "read")
    assert no_terminal.exit_code == 1 and "--password-file" in no_terminal.output
    weak = run(env, "create", "carol", "--role", "read", "--password-file", "-", stdin="short\n")
    assert weak.exit_code == 1 and "at least 12 characters" in weak.output
    assert run(env, "create", "carol", "--role", "root", "--password-file", "-", stdin=PASSWORD).exit_code == 2
    assert run(env, "list").output == ""


def _read_until(fd: int, wanted: bytes, timeout: float = 60.0) -> bytes:
    seen = b""
    deadline = time.monotonic() + timeout
    while wanted not in seen:
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            raise AssertionError(f"waited for {wanted!r}, the terminal shows {seen!r}")
        seen += os.read(fd, 1024)
    return seen


def test_on_a_terminal_the_password_is_asked_twice_hidden(node: tuple[Flask, dict[str, str]]) -> None:
    app, env = node
    controller, terminal = os.openpty()
    command = [sys.executable, "-c", "from pnp_integrated.cli.users import user; user()", "create", "dave",
               "--role", "read"]
    process = subprocess.Popen(command, stdin=terminal, stdout=terminal, stderr=terminal,
                               env={**os.environ, **env}, close_fds=True)
    os.close(terminal)
    try:
        _read_until(controller, b"Password:")
        os.write(controller, b"first try at it\n")
        _read_until(controller, b"Repeat the password:")
        os.write(controller, b"not the same one\n")
        shown = _read_until(controller, b"Password:")  # they differ: asked again
        assert b"first try" not in shown and b"not the same" not in shown  # typed hidden
        os.write(controller, (PASSWORD + "\n").encode())
        _read_until(controller, b"Repeat the password:")
        os.write(controller, (PASSWORD + "\n").encode())
        assert b"user dave created" in _read_until(controller, b"created")
        assert process.wait(timeout=60) == 0
    finally:
        process.kill()
        os.close(controller)
    assert password_matches(app, "dave", PASSWORD)

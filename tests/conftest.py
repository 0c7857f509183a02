"""Fixtures shared by every test layer: apps on private data dirs and free ports, and a real PostgreSQL server."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from pnp_integrated import create_app
from pnp_integrated.devsim.node import PNP_ENV_PREFIX, free_port_block, node_settings


@pytest.fixture(autouse=True)
def _clean_pnp_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests never inherit the developer's PNP_* settings."""
    for name in list(os.environ):
        if name.startswith(PNP_ENV_PREFIX):
            monkeypatch.delenv(name)


def upgrade_database(app: Flask) -> None:
    from flask_migrate import upgrade

    with app.app_context():
        upgrade()


@pytest.fixture
def app_factory(tmp_path: Path) -> Callable[..., Flask]:
    """Build an app on a migrated database; keyword arguments override settings (``database_url`` ...)."""

    def make(**overrides: Any) -> Flask:
        data_dir = Path(overrides.pop("data_dir", tmp_path / f"node-{uuid.uuid4().hex[:6]}"))
        settings = node_settings(data_dir, **overrides)
        upgrade_database(create_app({**settings, "TESTING": True}, check_schema=False))
        return create_app({**settings, "TESTING": True})

    return make


@pytest.fixture
def app(app_factory: Callable[..., Flask]) -> Flask:
    return app_factory()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


# ---- PostgreSQL -----------------------------------------------------------------------------------------------------


def _pg_bin(name: str) -> str:
    found = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"))
    if not found:
        raise RuntimeError(f"PostgreSQL's {name} not found: install the Debian package postgresql (make test does)")
    return str(found[-1])


def _as_postgres(*cmd: str) -> subprocess.CompletedProcess[str]:
    # initdb refuses to run as root: every server command runs as the postgres user.
    return subprocess.run(["runuser", "-u", "postgres", "--", *cmd], check=True, capture_output=True, text=True)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """A private PostgreSQL server (own directory, own port, trust auth on loopback); yields its base URL."""
    root = Path(tempfile.mkdtemp(prefix="pnp-pg-"))
    shutil.chown(root, "postgres", "postgres")
    data = root / "data"
    port = free_port_block(1)
    _as_postgres(_pg_bin("initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8")
    _as_postgres(
        _pg_bin("pg_ctl"), "-D", str(data), "-l", str(root / "server.log"), "-w", "-t", "60", "start",
        "-o", f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=300",
    )
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}"
    finally:
        _as_postgres(_pg_bin("pg_ctl"), "-D", str(data), "-m", "immediate", "stop")
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def postgres_url(postgres_server: str) -> Iterator[str]:
    """A fresh, empty database on the private server, dropped after the test."""
    import psycopg

    name = f"pnp_{uuid.uuid4().hex[:10]}"
    admin = postgres_server.replace("postgresql+psycopg", "postgresql") + "/postgres"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield f"{postgres_server}/{name}"
    deadline = time.monotonic() + 10
    with psycopg.connect(admin, autocommit=True) as conn:
        while True:
            try:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
                break
            except psycopg.Error:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

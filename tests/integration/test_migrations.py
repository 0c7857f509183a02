"""Alembic migrations on SQLite and on a real PostgreSQL server, through the API and through ``pnpp db``."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from flask import Flask
from flask_migrate import downgrade, upgrade
from sqlalchemy import inspect, text

from pnp_integrated import create_app
from pnp_integrated.database import SchemaError, schema_revisions
from pnp_integrated.devsim.node import PNPP, node_environment, node_settings
from pnp_integrated.models import db


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database of each supported kind."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'empty.sqlite3'}"
    return str(request.getfixturevalue("postgres_url"))


def unchecked_app(tmp_path: Path, database_url: str) -> Flask:
    return create_app({**node_settings(tmp_path / "data", database_url=database_url), "TESTING": True},
                      check_schema=False)


def tables() -> set[str]:
    return set(inspect(db.engine).get_table_names())


def test_upgrade_creates_every_model_table_and_downgrade_removes_them(tmp_path: Path, database_url: str) -> None:
    app = unchecked_app(tmp_path, database_url)
    with app.app_context():
        model_tables = set(db.metadata.tables)
        assert model_tables, "the models define no table"
        assert tables() == set()
        upgrade()
        current, head = schema_revisions()
        assert current == head
        assert tables() == model_tables | {"alembic_version"}

        downgrade(revision="base")
        assert schema_revisions()[0] is None
        assert tables() - {"alembic_version"} == set()

        upgrade()  # a downgraded database upgrades again, as after a rolled-back release
        assert tables() == model_tables | {"alembic_version"}
        db.session.remove()
        db.engine.dispose()


def test_migrations_match_the_models(tmp_path: Path, database_url: str) -> None:
    app = unchecked_app(tmp_path, database_url)
    with app.app_context():
        upgrade()
        with db.engine.connect() as conn:
            differences = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), db.metadata)
        db.engine.dispose()
    assert differences == [], "a model changed without a migration (flask db migrate)"


def test_app_refuses_an_empty_database_with_the_upgrade_command(tmp_path: Path, database_url: str) -> None:
    database_url = database_url.replace("//postgres@", "//postgres:s3cret@")  # the test server trusts any password
    with pytest.raises(SchemaError) as info:
        create_app(node_settings(tmp_path / "data", database_url=database_url))
    assert "is empty (no tables yet)" in str(info.value)
    assert "run `pnpp db upgrade` first" in str(info.value)
    assert "s3cret" not in str(info.value)


def pnpp(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PNPP, *args], env=env, capture_output=True, text=True, timeout=60)


def test_pnpp_db_upgrade_on_a_fresh_data_dir(tmp_path: Path, database_url: str) -> None:
    env = node_environment(node_settings(tmp_path / "fresh", database_url=database_url))

    before = pnpp(env, "db", "current")
    assert before.returncode == 1
    assert before.stdout.startswith("database: empty\ncode needs: ")
    head = before.stdout.split("code needs: ")[1].strip()

    upgraded = pnpp(env, "db", "upgrade")
    assert upgraded.returncode == 0, upgraded.stderr
    assert f"empty -> {head} (head {head})" in upgraded.stdout

    after = pnpp(env, "db", "current")
    assert (after.returncode, after.stdout) == (0, f"database: {head}\ncode needs: {head}\n")



def test_pnpp_db_upgrade_twice_then_downgrade_to_base(tmp_path: Path) -> None:
    env = node_environment(node_settings(tmp_path / "fresh"))
    assert pnpp(env, "db", "upgrade").returncode == 0
    again = pnpp(env, "db", "upgrade")  # a second upgrade of the same release changes nothing
    assert again.returncode == 0
    head = again.stdout.rsplit("(head ", 1)[1].rstrip(")\n")
    assert f"{head} -> {head}" in again.stdout

    down = pnpp(env, "db", "downgrade", "base")
    assert down.returncode == 0, down.stderr
    assert pnpp(env, "db", "current").stdout.startswith("database: empty\n")


def test_pnpp_db_upgrade_to_an_unknown_revision_fails_clearly(tmp_path: Path) -> None:
    env = node_environment(node_settings(tmp_path / "fresh"))
    result = pnpp(env, "db", "upgrade", "9999")
    assert result.returncode == 1
    assert "Can't locate revision identified by '9999'" in result.stderr
    assert "Traceback" not in result.stderr


def test_app_refuses_a_database_migrated_by_a_newer_release(tmp_path: Path, database_url: str) -> None:
    app = unchecked_app(tmp_path, database_url)
    with app.app_context():
        upgrade()
        with db.engine.begin() as conn:
            conn.execute(text("UPDATE alembic_version SET version_num = 'f00dfeed'"))
        db.engine.dispose()
    with pytest.raises(SchemaError) as info:
        create_app(node_settings(tmp_path / "data", database_url=database_url))
    assert "at revision f00dfeed, which this version of pnp-integrated does not know" in str(info.value)
    assert "a newer release upgraded it" in str(info.value)
    assert "pnpp db upgrade" not in str(info.value)  # upgrading cannot help here


def test_upgrade_from_the_first_release_keeps_every_row(tmp_path: Path, database_url: str) -> None:
    """A database created by the first migration, in use, upgrades to head with nothing lost."""
    app = unchecked_app(tmp_path, database_url)
    with app.app_context():
        upgrade(revision="0001")
        seed = {
            "profiles": "INSERT INTO profiles (name, match_serials, match_pid, is_default, bootstrap_template, "
                        "config_template, post_template, reload_after_install, credentials, apply_to, variables, "
                        "created_at, updated_at) VALUES ('branch', '[\"FOC1\"]', '', true, '', 'hostname r1', '', "
                        "true, '{}', 'running', '{}', '2026-01-01', '2026-01-01')",
            "devices": "INSERT INTO devices (serial, pid, udi, hostname, protocol, address, software_version, state, "
                       "variables, first_seen, last_seen) VALUES ('FOC1', 'ISR4331', '', 'r1', 'pnp', '192.0.2.7', "
                       "'17.3', 'provisioning', '{}', '2026-01-01', '2026-01-01')",
            "device_sessions": "INSERT INTO device_sessions (token, device_key, protocol, node, worker_pid, port, "
                               "tls, address, subjects, connected_at, last_frame_at, close_reason) VALUES ('t1', "
                               "'FOC1', 'cns', 'a', 1, 11013, false, '192.0.2.7', '[]', '2026-01-01', "
                               "'2026-01-01', '')",
            "outbox": "INSERT INTO outbox (event_id, type, payload, created_at, attempts) VALUES "
                      "('e1', 'device.connected', '{\"device\": {\"serial\": \"FOC1\"}}', '2026-01-01', 0)",
        }
        for statement in seed.values():
            db.session.execute(text(statement))
        db.session.commit()
        before = {table: db.session.execute(text(f"SELECT * FROM {table}")).all() for table in seed}

        upgrade()
        assert schema_revisions()[0] == schema_revisions()[1] != "0001"
        after = {table: db.session.execute(text(f"SELECT * FROM {table}")).all() for table in seed}
        assert after == before
        inspector = inspect(db.engine)
        indexes = {ix["name"] for table in ("device_sessions", "outbox") for ix in inspector.get_indexes(table)}
        assert {"ix_device_sessions_live_port", "ix_outbox_unsent"} <= indexes
        db.session.remove()
        db.engine.dispose()


def test_in_ha_only_the_leader_migrates(tmp_path: Path) -> None:
    settings = node_settings(tmp_path / "ha", ha_mode="vip", vip="192.0.2.10", node_name="prime-b")
    env = node_environment(settings)
    assert pnpp(env, "db", "upgrade", "0001").returncode == 0  # no node leads yet: this one may migrate
    app = create_app({**settings, "TESTING": True}, check_schema=False)
    with app.app_context():
        from pnp_integrated.bus import lease

        assert lease.try_hold("prime-a:4242", ttl=300) == 1

    refused = pnpp(env, "db", "upgrade")
    assert refused.returncode == 1
    assert "node prime-a leads this database" in refused.stderr and "only the leader migrates" in refused.stderr
    assert pnpp(env, "db", "current").stdout.startswith("database: 0001\n")

    leader = node_environment({**settings, "node_name": "prime-a"})
    assert pnpp(leader, "db", "upgrade").returncode == 0
    assert pnpp(env, "db", "upgrade").returncode == 0  # already at head: nothing to refuse on the standby


def test_a_migration_longer_than_the_dead_peer_timeout_keeps_its_lock_and_completes(
        tmp_path: Path, postgres_url: str) -> None:
    # Every gateway connection ends a transaction left idle for PNP_DB_DEAD_PEER_TIMEOUT; a migration that takes
    # longer (index builds on a large fleet, a loaded host) must neither lose the lock that serialises the nodes'
    # upgrades nor fail when it lets it go.
    import time

    from pnp_integrated.database import migration_lock

    app = create_app({**node_settings(tmp_path / "data", database_url=postgres_url, db_dead_peer_timeout=0.5),
                      "TESTING": True}, check_schema=False)
    with app.app_context():
        with migration_lock():
            time.sleep(1.5)  # three dead-peer timeouts
            held = db.session.scalar(text("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted"))
            assert held == 1, "the migration lock was lost while the migration ran"
        db.session.remove()
        upgrade()  # and a real upgrade under the same timeout completes
        current, head = schema_revisions()
        assert current == head

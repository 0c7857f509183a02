"""The database under the gateway: engine tuning, cooperative lock waits, the schema check, the migration lock.

SQLite (one node) and PostgreSQL (HA) need different things from a gevent worker. SQLite has one write lock for the
whole file: writers of a node take turns (:class:`SQLiteWriteTurn`) and lock waits yield instead of blocking the
worker inside C. PostgreSQL needs its driver's waits made cooperative and bounds on what a dead peer can cost
(:func:`postgres_connect_args`). Both share the Alembic schema check a node runs at start and the lock that
serialises ``pnpp db upgrade`` across the nodes of one database.
"""

from __future__ import annotations

import fcntl
import os
import random
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import text
from werkzeug.routing import IntegerConverter

from .config import Settings
from .context import gateway_state
from .models import db

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"

class SchemaError(RuntimeError):
    """The database is not at the revision this code needs."""



def cooperative_database_waits() -> None:
    """In a gevent worker: make every wait of the PostgreSQL driver go through gevent's patched poll and selectors.

    psycopg chooses how to wait when it is imported; the gunicorn master imports it before gevent patches the
    workers, so the choice is re-made here. Waiting in C (psycopg's default) would block every greenlet of the
    worker for the whole round trip of each query, and for the connect timeout when the database is unreachable.
    """
    monkey = sys.modules.get("gevent.monkey")
    waiting = sys.modules.get("psycopg.waiting")
    if monkey is None or waiting is None or not monkey.is_module_patched("select"):
        return  # not a gevent worker, or psycopg not loaded yet (it then chooses after patching)
    import selectors

    if waiting.wait is getattr(waiting, "wait_c", None):
        waiting.wait = waiting.wait_poll
    waiting.DefaultSelector = selectors.DefaultSelector  # connection set-up (wait_conn) uses it


def _kernel_wait(call: Callable[..., Any], *args: Any) -> Any:
    """Run a call that may block in the kernel; in a gevent worker on its thread pool, so the loop keeps going."""
    monkey = sys.modules.get("gevent.monkey")
    if monkey is not None and monkey.is_module_patched("threading"):
        import gevent

        return gevent.get_hub().threadpool.apply(call, args)
    return call(*args)


class SQLiteWriteTurn:
    """Takes turns among the engine's writers of a node on SQLite, which has one write lock for the whole file.

    Greenlets of a process queue on a lock (polling SQLite, each would hold a pooled connection while it waits);
    processes queue on a file lock, waited for on gevent's thread pool: the kernel hands it over the moment it is
    released, whereas polling SQLite's lock lets the worker that just committed take it again and again, starving
    the other. A process keeps the file lock for the writers it has queued, up to ``batch_seconds``, so the
    hand-over between workers (a wake-up of the other worker's loop) is paid once per batch, not per transaction.
    """

    batch_seconds = 0.05

    def __init__(self, path: Path) -> None:
        self._path = path
        self._guard = threading.Lock()  # only around creating the per-process objects, never held across a wait
        self._pid = 0
        self._local: Any = None
        self._fd = -1
        self._queued = 0
        self._held_since = 0.0  # monotonic time the file lock was taken; 0 while not held

    def _for_this_process(self) -> Any:
        # A fork must not share the lock or the file description (flock would not exclude the two processes), and
        # the lock must be created after gevent patched threading, i.e. in the worker.
        with self._guard:
            if self._pid != os.getpid():
                self._local = threading.Lock()
                self._fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o600)
                self._held_since = 0.0
                self._queued = 0
                self._pid = os.getpid()
            return self._local

    def __enter__(self) -> None:
        local = self._for_this_process()
        self._queued += 1
        try:
            local.acquire()
        finally:
            self._queued -= 1
        try:
            if not self._held_since:
                _kernel_wait(fcntl.flock, self._fd, fcntl.LOCK_EX)
                self._held_since = time.monotonic()
        except BaseException:
            local.release()
            raise

    def __exit__(self, *_exc: object) -> None:
        try:
            if not self._queued or time.monotonic() - self._held_since > self.batch_seconds:
                self._held_since = 0.0
                fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            self._local.release()


# How long a statement waits for another connection's (usually the other worker's) SQLite write lock.
SQLITE_BUSY_PATIENCE = 30.0
_SQLITE_BUSY = 5  # primary result code; SQLITE_BUSY_SNAPSHOT (517) cannot be cured by waiting
_SQLITE_BUSY_SNAPSHOT = 517


def _wait_for_lock(cursor: sqlite3.Cursor, run: Callable[[], Any]) -> Any:
    """Run a statement; while the database is locked, wait with ``time.sleep`` and try again.

    sqlite3's own busy_timeout waits inside C, which stalls every greenlet of a gevent worker (its accept loop
    too) until the other worker commits. ``time.sleep`` is gevent's under gunicorn, so this worker keeps serving.
    """
    conn = cursor.connection
    deadline = 0.0
    pause = 0.001
    while True:
        began = conn.in_transaction
        try:
            return run()
        except sqlite3.OperationalError as exc:
            code = getattr(exc, "sqlite_errorcode", None)
            if code is None or code & 0xFF != _SQLITE_BUSY or code == _SQLITE_BUSY_SNAPSHOT:
                raise
            now = time.monotonic()
            deadline = deadline or now + SQLITE_BUSY_PATIENCE
            if now > deadline:
                raise
            if not began and conn.in_transaction:
                conn.rollback()  # the driver's implicit BEGIN of this statement: retry from a fresh snapshot
        time.sleep(random.uniform(0.5, 1.5) * pause)
        pause = min(pause * 2, 0.02)


class _CooperativeCursor(sqlite3.Cursor):
    def execute(self, sql: str, parameters: Any = (), /) -> sqlite3.Cursor:
        return _wait_for_lock(self, lambda: super(_CooperativeCursor, self).execute(sql, parameters))

    def executemany(self, sql: str, seq_of_parameters: Any, /) -> sqlite3.Cursor:
        return _wait_for_lock(self, lambda: super(_CooperativeCursor, self).executemany(sql, seq_of_parameters))


class CooperativeSQLiteConnection(sqlite3.Connection):
    """A sqlite3 connection whose lock waits yield (see :func:`_wait_for_lock`); its busy_timeout is 0."""

    def cursor(self, factory: Any = None) -> Any:
        return super().cursor(factory or _CooperativeCursor)


def engine_options(url: str, settings: Settings) -> dict[str, Any]:
    if url.startswith("sqlite"):
        # Several gevent workers share the file: lock waits are retried in Python, not inside sqlite3.
        return {"connect_args": {"timeout": 0, "factory": CooperativeSQLiteConnection}}
    # No pre-ping: it costs a round trip per checkout, i.e. per device request. A connection the server dropped
    # fails its first statement instead (the device gets a 503 and retries) and SQLAlchemy then discards the pool.
    return {"pool_size": 10, "max_overflow": 20, "pool_recycle": 3600,
            "connect_args": postgres_connect_args(settings.db_dead_peer_timeout)}


def postgres_connect_args(dead_peer_timeout: float) -> dict[str, Any]:
    """libpq parameters that bound what a dead peer can cost, on both ends of each connection.

    Server side (set per session, so no PostgreSQL configuration is needed): a transaction left open by a node that
    died is ended after ``dead_peer_timeout``, releasing the device rows it had locked, which the surviving node
    needs at once; TCP keepalives close the dead node's idle connections. A lock wait longer than twice that fails
    (the device is told to retry) instead of holding a pooled connection. Client side: keepalives and a TCP user
    timeout notice a database host that vanished.
    """
    idle_ms = max(1, round(dead_peer_timeout * 1000))
    probe = max(1, round(dead_peer_timeout))
    gucs = {
        "idle_in_transaction_session_timeout": idle_ms,
        "lock_timeout": 2 * idle_ms,
        "tcp_keepalives_idle": probe,
        "tcp_keepalives_interval": 1,
        "tcp_keepalives_count": 3,
    }
    return {
        "options": " ".join(f"-c {name}={value}" for name, value in gucs.items()),
        "keepalives": 1, "keepalives_idle": probe, "keepalives_interval": 1, "keepalives_count": 3,
        "tcp_user_timeout": idle_ms + 3000,
    }


def sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    # WAL + NORMAL: no fsync per commit (only at checkpoints). A committed transaction survives any crash of the
    # gateway's processes; only a power cut or kernel crash can undo the last commits before the next checkpoint.
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=0")
    cur.close()


def schema_revisions() -> tuple[str | None, str | None]:
    """(revision the database is at, revision the code needs)."""
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(gateway_state().migrate.get_config())
    with db.engine.connect() as conn:
        current = MigrationContext.configure(conn).get_current_revision()
    return current, script.get_current_head()


# Any constants work; they only have to be the same for every node sharing the database.
MIGRATION_LOCK_KEY = 0x504E50
ADMISSION_LOCK_CLASS = 0x504E51


def admission_turn(port: int, near_capacity: Callable[[], bool]) -> bool:
    """Make the current transaction the only one admitting a CNS device to ``port``, when that matters.

    Returns whether the admission must still count the port's live sessions after its insert: ``False`` only where
    ``near_capacity()`` has just shown that every admission that may be in flight fits, so a second count would only
    cost a round trip on the hot path of a returning fleet.

    PostgreSQL: near capacity, a transaction-scoped advisory lock per port (released at commit or rollback) makes
    admissions take turns, so the count each one takes includes every admission before it; far from capacity no turn
    is taken. SQLite: nothing to do here; the admission's first statement is its insert, which takes the database's
    one write lock, so what it counts next includes every admission committed before it and none can commit meanwhile.
    """
    if db.engine.dialect.name != "postgresql":
        return True
    if not near_capacity():
        return False
    db.session.execute(text("SELECT pg_advisory_xact_lock(:cls, :port)"), {"cls": ADMISSION_LOCK_CLASS, "port": port})
    return True


@contextmanager
def migration_lock() -> Iterator[None]:
    """Serialise ``pnpp db upgrade`` across the nodes of an HA pair sharing one database.

    PostgreSQL: a session advisory lock. SQLite (single node): a file lock beside the database.
    """
    if db.engine.dialect.name == "postgresql":
        with db.engine.connect() as conn:
            conn.execute(text("SELECT pg_advisory_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
            # A session lock outlives the transaction: committed at once, the connection waits "idle", not "idle
            # in transaction", so the dead-peer timeout of every gateway connection does not end it (and release
            # the lock) while a long migration runs.
            conn.commit()
            try:
                yield
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": MIGRATION_LOCK_KEY})
                conn.commit()
        return
    lock_path = gateway_state().settings.data_dir / "migrate.lock"
    with lock_path.open("w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def check_schema_current() -> None:
    current, head = schema_revisions()
    if current == head:
        return
    url = db.engine.url.render_as_string(hide_password=True)
    if current is not None and current not in _known_revisions():
        # Upgrading cannot help: a newer release already migrated this database.
        raise SchemaError(
            f"the database {url} is at revision {current}, which this version of pnp-integrated does not know "
            f"(it needs {head}): a newer release upgraded it; run that release, or restore a backup of the database"
        )
    where = "empty (no tables yet)" if current is None else f"at revision {current}"
    raise SchemaError(
        f"the database {url} is {where}, but this version of pnp-integrated needs revision {head}: "
        "run `pnpp db upgrade` first"
    )


def _known_revisions() -> set[str]:
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(gateway_state().migrate.get_config())
    return {rev.revision for rev in script.walk_revisions()}


class DatabaseIdConverter(IntegerConverter):
    """``<int:...>`` in every route: a row id fits a signed 64-bit integer, so a larger number matches no route (404)
    instead of reaching the database driver (which raises OverflowError: a 500)."""

    def __init__(self, url_map: Any, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("max", 2**63 - 1)
        super().__init__(url_map, *args, **kwargs)


# ---- moving a node's data into another database (a single gateway becoming a node of a pair) -----------------------
# What a node's database holds that another one should: everything but what belongs to the running node itself (its
# devices' live sessions, the leader lease, console sign-ins and their throttle) and image content, which `pnpp run`
# gives the new database from the image files.
NOT_COPIED = ("device_sessions", "leases", "console_sessions", "sign_in_failures", "image_chunks")
COPY_BATCH = 1000


class CopyRefused(RuntimeError):
    """The target database cannot take the copy: it already holds data."""


def copy_database(source: Any, target: Any) -> dict[str, int]:
    """Copy every row of ``source`` (a SQLAlchemy engine at the head revision) into ``target`` (an engine on an empty
    database at the same revision), one transaction; rows copied per table. PostgreSQL's id sequences are moved past
    the copied ids, so new rows do not collide."""
    from sqlalchemy import bindparam, func, select, update

    tables = [t for t in db.metadata.sorted_tables if t.name not in NOT_COPIED]
    with target.begin() as into:
        held = {t.name: into.execute(select(func.count()).select_from(t)).scalar_one() for t in tables}
        if any(held.values()):
            raise CopyRefused("the target database holds data already (" + ", ".join(
                f"{n} {name}" for name, n in held.items() if n) + "): copy into an empty database only")
        copied: dict[str, int] = {}
        with source.connect() as reading:
            for table in tables:
                # A device names its current job and a job its device: devices go in first without it.
                deferred = "current_job_id" if table.name == "devices" else None
                count = 0
                rows = reading.execute(select(table)).mappings()
                while batch := rows.fetchmany(COPY_BATCH):
                    values = [{**row, deferred: None} if deferred else dict(row) for row in batch]
                    into.execute(table.insert(), values)
                    count += len(values)
                copied[table.name] = count
            devices = db.metadata.tables["devices"]
            point = update(devices).where(devices.c.id == bindparam("device")).values(
                current_job_id=bindparam("job"))
            current = reading.execute(select(devices.c.id, devices.c.current_job_id)
                                      .where(devices.c.current_job_id.is_not(None)))
            while batch := current.fetchmany(COPY_BATCH):
                into.execute(point, [{"device": device, "job": job} for device, job in batch])
        if into.dialect.name == "postgresql":
            for table in tables:
                if "id" in table.c and table.c.id.autoincrement in (True, "auto") and copied[table.name]:
                    into.execute(text(f"SELECT setval(pg_get_serial_sequence('{table.name}', 'id'), "
                                      f"(SELECT MAX(id) FROM {table.name}))"))
    return copied

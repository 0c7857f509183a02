"""Device inventory benchmark: the REST API's inventory requests on a fleet of 100,000 devices.

It fills a database (SQLite in a temporary directory, or ``--database-url``, which must name an empty PostgreSQL
database) with ``--devices`` devices in every state, their jobs with every step and the outbox events each step
wrote (bulk inserts, in a few seconds to a minute), starts a node on it (``pnpp run``: the simulated Prime, gunicorn
and its workers, ports moved), and times the inventory requests an operator console makes, one after another on
one keep-alive connection with a read token::

    .venv/bin/python bench/inventory.py
    .venv/bin/python bench/inventory.py --database-url postgresql+psycopg://postgres@127.0.0.1:5432/inventory
    .venv/bin/python bench/inventory.py --devices 20000 --requests 100

The kinds are requested in turn, one of each, ``--requests`` rounds: a moment of load on a shared machine falls on
all of them alike. For each it prints the latency at the client (p50, p95, p99, max); from up to 100 requests of it
in a row, the CPU per request of the gateway (its gunicorn processes, from /proc) and of the database server
(PostgreSQL on this machine: its processes; SQLite runs inside the gateway); and what the answer held. Then how the
database runs each query (EXPLAIN QUERY PLAN on SQLite, EXPLAIN on PostgreSQL). SQLite is left without ANALYZE
statistics, as a node leaves it; PostgreSQL's are brought up to date after the fill (VACUUM ANALYZE), as
autovacuum does soon after any bulk change.

The request kinds: the first page (50 devices by serial, with the total); a deep page (a cursor from the second half
of a walk); the failed devices (first page, with their total); a search by serial prefix (six characters of a
device's serial, lower case) and by one letter (most of the fleet matches), in the match order, and the one letter
by last seen; the counts by state and protocol; the recently seen (sort by last seen, newest first); a device's
history (jobs, steps, events); and one page of 500 of a walk through the whole fleet.

What the indexes cost the device path: before the upgrade and after it, ``--contacts`` writes of a device contact
(one UPDATE of a random device's last_seen, committed on its own, as the engine writes a contact of a device it
knows) are timed on the full tables, with the write-ahead log they produced on PostgreSQL.
"""

from __future__ import annotations

import argparse
import datetime as dt
import http.client
import json
import os
import random
import string
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from sqlalchemy import bindparam

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.proc import cpu_seconds, gateway_cpu_seconds, listening_pids, process_tree  # noqa: E402
from pnp_integrated.devsim import percentile  # noqa: E402
from pnp_integrated.devsim.node import NodeDidNotStart, RunningNode, node_settings, start_node  # noqa: E402

NOW = dt.datetime(2026, 12, 1, 12, 0, 0)
PREFIXES = ("FOC", "FDO", "JAE", "FCW", "FXS", "FGL")
PIDS = (("C9300-24U", 30), ("C9300-48P", 20), ("ISR4331/K9", 15), ("ISR4451-X/K9", 8), ("C9200L-24T-4G", 17),
        ("IE-3400-8P2S", 10))
VERSIONS = (("17.9.4a", 45), ("17.6.5", 30), ("16.12.8", 15), ("17.12.1", 10))
# Device state -> share of the fleet, and the state of its current job (None: it has none).
STATES = {"provisioned": (62, "completed"), "provisioning": (6, "running"), "failed": (10, "failed"),
          "cancelled": (3, "cancelled"), "claimed": (3, None), "unclaimed": (11, None), "expected": (5, None)}
SITES = ("lyon", "paris", "nantes", "lille", "rennes", "nice", "metz", "brest")
ERRORS = ("%Error opening tftp://192.0.2.10/pnp/config.cfg (Timed out)",
          "%Error copying flash:/cat9k_iosxe.17.09.04a.SPA.bin (No space left on device)",
          "% Invalid input detected at '^' marker.",
          "%Error: MD5 of the image does not match the one expected")
STEP_NAMES = ("identify", "image", "image.verify", "config", "post_config", "save")
BEFORE_INVENTORY = "0003"  # the revision before migration 0004 (the inventory's indexes)
CHUNK = 2000  # devices per batch (with their jobs, steps and events)


@dataclass
class Rows:
    """Rows to write, table by table (one batch of the fleet)."""

    profiles: list[dict[str, Any]] = field(default_factory=list)
    devices: list[dict[str, Any]] = field(default_factory=list)
    jobs: list[dict[str, Any]] = field(default_factory=list)
    job_steps: list[dict[str, Any]] = field(default_factory=list)
    outbox: list[dict[str, Any]] = field(default_factory=list)


TABLES = ("profiles", "devices", "jobs", "job_steps", "outbox")


@dataclass
class Fleet:
    """What the fill wrote: rows per table, and the serials the requests pick from."""

    written: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TABLES, 0))
    serials: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    jobs: int = 0  # ids given so far
    events: int = 0

    def summary(self) -> str:
        return ", ".join(f"{self.written[name]:,} {name}" for name in TABLES[1:])


def _weighted(rng: random.Random, choices: tuple[tuple[str, int], ...]) -> str:
    return rng.choices([c for c, _ in choices], [w for _, w in choices])[0]


PROFILE_NAMES = [f"branch-{n:02d}" for n in range(1, 11)] + ["core", "lab"]


def fleet_batches(fleet: Fleet, devices: int, seed: int = 1, batch: int = CHUNK) -> Iterator[Rows]:
    """A fleet in mixed states with its jobs, their steps and the events each step wrote (all sent to Prime), in
    batches of ``batch`` devices; ``fleet`` keeps the counts and the serials."""
    rng = random.Random(seed)
    yield Rows(profiles=[{"id": n, "name": name, "match_serials": [], "match_pid": "", "is_default": False,
                          "bootstrap_template": "", "config_template": "hostname {{ serial }}", "post_template": "",
                          "reload_after_install": True, "credentials": {}, "apply_to": "running", "variables": {},
                          "created_at": NOW, "updated_at": NOW} for n, name in enumerate(PROFILE_NAMES, 1)])
    seen: set[str] = set()
    state_names = list(STATES)
    state_weights = [STATES[s][0] for s in state_names]
    rows = Rows()
    for device_id in range(1, devices + 1):
        while True:
            serial = (rng.choice(PREFIXES) + f"{rng.randrange(18, 26):02d}{rng.randrange(1, 53):02d}"
                      + "".join(rng.choices(string.ascii_uppercase + string.digits, k=4)))
            if serial not in seen:
                seen.add(serial)
                break
        state = rng.choices(state_names, state_weights)[0]
        pid = _weighted(rng, PIDS)
        first_seen = NOW - dt.timedelta(seconds=rng.randrange(365 * 86400))
        last_seen = first_seen + dt.timedelta(seconds=rng.randrange(int((NOW - first_seen).total_seconds()) + 1))
        profile_id = rng.randrange(1, len(PROFILE_NAMES) + 1) if state not in ("unclaimed", "expected") else None
        device = {"id": device_id, "serial": serial, "pid": "" if state == "expected" else pid,
                  "udi": f"PID:{pid},VID:V01,SN:{serial}", "protocol": "" if state == "expected" else
                  ("cns" if rng.random() < 0.4 else "pnp"),
                  "hostname": f"{rng.choice(SITES)}-sw{device_id:06d}" if state == "provisioned" else "",
                  "address": f"10.{device_id >> 16 & 255}.{device_id >> 8 & 255}.{device_id & 255}",
                  "software_version": "" if state == "expected" else _weighted(rng, VERSIONS), "state": state,
                  "profile_id": profile_id, "current_job_id": None, "variables": {}, "first_seen": first_seen,
                  "last_seen": last_seen}
        rows.devices.append(device)
        fleet.serials.append(serial)
        if state == "failed":
            fleet.failed.append(serial)
        job_state = STATES[state][1]
        if job_state is not None:
            if job_state == "completed" and rng.random() < 0.15:  # an earlier attempt that failed, then a retry
                _job(rng, fleet, rows, device, "failed", first_seen)
            device["current_job_id"] = _job(rng, fleet, rows, device, job_state, first_seen + dt.timedelta(hours=1))
        if len(rows.devices) == batch:
            yield rows
            rows = Rows()
    yield rows


def _job(rng: random.Random, fleet: Fleet, rows: Rows, device: dict[str, Any], state: str,
         start: dt.datetime) -> int:
    """One job of ``device`` ending in ``state``, with its steps and events; returns its id."""
    fleet.jobs += 1
    job_id = fleet.jobs
    last = {"completed": len(STEP_NAMES) - 1, "failed": rng.randrange(len(STEP_NAMES)),
            "running": rng.randrange(len(STEP_NAMES)), "cancelled": rng.randrange(len(STEP_NAMES))}[state]
    at = start
    attempt, detail = 1, ""
    for index, name in enumerate(STEP_NAMES[:last + 1]):
        final = index == last
        if name.startswith("image") and not final and rng.random() < 0.5:
            outcomes = [("skipped", 0, "the device already runs the profile's image")]
        elif final and state == "failed":
            detail = rng.choice(ERRORS)
            outcomes = [("failed", n, detail) for n in (1, 2, 3)]
        elif final and state == "running":
            outcomes = [("started", 1, "")]
        elif final and state == "cancelled":
            outcomes = [("cancelled", 1, "")]
        else:
            outcomes = [("succeeded", 1, "")]
        for step_state, attempt, text in outcomes:
            took = dt.timedelta(milliseconds=rng.randrange(200, 40000))
            ended = None if step_state == "started" else at + took
            rows.job_steps.append({"job_id": job_id, "step": name, "state": step_state, "attempt": attempt,
                                   "detail": text, "started_at": at, "ended_at": ended})
            _event(fleet, rows, "job.step", device, job_id, name, step_state, attempt, text, ended or at)
            at += took
    finished = None if state == "running" else at
    detail = {"completed": "provisioned", "failed": f"step {STEP_NAMES[last]} failed after 3 attempt(s): {detail}",
              "cancelled": "cancelled by ops", "running": ""}[state]
    rows.jobs.append({"id": job_id, "device_id": device["id"], "profile_id": device["profile_id"],
                      "protocol": device["protocol"], "state": state, "step": "done" if state == "completed" else
                      STEP_NAMES[last], "attempt": attempt, "max_attempts": 3, "correlator": "",
                      "pending_request": {}, "context": {}, "detail": detail,
                      "failed_step": STEP_NAMES[last] if state == "failed" else "", "version": 1,
                      "created_at": start, "updated_at": at, "finished_at": finished})
    if state in ("completed", "failed", "cancelled"):
        _event(fleet, rows, "job.completed" if state == "completed" else "job.failed", device, job_id,
               STEP_NAMES[last], state, attempt, detail, at)
    return job_id


def _event(fleet: Fleet, rows: Rows, type_: str, device: dict[str, Any], job_id: int, step: str, state: str,
           attempt: int, detail: str, at: dt.datetime) -> None:
    fleet.events += 1
    payload = {"job": {"id": job_id, "device": {"id": device["id"], "serial": device["serial"], "pid": device["pid"],
                                                "udi": device["udi"], "protocol": device["protocol"],
                                                "address": device["address"], "port": None},
                       "profile": None, "step": step, "state": state, "attempt": attempt, "detail": detail}}
    rows.outbox.append({"event_id": f"bench-{fleet.events:012d}", "type": type_, "payload": payload,
                        "created_at": at, "sent_at": at + dt.timedelta(milliseconds=40), "attempts": 1})


_ENCODE = json.JSONEncoder(check_circular=False, separators=(",", ":")).encode


def _sqlite_time(value: dt.datetime | None) -> str | None:
    return None if value is None else value.isoformat(sep=" ", timespec="microseconds")


def _converter(sample: Any, sqlite: bool) -> Callable[[Any], Any] | None:
    """How a column's values are stored, as SQLAlchemy would have written them: JSON as text; on SQLite, datetimes
    as text in its format and booleans as integers. ``None``: as they are."""
    if isinstance(sample, dict | list):
        return _ENCODE
    if sqlite and isinstance(sample, dt.datetime):
        return _sqlite_time
    if sqlite and isinstance(sample, bool):
        return int
    return None


def write_rows(driver: Any, dialect: str, table: str, rows: list[dict[str, Any]]) -> None:
    """Bulk-write rows through the driver itself (COPY on PostgreSQL, executemany on SQLite): several times faster
    than SQLAlchemy's executemany, and the fill is not what is measured."""
    columns = list(rows[0])
    sqlite = dialect == "sqlite"
    # A column's kind from the first row that has a value in it (ended_at, current_job_id ... may start empty).
    samples = {c: next((row[c] for row in rows if row[c] is not None), None) for c in columns}
    converters = [_converter(samples[c], sqlite) for c in columns]
    values = [tuple(row[c] if convert is None or row[c] is None else convert(row[c])
                    for c, convert in zip(columns, converters, strict=True)) for row in rows]
    if not sqlite:
        with driver.cursor() as cursor, cursor.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
            for row in values:
                copy.write_row(row)
        return
    driver.executemany(f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})",
                       values)


@dataclass
class WriteCost:
    """What a device's contact costs the database: one UPDATE of its last-seen time, committed on its own."""

    revision: str
    latencies: list[float] = field(default_factory=list)  # seconds, per update and its commit
    wal_bytes: int | None = None  # PostgreSQL: write-ahead log written

    def line(self) -> str:
        count = len(self.latencies)
        wal = f", {self.wal_bytes / count:,.0f} bytes of WAL each" if self.wal_bytes is not None else ""
        return (f"{self.revision}: {count} updates, p50 {1e6 * percentile(self.latencies, 0.5):,.0f} us, "
                f"p90 {1e6 * percentile(self.latencies, 0.9):,.0f} us{wal}")


def contact_writes(revision: str, devices: int, count: int, seed: int) -> WriteCost:
    """Time ``count`` contacts of random devices as the engine writes them for a device it knows (one UPDATE of
    last_seen, one commit each): the device path's write, which every index on last_seen makes dearer.

    The same devices are contacted twice and only the second round is timed; on PostgreSQL a VACUUM and a
    CHECKPOINT come before each round. So the second round finds what a table in use has, room in its pages left by
    the old row versions, where an UPDATE that changes no indexed column stays on its page and writes no index
    entry (a HOT update, which an index on last_seen rules out), and both revisions pay the first write of each
    page after a checkpoint alike.
    """
    from sqlalchemy import update

    from pnp_integrated.models import Device, db

    rows = [random.Random(seed).randrange(1, devices + 1) for _ in range(count)]
    cost = WriteCost(revision)
    statement = update(Device.__table__).where(Device.__table__.c.id == bindparam("row")).values(
        last_seen=bindparam("at"))
    postgres = db.engine.dialect.name == "postgresql"
    for timed in (False, True):
        if postgres:
            with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
                connection.exec_driver_sql("VACUUM devices")
                connection.exec_driver_sql("CHECKPOINT")
        with db.engine.connect() as connection:
            if not postgres:
                connection.exec_driver_sql("PRAGMA synchronous=NORMAL")  # the node's setting (the fill's is off)
            wal = connection.exec_driver_sql("SELECT pg_current_wal_lsn()").scalar() if postgres else None
            connection.commit()
            for n, row in enumerate(rows):
                started = time.perf_counter()
                connection.execute(statement, {"row": row, "at": NOW + dt.timedelta(seconds=timed, microseconds=n)})
                connection.commit()
                if timed:
                    cost.latencies.append(time.perf_counter() - started)
        if postgres and timed:
            with db.engine.connect() as connection:
                cost.wal_bytes = int(connection.exec_driver_sql(
                    f"SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '{wal}')").scalar() or 0)
    return cost


def fill(database_url: str, data_dir: Path, devices: int,
         contacts: int = 0) -> tuple[Fleet, float, float, list[WriteCost]]:
    """Write the fleet into the database, batch by batch, at the revision before the inventory's indexes, then
    migrate it to the newest (building those indexes on the full tables, as an upgrade of a fleet does); with
    ``contacts``, time that many device contacts' writes before and after the upgrade. (What was written, seconds
    the writes took, seconds the upgrade took, the contacts' write costs.)"""
    from flask_migrate import upgrade
    from sqlalchemy import func, select

    from pnp_integrated import create_app
    from pnp_integrated.models import Device, db

    app = create_app({**node_settings(data_dir, database_url=database_url), "TESTING": True}, check_schema=False)
    started = time.monotonic()
    fleet = Fleet()
    with app.app_context():
        upgrade(revision=BEFORE_INVENTORY)
        if db.session.scalar(select(func.count()).select_from(Device)):
            raise SystemExit("the database already holds devices: give the benchmark an empty one")
        for rows in fleet_batches(fleet, devices):
            # One transaction per batch: a node's connections end a transaction left idle for seconds, as one is
            # while the next batch is made on a busy machine.
            connection = db.session.connection()
            if connection.dialect.name == "sqlite":  # a throwaway database: no waiting for the disk
                connection.exec_driver_sql("PRAGMA synchronous=OFF")
                connection.exec_driver_sql("PRAGMA cache_size=-262144")
            for name in TABLES:
                batch = getattr(rows, name)
                if batch:
                    write_rows(connection.connection.driver_connection, connection.dialect.name, name, batch)
                    fleet.written[name] += len(batch)
            db.session.commit()
        written = time.monotonic() - started
        costs = [contact_writes(f"revision {BEFORE_INVENTORY}", devices, contacts, 3)] if contacts else []
        upgraded = time.monotonic()
        upgrade()
        migrated = time.monotonic() - upgraded
        if contacts:
            costs.append(contact_writes("newest revision", devices, contacts, 3))
        if db.engine.dialect.name == "postgresql":
            with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
                for table in ("profiles", "devices", "jobs"):  # explicit ids: the sequences move past them
                    connection.exec_driver_sql(
                        f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), (SELECT max(id) FROM {table}))")
                connection.exec_driver_sql("VACUUM ANALYZE")
        db.session.remove()
        db.engine.dispose()
    return fleet, written, migrated, costs


@dataclass
class Kind:
    """A kind of inventory request: the path of each one, and the query the server runs for it (for its plan)."""

    name: str
    paths: Callable[[], Iterator[str]]
    plan_args: dict[str, str] | None = None


@dataclass
class Timing:
    name: str
    latencies: list[float] = field(default_factory=list)
    cpu: float = 0.0
    database_cpu: float | None = None
    items: int = 0
    note: str = ""


class Console:
    """One keep-alive HTTP connection to the node, with a read token."""

    def __init__(self, node: RunningNode, token: str) -> None:
        self.connection = http.client.HTTPConnection("127.0.0.1", node.port("http_port"), timeout=60)
        self.headers = {"Authorization": f"Bearer {token}"}

    def get(self, path: str) -> tuple[float, Any]:
        started = time.perf_counter()
        self.connection.request("GET", f"/api/v1{path}", headers=self.headers)
        response = self.connection.getresponse()
        body = response.read()
        elapsed = time.perf_counter() - started
        if response.status != 200:
            raise SystemExit(f"GET {path}: {response.status} {body[:300]!r}")
        return elapsed, json.loads(body)


def walk_cursors(console: Console, limit: int = 500) -> tuple[list[str], Timing]:
    """Walk the whole fleet, ``limit`` a page; the cursors met on the way, and the pages' timing."""
    cursors: list[str] = []
    timing = Timing(f"walk of the fleet, {limit} a page")
    cursor = None
    while True:
        elapsed, page = console.get(f"/devices?{urlencode({'limit': limit, **({'cursor': cursor} if cursor else {})})}")
        timing.latencies.append(elapsed)
        timing.items += len(page["items"])
        cursor = page["next"]
        if cursor is None:
            return cursors, timing
        cursors.append(cursor)


def _describe(timing: Timing, body: Any) -> None:
    timing.items = len(body.get("items", body.get("jobs", [])))
    if "total" in body and "items" in body:
        timing.note = f"total {body['total']:,}"
    elif "by_state" in body:
        timing.note = f"{len(body['groups'])} groups"
    elif "events" in body:
        timing.note = f"{sum(len(j['steps']) for j in body['jobs'])} steps, {len(body['events'])} events"


def measure(console: Console, node: RunningNode, fleet_kinds: list[Kind], requests: int,
            database_pids: list[int]) -> list[Timing]:
    """Latency of each kind, the kinds taken in turn (a moment of load on a shared machine falls on all of them
    alike); then the CPU per request of each kind alone (up to 100 requests of it in a row): the gateway's, and the
    database server's when it runs on this machine."""
    streams = [kind.paths() for kind in fleet_kinds]
    timings = [Timing(kind.name) for kind in fleet_kinds]
    for stream in streams:
        for _ in range(5):  # warm-up: connections in the pool, statements prepared
            console.get(next(stream))
    for _ in range(requests):
        for timing, stream in zip(timings, streams, strict=True):
            elapsed, body = console.get(next(stream))
            timing.latencies.append(elapsed)
            _describe(timing, body)
    alone = min(requests, 100)
    for timing, stream in zip(timings, streams, strict=True):
        gateway0, database0 = gateway_cpu_seconds(node.process.pid), _cpu(database_pids)
        for _ in range(alone):
            console.get(next(stream))
        timing.cpu = (gateway_cpu_seconds(node.process.pid) - gateway0) / alone
        timing.database_cpu = (_cpu(database_pids) - database0) / alone if database_pids else None
    return timings


def _cpu(pids: list[int]) -> float:
    return sum(cpu_seconds(pid) for pid in pids)


def database_server_pids(database_url: str) -> list[int]:
    """The processes of a PostgreSQL server on this machine (the one listening on the URL's port, and its
    backends); none for SQLite (it runs in the gateway's workers) or a server elsewhere."""
    from sqlalchemy.engine import make_url

    url = make_url(database_url)
    if url.get_backend_name() != "postgresql" or (url.host or "localhost") not in ("localhost", "127.0.0.1", "::1"):
        return []
    listening = listening_pids(url.port or 5432)
    return sorted({pid for root in listening for pid in process_tree(root)})


def kinds(rng: random.Random, fleet: Fleet, deep: list[str]) -> list[Kind]:
    serials, failed = fleet.serials, fleet.failed

    def always(path: str) -> Callable[[], Iterator[str]]:
        def paths() -> Iterator[str]:
            while True:
                yield path
        return paths

    def drawn(make: Callable[[], str]) -> Callable[[], Iterator[str]]:
        def paths() -> Iterator[str]:
            while True:
                yield make()
        return paths

    return [
        Kind("first page", always("/devices?limit=50"), {}),
        Kind("deep page (cursor)", drawn(lambda: f"/devices?limit=50&cursor={rng.choice(deep)}"),
             {"cursor": deep[-1]}),
        Kind("filter state=failed", always("/devices?limit=50&state=failed"), {"state": "failed"}),
        Kind("search serial prefix", drawn(lambda: f"/devices?limit=50&search={rng.choice(serials)[:6].lower()}"),
             {"search": serials[0][:6].lower()}),
        # One letter: most of the fleet matches, and a search costs what its matches number.
        Kind("search, one letter", always("/devices?limit=50&search=f"), {"search": "f"}),
        # In an asked-for order a search reads and sorts all its matches.
        Kind("search, one letter, by last seen", always("/devices?limit=50&search=f&sort=last_seen"),
             {"search": "f", "sort": "last_seen"}),
        Kind("counts", always("/devices/counts")),
        Kind("recently seen (last_seen desc)", always("/devices?limit=50&sort=last_seen&order=desc"),
             {"sort": "last_seen", "order": "desc"}),
        Kind("history of a failed device", drawn(lambda: f"/devices/{rng.choice(failed)}/history")),
    ]


def plans(database_url: str, data_dir: Path, fleet_kinds: list[Kind]) -> list[tuple[str, list[str]]]:
    """How the database runs each kind's query."""
    from pnp_integrated import create_app
    from pnp_integrated.api import inventory

    app = create_app({**node_settings(data_dir, database_url=database_url), "TESTING": True}, check_schema=False)
    found = []
    with app.app_context():
        for kind in fleet_kinds:
            if kind.plan_args is not None:
                found.append((kind.name, inventory.query_plan(
                    inventory.page_statement(inventory.inventory_query(kind.plan_args)))))
        found.append(("counts", inventory.query_plan(inventory.COUNTS_STATEMENT)))
        found.append(("history: the device's events", inventory.query_plan(
            inventory.device_events_statement("FOC2201ABCD"))))
    return found


def format_table(timings: list[Timing]) -> str:
    header = ["request", "n", "p50 ms", "p95 ms", "p99 ms", "max ms", "gateway CPU ms/req", "database CPU ms/req",
              "rows", "answer"]
    rows = [header]
    for t in timings:
        rows.append([t.name, str(len(t.latencies)), *(f"{1000 * percentile(t.latencies, q):.1f}"
                                                      for q in (0.5, 0.95, 0.99)),
                     f"{1000 * max(t.latencies, default=0):.1f}", f"{1000 * t.cpu:.1f}" if t.cpu else "-",
                     f"{1000 * t.database_cpu:.1f}" if t.database_cpu is not None else "-",
                     f"{t.items:,}", t.note])
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |" for row in rows]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def code_line(code: str) -> str:
    """Which code the node ran: its package directory, commit, and whether it had uncommitted changes."""
    package = Path(code).parent
    commit = subprocess.run(["git", "-C", str(package), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    if commit and subprocess.run(["git", "-C", str(package), "status", "--porcelain", "--", "."],
                                 capture_output=True, text=True).stdout.strip():
        commit += " and changes"
    return f"code of {package}{f' (commit {commit})' if commit else ''}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=100_000, help="devices in the fleet")
    parser.add_argument("--requests", type=int, default=300, help="timed requests of each kind")
    parser.add_argument("--database-url", help="an empty PostgreSQL database (default: SQLite, temporary)")
    parser.add_argument("--workers", type=int, default=2, help="gateway workers of the node")
    parser.add_argument("--contacts", type=int, default=2000,
                        help="device contacts' writes timed before and after the inventory's indexes (0: skip)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="pnp-bench-inventory-") as tmp_name:
        tmp = Path(tmp_name)
        database_url = args.database_url or f"sqlite:///{tmp / 'inventory.sqlite3'}"
        fleet, written, migrated, costs = fill(database_url, tmp / "fill", args.devices, args.contacts)
        print(f"wrote {fleet.summary()} in {written:.1f} s; the upgrade to the newest revision (the inventory's "
              f"indexes) took {migrated:.1f} s", flush=True)
        from pnp_integrated import create_app
        from pnp_integrated.api.tokens import issue_token

        with create_app({**node_settings(tmp / "fill", database_url=database_url), "TESTING": True}).app_context():
            token = issue_token("bench-console", "read")
        # gunicorn puts its working directory first on sys.path: from here the node runs the code PYTHONPATH (or the
        # installed package) names, never a checkout that happens to be the current directory.
        os.chdir(tmp)
        code = subprocess.run([sys.executable, "-c", "import pnp_integrated; print(pnp_integrated.__file__)"],
                              capture_output=True, text=True, check=True).stdout.strip()
        try:
            node = start_node(tmp / "node", database_url=database_url, workers=args.workers)
        except NodeDidNotStart as exc:
            raise SystemExit(f"node did not start: {str(exc)[-2000:]}") from None
        try:
            console = Console(node, token)
            cursors, walk = walk_cursors(console)
            walk.note = f"{len(walk.latencies)} pages"
            deep = cursors[len(cursors) // 2:]
            fleet_kinds = kinds(random.Random(7), fleet, deep)
            timings = measure(console, node, fleet_kinds, args.requests, database_server_pids(database_url))
        finally:
            node.stop()
        found = plans(database_url, tmp / "fill", fleet_kinds)
    kind_name = "PostgreSQL" if database_url.startswith("postgresql") else "SQLite"
    print(f"node: {args.workers} worker(s), {kind_name}, {code_line(code)}")
    print(format_table([*timings, walk]))
    if costs:
        print("\ndevice contact writes (UPDATE of last_seen, one transaction each):")
        for cost in costs:
            print(f"    {cost.line()}")
    for name, plan in found:
        print(f"\n{name}:\n    " + "\n    ".join(plan))
    return 0


if __name__ == "__main__":
    sys.exit(main())

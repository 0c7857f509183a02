"""Outbox to Prime benchmark: how soon the events a node writes reach Prime, and what the leader's bridge pays.

It starts its own node (``pnpp run`` on a temporary data directory, ports moved, the simulated Prime with its
embedded broker) and runs three scenarios against it, one after the other::

    .venv/bin/python bench/outbox.py
    .venv/bin/python bench/outbox.py --devices 100 --paced 20 --events 5000 --workers 2
    PYTHONPATH=OTHER_CHECKOUT .venv/bin/python bench/outbox.py     # the node runs that checkout's code

The first line printed names the code the node ran (the package's directory and its commit).

``devices``
    ``--devices`` simulated Open PnP devices play their day 0 (``--concurrency`` at a time). Every step writes its
    event in the worker that served the request; with one worker (the default) that is the leader's, the worker
    whose bridge sends the events.
``paced``
    ``--paced`` devices one after another, a second apart: a node that is not busy, where each device's first
    event finds the bridge idle.
``burst``
    ``--events`` events written into the node's database by this process, ``--per-commit`` per transaction, as
    fast as it can: events of a worker other than the leader's, which the bridge finds by polling the outbox.

For each it prints the events written, the seconds from the first write (and from the last one) until the last
event was stored by Prime, the delay of each event from its write to its arrival at Prime (p50, p99, max; Prime's
store is watched every 10 ms), the commits and statements the bridge made per event, and the leader worker's CPU
per event (in the devices and paced scenarios that worker also serves the devices; in the burst scenario it only
runs the bridge).

The bridge's commits and statements are counted inside the node's processes: a ``sitecustomize`` module, put on
the node's ``PYTHONPATH`` by this script, listens to SQLAlchemy's engine events and writes one byte per commit
(``c``) and per statement (``q``) made on the bridge's thread (``pnp-prime-bridge``) to a file per process.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.proc import cpu_seconds  # noqa: E402
from pnp_integrated.devsim import percentile  # noqa: E402
from pnp_integrated.devsim.node import NodeDidNotStart, RunningNode, start_node  # noqa: E402
from pnp_integrated.devsim.pnp import PROVISIONED, PnpAgent, SimulatedDevice  # noqa: E402

PID = "C9300-24U"
CONFIG = "hostname {{ serial }}\ninterface Vlan1\n ip address dhcp\n"
POST = "ntp server 192.0.2.1\n"
COUNTS_VARIABLE = "OUTBOX_BENCH_COUNTS_DIR"
WATCH_EVERY = 0.01  # seconds between two looks at Prime's store

# Loaded by every Python process of the node (its PYTHONPATH): counts what the bridge's thread asks the database.
PROBE = f'''
import os
import threading


def _install(directory):
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    files = {{}}

    def note(mark):
        if threading.current_thread().name != "pnp-prime-bridge":
            return
        pid = os.getpid()
        fd = files.get(pid)
        if fd is None:
            fd = files[pid] = os.open(os.path.join(directory, str(pid)), os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        os.write(fd, mark)

    event.listen(Engine, "commit", lambda conn: note(b"c"))
    event.listen(Engine, "before_cursor_execute", lambda *args: note(b"q"))


if os.environ.get("{COUNTS_VARIABLE}"):
    _install(os.environ["{COUNTS_VARIABLE}"])
'''


@dataclass
class Result:
    scenario: str
    events: int = 0
    seconds: float = 0.0  # first write -> last event stored at Prime
    tail: float = 0.0  # last write -> last event stored at Prime
    delays: list[float] = field(default_factory=list)  # per event: write -> stored at Prime
    commits: int = 0
    statements: int = 0
    cpu: float = 0.0  # leader worker, seconds
    note: str = ""


class PrimeWatch:
    """Notes when each event first appears in Prime's store (the simulated Prime's sink, a SQLite file)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.seen: dict[str, float] = {}
        self._seq = 0
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="prime-watch", daemon=True)

    def __enter__(self) -> PrimeWatch:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stopping.set()
        self._thread.join(10)

    def _run(self) -> None:
        conn: sqlite3.Connection | None = None
        while not self._stopping.wait(WATCH_EVERY):
            try:
                if conn is None:
                    if not self.path.exists():
                        continue
                    conn = sqlite3.connect(self.path, timeout=5)
                rows = conn.execute("SELECT seq, event_id FROM events WHERE seq > ? ORDER BY seq",
                                    (self._seq,)).fetchall()
            except sqlite3.OperationalError:  # not created yet, or busy: look again
                continue
            now = time.time()
            for seq, event_id in rows:
                self.seen.setdefault(event_id, now)
                self._seq = seq
        if conn is not None:
            conn.close()


class Node:
    """The node under test, its database seen from this process, and the bridge's counters."""

    def __init__(self, tmp: Path, workers: int, database_url: str | None) -> None:
        probe_dir, self.counts_dir = tmp / "probe", tmp / "counts"
        probe_dir.mkdir()
        self.counts_dir.mkdir()
        (probe_dir / "sitecustomize.py").write_text(PROBE)
        os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(probe_dir), os.environ.get("PYTHONPATH")) if p)
        os.environ[COUNTS_VARIABLE] = str(self.counts_dir)
        overrides: dict[str, Any] = {"workers": workers}
        if database_url:
            overrides["database_url"] = database_url
        # gunicorn (python -m) puts its working directory first on sys.path: from here the node runs the code that
        # PYTHONPATH (or the installed package) names, never a checkout that happens to be the current directory.
        os.chdir(tmp)
        self.code = subprocess.run([sys.executable, "-c", "import pnp_integrated; print(pnp_integrated.__file__)"],
                                   capture_output=True, text=True, check=True).stdout.strip()
        try:
            self.running: RunningNode = start_node(tmp / "node", **overrides)
        except NodeDidNotStart as exc:
            raise SystemExit(f"node did not start: {str(exc)[-2000:]}") from None
        from pnp_integrated import create_app
        from pnp_integrated.models import Profile, db

        self.app = create_app(self.running.settings)
        with self.app.app_context():
            db.session.add(Profile(name="bench", match_pid=PID, config_template=CONFIG, post_template=POST))
            db.session.commit()

    @property
    def data_dir(self) -> Path:
        return self.running.data_dir

    def counts(self) -> tuple[int, int]:
        """(commits, statements) the bridge's thread made so far, in every process of the node."""
        data = b"".join(p.read_bytes() for p in self.counts_dir.iterdir())
        return data.count(b"c"), data.count(b"q")

    def leader_pid(self, timeout: float = 60.0) -> int:
        """The worker running the bridge, once it is connected to Prime's broker."""
        from pnp_integrated.bus.state import read_state
        from pnp_integrated.context import gateway_state

        settings = gateway_state(self.app).settings
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = read_state(settings)
            if state is not None and state.connected:
                return state.pid
            time.sleep(0.2)
        raise SystemExit("the bridge did not connect to Prime's broker")

    def last_outbox_id(self) -> int:
        from sqlalchemy import func, select

        from pnp_integrated.models import OutboxEvent, db

        with self.app.app_context():
            return int(db.session.scalar(select(func.max(OutboxEvent.id))) or 0)

    def outbox_after(self, first_id: int) -> list[tuple[str, float, bool]]:
        """(event id, written at as epoch seconds, sent) of the outbox rows after ``first_id``."""
        from sqlalchemy import select

        from pnp_integrated.models import OutboxEvent, db

        with self.app.app_context():
            rows = db.session.execute(select(OutboxEvent.event_id, OutboxEvent.created_at, OutboxEvent.sent_at)
                                      .where(OutboxEvent.id > first_id).order_by(OutboxEvent.id)).all()
        return [(e, c.replace(tzinfo=dt.UTC).timestamp(), s is not None) for e, c, s in rows]

    def stop(self) -> None:
        self.running.stop()


def measure(node: Node, scenario: str, produce: Any, timeout: float) -> Result:
    """Run ``produce()`` and wait until every event it wrote is at Prime and marked sent; what it cost."""
    pid = node.leader_pid()
    time.sleep(1.0)  # the node settles: start-up events sent, the bridge idle
    first_id = node.last_outbox_id()
    commits0, statements0 = node.counts()
    cpu0 = cpu_seconds(pid)
    with PrimeWatch(node.data_dir / "prime" / "events.sqlite3") as watch:
        note = produce()
        deadline = time.monotonic() + timeout
        while True:
            rows = node.outbox_after(first_id)
            if rows and all(sent and event_id in watch.seen for event_id, _, sent in rows):
                break
            if time.monotonic() > deadline:
                missing = sum(1 for e, _, s in rows if not s or e not in watch.seen)
                raise SystemExit(f"{scenario}: {missing} of {len(rows)} events not at Prime after {timeout:g}s")
            time.sleep(0.05)
        seen = dict(watch.seen)
    cpu = cpu_seconds(pid) - cpu0
    commits1, statements1 = node.counts()
    delays = [seen[e] - written for e, written, _ in rows]
    last_seen = max(seen[e] for e, _, _ in rows)
    return Result(scenario, len(rows), last_seen - min(w for _, w, _ in rows), last_seen - max(w for _, w, _ in rows),
                  delays, commits1 - commits0, statements1 - statements0, cpu, note)


def play_device(node: Node, serial: str) -> str:
    device = SimulatedDevice(serial=serial, pid=PID)
    return PnpAgent(device, node.running.url(""), time_scale=0.0, reload_seconds=0, deadline=300).run().outcome


def play_devices(node: Node, devices: int, concurrency: int) -> str:
    with ThreadPoolExecutor(max_workers=max(1, min(devices, concurrency))) as pool:
        outcomes = list(pool.map(lambda n: play_device(node, f"OUTBOX{n:06d}"), range(devices)))
    done = sum(1 for o in outcomes if o == PROVISIONED)
    return f"{done}/{devices} devices provisioned"


def play_paced(node: Node, devices: int, pause: float = 1.0) -> str:
    outcomes = []
    for n in range(devices):
        if n:
            time.sleep(pause)
        outcomes.append(play_device(node, f"PACED{n:06d}"))
    done = sum(1 for o in outcomes if o == PROVISIONED)
    return f"{done}/{devices} devices provisioned, {pause:g} s apart"


def write_burst(node: Node, events: int, per_commit: int) -> str:
    from pnp_integrated.models import db
    from pnp_integrated.outbox import record_event

    with node.app.app_context():
        for start in range(0, events, per_commit):
            for i in range(start, min(events, start + per_commit)):
                record_event("job.step", {"job": {"id": i, "step": "config", "state": "ended", "attempt": 1}})
            db.session.commit()
    return f"{per_commit} events per transaction"


def format_results(results: list[Result]) -> str:
    header = ["scenario", "events", "s first write -> all at Prime", "s last write -> all at Prime",
              "delay p50 ms", "p99 ms", "max ms", "bridge commits/event", "bridge statements/event",
              "leader CPU ms/event", "note"]
    rows = [header]
    for r in results:
        n = max(1, r.events)
        rows.append([r.scenario, str(r.events), f"{r.seconds:.2f}", f"{r.tail:.2f}",
                     f"{1000 * percentile(r.delays, 0.5):.0f}", f"{1000 * percentile(r.delays, 0.99):.0f}",
                     f"{1000 * max(r.delays, default=0):.0f}", f"{r.commits / n:.3f}", f"{r.statements / n:.2f}",
                     f"{1000 * r.cpu / n:.2f}", r.note])
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |" for row in rows]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=50, help="Open PnP devices of the devices scenario (0: skip)")
    parser.add_argument("--concurrency", type=int, default=10, help="devices playing at a time")
    parser.add_argument("--paced", type=int, default=10, help="devices of the paced scenario (0: skip)")
    parser.add_argument("--events", type=int, default=3000, help="events of the burst scenario (0: skip)")
    parser.add_argument("--per-commit", type=int, default=10, help="events per transaction in the burst")
    parser.add_argument("--workers", type=int, default=1, help="gateway workers of the node")
    parser.add_argument("--database-url", help="the node's database (default: SQLite in its data directory)")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for the events at Prime")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="pnp-bench-outbox-") as tmp:
        node = Node(Path(tmp), args.workers, args.database_url)
        try:
            results = []
            if args.devices:
                results.append(measure(node, "devices", lambda: play_devices(node, args.devices, args.concurrency),
                                       args.timeout))
            if args.paced:
                results.append(measure(node, "paced", lambda: play_paced(node, args.paced), args.timeout))
            if args.events:
                results.append(measure(node, "burst", lambda: write_burst(node, args.events, args.per_commit),
                                       args.timeout))
        finally:
            node.stop()
    package = Path(node.code).parent
    commit = subprocess.run(["git", "-C", str(package), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    if commit and subprocess.run(["git", "-C", str(package), "status", "--porcelain", "--", "."],
                                 capture_output=True, text=True).stdout.strip():
        commit += " and changes"
    print(f"node: {args.workers} worker(s), {'PostgreSQL' if args.database_url else 'SQLite'}, code of {package}"
          f"{f' (commit {commit})' if commit else ''}")
    print(format_results(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""CNS gateway benchmark: day-0 flows per second and idle sessions held, plain and TLS, with server RSS per session.

    python bench/cns.py                          # starts its own node(s) on moved ports in a temporary data dir
    python bench/cns.py --env node.env           # a running node: PNP_* settings, one KEY=VALUE a line
    python bench/cns.py --sessions 10000 --flows 1000 --processes 4

Simulated devices (pnp_integrated.devsim.cns) run in several client processes under gevent, because one process
holds at most ~19,000 sockets here. Every device goes through a dispatcher port, as real devices do.

1. Day-0 flows: ``--flows`` devices per transport do their whole day 0 (initial configuration, image agent, the
   job's configuration and post-PnP configuration pushed over the event connection, write memory). The flow rate is
   completed day-0 flows per second of wall time for the node; p50/p99 per step are the device's view.
2. Idle sessions: ``--sessions`` devices per transport connect (dispatcher -> REDIRECT -> HELLO -> WELCOME ->
   SUBSCRIBE) and stay idle. RSS of the gunicorn worker processes is read (psutil) before and after; the increase
   divided by the sessions each worker holds is the memory of one idle session. Its own node runs one worker for
   this phase, so the sessions of a single worker are measured.

Targets (2 cores): 10,000 sessions per worker, <= 15 KB per idle plain session, <= 35 KB per idle TLS session,
>= 500 complete day-0 flows per second per node. A shared machine makes every number noisy.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pnp_integrated.devsim.node import RunningNode

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TARGETS = {"sessions_per_worker": 10_000, "plain_kb": 15.0, "tls_kb": 35.0, "flows_per_second": 500.0}


# ---- client processes ---------------------------------------------------------------------------------------------
def child_main(spec: dict[str, Any]) -> None:
    """One client process: run day-0 flows, or hold idle sessions until stdin closes; JSON lines on stdout."""
    from gevent import monkey

    monkey.patch_all()
    import gevent
    from gevent.pool import Pool

    from pnp_integrated.devsim.cns import CnsDevice
    from pnp_integrated.devsim.link import CnsLink, dispatch, hello_frame

    host, dispatcher, tls = spec["host"], spec["dispatcher_port"], spec["tls"]
    serials = spec["serials"]
    if spec["mode"] == "flows":
        pool = Pool(spec["concurrency"])
        devices = [CnsDevice(s, host, dispatcher, http_port=spec["http_port"], tls=tls, timeout=60.0)
                   for s in serials]
        reports = pool.map(lambda d: d.run(600), devices)
        out = [{"ok": r.ok, "detail": r.detail, "timings": r.timings, "seconds": r.seconds} for r in reports]
        print(json.dumps({"reports": out}), flush=True)
        return

    links: list[Any] = []
    failures: list[str] = []
    busy_retries = 0

    def hold(serial: str) -> None:
        nonlocal busy_retries
        for _attempt in range(30):
            try:
                where = dispatch(host, dispatcher, serial, tls=tls, timeout=120)
                if where.command == "BUSY":
                    busy_retries += 1
                    gevent.sleep(1.0)
                    continue
                link = CnsLink.open(where.get("Host") or host, int(where.get("Port") or 0), tls=tls, timeout=120)
                link.send(hello_frame(serial, keepalive="900,3"))
                answer = link.receive()
                if answer.command == "BUSY":
                    link.close()
                    busy_retries += 1
                    gevent.sleep(1.0)
                    continue
                if answer.command != "WELCOME":
                    failures.append(f"{serial}: {answer.command} {answer.get('Code', '')}")
                    link.close()
                    return
                link.command("SUBSCRIBE", {"Subject": "cisco.mgmt.cns.config.load", "Receipt": "s"})
                if link.receive().command != "RECEIPT":
                    failures.append(f"{serial}: SUBSCRIBE not receipted")
                links.append(link)
                return
            except Exception as exc:  # a benchmark reports every failure, whatever it is
                failures.append(f"{serial}: {type(exc).__name__}: {exc}")
                return
        failures.append(f"{serial}: still BUSY after 30 tries")

    pool = Pool(spec["concurrency"])
    for serial in serials:
        pool.spawn(hold, serial)
    pool.join()
    print(json.dumps({"held": len(links), "failures": failures[:20], "failed": len(failures),
                      "busy_retries": busy_retries}), flush=True)
    gevent.get_hub().threadpool.spawn(sys.stdin.read).get()  # hold until the parent closes our stdin
    for link in links:
        link.close()


def run_children(mode: str, serials: list[str], node: dict[str, Any], tls: bool, processes: int,
                 concurrency: int) -> tuple[list[subprocess.Popen[str]], list[dict[str, Any]]]:
    """Start ``processes`` clients sharing ``serials``; their first JSON line each (children left running)."""
    children = []
    for i in range(processes):
        spec = {"mode": mode, "serials": serials[i::processes], "host": node["host"], "tls": tls,
                "dispatcher_port": node["base"] + (2 if tls else 1), "http_port": node["http_port"],
                "concurrency": concurrency}
        children.append(subprocess.Popen([sys.executable, __file__, "--child", json.dumps(spec)],
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT))
    results = []
    for child in children:
        assert child.stdout is not None
        line = child.stdout.readline()
        results.append(json.loads(line) if line else {"failed": 1, "failures": ["client died"], "held": 0,
                                                        "reports": []})
    return children, results


def stop_children(children: list[subprocess.Popen[str]]) -> None:
    for child in children:
        if child.stdin is not None:
            child.stdin.close()
    for child in children:
        try:
            child.wait(30)
        except subprocess.TimeoutExpired:
            child.kill()


# ---- the node -------------------------------------------------------------------------------------------------------
class Node:
    """A node to measure: started here (``pnpp run``) or described by an env file."""

    def __init__(self, env: dict[str, str], running: RunningNode | None = None) -> None:
        self.env = env
        self.running = running
        self.settings = {k[4:].lower(): v for k, v in env.items() if k.startswith("PNP_")}
        self.host = self.settings.get("vip", "127.0.0.1")
        self.base = int(self.settings.get("cns_port_base", 11010))
        self.http_port = int(self.settings.get("http_port", 80))

    @classmethod
    def start(cls, data_dir: Path, workers: int, capacity: int) -> Node:
        from pnp_integrated.devsim.node import NodeDidNotStart, start_node  # not in the gevent-patched children

        try:
            running = start_node(data_dir, workers=workers, cns_port_capacity=capacity)
        except NodeDidNotStart as exc:
            raise SystemExit(f"the node did not start: {str(exc)[-2000:]}") from None
        return cls(running.env, running)

    def stop(self) -> None:
        if self.running is not None:
            self.running.stop(timeout=60)

    def status(self, timeout: float = 10.0) -> dict[str, Any]:
        with urllib.request.urlopen(f"http://{self.host}:{self.http_port}/status", timeout=timeout) as resp:
            return json.loads(resp.read())

    def worker_pids(self) -> list[int]:
        for row in self.status(timeout=120)["rows"]:
            if row["service"].startswith("CNS Gateway Dispatcher") and "pids:" in row["info"]:
                return [int(p) for p in row["info"].split("pids:")[1].split(";")[0].strip().split(",")]
        raise SystemExit("the node's status does not list its worker pids")

    def app(self) -> Any:
        from pnp_integrated import create_app

        return create_app({**self.settings, "TESTING": True})


def worker_rss(pids: list[int]) -> dict[int, int]:
    import psutil

    return {pid: psutil.Process(pid).memory_info().rss for pid in pids}


def sessions_per_worker(app: Any, node: dict[str, Any], tls: bool) -> dict[int, int]:
    from sqlalchemy import func, select

    from pnp_integrated.models import DeviceSession, db

    with app.app_context():
        rows = db.session.execute(select(DeviceSession.worker_pid, func.count()).where(
            DeviceSession.closed_at.is_(None), DeviceSession.tls.is_(tls)).group_by(DeviceSession.worker_pid)).all()
        db.session.remove()
    return {int(pid): int(count) for pid, count in rows}


# ---- phases ---------------------------------------------------------------------------------------------------------
def flows_phase(node: Node, count: int, tls: bool, processes: int, concurrency: int, tag: str) -> dict[str, Any]:
    from pnp_integrated.cli.simulate import ensure_demo_profile

    serials = [f"BF{tag}{'T' if tls else 'P'}{i:06d}" for i in range(count)]
    app = node.app()
    with app.app_context():
        ensure_demo_profile(serials, with_image=False)
    started = time.monotonic()
    children, results = run_children("flows", serials, node.__dict__, tls, processes, concurrency)
    elapsed = time.monotonic() - started
    stop_children(children)
    reports = [r for result in results for r in result.get("reports", [])]
    ok = sum(r["ok"] for r in reports)
    failures = [r["detail"] for r in reports if not r["ok"]]
    steps: dict[str, list[float]] = {}
    for r in reports:
        for step, seconds in r["timings"].items():
            steps.setdefault(step, []).append(seconds * 1000)
    return {"ok": ok, "count": count, "seconds": elapsed, "rate": ok / elapsed, "failures": failures, "steps": steps,
            "flow_ms": [r["seconds"] * 1000 for r in reports if r["ok"]]}


def sessions_phase(node: Node, count: int, tls: bool, processes: int, concurrency: int, tag: str) -> dict[str, Any]:
    serials = [f"BS{tag}{'T' if tls else 'P'}{i:06d}" for i in range(count)]
    app = node.app()
    pids = node.worker_pids()
    time.sleep(2)
    before = worker_rss(pids)
    started = time.monotonic()
    children, results = run_children("sessions", serials, node.__dict__, tls, processes, concurrency)
    elapsed = time.monotonic() - started
    time.sleep(3)  # let transient buffers go
    after = worker_rss(pids)
    held = sessions_per_worker(app, node.__dict__, tls)
    stop_children(children)
    deadline = time.monotonic() + 600
    while sum(sessions_per_worker(app, node.__dict__, tls).values()) and time.monotonic() < deadline:
        time.sleep(2)  # the gateway closes the session rows; the next phase must start from an idle node
    per_session = {pid: (after[pid] - before[pid]) / held[pid] for pid in pids if held.get(pid)}
    return {"held": sum(r.get("held", 0) for r in results), "per_worker": held, "count": count,
            "failed": sum(r.get("failed", 0) for r in results),
            "failures": [f for r in results for f in r.get("failures", [])][:5],
            "busy_retries": sum(r.get("busy_retries", 0) for r in results), "seconds": elapsed,
            "kb_per_session": max(per_session.values(), default=0.0) / 1024,
            "rss_mb": {pid: (before[pid] / 2**20, after[pid] / 2**20) for pid in pids}}


def pct(values: list[float], q: float) -> float:
    from pnp_integrated.devsim import percentile

    return percentile(values, q)


def print_table(flows: dict[str, dict[str, Any]], sessions: dict[str, dict[str, Any]], notes: list[str]) -> None:
    w = 14
    print()
    print(f"{'CNS benchmark':<34}{'plain':>{w}}{'TLS':>{w}}   target")
    print("-" * 80)

    def row(label: str, plain: str, tls: str, target: str = "") -> None:
        print(f"{label:<34}{plain:>{w}}{tls:>{w}}   {target}")

    if sessions:
        p, t = sessions.get("plain", {}), sessions.get("tls", {})
        row("sessions held / asked", f"{p.get('held', 0)}/{p.get('count', 0)}",
            f"{t.get('held', 0)}/{t.get('count', 0)}")
        row("sessions per worker (max)", str(max(p.get("per_worker", {0: 0}).values(), default=0)),
            str(max(t.get("per_worker", {0: 0}).values(), default=0)), f">= {TARGETS['sessions_per_worker']:,}")
        row("session setup seconds", f"{p.get('seconds', 0):.0f}", f"{t.get('seconds', 0):.0f}")
        row("server RSS per idle session KB", f"{p.get('kb_per_session', 0):.1f}", f"{t.get('kb_per_session', 0):.1f}",
            f"<= {TARGETS['plain_kb']:g} plain, <= {TARGETS['tls_kb']:g} TLS")
    if flows:
        p, t = flows.get("plain", {}), flows.get("tls", {})
        row("day-0 flows ok / run", f"{p.get('ok', 0)}/{p.get('count', 0)}", f"{t.get('ok', 0)}/{t.get('count', 0)}")
        row("day-0 flows per second (node)", f"{p.get('rate', 0):.1f}", f"{t.get('rate', 0):.1f}",
            f">= {TARGETS['flows_per_second']:g}")
        row("whole flow p50 / p99 ms", f"{pct(p.get('flow_ms', []), .5):.0f}/{pct(p.get('flow_ms', []), .99):.0f}",
            f"{pct(t.get('flow_ms', []), .5):.0f}/{pct(t.get('flow_ms', []), .99):.0f}")
        names = list(dict.fromkeys([*p.get("steps", {}), *t.get("steps", {})]))
        for name in names:
            a, b = p.get("steps", {}).get(name, []), t.get("steps", {}).get(name, [])
            row(f"  {name} p50 / p99 ms", f"{pct(a, .5):.0f}/{pct(a, .99):.0f}", f"{pct(b, .5):.0f}/{pct(b, .99):.0f}")
    print("-" * 80)
    for note in notes:
        print(note)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--env", type=Path, help="PNP_* settings of a running node (KEY=VALUE lines)")
    parser.add_argument("--url", help="base URL of a running node's HTTP port (with --env: overrides its host/port)")
    parser.add_argument("--sessions", type=int, default=10_000, help="idle sessions per transport (0: skip)")
    parser.add_argument("--flows", type=int, default=1000, help="day-0 flows per transport (0: skip)")
    parser.add_argument("--processes", type=int, default=4, help="client processes")
    parser.add_argument("--concurrency", type=int, default=50, help="devices in flight per client process (flows)")
    parser.add_argument("--transports", default="plain,tls", help="plain, tls or both")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child_main(json.loads(args.child))
        return

    transports = [t for t in args.transports.split(",") if t in ("plain", "tls")]
    tag = f"{int(time.time()) % 100000:05d}"
    notes = [f"machine: {os.cpu_count()} cores shared with other work; client processes run on the same cores."]
    flows: dict[str, dict[str, Any]] = {}
    sessions: dict[str, dict[str, Any]] = {}
    own = args.env is None
    workdir = Path(tempfile.mkdtemp(prefix="bench-cns-"))

    def external() -> Node:
        env = dict(os.environ)
        for line in args.env.read_text().splitlines():
            line = line.strip().removeprefix("export ").strip()
            if "=" in line and not line.startswith("#"):
                for pair in line.split():
                    key, _, value = pair.partition("=")
                    env[key] = value
        node = Node(env)
        if args.url:
            from urllib.parse import urlsplit

            parts = urlsplit(args.url)
            node.host, node.http_port = parts.hostname or node.host, parts.port or node.http_port
        return node

    if args.flows:
        node = Node.start(workdir / "flows", workers=2, capacity=5000) if own else external()
        try:
            notes.append(f"flows: node with {node.settings.get('workers', 2)} workers, database "
                         f"{node.settings.get('database_url') or 'SQLite (default)'}")
            for transport in transports:
                print(f"day-0 flows, {transport}: {args.flows} devices ...", flush=True)
                flows[transport] = flows_phase(node, args.flows, transport == "tls", args.processes,
                                               args.concurrency, tag)
                for failure in flows[transport]["failures"][:5]:
                    print(f"  failed: {failure}")
        finally:
            if own:
                node.stop()
    if args.sessions:
        # One worker, so the sessions of a single worker are what is measured; 5 gateway ports share them.
        node = Node.start(workdir / "sessions", workers=1, capacity=args.sessions) if own else external()
        try:
            for transport in transports:
                print(f"idle sessions, {transport}: {args.sessions} devices ...", flush=True)
                sessions[transport] = sessions_phase(node, args.sessions, transport == "tls", args.processes,
                                                     200, tag)
                result = sessions[transport]
                print(f"  held {result['held']}, per worker {result['per_worker']}, RSS MB before/after "
                      f"{ {pid: f'{a:.0f}/{b:.0f}' for pid, (a, b) in result['rss_mb'].items()} }, busy retries "
                      f"{result['busy_retries']}, failed {result['failed']} {result['failures']}", flush=True)
        finally:
            if own:
                node.stop()
    print_table(flows, sessions, notes)


if __name__ == "__main__":
    main()

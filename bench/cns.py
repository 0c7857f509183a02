"""CNS gateway benchmark: day-0 flows per second and idle sessions held, plain and TLS, with server RSS per session.

    python bench/cns.py                          # starts its own node(s) on moved ports in a temporary data dir
    python bench/cns.py --env node.env           # a running node: PNP_* settings, one KEY=VALUE a line
    python bench/cns.py --sessions 10000 --flows 1000 --processes 4
    python bench/cns.py --storm 1000,3000,10000 --transports tls     # every device at once, a fresh node per size
    python bench/cns.py --profile-summary cns-storm-*.txt              # py-spy raw files of a storm, by concern

Simulated devices (pnp_integrated.devsim.cns) run in several client processes under gevent, because one process
holds at most ~19,000 sockets here. Every device goes through a dispatcher port, as real devices do.

1. Day-0 flows: ``--flows`` devices per transport do their whole day 0 (initial configuration, image agent, the
   job's configuration and post-PnP configuration pushed over the event connection, write memory). The flow rate is
   completed day-0 flows per second of wall time for the node; p50/p99 per step are the device's view.
2. Idle sessions: ``--sessions`` devices per transport connect (dispatcher -> REDIRECT -> HELLO -> WELCOME ->
   SUBSCRIBE) and stay idle. RSS of the gunicorn worker processes is read (psutil) before and after; the increase
   divided by the sessions each worker holds is the memory of one idle session. Its own node runs one worker for
   this phase, so the sessions of a single worker are measured.
3. Storm (``--storm N,...``, instead of 1 and 2): N devices arrive at once through the dispatcher of a fresh node
   (``--workers``, port capacity raised so that it does not limit), spread over the client processes, each opening
   its share as fast as it can. A device told BUSY waits the Retry-After the answer gives; on a timeout or a reset it
   backs off on its own (1 s doubling to 10 s, spread out). It holds its session (WELCOME, SUBSCRIBE receipted) idle
   until all hold one. Per size: seconds until all hold a session, BUSY answers and devices told BUSY, gateway CPU
   per session (gunicorn master and workers, from the moment the devices are let go until the last one holds a
   session), client CPU per session, gateway RSS per held session. ``--py-spy`` profiles every worker during each
   storm (raw files in ``--profile-dir``); ``--profile-summary`` sums such files by concern and by function.
   ``--storm-in-flight K`` lets at most K devices per client process be on their way at once, for comparing with
   a fleet that arrives spread out. A real device has a CPU of its own; thousands of simulated ones share a core:
   with ``--client-handshakes K`` at most K devices per client process are between their connect and the end of
   their TLS handshake at once, the others waiting to connect (0, the default: no bound; a client process then runs
   a thousand handshakes at once, each takes seconds to come back to, and the gateway rightly closes those that
   took it more than its 10 s); ``--node-nice N`` runs the node at a lower CPU priority than the devices. Also per size:
   connections closed after their handshake without any answer, the leader lease's holder changes during the
   storm (the lease row is read every half second) and its term before and after.

Targets (2 cores): 10,000 sessions per worker, <= 15 KB per idle plain session, <= 35 KB per idle TLS session,
>= 500 complete day-0 flows per second per node; a storm of 10,000 TLS devices all holding a session within 30 s, at
<= 1.5 ms gateway CPU and <= 20 KB RSS per TLS session. A shared machine makes every number noisy.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
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

from bench.proc import gateway_cpu_seconds, gateway_rss_bytes, gateway_workers  # noqa: E402

TARGETS = {"sessions_per_worker": 10_000, "plain_kb": 15.0, "tls_kb": 35.0, "flows_per_second": 500.0,
           "storm_devices": 10_000, "storm_seconds": 30.0, "storm_cpu_ms": 1.5, "storm_tls_kb": 20.0}


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


# ---- storm: every device at once ----------------------------------------------------------------------------------
STORM_BACKOFF_FIRST, STORM_BACKOFF_LONGEST = 1.0, 10.0  # a device's own back-off when the gateway names no wait
STORM_SOCKETS_PER_PROCESS = 15_000  # a device holds at most 2 sockets at once (dispatcher, gateway port)


def retry_after(frame: Any) -> float:
    """The wait a BUSY or ERROR asks for, in seconds, as the gateway wrote it (any jitter is the gateway's)."""
    try:
        return max(0.0, float(frame.get("Retry-After") or 0))
    except ValueError:
        return 0.0


def storm_child(spec: dict[str, Any]) -> None:
    """One storm client: ready line, then on "go" every device at once until each holds a session; one JSON line;
    the sessions are held until stdin closes."""
    from gevent import monkey

    monkey.patch_all()
    import random
    import resource
    import socket
    import ssl

    import gevent
    from gevent.pool import Pool

    from pnp_integrated.cns.codec import CnsProtocolError
    from pnp_integrated.devsim.link import CnsLink, LinkClosed, hello_frame

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 20_000)), hard))
    host, dispatcher, tls, timeout = spec["host"], spec["dispatcher_port"], spec["tls"], spec["device_timeout"]
    context = None
    if tls:  # one client context for every device: the devices' handshakes are measured, not context set-up
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    from gevent.lock import BoundedSemaphore

    # A device opens its connection and shakes hands on a CPU of its own: with a bound, at most that many devices of
    # this process are between their connect and the end of their handshake at once (the others wait to connect).
    handshaking = BoundedSemaphore(spec["client_handshakes"]) if spec.get("client_handshakes") else None
    links: list[Any] = []
    held_at: list[float] = []
    busy_counts: list[int] = []
    errors: dict[str, int] = {}
    failures: list[str] = []
    tries = [0, 0]  # dispatcher HELLOs, gateway-port HELLOs
    unanswered = [0]  # connections closed by the gateway after the handshake without any answer

    def open_link(to_host: str, port: int, role: str, stage: list[str]) -> CnsLink:
        if handshaking is None:
            return connect(to_host, port, role, stage)
        with handshaking:
            return connect(to_host, port, role, stage)

    def connect(to_host: str, port: int, role: str, stage: list[str]) -> CnsLink:
        stage[0] = f"{role} connect"
        raw = socket.create_connection((to_host, port), timeout=timeout)
        if context is not None:
            stage[0] = f"{role} TLS handshake"
            try:
                raw = context.wrap_socket(raw, server_hostname=to_host)
            except BaseException:
                raw.close()
                raise
        stage[0] = f"{role} answer"
        return CnsLink(to_host, port, tls, timeout, sock=raw)

    def arrive(serial: str, deadline: float) -> None:
        busy = 0
        pause = STORM_BACKOFF_FIRST
        stage = [""]  # where the device is, to say where a timeout or a reset hit it
        try:
            while time.monotonic() < deadline:
                wait = 0.0
                link = None
                tries[0] += 1
                try:
                    with open_link(host, dispatcher, "dispatcher", stage) as ask:
                        ask.send(hello_frame(serial))
                        where = ask.receive()
                    if where.command == "REDIRECT":
                        tries[1] += 1
                        link = open_link(where.get("Host") or host, int(where.get("Port") or 0), "gateway", stage)
                        link.send(hello_frame(serial, keepalive="900,3"))
                        where = link.receive()
                        if where.command == "WELCOME":
                            stage[0] = "gateway RECEIPT"
                            link.command("SUBSCRIBE", {"Subject": "cisco.mgmt.cns.config.load", "Receipt": "s"})
                            where = link.receive()
                            if where.command == "RECEIPT":
                                held_at.append(time.monotonic())
                                links.append(link)
                                link = None
                                return
                    if where.command == "BUSY":
                        busy += 1
                        wait = retry_after(where)
                    else:
                        kind = f"{stage[0]}: {where.command} {where.get('Code', '')}".strip()
                        errors[kind] = errors.get(kind, 0) + 1
                        wait = retry_after(where)
                except (OSError, LinkClosed, CnsProtocolError) as exc:  # TimeoutError is an OSError
                    kind = f"{stage[0]}: {type(exc).__name__}"
                    errors[kind] = errors.get(kind, 0) + 1
                    if stage[0].endswith((" answer", " RECEIPT")) and not isinstance(exc, TimeoutError):
                        unanswered[0] += 1  # handshake done, then closed without a frame for the device
                finally:
                    if link is not None:
                        link.close()
                if not wait:  # the gateway named no wait: the device backs off on its own, spread out
                    wait = pause * random.uniform(0.5, 1.5)
                    pause = min(pause * 2, STORM_BACKOFF_LONGEST)
                gevent.sleep(wait)
            failures.append(f"{serial}: no session within the storm's time")
        finally:
            busy_counts.append(busy)

    print(json.dumps({"ready": True}), flush=True)
    sys.stdin.readline()  # "go": nothing else runs yet, so a blocking read costs nothing
    went = time.monotonic()
    used = resource.getrusage(resource.RUSAGE_SELF)
    deadline = went + spec["max_seconds"]
    # All at once; or, with in_flight, at most that many devices of this process between arrival and session.
    spawn = Pool(spec["in_flight"]).spawn if spec.get("in_flight") else gevent.spawn
    greenlets = [spawn(arrive, serial, deadline) for serial in spec["serials"]]
    gevent.joinall(greenlets)
    after = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({"held_at": held_at, "went": went, "busy_answers": sum(busy_counts),
                      "busy_devices": sum(1 for b in busy_counts if b), "errors": errors, "failed": len(failures),
                      "dispatcher_hellos": tries[0], "gateway_hellos": tries[1], "unanswered": unanswered[0],
                      "failures": failures[:5],
                      "cpu": after.ru_utime + after.ru_stime - used.ru_utime - used.ru_stime}), flush=True)
    gevent.get_hub().threadpool.spawn(sys.stdin.read).get()  # hold until the parent closes our stdin
    for link in links:
        link.close()


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
    def start(cls, data_dir: Path, workers: int, capacity: int, **overrides: Any) -> Node:
        from pnp_integrated.devsim.node import NodeDidNotStart, start_node  # not in the gevent-patched children

        try:
            running = start_node(data_dir, workers=workers, cns_port_capacity=capacity, **overrides)
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


GATEWAY_PORTS = 5  # gateway ports per transport


def node_code(worker: int) -> str:
    """Which checkout a node's worker runs (gunicorn's --chdir) at which commit, and whether it had local changes:
    a node started from a checkout runs whatever that checkout holds at the moment."""
    args = Path(f"/proc/{worker}/cmdline").read_bytes().decode(errors="replace").split("\0")
    checkout = args[args.index("--chdir") + 1] if "--chdir" in args[:-1] else str(ROOT)
    git = ["git", "-C", checkout]
    try:
        commit = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                check=True).stdout.strip()
        changed = subprocess.run([*git, "status", "--porcelain", "--untracked-files=no", "--", "pnp_integrated"],
                                 capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return checkout
    return f"{checkout} at {commit}{' with uncommitted changes to pnp_integrated' if changed else ''}"


class LeaseWatch:
    """Reads the node's leader lease row every half second while a storm runs: holder changes and terms."""

    def __init__(self, node: Node) -> None:
        import threading

        self.app = node.app()
        self.changes = 0
        self.terms: list[int] = []
        self._holder: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def read(self) -> tuple[str, int] | None:
        from pnp_integrated.bus.lease import LEADER
        from pnp_integrated.models import LeaderLease, db

        with self.app.app_context():
            row = db.session.get(LeaderLease, LEADER)
            found = (row.holder, row.term) if row is not None else None
            db.session.remove()
        return found

    def _watch(self) -> None:
        while not self._stop.wait(0.5):
            try:
                found = self.read()
            except Exception:  # a busy database: read again at the next tick
                continue
            if found is None:
                continue
            holder, term = found
            if self._holder is not None and holder != self._holder:
                self.changes += 1
            self._holder = holder
            self.terms.append(term)

    def start(self) -> LeaseWatch:
        found = self.read()
        if found is not None:
            self._holder, term = found
            self.terms.append(term)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)


def storm_phase(workdir: Path, count: int, tls: bool, args: argparse.Namespace, run: int,
                tag: str) -> dict[str, Any]:
    """``count`` devices arrive at once through the dispatcher of a fresh node and stay until all hold a session."""
    transport = "tls" if tls else "plain"
    name = f"{transport}-{count}-run{run}"
    capacity = max(500, math.ceil(count * 1.2 / GATEWAY_PORTS))  # headroom: capacity must not be what limits
    overrides = {"database_url": args.database_url} if args.database_url else {}
    node = Node.start(workdir / f"storm-{name}", workers=args.workers, capacity=capacity, **overrides)
    children: list[subprocess.Popen[str]] = []
    profilers: list[subprocess.Popen[bytes]] = []
    try:
        assert node.running is not None
        root = node.running.process.pid
        booted = time.monotonic() + 120
        while len(gateway_workers(root)) < args.workers and time.monotonic() < booted:
            time.sleep(0.5)
        workers = gateway_workers(root)
        code = node_code(workers[0]) if workers else "unknown"
        if args.node_nice:  # the devices are thousands of machines in reality: the node is what waits for CPU here
            from bench.proc import process_tree

            for pid in process_tree(root):
                os.setpriority(os.PRIO_PROCESS, pid, args.node_nice)
        serials = [f"ST{tag}{transport[0].upper()}{run}{i:06d}" for i in range(count)]
        processes = max(args.processes, math.ceil(2 * count / STORM_SOCKETS_PER_PROCESS))
        for i in range(processes):
            spec = {"mode": "storm", "serials": serials[i::processes], "host": node.host, "tls": tls,
                    "dispatcher_port": node.base + (2 if tls else 1), "device_timeout": args.device_timeout,
                    "max_seconds": args.storm_seconds, "in_flight": args.storm_in_flight,
                    "client_handshakes": args.client_handshakes}
            children.append(subprocess.Popen([sys.executable, __file__, "--child", json.dumps(spec)],
                                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT))
        for child in children:
            assert child.stdout is not None
            if not child.stdout.readline():
                raise SystemExit("a storm client died before it was ready")
        time.sleep(3)  # the node settles after its start; the clients are idle
        idle_cpu, idle_from = gateway_cpu_seconds(root), time.monotonic()
        time.sleep(5)  # what the idle node spends anyway (leases, status readings), to judge small storms by
        idle_cpu = (gateway_cpu_seconds(root) - idle_cpu) / (time.monotonic() - idle_from)
        rss_before = gateway_rss_bytes(root)
        if args.py_spy:
            args.profile_dir.mkdir(parents=True, exist_ok=True)
            for pid in workers:
                out = args.profile_dir / f"cns-storm-{name}-worker{pid}.txt"
                profilers.append(subprocess.Popen([args.py_spy, "record", "--pid", str(pid), "-r", "100",
                                                   "--format", "raw", "-o", str(out)],
                                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            time.sleep(2)  # attached before the devices come
        watch = LeaseWatch(node).start()
        load_before = os.getloadavg()[0]
        cpu_before = gateway_cpu_seconds(root)
        went = time.monotonic()
        for child in children:
            assert child.stdin is not None
            child.stdin.write("go\n")
            child.stdin.flush()
        results = []
        for child in children:
            assert child.stdout is not None
            line = child.stdout.readline()
            results.append(json.loads(line) if line else {"held_at": [], "failed": len(serials) // processes,
                                                          "failures": ["client died"]})
        cpu_used = gateway_cpu_seconds(root) - cpu_before
        load_after = os.getloadavg()[0]
        watch.stop()
        for profiler in profilers:
            profiler.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
        for profiler in profilers:
            profiler.wait(120)
        time.sleep(3)  # let transient buffers go
        rss_after = gateway_rss_bytes(root)
    finally:
        for profiler in profilers:
            if profiler.poll() is None:
                profiler.kill()
        stop_children(children)
        node.stop()
    held = sorted(t - went for r in results for t in r.get("held_at", []))
    errors: dict[str, int] = {}
    for r in results:
        for kind, n in r.get("errors", {}).items():
            errors[kind] = errors.get(kind, 0) + n
    seconds = held[-1] if held else 0.0
    return {"transport": transport, "count": count, "held": len(held), "seconds": seconds,
            "rate": len(held) / seconds if seconds else 0.0, "p50": pct(held, .5), "p99": pct(held, .99),
            "busy_answers": sum(r.get("busy_answers", 0) for r in results),
            "busy_devices": sum(r.get("busy_devices", 0) for r in results), "errors": errors,
            "failed": sum(r.get("failed", 0) for r in results),
            "tries": sum(r.get("dispatcher_hellos", 0) for r in results) / count,
            "gateway_tries": sum(r.get("gateway_hellos", 0) for r in results) / count,
            "load": (load_before, load_after), "idle_cpu_ms_per_s": idle_cpu * 1000,
            "failures": [f for r in results for f in r.get("failures", [])][:5],
            "gateway_cpu_ms": cpu_used * 1000 / count, "gateway_cores": cpu_used / seconds if seconds else 0.0,
            "client_cpu_ms": sum(r.get("cpu", 0) for r in results) * 1000 / count,
            "rss_kb": (rss_after - rss_before) / 1024 / count, "processes": processes,
            "capacity": capacity, "workers": len(workers), "code": code,
            "unanswered": sum(r.get("unanswered", 0) for r in results),
            "late_receipts": errors.get("gateway RECEIPT: TimeoutError", 0),
            "lease_moves": watch.changes, "terms": (watch.terms[0], watch.terms[-1]) if watch.terms else (0, 0)}


STORM_COLUMNS = (("transport", 9), ("devices", 8), ("held", 7), ("s to all", 9), ("sess/s", 7), ("p50/p99 s", 13),
                 ("BUSY", 8), ("BUSY'd", 7), ("errors", 7), ("no answer", 10), ("no RECEIPT", 11),
                 ("lease moves", 12), ("terms", 7), ("tries", 6), ("gw CPU ms", 10), ("gw cores", 9),
                 ("cl CPU ms", 10), ("gw RSS KB", 10))


def storm_row(r: dict[str, Any]) -> str:
    cells = (r["transport"], f"{r['count']:,}", f"{r['held']:,}", f"{r['seconds']:.1f}", f"{r['rate']:.0f}",
             f"{r['p50']:.1f}/{r['p99']:.1f}", str(r["busy_answers"]), str(r["busy_devices"]),
             str(sum(r["errors"].values())), str(r["unanswered"]), str(r["late_receipts"]), str(r["lease_moves"]),
             f"{r['terms'][0]}-{r['terms'][1]}", f"{r['tries']:.1f}", f"{r['gateway_cpu_ms']:.2f}",
             f"{r['gateway_cores']:.2f}", f"{r['client_cpu_ms']:.2f}", f"{r['rss_kb']:.1f}")
    return "".join(f"{cell:>{width}}" for cell, (_, width) in zip(cells, STORM_COLUMNS, strict=True))


def print_storm_table(results: list[dict[str, Any]], notes: list[str]) -> None:
    print()
    print("".join(f"{title:>{width}}" for title, width in STORM_COLUMNS))
    print("-" * sum(width for _, width in STORM_COLUMNS))
    for r in results:
        print(storm_row(r))
    print("-" * sum(width for _, width in STORM_COLUMNS))
    print("s to all: from the moment every device is let go until the last one holds a session (WELCOME + "
          "SUBSCRIBE receipted);\nBUSY: answers; BUSY'd: devices told BUSY at least once; errors: timeouts, resets, "
          "other answers;\nno answer: connections closed by the gateway after their handshake without a frame; "
          "no RECEIPT: WELCOMEd devices whose SUBSCRIBE was not receipted within the device timeout;\n"
          "lease moves: leader lease holder changes seen during the storm; terms: its term before and after;\n"
          "tries: dispatcher HELLOs per device (each a TLS handshake on TLS);\n"
          "CPU and RSS per session: gateway = gunicorn master + workers, client = the simulated devices' processes;\n"
          "gw cores: the gateway's CPU seconds per second of the storm (2 is all of this machine).")
    print(f"targets: all {TARGETS['storm_devices']:,} TLS devices within {TARGETS['storm_seconds']:g} s, "
          f"<= {TARGETS['storm_cpu_ms']:g} ms gateway CPU per TLS session, <= {TARGETS['storm_tls_kb']:g} KB RSS per "
          "idle TLS session")
    for note in notes:
        print(note)


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


# ---- profile summary ----------------------------------------------------------------------------------------------
def _frame_name(frame: str) -> str:
    """``function (file)`` of a py-spy raw frame ``function (path:line)``, the path from its package on."""
    function, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    for anchor in ("site-packages/", "pnp_integrated/"):
        if anchor in path:
            path = ("pnp_integrated/" if anchor == "pnp_integrated/" else "") + path.split(anchor, 1)[1]
            break
    else:
        if "/lib/python3" in path:
            path = path.split("/lib/python3", 1)[1].split("/", 1)[-1]
    return f"{function} ({path})"


def read_profiles(paths: list[Path]) -> list[tuple[list[str], int]]:
    """(frames root first, samples) of every stack in py-spy raw files."""
    stacks = []
    for path in paths:
        for line in path.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            if stack and count.isdigit():
                stacks.append(([_frame_name(f) for f in stack.split(";")], int(count)))
    return stacks


# A sample's concern, for the summary: the first rule whose frame test matches a frame of the stack, from the leaf
# up, except that a TLS handshake owns everything below it (gevent's waits inside a handshake are the handshake's).
DRIVER_CALLS = ("DefaultDialect.do_execute ", "DefaultDialect.do_executemany ", "DefaultDialect.do_commit ",
                "DefaultDialect.do_rollback ", "_CooperativeCursor.execute.<locals>", "Pool._do_return_conn ")
CONCERNS: tuple[tuple[str, Any], ...] = (
    ("TLS handshake", lambda f: f.startswith(("SSLSocket.do_handshake ", "tls_handshake ", "SSLContext.wrap_socket "))),
    ("database driver (SQLite)", lambda f: f.startswith(DRIVER_CALLS) or "(sqlite3/" in f or "(psycopg" in f),
    ("logging", lambda f: "(logging/" in f or "(pnp_integrated/logs.py)" in f),
    ("metrics", lambda f: "(prometheus_client/" in f or "(pnp_integrated/metrics" in f),
    ("CNS codec", lambda f: any(m in f for m in ("(pnp_integrated/cns/codec.py)", "(pnp_integrated/cns/session.py)",
                                                   "(pnp_integrated/framing.py)", "(pnp_integrated/cns/messages.py)"))),
    ("SQLAlchemy ORM", lambda f: "(sqlalchemy/orm/" in f),
    ("SQLAlchemy Core (SQL, engine, pool)", lambda f: "(sqlalchemy/" in f),
    ("TLS and socket I/O", lambda f: any(m in f for m in ("(gevent/ssl.py)", "(gevent/_ssl3.py)", "(ssl.py)",
                                                            "(gevent/_socket3.py)", "(gevent/_socketcommon.py)",
                                                            "(socket.py)"))),
    ("gevent scheduling", lambda f: any(m in f for m in ("(gevent/hub.py)", "(gevent/_hub_primitives.py)",
                                                           "(gevent/_abstract_linkable.py)", "(gevent/event.py)",
                                                           "(gevent/timeout.py)", "(gevent/lock.py)",
                                                           "(gevent/_semaphore.py)", "(gevent/greenlet.py)",
                                                           "(gevent/_greenlet_primitives.py)", "(gevent/pool.py)",
                                                           "(gevent/baseserver.py)", "(gevent/server.py)",
                                                           "(gevent/thread.py)", "(gevent/_threading.py)",
                                                           "(gevent/threadpool.py)", "(greenlet/"))),
    ("Flask (app context)", lambda f: "(flask/" in f or "(werkzeug/" in f or "(flask_sqlalchemy/" in f),
    ("gateway code (pnp_integrated, own time)", lambda f: "(pnp_integrated/" in f),
)
THREAD_POOL_ROOT = "_WorkerGreenlet.run (gevent/threadpool.py)"  # a pool thread: waits for a lock or for work


def concern_of(frames: list[str]) -> str:
    if any(CONCERNS[0][1](f) for f in frames):
        return CONCERNS[0][0]
    for frame in reversed(frames):
        for name, matches in CONCERNS[1:]:
            if matches(frame):
                return name
    return "other (standard library, other packages)"


def print_profile_summary(paths: list[Path]) -> None:
    """Self and cumulative shares of the event-loop samples, by concern and by function (thread-pool threads,
    which wait for the SQLite write lock or for work, are counted apart: py-spy takes a woken waiter for busy)."""
    stacks = read_profiles(paths)
    pool = sum(n for frames, n in stacks if frames[0] == THREAD_POOL_ROOT)
    stacks = [(frames, n) for frames, n in stacks if frames[0] != THREAD_POOL_ROOT]
    total = sum(n for _, n in stacks) or 1
    own: dict[str, int] = {}
    within: dict[str, int] = {}
    concern_own: dict[str, int] = {}
    concern_within: dict[str, int] = {}
    for frames, n in stacks:
        own[frames[-1]] = own.get(frames[-1], 0) + n
        for name in set(frames):
            within[name] = within.get(name, 0) + n
        concern = concern_of(frames)
        concern_own[concern] = concern_own.get(concern, 0) + n
        for name, matches in CONCERNS:
            if any(matches(f) for f in frames):
                concern_within[name] = concern_within.get(name, 0) + n
    print(f"{total} event-loop samples in {len(paths)} files ({pool} more in thread-pool threads, left out)")
    print(f"\n{'concern':<44}{'self %':>8}{'cumulative %':>14}")
    for name in sorted(concern_own, key=lambda c: -concern_own[c]):
        # Plumbing is under everything (the server, the loop, the gateway's own frames): no cumulative figure.
        plumbing = name in ("TLS and socket I/O", "gevent scheduling") or name.startswith(("gateway", "other"))
        cumulative = "" if plumbing else f"{100 * concern_within.get(name, 0) / total:.1f}"
        print(f"{name:<44}{100 * concern_own[name] / total:>8.1f}{cumulative:>14}")
    gateway = {name: n for name, n in within.items() if "(pnp_integrated/" in name}
    for title, table in (("self", own), ("cumulative", within), ("cumulative, gateway code only", gateway)):
        print(f"\ntop functions by {title} time")
        for name, n in sorted(table.items(), key=lambda e: -e[1])[:30]:
            print(f"{100 * n / total:6.1f} %  {name}")

def storm_main(args: argparse.Namespace, transports: list[str]) -> None:
    sizes = [int(size) for size in args.storm.replace("_", "").split(",") if size]
    tag = f"{int(time.time()) % 100000:05d}"
    workdir = Path(tempfile.mkdtemp(prefix="bench-cns-storm-"))
    results = []
    for transport in transports:
        for count in sizes:
            for run in range(1, args.repeat + 1):
                print(f"storm, {transport}: {count} devices at once (run {run}) ...", flush=True)
                result = storm_phase(workdir, count, transport == "tls", args, run, tag)
                results.append(result)
                print("".join(f"{title:>{width}}" for title, width in STORM_COLUMNS))
                print(storm_row(result), flush=True)
                kinds = ", ".join(f"{kind} {n}" for kind, n in sorted(result["errors"].items(), key=lambda e: -e[1]))
                print(f"  {result['processes']} client processes, {result['workers']} workers, port capacity "
                      f"{result['capacity']}, device timeout {args.device_timeout:g} s, "
                      f"in flight per client process {args.storm_in_flight or 'all'}, client handshakes at "
                      f"once per process {args.client_handshakes or 'all'}, node nice {args.node_nice}; "
                      f"gateway-port HELLOs per "
                      f"device {result['gateway_tries']:.2f}; idle node {result['idle_cpu_ms_per_s']:.0f} ms CPU/s; "
                      f"load average {result['load'][0]:.1f} before, {result['load'][1]:.1f} after; "
                      f"errors: {kinds or 'none'}; failed {result['failed']} "
                      f"{result['failures'][:2]}\n  node code: {result['code']}", flush=True)
    notes = [f"machine: {os.cpu_count()} cores shared with other work; client processes run on the same cores.",
             f"node: {args.workers} workers, database {args.database_url or 'SQLite (default)'}"
             f"{', py-spy attached to every worker' if args.py_spy else ''}."]
    print_storm_table(results, notes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--env", type=Path, help="PNP_* settings of a running node (KEY=VALUE lines)")
    parser.add_argument("--url", help="base URL of a running node's HTTP port (with --env: overrides its host/port)")
    parser.add_argument("--sessions", type=int, default=10_000, help="idle sessions per transport (0: skip)")
    parser.add_argument("--flows", type=int, default=1000, help="day-0 flows per transport (0: skip)")
    parser.add_argument("--processes", type=int, default=4, help="client processes")
    parser.add_argument("--concurrency", type=int, default=50, help="devices in flight per client process (flows)")
    parser.add_argument("--transports", default="plain,tls", help="plain, tls or both")
    parser.add_argument("--storm", help="storm sizes, e.g. 1000,3000,10000: that many devices at once, each size on "
                        "a fresh node (the other phases are skipped)")
    parser.add_argument("--repeat", type=int, default=1, help="storm: runs of each size")
    parser.add_argument("--workers", type=int, default=2, help="storm: gunicorn workers of the node")
    parser.add_argument("--database-url", help="storm: the node's database (default: SQLite in its data dir)")
    parser.add_argument("--device-timeout", type=float, default=120.0,
                        help="storm: seconds a device waits for a connection, a handshake or an answer")
    parser.add_argument("--storm-seconds", type=float, default=600.0,
                        help="storm: a device without a session after this long gives up")
    parser.add_argument("--storm-in-flight", type=int, default=0,
                        help="storm: at most this many devices per client process on their way to a session at once "
                        "(default: all of them)")
    parser.add_argument("--node-nice", type=int, default=0,
                        help="storm: nice value of the node's processes, so the simulated devices (which share its "
                        "cores) are served first, as thousands of real devices would be by their own CPUs")
    parser.add_argument("--client-handshakes", type=int, default=0,
                        help="storm: devices of each client process in their connect and TLS handshake at once "
                        "(0: no bound)")
    parser.add_argument("--py-spy", help="storm: py-spy executable; profile every worker during each storm")
    parser.add_argument("--profile-dir", type=Path, default=Path("."), help="storm: where the profiles go")
    parser.add_argument("--profile-summary", nargs="+", type=Path, metavar="FILE",
                        help="summarise py-spy raw profiles (self and cumulative time by concern and function)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        spec = json.loads(args.child)
        if spec["mode"] == "storm":
            storm_child(spec)
        else:
            child_main(spec)
        return
    if args.profile_summary:
        print_profile_summary(args.profile_summary)
        return

    transports = [t for t in args.transports.replace("both", "plain,tls").split(",") if t in ("plain", "tls")]
    if args.storm:
        if args.env is not None:
            parser.error("--storm starts a fresh node for every size; it cannot use --env")
        storm_main(args, transports)
        return
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

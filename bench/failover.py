"""HA failover benchmark in the namespace lab: how long devices go without a gateway when the active node dies.

It builds its own lab (``pnpp lab``: two Prime nodes, a devices namespace, shared PostgreSQL; keepalived moves the
VIP with advert_int 1 by default; ``--standalone``: a standalone gateway pair with its own VIP, moved by keepalived or
the gateways' built-in mover, and Prime servers of its own, ``--prime-ha`` none, vip or different-ip), connects
``--devices`` TLS CNS devices that hold their sessions (spread over client processes of at most ``--per-client``
devices, each with its own 20,000 descriptor limit), starts a small mixed fleet mid-provisioning, then kills every
process of the active node (gateway) and unplugs it. Printed:

- VIP arrival -> ACTIVE: from the other node's log (the follower's "VIP arrived" to "gateway is now ACTIVE");
- device-visible outage per protocol: probes from the devices' network open a new CNS session (dispatcher, HELLO,
  WELCOME) and ask ``GET /pnp/HELLO`` every 100 ms; the outage is the kill to the first success after it;
- sessions back: the kill to the moment all ``--devices`` held sessions are up again (they notice the death by
  their CNS keepalive, ``--keepalive`` seconds, which is part of the figure);
- lost jobs and events: every fleet device finished, no job failed or is left running, every outbox event
  reached a Prime sink.

    .venv/bin/python bench/failover.py --devices 10000
    .venv/bin/python bench/failover.py --devices 10000 --standalone --mover builtin --prime-ha different-ip

Needs root. Targets: ACTIVE within 1 s of the VIP arriving; outage at most 5 s; 10,000 TLS devices back within 15 s.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import re
import resource
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


from bench.proc import gateway_cpu_seconds  # noqa: E402
from pnp_integrated.config import Settings  # noqa: E402
from pnp_integrated.devsim.link import CnsLink, dispatch, hello_frame  # noqa: E402
from pnp_integrated.lab import HaLab  # noqa: E402
from pnp_integrated.lab.standalone import StandaloneLab  # noqa: E402

PREFIX, SUBNET = "pnpb", "10.76.0"
PORTS = Settings()  # the lab's nodes keep the default ports
LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})")


def log_time(line: str) -> float | None:
    found = LOG_TIME.match(line)
    if not found:
        return None
    return dt.datetime.strptime(found.group(1), "%Y-%m-%d %H:%M:%S,%f").replace(tzinfo=dt.UTC).timestamp()


def vip_to_active(lab: HaLab, node: str, after: float) -> float | None:
    """Seconds from the VIP arriving on ``node`` to its gateway turning ACTIVE (first time after ``after``)."""
    arrived = active = None
    for line in (Path(lab.plan.node(node).data_dir) / "node.log").read_text(errors="replace").splitlines():
        at = log_time(line)
        if at is None or at < after:
            continue
        if arrived is None and "arrived on this node" in line:
            arrived = at
        elif arrived is not None and active is None and "gateway is now ACTIVE" in line:
            active = at
    return active - arrived if arrived is not None and active is not None else None


class Prober:
    """Asks the VIP for a new CNS session and an Open PnP HELLO every 100 ms; remembers each answer's time."""

    def __init__(self, lab: HaLab) -> None:
        self.vip = lab.plan.vip
        self.results: dict[str, list[tuple[float, bool]]] = {"cns": [], "pnp": []}
        self._stop = threading.Event()

    def cns(self) -> bool:
        try:
            where = dispatch(self.vip, PORTS.dispatcher_plain_port, "PROBE", timeout=1.0)
            if where.command != "REDIRECT":
                return False
            with CnsLink.open(self.vip, int(where.get("Port", "0")), timeout=1.0) as link:
                link.send(hello_frame(f"PROBE{time.monotonic_ns()}"))
                return link.receive().command == "WELCOME"
        except Exception:
            return False

    def pnp(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{self.vip}:{PORTS.http_port}/pnp/HELLO", timeout=1.0) as resp:
                return bool(resp.status == 200)
        except Exception:
            return False

    def run(self, protocol: str) -> None:
        probe = self.cns if protocol == "cns" else self.pnp
        while not self._stop.is_set():
            self.results[protocol].append((time.time(), probe()))
            time.sleep(0.1)

    def start(self) -> None:
        for protocol in self.results:
            threading.Thread(target=self.run, args=(protocol,), daemon=True).start()

    def stop(self) -> None:
        self._stop.set()

    def outage(self, protocol: str, killed: float) -> float | None:
        """Kill -> first successful probe after it."""
        for at, ok in self.results[protocol]:
            if at > killed and ok:
                return at - killed
        return None


def held_sessions(events: list[Path]) -> dict[str, tuple[str, float]]:
    """serial -> (last event, its time) over every holder process."""
    state: dict[str, tuple[str, float]] = {}
    for path in events:
        if path.exists():
            for line in path.read_text().splitlines():
                parts = line.split()
                if len(parts) == 3:
                    state[parts[1]] = (parts[0], float(parts[2]))
    return state


def event_lines(events: list[Path]) -> list[list[str]]:
    """Every line of the holders' event files, split: ``what serial time [why]``."""
    return [line.split() for path in events if path.exists() for line in path.read_text().splitlines()]


def first_loss(events: list[Path], killed: float) -> float | None:
    """When the first held session was found dead after the kill (the devices' keepalive decides when)."""
    downs = [float(parts[2]) for parts in event_lines(events)
             if parts[0] == "down" and float(parts[2]) > killed]
    return min(downs) if downs else None


def refusals(events: list[Path], killed: float) -> Counter[str]:
    """Why devices failed to get a session back after the kill: BUSY, ERROR-503, TimeoutError ... and how often."""
    return Counter(parts[3] for parts in event_lines(events)
                   if parts[0] == "retry" and len(parts) == 4 and float(parts[2]) > killed)


def sessions_back(events: list[Path], killed: float, count: int, timeout: float) -> tuple[float | None, int]:
    """Seconds from the kill until all ``count`` devices hold a session that came up after it; and how many did."""
    deadline = time.monotonic() + timeout
    while True:
        state = held_sessions(events)
        back = [at for what, at in state.values() if what == "up" and at > killed]
        if len(back) >= count:
            return max(back) - killed, len(back)
        if time.monotonic() > deadline:
            return None, len(back)
        time.sleep(0.5)


def lost_work(lab: HaLab, prefix: str) -> tuple[int, int, int]:
    """(jobs not completed, outbox events not in any Prime sink, fleet devices)."""
    jobs = lab.job_states(prefix)
    not_in_prime = {event_id for event_id, _ in lab.outbox()} - lab.prime_event_ids()
    return sum(1 for state in jobs.values() if state != "completed"), len(not_in_prime), len(jobs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=10_000, help="TLS CNS devices holding sessions")
    parser.add_argument("--per-client", type=int, default=5000, help="devices per client process (max 19,000)")
    parser.add_argument("--fleet", type=int, default=40, help="CNS and as many Open PnP devices mid-provisioning")
    parser.add_argument("--keepalive", type=float, default=3.0, help="CNS keepalive of the holding devices")
    parser.add_argument("--mover", choices=("keepalived", "prime", "builtin"), default="keepalived",
                        help="what moves the VIP (prime: the integrated lab only; builtin: the standalone lab only)")
    parser.add_argument("--standalone", action="store_true",
                        help="a standalone gateway pair and Prime servers of its own instead of two Prime nodes")
    parser.add_argument("--prime-ha", choices=("none", "vip", "different-ip"), default="none",
                        help="the standalone lab's Prime: one server, a pair with a VIP, or with different addresses")
    parser.add_argument("--dir", type=Path, default=None, help="lab directory (default: a temporary one)")
    args = parser.parse_args()
    resource.setrlimit(resource.RLIMIT_NOFILE, (20_000, max(20_000, resource.getrlimit(resource.RLIMIT_NOFILE)[1])))
    root = args.dir or Path(tempfile.mkdtemp(prefix="pnp-failover-"))
    capacity = str(max(500, math.ceil(args.devices / 4) + 200))  # the TLS gateway ports share the devices
    settings = {"PNP_CNS_PORT_CAPACITY": capacity}
    lab: HaLab
    if args.standalone:
        StandaloneLab.create(root / "stale", prefix=PREFIX, subnet=SUBNET, prime_ha="vip").down()
        lab = StandaloneLab.create(root / "lab", prefix=PREFIX, subnet=SUBNET, mover=args.mover,
                                   prime_ha=args.prime_ha, node_settings=settings)
        topology = f"standalone pair, Prime HA {args.prime_ha}"
    else:
        HaLab.create(root / "stale", prefix=PREFIX, subnet=SUBNET).down()
        lab = HaLab.create(root / "lab", prefix=PREFIX, subnet=SUBNET, mover=args.mover, node_settings=settings)
        topology = "integrated, two Prime nodes"
    node_a, node_b = (node.name for node in lab.plan.nodes)
    holders: list[subprocess.Popen[bytes]] = []
    prober = Prober(lab)
    try:
        print(f"building the lab in {root} ({topology}; {args.mover} moves the VIP) ...", flush=True)
        lab.up()
        deadline = time.monotonic() + 60
        while sorted((lab.state(node_a), lab.state(node_b))) != ["ACTIVE", "PASSIVE"]:
            if time.monotonic() > deadline:
                sys.exit("no node became ACTIVE")
            time.sleep(0.5)

        events = []
        clients = max(1, math.ceil(args.devices / min(args.per_client, 19_000)))
        per = math.ceil(args.devices / clients)
        for index in range(clients):
            first, count = index * per + 1, min(per, args.devices - index * per)
            path = root / f"holders-{index}.events"
            events.append(path)
            holders.append(subprocess.Popen(
                ["ip", "netns", "exec", lab.plan.devices_namespace, sys.executable, "-m",
                 "pnp_integrated.lab.hold_sessions", "--first", str(first), "--count", str(count),
                 "--host", lab.plan.vip,
                 "--dispatcher-port", str(PORTS.dispatcher_tls_port), "--tls", "--keepalive", str(args.keepalive),
                 "--ramp", str(max(5.0, args.devices / 400)), "--events", str(path)],
                cwd=ROOT, stdout=subprocess.DEVNULL, stderr=(root / f"holders-{index}.log").open("wb")))
        print(f"{args.devices} TLS CNS devices connecting through {clients} client processes ...", flush=True)
        started = time.monotonic()
        while sum(1 for what, _ in held_sessions(events).values() if what == "up") < args.devices:
            if time.monotonic() - started > 60 + args.devices / 4:
                up = sum(1 for what, _ in held_sessions(events).values() if what == "up")
                sys.exit(f"only {up} of {args.devices} sessions came up")
            time.sleep(1)
        print(f"all sessions up in {time.monotonic() - started:.0f}s", flush=True)

        fleet = lab.start_fleet(root / "fleet.jsonl", "--cns", str(args.fleet), "--pnp", str(args.fleet),
                                "--ramp", "5", "--deadline", "300", "--serial-prefix", "BF")
        time.sleep(8)  # mid-provisioning
        prober.start()
        time.sleep(2)
        # Asked now, not at start: under the load of the sessions the VIP may have moved since.
        active = node_a if lab.state(node_a, timeout=20) == "ACTIVE" else node_b
        standby = node_b if active == node_a else node_a
        standby_pid = lab.plan.node(standby).pid  # its `pnpp run`, above the gunicorn workers
        cpu_before = gateway_cpu_seconds(standby_pid)
        killed = time.time()
        lab.kill_node(active)
        print(f"killed every process of {active} and unplugged it", flush=True)
        back, count = sessions_back(events, killed, args.devices, timeout=120 + args.devices / 4)
        cpu_per_session = (gateway_cpu_seconds(standby_pid) - cpu_before) / max(1, count)
        noticed = first_loss(events, killed)
        rebuilt = back + killed - noticed if back is not None and noticed is not None else None
        time.sleep(3)
        prober.stop()
        fleet.wait(timeout=400)
        time.sleep(5)  # the outbox drains
        to_active = vip_to_active(lab, standby, killed)
        not_done, not_in_prime, fleet_size = lost_work(lab, "BF")

        def cell(value: float | None) -> str:
            return "never" if value is None else f"{value:.2f} s"

        rows = [
            ("VIP arrival -> ACTIVE", cell(to_active), "<= 1 s", to_active is not None and to_active <= 1),
            ("outage CNS (new session)", cell(prober.outage("cns", killed)), "<= 5 s",
             (prober.outage("cns", killed) or 99) <= 5),
            ("outage Open PnP (HELLO)", cell(prober.outage("pnp", killed)), "<= 5 s",
             (prober.outage("pnp", killed) or 99) <= 5),
            (f"{args.devices} TLS sessions back", cell(back) + ("" if back else f" ({count} back)"), "<= 15 s"
             if args.devices >= 10_000 else "(15 s for 10,000)", back is not None and back <= 15),
            ("  of which: first loss noticed", cell(None if noticed is None else noticed - killed), "(keepalive x 3)",
             None),
            ("  of which: first reconnect -> all up", cell(rebuilt), "", None),
            (f"fleet jobs not completed ({fleet_size})", str(not_done), "0", not_done == 0),
            ("outbox events not in Prime", str(not_in_prime), "0", not_in_prime == 0),
        ]
        print()
        print(f"{'MEASURE':<34}{'RESULT':>16}  {'TARGET':<20}MET")
        for name, value, target, met in rows:
            print(f"{name:<34}{value:>16}  {target:<20}{'' if met is None else 'yes' if met else 'NO'}")
        print(f"\ngateway CPU per re-established session (standby node, all its workers, the mixed fleet included): "
              f"{cpu_per_session * 1000:.1f} ms; {os.cpu_count()} cores shared with PostgreSQL and the devices")
        sent_away = refusals(events, killed)
        print("attempts that failed after the kill: " + (", ".join(f"{why} {n}" for why, n in sent_away.most_common())
                                                          or "none"))
        print(f"{topology}, mover {args.mover}, keepalive of the holding devices {args.keepalive:g}s, "
              f"fleet exit code {fleet.returncode}; lab in {root}")
        print(json.dumps({"to_active": to_active, "outage_cns": prober.outage("cns", killed),
                          "outage_pnp": prober.outage("pnp", killed), "sessions_back": back,
                          "gateway_cpu_ms_per_session": round(cpu_per_session * 1000, 2)}))
    finally:
        prober.stop()
        for process in holders:
            process.kill()
            process.wait()
        lab.down()


if __name__ == "__main__":
    socket.setdefaulttimeout(10)
    main()

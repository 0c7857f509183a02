"""Operator console benchmark: its pages on a fleet of 100,000 devices, and what an operator watching costs devices.

It fills a database (SQLite in a temporary directory, or ``--database-url``, an empty PostgreSQL database) with
``--devices`` devices in every state, their jobs, steps and events (bench/inventory.py's fill), starts a node on it
(``pnpp run``, ports moved), signs a user in through the sign-in form and times the console's pages, one after
another on one keep-alive connection with the session's cookie::

    .venv/bin/python bench/console.py
    .venv/bin/python bench/console.py --devices 20000 --requests 50 --rounds 2

For each page it prints the latency at the client (p50, p95, p99, max) and the gateway's CPU per request (its
gunicorn processes, from /proc). The pages: the overview (counts, the activity chart over 24 hours, the status
table) and its live part, which an open overview fetches every 10 s; the inventory's first page, the failed devices,
a search by serial prefix and a page from the middle of a walk; a device's page and its live part (every 5 s); the
profiles.

Then the cost to device traffic: ``--rounds`` rounds of ``--sim-devices`` simulated Open PnP devices running their
day 0, alternately alone and while an operator watches (an overview and a device's page open, refreshing as a
browser does) and Prometheus scrapes /metrics every 15 s. Each round prints the devices' time, the gateway's CPU per
device and the p50 and p99 of their requests; the summary compares the medians of the two kinds of round.
"""

from __future__ import annotations

import argparse
import http.client
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlencode

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.inventory import Console as ApiClient  # noqa: E402
from bench.inventory import Fleet, fill  # noqa: E402
from bench.proc import gateway_cpu_seconds  # noqa: E402
from pnp_integrated.devsim import percentile  # noqa: E402
from pnp_integrated.devsim.node import NodeDidNotStart, RunningNode, node_settings, start_node  # noqa: E402
from pnp_integrated.devsim.pnp import SimulatedDevice, simulate  # noqa: E402

USER, PASSWORD = "bench-operator", "a benchmark operator's passphrase"
from pnp_integrated.console.devices import DEVICE_REFRESH_MS  # noqa: E402
from pnp_integrated.console.overview import REFRESH_MS  # noqa: E402

# Seconds between requests, as the pages' scripts and a Prometheus job make them.
OVERVIEW_EVERY, DEVICE_EVERY, SCRAPE_EVERY = REFRESH_MS / 1000, DEVICE_REFRESH_MS / 1000, 15.0


class Browser:
    """One keep-alive connection to the node carrying a signed-in session's cookie."""

    def __init__(self, node: RunningNode) -> None:
        self.node = node
        self.connection = http.client.HTTPConnection("127.0.0.1", node.port("http_port"), timeout=120)
        self.cookies: dict[str, str] = {}

    def request(self, method: str, path: str, body: str | None = None) -> tuple[float, int, bytes]:
        headers = {"Cookie": "; ".join(f"{k}={v}" for k, v in self.cookies.items())}
        if body is not None:
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        started = time.perf_counter()
        self.connection.request(method, path, body=body, headers=headers)
        response = self.connection.getresponse()
        data = response.read()
        elapsed = time.perf_counter() - started
        for name, value in response.getheaders():
            if name.lower() == "set-cookie":
                key, _, rest = value.partition("=")
                self.cookies[key] = rest.split(";", 1)[0]
        return elapsed, response.status, data

    def get(self, path: str) -> tuple[float, bytes]:
        elapsed, status, data = self.request("GET", path)
        if status != 200:
            raise SystemExit(f"GET {path}: {status} {data[:300]!r}")
        return elapsed, data

    def sign_in(self) -> None:
        _, _, page = self.request("GET", "/")
        token = re.search(rb'name="csrf_token" value="([^"]+)"', page)
        if token is None:
            raise SystemExit("the sign-in page has no form token")
        form = urlencode({"csrf_token": token.group(1).decode(), "name": USER, "password": PASSWORD, "next": "/"})
        _, status, _ = self.request("POST", "/console/signin", form)
        if status != 303:
            raise SystemExit(f"sign-in answered {status}")


@dataclass
class Timing:
    name: str
    latencies: list[float] = field(default_factory=list)
    cpu: float = 0.0
    size: int = 0


def page_kinds(rng: random.Random, fleet: Fleet, deep: list[str]) -> list[tuple[str, Callable[[], Iterator[str]]]]:
    """The console's pages, each an endless stream of paths (a different device, prefix or cursor each time)."""

    def each(make: Callable[[], str]) -> Callable[[], Iterator[str]]:
        def paths() -> Iterator[str]:
            while True:
                yield make()
        return paths

    return [
        ("overview (24 h chart)", each(lambda: "/?window=24h")),
        ("overview, live part (every 10 s)", each(lambda: "/console/overview/live?window=24h")),
        ("inventory, first page", each(lambda: "/console/devices")),
        ("inventory, failed devices", each(lambda: "/console/devices?state=failed")),
        ("inventory, serial prefix search", each(lambda: "/console/devices?" + urlencode(
            {"search": rng.choice(fleet.serials)[:6].lower()}))),
        ("inventory, a page mid-walk", each(lambda: "/console/devices?" + urlencode(
            {"cursor": rng.choice(deep), "limit": "500", "at": "50000"}))),
        ("device page (a failed device)", each(lambda: f"/console/devices/{rng.choice(fleet.failed)}")),
        ("device page, live part (every 5 s)", each(lambda: f"/console/devices/{rng.choice(fleet.failed)}/live")),
        ("profiles", each(lambda: "/console/profiles")),
    ]


def measure(browser: Browser, node: RunningNode, kinds: list[tuple[str, Callable[[], Iterator[str]]]],
            requests: int) -> list[Timing]:
    """Latency of each page, the pages taken in turn; then each page's CPU alone (up to 50 in a row)."""
    streams = [paths() for _, paths in kinds]
    timings = [Timing(name) for name, _ in kinds]
    for stream in streams:
        for _ in range(3):
            browser.get(next(stream))
    for _ in range(requests):
        for timing, stream in zip(timings, streams, strict=True):
            elapsed, data = browser.get(next(stream))
            timing.latencies.append(elapsed)
            timing.size = max(timing.size, len(data))
    alone = min(requests, 50)
    for timing, stream in zip(timings, streams, strict=True):
        before = gateway_cpu_seconds(node.process.pid)
        for _ in range(alone):
            browser.get(next(stream))
        timing.cpu = (gateway_cpu_seconds(node.process.pid) - before) / alone
    return timings


def format_pages(timings: list[Timing]) -> str:
    rows = [("page", "p50 ms", "p95 ms", "p99 ms", "max ms", "gateway CPU ms", "HTML KiB")]
    for t in timings:
        ms = [v * 1000 for v in t.latencies]
        rows.append((t.name, f"{percentile(ms, 0.5):.1f}", f"{percentile(ms, 0.95):.1f}",
                     f"{percentile(ms, 0.99):.1f}", f"{max(ms):.1f}", f"{t.cpu * 1000:.1f}", f"{t.size / 1024:.0f}"))
    return table(rows)


def table(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in rows]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


class Watcher:
    """An operator with the overview and a device's page open, and Prometheus scraping, at their real rates."""

    def __init__(self, node: RunningNode, serials: list[str]) -> None:
        self.node = node
        self.serials = serials
        self.stop = threading.Event()
        self.requests = 0
        self.threads: list[threading.Thread] = []
        # Signed in before the round: an operator signs in once a shift, not once a round (a sign-in is a scrypt).
        self.browsers = [Browser(node), Browser(node), Browser(node)]
        for browser in self.browsers[:2]:
            browser.sign_in()

    def _loop(self, browser: Browser, every: float, path: Callable[[], str]) -> None:
        while not self.stop.wait(every):
            browser.get(path())
            self.requests += 1

    def __enter__(self) -> Watcher:
        rng = random.Random(3)
        for browser, every, path in (
                (self.browsers[0], OVERVIEW_EVERY, lambda: "/console/overview/live"),
                (self.browsers[1], DEVICE_EVERY, lambda: f"/console/devices/{rng.choice(self.serials)}/live"),
                (self.browsers[2], SCRAPE_EVERY, lambda: "/metrics")):
            thread = threading.Thread(target=self._loop, args=(browser, every, path), daemon=True)
            thread.start()
            self.threads.append(thread)
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=30)


@dataclass
class Round:
    watched: bool
    seconds: float
    cpu_per_device: float
    p50: float
    p99: float
    ok: int
    devices: int
    watcher_requests: int = 0


def device_round(node: RunningNode, serials: list[str], watched: bool, failed: list[str]) -> Round:
    devices = [SimulatedDevice(serial=s, pid="C9300-24U") for s in serials]
    watcher = Watcher(node, failed) if watched else None
    cpu0 = gateway_cpu_seconds(node.process.pid)
    started = time.monotonic()
    if watcher is not None:
        with watcher:
            reports = simulate(devices, node.url(""), time_scale=0.01, concurrency=50)
    else:
        reports = simulate(devices, node.url(""), time_scale=0.01, concurrency=50)
    seconds = time.monotonic() - started
    cpu = gateway_cpu_seconds(node.process.pid) - cpu0
    latencies = [v * 1000 for r in reports for values in r.latencies.values() for v in values]
    return Round(watched, seconds, cpu / len(devices), percentile(latencies, 0.5), percentile(latencies, 0.99),
                 sum(1 for r in reports if r.ok), len(devices), watcher.requests if watcher else 0)


def format_rounds(rounds: list[Round]) -> str:
    rows = [("round", "watched", "devices ok", "seconds", "gateway CPU ms / device", "request p50 ms",
             "request p99 ms", "console + /metrics requests")]
    for number, r in enumerate(rounds, 1):
        rows.append((str(number), "yes" if r.watched else "no", f"{r.ok}/{r.devices}", f"{r.seconds:.1f}",
                     f"{r.cpu_per_device * 1000:.1f}", f"{r.p50:.1f}", f"{r.p99:.1f}", str(r.watcher_requests)))
    return table(rows)


def summary(rounds: list[Round]) -> str:
    def median(watched: bool, value: Callable[[Round], float]) -> float:
        return statistics.median(value(r) for r in rounds if r.watched == watched)

    lines = []
    for name, value in (("gateway CPU per device", lambda r: r.cpu_per_device * 1000),
                        ("devices' time", lambda r: r.seconds), ("request p99", lambda r: r.p99)):
        alone, watched = median(False, value), median(True, value)
        lines.append(f"{name}: median {alone:.1f} alone, {watched:.1f} watched ({(watched / alone - 1) * 100:+.1f} %)")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=100_000, help="devices in the fleet")
    parser.add_argument("--requests", type=int, default=100, help="timed requests of each page")
    parser.add_argument("--database-url", help="an empty PostgreSQL database (default: SQLite, temporary)")
    parser.add_argument("--workers", type=int, default=2, help="gateway workers of the node")
    parser.add_argument("--sim-devices", type=int, default=300, help="simulated devices per round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds alone and rounds watched (each)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="pnp-bench-console-") as tmp_name:
        tmp = Path(tmp_name)
        database_url = args.database_url or f"sqlite:///{tmp / 'console.sqlite3'}"
        fleet, written, _migrated, _costs = fill(database_url, tmp / "fill", args.devices)
        print(f"wrote {fleet.summary()} in {written:.1f} s", flush=True)
        from pnp_integrated import create_app
        from pnp_integrated.api.tokens import issue_token
        from pnp_integrated.console.users import create_user
        from pnp_integrated.models import Profile, db

        with create_app({**node_settings(tmp / "fill", database_url=database_url), "TESTING": True}).app_context():
            create_user(USER, "read", PASSWORD)
            token = issue_token("bench-console", "read")
            db.session.add(Profile(name="bench-rollout", is_default=True, config_template="hostname {{ serial }}\n"))
            db.session.commit()
        os.chdir(tmp)  # gunicorn puts its working directory first on sys.path: never a checkout by accident
        code = subprocess.run([sys.executable, "-c", "import pnp_integrated; print(pnp_integrated.__file__)"],
                              capture_output=True, text=True, check=True).stdout.strip()
        try:
            node = start_node(tmp / "node", database_url=database_url, workers=args.workers)
        except NodeDidNotStart as exc:
            raise SystemExit(f"node did not start: {str(exc)[-2000:]}") from None
        try:
            api = ApiClient(node, token)
            deep, cursor = [], None
            for page in range(args.devices // 500):
                _, body = api.get("/devices?" + urlencode({"limit": 500, **({"cursor": cursor} if cursor else {})}))
                cursor = body["next"]
                if cursor is None:
                    break
                if page >= args.devices // 1000:
                    deep.append(cursor)
            browser = Browser(node)
            browser.sign_in()
            timings = measure(browser, node, page_kinds(random.Random(7), fleet, deep or [""]), args.requests)
            rounds = []
            for number in range(args.rounds * 2):
                serials = [f"BENCH{number:02d}{i:05d}" for i in range(args.sim_devices)]
                rounds.append(device_round(node, serials, watched=number % 2 == 1, failed=fleet.failed))
                print(f"round {number + 1}: {format_rounds(rounds[-1:]).splitlines()[-1]}", flush=True)
        finally:
            node.stop()
    kind = "PostgreSQL" if database_url.startswith("postgresql") else "SQLite"
    print(f"\nnode: {args.workers} worker(s), {kind}, {args.devices:,} devices, code of {code}")
    print(format_pages(timings))
    print(f"\n{args.sim_devices} simulated Open PnP devices per round, rounds alone and watched in turn:")
    print(format_rounds(rounds))
    print(summary(rounds))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Open PnP benchmark: complete day-0 conversations per second, and p50/p99 per request, with many concurrent agents.

By default it starts its own node (``pnpp run`` on a temporary data directory, ports moved, a default profile with
a configuration and a post-PnP template) and plays ``--devices`` simulated agents, ``--concurrency`` at a time::

    .venv/bin/python bench/pnp.py --devices 500 --concurrency 500

``--url`` points it at a node that is already running (its profiles must claim the simulated PID). Prints a table.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.proc import gateway_cpu_seconds  # noqa: E402
from pnp_integrated.devsim.node import NodeDidNotStart, RunningNode, start_node  # noqa: E402
from pnp_integrated.devsim.pnp import PROVISIONED, SimulatedDevice, format_reports, simulate  # noqa: E402

PID = "C9300-24U"
CONFIG = "hostname {{ serial }}\ninterface Vlan1\n ip address dhcp\n"
POST = "ntp server 192.0.2.1\nlogging host 192.0.2.2\n"


def start_bench_node(data_dir: Path, workers: int, image_kib: int, database_url: str | None) -> RunningNode:
    overrides: dict[str, Any] = {"workers": workers}
    if database_url:
        overrides["database_url"] = database_url
    try:
        node = start_node(data_dir, **overrides)
    except NodeDidNotStart as exc:
        raise SystemExit(f"node did not start: {str(exc)[-2000:]}") from None
    add_profile(node.settings, image_kib)
    return node


def add_profile(settings: dict[str, Any], image_kib: int) -> None:
    from pnp_integrated import create_app
    from pnp_integrated.models import Image, Profile, db

    app = create_app(settings)
    with app.app_context():
        image_id = None
        if image_kib:
            data = b"PNPSIM-VERSION=17.6.1\n" + os.urandom(image_kib * 1024)
            (Path(settings["data_dir"]) / "images" / "bench-17.6.1.bin").write_bytes(data)
            image = Image(name="bench-17.6.1", filename="bench-17.6.1.bin", version="17.6.1",
                          md5=hashlib.md5(data).hexdigest(), size=len(data))
            db.session.add(image)
            db.session.flush()
            image_id = image.id
        db.session.add(Profile(name="bench", match_pid=PID, config_template=CONFIG, post_template=POST,
                               image_id=image_id))
        db.session.commit()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=500)
    parser.add_argument("--workers", type=int, default=2, help="gevent workers of the node it starts")
    parser.add_argument("--https", action="store_true", help="talk HTTPS (trusting the node's CA)")
    parser.add_argument("--image-kib", type=int, default=0, help="add an image of this size to the profile")
    parser.add_argument("--url", default=None, help="benchmark a running node instead of starting one")
    parser.add_argument("--node-log", type=Path, default=None, help="keep the started node's log in this file")
    parser.add_argument("--database-url", default=os.environ.get("PNP_DATABASE_URL"),
                        help="an empty database for the started node (default: PNP_DATABASE_URL, else SQLite)")
    args = parser.parse_args()

    node = None
    context = None
    with tempfile.TemporaryDirectory(prefix="pnp-bench-") as tmp:
        if args.url:
            url = args.url
        else:
            node = start_bench_node(Path(tmp), args.workers, args.image_kib, args.database_url)
            url = node.url("", tls=args.https)
            if args.https:
                context = node.client_context()
        try:
            devices = [SimulatedDevice(serial=f"BENCH{n:06d}", pid=PID) for n in range(args.devices)]
            print(f"{args.devices} agents, {args.concurrency} at a time, against {url}"
                  f"{f' ({args.workers} workers)' if node else ''}", flush=True)
            started = time.monotonic()
            node_cpu = gateway_cpu_seconds(node.process.pid) if node is not None else 0.0
            own_cpu = time.process_time()
            reports = simulate(devices, url, context=context, concurrency=args.concurrency, time_scale=0.0,
                               reload_seconds=0, deadline=600, timeout=120)
            elapsed = time.monotonic() - started
            print(format_reports(reports, elapsed))
            requests = sum(len(v) for r in reports for v in r.latencies.values())
            conversations = max(1, sum(1 for r in reports if r.outcome == PROVISIONED))
            print(f"\n{requests / len(reports):.1f} requests per device; "
                  f"bench client CPU {1000 * (time.process_time() - own_cpu) / len(reports):.1f} ms per device")
            if node is not None:
                used = gateway_cpu_seconds(node.process.pid) - node_cpu
                print(f"gateway CPU {used:.1f}s: {1000 * used / conversations:.1f} ms per conversation, "
                      f"{1000 * used / max(1, requests):.2f} ms per request; at that cost {os.cpu_count()} cores "
                      f"serve at most {(os.cpu_count() or 1) * conversations / max(used, 1e-9):.0f} conversations/s")
            return 0 if all(r.outcome == PROVISIONED for r in reports) else 1
        finally:
            if node is not None:
                node.stop()
                if args.node_log:
                    shutil.copyfile(node.log_path, args.node_log)


if __name__ == "__main__":
    sys.exit(main())

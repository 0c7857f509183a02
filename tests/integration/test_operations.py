"""What an operator watches: JSON logs with device ids, Prometheus metrics, the status table of a busy node."""

from __future__ import annotations

import json
import subprocess
import urllib.request
from collections.abc import Callable

from pnp_integrated.devsim.node import PNPP, RunningNode
from pnp_integrated.devsim.pnp import SimulatedDevice, simulate
from tests.support import create_default_profile


def metric_values(text: str, name: str) -> dict[str, float]:
    """``{labels: value}`` of one metric family in Prometheus text format."""
    out = {}
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            labels, _, value = line.rpartition(" ")
            out[labels[len(name):]] = float(value)
    return out


def test_json_logs_metrics_and_status_follow_a_provisioned_device(running_node: Callable[..., RunningNode]) -> None:
    node = running_node(log_format="json")
    create_default_profile(node)
    reports = simulate([SimulatedDevice(serial=f"OPS{i:04d}") for i in range(3)], node.url(""), time_scale=0.01)
    assert all(r.ok for r in reports), reports

    # Every job step of every device is one JSON line that names the device.
    records = []
    for line in node.log_text().splitlines():
        if line.startswith("{"):
            records.append(json.loads(line))
    steps = [r for r in records if r.get("step") and r.get("device", "").startswith("OPS")]
    assert {r["device"] for r in steps} == {"OPS0000", "OPS0001", "OPS0002"}
    assert all(r["level"] in ("info", "warning") and "job" in r for r in steps)

    with urllib.request.urlopen(node.url("/metrics"), timeout=10) as resp:
        text = resp.read().decode()
    assert metric_values(text, "pnp_jobs")['{state="completed"}'] == 3
    assert metric_values(text, "pnp_ha_state")['{state="ACTIVE"}'] == 1
    requests = metric_values(text, "pnp_http_request_duration_seconds_count")
    assert sum(v for k, v in requests.items() if "WORK-REQUEST" in k) >= 3

    table = subprocess.run([PNPP, "status"], env=node.env, capture_output=True, text=True, timeout=30)
    assert table.returncode == 0, table.stdout + table.stderr
    for service in ("Event Messaging Bus", "Image Web Service", "Config Web Service", "Resource Web Service",
                    "Prime Infrastructure Broker", "PnP Gateway Monitoring"):
        assert service in table.stdout
    as_json = json.loads(subprocess.run([PNPP, "status", "--json"], env=node.env, capture_output=True,
                                        text=True, timeout=30).stdout)
    assert all(row["status"] != "DOWN" for row in as_json["rows"])

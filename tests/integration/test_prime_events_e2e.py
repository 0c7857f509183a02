"""What Prime hears from a real node: ``pnpp run`` (simulated Prime with its embedded broker, gunicorn gateway),
a profile created through the REST API, simulated Open PnP and CNS devices provisioned, then ``pnpp prime events``
lists each device connecting and its job's steps and completion, once per event.
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
import urllib.request
from collections import defaultdict
from pathlib import Path
from typing import Any

from tests.integration.conftest import PNPP, RunningNode

DEVICES = 5


def pnpp(node: RunningNode, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PNPP, *args], env=node.env, capture_output=True, text=True, timeout=timeout)


def create_profile(node: RunningNode, profile: dict[str, Any]) -> None:
    token = pnpp(node, "token", "create", "--role", "admin", "--name", "prime-e2e")
    assert token.returncode == 0, token.stderr
    request = urllib.request.Request(node.url("/api/v1/profiles"), data=json.dumps(profile).encode(), method="POST",
                                     headers={"Authorization": f"Bearer {token.stdout.strip()}",
                                              "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.status == 201


def prime_events(node: RunningNode) -> list[dict[str, Any]]:
    listed = pnpp(node, "prime", "events", "--json", timeout=30)
    if listed.returncode != 0:
        return []
    return [json.loads(line) for line in listed.stdout.splitlines()]


def serial_of(event: dict[str, Any]) -> str:
    device = event.get("device") or (event.get("job") or {}).get("device") or {}
    return str(device.get("serial", ""))


def test_prime_hears_simulated_devices_connect_and_get_provisioned(running_node: Any, tmp_path: Path) -> None:
    node: RunningNode = running_node()
    create_profile(node, {"name": "branch", "match_serials": [f"PNP{n:06d}" for n in range(1, DEVICES + 1)],
                          "config_template": "hostname {{ serial }}\n"})
    pnp = pnpp(node, "simulate", "pnp", "--devices", str(DEVICES), "--serial-prefix", "PNP", "--timeout", "90")
    assert pnp.returncode == 0, pnp.stdout + pnp.stderr
    cns = pnpp(node, "simulate", "cns", "--devices", str(DEVICES), "--serial-prefix", "CNS", "--create-profile",
               "--max-seconds", "90")
    assert cns.returncode == 0, cns.stdout + cns.stderr

    def heard() -> dict[str, list[str]] | None:
        by_device: dict[str, list[str]] = defaultdict(list)
        for event in prime_events(node):
            by_device[serial_of(event)].append(event["type"])
        done = {s for s, types in by_device.items() if "device.connected" in types and "job.completed" in types}
        # Each simulator numbers its serials its own way: count them per prefix.
        complete = all(sum(s.startswith(prefix) for s in done) == DEVICES for prefix in ("PNP", "CNS"))
        return by_device if complete else None

    deadline, by_device = time.monotonic() + 60, None
    while by_device is None and time.monotonic() < deadline:
        by_device = heard()
        if by_device is None:
            time.sleep(0.5)
    assert by_device is not None, f"Prime did not hear every device:\n{pnpp(node, 'prime', 'events').stdout}"
    serials = sorted(s for s in by_device if s.startswith(("PNP", "CNS")))
    assert len(serials) == 2 * DEVICES
    for serial in serials:
        types = by_device[serial]
        assert types.index("device.connected") < types.index("job.completed"), (serial, types)
        assert "job.step" in types and "job.failed" not in types, (serial, types)
        assert types.count("job.completed") == 1, (serial, types)

    # The table an operator reads: one line per event with the node as the gateway and the device it is about.
    table = pnpp(node, "prime", "events", "--type", "job.completed")
    assert table.returncode == 0, table.stderr
    rows = [line.split() for line in table.stdout.splitlines()]
    assert sorted(row[3] for row in rows) == sorted(serials)
    assert {row[1] for row in rows} == {node.settings.get("node_name") or socket.gethostname()}
    assert all(row[2] == "job.completed" and len(row) == 5 for row in rows)  # no "(delivered Nx)": stored once
    events = prime_events(node)
    assert len({e["id"] for e in events}) == len(events)

    # Prime's commands come back through the same broker: a reprovision (sent twice, applied once), then a cancel.
    def send(type_: str, command_id: str, fields: dict[str, Any]) -> None:
        payload = tmp_path / f"{command_id}.json"
        payload.write_text(json.dumps(fields))
        sent = pnpp(node, "prime", "send", type_, str(payload), "--id", command_id, timeout=30)
        assert sent.returncode == 0, sent.stderr

    def jobs_of(serial: str, type_: str) -> set[int]:
        return {e["job"]["id"] for e in prime_events(node) if e["type"] == type_ and serial_of(e) == serial}

    first_jobs = jobs_of("PNP000001", "job.step")
    for command_id in ("reprovision-1", "reprovision-1"):
        send("device.reprovision", command_id, {"device": "PNP000001"})
    send("job.cancel", "cancel-1", {"device": "PNP000001", "reason": "site not ready"})
    deadline = time.monotonic() + 30
    while not jobs_of("PNP000001", "job.failed") and time.monotonic() < deadline:
        time.sleep(0.5)
    [cancelled] = jobs_of("PNP000001", "job.failed")
    assert jobs_of("PNP000001", "job.step") - first_jobs == {cancelled}  # one new job, not two
    assert not [e for e in prime_events(node) if e["type"] == "command.rejected"]

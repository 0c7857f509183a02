"""What Prime hears from a real node: ``pnpp run`` (simulated Prime with its embedded broker, gunicorn gateway),
a profile created through the REST API, simulated Open PnP and CNS devices provisioned, then ``pnpp prime events``
lists each device connecting and its job's steps and completion, once per event.
"""

from __future__ import annotations

import json
import socket
import sqlite3
import subprocess
import urllib.request
from collections import defaultdict
from typing import Any

from pnp_integrated.bus.state import read_state
from pnp_integrated.config import load_settings
from pnp_integrated.destinations import COMMANDS_QUEUE
from pnp_integrated.devsim.link import CnsLink, connect
from pnp_integrated.devsim.node import PNPP, RunningNode
from pnp_integrated.prime.sink import EventStore
from tests.support import prime_client, wait_until

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


def stored_events(node: RunningNode) -> list[dict[str, Any]]:
    """What Prime's event sink stored so far, oldest first (read directly: polling through the CLI is slow)."""
    path = node.data_dir / "prime" / "events.sqlite3"
    if not path.exists():
        return []
    store = EventStore(path)
    try:
        return [e.body for e in store.events()]
    finally:
        store.close()


def serial_of(event: dict[str, Any]) -> str:
    device = event.get("device") or (event.get("job") or {}).get("device") or {}
    return str(device.get("serial", ""))



def test_prime_hears_simulated_devices_connect_and_get_provisioned(running_node: Any) -> None:
    node: RunningNode = running_node()
    create_profile(node, {"name": "branch", "match_serials": [f"PNP{n:06d}" for n in range(1, DEVICES + 1)],
                          "config_template": "hostname {{ serial }}\n"})
    # Both fleets at once, as devices of both kinds would boot.
    runs = [subprocess.Popen([PNPP, "simulate", *args], env=node.env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True) for args in (
        ("pnp", "--devices", str(DEVICES), "--serial-prefix", "PNP", "--timeout", "90"),
        ("cns", "--devices", str(DEVICES), "--serial-prefix", "CNS", "--create-profile", "--max-seconds", "90"))]
    for run in runs:
        output, _ = run.communicate(timeout=150)
        assert run.returncode == 0, output

    def heard() -> dict[str, list[str]] | None:
        by_device: dict[str, list[str]] = defaultdict(list)
        for event in stored_events(node):
            by_device[serial_of(event)].append(event["type"])
        done = {s for s, types in by_device.items() if "device.connected" in types and "job.completed" in types}
        # Each simulator numbers its serials its own way: count them per prefix.
        complete = all(sum(s.startswith(prefix) for s in done) == DEVICES for prefix in ("PNP", "CNS"))
        return by_device if complete else None

    by_device = wait_until(heard, 60, "Prime to hear every device connect and complete")
    serials = sorted(s for s in by_device if s.startswith(("PNP", "CNS")))
    assert len(serials) == 2 * DEVICES
    for serial in serials:
        types = by_device[serial]
        assert types.index("device.connected") < types.index("job.completed"), (serial, types)
        assert "job.step" in types and "job.failed" not in types, (serial, types)
        assert types.count("job.completed") == 1, (serial, types)

    # What an operator reads with `pnpp prime events`: the same events, one line each, with the node as the
    # gateway and the device the event is about.
    listed = pnpp(node, "prime", "events", "--json")
    assert listed.returncode == 0, listed.stderr
    events = [json.loads(line) for line in listed.stdout.splitlines()]
    later = [e["id"] for e in stored_events(node)]
    assert [e["id"] for e in events] == later[:len(events)] and len(set(later)) == len(later)
    table = pnpp(node, "prime", "events", "--type", "job.completed")
    assert table.returncode == 0, table.stderr
    rows = [line.split() for line in table.stdout.splitlines()]
    assert sorted(row[3] for row in rows) == serials
    assert {row[1] for row in rows} == {node.settings.get("node_name") or socket.gethostname()}
    assert all(row[2] == "job.completed" and len(row) == 5 for row in rows)  # no "(delivered Nx)": stored once

    # Prime's commands come back through the same broker: a reprovision (sent twice, applied once), then a cancel.
    payload = node.data_dir / "reprovision.json"
    payload.write_text(json.dumps({"device": "PNP000001"}))
    first_jobs = jobs_of(node, "PNP000001", "job.step")
    sent = pnpp(node, "prime", "send", "device.reprovision", str(payload), "--id", "reprovision-1")
    assert sent.returncode == 0, sent.stderr
    bus = prime_client(node.data_dir, node.port("bus_port"))
    with bus:
        for body in ({"id": "reprovision-1", "type": "device.reprovision", "device": "PNP000001"},  # a redelivery
                     {"id": "cancel-1", "type": "job.cancel", "device": "PNP000001", "reason": "site not ready"}):
            bus.send(COMMANDS_QUEUE, json.dumps(body).encode(), {"persistent": "true"})
    [cancelled] = wait_until(lambda: jobs_of(node, "PNP000001", "job.failed"), 30, "the new job to be cancelled")
    assert jobs_of(node, "PNP000001", "job.step") - first_jobs == {cancelled}  # one new job, not two
    assert not [e for e in stored_events(node) if e["type"] == "command.rejected"]

    # An exec command for CNS devices that stay connected: devices are added until one is held by a worker other
    # than the leader's, so the push also crosses workers. Their answers reach Prime as cns.event.
    leader = read_state(load_settings(environ=node.env))
    assert leader is not None and leader.connected
    gateway_port = node.port("cns_port_base") + 3
    links: list[CnsLink] = []
    try:
        while len(links) < 12 and set(session_workers(node).values()) <= {leader.pid}:
            links.append(connect("127.0.0.1", gateway_port, f"LIVE{len(links) + 1}",
                                 subjects=("cisco.mgmt.cns.exec.cmd",))[0])
        assert set(session_workers(node).values()) - {leader.pid}, "every session landed on the leader's worker"
        with prime_client(node.data_dir, node.port("bus_port")) as prime:
            for n in range(1, len(links) + 1):
                prime.send(COMMANDS_QUEUE, json.dumps({"id": f"exec-{n}", "type": "cns.exec", "device": f"LIVE{n}",
                                                       "identifier": f"E-{n}", "command": "show clock"}).encode())
        for n, link in enumerate(links, start=1):
            frame = link.receive(30)
            assert (frame.command, frame.get("Subject")) == ("DELIVER", "cisco.mgmt.cns.exec.cmd")
            assert f"<identifier-exec>E-{n}</identifier-exec><cli-exec>show clock</cli-exec>" in frame.body.decode()
            link.command("PUBLISH", {"Subject": "cisco.mgmt.cns.exec.rsp", "Receipt": f"rsp-{n}"},
                         f"<exec-cmd-response><identifier-exec>E-{n}</identifier-exec><status>success</status>"
                         f"<response>12:00:00 UTC</response></exec-cmd-response>")
            assert link.receive(10).get("Receipt-Id") == f"rsp-{n}"  # recorded for Prime before the receipt
    finally:
        for link in links:
            link.close()

    def exec_answers() -> list[dict[str, Any]] | None:
        found = [e for e in stored_events(node) if e["type"] == "cns.event" and serial_of(e).startswith("LIVE")]
        return found if len(found) >= len(links) else None

    answers = wait_until(exec_answers, 30, "the exec answers at Prime")
    assert sorted(serial_of(e) for e in answers) == sorted(f"LIVE{n}" for n in range(1, len(links) + 1))
    assert all("<status>success</status>" in e["xml"] for e in answers)


def session_workers(node: RunningNode) -> dict[str, int]:
    """Device-Id -> pid of the gateway worker holding its live CNS session."""
    with sqlite3.connect(node.data_dir / "pnp.sqlite3", timeout=10) as db:
        rows = db.execute("SELECT device_key, worker_pid FROM device_sessions WHERE closed_at IS NULL").fetchall()
    return {key: pid for key, pid in rows}


def jobs_of(node: RunningNode, serial: str, type_: str) -> set[int]:
    return {e["job"]["id"] for e in stored_events(node) if e["type"] == type_ and serial_of(e) == serial}

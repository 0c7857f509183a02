"""The active node's machine dies while 300 devices, CNS and Open PnP mixed, are in the middle of their day 0.

What an operator sees is asserted: the other node becomes the one ACTIVE node, every device finishes its day 0, no
job is left running or failed because of the failover, and Prime received every event of every job.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Callable
from pathlib import Path

import pytest

from pnp_integrated.lab import HaLab
from tests.support import states, wait_until

# Part of `make test`; `make test-fleet` runs it alone.
pytestmark = pytest.mark.fleet

CNS_DEVICES = PNP_DEVICES = 150
# Generous functional bounds: 300 devices take about a minute on a quiet two-core box.
DEVICE_DEADLINE = 330


def job_events(lab: HaLab, prefix: str) -> dict[str, dict[str, str]]:
    """serial -> {event id: type} of the outbox events about that device's job."""
    rows = lab.query("SELECT event_id, type, payload FROM outbox WHERE type LIKE 'job.%'")
    by_serial: dict[str, dict[str, str]] = {}
    for event_id, kind, payload in rows:
        body = payload if isinstance(payload, dict) else json.loads(payload)
        serial = str(((body.get("job") or {}).get("device") or {}).get("serial", ""))
        if serial.startswith(prefix):
            by_serial.setdefault(serial, {})[str(event_id)] = str(kind)
    return by_serial


def test_hard_kill_mid_provisioning_every_device_completes(ha_lab: Callable[[str], HaLab], tmp_path: Path) -> None:
    lab = ha_lab("prime")
    wait_until(lambda: states(lab) == ("ACTIVE", "PASSIVE"), 30, "the primary's gateway to be ACTIVE")
    results = tmp_path / "fleet.jsonl"
    fleet = lab.start_fleet(results, "--cns", str(CNS_DEVICES), "--pnp", str(PNP_DEVICES), "--ramp", "20",
                            "--deadline", str(DEVICE_DEADLINE), "--serial-prefix", "FO")
    try:
        def mid_provisioning() -> bool:
            jobs = list(lab.job_states("FO").values())
            return jobs.count("completed") >= 20 and jobs.count("running") >= 100

        wait_until(mid_provisioning, 120, "20 devices done and 100 mid-provisioning")
        before = lab.job_states("FO")
        lab.kill_node("prime-a")  # every process of the node, and its cable
        # Its monitoring port answers slowly while every device comes back at once.
        wait_until(lambda: lab.state("prime-b", timeout=20) == "ACTIVE", 60, "prime-b to become ACTIVE")
        assert lab.vip_holders()[-1:] == ["prime-b"]

        fleet.wait(timeout=DEVICE_DEADLINE + 60)
    finally:
        if fleet.poll() is None:
            fleet.send_signal(signal.SIGKILL)
            fleet.wait()
    summary = results.with_suffix(".log").read_text()
    played = [json.loads(line) for line in results.read_text().splitlines()]
    assert fleet.returncode == 0, summary
    assert len(played) == CNS_DEVICES + PNP_DEVICES
    assert all(r["ok"] for r in played), summary
    assert sum(1 for s in before.values() if s == "running") >= 100  # the failover hit them mid-way

    jobs = lab.job_states("FO")
    assert len(jobs) == CNS_DEVICES + PNP_DEVICES
    assert set(jobs.values()) == {"completed"}, {s: n for s, n in jobs.items() if n != "completed"}
    # Exactly one ACTIVE node: the dead one does not answer at all.
    assert (lab.state("prime-a"), lab.state("prime-b", timeout=20)) == ("DOWN", "ACTIVE")

    def every_event_in_prime() -> bool:
        rows = lab.outbox()
        return all(sent for _, sent in rows) and {i for i, _ in rows} <= lab.prime_event_ids()

    wait_until(every_event_in_prime, 60, "every outbox event to reach a Prime sink")
    events = job_events(lab, "FO")
    assert len(events) == CNS_DEVICES + PNP_DEVICES
    assert all(list(kinds.values()).count("job.completed") == 1 for kinds in events.values())
    received = lab.prime_event_ids()
    missing = {serial: sorted(set(kinds) - received) for serial, kinds in events.items() if set(kinds) - received}
    assert missing == {}

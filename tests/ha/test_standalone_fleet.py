"""The active gateway of a standalone pair dies while 300 devices, CNS and Open PnP mixed, are in their day 0.

The pair's VIP is moved by keepalived (deploy/keepalived/keepalived.standalone.conf.sample), and Prime is a pair with
different addresses in namespaces of its own. What an operator sees is asserted: the other gateway becomes the one
ACTIVE gateway, its status says so as Prime words it, every device finishes its day 0, and Prime received every
event of every job (de-duplicated by event id: a batch cut by the failover may arrive twice).
"""

from __future__ import annotations

import json
import signal
from collections.abc import Callable
from pathlib import Path

import pytest

from pnp_integrated.lab.standalone import StandaloneLab
from tests.ha.test_failover_fleet import CNS_DEVICES, DEVICE_DEADLINE, PNP_DEVICES, job_events
from tests.support import wait_until

# Part of `make test`; `make test-fleet` runs it alone.
pytestmark = pytest.mark.fleet


def test_hard_kill_of_the_active_gateway_mid_provisioning(standalone_lab: Callable[..., StandaloneLab],
                                                          tmp_path: Path) -> None:
    lab = standalone_lab("keepalived", "different-ip")
    def one_active_one_passive() -> tuple[str, str] | None:
        now = (lab.state("gw-a"), lab.state("gw-b"))
        return now if sorted(now) == ["ACTIVE", "PASSIVE"] else None

    # Which gateway is ACTIVE comes from the reading that found them settled, not from a second one that may time out.
    settled = wait_until(one_active_one_passive, 60, "one ACTIVE and one PASSIVE gateway")
    active, standby = ("gw-a", "gw-b") if settled[0] == "ACTIVE" else ("gw-b", "gw-a")
    wait_until(lambda: "connected to the primary" in (lab.row(active, "Prime Infrastructure HA status") or {})
               .get("info", ""), 30, "the bridge to reach Prime's primary")
    refused = lab.ha_failback(standby)  # keepalived decides: the command says what to do instead
    assert refused.returncode == 1 and "restart keepalived on the secondary" in refused.stderr

    results = tmp_path / "fleet.jsonl"
    fleet = lab.start_fleet(results, "--cns", str(CNS_DEVICES), "--pnp", str(PNP_DEVICES), "--ramp", "20",
                            "--deadline", str(DEVICE_DEADLINE), "--serial-prefix", "SA")
    try:
        def mid_provisioning() -> bool:
            jobs = list(lab.job_states("SA").values())
            return jobs.count("completed") >= 20 and jobs.count("running") >= 100

        wait_until(mid_provisioning, 180, "20 devices done and 100 mid-provisioning")
        before = lab.job_states("SA")
        lab.kill_node(active)  # every process of the gateway's machine, keepalived included, and its cable
        wait_until(lambda: lab.state(standby, timeout=20) == "ACTIVE", 60, f"{standby} to become ACTIVE")
        # The dead machine's namespace still has the address on its eth0, but no cable: the standby holds it too.
        assert standby in lab.vip_holders()
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

    jobs = lab.job_states("SA")
    assert len(jobs) == CNS_DEVICES + PNP_DEVICES
    assert set(jobs.values()) == {"completed"}, {s: n for s, n in jobs.items() if n != "completed"}
    assert (lab.state(active), lab.state(standby, timeout=20)) == ("DOWN", "ACTIVE")
    row = lab.row(standby, "PnP Gateway HA state")
    assert row is not None and row["status"].endswith("Server is in Active state"), row
    assert "unreachable" in row["info"]

    def every_event_in_prime() -> bool:
        rows = lab.outbox()
        return all(sent for _, sent in rows) and {i for i, _ in rows} <= lab.prime_event_ids()

    wait_until(every_event_in_prime, 60, "every outbox event to reach a Prime sink")
    events = job_events(lab, "SA")
    assert len(events) == CNS_DEVICES + PNP_DEVICES
    assert all(list(kinds.values()).count("job.completed") == 1 for kinds in events.values())
    received = lab.prime_event_ids()
    missing = {serial: sorted(set(kinds) - received) for serial, kinds in events.items() if set(kinds) - received}
    assert missing == {}

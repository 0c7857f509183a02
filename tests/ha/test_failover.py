"""Failover of the integrated gateway between two Prime nodes, in network namespaces.

What an operator sees is asserted: which node answers ACTIVE on its monitoring port, that the PASSIVE one answers
device requests with 503, and that every event the gateway recorded reaches Prime.
"""

from __future__ import annotations

import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from pnp_integrated.lab import HaLab
from tests.support import states, wait_until


def device_request(lab: HaLab, name: str, path: str = "/pnp/HELLO") -> tuple[int, str]:
    """(status, Retry-After) of a device request served by ``name`` (its monitoring port serves the same app)."""
    node = lab.plan.node(name)
    ctx = ssl.create_default_context(cafile=str(Path(node.data_dir) / "certs" / "ca.pem"))
    ctx.check_hostname = False
    try:
        with urllib.request.urlopen(f"https://{node.address}:11010{path}", timeout=5, context=ctx) as resp:
            return resp.status, resp.headers.get("Retry-After", "")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("Retry-After", "")


def ha_row(lab: HaLab, name: str, service: str) -> dict[str, str]:
    status = lab.status(name)
    assert status is not None, f"{name} does not answer /status"
    return next(r for r in status["rows"] if r["service"] == service)


def test_vip_move_makes_the_other_node_active_and_a_crashed_mover_never_gives_two(
        ha_lab: Callable[[str], HaLab]) -> None:
    lab = ha_lab("keepalived")
    # Which node is ACTIVE comes from the one reading that found them settled (a second reading of a node still
    # busy starting may time out, and would name the wrong one).
    def one_active_one_passive() -> tuple[str, str] | None:
        now = states(lab)
        return now if sorted(now) == ["ACTIVE", "PASSIVE"] else None

    settled = wait_until(one_active_one_passive, 30, "one ACTIVE and one PASSIVE node")
    active, passive = ("prime-a", "prime-b") if settled[0] == "ACTIVE" else ("prime-b", "prime-a")
    # Settled a moment after both nodes answer their status: keepalived's election, the passive node's workers
    # reading the lease, the active node's reading of its Prime.
    wait_until(lambda: lab.vip_holders() == [active], 10, f"the VIP on {active} alone")
    wait_until(lambda: device_request(lab, passive) == (503, "10"), 10, f"{passive} to send devices away for 10 s")
    assert device_request(lab, active)[0] == 200
    wait_until(lambda: "connected to the VIP" in ha_row(lab, active, "Prime Infrastructure HA status")["info"], 10,
               f"{active} to read its Prime's state")

    # keepalived stops on the active node: the VIP moves, the other gateway follows within seconds.
    lab.stop_keepalived(active)
    started = time.monotonic()
    wait_until(lambda: lab.state(passive) == "ACTIVE", 15, f"{passive} to become ACTIVE")
    assert time.monotonic() - started < 10
    assert lab.vip_holders() == [passive]
    assert lab.state(active) == "PASSIVE"
    assert device_request(lab, active) == (503, "10")
    assert "is not on this node" in ha_row(lab, active, "PnP Gateway HA state")["info"]

    # Now keepalived crashes on the new active node: the VIP stays there, and the first node takes it too.
    lab.start_keepalived(active)
    lab.stop_keepalived(passive, crash=True)
    wait_until(lambda: sorted(lab.vip_holders()) == ["prime-a", "prime-b"], 20, "both nodes to carry the VIP")
    for _ in range(12):  # longer than a lease: the node holding it keeps it, the other stays PASSIVE
        assert states(lab) in (("ACTIVE", "PASSIVE"), ("PASSIVE", "ACTIVE")), states(lab)
        time.sleep(0.75)
    assert lab.state(passive) == "ACTIVE"
    assert "leader lease held by " + passive in ha_row(lab, active, "PnP Gateway HA state")["info"]


def test_hard_killed_active_node_is_replaced_and_every_event_reaches_prime(ha_lab: Callable[[str], HaLab]) -> None:
    lab = ha_lab("prime")
    wait_until(lambda: states(lab) == ("ACTIVE", "PASSIVE"), 30, "the primary's gateway to be ACTIVE")
    before = lab.simulate("cns", "--devices", "8", "--serial-prefix", "PRE", "--create-profile", timeout=120)
    assert before.returncode == 0, before.stdout + before.stderr

    # The primary's machine dies: every process of it is killed and its cable is gone.
    lab.kill_node("prime-a")
    started = time.monotonic()
    wait_until(lambda: lab.state("prime-b") == "ACTIVE", 30, "prime-b to become ACTIVE")
    assert time.monotonic() - started < 20  # Prime documents 5 to 10 minutes
    assert lab.vip_holders()[-1:] == ["prime-b"]
    # The gateway may turn ACTIVE as soon as the VIP arrives, a moment before Prime reports its own new state.
    wait_until(lambda: "secondary active" in ha_row(lab, "prime-b", "Prime Infrastructure HA status")["info"], 10,
               "Prime on prime-b to report itself active")
    assert "unreachable" in ha_row(lab, "prime-b", "Prime Infrastructure HA status")["info"]

    after = lab.simulate("cns", "--devices", "8", "--serial-prefix", "POST", "--create-profile", timeout=120)
    assert after.returncode == 0, after.stdout + after.stderr

    def all_delivered() -> bool:
        rows = lab.outbox()
        return bool(rows) and all(sent for _, sent in rows) and {i for i, _ in rows} <= lab.prime_event_ids()

    wait_until(all_delivered, 30, "every outbox event to reach a Prime sink")
    assert {"device.connected", "job.completed", "gateway.state"} <= _event_types(lab)

    # The primary comes back: standby (failback is manual), its gateway PASSIVE; failback hands everything back.
    lab.set_link("prime-a", True)
    lab.start_node("prime-a")
    lab.wait_ready("prime-a")
    wait_until(lambda: lab.state("prime-a") == "PASSIVE", 10, "the returning primary to be PASSIVE")
    assert lab.state("prime-b") == "ACTIVE"
    # Asked on the primary, which forwards it to the active secondary.
    failback = lab.exec(lab.plan.node("prime-a").namespace, lab._pnpp(), "prime", "failback", check=False)
    assert failback.returncode == 0, failback.stderr
    assert "handed over" in failback.stdout
    wait_until(lambda: states(lab) == ("ACTIVE", "PASSIVE"), 15, "the primary to be ACTIVE again")
    assert lab.vip_holders() == ["prime-a"]


def _event_types(lab: HaLab) -> set[str]:
    return {str(t) for (t,) in lab.query("SELECT DISTINCT type FROM outbox")}

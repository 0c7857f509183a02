"""A standalone gateway pair with its own VIP, moved by the gateways' built-in mover, in network namespaces.

What an operator sees is asserted: which gateway answers ACTIVE on its monitoring port and holds the VIP, the
"PnP Gateway HA state" row as Prime words it ("Primary Server is in Active state") with the other gateway's
connection, the Prime rows of each Prime combination, and that every event the gateways recorded reaches Prime.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from pnp_integrated.lab.standalone import StandaloneLab
from tests.support import wait_until

HA_ROW, PRIME_ROW = "PnP Gateway HA state", "Prime Infrastructure HA status"


# A busy host may take seconds to build a status answer; DOWN must mean down, not slow.
STATUS_TIMEOUT = 10.0


def pair_states(lab: StandaloneLab) -> tuple[str, str]:
    return lab.state("gw-a", STATUS_TIMEOUT), lab.state("gw-b", STATUS_TIMEOUT)


def row(lab: StandaloneLab, name: str, service: str) -> dict[str, str]:
    found = lab.row(name, service)
    assert found is not None, f"{name} does not answer /status"
    return found


def row_reads(lab: StandaloneLab, name: str, status: str, *facts: str) -> dict[str, str]:
    """Wait (a busy host may take a lease renewal late) until ``name``'s HA row has ``status`` and ``facts``."""
    def reads() -> dict[str, str] | None:
        found = lab.row(name, HA_ROW)
        ok = found is not None and found["status"] == status and all(f in found["info"] for f in facts)
        return found if ok else None

    found: dict[str, str] = wait_until(reads, 20, f"{name}'s HA row to read {status!r} with {facts}")
    return found


def every_event_in_prime(lab: StandaloneLab) -> bool:
    rows = lab.outbox()
    return bool(rows) and all(sent for _, sent in rows) and {i for i, _ in rows} <= lab.prime_event_ids()


def test_manual_failback_with_prime_on_a_vip(standalone_lab: Callable[..., StandaloneLab]) -> None:
    lab = standalone_lab("builtin", "vip")
    wait_until(lambda: pair_states(lab) == ("ACTIVE", "PASSIVE"), 60, "the primary gateway to be ACTIVE")
    assert lab.vip_holders() == ["gw-a"]
    row_reads(lab, "gw-a", "Primary Server is in Active state", "leader lease held by this gateway",
              f"peer {lab.plan.node('gw-b').address} reachable, standby")
    row_reads(lab, "gw-b", "Secondary Server is in Standby state", "leader lease held by gw-a",
              f"peer {lab.plan.node('gw-a').address} reachable, active")
    wait_until(lambda: "connected" in row(lab, "gw-a", PRIME_ROW)["info"], 20, "the bridge to reach Prime's VIP")
    prime = row(lab, "gw-a", PRIME_ROW)
    assert prime["status"] == "UP" and lab.plan.prime_vip in prime["info"], prime
    assert "PnP Gateway Monitoring port: 11010" in {r["service"] for r in lab.status("gw-a", STATUS_TIMEOUT)["rows"]}

    before = lab.simulate("cns", "--devices", "8", "--serial-prefix", "PRE", "--create-profile", timeout=120)
    assert before.returncode == 0, before.stdout + before.stderr

    # The primary's machine dies: every process of it is killed and its cable is gone.
    lab.kill_node("gw-a")
    started = time.monotonic()
    wait_until(lambda: lab.state("gw-b", STATUS_TIMEOUT) == "ACTIVE", 30, "gw-b to become ACTIVE")
    assert time.monotonic() - started < 20
    assert lab.vip_holders()[-1:] == ["gw-b"]
    row_reads(lab, "gw-b", "Secondary Server is in Active state", "unreachable", "last seen")

    after = lab.simulate("cns", "--devices", "8", "--serial-prefix", "POST", "--create-profile", timeout=120)
    assert after.returncode == 0, after.stdout + after.stderr

    # The primary comes back: standby, and it stays so (failback is manual) until the operator asks.
    lab.set_link("gw-a", True)
    lab.start_node("gw-a")
    lab.wait_ready("gw-a")
    wait_until(lambda: "reachable, active" in row(lab, "gw-a", HA_ROW)["info"], 20, "gw-a to see gw-b active")
    time.sleep(5)
    assert lab.vip_holders() == ["gw-b"]
    assert lab.state("gw-a", STATUS_TIMEOUT) == "PASSIVE"
    row_reads(lab, "gw-a", "Primary Server is in Standby state", "failback manual")

    failback = lab.ha_failback("gw-a")  # asked on the primary, which forwards it to the active secondary
    assert failback.returncode == 0, failback.stdout + failback.stderr
    assert "handed over" in failback.stdout
    wait_until(lambda: pair_states(lab) == ("ACTIVE", "PASSIVE"), 20, "the primary gateway to be ACTIVE again")
    assert lab.vip_holders() == ["gw-a"]
    row_reads(lab, "gw-a", "Primary Server is in Active state")
    again = lab.ha_failback("gw-b")
    assert again.returncode == 1 and "nothing to hand back" in again.stderr
    wait_until(lambda: every_event_in_prime(lab), 30, "every outbox event to reach a Prime sink")


class VipSamples:
    """Which gateways carry the VIP, and gw-b's state, sampled every 0.3 s in the background."""

    def __init__(self, lab: StandaloneLab) -> None:
        self.lab = lab
        self.samples: list[tuple[float, tuple[str, ...], str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append((time.monotonic(), tuple(self.lab.vip_holders()),
                                 self.lab.state("gw-b", STATUS_TIMEOUT)))
            self._stop.wait(0.3)

    def __enter__(self) -> VipSamples:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def failbacks(self, since: float) -> list[float]:
        """When the VIP went from gw-b to gw-a alone (after ``since``)."""
        moves, on_b = [], False
        for at, holders, _ in self.samples:
            if at < since:
                continue
            if "gw-b" in holders:
                on_b = True
            elif holders == ("gw-a",) and on_b:
                moves.append(at)
                on_b = False
        return moves


HOLD_DOWN = 10.0


def test_a_flapping_link_fails_back_once_after_the_hold_down(standalone_lab: Callable[..., StandaloneLab]) -> None:
    lab = standalone_lab("builtin", "none", PNP_GATEWAY_FAILBACK="auto", PNP_GATEWAY_HOLD_DOWN=str(HOLD_DOWN))
    wait_until(lambda: pair_states(lab) == ("ACTIVE", "PASSIVE"), 60, "the primary gateway to be ACTIVE")
    prime = row(lab, "gw-a", PRIME_ROW)
    assert prime["status"] == "UP" and lab.plan.primes[0].address in prime["info"], prime
    assert "failback automatic after a hold-down of 10 s" in row(lab, "gw-a", HA_ROW)["info"]
    with VipSamples(lab) as samples:
        # The primary's cable is pulled: it cannot reach the database, gives the VIP up; the secondary takes it.
        lab.set_link("gw-a", False)
        wait_until(lambda: lab.state("gw-b", STATUS_TIMEOUT) == "ACTIVE", 30, "gw-b to become ACTIVE")
        wait_until(lambda: lab.vip_holders() == ["gw-b"], 20, "the cut-off primary to give the VIP up")
        taken_over = time.monotonic()
        # The cable flaps: each time it is back for half a hold-down, then gone again for 2 s.
        for _ in range(4):
            lab.set_link("gw-a", True)
            time.sleep(HOLD_DOWN / 2)
            lab.set_link("gw-a", False)
            time.sleep(2)
        lab.set_link("gw-a", True)
        steady = time.monotonic()
        wait_until(lambda: "automatic failback in" in row(lab, "gw-a", HA_ROW)["info"], 10,
                   "gw-a to count its hold-down")
        wait_until(lambda: lab.vip_holders() == ["gw-a"], HOLD_DOWN + 20, "the automatic failback")
        failed_back = time.monotonic()
        wait_until(lambda: pair_states(lab) == ("ACTIVE", "PASSIVE"), 20, "gw-a to be ACTIVE again")
        time.sleep(3)
    assert samples.failbacks(taken_over) == [samples.failbacks(taken_over)[0]]  # exactly one failback
    assert failed_back - steady >= HOLD_DOWN - 1  # not before the link had been steady for a hold-down
    # While the link flapped, the secondary served all along: the VIP never left it, its gateway stayed ACTIVE.
    flapping = [(holders, state) for at, holders, state in samples.samples if taken_over <= at <= steady]
    assert flapping and all("gw-b" in holders and state == "ACTIVE" for holders, state in flapping), flapping
    assert lab.vip_holders() == ["gw-a"]
    wait_until(lambda: every_event_in_prime(lab), 30, "every outbox event to reach Prime")

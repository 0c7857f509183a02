"""The peer watch: two nodes ask each other's health monitor every second and decide which one holds the VIP.

Rules, applied after every check (``misses`` is 3 by default):

* a node holds the VIP only while it is healthy: a standby node whose last check failed takes nothing over, and an
  active one that stays unhealthy for ``misses`` checks gives the VIP up and tells its peer it is unhealthy (a node
  cut off from what it serves, such as the database of a gateway, is of no use with it; its peer, if healthy, takes
  over);
* a healthy standby node whose peer missed ``misses`` checks in a row (no answer, or an unhealthy one) becomes active
  (the peer failed); a peer that has not been healthy yet since it started is given ``start_grace`` seconds first,
  so the primary of a pair that starts together is not overtaken while its service is still coming up;
* a healthy standby *primary* whose peer is reachable and standby becomes active (start-up of a pair, manual
  failback);
* two active nodes (a healed partition): ``heal="primary"`` the secondary steps down (the primary wins);
  ``heal="longest"`` the node active for less long steps down, the secondary when both became active within
  :data:`SAME_MOMENT` seconds of each other, so a healed partition never moves the VIP back by itself;
* failback is manual by default (the active secondary is asked to hand over, ``POST /ha/failback``); with
  ``failback="auto"`` a standby primary asks for it itself once it has been healthy and its peer reachable for
  ``hold_down`` seconds without a break. A missed check (a link that flaps) starts the count again, and so does every
  request, so there is never more than one failback per hold-down period.

With ``observe`` (another program, such as keepalived, moves the VIP) the watch decides nothing: the state is whether
the VIP is here, and the peer's facts are kept for whoever reads ``/health``. Without a placement the states change
but no address moves (a single host, where the VIP is loopback).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from ..config import FAILBACK_MODES
from ..healthcheck import ask_health
from .health import HealthState
from .placement import VipPlacement, announce, configure_vip, remove_vip

log = logging.getLogger(__name__)

HEAL_RULES = ("primary", "longest")
# Two nodes that became active within this many seconds of each other did so at the same moment (the difference is
# their checks' timing); the secondary then steps down.
SAME_MOMENT = 2.0
START_GRACE = 60.0


class PeerWatch:
    """Watches the peer node and drives this node's HA state (and VIP); :meth:`run` until :meth:`stop`.

    ``subject`` names the node in log lines ("Prime", "gateway"); ``healthy`` is this node's own check (always
    healthy without one); ``observe`` replaces every decision by "is the VIP here" (see the module's rules).
    """

    def __init__(self, state: HealthState, peer: str, port: int, *, placement: VipPlacement | None = None,
                 interval: float = 1.0, misses: int = 3, failback: str = "manual", hold_down: float = 30.0,
                 healthy: Callable[[], bool] | None = None, observe: Callable[[], bool] | None = None,
                 heal: str = "primary", subject: str = "Prime", start_grace: float = START_GRACE) -> None:
        if failback not in FAILBACK_MODES:
            raise ValueError(f"failback {failback!r} must be one of {', '.join(FAILBACK_MODES)}")
        if heal not in HEAL_RULES:
            raise ValueError(f"heal {heal!r} must be one of {', '.join(HEAL_RULES)}")
        self.state = state
        self.peer = peer
        self.port = port
        self.placement = placement
        self.interval = interval
        self.misses_allowed = misses
        self.failback_mode = failback
        self.hold_down = hold_down
        self.healthy = healthy
        self.observe = observe
        self.heal = heal
        self.subject = subject
        self.start_grace = start_grace
        self._started = time.monotonic()
        self._healthy_once = healthy is None
        if healthy is not None:
            state.healthy = False  # not until its own check has said so once: keepalived trusts the answer at once
        self.missed = 0
        self.unhealthy = 0  # this node's own failed checks in a row
        self.failbacks_asked = 0
        self._stable_since: float | None = None  # healthy with the peer reachable since (monotonic)
        self._conflict = False  # the peer was active too at the last check
        self._lock = threading.Lock()
        self._stopping = threading.Event()

    def _ask(self, path: str = "/health", method: str = "GET", timeout: float | None = None) -> dict[str, Any] | None:
        return ask_health(self.peer, self.port, path, method, timeout=timeout or max(0.5, self.interval * 0.8))

    def _who(self) -> str:
        return f"{self.subject} {self.state.node} ({self.state.role})"

    # ---- transitions --------------------------------------------------------------------------------------------
    def become_active(self, why: str) -> None:
        with self._lock:
            if self.state.state == "active":
                return
            log.warning("%s becomes ACTIVE: %s", self._who(), why)
            configured = self.placement is not None and configure_vip(self.placement)
            # Active from the moment the VIP is here: the announcement takes seconds (arping), and a peer told
            # "standby" meanwhile would take the VIP too.
            self.state.active_since = time.monotonic()
            self.state.state = "active"
        if configured and self.placement is not None:
            announce(self.placement)

    def become_standby(self, why: str) -> None:
        with self._lock:
            if self.state.state == "standby":
                return
            log.warning("%s becomes STANDBY: %s", self._who(), why)
            self.state.state = "standby"
            if self.placement is not None:
                remove_vip(self.placement)

    def start_state(self) -> None:
        """Apply the initial state: an active node takes the VIP, a standby one makes sure it has not got it."""
        if self.observe is not None:
            self.state.state = "active" if self.observe() else "standby"
            self.state.active_since = time.monotonic()
        elif self.state.state == "active":
            self.state.state = "standby"
            self.become_active("started as active")
        elif self.placement is not None:
            remove_vip(self.placement)

    def release(self) -> None:
        """On a clean stop: give the VIP up at once rather than leave it until the peer takes it over."""
        if self.observe is None:
            self.become_standby("stopping")

    # ---- the watch ----------------------------------------------------------------------------------------------
    def check(self) -> None:
        """One check of this node and of the peer, and the decision they lead to."""
        healthy = self.healthy() if self.healthy is not None else True
        self.unhealthy = 0 if healthy else self.unhealthy + 1
        self._healthy_once = self._healthy_once or healthy
        # What the peer (and keepalived) is told: one slow check of a loaded node is not yet a failed node.
        self.state.healthy = self._healthy_once and self.unhealthy < self.misses_allowed
        self.state.starting = not self._healthy_once and time.monotonic() - self._started < self.start_grace
        peer = self._ask()
        now = time.monotonic()
        peer_healthy = peer is not None and peer.get("healthy", True) is not False
        peer_starting = peer is not None and peer.get("starting") is True
        if peer is None:
            self.state.peer_state = f"unreachable ({self.missed + 1} missed)"
        else:
            self.state.peer_seen = time.time()
            self.state.peer_state = str(peer.get("state", "unknown")) + (
                "" if peer_healthy else " (starting)" if peer_starting else " (unhealthy)")
        self.missed = 0 if peer_healthy or peer_starting else self.missed + 1
        if healthy and peer is not None:
            self._stable_since = self._stable_since or now
        else:
            self._stable_since = None
        if self.observe is not None:
            here = self.observe()
            if here and self.state.state != "active":
                self.state.active_since = now
            self.state.state = "active" if here else "standby"
            return
        self._decide(peer, healthy, peer_healthy, now)

    def _decide(self, peer: dict[str, Any] | None, healthy: bool, peer_healthy: bool, now: float) -> None:
        role = self.state.role
        peer_state = peer.get("state") if peer is not None else None
        self.state.note = ""
        if self.state.state == "standby":
            if not healthy:
                self.state.note = "not healthy: takes nothing over"
            elif self.missed >= self.misses_allowed:
                self.become_active(f"peer {self.peer} missed {self.missed} health checks")
            elif peer_state == "standby" and role == "primary":
                self.become_active(f"peer {self.peer} is standby")
            elif role == "primary" and peer_state == "active":
                self._maybe_fail_back(now)
            return
        if self.unhealthy >= self.misses_allowed:
            self.become_standby(f"not healthy for {self.unhealthy} checks")
        elif peer_state == "active" and peer_healthy:
            self._conflict = True
            if self._yields_to(peer or {}):
                self.become_standby(f"peer {self.peer} is active too and keeps the VIP")
            elif self.placement is not None:
                announce(self.placement)  # neighbours that learnt the peer's address for the VIP learn ours again
        elif self._conflict:
            self._conflict = False
            if self.placement is not None:
                announce(self.placement)

    def _yields_to(self, peer: dict[str, Any]) -> bool:
        """Two active nodes: whether this one steps down (see the module's rules)."""
        secondary = self.state.role == "secondary"
        if self.heal == "primary" or not isinstance(peer.get("active_for"), int | float):
            return secondary
        longer = float(peer["active_for"]) - self.state.active_for
        return longer > 0 if abs(longer) > SAME_MOMENT else secondary

    def _maybe_fail_back(self, now: float) -> None:
        """A standby primary, its peer active: the automatic failback once the hold-down has passed."""
        if self.failback_mode != "auto":
            return
        stable = now - (self._stable_since or now)
        if stable < self.hold_down:
            self.state.note = f"automatic failback in {self.hold_down - stable:.0f} s (hold-down {self.hold_down:g} s)"
            return
        self.failbacks_asked += 1
        log.warning("%s: automatic failback after %.0f s of hold-down: asking %s to hand over", self._who(),
                    stable, self.peer)
        self._ask("/ha/failback", "POST", timeout=5.0)
        self._stable_since = time.monotonic()  # the next request waits a whole hold-down after this one

    def run(self) -> None:
        while not self._stopping.is_set():
            started = time.monotonic()
            try:
                self.check()
            except Exception:  # a bug in one check must not end the watch
                log.exception("%s HA check failed", self.subject)
            self._stopping.wait(max(0.05, self.interval - (time.monotonic() - started)))

    def stop(self) -> None:
        self._stopping.set()

    # ---- failback -----------------------------------------------------------------------------------------------
    def failback(self) -> tuple[bool, str]:
        """Hand the active role back to the primary (called on either node); (done, explanation)."""
        node = self.state.node
        if self.observe is not None:
            return False, f"{self.subject} {node} does not move the VIP: what moves it decides the failback"
        if self.state.role == "primary":
            if self.state.state == "active":
                return False, f"{node} (primary) is already active"
            if not self.state.healthy:
                return False, f"{node} (primary) is not healthy: failback would leave no working active node"
            answer = self._ask("/ha/failback", "POST", timeout=5.0)
            if answer is None:
                return False, f"the secondary {self.peer} is not reachable"
            return bool(answer.get("ok")), str(answer.get("detail", ""))
        if self.state.state != "active":
            return False, f"{node} (secondary) is not active: nothing to hand back"
        peer = self._ask()
        if peer is None:
            return False, f"the primary {self.peer} is not reachable: failback would leave no active node"
        if peer.get("healthy", True) is False:
            return False, f"the primary {self.peer} is not healthy: failback would leave no working active node"
        self.become_standby("failback to the primary")
        return True, f"{node} (secondary) handed over; the primary {self.peer} takes the VIP"

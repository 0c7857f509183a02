"""Prime HA of the simulated Prime: two nodes watch each other through their health monitors and move the VIP.

Rules, applied after every check of the peer (every second):

* a standby node whose peer missed ``misses`` checks in a row becomes active (the peer failed);
* a standby *primary* whose peer is reachable and standby becomes active (start-up of a pair, manual failback);
* an active *secondary* whose peer primary is active too steps down (a healed partition: the primary wins);
* failback is manual by default (``pnpp prime failback`` asks the active secondary to hand over); with
  ``failback="auto"`` a standby primary asks for it itself once the peer has been reachable for ``hold_down`` s.

Becoming active adds the VIP to the interface (``ip addr add VIP/prefix dev IF``) and announces it with a gratuitous
ARP (``arping -U``, or a raw ARP frame where arping is missing); stepping down removes it. Without an interface the
states change but no address moves (a single host, where the VIP is loopback).
"""

from __future__ import annotations

import ipaddress
import logging
import shutil
import socket
import struct
import subprocess
import threading
import time
from dataclasses import dataclass

from ..config import Settings
from ..healthcheck import ask_health as ask
from .health import HealthState

log = logging.getLogger(__name__)

FAILBACK_MODES = ("manual", "auto")


@dataclass(frozen=True)
class VipPlacement:
    """Where the VIP lives on this node when it is active."""

    vip: str
    prefix: int
    interface: str

    @property
    def cidr(self) -> str:
        return f"{self.vip}/{self.prefix}"


def _ip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10)


def add_vip(place: VipPlacement) -> None:
    """Configure the VIP on the interface (already there is fine) and announce it."""
    done = _ip("addr", "add", place.cidr, "dev", place.interface)
    if done.returncode != 0 and "File exists" not in done.stderr:
        log.error("cannot add VIP %s to %s: %s", place.cidr, place.interface, done.stderr.strip())
        return
    announce(place)


def remove_vip(place: VipPlacement) -> None:
    done = _ip("addr", "del", place.cidr, "dev", place.interface)
    if done.returncode != 0 and "Cannot assign" not in done.stderr:
        log.error("cannot remove VIP %s from %s: %s", place.cidr, place.interface, done.stderr.strip())


def announce(place: VipPlacement) -> None:
    """Gratuitous ARP so switches and neighbours send VIP traffic here at once (IPv4 only)."""
    if ipaddress.ip_address(place.vip).version != 4:
        return
    if shutil.which("arping"):
        done = subprocess.run(["arping", "-U", "-c", "2", "-w", "2", "-I", place.interface, place.vip],
                              capture_output=True, text=True, timeout=10)
        if done.returncode in (0, 1):  # 1: no replies, which unsolicited ARP never expects
            return
        log.warning("arping failed (%s); sending the ARP frame directly", done.stderr.strip())
    try:
        send_gratuitous_arp(place.interface, place.vip)
    except OSError as exc:
        log.warning("gratuitous ARP for %s on %s failed: %s", place.vip, place.interface, exc)


def send_gratuitous_arp(interface: str, address: str) -> None:
    """One broadcast ARP request for ``address`` from ``address`` (AF_PACKET raw socket, needs CAP_NET_RAW)."""
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0806)) as sock:
        sock.bind((interface, 0))
        mac = sock.getsockname()[4][:6]
        ip = socket.inet_aton(address)
        broadcast = b"\xff" * 6
        arp = struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, 1, mac, ip, b"\0" * 6, ip)
        sock.send(broadcast + mac + struct.pack("!H", 0x0806) + arp)


class PeerWatch:
    """Watches the peer Prime node and drives this node's HA state (and VIP); :meth:`run` until :meth:`stop`."""

    def __init__(self, settings: Settings, state: HealthState, peer: str, *, placement: VipPlacement | None = None,
                 interval: float = 1.0, misses: int = 3, failback: str = "manual", hold_down: float = 30.0) -> None:
        if failback not in FAILBACK_MODES:
            raise ValueError(f"failback {failback!r} must be one of {', '.join(FAILBACK_MODES)}")
        self.settings = settings
        self.state = state
        self.peer = peer
        self.placement = placement
        self.interval = interval
        self.misses_allowed = misses
        self.failback_mode = failback
        self.hold_down = hold_down
        self.missed = 0
        self._peer_up_since: float | None = None
        self._lock = threading.Lock()
        self._stopping = threading.Event()

    # ---- transitions --------------------------------------------------------------------------------------------
    def become_active(self, why: str) -> None:
        with self._lock:
            if self.state.state == "active":
                return
            log.warning("Prime %s (%s) becomes ACTIVE: %s", self.state.node, self.state.role, why)
            if self.placement is not None:
                add_vip(self.placement)
            self.state.state = "active"

    def become_standby(self, why: str) -> None:
        with self._lock:
            if self.state.state == "standby":
                return
            log.warning("Prime %s (%s) becomes STANDBY: %s", self.state.node, self.state.role, why)
            self.state.state = "standby"
            if self.placement is not None:
                remove_vip(self.placement)

    def start_state(self) -> None:
        """Apply the initial state: an active node takes the VIP, a standby one makes sure it has not got it."""
        if self.state.state == "active":
            self.state.state = "standby"
            self.become_active("started as active")
        elif self.placement is not None:
            remove_vip(self.placement)

    # ---- the watch ----------------------------------------------------------------------------------------------
    def check(self) -> None:
        """One check of the peer and the decision it leads to."""
        peer = ask(self.peer, self.settings.health_port, timeout=max(0.5, self.interval * 0.8))
        now = time.monotonic()
        if peer is None:
            self.missed += 1
            self._peer_up_since = None
            self.state.peer_state = f"unreachable ({self.missed} missed)"
        else:
            self.missed = 0
            self._peer_up_since = self._peer_up_since or now
            self.state.peer_state = str(peer.get("state", "unknown"))
        mine, role = self.state.state, self.state.role
        if mine == "standby":
            if self.missed >= self.misses_allowed:
                self.become_active(f"peer {self.peer} missed {self.missed} health checks")
            elif peer is not None and peer.get("state") == "standby" and role == "primary":
                self.become_active(f"peer {self.peer} is standby")
            elif (peer is not None and role == "primary" and self.failback_mode == "auto"
                  and peer.get("state") == "active" and now - (self._peer_up_since or now) >= self.hold_down):
                log.info("automatic failback: asking %s to hand over", self.peer)
                ask(self.peer, self.settings.health_port, "/ha/failback", "POST")
        elif peer is not None and peer.get("state") == "active" and role == "secondary":
            self.become_standby(f"primary {self.peer} is active")

    def run(self) -> None:
        while not self._stopping.is_set():
            try:
                self.check()
            except Exception:  # a bug in one check must not end the watch
                log.exception("Prime HA check failed")
            self._stopping.wait(self.interval)

    def stop(self) -> None:
        self._stopping.set()

    # ---- failback -----------------------------------------------------------------------------------------------
    def failback(self) -> tuple[bool, str]:
        """Hand the active role back to the primary (called on either node); (done, explanation)."""
        if self.state.role == "primary":
            if self.state.state == "active":
                return False, f"{self.state.node} (primary) is already active"
            answer = ask(self.peer, self.settings.health_port, "/ha/failback", "POST")
            if answer is None:
                return False, f"the secondary {self.peer} is not reachable"
            return bool(answer.get("ok")), str(answer.get("detail", ""))
        if self.state.state != "active":
            return False, f"{self.state.node} (secondary) is not active: nothing to hand back"
        peer = ask(self.peer, self.settings.health_port)
        if peer is None:
            return False, f"the primary {self.peer} is not reachable: failback would leave no active node"
        self.become_standby("failback to the primary")
        return True, f"{self.state.node} (secondary) handed over; the primary {self.peer} takes the VIP"

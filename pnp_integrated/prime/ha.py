"""Prime HA of the simulated Prime: two nodes watch each other through their health monitors and move the VIP.

The rules, the VIP placement and its announcement are those of every pair (:mod:`pnp_integrated.vip_pair`); a Prime
pair heals a partition in favour of the primary, and failback is manual by default (``pnpp prime failback`` asks the
active secondary to hand over) or, with ``failback="auto"``, asked for by the standby primary once the peer has been
reachable for ``hold_down`` s. Without an interface the states change but no address moves (a single host, where
the VIP is loopback).
"""

from __future__ import annotations

from ..config import Settings
from ..vip_pair import FAILBACK_MODES, HealthState, VipPlacement, announce, remove_vip, send_gratuitous_arp
from ..vip_pair import PeerWatch as PairWatch
from ..vip_pair import ask_health as ask

__all__ = ["FAILBACK_MODES", "PeerWatch", "VipPlacement", "announce", "ask", "remove_vip",
           "send_gratuitous_arp"]


class PeerWatch(PairWatch):
    """Watches the peer Prime node on its health port and drives this node's HA state (and VIP)."""

    def __init__(self, settings: Settings, state: HealthState, peer: str, *, placement: VipPlacement | None = None,
                 interval: float = 1.0, misses: int = 3, failback: str = "manual", hold_down: float = 30.0) -> None:
        super().__init__(state, peer, settings.health_port, placement=placement, interval=interval, misses=misses,
                         failback=failback, hold_down=hold_down, heal="primary", subject="Prime")
        self.settings = settings

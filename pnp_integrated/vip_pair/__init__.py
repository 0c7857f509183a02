"""A pair of nodes that share a VIP: where it goes, who holds it, and the health monitors the two ask each other.

Used by the simulated Prime's HA pair (:mod:`pnp_integrated.prime`) and by the standalone gateway pair (its watch
process, :mod:`.gateway`). Both run a :class:`HealthMonitor` on ``health_port`` that answers who the node is, and a
:class:`PeerWatch` that asks the peer's every second and moves the VIP by one set of rules (:mod:`.watch`).

Becoming active adds the VIP to the interface (``ip addr add VIP/prefix dev IF``) and announces it with a gratuitous
ARP (``arping -U``, or a raw ARP frame where arping is missing); stepping down removes it (:mod:`.placement`).
"""

from ..config import FAILBACK_MODES
from ..healthcheck import ask_health
from .health import ROLES, STATES, HealthMonitor, HealthState, health_app
from .placement import VipPlacement, address_is_local, announce, configure_vip, remove_vip, send_gratuitous_arp
from .watch import HEAL_RULES, PeerWatch

__all__ = [
    "FAILBACK_MODES", "HEAL_RULES", "ROLES", "STATES", "HealthMonitor", "HealthState", "PeerWatch", "VipPlacement",
    "address_is_local", "announce", "ask_health", "configure_vip", "health_app", "remove_vip",
    "send_gratuitous_arp",
]

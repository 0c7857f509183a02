"""High availability: follow the Prime VIP and decide whether this node serves devices (ACTIVE) or not (PASSIVE).

ACTIVE = the VIP is on this node (or, where the VIP cannot move, the co-located Prime says this node is active)
AND this node holds the database leader lease; keepalived has no fencing, so a crashed node that kept the VIP must
not serve devices while the other node holds the lease. PASSIVE nodes refuse device sessions (CNS ERROR 503, HTTP
503 with Retry-After) and send nothing to Prime.

Each worker keeps a :class:`NodeRole` in ``app.extensions`` (a cache of facts whose source of truth is the kernel's
address table and the lease row in the database).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import ssl
import urllib.request
from dataclasses import dataclass, field

from ..config import Settings
from .vip import vip_can_move, vip_is_local

log = logging.getLogger(__name__)

LEADER_LEASE = "leader"
RETRY_AFTER_SECONDS = 10


def lease_holder_node(holder: str) -> str:
    """Lease holders are ``<node>:<pid>``; the node part says which node is the leader."""
    return holder.rsplit(":", 1)[0] if holder else ""


def prime_reports_active(settings: Settings, timeout: float = 2.0) -> bool:
    """Ask the co-located Prime health monitor whether this node is the active one."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # loopback to our own node; the answer carries no secret
    try:
        with urllib.request.urlopen(f"https://127.0.0.1:{settings.health_port}/health", timeout=timeout,
                                    context=ctx) as resp:
            return json.load(resp).get("state") == "active"
    except (OSError, ValueError):
        return False


def vip_condition(settings: Settings) -> bool:
    """The VIP half of ACTIVE for this node, measured now."""
    if settings.ha_mode == "none":
        return True
    if vip_can_move(settings.vip):
        return vip_is_local(settings.vip)
    return prime_reports_active(settings)


@dataclass
class NodeRole:
    """This worker's view of the node's HA role."""

    settings: Settings
    vip_ok: bool = True
    lease_node: str = ""
    lease_expires: dt.datetime | None = None
    transitions: int = 0
    state: str = field(default="ACTIVE")

    def evaluate(self, now: dt.datetime) -> str:
        """Recompute ACTIVE/PASSIVE from the cached facts; count transitions."""
        if self.settings.ha_mode == "none":
            new = "ACTIVE"
        else:
            lease_ok = (
                self.lease_node == self.settings.node_name
                and self.lease_expires is not None
                and self.lease_expires > now
            )
            new = "ACTIVE" if self.vip_ok and lease_ok else "PASSIVE"
        if new != self.state:
            self.transitions += 1
            log.info("gateway is now %s (VIP %s on this node: %s, lease holder: %s)",
                     new, self.settings.vip, self.vip_ok, self.lease_node or "none")
            self.state = new
        return new

    @property
    def reason(self) -> str:
        if self.state == "ACTIVE":
            return f"VIP {self.settings.vip} here" + (", lease held" if self.settings.ha_mode != "none" else "")
        if not self.vip_ok:
            return f"VIP {self.settings.vip} is not on this node"
        return f"leader lease held by {self.lease_node or 'nobody'}"


def initial_role(settings: Settings) -> NodeRole:
    # Without HA the node is ACTIVE from the start; with HA it is PASSIVE until it has proved both conditions.
    return NodeRole(settings=settings, vip_ok=vip_condition(settings),
                    state="ACTIVE" if settings.ha_mode == "none" else "PASSIVE")

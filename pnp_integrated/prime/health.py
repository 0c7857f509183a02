"""Prime's health monitor on HTTPS ``health_port``: ``GET /health`` tells who this node is in the HA pair.

The gateway's VIP follower asks it where no VIP can move (single host, loopback), and operators use it to see which
Prime node is active. It is the monitor every pair shares (:mod:`pnp_integrated.vip_pair.health`): node, role
(primary/secondary), state (active/standby), HA mode, VIP and peer; ``POST /ha/failback`` (from this host or the peer
only) hands the active role back to the primary (see :mod:`.ha`).
"""

from __future__ import annotations

from ..vip_pair.health import ROLES, STATES, HealthMonitor, HealthState, health_app

__all__ = ["ROLES", "STATES", "HealthMonitor", "HealthState", "health_app"]

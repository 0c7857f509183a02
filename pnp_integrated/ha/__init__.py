"""High availability: follow the Prime VIP and decide whether this node serves devices (ACTIVE) or not (PASSIVE).

ACTIVE = the VIP is on this node (or, where the VIP cannot move, the co-located Prime says this node is active)
AND this node holds the database leader lease; keepalived has no fencing, so a crashed node that kept the VIP must
not serve devices while the other node holds the lease. PASSIVE nodes refuse device sessions (CNS ERROR 503, HTTP
503 with Retry-After) and send nothing to Prime.

Each worker keeps a :class:`~pnp_integrated.context.NodeRole` in its gateway state (a cache of facts whose source of
truth is the kernel's address table and the lease row in the database); this package establishes and acts on it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from flask import Flask, Response, request

from ..config import Settings
from ..context import TAKING_OVER_HOLD_SECONDS, NodeRole, accepting_devices, gateway_state, node_role, retry_after
from ..healthcheck import ask_health
from ..urls import DEVICE_PATHS
from .vip import VipFollower, vip_can_move, vip_is_local

log = logging.getLogger(__name__)

# Where no VIP can move, the co-located Prime health monitor is asked this often.
HEALTH_POLL_SECONDS = 1.0


def lease_holder_node(holder: str) -> str:
    """Lease holders are ``<node>:<pid>``; the node part says which node is the leader."""
    return holder.rsplit(":", 1)[0] if holder else ""


def prime_health(settings: Settings, host: str = "127.0.0.1", timeout: float = 2.0) -> dict[str, Any] | None:
    """The JSON answer of a Prime health monitor (the co-located one by default); ``None`` when unreachable."""
    return ask_health(host, settings.health_port, timeout=timeout)


def prime_reports_active(settings: Settings, timeout: float = 2.0) -> bool:
    """Ask the co-located Prime health monitor whether this node is the active one."""
    health = prime_health(settings, timeout=timeout)
    return health is not None and health.get("state") == "active"


def vip_condition(settings: Settings) -> bool:
    """The VIP half of ACTIVE for this node, measured now."""
    if not settings.gateway_in_pair:
        return True
    if vip_can_move(settings.vip):
        return vip_is_local(settings.vip)
    return prime_reports_active(settings)


def initial_role(settings: Settings, measure: bool = True) -> NodeRole:
    """The role of a worker that has proved nothing yet.

    Without HA the node is ACTIVE from the start; with HA it is PASSIVE until it has proved both conditions.
    ``measure=False`` leaves the VIP condition unmeasured (False) for the follower to establish.
    """
    ha = settings.gateway_in_pair
    return NodeRole(settings=settings, vip_ok=vip_condition(settings) if measure or not ha else False,
                    state="PASSIVE" if ha else "ACTIVE")


# ---- per-app wiring ---------------------------------------------------------------------------------------------
def refuse_devices_when_passive() -> Response | None:
    """``before_request`` hook: HTTP device endpoints answer 503 with Retry-After while the node is PASSIVE."""
    if not request.path.startswith(DEVICE_PATHS) or accepting_devices(hold=TAKING_OVER_HOLD_SECONDS):
        return None
    role = node_role()
    seconds = retry_after()
    body = f"PnP gateway {role.settings.node_name} is PASSIVE ({role.reason}); retry in {seconds}s\n"
    return Response(body, 503, {"Retry-After": str(seconds)}, content_type="text/plain; charset=utf-8")


def start_follower(app: Flask, wake: Callable[[], None]) -> VipFollower | None:
    """Start following the VIP in this worker (HA only): ``role.vip_ok`` tracks it and ``wake`` is called on change.

    A VIP that can move is followed through rtnetlink; a loopback VIP through the co-located Prime health monitor.
    """
    role = node_role(app)
    settings = role.settings
    if not settings.gateway_in_pair:
        return None
    from ..models import utcnow

    def changed(vip_ok: bool) -> None:
        role.vip_ok = vip_ok
        role.evaluate(utcnow())  # losing the VIP stops device sessions at once, before the lease is released
        wake()

    if vip_can_move(settings.vip):
        follower = VipFollower(settings.vip, changed)
    else:
        follower = VipFollower(settings.vip, changed, poll_seconds=HEALTH_POLL_SECONDS,
                               probe=lambda: prime_reports_active(settings))
    role.vip_ok = follower.vip_local
    threading.Thread(target=follower.run, name="pnp-vip-follower", daemon=True).start()
    return follower


# ---- what a change of role does -----------------------------------------------------------------------------------
def became_active(app: Flask, role: NodeRole, *, leader: bool) -> None:
    """The node turned ACTIVE. The worker holding the lease (its bridge already starting) tells Prime and resumes jobs.

    Job state is in the database and each device's next contact continues its job from the step it reached (see
    :mod:`pnp_integrated.provisioning.engine`); the pushes only the server can send are sent again by
    :func:`.resume.resume_unfinished`.
    """
    if not leader:
        return
    from .resume import resume_unfinished

    unfinished = _record_state_event(app, role)
    log.info("%s is ACTIVE and leads: Prime bridge connecting, %s unfinished jobs", role.settings.node_name,
             unfinished)
    resume_unfinished(app)


def became_passive(app: Flask, role: NodeRole, *, was_leader: bool) -> None:
    """The node turned PASSIVE: end this worker's live device sessions with 503; the former leader tells Prime."""
    closed = close_device_sessions(app, f"node {role.settings.node_name} is now PASSIVE ({role.reason})")
    if closed:
        log.info("closed %d live device sessions: node is PASSIVE", closed)
    if was_leader:
        _record_state_event(app, role)


def close_device_sessions(app: Flask, message: str) -> int:
    """End every live CNS session of this worker with ERROR 503 (devices reconnect through the VIP)."""
    import os

    worker = gateway_state(app).cns_worker
    if worker is None or getattr(worker, "pid", None) != os.getpid():
        return 0
    connections = list(worker.connections.values())
    for connection in connections:
        connection.end(503, message)
    return len(connections)


def _record_state_event(app: Flask, role: NodeRole) -> int:
    """Write the ``gateway.state`` event (sent by whichever node leads next); returns the unfinished job count."""
    from sqlalchemy import func, select

    from ..models import ProvisioningJob, db
    from ..outbox import record_event

    settings = role.settings
    try:
        with app.app_context():
            unfinished = int(db.session.scalar(
                select(func.count()).select_from(ProvisioningJob).where(ProvisioningJob.finished_at.is_(None))
            ) or 0)
            record_event("gateway.state", {"state": role.state, "vip": settings.vip, "ha_mode": settings.ha_mode,
                                           "node": settings.node_name, "reason": role.reason,
                                           "unfinished_jobs": unfinished})
            db.session.commit()
        return unfinished
    except Exception:  # the database is unreachable: the state change itself has happened regardless
        log.exception("could not record the gateway.state event")
        return 0


# ---- status -------------------------------------------------------------------------------------------------------
def ha_status_rows(role: NodeRole) -> list[dict[str, str]]:
    """The two HA rows of the status table: this gateway's role, and Prime's HA status."""
    return [gateway_ha_row(role), prime_ha_row(role.settings)]


def gateway_ha_row(role: NodeRole) -> dict[str, str]:
    """The "PnP Gateway HA state" row: this gateway's role and why.

    In a standalone gateway pair it reads as Prime's does ("Primary Server is in Active state"), with the VIP and
    lease facts and the connection to the other gateway as the pair's health monitor last saw it.
    """
    from ..models import utcnow

    settings = role.settings
    state = role.evaluate(utcnow())
    if settings.standalone and settings.gateway_in_pair:
        return _gateway_pair_row(role, state)
    mode = settings.gateway_ha if settings.standalone else settings.ha_mode
    return {"service": "PnP Gateway HA state", "mode": mode, "status": state,
            "info": f"{role.reason}; transitions: {role.transitions}"}


def _gateway_pair_row(role: NodeRole, state: str) -> dict[str, str]:
    import time

    settings = role.settings
    server = f"{settings.gateway_role.capitalize()} Server"
    status = f"{server} is in {'Active' if state == 'ACTIVE' else 'Standby'} state"
    vip = f"VIP {settings.vip} {'on this gateway' if role.vip_ok else 'not on this gateway'}"
    lease = ("leader lease held by this gateway" if role.node_leads else
             f"leader lease held by {role.lease_node}" if role.lease_node else "leader lease held by nobody")
    if settings.gateway_vip_mover == "keepalived":
        failback = "failback manual (keepalived, nopreempt: restart keepalived on the active secondary)"
    elif settings.gateway_failback == "manual":
        failback = "failback manual (`pnpp ha failback`)"
    else:
        failback = f"failback automatic after a hold-down of {settings.gateway_hold_down:g} s"
    health = ask_health(settings.node_addr, settings.health_port, timeout=1.0)
    if health is None:
        peer = (f"peer {settings.gateway_peer}: not known (this gateway's pair health monitor on "
                f"{settings.node_addr}:{settings.health_port} does not answer)")
    else:
        seen = float(health.get("peer_seen") or 0)
        last = f"last seen {max(0.0, time.time() - seen):.1f} s ago" if seen else "never seen"
        peer_state = str(health.get("peer_state") or "not asked yet")
        reachable = "unreachable" if peer_state.startswith("unreachable") else f"reachable, {peer_state}"
        peer = f"peer {settings.gateway_peer} {reachable}, {last}"
        if health.get("note"):
            peer += f"; {health['note']}"
    return {"service": "PnP Gateway HA state", "mode": f"pair ({settings.gateway_vip_mover})", "status": status,
            "info": f"{vip}; {lease}; {peer}; {failback}; transitions: {role.transitions}"}


def prime_ha_row(settings: Settings) -> dict[str, str]:
    """The "Prime Infrastructure HA status" row, from the co-located Prime's health monitor (integrated) or from
    the Prime servers the gateway talks to (standalone)."""
    if settings.standalone:
        return _remote_prime_row(settings)
    health = prime_health(settings, timeout=1.0)
    if health is None:
        prime = {"status": "DOWN", "info": f"Prime health monitor not reachable on port {settings.health_port}"}
    else:
        peer = f", peer {health['peer']}" if health.get("peer") else ""
        peer += f" ({health['peer_state']})" if health.get("peer_state") else ""
        where = ""
        if settings.ha_mode == "vip":
            here = vip_is_local(settings.vip) if vip_can_move(settings.vip) else health.get("state") == "active"
            where = f"; connected to the VIP {settings.vip}" + ("" if here else " (held by the peer)")
        prime = {"status": "UP",
                 "info": f"{health.get('node', '?')} {health.get('role', '?')} {health.get('state', '?')}{peer}"
                         f"{where}"}
    return {"service": "Prime Infrastructure HA status", "mode": str(health.get("ha_mode", ""))
            if health else settings.ha_mode, **prime}


def _remote_prime_row(settings: Settings) -> dict[str, str]:
    """Standalone: which Prime server the bridge is connected to and what each one's health monitor says.

    With different addresses the row names the primary or the secondary; with Prime's VIP only the address (either
    server may hold it); DOWN when no Prime server answers and the bridge is not connected.
    """
    from ..bus.state import read_state
    from ..tls import trust_path

    trusted = trust_path(settings)
    ca = str(trusted) if trusted.exists() else ""
    bridge = read_state(settings)
    connected = bridge.prime_host if bridge is not None and bridge.connected else ""
    roles = dict(zip(settings.prime_addresses, ("primary", "secondary"), strict=False))
    states: dict[str, str] = {}
    for host in roles:
        answer = ask_health(host, settings.health_port, timeout=1.0, ca_file=ca)
        states[host] = str(answer.get("state", "?")) if answer else ""
    named = settings.ha_mode == "different-ip"
    seen = "; ".join(f"{role if named else 'Prime'} {host} {states[host] or 'not answering'}"
                     for host, role in roles.items())
    if named:
        where = f"connected to the {roles[connected]} {connected}" if connected in roles else "not connected"
    elif settings.ha_mode == "vip":
        where = (f"connected to Prime's VIP {settings.prime_address}" if connected else "not connected") + \
            " (which server holds the VIP is not visible from here)"
    else:
        where = f"connected to {settings.prime_address}" if connected else "not connected"
    up = bool(connected) or any(states.values())
    if not up:
        names = " nor ".join(roles)
        return {"service": "Prime Infrastructure HA status", "mode": settings.ha_mode, "status": "DOWN",
                "info": f"neither the broker nor the health monitor (port {settings.health_port}) of {names} "
                        "answers"}
    return {"service": "Prime Infrastructure HA status", "mode": settings.ha_mode, "status": "UP",
            "info": f"{where}; {seen}"}

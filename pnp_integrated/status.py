"""Node status: the rows of Prime's ``pnpp status`` table, as data (``/status``) and as text (``pnpp status``).

Every row reflects a measured state: a port row is UP only when a process of this node is listening on it.
"""

from __future__ import annotations

import os
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import psutil
from flask import Blueprint, jsonify
from sqlalchemy import func, select

from .config import Settings
from .context import gateway_state
from .models import DeviceSession, db
from .ports import node_ports
from .version import __version__

blueprint = Blueprint("status", __name__)

COLUMNS = ("SERVICE", "MODE", "STATUS", "ADDITIONAL INFO")


def listening_pids() -> dict[int, list[int]]:
    """Port -> pids of processes listening on it (all addresses)."""
    out: dict[int, set[int]] = defaultdict(set)
    for conn in psutil.net_connections(kind="tcp"):
        if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.pid:
            out[conn.laddr.port].add(conn.pid)
    return {port: sorted(pids) for port, pids in out.items()}


# The scan walks every socket and every process's descriptors: with thousands of device sessions open it costs tens
# of milliseconds. /status (an operator asking) reads afresh; /metrics scrapes and dashboard refreshes, which come by
# themselves every few seconds, take a reading up to 2 s old.
LISTENING_FRESH_FOR = 2.0


@dataclass
class ListeningScan:
    """This worker's last :func:`listening_pids` reading (kept in ``app.extensions``)."""

    read_at: float = float("-inf")
    ports: dict[int, list[int]] = field(default_factory=dict)

    def read(self, *, fresh_for: float = 0.0) -> dict[int, list[int]]:
        """A reading at most ``fresh_for`` seconds old (0: a new one)."""
        if time.monotonic() - self.read_at >= fresh_for:
            self.ports, self.read_at = listening_pids(), time.monotonic()
        return self.ports


def live_sessions_by_port() -> dict[int, int]:
    rows = db.session.execute(
        select(DeviceSession.port, func.count()).where(DeviceSession.closed_at.is_(None)).group_by(DeviceSession.port)
    ).all()
    return {int(port): int(count) for port, count in rows}


def _row(service: str, mode: str, up: bool, info: str) -> dict[str, str]:
    return {"service": service, "mode": mode, "status": "UP" if up else "DOWN", "info": info}


# The web services of Prime's table and the URL path each one answers on (both on the HTTP and HTTPS ports).
WEB_SERVICES = (
    ("Image Web Service", "/images/", "images_dir"),
    ("Config Web Service", "/cns/config.asp", ""),
    ("Resource Web Service", "/resources/", "resources_dir"),
)


def web_service_rows(settings: Settings, pids: dict[int, list[int]], routes: set[str]) -> list[dict[str, str]]:
    """A web service is UP on a port when the port is served and the service's route and storage exist."""
    rows = []
    for service, path, storage in WEB_SERVICES:
        mounted = any(rule.startswith(path.rstrip("/")) for rule in routes)
        store_ok = not storage or getattr(settings, storage).is_dir()
        for tls, port in ((True, settings.https_port), (False, settings.http_port)):
            scheme = "https" if tls else "http"
            serving = bool(pids.get(port))
            if not mounted:
                info = "not served by this version"
            elif not store_ok:
                info = f"{getattr(settings, storage)} missing"
            elif not serving:
                info = f"port {port} not listening"
            else:
                info = f"{scheme}://{settings.vip}:{port}{path}"
            rows.append(_row(service, "SSL" if tls else "PLAIN TEXT", mounted and store_ok and serving, info))
    return rows


def build_status(settings: Settings, *, cached_ports: bool = False) -> dict[str, Any]:
    """The node's status, in the row order of Prime's ``pnpp status``; measured now unless ``cached_ports``."""
    from flask import current_app

    from .bus.state import status_rows as broker_rows
    from .storage import disk_status_rows

    state = gateway_state(current_app)
    if state.listening_scan is None:
        state.listening_scan = ListeningScan()
    scan: ListeningScan = state.listening_scan
    pids = scan.read(fresh_for=LISTENING_FRESH_FOR if cached_ports else 0.0)
    sessions = live_sessions_by_port()
    broker = {row["service"]: row for row in broker_rows(settings, pids)}
    port_rows: dict[str, list[dict[str, str]]] = defaultdict(list)
    for role in node_ports(settings):
        serving = pids.get(role.port, [])
        mode = "SSL" if role.tls else "PLAIN TEXT"
        pid_text = "pids: " + ",".join(map(str, serving)) if serving else "not listening"
        if role.service == "CNS Gateway":
            name, info = f"CNS Gateway port: {role.port}", f"{pid_text}; devices: {sessions.get(role.port, 0)}"
        elif role.service == "CNS Gateway Dispatcher":
            name, info = f"CNS Gateway Dispatcher port: {role.port}", pid_text
        else:
            name, info = role.service, f"port: {role.port}; {pid_text}"
        port_rows[role.service].append(_row(name, mode, bool(serving), info))
    routes = {rule.rule for rule in current_app.url_map.iter_rules()}
    rows = [
        _row("System", "", True, f"pnp-integrated {__version__} on {settings.node_name}, pid {os.getppid()}"),
        *disk_status_rows(current_app),
        broker["Event Messaging Bus"],
        *port_rows["CNS Gateway Dispatcher"],
        *port_rows["CNS Gateway"],
        *port_rows["HTTPD"],
        *web_service_rows(settings, pids, routes),
        broker["Prime Infrastructure Broker"],
        *port_rows["PnP Gateway Monitoring"],
    ]
    from .context import node_role
    from .ha import ha_status_rows

    ha_role = node_role(current_app)
    rows.extend(ha_status_rows(ha_role))  # PnP Gateway HA state, Prime Infrastructure HA status
    return {
        "node": settings.node_name,
        "version": __version__,
        "vip": settings.vip,
        "ha_mode": settings.ha_mode,
        "state": ha_role.state,
        "reason": ha_role.reason,
        "ha_transitions": ha_role.transitions,
        "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "rows": rows,
    }


def status_is_healthy(status: dict[str, Any]) -> bool:
    return all(row["status"] != "DOWN" for row in status["rows"])


def format_table(status: dict[str, Any]) -> str:
    """Prime's layout: SERVICE, MODE, STATUS, ADDITIONAL INFO, left-aligned columns."""
    table = [COLUMNS] + [(r["service"], r["mode"], r["status"], r["info"]) for r in status["rows"]]
    widths = [max(len(row[i]) for row in table) for i in range(3)]
    lines = []
    for i, row in enumerate(table):
        lines.append("  ".join(cell.ljust(widths[j]) for j, cell in enumerate(row[:3])) + "  " + row[3])
        if i == 0:
            lines.append("  ".join("-" * w for w in widths) + "  " + "-" * len(COLUMNS[3]))
    return "\n".join(lines)


@blueprint.get("/status")
def status_view() -> Any:
    status = build_status(gateway_state().settings)
    db.session.remove()
    return jsonify(status), 200

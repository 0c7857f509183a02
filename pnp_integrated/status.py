"""Node status: the rows of Prime's ``pnpp status`` table, as data (``/status``) and as text (``pnpp status``).

Every row reflects a measured state: a port row is UP only when a process of this node is listening on it.
"""

from __future__ import annotations

import os
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import psutil
from flask import Blueprint, Flask, current_app, jsonify
from sqlalchemy import func, select

from .config import Settings
from .context import gateway_state
from .models import DeviceSession, db
from .ports import node_ports
from .refusals import STATUS_BUSY, count_refusal
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


class SharedReading:
    """A value at most ``max_age`` seconds old, built by one caller at a time: the others wait for that build and
    share its result, so a thousand readers at once cost one build, not a thousand.

    Kept per worker in the gateway state (``GatewayState.readings``); the lock is gevent's once the worker is patched.
    """

    def __init__(self) -> None:
        import threading

        self._lock = threading.Lock()
        self._value: Any = None
        self._built_at = float("-inf")

    def get(self, build: Callable[[], Any], max_age: float) -> Any:
        if time.monotonic() - self._built_at < max_age:
            return self._value
        with self._lock:
            if time.monotonic() - self._built_at >= max_age:  # nobody built it while we waited
                self._value = build()
                self._built_at = time.monotonic()
            return self._value


def shared_reading(app: Flask, name: str) -> SharedReading:
    readings = gateway_state(app).readings
    if name not in readings:
        readings[name] = SharedReading()
    reading: SharedReading = readings[name]
    return reading


# /status answers from a reading at most this old: an operator asking twice a second sees each change within a
# second, and any number of readers costs one build a second per worker.
STATUS_MAX_AGE = 1.0
# Status requests a worker serves at once; the rest get 503 + Retry-After at once rather than queueing up.
STATUS_AT_ONCE = 64


def current_status(app: Flask, max_age: float = STATUS_MAX_AGE) -> dict[str, Any]:
    """The node's status, shared by every reader of this worker (see :class:`SharedReading`)."""
    state = gateway_state(app)

    def build() -> dict[str, Any]:
        with app.app_context():
            status = build_status(state.settings)
            db.session.remove()
            return status

    status: dict[str, Any] = shared_reading(app, "status").get(build, max_age)
    return status


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


def build_status(settings: Settings) -> dict[str, Any]:
    """The node's status, in the row order of Prime's ``pnpp status``, measured now (readers use
    :func:`current_status`: the listening-socket scan walks every descriptor of the host, tens of milliseconds with
    thousands of device sessions)."""
    from flask import current_app

    from .bus.state import status_rows as broker_rows
    from .storage import disk_status_rows

    pids = listening_pids()
    sessions = live_sessions_by_port()
    broker = {row["service"]: row for row in broker_rows(settings, pids)}
    port_rows: dict[str, list[dict[str, str]]] = defaultdict(list)
    for role in node_ports(settings):
        serving = pids.get(role.port, [])
        mode = "SSL" if role.tls else "PLAIN TEXT"
        pid_text = "pids: " + ",".join(map(str, serving)) if serving else "not listening"
        if role.service == "CNS Gateway":
            name, info = f"CNS Gateway port: {role.port}", f"{pid_text}; devices: {sessions.get(role.port, 0)}"
        elif role.service in ("CNS Gateway Dispatcher", "PnP Gateway Monitoring"):
            name, info = f"{role.service} port: {role.port}", pid_text
        else:
            name, info = role.service, f"port: {role.port}; {pid_text}"
        port_rows[role.service].append(_row(name, mode, bool(serving), info))
    routes = {rule.rule for rule in current_app.url_map.iter_rules()}
    rows = [
        _row("System", "", True, f"pnp-integrated {__version__} on {settings.node_name}, pid {os.getppid()}"),
        *disk_status_rows(current_app),
        *([broker["Event Messaging Bus"]] if "Event Messaging Bus" in broker else []),
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
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    state = gateway_state(app)
    if state.status_gate is None:
        import threading

        state.status_gate = threading.BoundedSemaphore(STATUS_AT_ONCE)
    if not state.status_gate.acquire(blocking=False):
        count_refusal(STATUS_BUSY)
        return jsonify({"error": "too many status requests at once; retry in 1 s"}), 503, {"Retry-After": "1"}
    try:
        return jsonify(current_status(app)), 200
    finally:
        state.status_gate.release()

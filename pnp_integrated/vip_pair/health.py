"""The health monitor of a node of a pair, on HTTPS ``health_port``: ``GET /health`` tells who this node is.

The answer is small JSON: node, role (primary/secondary), state (active/standby), HA mode, VIP and peer (plus the
peer's state as last seen). A node of a pair also says whether it is healthy itself (a node that is not answers
``503``, so a plain ``curl -f`` can track it), how long it has been active, when it last heard from its peer and
what it is waiting for. ``POST /ha/failback`` (from this host or the peer only) hands the active role back to the
primary (see :mod:`.watch`).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from ..config import Settings
from ..listeners import TLSWSGIServer, bind_socket
from ..tls import server_context

log = logging.getLogger(__name__)

ROLES = ("primary", "secondary")
STATES = ("active", "standby")
Failback = Callable[[], tuple[bool, str]]


@dataclass
class HealthState:
    """What ``/health`` reports; ``state`` changes on failover (the watch of :mod:`.watch` keeps it)."""

    node: str
    role: str
    state: str
    ha_mode: str
    vip: str
    peer: str = ""
    peer_state: str = ""
    # Reported by a node with a peer only (a lone node has nothing more to say):
    healthy: bool = True  # what this node serves works (the watch's own check)
    starting: bool = False  # not healthy yet since it started, within its grace period: not counted as failed
    peer_seen: float = 0.0  # wall clock of the peer's last answer; 0: never
    note: str = ""  # what the node waits for (a hold-down, a manual failback)
    active_since: float = field(default=0.0, repr=False)  # monotonic; answered as active_for

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"role {self.role!r} must be one of {', '.join(ROLES)}")
        if self.state not in STATES:
            raise ValueError(f"state {self.state!r} must be one of {', '.join(STATES)}")
        if self.state == "active" and not self.active_since:
            self.active_since = time.monotonic()

    @property
    def active_for(self) -> float:
        """Seconds this node has been active without a break (0 while standby)."""
        return max(0.0, time.monotonic() - self.active_since) if self.state == "active" else 0.0

    def answer(self) -> dict[str, Any]:
        """The JSON object of ``GET /health``."""
        body: dict[str, Any] = {"node": self.node, "role": self.role, "state": self.state, "ha_mode": self.ha_mode,
                                "vip": self.vip, "peer": self.peer, "peer_state": self.peer_state}
        if self.peer:
            body.update(healthy=self.healthy, starting=self.starting, active_for=round(self.active_for, 1),
                        peer_seen=round(self.peer_seen, 1), note=self.note)
        return body


def health_app(state: HealthState, failback: Failback | None = None, trusted: Iterable[str] = ()) \
        -> Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]:
    """The WSGI application of the health port (no framework: ``/health`` and, in HA, ``/ha/failback``).

    ``trusted``: addresses besides loopback and the peer that may ask for a failback (this node's own address,
    when the monitor listens only there).
    """
    allowed = {"127.0.0.1", "::1", *trusted}

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path, method = environ.get("PATH_INFO", ""), environ.get("REQUEST_METHOD", "GET")
        if path.rstrip("/") == "/ha/failback":
            status, body = _failback(environ, method, state, failback, allowed | {state.peer})
        elif path.rstrip("/") != "/health":
            status, body = "404 Not Found", {"error": f"no resource {path}; try GET /health"}
        elif method not in ("GET", "HEAD"):
            status, body = "405 Method Not Allowed", {"error": "only GET /health is served"}
        else:
            body = state.answer()
            status = "200 OK" if state.healthy or not state.peer else "503 Service Unavailable"
        data = json.dumps(body).encode()
        start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(data)))])
        return [] if method == "HEAD" else [data]

    return app


def _failback(environ: dict[str, Any], method: str, state: HealthState, failback: Failback | None,
              allowed: set[str]) -> tuple[str, dict[str, Any]]:
    if method != "POST":
        return "405 Method Not Allowed", {"error": "POST /ha/failback"}
    if failback is None:
        return "409 Conflict", {"ok": False, "detail": f"{state.node} has no HA peer"}
    if environ.get("REMOTE_ADDR", "") not in allowed - {""}:
        return "403 Forbidden", {"ok": False, "detail": "failback is asked from this host or the peer only"}
    done, detail = failback()
    return ("200 OK" if done else "409 Conflict"), {"ok": done, "detail": detail}


class HealthMonitor:
    """The HTTPS listener of ``/health``; ``start`` returns once bound (bind errors propagate), ``stop`` drains."""

    def __init__(self, settings: Settings, state: HealthState, host: str = "0.0.0.0",
                 failback: Failback | None = None, trusted: Iterable[str] = ()) -> None:
        self.settings = settings
        self.state = state
        self.host = host
        self.failback = failback
        self.trusted = tuple(trusted)
        self._server: TLSWSGIServer | None = None

    def start(self) -> None:
        sock = bind_socket(self.host, self.settings.health_port, reuse_port=False, setting="PNP_HEALTH_PORT")
        try:
            self._server = TLSWSGIServer(sock, health_app(self.state, self.failback, self.trusted),
                                         context=server_context(self.settings),
                                         handshake_timeout=self.settings.tls_handshake_timeout)
            self._server.start()
        except BaseException:
            sock.close()
            raise
        log.info("health monitor on https://%s:%s/health", self.host, self.settings.health_port)

    def stop(self, timeout: float = 2.0) -> None:
        if self._server is not None:
            self._server.stop(timeout=timeout)
            self._server = None

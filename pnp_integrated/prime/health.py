"""Prime's health monitor on HTTPS ``health_port``: ``GET /health`` tells who this node is in the HA pair.

The gateway's VIP follower asks it where no VIP can move (single host, loopback), and operators use it to see which
Prime node is active. The answer is small JSON: node, role (primary/secondary), state (active/standby), HA mode, VIP
and peer (plus the peer's state as last seen). ``POST /ha/failback`` (from this host or the peer only) hands the
active role back to the primary (see :mod:`.ha`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any

from ..config import Settings
from ..listeners import TLSWSGIServer, bind_socket
from ..tls import server_context

log = logging.getLogger(__name__)

ROLES = ("primary", "secondary")
STATES = ("active", "standby")


@dataclass
class HealthState:
    """What ``/health`` reports; ``state`` changes on failover."""

    node: str
    role: str
    state: str
    ha_mode: str
    vip: str
    peer: str = ""
    peer_state: str = ""

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"role {self.role!r} must be one of {', '.join(ROLES)}")
        if self.state not in STATES:
            raise ValueError(f"state {self.state!r} must be one of {', '.join(STATES)}")


def health_app(state: HealthState, failback: Callable[[], tuple[bool, str]] | None = None) \
        -> Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]:
    """The WSGI application of the health port (no framework: ``/health`` and, in HA, ``/ha/failback``)."""

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path, method = environ.get("PATH_INFO", ""), environ.get("REQUEST_METHOD", "GET")
        if path.rstrip("/") == "/ha/failback":
            status, body = _failback(environ, method, state, failback)
        elif path.rstrip("/") != "/health":
            status, body = "404 Not Found", {"error": f"no resource {path}; try GET /health"}
        elif method not in ("GET", "HEAD"):
            status, body = "405 Method Not Allowed", {"error": "only GET /health is served"}
        else:
            status, body = "200 OK", asdict(state)
        data = json.dumps(body).encode()
        start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(data)))])
        return [] if method == "HEAD" else [data]

    return app


def _failback(environ: dict[str, Any], method: str, state: HealthState,
              failback: Callable[[], tuple[bool, str]] | None) -> tuple[str, dict[str, Any]]:
    if method != "POST":
        return "405 Method Not Allowed", {"error": "POST /ha/failback"}
    if failback is None:
        return "409 Conflict", {"ok": False, "detail": f"{state.node} has no HA peer"}
    client = environ.get("REMOTE_ADDR", "")
    if client not in ("127.0.0.1", "::1", state.peer):
        return "403 Forbidden", {"ok": False, "detail": "failback is asked from this host or the peer only"}
    done, detail = failback()
    return ("200 OK" if done else "409 Conflict"), {"ok": done, "detail": detail}


class HealthMonitor:
    """The HTTPS listener of ``/health``; ``start`` returns once bound (bind errors propagate), ``stop`` drains."""

    def __init__(self, settings: Settings, state: HealthState, host: str = "0.0.0.0",
                 failback: Callable[[], tuple[bool, str]] | None = None) -> None:
        self.settings = settings
        self.state = state
        self.host = host
        self.failback = failback
        self._server: TLSWSGIServer | None = None

    def start(self) -> None:
        sock = bind_socket(self.host, self.settings.health_port, reuse_port=False)
        try:
            self._server = TLSWSGIServer(sock, health_app(self.state, self.failback),
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

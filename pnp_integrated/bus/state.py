"""The bridge's connection state, shared with ``/status`` through a small file under ``<data_dir>/run``.

Only the leader worker writes it; any worker (or ``pnpp status``) reads it. A file whose writer is gone reads as
DOWN, so a crashed leader never shows a stale UP. The state belongs to the leader's term: a bridge of an older term
(a former leader still shutting down) cannot overwrite what the current leader wrote, so its "bridge stopped" never
turns the row DOWN while events flow.
"""

from __future__ import annotations

import fcntl
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from ..config import Settings


@dataclass(frozen=True)
class BridgeState:
    """``connected`` is True only between CONNECTED and the connection's end."""

    connected: bool
    peer: str  # address:port of Prime's broker
    holder: str = ""
    pid: int = 0
    connections: int = 0
    detail: str = ""
    since: float = 0.0
    term: int = 0  # the leader lease's term of the bridge that wrote it
    prime_role: str = ""  # primary / secondary of a Prime pair with two addresses ("" for one address)
    prime_host: str = ""


def state_path(settings: Settings) -> Path:
    return settings.data_dir / "run" / "bridge.json"


def write_state(settings: Settings, state: BridgeState) -> bool:
    """Replace the state file atomically (readers never see half a file), unless a live bridge of a later term wrote it.

    Returns whether it was written. Writers take turns on a lock file, so the check and the write are one step.
    """
    path = state_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    with (path.parent / "bridge.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        current = read_state(settings)
        if current is not None and current.term > state.term and current.pid != state.pid:
            return False
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        tmp.write_text(json.dumps(asdict(state)))
        os.replace(tmp, path)
    return True


def read_state(settings: Settings) -> BridgeState | None:
    """The last state written by a live leader, or ``None`` (no leader, or its process is gone)."""
    try:
        data = json.loads(state_path(settings).read_text())
        state = BridgeState(**data)
    except (OSError, ValueError, TypeError):
        return None
    if not _alive(state.pid):
        return None
    return state


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def status_rows(settings: Settings, listening: dict[int, list[int]]) -> list[dict[str, str]]:
    """The broker rows of the status table, as Prime shows them (a standalone gateway has no local bus).

    ``listening`` maps ports to the pids listening on them (the status module measures it once for every row).
    """
    state = read_state(settings)
    peer = " or ".join(f"{host}:{settings.broker_port}" for host in settings.prime_addresses)
    if state is not None and state.connected:
        role = f" (Prime's {state.prime_role})" if state.prime_role else ""
        prime = {"status": "UP", "info": f"Connection: {state.connections}; Connection Detail: {state.peer}{role}"}
    else:
        why = state.detail if state is not None and state.detail else "no bridge running on this node"
        prime = {"status": "DOWN", "info": f"Connection: 0; Connection Detail: {peer} not connected ({why})"}
    broker_row = {"service": "Prime Infrastructure Broker", "mode": "SSL", **prime}
    if settings.standalone:
        return [broker_row]  # no co-located Prime, so no local Event Messaging Bus: events go to Prime's broker
    bus_pids = listening.get(settings.bus_port, [])
    bus_info = f"port: {settings.bus_port}; " + ("pids: " + ",".join(map(str, bus_pids)) if bus_pids
                                                 else "not listening")
    return [
        broker_row,
        {"service": "Event Messaging Bus", "mode": "PLAIN TEXT", "status": "UP" if bus_pids else "DOWN",
         "info": bus_info},
    ]

"""What the benchmarks read from /proc: the CPU time a node's gateway processes have used.

The machine may be shared, so wall-clock rates are noisy; CPU per unit of work is what sizes a node.
"""

from __future__ import annotations

import os
from pathlib import Path

LISTEN = "0A"  # the TCP state of a listening socket in /proc/net/tcp


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def cpu_seconds(pid: int) -> float:
    """CPU seconds (user + system, every thread) used so far by one process; 0 once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def process_tree(root: int) -> list[int]:
    """``root`` and every process under it."""
    found = []
    pending = [root]
    while pending:
        pid = pending.pop()
        pending.extend(_children(pid))
        found.append(pid)
    return sorted(found)


def gateway_pids(root: int) -> list[int]:
    """The gunicorn processes (master and workers) in the process tree under ``root``."""
    found = []
    for pid in process_tree(root):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"gunicorn" in cmdline:
            found.append(pid)
    return found


def gateway_cpu_seconds(root: int) -> float:
    """CPU seconds (user + system) used so far by the gunicorn processes in the process tree under ``root``."""
    return sum(cpu_seconds(pid) for pid in gateway_pids(root))


def listening_pids(port: int) -> list[int]:
    """The processes holding a listening TCP socket on ``port`` (IPv4 or IPv6), for a server the bench did not start.

    A pre-forking server's workers share the master's listening socket, so all of them are found.
    """
    sockets = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if fields[3] == LISTEN and int(fields[1].rsplit(":", 1)[1], 16) == port:
                sockets.add(f"socket:[{fields[9]}]")
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if any(os.readlink(fd) in sockets for fd in (entry / "fd").iterdir()):
                found.append(int(entry.name))
        except OSError:
            continue
    return sorted(found)


def _gunicorn_parents(root: int) -> dict[int, int]:
    """The gunicorn processes in the process tree under ``root``, each with its parent's pid."""
    found: dict[int, int] = {}
    pending = [root]
    while pending:
        pid = pending.pop()
        pending.extend(_children(pid))
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if b"gunicorn" in cmdline:
            found[pid] = int(fields[1])
    return found


def gateway_workers(root: int) -> list[int]:
    """The gunicorn workers under ``root``: gunicorn processes whose parent is the gunicorn master."""
    tree = _gunicorn_parents(root)
    return sorted(pid for pid, parent in tree.items() if parent in tree)


def gateway_rss_bytes(root: int) -> int:
    """Resident memory (bytes) of the gunicorn master and workers under ``root``, summed as the kernel reports each
    (pages shared since the fork count in every process)."""
    total = 0
    for pid in _gunicorn_parents(root):
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        total += next((int(line.split()[1]) * 1024 for line in status.splitlines() if line.startswith("VmRSS:")), 0)
    return total

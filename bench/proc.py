"""What the benchmarks read from /proc: the CPU time a node's gateway processes have used.

The machine may be shared, so wall-clock rates are noisy; CPU per unit of work is what sizes a node.
"""

from __future__ import annotations

import os
from pathlib import Path


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def gateway_cpu_seconds(root: int) -> float:
    """CPU seconds (user + system) used so far by the gunicorn processes in the process tree under ``root``."""
    total = 0.0
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
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


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

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

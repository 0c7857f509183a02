"""Where the request metrics of all workers are kept, and how they stay bounded (prometheus_client's multiprocess
files). Standard library only: the gunicorn configuration imports this before prometheus_client is first imported,
which reads ``PROMETHEUS_MULTIPROC_DIR`` once, at its import."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from .config import Settings


def metrics_files_dir(settings: Settings) -> Path:
    """Where prometheus_client's per-worker files go: memory (``/dev/shm``) where the host has it, not the data disk.

    Those files are memory-mapped and grown sparse, so on a full file system the first write to a new page kills the
    worker with SIGBUS, and its replacement dies the same way. One directory per data directory: several nodes may
    share a host.
    """
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK | os.X_OK):
        key = hashlib.sha256(str(settings.data_dir.resolve()).encode()).hexdigest()[:16]
        return shm / f"pnp-integrated-{os.getuid()}-{key}"
    return settings.data_dir.resolve() / "run" / "prometheus"


def prune_metrics_files(directory: Path, live_pids: set[int], keep_dead: int = 8) -> int:
    """Delete the metrics files of all but the ``keep_dead`` most recently active ended workers; how many went.

    Each worker leaves a file per metric type, so a node whose workers are replaced again and again would otherwise
    grow the directory without end. What the pruned workers had counted leaves the sums (a counter reset, which
    Prometheus' rate() expects).
    """
    ended: dict[int, list[Path]] = {}
    for path in directory.glob("*.db"):
        pid = path.stem.rsplit("_", 1)[-1]
        if pid.isdigit() and int(pid) not in live_pids:
            ended.setdefault(int(pid), []).append(path)

    def last_active(pid: int) -> float:
        times = []
        for path in ended[pid]:
            try:
                times.append(path.stat().st_mtime)
            except OSError:
                continue
        return max(times, default=0.0)

    removed = 0
    for pid in sorted(ended, key=last_active, reverse=True)[keep_dead:]:
        for path in ended[pid]:
            path.unlink(missing_ok=True)
            removed += 1
    return removed

"""Free space where the node writes, and what it does when there is too little.

Below the watermark (``PNP_DISK_MIN_FREE_MB``) the node takes no new device work: HTTP device requests get 503 with
a Retry-After, the CNS dispatcher and gateway ports answer BUSY, and the status table's "Disk" row is DOWN with the
path and the space left. Devices come back later on their own; nothing half-written is left behind, and no write
is attempted that a full file system would refuse. Operators, status, metrics and the API keep working, so the
operator can see why and free space.

Each worker reads the file systems at most once a second (``statvfs``, a few microseconds), keeping its reading in
its gateway state.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from flask import Flask, Response, request

from .config import Settings
from .context import gateway_state
from .refusals import DISK_LOW, count_refusal
from .urls import DEVICE_PATHS

MIB = 1024 * 1024
DISK_RETRY_AFTER = 60  # seconds: freeing space is an operator's job, not a matter of a moment
READ_EVERY = 1.0


@dataclass(frozen=True)
class DiskReading:
    """The free space of the file system holding ``path``, against the node's minimum."""

    path: str
    free: int
    total: int
    minimum: int

    @property
    def low(self) -> bool:
        return self.free < self.minimum

    def describe(self) -> str:
        text = f"{self.path}: {_size(self.free)} free of {_size(self.total)}"
        if self.low:
            return (f"{text}, below PNP_DISK_MIN_FREE_MB={self.minimum // MIB}: no new device work until space is "
                    "freed")
        return f"{text} (minimum {_size(self.minimum)})"


def _size(octets: int) -> str:
    if octets >= 1024 * MIB:
        return f"{octets / (1024 * MIB):.1f} GiB"
    return f"{octets / MIB:.1f} MiB"


def read_disk(path: Path, minimum: int) -> DiskReading:
    """Measure now. The space an unprivileged writer may use (``f_bavail``), as the node is one."""
    stat = os.statvfs(path)
    return DiskReading(str(path), stat.f_bavail * stat.f_frsize, stat.f_blocks * stat.f_frsize, minimum)


def watched_paths(settings: Settings) -> list[Path]:
    """One directory per file system the node writes to: the data directory, and a SQLite database kept elsewhere."""
    paths = [settings.data_dir]
    url = settings.sqlalchemy_url
    if url.startswith("sqlite:///"):
        paths.append(Path(url[len("sqlite:///"):]).parent)
    seen: set[int] = set()
    out: list[Path] = []
    for path in paths:
        try:
            device = os.stat(path).st_dev
        except OSError:
            continue
        if device not in seen:
            seen.add(device)
            out.append(path)
    return out


class DiskWatch:
    """A worker's readings of the node's file systems, at most ``every`` seconds old."""

    def __init__(self, settings: Settings, every: float = READ_EVERY) -> None:
        self.paths = watched_paths(settings)
        self.minimum = settings.disk_min_free_mb * MIB
        self.every = every
        self._read_at = -every
        self._readings: list[DiskReading] = []

    def readings(self, fresh: bool = False) -> list[DiskReading]:
        """The readings, measured again when older than ``every`` seconds (or ``fresh``: an operator is asking)."""
        now = time.monotonic()
        if fresh or now - self._read_at >= self.every:
            readings = []
            for path in self.paths:
                try:
                    readings.append(read_disk(path, self.minimum))
                except OSError:  # a directory that vanished reads as full: nothing can be written there
                    readings.append(DiskReading(str(path), 0, 0, self.minimum))
            self._readings, self._read_at = readings, now
        return self._readings

    def low(self) -> DiskReading | None:
        """The first file system below the minimum, or ``None``."""
        if self.minimum <= 0:
            return None
        return next((reading for reading in self.readings() if reading.low), None)


def disk_watch(app: Flask | None = None) -> DiskWatch:
    state = gateway_state(app)
    if state.disk is None:
        state.disk = DiskWatch(state.settings)
    watch: DiskWatch = state.disk
    return watch


def disk_low(app: Flask | None = None) -> DiskReading | None:
    """Whether the node must take no new device work for want of space: the reading that says so, else ``None``."""
    return disk_watch(app).low()


def refuse_devices_when_disk_low() -> Response | None:
    """``before_request`` hook: HTTP device requests get 503 with Retry-After while a file system is below minimum."""
    if not request.path.startswith(DEVICE_PATHS):
        return None
    reading = disk_low()
    if reading is None:
        return None
    count_refusal(DISK_LOW)
    body = f"PnP gateway cannot take device work now: {reading.describe()}; retry in {DISK_RETRY_AFTER}s\n"
    return Response(body, 503, {"Retry-After": str(DISK_RETRY_AFTER)}, content_type="text/plain; charset=utf-8")


def disk_status_rows(app: Flask | None = None) -> list[dict[str, str]]:
    """The "Disk" rows of the status table, one per file system the node writes to."""
    return [{"service": "Disk", "mode": "", "status": "DOWN" if reading.low else "UP", "info": reading.describe()}
            for reading in disk_watch(app).readings(fresh=True)]

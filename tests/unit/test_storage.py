"""Free-space readings and the bounded metrics directory."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

from flask import Flask

from pnp_integrated.metrics_files import prune_metrics_files
from pnp_integrated.storage import MIB, DiskReading, disk_low, disk_status_rows


def test_a_node_with_room_to_write_takes_devices_and_says_how_much_is_left(app_factory: Callable[..., Flask]) -> None:
    app = app_factory(disk_min_free_mb=1)
    assert disk_low(app) is None
    [row] = disk_status_rows(app)
    assert row["status"] == "UP" and "free of" in row["info"]
    assert app.test_client().get("/pnp/HELLO").status_code == 200


def test_below_the_watermark_devices_get_503_and_operators_still_get_status(app_factory: Callable[..., Flask]) -> None:
    app = app_factory(disk_min_free_mb=1 << 40)  # more than any disk: the node is below it
    reading = disk_low(app)
    assert reading is not None and reading.low
    client = app.test_client()
    for path in ("/pnp/HELLO", "/cns/config.asp?DeviceID=X", "/images/ios.bin", "/resources/day0.cfg"):
        answer = client.get(path)
        assert answer.status_code == 503 and answer.headers["Retry-After"] == "60", path
        assert b"PNP_DISK_MIN_FREE_MB" in answer.data
    status = client.get("/status").get_json()
    [row] = [r for r in status["rows"] if r["service"] == "Disk"]
    assert row["status"] == "DOWN" and "below PNP_DISK_MIN_FREE_MB" in row["info"]


def test_the_reading_says_where_and_how_much() -> None:
    low = DiskReading("/var/lib/pnp", 3 * MIB, 10 * 1024 * MIB, 256 * MIB)
    assert low.low
    assert low.describe().startswith("/var/lib/pnp: 3.0 MiB free of 10.0 GiB, below PNP_DISK_MIN_FREE_MB=256")


def test_metrics_files_of_ended_workers_are_kept_only_for_the_most_recent(tmp_path: Path) -> None:
    live = {100, 101}
    for pid in (100, 101, *range(1, 21)):
        for kind in ("histogram", "counter"):
            path = tmp_path / f"{kind}_{pid}.db"
            path.write_bytes(b"x")
            os.utime(path, (time.time() - 1000 + pid, time.time() - 1000 + pid))
    removed = prune_metrics_files(tmp_path, live, keep_dead=8)
    assert removed == 2 * 12
    left = sorted({int(p.stem.rsplit("_", 1)[1]) for p in tmp_path.glob("*.db")})
    assert left == [*range(13, 21), 100, 101]  # the live workers and the 8 ended most recently

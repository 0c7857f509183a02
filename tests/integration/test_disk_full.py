"""A node whose data disk fills up: new device work is refused with a clear answer, nothing crashes, and the node
takes devices again once space is freed.

The data directory is a real, small file system (a tmpfs mounted for the test) filled with a real file.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from pnp_integrated.devsim.link import dispatch
from pnp_integrated.devsim.node import PNPP, RunningNode, start_node
from pnp_integrated.storage import READ_EVERY
from tests.support import wait_until

DISK_MIB = 64
MIN_FREE_MIB = 16


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """``tmp_path/node/data`` on a file system of its own of DISK_MIB MiB."""
    if os.geteuid() != 0:
        pytest.fail("mounting the test's small file system needs root")
    data = tmp_path / "node" / "data"
    data.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={DISK_MIB}m,mode=0700", "tmpfs", str(data)], check=True)
    try:
        yield data
    finally:
        subprocess.run(["umount", "-l", str(data)], check=False)


def fill(path: Path, leave_mib: float) -> None:
    """Write ``path`` until the file system has about ``leave_mib`` MiB left (0: until it refuses to take more)."""
    stat = os.statvfs(path.parent)
    target = stat.f_bavail * stat.f_frsize - int(leave_mib * 1024 * 1024)
    chunk = b"\0" * (1024 * 1024)
    with path.open("ab") as out:
        try:
            while target > 0:
                out.write(chunk[: min(len(chunk), target)])
                out.flush()
                target -= len(chunk)
            if leave_mib == 0:
                while True:
                    out.write(chunk)
                    out.flush()
        except OSError:  # ENOSPC: full
            pass


def get(node: RunningNode, path: str) -> tuple[int, dict[str, str], str]:
    try:
        with urllib.request.urlopen(node.url(path), timeout=10) as resp:
            return resp.status, dict(resp.headers), resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read().decode()


def disk_rows(node: RunningNode) -> list[dict[str, str]]:
    _, data = node.get_json("/status")
    return [row for row in data["rows"] if row["service"] == "Disk"]


def booted_workers(node: RunningNode) -> int:
    return len(re.findall(r"Booting worker with pid", node.log_text()))


def test_a_full_data_disk_refuses_device_work_clearly_and_crashes_nothing(small_disk: Path) -> None:
    node = start_node(small_disk.parent, disk_min_free_mb=MIN_FREE_MIB)
    try:
        [row] = disk_rows(node)
        assert row["status"] == "UP" and str(small_disk) in row["info"]
        assert get(node, "/pnp/HELLO")[0] == 200
        workers = booted_workers(node)

        # Below the watermark: devices are told to come back, in their own protocol.
        fill(small_disk / "filler", leave_mib=MIN_FREE_MIB / 2)
        time.sleep(READ_EVERY + 0.2)  # every worker has read the free space again since
        status, headers, body = get(node, "/pnp/HELLO")
        assert status == 503
        assert headers.get("Retry-After") == "60" and "PNP_DISK_MIN_FREE_MB" in body, (headers, body)
        busy = dispatch("127.0.0.1", node.port("cns_port_base") + 1, "DISKFULL1")
        assert (busy.command, busy.get("Retry-After")) == ("BUSY", "60")
        assert "PNP_DISK_MIN_FREE_MB" in (busy.get("Message") or "")
        [row] = disk_rows(node)
        assert row["status"] == "DOWN" and str(small_disk) in row["info"] and "MiB free" in row["info"]
        table = subprocess.run([PNPP, "status"], env=node.env, capture_output=True, text=True, timeout=30)
        assert table.returncode == 1  # a DOWN row
        assert re.search(r"^Disk\s+DOWN\s+" + re.escape(str(small_disk)), table.stdout, re.M), table.stdout

        # Not one byte left: every port still answers, no worker dies.
        fill(small_disk / "filler", leave_mib=0)
        for _ in range(20):
            assert get(node, "/pnp/HELLO")[0] == 503
            assert get(node, "/cns/config.asp?DeviceID=DISKFULL2")[0] == 503
            assert get(node, "/metrics")[0] == 200
            assert disk_rows(node)[0]["status"] == "DOWN"
            assert dispatch("127.0.0.1", node.port("cns_port_base") + 1, "DISKFULL3").command == "BUSY"
        time.sleep(1)
        assert node.process.poll() is None
        assert booted_workers(node) == workers, node.log_text()
        assert "SIGBUS" not in node.log_text() and "Worker exited" not in node.log_text()

        # Space freed: devices are served again without a restart.
        (small_disk / "filler").unlink()
        wait_until(lambda: get(node, "/pnp/HELLO")[0] == 200, 5, "Open PnP served again once space is freed")
        assert dispatch("127.0.0.1", node.port("cns_port_base") + 1, "DISKFULL4").command == "REDIRECT"
        assert disk_rows(node)[0]["status"] == "UP"
    finally:
        node.stop()

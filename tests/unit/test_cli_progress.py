"""Progress of long commands: a bar on a terminal, a bounded number of plain lines in a pipe or a log.

``pnpp image add`` runs here for real (its own data directory); ``pnpp simulate`` needs a node and is in
tests/integration/test_cli_progress.py.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import subprocess
import time
from pathlib import Path

import pytest

from pnp_integrated.cli.progress import LINE_EVERY, MIB, DeviceProgress, byte_progress
from pnp_integrated.devsim.node import PNPP
from tests.support import run_in_terminal

IMAGE_MIB = 48
HIDE_CURSOR = "\x1b[?25l"  # written before every redraw of the bar


class PlainStream(io.StringIO):
    """A log file: not a terminal."""

    def isatty(self) -> bool:
        return False


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_ten_thousand_devices_make_ten_plain_lines() -> None:
    stream = PlainStream()
    with DeviceProgress(10_000, stream=stream, clock=FakeClock()) as progress:
        for n in range(10_000):
            progress.finished(ok=n % 1000 != 7)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 10
    assert lines[0] == "day 0:  10% 1000/10000 devices (999 done, 1 failed)"
    assert lines[-1] == "day 0: 100% 10000/10000 devices (9990 done, 10 failed)"


def test_slow_work_still_says_where_it_is_every_few_seconds() -> None:
    stream = PlainStream()
    clock = FakeClock()
    told_at = []
    with DeviceProgress(40, stream=stream, clock=clock) as progress:
        for _ in range(40):
            clock.now += 5.0  # a device every 5 s: a tenth of the work takes 20 s
            before = stream.getvalue().count("\n")
            progress.finished(ok=True)
            if stream.getvalue().count("\n") > before:
                told_at.append(clock.now)
    gaps = [b - a for a, b in zip([0.0, *told_at], told_at, strict=False)]
    assert max(gaps) <= LINE_EVERY + 5.0  # never silent much longer than LINE_EVERY while devices finish
    assert len(told_at) <= 10 + 200 // LINE_EVERY  # ... and never a line per device
    assert stream.getvalue().splitlines()[-1] == "day 0: 100% 40/40 devices (40 done, 0 failed)"


def test_bytes_are_told_in_mib() -> None:
    stream = PlainStream()
    progress = byte_progress(4 * MIB, "hashing and copying a.bin", stream=stream, clock=FakeClock())
    progress.advance(MIB)
    assert stream.getvalue() == "hashing and copying a.bin:  25% 1.0/4.0 MiB\n"


@pytest.fixture
def node_env(tmp_path: Path) -> dict[str, str]:
    """The environment of ``pnpp`` commands on a node whose database exists (no node running)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PNP_")}
    env["PNP_DATA_DIR"] = str(tmp_path / "var")
    subprocess.run([PNPP, "db", "upgrade"], env=env, check=True, capture_output=True, timeout=120)
    return env


@pytest.fixture
def image_file(tmp_path: Path) -> Path:
    path = tmp_path / "isr4300-universalk9.17.09.04a.SPA.bin"
    with path.open("wb") as out:
        for n in range(IMAGE_MIB):
            out.write(hashlib.sha256(str(n).encode()).digest() * (MIB // 32))
    return path


def test_image_add_in_a_pipe_prints_a_few_progress_lines_and_the_same_summary(
        node_env: dict[str, str], image_file: Path) -> None:
    started = time.monotonic()
    result = subprocess.run([PNPP, "image", "add", str(image_file)], env=node_env, capture_output=True, text=True,
                            timeout=120)
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stdout + result.stderr
    md5 = hashlib.md5(image_file.read_bytes(), usedforsecurity=False).hexdigest()
    size = IMAGE_MIB * MIB
    # stdout is what it was: the one summary line scripts read.
    assert result.stdout == f"{image_file.name}  version 17.09.04a  {size} bytes  md5 {md5}\n"
    lines = result.stderr.splitlines()
    assert all(re.fullmatch(rf"hashing and copying {re.escape(image_file.name)}: +\d+% [\d.]+/48\.0 MiB", line)
               for line in lines), lines
    assert lines[-1].endswith("100% 48.0/48.0 MiB")
    assert 5 <= len(lines) <= 10 + elapsed // LINE_EVERY + 1  # 48 reads of 1 MiB: about a line per tenth
    assert "\r" not in result.stderr


def test_image_add_on_a_terminal_draws_a_bar(node_env: dict[str, str], image_file: Path) -> None:
    code, text = run_in_terminal([PNPP, "image", "add", str(image_file)], node_env, timeout=120)
    assert code == 0, text
    assert text.count(HIDE_CURSOR) >= 2  # the bar was drawn, then redrawn as the file was read
    assert re.search(rf"hashing and copying {re.escape(image_file.name)}  \[#+\]  100%  48\.0/48\.0 MiB", text), text
    assert "version 17.09.04a" in text.rsplit(HIDE_CURSOR, 1)[-1]  # the summary comes after the bar
    assert "hashing and copying isr4300-universalk9.17.09.04a.SPA.bin:" not in text  # no plain lines

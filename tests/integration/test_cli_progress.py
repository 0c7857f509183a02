"""``pnpp simulate`` against a real node tells its progress: a few plain lines in a pipe, a bar on a terminal.

The summary on stdout is what it was, so scripts reading it read the same text.
"""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Callable
from typing import Any

import pytest

from pnp_integrated.cli.progress import LINE_EVERY
from pnp_integrated.devsim.node import PNPP, RunningNode
from tests.support import create_default_profile, run_in_terminal

HIDE_CURSOR = "\x1b[?25l"  # written before every redraw of the bar


@pytest.fixture(scope="module")
def node(node_launcher: Callable[..., RunningNode], tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A node whose default profile provisions every device."""
    node = node_launcher(tmp_path_factory.mktemp("progress") / "node")
    create_default_profile(node)
    return node


def test_simulate_pnp_in_a_pipe_prints_about_ten_progress_lines(node: RunningNode) -> None:
    started = time.monotonic()
    result = subprocess.run([PNPP, "simulate", "pnp", "--devices", "30", "--serial-prefix", "PIPE", "--concurrency",
                             "10", "--time-scale", "0.002", "--timeout", "90"],
                            env=node.env, capture_output=True, text=True, timeout=150)
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stdout + result.stderr
    assert "30 devices in" in result.stdout and "30 provisioned" in result.stdout
    assert "day 0:" not in result.stdout  # progress goes to stderr, the summary stays alone on stdout
    lines = result.stderr.splitlines()
    assert all(re.fullmatch(r"day 0: +\d+% \d+/30 devices \(\d+ done, \d+ failed\)", line) for line in lines), lines
    assert lines[-1] == "day 0: 100% 30/30 devices (30 done, 0 failed)"
    assert 5 <= len(lines) <= 10 + elapsed // LINE_EVERY + 1  # a line per tenth, not one per device


def test_simulate_cns_on_a_terminal_draws_a_bar(node: RunningNode) -> None:
    code, text = run_in_terminal([PNPP, "simulate", "cns", "--devices", "4", "--serial-prefix", "TTY",
                                  "--host", "127.0.0.1"], node.env, timeout=150)
    assert code == 0, text
    assert text.count(HIDE_CURSOR) >= 2  # drawn, then redrawn as devices finished
    assert re.search(r"day 0  \[#+\]  100%  4/4 devices \(4 done, 0 failed\)", text), text
    assert "4/4 devices finished day 0" in text.rsplit(HIDE_CURSOR, 1)[-1]  # the summary comes after the bar
    assert "day 0: " not in text  # no plain lines on a terminal

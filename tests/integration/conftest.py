"""Integration fixtures: a real node (``pnpp run``: simulated Prime + gunicorn/gevent) on moved ports.

``running_node(**settings)`` starts a node for one test; ``node_launcher(data_dir, **settings)`` does the same for
the fixtures of a module (one node shared by its tests, stopped when the module is done: idle nodes left running to
the end of the session would slow every test after them). Both wait until GET /status answers on the HTTP port and
stop every node they started, collecting its log.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from pnp_integrated.devsim.node import RunningNode, start_node


@pytest.fixture(scope="module")
def node_launcher() -> Iterator[Callable[..., RunningNode]]:
    """``launch(data_dir, **settings)``: a node for the module's fixtures; stopped at the end of the module."""
    nodes: list[RunningNode] = []

    def launch(data_dir: Path, **overrides: Any) -> RunningNode:
        node = start_node(data_dir, **overrides)
        nodes.append(node)
        return node

    yield launch
    for node in nodes:
        node.stop()


@pytest.fixture
def running_node(tmp_path: Path) -> Iterator[Callable[..., RunningNode]]:
    """``running_node(**settings)``: a ready node for this test, stopped when the test ends."""
    nodes: list[RunningNode] = []

    def launch(**overrides: Any) -> RunningNode:
        node = start_node(tmp_path / f"node{len(nodes)}", **overrides)
        nodes.append(node)
        return node

    yield launch
    for node in nodes:
        node.stop()

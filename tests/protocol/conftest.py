"""Protocol tests: a gateway app whose CNS listeners run in-process on real sockets."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from flask import Flask

from tests.support import CnsNode


@pytest.fixture
def node_factory(app_factory: Callable[..., Flask]) -> Iterator[Callable[..., CnsNode]]:
    """``node_factory(**settings)``: a started CnsNode (HELLO timeout 2 s unless given), stopped after the test."""
    nodes: list[CnsNode] = []

    def make(**overrides: Any) -> CnsNode:
        node = CnsNode(app_factory(cns_hello_timeout=overrides.pop("cns_hello_timeout", 2), **overrides)).start()
        nodes.append(node)
        return node

    yield make
    for node in nodes:
        node.stop()


@pytest.fixture
def node(node_factory: Callable[..., CnsNode]) -> CnsNode:
    return node_factory()

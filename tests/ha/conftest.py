"""HA fixtures: the labs of :mod:`pnp_integrated.lab` (network namespaces; the tests run as root).

``ha_lab(mover)`` builds the integrated lab (two Prime nodes) and ``standalone_lab(mover, prime_ha, **settings)`` the
standalone one (a gateway pair and Prime servers of its own) for one test under its own prefix and subnet, so it
never touches a lab an operator built with ``pnpp lab up``, and always takes it down (processes, namespaces,
bridge, PostgreSQL), pass or fail.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pnp_integrated.lab import HaLab
from pnp_integrated.lab.standalone import StandaloneLab

# Per test process: CI and a developer may run these tests on one host at the same time.
PREFIX = f"pnpt{os.getpid() % 10000}"
SUBNET = f"10.78.{os.getpid() % 250}"


@pytest.fixture
def ha_lab(tmp_path: Path) -> Iterator[Callable[[str], HaLab]]:
    built: list[HaLab] = []

    def build(mover: str) -> HaLab:
        # Leftovers of an interrupted run would make the network build fail.
        HaLab.create(tmp_path / "stale", prefix=PREFIX, subnet=SUBNET).down()
        lab = HaLab.create(tmp_path / "lab", prefix=PREFIX, subnet=SUBNET, mover=mover)
        built.append(lab)
        lab.up()
        return lab

    yield build
    for lab in built:
        lab.down()


@pytest.fixture
def standalone_lab(tmp_path: Path) -> Iterator[Callable[..., StandaloneLab]]:
    built: list[StandaloneLab] = []

    def build(mover: str, prime_ha: str, **node_settings: str) -> StandaloneLab:
        StandaloneLab.create(tmp_path / "stale", prefix=PREFIX, subnet=SUBNET, prime_ha="vip").down()
        lab = StandaloneLab.create(tmp_path / "lab", prefix=PREFIX, subnet=SUBNET, mover=mover, prime_ha=prime_ha,
                                   node_settings=node_settings)
        built.append(lab)
        lab.up()
        return lab

    yield build
    for lab in built:
        lab.down()

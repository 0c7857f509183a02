"""The Prime broker row belongs to the current leader's term: a former leader shutting down cannot turn it DOWN."""

from __future__ import annotations

import os
from pathlib import Path

from pnp_integrated.bus.state import BridgeState, read_state, write_state
from pnp_integrated.config import load_settings


def test_a_former_leaders_bridge_stopped_does_not_overwrite_the_new_leaders_state(tmp_path: Path) -> None:
    settings = load_settings({"data_dir": str(tmp_path)}, environ={})
    new_leader = BridgeState(True, "192.0.2.1:61617", "gw:2", os.getpid(), 1, "", 100.0, term=7)
    assert write_state(settings, new_leader)
    # pid 1 is alive: a former leader of term 6 whose bridge only now stops.
    assert not write_state(settings, BridgeState(False, "192.0.2.1:61617", "gw:1", 1, 0, "bridge stopped", 111.0,
                                                 term=6))
    shown = read_state(settings)
    assert shown is not None and shown.connected and shown.term == 7


def test_a_later_term_or_a_dead_writer_is_replaced(tmp_path: Path) -> None:
    settings = load_settings({"data_dir": str(tmp_path)}, environ={})
    write_state(settings, BridgeState(True, "p", "gw:1", 1, 1, "", 1.0, term=3))
    assert write_state(settings, BridgeState(True, "p", "gw:2", os.getpid(), 1, "", 2.0, term=4))
    assert read_state(settings).term == 4  # type: ignore[union-attr]
    dead = 2**22 + 12345  # above pid_max: no such process
    write_state(settings, BridgeState(True, "p", "gw:9", os.getpid(), 1, "", 3.0, term=9))
    (tmp_path / "run" / "bridge.json").write_text((tmp_path / "run" / "bridge.json").read_text()
                                                  .replace(f'"pid": {os.getpid()}', f'"pid": {dead}'))
    assert write_state(settings, BridgeState(False, "p", "gw:3", os.getpid(), 0, "stopped", 4.0, term=5))

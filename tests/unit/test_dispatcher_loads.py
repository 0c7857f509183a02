"""The dispatcher's view of gateway-port loads: one database reading per second per worker, not one per device."""

from __future__ import annotations

import pytest
from sqlalchemy.exc import OperationalError

from pnp_integrated.cns.dispatcher import LOADS_FRESH_FOR, LOADS_USABLE_FOR, LoadView, choose_gateway_port


class Database:
    def __init__(self, loads: dict[int, int]) -> None:
        self.loads = loads
        self.reads = 0
        self.down = False

    def read(self) -> dict[int, int]:
        self.reads += 1
        if self.down:
            raise OperationalError("SELECT ...", {}, Exception("connection refused"))
        return dict(self.loads)


def test_a_burst_of_devices_is_spread_over_the_ports_with_one_reading() -> None:
    database, view = Database({11013: 0, 11014: 0, 11015: 5}), LoadView()
    chosen = []
    for n in range(13):
        port = choose_gateway_port(view.current(database.read, 100.0 + n * 0.01), capacity=500)
        assert port is not None
        view.redirected(port)
        chosen.append(port)
    assert database.reads == 1
    assert [chosen.count(p) for p in (11013, 11014, 11015)] == [6, 6, 1]  # balanced, not all on the emptiest


def test_the_reading_is_renewed_once_stale() -> None:
    database, view = Database({11013: 3}), LoadView()
    view.current(database.read, 100.0)
    database.loads = {11013: 0}  # sessions closed meanwhile
    assert view.current(database.read, 100.0 + LOADS_FRESH_FOR / 2) == {11013: 3}
    assert view.current(database.read, 100.0 + LOADS_FRESH_FOR) == {11013: 0}
    assert database.reads == 2


def test_a_busy_database_falls_back_on_a_recent_reading_and_fails_without_one() -> None:
    database, view = Database({11013: 1}), LoadView()
    database.down = True
    with pytest.raises(OperationalError):
        view.current(database.read, 100.0)  # nothing to fall back on: the dispatcher answers BUSY
    database.down = False
    view.current(database.read, 101.0)
    database.down = True
    assert view.current(database.read, 103.0) == {11013: 1}
    assert view.current(database.read, 103.1) == {11013: 1}  # not one failing query per device
    with pytest.raises(OperationalError):
        view.current(database.read, 101.0 + LOADS_USABLE_FOR + 1)


def test_until_a_first_reading_exists_no_device_is_told_that_every_port_is_full() -> None:
    view = LoadView()
    database = Database({11013: 0})
    seen: list[dict[int, int]] = []

    def slow_first_read() -> dict[int, int]:
        # Another device arrives while this worker's very first reading is still on its way.
        seen.append(view.current(database.read, 100.0))
        return database.read()

    view.current(slow_first_read, 100.0)
    assert seen == [{11013: 0}]  # it read for itself instead of taking an empty reading for "all ports full"
    assert choose_gateway_port(seen[0], capacity=500) == 11013

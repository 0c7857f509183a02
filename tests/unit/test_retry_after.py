"""A node taking over (the VIP here, the lease not yet taken) holds arriving devices for its lease, and tells the
ones it must still refuse to come back soon; a standby sends them away at once for longer."""

from __future__ import annotations

import dataclasses
import datetime as dt
import threading
import time
from collections.abc import Callable

from flask import Flask

from pnp_integrated.context import TAKING_OVER_HOLD_SECONDS, NodeRole, gateway_state, retry_after
from pnp_integrated.models import utcnow


def _set_role(app: Flask, *, vip_here: bool) -> NodeRole:
    settings = dataclasses.replace(gateway_state(app).settings, ha_mode="vip")
    role = gateway_state(app).role = NodeRole(settings=settings, vip_ok=vip_here, state="PASSIVE")
    return role


def test_a_node_taking_over_asks_for_a_short_wait_and_a_standby_for_the_long_one(
        app_factory: Callable[..., Flask]) -> None:
    app = app_factory(ha_mode="vip")
    client = app.test_client()
    for vip_here, expected, waited in ((True, "2", TAKING_OVER_HOLD_SECONDS), (False, "10", 0.0)):
        _set_role(app, vip_here=vip_here)
        started = time.monotonic()
        answer = client.post("/pnp/HELLO")
        took = time.monotonic() - started
        assert answer.status_code == 503
        assert answer.headers["Retry-After"] == expected == str(retry_after(app))
        # A node taking over held the device for its lease before refusing; a standby refused at once.
        assert waited <= took < waited + 1.0, (vip_here, took)


def test_a_device_arriving_while_the_node_takes_the_lease_is_served_not_refused(
        app_factory: Callable[..., Flask]) -> None:
    app = app_factory(ha_mode="vip")
    role = _set_role(app, vip_here=True)

    def lease_taken() -> None:  # what the leader loop's round records when the lease becomes this node's
        time.sleep(0.3)
        role.lease_node = role.settings.node_name
        role.lease_expires = utcnow() + dt.timedelta(seconds=8)

    threading.Thread(target=lease_taken, daemon=True).start()
    started = time.monotonic()
    answer = app.test_client().post("/pnp/HELLO")
    assert answer.status_code == 200
    assert 0.3 <= time.monotonic() - started < TAKING_OVER_HOLD_SECONDS

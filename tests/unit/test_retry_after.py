"""A node taking over (the VIP here, the lease not yet taken) tells refused devices to come back soon."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from flask import Flask

from pnp_integrated.context import NodeRole, gateway_state, retry_after


def test_a_node_taking_over_asks_for_a_short_wait_and_a_standby_for_the_long_one(
        app_factory: Callable[..., Flask]) -> None:
    app = app_factory(ha_mode="vip")
    settings = dataclasses.replace(gateway_state(app).settings, ha_mode="vip")
    client = app.test_client()
    for vip_here, expected in ((True, "2"), (False, "10")):
        gateway_state(app).role = NodeRole(settings=settings, vip_ok=vip_here, state="PASSIVE")
        answer = client.post("/pnp/HELLO")
        assert answer.status_code == 503
        assert answer.headers["Retry-After"] == expected == str(retry_after(app))

"""Operators see how often a gateway changed its HA role (a flapping VIP or lease shows up in the counter)."""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Callable

from flask import Flask

from pnp_integrated.context import node_role
from pnp_integrated.models import utcnow


def test_role_changes_are_counted_in_the_metrics(app_factory: Callable[..., Flask]) -> None:
    app = app_factory(ha_mode="vip", vip="192.0.2.10", node_name="prime-a")
    role = node_role(app)
    role.vip_ok, role.lease_node = True, "prime-a"
    role.lease_expires = utcnow() + dt.timedelta(seconds=30)
    assert role.evaluate(utcnow()) == "ACTIVE"
    role.vip_ok = False  # the VIP left
    assert role.evaluate(utcnow()) == "PASSIVE"

    text = app.test_client().get("/metrics").get_data(as_text=True)
    assert f'pnp_ha_transitions_total{{worker="{os.getpid()}"}} 2.0' in text.splitlines()

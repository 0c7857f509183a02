"""The ACTIVE/PASSIVE decision of a node, from the VIP and the leader lease."""

import datetime as dt
import struct

from pnp_integrated.config import load_settings
from pnp_integrated.context import NodeRole
from pnp_integrated.ha import lease_holder_node
from pnp_integrated.ha.vip import netlink_message_types, vip_is_local

NOW = dt.datetime(2026, 1, 1, 12, 0, 0)


def role(**overrides: object) -> NodeRole:
    settings = load_settings({"ha_mode": "vip", "vip": "192.0.2.10", "node_name": "prime-a"}, environ={})
    r = NodeRole(settings=settings, state="PASSIVE")
    for key, value in overrides.items():
        setattr(r, key, value)
    return r


def test_active_only_with_vip_and_unexpired_lease_of_this_node() -> None:
    held = {"lease_node": "prime-a", "lease_expires": NOW + dt.timedelta(seconds=5)}
    assert role(vip_ok=True, **held).evaluate(NOW) == "ACTIVE"
    assert role(vip_ok=False, **held).evaluate(NOW) == "PASSIVE"
    other_node = role(vip_ok=True, lease_node="prime-b", lease_expires=NOW + dt.timedelta(seconds=5))
    assert other_node.evaluate(NOW) == "PASSIVE"
    expired = role(vip_ok=True, lease_node="prime-a", lease_expires=NOW - dt.timedelta(seconds=1))
    assert expired.evaluate(NOW) == "PASSIVE"


def test_transitions_are_counted_and_explained() -> None:
    r = role(vip_ok=True, lease_node="prime-a", lease_expires=NOW + dt.timedelta(seconds=5))
    r.evaluate(NOW)
    r.vip_ok = False
    assert r.evaluate(NOW) == "PASSIVE"
    assert r.transitions == 2
    assert "not on this node" in r.reason


def test_without_ha_the_node_is_always_active() -> None:
    settings = load_settings({"ha_mode": "none"}, environ={})
    assert NodeRole(settings=settings, vip_ok=False, state="PASSIVE").evaluate(NOW) == "ACTIVE"


def test_lease_holder_names_the_node() -> None:
    assert lease_holder_node("prime-a.example.net:4242") == "prime-a.example.net"
    assert lease_holder_node("") == ""


def test_vip_presence_is_read_from_the_interfaces() -> None:
    assert vip_is_local("127.0.0.1")
    assert not vip_is_local("192.0.2.254")


def test_netlink_datagram_lists_every_message() -> None:
    def msg(kind: int, payload: bytes = b"") -> bytes:
        body = struct.pack("=IHHII", 16 + len(payload), kind, 0, 0, 0) + payload
        return body + b"\0" * ((-len(body)) % 4)

    assert netlink_message_types(msg(20, b"abcde") + msg(21)) == [20, 21]
    assert netlink_message_types(b"\x01\x02") == []

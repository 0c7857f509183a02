"""Following the Prime virtual IP: is the VIP configured on this node right now?

The gateway never moves the VIP (Prime, keepalived or Pacemaker do). It watches the node's addresses: an rtnetlink
socket subscribed to address changes wakes the follower at once, and a slow poll covers anything the kernel did not
announce. Where no VIP can move (a single host where the VIP is a loopback address), the co-located Prime health
monitor says whether this node is the active one.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import struct
from collections.abc import Callable

import psutil

log = logging.getLogger(__name__)

RTMGRP_IPV4_IFADDR = 0x10
RTMGRP_IPV6_IFADDR = 0x100
POLL_SECONDS = 5.0


def local_addresses() -> set[str]:
    """Every IPv4/IPv6 address configured on this node's interfaces."""
    out: set[str] = set()
    for addrs in psutil.net_if_addrs().values():
        for addr in addrs:
            if addr.family in (socket.AF_INET, socket.AF_INET6):
                out.add(addr.address.split("%", 1)[0])
    return out


def vip_is_local(vip: str) -> bool:
    """True when ``vip`` is configured on an interface of this node."""
    wanted = ipaddress.ip_address(vip)
    for address in local_addresses():
        try:
            if ipaddress.ip_address(address) == wanted:
                return True
        except ValueError:
            continue
    return False


def vip_can_move(vip: str) -> bool:
    """A loopback VIP never moves between hosts; the health monitor decides instead."""
    return not ipaddress.ip_address(vip).is_loopback


def address_change_socket() -> socket.socket | None:
    """An rtnetlink socket that becomes readable when any address is added or removed (None where unavailable)."""
    try:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
        sock.bind((0, RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR))
    except (OSError, AttributeError) as exc:
        log.warning("rtnetlink unavailable (%s): following the VIP by polling every %ss", exc, POLL_SECONDS)
        return None
    return sock


def netlink_message_types(data: bytes) -> list[int]:
    """The nlmsg_type of every netlink message in a datagram (RTM_NEWADDR = 20, RTM_DELADDR = 21)."""
    types: list[int] = []
    offset = 0
    while offset + 16 <= len(data):
        length, msg_type = struct.unpack_from("=IH", data, offset)
        if length < 16:
            break
        types.append(msg_type)
        offset += (length + 3) & ~3
    return types


class VipFollower:
    """Calls ``on_change(vip_local)`` whenever the VIP appears on or leaves this node.

    ``run`` blocks; start it in a greenlet (gevent makes the netlink socket cooperative). ``probe`` replaces the
    address check where the VIP cannot move (the Prime health monitor decides); it is then polled only.
    """

    def __init__(self, vip: str, on_change: Callable[[bool], None], poll_seconds: float = POLL_SECONDS,
                 probe: Callable[[], bool] | None = None) -> None:
        self.vip = vip
        self.on_change = on_change
        self.poll_seconds = poll_seconds
        self.probe = probe
        self.vip_local = self._measure()
        self._stopped = False

    def _measure(self) -> bool:
        return self.probe() if self.probe is not None else vip_is_local(self.vip)

    def check(self) -> bool:
        now = self._measure()
        if now != self.vip_local:
            self.vip_local = now
            log.info("VIP %s %s this node", self.vip, "arrived on" if now else "left")
            self.on_change(now)
        return now

    def stop(self) -> None:
        self._stopped = True

    def run(self) -> None:
        sock = address_change_socket() if self.probe is None else None
        try:
            while not self._stopped:
                if sock is None:
                    _sleep(self.poll_seconds)
                    if self._stopped:
                        break
                else:
                    sock.settimeout(self.poll_seconds)
                    try:
                        sock.recv(65536)
                    except TimeoutError:
                        pass
                    except OSError as exc:  # buffer overrun (ENOBUFS) only means "something changed"
                        log.debug("rtnetlink: %s", exc)
                self.check()
        finally:
            if sock is not None:
                sock.close()


def _sleep(seconds: float) -> None:
    import time

    time.sleep(seconds)  # cooperative once gevent has patched the worker

"""Putting a VIP on an interface, announcing it, taking it away, and asking whether an address is this node's."""

from __future__ import annotations

import ipaddress
import logging
import shutil
import socket
import struct
import subprocess
from dataclasses import dataclass

import psutil

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class VipPlacement:
    """Where the VIP lives on this node when it is active."""

    vip: str
    prefix: int
    interface: str

    @property
    def cidr(self) -> str:
        return f"{self.vip}/{self.prefix}"


def _ip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10)


def configure_vip(place: VipPlacement) -> bool:
    """Configure the VIP on the interface (already there is fine); whether it is there now."""
    done = _ip("addr", "add", place.cidr, "dev", place.interface)
    if done.returncode != 0 and "File exists" not in done.stderr:
        log.error("cannot add VIP %s to %s: %s", place.cidr, place.interface, done.stderr.strip())
        return False
    return True


def remove_vip(place: VipPlacement) -> None:
    """Take the VIP off the interface (already gone is fine)."""
    done = _ip("addr", "del", place.cidr, "dev", place.interface)
    if done.returncode != 0 and not any(gone in done.stderr for gone in ("Cannot assign", "Address not found")):
        log.error("cannot remove VIP %s from %s: %s", place.cidr, place.interface, done.stderr.strip())


def announce(place: VipPlacement) -> None:
    """Gratuitous ARP so switches and neighbours send VIP traffic here at once (IPv4 only)."""
    if ipaddress.ip_address(place.vip).version != 4:
        return
    if shutil.which("arping"):
        done = subprocess.run(["arping", "-U", "-c", "2", "-w", "2", "-I", place.interface, place.vip],
                              capture_output=True, text=True, timeout=10)
        if done.returncode in (0, 1):  # 1: no replies, which unsolicited ARP never expects
            return
        log.warning("arping failed (%s); sending the ARP frame directly", done.stderr.strip())
    try:
        send_gratuitous_arp(place.interface, place.vip)
    except OSError as exc:
        log.warning("gratuitous ARP for %s on %s failed: %s", place.vip, place.interface, exc)


def send_gratuitous_arp(interface: str, address: str) -> None:
    """One broadcast ARP request for ``address`` from ``address`` (AF_PACKET raw socket, needs CAP_NET_RAW)."""
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0806)) as sock:
        sock.bind((interface, 0))
        mac = sock.getsockname()[4][:6]
        ip = socket.inet_aton(address)
        broadcast = b"\xff" * 6
        arp = struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, 1, mac, ip, b"\0" * 6, ip)
        sock.send(broadcast + mac + struct.pack("!H", 0x0806) + arp)


def address_is_local(address: str) -> bool:
    """Whether ``address`` is configured on an interface of this node (whoever put it there)."""
    wanted = ipaddress.ip_address(address)
    for addrs in psutil.net_if_addrs().values():
        for addr in addrs:
            if addr.family not in (socket.AF_INET, socket.AF_INET6):
                continue
            try:
                if ipaddress.ip_address(addr.address.split("%", 1)[0]) == wanted:
                    return True
            except ValueError:
                continue
    return False

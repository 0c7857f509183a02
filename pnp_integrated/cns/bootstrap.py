"""The day-0 lines a device needs to find the gateway, always addressed to the VIP.

Devices must never be pointed at a node's own address: after an HA failover only the VIP reaches the active node.
"""

from __future__ import annotations

from ..config import Settings
from ..urls import DeviceUrls

KEEPALIVE = "keepalive 60 3"


def cns_lines(settings: Settings, tls: bool = False) -> list[str]:
    """IOS CNS agent configuration (cns-wire.md section 5)."""
    vip = settings.vip
    if tls:
        event = f"cns event {vip} encrypt {settings.dispatcher_tls_port} {KEEPALIVE}"
    else:
        event = f"cns event {vip} {settings.dispatcher_plain_port} {KEEPALIVE}"
    dispatcher = DeviceUrls.http(settings).cns_dispatcher
    return [
        f"cns trusted-server all-agents {vip}",
        "cns id hardware-serial",
        "cns id hardware-serial event",
        "cns id hardware-serial image",
        event,
        f"cns config initial {vip} {settings.http_port} event",
        f"cns config partial {vip} {settings.http_port}",
        f"cns image server {dispatcher} status {dispatcher}",
        f"cns exec {settings.http_port}",
    ]


def pnp_lines(settings: Settings, tls: bool = False) -> list[str]:
    """Open PnP agent profile and the matching DHCP option 43 string."""
    vip = settings.vip
    port = settings.https_port if tls else settings.http_port
    transport = "https" if tls else "http"
    return [
        "pnp profile pnp-zero-touch",
        f" transport {transport} ipv4 {vip} port {port}",
        f"! DHCP option 43 (ASCII): 5A1N;B2;K{5 if tls else 4};I{vip};J{port}",
    ]

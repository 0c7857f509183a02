"""The ports a gateway node serves, by role, in the order of Prime's status table; derived from the settings alone."""

from __future__ import annotations

from dataclasses import dataclass

from .config import Settings

MONITOR_ADDRESS = "0.0.0.0"  # the monitoring port answers on every address so the standby can be asked too


@dataclass(frozen=True)
class PortRole:
    """A port of the node and what it is for (the status table is built from this list)."""

    service: str
    port: int
    tls: bool
    host: str


def node_ports(settings: Settings) -> list[PortRole]:
    """Every port the gateway itself serves, in the order of Prime's status table."""
    vip = settings.vip
    roles = [
        PortRole("HTTPD", settings.http_port, False, vip),
        PortRole("HTTPD", settings.https_port, True, vip),
        PortRole("PnP Gateway Monitoring", settings.monitoring_port, True, MONITOR_ADDRESS),
        PortRole("CNS Gateway Dispatcher", settings.dispatcher_plain_port, False, vip),
        PortRole("CNS Gateway Dispatcher", settings.dispatcher_tls_port, True, vip),
    ]
    roles += [PortRole("CNS Gateway", p, settings.gateway_port_is_tls(p), vip) for p in settings.gateway_ports]
    return roles


def port_setting(settings: Settings, port: int) -> str:
    """The variable an operator changes to move ``port`` (the CNS ports all follow PNP_CNS_PORT_BASE)."""
    if port == settings.http_port:
        return "PNP_HTTP_PORT"
    if port == settings.https_port:
        return "PNP_HTTPS_PORT"
    return "PNP_CNS_PORT_BASE"

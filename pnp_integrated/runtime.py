"""Per-process runtime: which ports a node listens on, and the hooks gunicorn calls around each worker."""

from __future__ import annotations

import logging
import socket
from dataclasses import dataclass

from flask import Flask

from .config import Settings
from .extension import gateway_state
from .listeners import ListenerController, ListenerSpec, bind_socket
from .tls import server_context

log = logging.getLogger(__name__)

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


def raw_listener_specs(app: Flask, settings: Settings) -> list[ListenerSpec]:
    """Listeners served by the controller in each worker (everything except gunicorn's plain HTTP port)."""
    from .cns import stream_handler_for  # the CNS protocol decides what each CNS port speaks

    specs = [
        ListenerSpec("HTTPD", settings.vip, settings.https_port, True, wsgi_app=app),
        ListenerSpec("PnP Gateway Monitoring", MONITOR_ADDRESS, settings.monitoring_port, True, wsgi_app=app),
    ]
    for role in node_ports(settings):
        if role.service.startswith("CNS"):
            specs.append(ListenerSpec(role.service, role.host, role.port, role.tls,
                                      stream_handler=stream_handler_for(app, role.port)))
    return specs


def probe_ports_free(settings: Settings) -> None:
    """In the gunicorn master, before workers start: fail clearly if another program holds a gateway port.

    Workers bind with SO_REUSEPORT, which would otherwise silently share a port with another instance.
    """
    for role in node_ports(settings):
        if role.port == settings.http_port:
            continue  # gunicorn's master binds it itself
        sock = bind_socket(role.host, role.port, backlog=1, reuse_port=False, setting=port_setting(settings, role.port))
        sock.close()


def port_setting(settings: Settings, port: int) -> str:
    """The variable an operator changes to move ``port`` (the CNS ports all follow PNP_CNS_PORT_BASE)."""
    if port == settings.http_port:
        return "PNP_HTTP_PORT"
    if port == settings.https_port:
        return "PNP_HTTPS_PORT"
    return "PNP_CNS_PORT_BASE"


def start_worker(app: Flask) -> ListenerController:
    """Start this worker's listeners; bind errors propagate so gunicorn stops with the message."""
    state = gateway_state(app)
    settings = state.settings
    controller = ListenerController(
        raw_listener_specs(app, settings),
        context=server_context(settings, state.certs),
        handshake_timeout=settings.tls_handshake_timeout,
        http_idle_timeout=settings.http_idle_timeout,
    )
    controller.start()
    state.listeners = controller
    from .bus import start_leader_loop  # every worker competes for the lease; the leader runs the Prime bridge

    start_leader_loop(app)
    return controller


def stop_worker(app: Flask) -> None:
    from .bus import stop_leader_loop

    stop_leader_loop(app)
    state = gateway_state(app)
    controller = state.listeners
    if controller is not None:
        controller.stop(state.settings.drain_timeout)
        state.listeners = None


def http_bind_socket(settings: Settings) -> socket.socket:
    """The plain HTTP socket gunicorn's master serves (bound here so it gets IP_FREEBIND too)."""
    sock = bind_socket(settings.vip, settings.http_port, reuse_port=False, setting="PNP_HTTP_PORT")
    sock.set_inheritable(True)
    return sock


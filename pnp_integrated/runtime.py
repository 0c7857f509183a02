"""Per-process runtime: which ports a node listens on, and the hooks gunicorn calls around each worker."""

from __future__ import annotations

import functools
import logging
import socket

from flask import Flask
from gunicorn.workers.ggevent import GeventPyWSGIWorker

from .config import Settings
from .context import gateway_state
from .listeners import GatewayHTTPHandler, GatewayHTTPServer, ListenerController, ListenerSpec, bind_socket
from .ports import MONITOR_ADDRESS, node_ports, port_setting
from .refusals import TLS_HANDSHAKE_TIMEOUT, count_refusal
from .tls import device_https_context, server_context

log = logging.getLogger(__name__)


def raw_listener_specs(app: Flask, settings: Settings) -> list[ListenerSpec]:
    """Listeners served by the controller in each worker (everything except gunicorn's plain HTTP port)."""
    from .cns.ports import stream_handler_for  # the CNS protocol decides what each CNS port speaks

    specs = [
        ListenerSpec("HTTPD", settings.vip, settings.https_port, True, wsgi_app=app,
                     tls_context=device_https_context(settings, gateway_state(app).certs)),
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


def start_worker(app: Flask) -> ListenerController:
    """Start this worker's listeners; bind errors propagate so gunicorn stops with the message."""
    state = gateway_state(app)
    settings = state.settings
    controller = ListenerController(
        raw_listener_specs(app, settings),
        context=server_context(settings, state.certs),
        handshake_timeout=settings.tls_handshake_timeout,
        http_idle_timeout=settings.http_idle_timeout,
        http_header_timeout=settings.http_header_timeout,
        handshake_timed_out=lambda: count_refusal(TLS_HANDSHAKE_TIMEOUT),
    )
    controller.start()
    state.listeners = controller
    from .bus.leader import start_leader_loop  # every worker competes for the lease; the leader runs the Prime bridge

    start_leader_loop(app)
    return controller


def stop_worker(app: Flask) -> None:
    from .bus.leader import stop_leader_loop

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


class GatewayGeventWorker(GeventPyWSGIWorker):
    """The gunicorn worker class of a node (``deploy/gunicorn.conf.py``): gevent, with :class:`GatewayHTTPServer`.

    gunicorn builds the plain HTTP server in :meth:`run`, after the application is loaded: the server gets the
    node's ``PNP_HTTP_IDLE_TIMEOUT`` from the application's settings.
    """

    wsgi_handler = GatewayHTTPHandler

    def run(self) -> None:
        settings = gateway_state(self.wsgi).settings
        self.server_class = functools.partial(GatewayHTTPServer, idle_timeout=settings.http_idle_timeout,
                                              header_timeout=settings.http_header_timeout)
        super().run()

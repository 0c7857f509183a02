"""What each CNS port of a worker serves: a dispatcher (base+1, base+2) or a gateway port (base+3 ..)."""

from __future__ import annotations

from flask import Flask

from ..context import gateway_state
from ..listeners import StreamHandler


def stream_handler_for(app: Flask, port: int) -> StreamHandler:
    """The connection handler of a CNS port: a dispatcher (base+1, base+2) or a gateway port (base+3 ..)."""
    from .dispatcher import Dispatcher
    from .gateway import GatewayPort
    from .worker import cns_worker

    settings = gateway_state(app).settings
    cns_worker(app)  # opens this worker's mailbox before any device can connect
    if port == settings.dispatcher_plain_port:
        return Dispatcher(app, port, tls=False)
    if port == settings.dispatcher_tls_port:
        return Dispatcher(app, port, tls=True)
    if port in settings.gateway_ports:
        return GatewayPort(app, port, tls=settings.gateway_port_is_tls(port))
    raise ValueError(f"port {port} is not a CNS dispatcher or gateway port")

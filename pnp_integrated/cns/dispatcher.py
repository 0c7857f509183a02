"""Dispatcher ports: read the device's HELLO, hand it to the least-loaded gateway port of the same transport, close.

Loads are live session rows in the database, so the choice is the same whichever worker the kernel gave the
connection to. Each worker reads them at most once per :data:`LOADS_FRESH_FOR` and counts its own redirects in
between: when thousands of devices come back at once (a failover), one count query per device would hold a pooled
connection each and starve the admissions themselves. The choice only balances; the gateway port enforces capacity.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

from flask import Flask
from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError

from ..config import Settings
from ..models import DeviceSession, db
from .codec import DEVICE_COMMANDS, CnsProtocolError, FrameReader, error_frame
from .gateway import (
    ADMISSION_RETRY_AFTER,
    BUSY_RETRY_AFTER,
    FrameStream,
    FrameTimeout,
    close_socket,
    no_hello,
    send_frame,
    spread,
)
from .session import Admit, CnsSession, Refuse, busy, receipt, redirect, refusal
from .worker import cns_worker, not_taking_devices

log = logging.getLogger(__name__)

# The longest a device is sent away for while the admission queue is long: the queue drains within seconds once the
# returning fleet is spread out, and a longer pause would only make the last devices wait for nothing.
ADMISSION_BUSY_LONGEST = 10

LOADS_FRESH_FOR = 1.0  # seconds a worker's reading of the session counts is used before it reads them again
LOADS_USABLE_FOR = 30.0  # while the database is busy, an older reading still beats telling every device to retry


def gateway_loads(settings: Settings, tls: bool) -> dict[int, int]:
    """Live sessions per gateway port of one transport on this node (needs an application context)."""
    ports = settings.gateway_tls_ports if tls else settings.gateway_plain_ports
    rows = db.session.execute(
        select(DeviceSession.port, func.count()).where(
            DeviceSession.closed_at.is_(None), DeviceSession.node == settings.node_name,
            DeviceSession.port.in_(ports)).group_by(DeviceSession.port)
    ).all()
    counts = {int(port): int(count) for port, count in rows}
    return {port: counts.get(port, 0) for port in ports}


def choose_gateway_port(loads: dict[int, int], capacity: int) -> int | None:
    """The port with the fewest sessions (ties: the lowest port); ``None`` when every port is full."""
    open_ports = [(count, port) for port, count in loads.items() if count < capacity]
    return min(open_ports)[1] if open_ports else None


class LoadView:
    """One worker's view of the gateway ports' loads: a database reading plus the redirects made since."""

    def __init__(self) -> None:
        self.loads: dict[int, int] = {}
        self.read_at = float("-inf")  # monotonic time of the last attempt to read the database
        self.good_at = float("-inf")  # ... and of the last one that succeeded

    def current(self, read: Any, now: float) -> dict[int, int]:
        """The loads, read again with ``read()`` once stale; raises when they cannot be read and are too old."""
        if now - self.read_at >= LOADS_FRESH_FOR or self.good_at == float("-inf"):
            # The other greenlets keep using the current reading meanwhile, once there is one to use.
            self.read_at = now
            try:
                self.loads, self.good_at = read(), now
            except SQLAlchemyError:
                if now - self.good_at > LOADS_USABLE_FOR:
                    self.read_at = float("-inf")
                    raise
                self.read_at = now - LOADS_FRESH_FOR / 2  # try the database again soon, not for every device
        return self.loads

    def redirected(self, port: int) -> None:
        self.loads[port] = self.loads.get(port, 0) + 1


class Dispatcher:
    """The connection handler of one dispatcher port in this worker."""

    def __init__(self, app: Flask, port: int, tls: bool) -> None:
        self.app = app
        self.port = port
        self.tls = tls
        self.view = LoadView()

    def __call__(self, sock: Any, address: tuple[str, int]) -> None:
        try:
            self._dispatch(sock, address)
        finally:
            close_socket(sock)

    def _dispatch(self, sock: Any, address: tuple[str, int]) -> None:
        from ..context import gateway_state

        settings = gateway_state(self.app).settings
        reader = FrameReader(DEVICE_COMMANDS, max_header_bytes=settings.cns_max_header_bytes,
                             max_body_bytes=settings.cns_max_body_bytes)
        try:
            frame = FrameStream(sock, reader).read(time.monotonic() + settings.cns_hello_timeout)
        except FrameTimeout:  # no HELLO in time: closed without a word, as CNS-W1 says
            no_hello(self.port, address[0], settings.cns_hello_timeout)
            return
        except CnsProtocolError as exc:
            send_frame(sock, error_frame(exc.code, exc.message))
            return
        except OSError:
            return
        if frame is None:
            return
        decision = CnsSession().receive(frame)
        if isinstance(decision, Refuse):
            send_frame(sock, refusal(decision))
            return
        assert isinstance(decision, Admit)
        refused = not_taking_devices(self.app)
        if refused is not None:
            send_frame(sock, refused[0])
            return
        worker = cns_worker(self.app)
        wait = worker.admission_slots.expected_wait()
        if wait >= worker.admission_wait_busy:
            # A fleet is coming back at once (failover): a device told when to return costs one handshake; one sent
            # on to wait past its patience costs two, and comes back anyway.
            come_back = min(ADMISSION_BUSY_LONGEST, max(ADMISSION_RETRY_AFTER, math.ceil(wait)))
            waiting = worker.admission_slots.waiting
            send_frame(sock, busy(spread(come_back), f"gateway busy admitting {waiting} devices; retry later"))
            return
        try:
            with self.app.app_context():
                loads = self.view.current(lambda: gateway_loads(settings, self.tls), time.monotonic())
        except SQLAlchemyError as exc:
            # Database saturated or briefly away: the device backs off and comes again, nothing is lost.
            log.warning("CNS dispatcher %s: cannot count sessions (%s); %s told to retry", self.port,
                        type(exc).__name__, address[0])
            send_frame(sock, busy(spread(BUSY_RETRY_AFTER), "gateway busy; retry later"))
            return
        if decision.receipt is not None:
            send_frame(sock, receipt(decision.receipt))
        port = choose_gateway_port(loads, settings.cns_port_capacity)
        if port is None:
            send_frame(sock, busy(spread(BUSY_RETRY_AFTER), "every gateway port is at capacity"))
            log.warning("CNS dispatcher %s: every gateway port is full, %s told to retry", self.port, address[0])
            return
        self.view.redirected(port)
        send_frame(sock, redirect(settings.vip, port))
        log.debug("CNS device %s from %s sent to port %s", decision.hello.device_id, address[0], port)

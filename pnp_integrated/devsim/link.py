"""One IOS CNS event-agent connection, as a device makes it: blocking sockets (under gevent they cooperate).

:class:`CnsLink` speaks CNS-W1 through the sans-IO codec; :func:`dispatch` asks a dispatcher where to go and
:func:`connect` goes there and says HELLO. :mod:`.cns` plays whole devices on top of it.
"""

from __future__ import annotations

import socket
import ssl
import time
from dataclasses import dataclass, field
from typing import Any

from ..cns.codec import GATEWAY_COMMANDS, NEED_DATA, CnsProtocolError, Frame, FrameReader, make_frame, serialize
from ..cns.messages import CONFIG_LOAD, EXEC_CMD

DEFAULT_SUBJECTS = (CONFIG_LOAD, EXEC_CMD)


class LinkClosed(Exception):
    """The gateway closed the connection (``frames`` holds what it sent before)."""


@dataclass
class CnsLink:
    """One CNS-W1 connection from the device side."""

    host: str
    port: int
    tls: bool = False
    timeout: float = 10.0
    sock: Any = None
    reader: FrameReader = field(default_factory=lambda: FrameReader(GATEWAY_COMMANDS, max_body_bytes=16 << 20))

    @classmethod
    def open(cls, host: str, port: int, *, tls: bool = False, timeout: float = 10.0,
             context: ssl.SSLContext | None = None) -> CnsLink:
        """Connect (and for TLS, handshake) to ``host:port``."""
        link = cls(host, port, tls, timeout)
        raw = socket.create_connection((host, port), timeout=timeout)
        if tls:
            ctx = context or _insecure_context()
            raw = ctx.wrap_socket(raw, server_hostname=host)
        link.sock = raw
        return link

    def send(self, frame: Frame) -> None:
        self.sock.sendall(serialize(frame))

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def command(self, command: str, headers: dict[str, str] | None = None, body: bytes | str = b"") -> None:
        self.send(make_frame(command, headers, body))

    def receive(self, timeout: float | None = None) -> Frame:
        """The next frame from the gateway; raises LinkClosed when it closes, TimeoutError when nothing comes."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            event = self.reader.next_event()
            if isinstance(event, Frame):
                return event
            if event is not NEED_DATA:
                raise LinkClosed("gateway closed the connection")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("no frame from the gateway")
            self.sock.settimeout(remaining)
            try:
                data = self.sock.recv(65536)
            except (ConnectionResetError, BrokenPipeError, ssl.SSLError):
                data = b""
            except TimeoutError:
                raise TimeoutError("no frame from the gateway") from None
            self.reader.receive_data(data)

    def closed_by_peer(self, timeout: float = 5.0) -> bool:
        """Whether the gateway closes the connection within ``timeout`` (frames it sends meanwhile are dropped)."""
        try:
            while True:
                self.receive(timeout)
        except LinkClosed:
            return True
        except TimeoutError:
            return False

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self) -> CnsLink:
        return self

    def __exit__(self, *_exc: Any) -> None:
        self.close()


def _insecure_context() -> ssl.SSLContext:
    # Simulated devices do not check the server certificate (IOS trusts by `cns trusted-server`, by address).
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def hello_frame(device_id: str, *, config_id: str = "", keepalive: str = "", agent: str = "devsim") -> Frame:
    headers = {"Device-Id": device_id}
    if config_id:
        headers["Config-Id"] = config_id
    if keepalive:
        headers["Keepalive"] = keepalive
    if agent:
        headers["Agent"] = agent
    return make_frame("HELLO", headers)


def dispatch(host: str, port: int, device_id: str, *, tls: bool = False, timeout: float = 10.0) -> Frame:
    """Ask a dispatcher port where to go; the REDIRECT or BUSY (or ERROR) it answers."""
    with CnsLink.open(host, port, tls=tls, timeout=timeout) as link:
        link.send(hello_frame(device_id))
        return link.receive()


def connect(host: str, port: int, device_id: str, *, tls: bool = False, config_id: str = "",
            keepalive: str = "", timeout: float = 10.0,
            subjects: tuple[str, ...] = ()) -> tuple[CnsLink, Frame]:
    """HELLO on a gateway port (then SUBSCRIBE ``subjects`` with receipts); the link and the gateway's answer."""
    link = CnsLink.open(host, port, tls=tls, timeout=timeout)
    link.send(hello_frame(device_id, config_id=config_id, keepalive=keepalive))
    answer = link.receive()
    if answer.command == "WELCOME":
        for subject in subjects:
            link.command("SUBSCRIBE", {"Subject": subject, "Receipt": f"sub-{subject}"})
            got = link.receive()
            if got.command != "RECEIPT":
                raise CnsProtocolError(400, f"SUBSCRIBE {subject} answered with {got.command}")
    return link, answer

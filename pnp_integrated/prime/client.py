"""A small blocking STOMP 1.2 client on the sans-IO codec, for the Prime side (event sink, ``pnpp prime send``).

It works on plain sockets and, once gevent has patched the process, cooperatively. The gateway's bridge uses
stomp.py instead (the library Prime's peers use); this client exists so the simulated Prime needs nothing else.
"""

from __future__ import annotations

import itertools
import socket
import ssl
import time
from collections import deque

from .stomp import (
    HEARTBEAT,
    Frame,
    FrameParser,
    Limits,
    StompProtocolError,
    encode_frame,
    encode_heartbeat,
    make_frame,
)


class StompClientError(Exception):
    """The broker refused something (ERROR frame) or the connection failed; the message says which."""


class StompClient:
    """One connection: :meth:`connect`, then send/subscribe/ack and :meth:`receive` frames."""

    def __init__(self, host: str, port: int, *, context: ssl.SSLContext | None = None, timeout: float = 10.0,
                 heartbeat: tuple[int, int] = (0, 0), limits: Limits | None = None,
                 login: tuple[str, str] | None = None) -> None:
        self.host, self.port = host, port
        self._login = login  # (login, passcode) sent with CONNECT
        self._context = context
        self._timeout = timeout
        self._heartbeat = heartbeat
        self._parser = FrameParser(limits or Limits(max_body_bytes=64 * 1024 * 1024))
        self._frames: deque[Frame] = deque()
        self._sock: socket.socket | None = None
        self._receipts = itertools.count(1)
        self.connected_frame: Frame | None = None
        self.heartbeats_received = 0

    # ---- connection ---------------------------------------------------------------------------------------------
    def connect(self, headers: dict[str, str] | None = None) -> Frame:
        """Open the socket (TLS when a context was given) and exchange CONNECT/CONNECTED."""
        try:
            raw = socket.create_connection((self.host, self.port), timeout=self._timeout)
            if self._context is not None:
                raw = self._context.wrap_socket(raw, server_hostname=self.host)
        except (OSError, ssl.SSLError) as exc:
            raise StompClientError(f"cannot reach the broker at {self.host}:{self.port}: {exc}") from exc
        self._sock = raw
        connect = {"accept-version": "1.2", "host": self.host,
                   "heart-beat": f"{self._heartbeat[0]},{self._heartbeat[1]}"}
        if self._login is not None:
            connect["login"], connect["passcode"] = self._login
        connect.update(headers or {})
        self.send_frame(make_frame("CONNECT", connect))
        frame = self.receive(self._timeout)
        if frame is None or frame.command != "CONNECTED":
            detail = frame.get("message") if frame is not None else "no answer"
            self.close()
            raise StompClientError(f"the broker at {self.host}:{self.port} refused CONNECT: {detail}")
        self.connected_frame = frame
        return frame

    @property
    def is_open(self) -> bool:
        return self._sock is not None

    def close(self) -> None:
        if self._sock is not None:
            try:
                self._sock.close()
            except OSError:
                pass
            self._sock = None

    def disconnect(self) -> None:
        """DISCONNECT with a receipt (everything sent before has been processed), then close."""
        try:
            self.request(make_frame("DISCONNECT"))
        except StompClientError:
            pass
        self.close()

    def __enter__(self) -> StompClient:
        self.connect()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.disconnect()

    # ---- frames -------------------------------------------------------------------------------------------------
    def send_frame(self, frame: Frame) -> None:
        self.send_raw(encode_frame(frame))

    def send_raw(self, data: bytes) -> None:
        if self._sock is None:
            raise StompClientError("not connected")
        try:
            self._sock.sendall(data)
        except (OSError, ssl.SSLError) as exc:
            raise StompClientError(f"connection to {self.host}:{self.port} lost: {exc}") from exc

    def heartbeat(self) -> None:
        self.send_raw(encode_heartbeat())

    def receive(self, timeout: float | None = None) -> Frame | None:
        """The next frame (heart-beats are counted, not returned), or ``None`` at timeout or end of stream."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._frames:
            if self._sock is None:
                return None
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            if remaining == 0.0:
                return None
            self._sock.settimeout(remaining)
            try:
                data = self._sock.recv(65536)
            except TimeoutError:
                return None
            except (OSError, ssl.SSLError) as exc:
                raise StompClientError(f"connection to {self.host}:{self.port} lost: {exc}") from exc
            if not data:
                self.close()
                break
            self._parser.receive_data(data)
            try:
                while (event := self._parser.next_event()) is not None:
                    if event is HEARTBEAT:
                        self.heartbeats_received += 1
                    else:
                        assert isinstance(event, Frame)
                        self._frames.append(event)
            except StompProtocolError as exc:
                self.close()
                raise StompClientError(f"{self.host}:{self.port} does not speak STOMP: {exc}") from exc
        return self._frames.popleft() if self._frames else None

    def request(self, frame: Frame, timeout: float | None = None) -> Frame:
        """Send ``frame`` with a receipt and wait for it; MESSAGE frames arriving meanwhile are kept for later."""
        receipt = f"r-{next(self._receipts)}"
        self.send_frame(Frame(frame.command, (*frame.headers, ("receipt", receipt)), frame.body))
        held: list[Frame] = []
        try:
            while True:
                answer = self.receive(self._timeout if timeout is None else timeout)
                if answer is None:
                    raise StompClientError(f"no RECEIPT for {frame.command} from {self.host}:{self.port}")
                if answer.command == "RECEIPT" and answer.get("receipt-id") == receipt:
                    return answer
                if answer.command == "ERROR":
                    raise StompClientError(f"broker error: {answer.get('message')}")
                held.append(answer)
        finally:
            self._frames.extendleft(reversed(held))

    def send(self, destination: str, body: bytes, headers: dict[str, str] | None = None, *,
             receipt: bool = True) -> None:
        """SEND a message; with ``receipt`` (default) return only once the broker has it."""
        frame = make_frame("SEND", {"destination": destination, **(headers or {})}, body)
        if receipt:
            self.request(frame)
        else:
            self.send_frame(frame)

    def subscribe(self, destination: str, sub_id: str, ack: str = "auto",
                  headers: dict[str, str] | None = None) -> None:
        """SUBSCRIBE and wait for the receipt, so messages sent afterwards are sure to reach this subscription."""
        self.request(make_frame("SUBSCRIBE", {"destination": destination, "id": sub_id, "ack": ack,
                                              **(headers or {})}))

    def ack(self, message: Frame, receipt: bool = False) -> None:
        frame = make_frame("ACK", {"id": message.get("ack") or ""})
        if receipt:
            self.request(frame)
        else:
            self.send_frame(frame)

    def nack(self, message: Frame) -> None:
        self.request(make_frame("NACK", {"id": message.get("ack") or ""}))

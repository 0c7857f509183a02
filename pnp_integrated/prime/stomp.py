"""STOMP 1.2 frame codec, sans-IO: bytes in, frames out; frames in, bytes out. No sockets here.

Theory of operation
-------------------
A STOMP stream is a sequence of frames and heart-beats. A frame is::

    COMMAND EOL (header EOL)* EOL body NUL (EOL)*

where EOL is LF or CR LF. A lone EOL between frames is a heart-beat. The body runs to the first NUL unless a
``content-length`` header says how many octets it has (then it may contain NULs and must still be followed by NUL).

Header values are escaped in every frame except CONNECT and CONNECTED (spec 1.2, "Value Encoding"): ``\\r``, ``\\n``,
``\\c`` (colon) and ``\\\\``; any other escape is a protocol error. When a header repeats, the first value wins.

:class:`FrameParser` is a small state machine: ``receive_data(bytes)`` appends to a buffer, ``next_event()`` returns
a :class:`Frame`, :data:`HEARTBEAT` or ``None`` (more bytes needed). Every input is bounded by :class:`Limits`:
a peer that exceeds one gets a :class:`StompProtocolError`, which the adapter turns into an ERROR frame
(:func:`error_frame`) and then closes the connection.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from .. import framing
from ..framing import LF, FrameBuffer, FramingError, body_length

NUL = b"\x00"

# Frames whose header values are sent verbatim (backwards compatibility with STOMP 1.0, spec 1.2).
UNESCAPED_COMMANDS = frozenset({"CONNECT", "CONNECTED"})

CLIENT_COMMANDS = frozenset(
    {"CONNECT", "STOMP", "SEND", "SUBSCRIBE", "UNSUBSCRIBE", "ACK", "NACK", "BEGIN", "COMMIT", "ABORT", "DISCONNECT"}
)
SERVER_COMMANDS = frozenset({"CONNECTED", "MESSAGE", "RECEIPT", "ERROR"})

_ESCAPES = {"\\": "\\\\", "\r": "\\r", "\n": "\\n", ":": "\\c"}
_UNESCAPES = {"\\": "\\", "r": "\r", "n": "\n", "c": ":"}


class StompProtocolError(ValueError):
    """The peer broke the protocol or a limit; ``str(exc)`` is the ERROR frame's ``message`` header."""


class Heartbeat(Enum):
    """A lone EOL between frames."""

    EOL = "heartbeat"


HEARTBEAT = Heartbeat.EOL


class Frame(framing.Frame):
    """One STOMP frame. ``headers`` keeps order and repeats; :meth:`get` applies the first-one-wins rule (spec 1.2),
    with header names matched exactly."""


def make_frame(command: str, headers: dict[str, str] | None = None, body: bytes | str = b"") -> Frame:
    """A frame from a header dict; ``str`` bodies are UTF-8 encoded."""
    return framing.frame_of(Frame, command, headers, body)


@dataclass(frozen=True)
class Limits:
    """Hard limits on what a peer may send; exceeding one is a protocol error, never a crash."""

    max_command_bytes: int = 64
    max_header_bytes: int = 64 * 1024  # the whole header section
    max_headers: int = 128
    max_body_bytes: int = 10 * 1024 * 1024


def escape_value(value: str) -> str:
    """Escape a header name or value for frames other than CONNECT/CONNECTED."""
    if not any(ch in value for ch in _ESCAPES):
        return value
    return "".join(_ESCAPES.get(ch, ch) for ch in value)


def unescape_value(value: str) -> str:
    """Undo :func:`escape_value`; an undefined escape sequence is a protocol error (spec 1.2)."""
    if "\\" not in value:
        return value
    out: list[str] = []
    i = 0
    while i < len(value):
        ch = value[i]
        if ch != "\\":
            out.append(ch)
            i += 1
            continue
        if i + 1 >= len(value) or value[i + 1] not in _UNESCAPES:
            raise StompProtocolError(f"undefined escape sequence in header: {value[i:i + 2]!r}")
        out.append(_UNESCAPES[value[i + 1]])
        i += 2
    return "".join(out)


def encode_frame(frame: Frame) -> bytes:
    """Serialise a frame; adds ``content-length`` when the body is not empty and none is given."""
    escape = frame.command not in UNESCAPED_COMMANDS
    lines = [frame.command]
    has_length = False
    for key, value in frame.headers:
        if "\x00" in key or "\x00" in value:
            raise ValueError(f"header {key!r} contains NUL, which would end the frame")
        if escape:
            key, value = escape_value(key), escape_value(value)
        elif any(ch in key + value for ch in "\r\n") or ":" in key:
            raise ValueError(f"header {key!r} of a {frame.command} frame cannot carry CR, LF or a colon in its name")
        if key == "content-length":
            has_length = True
        lines.append(f"{key}:{value}")
    if frame.body and not has_length:
        lines.append(f"content-length:{len(frame.body)}")
    return ("\n".join(lines) + "\n\n").encode("utf-8") + frame.body + NUL


def encode_heartbeat() -> bytes:
    """The bytes of one heart-beat."""
    return LF


def error_frame(message: str, detail: str = "", receipt_id: str | None = None) -> Frame:
    """An ERROR frame: ``message`` is the short header, ``detail`` the body (text/plain)."""
    headers = {"message": message.replace("\n", " ")[:200]}
    if receipt_id is not None:
        headers["receipt-id"] = receipt_id
    body = detail.encode()
    if body:
        headers["content-type"] = "text/plain"
    return make_frame("ERROR", headers, body)


class _State(Enum):
    IDLE = "between frames"
    BODY = "reading body"


@dataclass
class FrameParser:
    """Incremental parser: feed bytes with :meth:`receive_data`, take events with :meth:`next_event`."""

    limits: Limits = field(default_factory=Limits)
    commands: frozenset[str] = CLIENT_COMMANDS | SERVER_COMMANDS
    _buffer: FrameBuffer = field(default_factory=FrameBuffer)
    _state: _State = _State.IDLE
    _pending: tuple[str, tuple[tuple[str, str], ...], int | None] | None = None
    _scan_from: int = 0  # where to resume looking for NUL in an unbounded body

    def receive_data(self, data: bytes) -> None:
        """Add bytes received from the peer (``b""`` means end of stream)."""
        self._buffer.receive_data(data)

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def next_event(self) -> Frame | Heartbeat | None:
        """The next complete frame or heart-beat, or ``None`` when more bytes are needed."""
        try:
            if self._state is _State.IDLE:
                if self._buffer.take_line_end():
                    return HEARTBEAT
                if self._buffer.data[:1] == b"\r":
                    if len(self._buffer) < 2:
                        return None
                    raise StompProtocolError("stray CR between frames")
                if not self._read_head():
                    return None
            return self._read_body()
        except FramingError as exc:
            raise StompProtocolError(exc.message) from None

    def _read_head(self) -> bool:
        buf = self._buffer.data
        if not buf:
            return False
        try:
            lines = self._buffer.take_head(self.limits.max_command_bytes + self.limits.max_header_bytes)
        except FramingError:
            raise StompProtocolError(f"frame headers larger than {self.limits.max_header_bytes} bytes") from None
        if lines is None:
            if LF not in buf and len(buf) > self.limits.max_command_bytes:
                raise StompProtocolError(f"command longer than {self.limits.max_command_bytes} bytes")
            if NUL in buf:
                raise StompProtocolError("frame ended (NUL) before its header section was complete")
            return False
        if any(NUL in line for line in lines):
            raise StompProtocolError("NUL inside the frame headers")
        try:
            texts = [line.decode("utf-8") for line in lines]
        except UnicodeDecodeError as exc:
            raise StompProtocolError("frame headers are not valid UTF-8") from exc
        command = texts[0]
        if command not in self.commands:
            raise StompProtocolError(f"unknown command {command[: self.limits.max_command_bytes]!r}")
        if len(texts) - 1 > self.limits.max_headers:
            raise StompProtocolError(f"more than {self.limits.max_headers} headers")
        escape = command not in UNESCAPED_COMMANDS
        headers: list[tuple[str, str]] = []
        for line in texts[1:]:
            if ":" not in line:
                raise StompProtocolError(f"header line without a colon: {line[:80]!r}")
            key, value = line.split(":", 1)
            if escape:
                key, value = unescape_value(key), unescape_value(value)
            headers.append((key, value))
        length: int | None = None
        for key, value in headers:
            if key == "content-length":  # the first one wins, as for every header
                length = body_length(value, self.limits.max_body_bytes, header="content-length")
                break
        self._pending = (command, tuple(headers), length)
        self._state = _State.BODY
        self._scan_from = 0
        return True

    def _read_body(self) -> Frame | None:
        assert self._pending is not None
        command, headers, length = self._pending
        buf = self._buffer.data
        if length is not None:
            if len(buf) < length + 1:
                return None
            if buf[length : length + 1] != NUL:
                raise StompProtocolError("frame body is not followed by NUL where content-length says it ends")
            body = self._buffer.take(length + 1)[:-1]
        else:
            nul = buf.find(NUL, self._scan_from)
            if nul < 0:
                if len(buf) > self.limits.max_body_bytes:
                    raise StompProtocolError(f"body exceeds the limit of {self.limits.max_body_bytes} bytes")
                self._scan_from = len(buf)
                return None
            if nul > self.limits.max_body_bytes:
                raise StompProtocolError(f"body exceeds the limit of {self.limits.max_body_bytes} bytes")
            body = self._buffer.take(nul + 1)[:-1]
        self._pending = None
        self._state = _State.IDLE
        return Frame(command, headers, body)


def parse_heartbeat(value: str | None) -> tuple[int, int]:
    """The ``heart-beat`` header ``cx,cy`` as integers (``0,0`` when absent); malformed is a protocol error."""
    if not value:
        return 0, 0
    parts = value.split(",")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise StompProtocolError(f"heart-beat header {value[:40]!r} is not two numbers of milliseconds")
    return int(parts[0]), int(parts[1])


def negotiate_heartbeat(peer_can: int, peer_wants: int, we_can: int, we_want: int) -> tuple[int, int]:
    """(ms between our heart-beats, ms within which we expect the peer's); 0 disables (spec 1.2)."""
    send = 0 if we_can == 0 or peer_wants == 0 else max(we_can, peer_wants)
    expect = 0 if peer_can == 0 or we_want == 0 else max(peer_can, we_want)
    return send, expect

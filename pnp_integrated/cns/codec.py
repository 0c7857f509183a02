"""CNS-W1 frame codec, sans-IO: bytes in, frames out; frames in, bytes out. No sockets here.

Theory of operation
-------------------
Cisco never published the framing between the IOS CNS event agent and an event gateway (its SDK calls that hop a
"proprietary protocol/TCP"). CNS-W1 is this project's own framing for that hop; everything *inside* a frame (subjects,
XML bodies) follows Cisco's published CNS documents. Keeping the framing in this one module means a framing recovered
from real captures can later be added beside it without touching the gateway.

A CNS-W1 stream is a sequence of frames::

    frame      = start-line LF *( header LF ) LF body
    start-line = "CNS/1" SP command
    header     = name ":" value      ; name = 1*( ALPHA / DIGIT / "-" ), case-insensitive
    body       = exactly Content-Length octets (no Content-Length = empty body)

A CR right before an LF is dropped, so CRLF and LF line ends both work. Header values are printable UTF-8 and
trimmed of leading and trailing spaces. Unknown headers are kept in the frame (and ignored by the gateway); a
repeated header keeps every occurrence and :meth:`Frame.get` returns the first. ``Content-Length`` is framing, not
content: the parser consumes it and :func:`serialize` writes it from the body. Empty lines before a start line are
skipped, so a peer that ends a body with a stray LF is still understood.

:class:`FrameReader` is a small state machine with two states, reading the head (start line and headers) and reading
the body. ``receive_data(bytes)`` appends to a buffer (``b""`` means the peer closed); ``next_event()`` returns a
:class:`Frame`, :data:`NEED_DATA` (feed more bytes) or :data:`CLOSED` (clean end of stream). Limits are enforced as
bytes arrive, not after a frame is complete, so a peer can never make the buffer grow past them: a head longer than
``max_header_bytes`` (start line plus header lines, line ends included, the empty line that ends the head excluded)
or a Content-Length above ``max_body_bytes`` raises :class:`CnsProtocolError` with code 413; anything that does not
parse raises it with code 400. Once an error is raised the reader stays broken and raises the same error again: the
adapter answers with :func:`error_frame` and closes.

The reader only accepts the commands the *peer* may send: a gateway reads device commands, a device simulator reads
gateway commands. Any other command is unknown (400).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum

from .. import framing
from ..framing import LF, FrameBuffer, FramingError, body_length

PROTOCOL = "CNS/1"

# Frames a device sends to the gateway, and frames the gateway sends to a device (cns-wire.md section 3).
DEVICE_COMMANDS = frozenset({"HELLO", "SUBSCRIBE", "UNSUBSCRIBE", "PUBLISH", "PING", "BYE"})
GATEWAY_COMMANDS = frozenset({"WELCOME", "REDIRECT", "BUSY", "DELIVER", "RECEIPT", "PONG", "ERROR", "BYE"})
ALL_COMMANDS = DEVICE_COMMANDS | GATEWAY_COMMANDS

DEFAULT_MAX_HEADER_BYTES = 8192
DEFAULT_MAX_BODY_BYTES = 1024 * 1024

_NAME = re.compile(rb"[A-Za-z0-9-]+")
_NAME_STR = re.compile(r"[A-Za-z0-9-]+")
# Printable: no C0 controls (tab aside) and no DEL; CR and LF can never appear inside a line anyway.
_UNPRINTABLE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


class CnsProtocolError(ValueError):
    """The peer broke CNS-W1 or a limit. ``code`` is the ERROR code to answer with (400 or 413)."""

    def __init__(self, code: int, message: str) -> None:
        self.code = code
        self.message = message
        super().__init__(f"{code} {message}")


class Sentinel(Enum):
    NEED_DATA = "need-data"
    CLOSED = "closed"


NEED_DATA = Sentinel.NEED_DATA
CLOSED = Sentinel.CLOSED


@dataclass(frozen=True)
class Frame(framing.Frame):
    """One CNS-W1 frame. ``headers`` keeps order, case and repeats; look-ups ignore case."""

    def get(self, name: str, default: str | None = None) -> str | None:
        """The first value of header ``name`` (case-insensitive), or ``default``."""
        wanted = name.lower()
        for key, value in self.headers:
            if key.lower() == wanted:
                return value
        return default


Event = Frame | Sentinel


def make_frame(command: str, headers: dict[str, str] | None = None, body: bytes | str = b"") -> Frame:
    """A frame from a header dict; ``str`` bodies are UTF-8 encoded."""
    return framing.frame_of(Frame, command, headers, body)


def error_frame(code: int, message: str, **extra: str) -> Frame:
    """The ERROR frame for ``code`` with a ``Message`` that explains it (extra headers such as Retry-After)."""
    headers = {"Code": str(code), "Message": _one_line(message)}
    headers.update({name.replace("_", "-"): value for name, value in extra.items()})
    return make_frame("ERROR", headers)


def _one_line(text: str) -> str:
    return " ".join(_UNPRINTABLE.sub(" ", text).split())[:512]


def serialize(frame: Frame) -> bytes:
    """The bytes of ``frame``. Raises ``ValueError`` for a frame that could not be read back (a programming error)."""
    if frame.command not in ALL_COMMANDS:
        raise ValueError(f"unknown CNS-W1 command {frame.command!r}")
    out = [f"{PROTOCOL} {frame.command}\n".encode()]
    for name, value in frame.headers:
        if name.lower() == "content-length":
            continue  # written below from the body itself
        if not _NAME_STR.fullmatch(name):
            raise ValueError(f"invalid CNS-W1 header name {name!r}")
        if _UNPRINTABLE.search(value) or value != value.strip(" "):
            raise ValueError(f"header {name!r}: value must be printable and trimmed, got {value!r}")
        out.append(f"{name}:{value}\n".encode())
    if frame.body:
        out.append(f"Content-Length:{len(frame.body)}\n".encode())
    out.append(LF)
    out.append(frame.body)
    return b"".join(out)


class FrameReader:
    """Incremental CNS-W1 parser for one direction of one connection.

    ``accept`` is the set of commands the peer may send (:data:`DEVICE_COMMANDS` on the gateway side).
    """

    def __init__(
        self,
        accept: frozenset[str] = DEVICE_COMMANDS,
        *,
        max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    ) -> None:
        self.accept = accept
        self.max_header_bytes = max_header_bytes
        self.max_body_bytes = max_body_bytes
        self._buffer = FrameBuffer()
        self._error: CnsProtocolError | None = None
        # (command, headers) once a head is parsed, with the length of the body still to read
        self._head: tuple[str, tuple[tuple[str, str], ...]] | None = None
        self._body_length = 0

    def receive_data(self, data: bytes) -> None:
        """Feed bytes from the peer; ``b""`` means the peer closed its side."""
        self._buffer.receive_data(data)

    @property
    def buffered(self) -> int:
        """Bytes received but not yet turned into frames."""
        return len(self._buffer)

    def next_event(self) -> Event:
        """The next complete frame, :data:`NEED_DATA` or :data:`CLOSED`; raises :class:`CnsProtocolError`."""
        if self._error is not None:
            raise self._error
        try:
            event = self._next()
        except FramingError as exc:
            self._error = CnsProtocolError(413 if exc.too_large else 400, exc.message)
        except CnsProtocolError as exc:
            self._error = exc
        else:
            return event
        self._buffer.clear()
        raise self._error

    # ---- internals ------------------------------------------------------------------------------------------
    def _next(self) -> Event:
        if self._head is None:
            while self._buffer.take_line_end():
                pass  # blank lines between frames
            lines = self._buffer.take_head(self.max_header_bytes)
            if lines is None:
                return self._starved()
            self._head = self._parse_head(lines)
        if len(self._buffer) < self._body_length:
            return self._starved()
        command, headers = self._head
        body = self._buffer.take(self._body_length)
        self._head = None
        self._body_length = 0
        return Frame(command, headers, body)

    def _starved(self) -> Event:
        if not self._buffer.eof:
            return NEED_DATA
        if self._head is None and not self._buffer:
            return CLOSED
        raise CnsProtocolError(400, "connection closed in the middle of a frame")

    def _parse_head(self, lines: list[bytes]) -> tuple[str, tuple[tuple[str, str], ...]]:
        start = _text(lines[0], "start line")
        protocol, sep, command = start.partition(" ")
        if protocol != PROTOCOL or not sep:
            raise CnsProtocolError(400, f"expected '{PROTOCOL} <command>', got {start[:64]!r}")
        if command not in self.accept:
            raise CnsProtocolError(400, f"unknown command {command[:64]!r}")
        headers: list[tuple[str, str]] = []
        length: int | None = None
        for line in lines[1:]:
            name, colon, value = line.partition(b":")
            if not colon or not _NAME.fullmatch(name):
                raise CnsProtocolError(400, f"malformed header line {line[:64]!r}")
            text = _text(value, f"header {name[:64].decode('ascii')}").strip(" ")
            key = name.decode("ascii")
            if key.lower() == "content-length":
                given = body_length(text, self.max_body_bytes)
                if length is not None and given != length:
                    raise CnsProtocolError(400, "conflicting Content-Length headers")
                length = given
                continue
            headers.append((key, text))
        self._body_length = length or 0
        return command, tuple(headers)


def _text(raw: bytes, what: str) -> str:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise CnsProtocolError(400, f"{what} is not UTF-8") from None
    if _UNPRINTABLE.search(text):
        raise CnsProtocolError(400, f"{what} holds a control character")
    return text

"""The skeleton of the two text-framed protocols here, sans-IO: CNS-W1 to devices and STOMP 1.2 to Prime.

Both frame a message the same way: a start line naming the command, ``name:value`` header lines, an empty line, and
a body whose length a header may give. What differs stays in their codecs (:mod:`.cns.codec`, :mod:`.prime.stomp`):
CNS-W1 ignores the case of header names and needs no terminator; STOMP escapes header values, ends every frame with
NUL and sends heart-beats between frames. What they share lives here, once: the frame value, the receive buffer,
cutting a complete head off the front of that buffer under a byte limit (so a peer can never make it grow past the
limit while the head is incomplete), and the rule for a length header.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TypeVar

LF = b"\n"
CR = b"\r"
_DIGITS = re.compile(r"[0-9]+")


class FramingError(ValueError):
    """The framing itself is broken: ``too_large`` when a limit was crossed, else malformed.

    The codecs turn it into their own protocol error (CNS-W1: ERROR 413 or 400; STOMP: an ERROR frame).
    """

    def __init__(self, message: str, *, too_large: bool = False) -> None:
        self.message = message
        self.too_large = too_large
        super().__init__(message)


@dataclass(frozen=True)
class Frame:
    """One frame. ``headers`` keeps order, case and repeats; :meth:`get` returns the first of a repeated header."""

    command: str
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""

    def get(self, name: str, default: str | None = None) -> str | None:
        """The first value of header ``name``, or ``default``."""
        for key, value in self.headers:
            if key == name:
                return value
        return default

    def header_dict(self) -> dict[str, str]:
        """Headers as a dict, the first value of each name."""
        out: dict[str, str] = {}
        for key, value in self.headers:
            out.setdefault(key, value)
        return out


F = TypeVar("F", bound=Frame)


def frame_of(kind: type[F], command: str, headers: dict[str, str] | None = None, body: bytes | str = b"") -> F:
    """A frame of ``kind`` from a header dict; ``str`` bodies are UTF-8 encoded."""
    data = body.encode() if isinstance(body, str) else body
    return kind(command, tuple((headers or {}).items()), data)


class FrameBuffer:
    """The bytes received from one peer and not yet turned into frames."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.eof = False

    def receive_data(self, data: bytes) -> None:
        """Add bytes from the peer; ``b""`` means the peer closed its side."""
        if not data:
            self.eof = True
            return
        if self.eof:
            raise RuntimeError("data received after end of stream")
        self.data += data

    def __len__(self) -> int:
        return len(self.data)

    def take_line_end(self) -> bool:
        """Remove one line end (LF or CR LF) at the front; False when the front is not a complete one."""
        if self.data[:1] == LF:
            del self.data[:1]
            return True
        if self.data[:2] == CR + LF:
            del self.data[:2]
            return True
        return False

    def take_head(self, limit: int) -> list[bytes] | None:
        """Cut a complete head off the front: its lines without their line ends (LF, or CR LF), the empty line that
        ends it consumed too; ``None`` while it is incomplete.

        Raises :class:`FramingError` (``too_large``) as soon as the head's lines (line ends counted, the empty line
        not) are certain to exceed ``limit`` octets, without waiting for the rest of them.
        """
        buf = self.data
        lines: list[bytes] = []
        start = 0
        while True:
            nl = buf.find(LF, start, limit + 2)  # the empty line's LF is at most at limit + 1 (after a CR)
            if nl < 0:
                if len(buf) > limit + 1:
                    raise FramingError(f"frame head exceeds {limit} octets", too_large=True)
                return None
            end = nl - 1 if nl > start and buf[nl - 1] == CR[0] else nl
            if end == start and lines:
                del buf[: nl + 1]
                return lines
            if nl + 1 > limit:
                raise FramingError(f"frame head exceeds {limit} octets", too_large=True)
            lines.append(bytes(buf[start:end]))
            start = nl + 1

    def take(self, size: int) -> bytes:
        """Remove and return the first ``size`` octets."""
        out = bytes(self.data[:size])
        del self.data[:size]
        return out

    def clear(self) -> None:
        self.data.clear()


def body_length(text: str, max_bytes: int, header: str = "Content-Length") -> int:
    """The octet count a length header gives; :class:`FramingError` when it is not digits or is above ``max_bytes``
    (found from the digits alone, so a thousand-digit number is never converted)."""
    if not _DIGITS.fullmatch(text):
        raise FramingError(f"{header} {text[:32]!r} is not a number of octets")
    digits = text.lstrip("0")
    if len(digits) > len(str(max_bytes)) or int(digits or "0") > max_bytes:
        raise FramingError(f"body of {text[:32]} octets exceeds the limit of {max_bytes}", too_large=True)
    return int(digits or "0")

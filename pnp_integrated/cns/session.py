"""The CNS-W1 session state machine, sans-IO: frames in, decisions out.

A connection is in one of three phases: waiting for HELLO, established, closed. Which command is legal in which phase
is the :data:`TRANSITIONS` table; anything absent from it is refused with the code the table's fallback names (401
before HELLO, 400 after). The machine validates headers and bodies and tells the adapter what to do as a
:data:`Decision`; everything that needs the database, the engine or a socket (admission, replacement, durable
recording, delivery) is the adapter's job. The frames the gateway sends are built here too, so the wire vocabulary
lives in one place.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

from ..refusals import PUBLISH_FLOOD
from .codec import Frame, error_frame, make_frame
from .messages import EXPECTED_ROOTS, Document, XmlRefused, parse_xml

DEFAULT_KEEPALIVE = 60
DEFAULT_RETRIES = 3
MAX_KEEPALIVE = 3600
MAX_RETRIES = 100

_DEVICE_ID = re.compile(r"[^\s\x00-\x1f\x7f]{1,255}")
_SUBJECT = re.compile(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_*>-]+)*")
_KEEPALIVE = re.compile(r"\s*([0-9]{1,6})\s*(?:,\s*([0-9]{1,6})\s*)?")


class Phase(Enum):
    AWAIT_HELLO = "await-hello"
    ESTABLISHED = "established"
    CLOSED = "closed"


@dataclass(frozen=True)
class Hello:
    """Who the device says it is (HELLO headers, defaults applied)."""

    device_id: str
    config_id: str
    image_id: str
    keepalive: int = DEFAULT_KEEPALIVE
    retries: int = DEFAULT_RETRIES
    agent: str = ""

    @property
    def idle_timeout(self) -> float:
        """Seconds without a frame after which the session is dead: keepalive x (retries + 1)."""
        return float(self.keepalive * (self.retries + 1))


# ---- decisions ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Admit:
    hello: Hello
    receipt: str | None


@dataclass(frozen=True)
class Subscribe:
    subject: str
    bus_subject: str
    receipt: str | None


@dataclass(frozen=True)
class Unsubscribe:
    subject: str
    bus_subject: str
    receipt: str | None


@dataclass(frozen=True)
class Publish:
    subject: str
    bus_subject: str
    xml: str
    document: Document
    receipt: str | None


@dataclass(frozen=True)
class Ping:
    receipt: str | None


@dataclass(frozen=True)
class Goodbye:
    receipt: str | None


@dataclass(frozen=True)
class Refuse:
    """Answer ``ERROR code`` and, when ``close``, end the connection."""

    code: int
    message: str
    close: bool = True
    retry_after: int | None = None  # seconds the device should wait before it comes back
    protects: str = ""  # a refusal made to protect the node: its reason in pnp_refused_total (refusals.REASONS)


Decision = Admit | Subscribe | Unsubscribe | Publish | Ping | Goodbye | Refuse


PUBLISH_FLOOD_RETRY_AFTER = 60


class Budget:
    """A token bucket: up to ``per_minute`` at once, refilled at ``per_minute`` a minute; 0 means no limit.

    ``clock`` is injected (seconds, monotonic), so tests drive the protocol core with a fake one.
    """

    def __init__(self, per_minute: int, clock: Callable[[], float]) -> None:
        self.per_minute = per_minute
        self.clock = clock
        self.left = float(per_minute)
        self.at = clock()

    def spend(self, amount: float) -> bool:
        """Take ``amount`` if there is that much left; False (nothing taken) when there is not."""
        if self.per_minute <= 0:
            return True
        now = self.clock()
        self.left = min(float(self.per_minute), self.left + (now - self.at) * self.per_minute / 60.0)
        self.at = now
        if amount > self.left:
            return False
        self.left -= amount
        return True


class CnsSession:
    """One device connection's protocol state.

    ``publish_per_minute`` / ``publish_bytes_per_minute`` bound what one session may PUBLISH (each event is stored
    and sent to Prime): a device publishes a handful of results per job, a flood is refused with ERROR 413.
    """

    def __init__(self, *, publish_per_minute: int = 0, publish_bytes_per_minute: int = 0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.phase = Phase.AWAIT_HELLO
        self.hello: Hello | None = None
        self.subjects: set[str] = set()  # device-side subjects
        self.publishes = Budget(publish_per_minute, clock)
        self.publish_bytes = Budget(publish_bytes_per_minute, clock)

    @property
    def device_id(self) -> str:
        return self.hello.device_id if self.hello else ""

    def receive(self, frame: Frame) -> Decision:
        """Validate ``frame`` in the current phase and say what to do about it."""
        if self.phase is Phase.CLOSED:
            return Refuse(400, "session already ended")
        handler = TRANSITIONS.get((self.phase, frame.command))
        decision: Decision
        if handler is not None:
            decision = handler(self, frame)
        elif self.phase is Phase.AWAIT_HELLO:
            decision = Refuse(401, f"HELLO required first, got {frame.command}")
        elif frame.command == "HELLO":
            decision = Refuse(400, "HELLO repeated on an established session")
        else:
            decision = Refuse(400, f"{frame.command} is not valid here")
        if isinstance(decision, Refuse) and decision.close:
            self.phase = Phase.CLOSED
        return decision

    def close(self) -> None:
        self.phase = Phase.CLOSED

    # ---- handlers (see TRANSITIONS) -------------------------------------------------------------------------
    def _on_hello(self, frame: Frame) -> Decision:
        device_id = frame.get("Device-Id", "") or ""
        if not _DEVICE_ID.fullmatch(device_id):
            return Refuse(400, "HELLO needs Device-Id: 1-255 printable characters without spaces")
        for name in ("Config-Id", "Image-Id"):
            value = frame.get(name)
            if value is not None and not _DEVICE_ID.fullmatch(value):
                return Refuse(400, f"{name} must be 1-255 printable characters without spaces")
        keepalive, retries = DEFAULT_KEEPALIVE, DEFAULT_RETRIES
        raw = frame.get("Keepalive")
        if raw is not None:
            match = _KEEPALIVE.fullmatch(raw)
            if not match:
                return Refuse(400, f"Keepalive must be <seconds>,<retries>, got {raw[:40]!r}")
            keepalive = int(match.group(1))
            retries = int(match.group(2)) if match.group(2) is not None else DEFAULT_RETRIES
            if not (1 <= keepalive <= MAX_KEEPALIVE and 0 <= retries <= MAX_RETRIES):
                return Refuse(400, f"Keepalive seconds must be 1-{MAX_KEEPALIVE} and retries 0-{MAX_RETRIES}")
        self.hello = Hello(
            device_id=device_id,
            config_id=frame.get("Config-Id") or device_id,
            image_id=frame.get("Image-Id") or device_id,
            keepalive=keepalive,
            retries=retries,
            agent=frame.get("Agent", "") or "",
        )
        self.phase = Phase.ESTABLISHED
        return Admit(self.hello, frame.get("Receipt"))

    def _subject(self, frame: Frame) -> str | Refuse:
        subject = frame.get("Subject", "") or ""
        if not _SUBJECT.fullmatch(subject) or len(subject) > 200:
            return Refuse(400, f"{frame.command} needs Subject: a dotted subject name")
        return subject

    def _on_subscribe(self, frame: Frame) -> Decision:
        subject = self._subject(frame)
        if isinstance(subject, Refuse):
            return subject
        self.subjects.add(subject)
        return Subscribe(subject, self.bus_subject(subject), frame.get("Receipt"))

    def _on_unsubscribe(self, frame: Frame) -> Decision:
        subject = self._subject(frame)
        if isinstance(subject, Refuse):
            return subject
        self.subjects.discard(subject)
        return Unsubscribe(subject, self.bus_subject(subject), frame.get("Receipt"))

    def _on_publish(self, frame: Frame) -> Decision:
        subject = self._subject(frame)
        if isinstance(subject, Refuse):
            return subject
        if not (self.publishes.spend(1) and self.publish_bytes.spend(len(frame.body))):
            # 413: this session sent more than it may (CNS-W1 has no rate code); the device reconnects later.
            return Refuse(413, f"too much PUBLISH on this session (at most {self.publishes.per_minute} messages and "
                               f"{self.publish_bytes.per_minute} octets a minute); reconnect later",
                          retry_after=PUBLISH_FLOOD_RETRY_AFTER, protects=PUBLISH_FLOOD)
        try:
            document = parse_xml(frame.body)
        except XmlRefused as exc:
            return Refuse(400, str(exc), close=False)
        expected = EXPECTED_ROOTS.get(subject)
        if expected and document.root != expected:
            return Refuse(400, f"{subject} expects a <{expected}> document, got <{document.root}>", close=False)
        return Publish(subject, self.bus_subject(subject), frame.body.decode("utf-8"), document,
                       frame.get("Receipt"))

    def _on_ping(self, frame: Frame) -> Decision:
        return Ping(frame.get("Receipt"))

    def _on_bye(self, frame: Frame) -> Decision:
        self.phase = Phase.CLOSED
        return Goodbye(frame.get("Receipt"))

    # ---- subject mapping ------------------------------------------------------------------------------------
    def bus_subject(self, subject: str) -> str:
        """The per-device bus subject of a device-side subject: ``<subject>.<Device-Id>``."""
        return f"{subject}.{self.device_id}"

    def subscribed(self, subject: str) -> bool:
        """Whether the device listens on ``subject`` (device-side, or its bus form)."""
        suffix = f".{self.device_id}"
        if subject.endswith(suffix) and subject[: -len(suffix)] in self.subjects:
            return True
        return subject in self.subjects


TRANSITIONS = {
    (Phase.AWAIT_HELLO, "HELLO"): CnsSession._on_hello,
    (Phase.ESTABLISHED, "SUBSCRIBE"): CnsSession._on_subscribe,
    (Phase.ESTABLISHED, "UNSUBSCRIBE"): CnsSession._on_unsubscribe,
    (Phase.ESTABLISHED, "PUBLISH"): CnsSession._on_publish,
    (Phase.ESTABLISHED, "PING"): CnsSession._on_ping,
    (Phase.ESTABLISHED, "BYE"): CnsSession._on_bye,
}


# ---- frames the gateway sends ---------------------------------------------------------------------------------
def welcome(token: str, keepalive: int) -> Frame:
    return make_frame("WELCOME", {"Session": token, "Keepalive": str(keepalive)})


def redirect(host: str, port: int) -> Frame:
    return make_frame("REDIRECT", {"Host": host, "Port": str(port)})


def busy(retry_after: int, message: str = "") -> Frame:
    headers = {"Retry-After": str(retry_after)}
    if message:
        headers["Message"] = message
    return make_frame("BUSY", headers)


def receipt(token: str) -> Frame:
    return make_frame("RECEIPT", {"Receipt-Id": token})


def pong() -> Frame:
    return make_frame("PONG")


def bye() -> Frame:
    return make_frame("BYE")


def deliver(subject: str, xml: str, message_id: str | None = None) -> Frame:
    return make_frame(
        "DELIVER",
        {"Subject": subject, "Message-Id": message_id or uuid.uuid4().hex, "Content-Type": "application/xml"},
        xml,
    )


def refusal(decision: Refuse, retry_after: int | None = None) -> Frame:
    wait = retry_after if retry_after is not None else decision.retry_after
    extra = {"Retry_After": str(wait)} if wait is not None else {}
    return error_frame(decision.code, decision.message, **extra)

"""Gateway ports: the gevent adapter between a device socket, the CNS-W1 codec and the session state machine.

One greenlet per connection reads frames under a deadline (HELLO within ``cns_hello_timeout``, then keepalive x
(retries + 1) since the last complete frame) and carries out the state machine's decisions: admission (session row,
replacement of an older session of the same device anywhere on the node, port capacity), subscriptions, durable
recording of published events before their RECEIPT, and the provisioning engine's next step. Other greenlets (the
mailbox, an HTTP request on this worker) write to the device through :meth:`GatewayConnection.push` and
:meth:`GatewayConnection.end`, under the connection's send lock.
"""

from __future__ import annotations

import logging
import random
import select as kernel_select
import time
from typing import Any

import gevent
from flask import Flask
from gevent.lock import RLock
from gevent.monkey import get_original
from sqlalchemy import bindparam, func, insert, select

from ..database import admission_turn
from ..listeners import peer_data_waiting
from ..logs import client_mistake
from ..models import DeviceSession, db, new_uuid, utcnow
from ..outbox import record_event
from ..provisioning.types import NEW_DEVICES_WAIT_SECONDS
from ..refusals import CNS_HELLO_TIMEOUT, NEW_DEVICES_PER_SOURCE, count_refusal
from . import provision
from .codec import CLOSED, DEVICE_COMMANDS, NEED_DATA, CnsProtocolError, Frame, FrameReader, error_frame, serialize
from .messages import CONFIG_LOAD, EXEC_CMD
from .session import (
    Admit,
    CnsSession,
    Goodbye,
    Hello,
    Ping,
    Publish,
    Refuse,
    Subscribe,
    Unsubscribe,
    busy,
    pong,
    receipt,
    refusal,
    welcome,
)
from .worker import (
    ADMISSION_SLOTS,
    CnsWorker,
    close_sessions,
    cns_worker,
    end_session,
    not_taking_devices,
    session_device,
)

log = logging.getLogger(__name__)

SEND_TIMEOUT = 30.0  # a device that stops reading must not hold a greenlet forever
BUSY_RETRY_AFTER = 30
PASSIVE_RETRY_AFTER = 10
ADMISSION_RETRY_AFTER = 5  # waited a whole HELLO timeout for an admission slot: come back shortly
RESULT_RETRY_AFTER = 5  # a result the database could not take: the device comes back soon


def spread(seconds: int) -> int:
    """A Retry-After for a device sent away under load: ``seconds`` plus up to half again, drawn for each device, so a
    fleet refused together does not come back together (and be refused together again)."""
    return seconds + random.randint(0, max(1, seconds // 2))


# The admission's statements, built once (their compiled forms are cached against them): it runs for every device
# of a fleet that comes back at once.
_SESSIONS = DeviceSession.__table__
_LIVE_ON_PORT = select(func.count()).select_from(_SESSIONS).where(
    _SESSIONS.c.port == bindparam("port"), _SESSIONS.c.node == bindparam("node"), _SESSIONS.c.closed_at.is_(None))
_OPEN_SESSION = insert(_SESSIONS)
_OLDER_SESSIONS = select(_SESSIONS.c.id, _SESSIONS.c.device_key, _SESSIONS.c.worker_pid, _SESSIONS.c.token,
                         _SESSIONS.c.address, _SESSIONS.c.port).where(
    _SESSIONS.c.device_key == bindparam("device"), _SESSIONS.c.closed_at.is_(None),
    _SESSIONS.c.node == bindparam("node"), _SESSIONS.c.protocol == "cns", _SESSIONS.c.token != bindparam("token"))
_SESSION_BY_TOKEN = select(_SESSIONS.c.id, _SESSIONS.c.device_key, _SESSIONS.c.address, _SESSIONS.c.port).where(
    _SESSIONS.c.token == bindparam("token"))


class FrameTimeout(Exception):
    """No complete frame before the deadline."""


# Past a deadline, what the peer had already sent is still read (the worker was late, not the peer); the rest of a
# TLS record begun in time may take this long more to come.
LATE_READ_SECONDS = 2.0


def peer_sent_more(sock: Any) -> bool:
    """Whether the peer sent bytes not read yet: decrypted and waiting in the TLS layer, or in the kernel."""
    pending = getattr(sock, "pending", None)
    return bool(pending is not None and pending()) or peer_data_waiting(sock)


class FrameStream:
    """Frames from a socket through a :class:`FrameReader`, each read bounded by a deadline."""

    def __init__(self, sock: Any, reader: FrameReader) -> None:
        self.sock = sock
        self.reader = reader

    def read(self, deadline: float) -> Frame | None:
        """The next frame; ``None`` when the peer closed. Raises FrameTimeout, CnsProtocolError or OSError.

        The deadline is the peer's: bytes it sent before the deadline are read even when this worker comes to them
        after it (under a storm a greenlet waits seconds for its turn), so a device that was on time is answered.
        """
        while True:
            event = self.reader.next_event()
            if event is CLOSED:
                return None
            if event is not NEED_DATA:
                assert isinstance(event, Frame)
                return event
            remaining = deadline - time.monotonic()
            data: bytes | None = None
            if remaining > 0:
                with gevent.Timeout(remaining, False):
                    data = self.sock.recv(65536)
            if data is None:
                if not peer_sent_more(self.sock):
                    raise FrameTimeout
                with gevent.Timeout(LATE_READ_SECONDS, False):
                    data = self.sock.recv(65536)
                if data is None:
                    raise FrameTimeout
            self.reader.receive_data(data)


def send_frame(sock: Any, frame: Frame) -> bool:
    """Write one frame; ``False`` when the peer is gone or does not read."""
    try:
        with gevent.Timeout(SEND_TIMEOUT):
            sock.sendall(serialize(frame))
        return True
    except (OSError, gevent.Timeout):
        return False


_HUNG_UP = kernel_select.POLLRDHUP | kernel_select.POLLHUP | kernel_select.POLLERR


def peer_hung_up(sock: Any) -> bool:
    """Whether the device closed its end of the connection, seen without reading from it (TLS or not)."""
    poller = get_original("select", "poll")()  # the kernel's poll, not gevent's: a zero-timeout look never yields
    try:
        poller.register(sock.fileno(), kernel_select.POLLIN | kernel_select.POLLRDHUP)
    except (OSError, ValueError):  # already closed
        return True
    return any(mask & _HUNG_UP for _, mask in poller.poll(0))


def no_hello(port: int, address: str, seconds: float) -> None:
    """Log (rate-limited) and count a connection closed for sending no HELLO in time (CNS-W1: without a word)."""
    count_refusal(CNS_HELLO_TIMEOUT)
    log.info("CNS connection on port %s from %s sent no HELLO within %gs: closed", port, address, seconds,
             extra=client_mistake(f"cns-no-hello-{port}"))


def close_socket(sock: Any) -> None:
    try:
        sock.close()
    except OSError:
        pass


class GatewayConnection:
    """One device connected to a gateway port of this worker."""

    def __init__(self, app: Flask, worker: CnsWorker, sock: Any, address: tuple[str, int], port: int,
                 tls: bool) -> None:
        self.app = app
        self.worker = worker
        self.settings = worker.settings
        self.sock = sock
        self.address = address[0] if address else ""
        self.port = port
        self.tls = tls
        self.session = CnsSession(publish_per_minute=self.settings.cns_publish_per_minute,
                                  publish_bytes_per_minute=self.settings.cns_publish_bytes_per_minute)
        self.token = ""
        self.ended_by: str = ""  # set when another greenlet ended this session
        self._lock = RLock()
        self._pushed: set[str] = set()
        self._contact: Any = None  # the engine's contact after WELCOME, while it runs

    # ---- used by other greenlets ----------------------------------------------------------------------------
    def send(self, frame: Frame) -> bool:
        with self._lock:
            if self.ended_by:
                return False
            return send_frame(self.sock, frame)

    def end(self, code: int, message: str) -> None:
        """End this session from outside (replacement, shutdown): ERROR to the device, then close."""
        with self._lock:
            if self.ended_by:
                return
            send_frame(self.sock, error_frame(code, message))
            self.ended_by = message
        self.session.close()
        close_socket(self.sock)  # wakes the reading greenlet

    def push(self, subject: str, xml: str) -> bool:
        """DELIVER ``xml`` on ``subject`` if the device subscribed to it."""
        from .session import deliver

        if not self.session.subscribed(subject):
            return False
        device_subject = subject.removesuffix(f".{self.session.device_id}")
        return self.send(deliver(device_subject, xml))

    # ---- the connection's own greenlet ----------------------------------------------------------------------
    def serve(self) -> None:
        reason = "connection closed"
        try:
            reason = self._serve()
        except gevent.GreenletExit:
            reason = "gateway stopping"
            self.send(error_frame(503, "gateway stopping", Retry_After=str(PASSIVE_RETRY_AFTER)))
            raise
        except Exception:
            log.exception("CNS session of %s on port %s failed", self.session.device_id or self.address, self.port)
            reason = "gateway error"
            self.send(error_frame(503, "internal gateway error", Retry_After=str(PASSIVE_RETRY_AFTER)))
        finally:
            self._finish(reason)

    def _serve(self) -> str:
        reader = FrameReader(DEVICE_COMMANDS, max_header_bytes=self.settings.cns_max_header_bytes,
                             max_body_bytes=self.settings.cns_max_body_bytes)
        stream = FrameStream(self.sock, reader)
        deadline = time.monotonic() + self.settings.cns_hello_timeout
        while True:
            try:
                frame = stream.read(deadline)
            except FrameTimeout:
                if self.session.hello is None:
                    no_hello(self.port, self.address, self.settings.cns_hello_timeout)
                    return f"no HELLO within {self.settings.cns_hello_timeout:g}s"
                return f"idle for {self.session.hello.idle_timeout:g}s"
            except CnsProtocolError as exc:
                self.send(error_frame(exc.code, exc.message))
                return f"protocol error {exc.code}: {exc.message}"
            except OSError:
                return self.ended_by or "connection lost"
            if frame is None:
                return self.ended_by or "closed by device"
            outcome = self._decide(frame)
            if outcome:
                return outcome
            if self.session.hello is not None:
                deadline = time.monotonic() + self.session.hello.idle_timeout

    def _decide(self, frame: Frame) -> str:
        """Carry out the state machine's decision; a non-empty close reason ends the connection."""
        decision = self.session.receive(frame)
        self._touch()
        match decision:
            case Refuse(code=code, message=message, close=close):
                if decision.protects:
                    count_refusal(decision.protects)
                self.send(refusal(decision))
                return f"refused {code}: {message}" if close else ""
            case Admit(hello=hello):
                refused = self._admit(hello)
                if refused:
                    return refused
            case Subscribe(subject=subject) | Unsubscribe(subject=subject):
                self._store_subjects()
                self._receipt(decision.receipt)
                if isinstance(decision, Subscribe) and subject in (CONFIG_LOAD, EXEC_CMD):
                    self._after_contact()
                    self._carry_out(provision.pending_action(self.app, self.session.hello))
                return ""
            case Publish():
                self._after_contact()
                return self._publish(decision)
            case Ping():
                self.send(pong())
            case Goodbye():
                self._after_contact()
                self._receipt(decision.receipt)
                from .session import bye

                self.send(bye())
                return "BYE from device"
        self._receipt(decision.receipt)
        return ""

    def _receipt(self, token: str | None) -> None:
        if token is not None:
            self.send(receipt(token))

    # ---- admission ------------------------------------------------------------------------------------------
    def _admit(self, hello: Hello) -> str:
        refused = not_taking_devices(self.app)
        if refused is not None:
            self.send(refused[0])
            return refused[1]
        if provision.new_device_refused(self.app, hello, self.address):
            count_refusal(NEW_DEVICES_PER_SOURCE)
            self.send(busy(NEW_DEVICES_WAIT_SECONDS, f"{self.address} introduced too many new devices this minute; "
                                                     "retry later"))
            return "too many new devices from its source"
        # A bounded number of admissions run at once per worker; the rest wait their turn without using CPU, so a
        # fleet returning after a failover cannot delay the PONGs of held sessions or the leader lease renewal.
        slots = self.worker.admission_slots
        if not slots.acquire(timeout=self.settings.cns_hello_timeout):
            self.send(busy(spread(ADMISSION_RETRY_AFTER), "gateway busy admitting other devices; retry later"))
            return "admission queue full"
        started = time.monotonic()
        handed_over = False
        try:
            # A device that waited long for its turn may have given up (and is coming back through the dispatcher):
            # admitting it would tell Prime it connected, and cost the time of devices still waiting.
            if peer_hung_up(self.sock):
                return "hung up while waiting for admission"
            refused = self._admit_now(hello)
            if not refused:
                # The engine's contact goes on beside the session, in the admission's slot: under a storm it waits
                # long for the database, and the device's first frame (SUBSCRIBE) is receipted meanwhile.
                self._contact = gevent.spawn(self._contact_engine, hello, started)
                handed_over = True
            return refused
        finally:
            if not handed_over:
                slots.release(time.monotonic() - started)

    def _contact_engine(self, hello: Hello, started: float) -> None:
        """Tell the engine the device is here and push what it asks for; then give the admission slot back."""
        try:
            self._carry_out(provision.contact(self.app, hello, self.address))
        except Exception:  # a bug: the session ends, as it would had the contact run in the session's greenlet
            log.exception("CNS device %s: provisioning contact failed", hello.device_id)
            self.end(503, "internal gateway error")
        finally:
            self.worker.admission_slots.release(time.monotonic() - started)

    def _after_contact(self) -> None:
        """Wait for the engine's contact, if it still runs: what follows (a pending action, a result) needs it."""
        if self._contact is not None:
            self._contact.join()
            self._contact = None

    def _live_on_port(self) -> int:
        return db.session.connection().execute(
            _LIVE_ON_PORT, {"port": self.port, "node": self.settings.node_name}).scalar() or 0

    def _admit_now(self, hello: Hello) -> str:
        """One transaction: the capacity check, the session row and ``device.connected`` commit together or not at all.

        Near capacity, admissions to one port take turns (:func:`~pnp_integrated.database.admission_turn`), so the
        count of live rows includes every admission before this one and two workers cannot both take the last place;
        a device refused for capacity leaves no row and no event, and Prime hears of a connection only once it is
        admitted.
        """
        settings = self.settings
        with self.app.app_context():
            must_count = admission_turn(self.port, lambda: self._live_on_port() + settings.workers * ADMISSION_SLOTS
                                        > settings.cns_port_capacity)
            connection = db.session.connection()
            now = utcnow()
            row = {"token": new_uuid(), "device_key": hello.device_id, "protocol": "cns", "node": settings.node_name,
                   "worker_pid": self.worker.pid, "port": self.port, "tls": self.tls, "address": self.address,
                   "subjects": [], "connected_at": now, "last_frame_at": now, "close_reason": ""}
            # SQLite: this first write takes the write lock, so the count below is current.
            connection.execute(_OPEN_SESSION, row)
            older = connection.execute(_OLDER_SESSIONS, {"device": hello.device_id, "node": settings.node_name,
                                                         "token": row["token"]}).all()
            close_sessions(older, "replaced by a newer session")
            if must_count and self._live_on_port() > settings.cns_port_capacity:  # this row in, the replaced out
                db.session.rollback()
                self.token = ""
                self.send(busy(spread(BUSY_RETRY_AFTER), f"port {self.port} is at capacity"))
                return "port at capacity"
            record_event("device.connected", {"device": session_device(hello.device_id, self.address, self.port)})
            # Nothing below may open a transaction across socket or mailbox I/O.
            self.token = row["token"]
            replaced = [(old.worker_pid, old.token) for old in older]
            if peer_hung_up(self.sock):  # it gave up while the database was slow: no session, no event
                db.session.rollback()
                self.token = ""
                return "hung up while being admitted"
            db.session.commit()
            for worker_pid, token in replaced:  # mailbox I/O with no transaction open
                end_session(settings, worker_pid, token, 409, "replaced by a newer session of the same Device-Id")
        self.worker.connections[self.token] = self
        self.send(welcome(self.token, hello.keepalive))
        log.info("CNS device %s connected on port %s from %s", hello.device_id, self.port, self.address)
        return ""

    # ---- subscriptions, events ------------------------------------------------------------------------------
    def _store_subjects(self) -> None:
        self.worker.note_subjects(self.token, sorted(self.session.bus_subject(s) for s in self.session.subjects))

    def _touch(self) -> None:
        self.worker.note_activity(self.token)

    def _publish(self, event: Publish) -> str:
        """Record the event, let the engine take a result, then RECEIPT: a receipted result is never lost.

        If the engine cannot record the result now, no RECEIPT: ERROR 503 and the connection closes; the device
        comes back, subscribes, and is given the request again (its result lands then).
        """
        hello = self.session.hello
        assert hello is not None
        with self.app.app_context():
            record_event("cns.event", {
                "subject": event.bus_subject,
                "device": {"id": hello.device_id, "serial": hello.config_id, "protocol": "cns",
                           "address": self.address, "port": self.port},
                "xml": event.xml,
            })
            db.session.commit()  # durable before the RECEIPT: a receipted event cannot be lost
        try:
            action = provision.report(self.app, hello, event.subject, event.document)
        except provision.ResultNotRecorded as exc:
            log.warning("CNS device %s: result on %s not recorded (%s); told to send it again", hello.device_id,
                        event.subject, exc)
            self.send(refusal(Refuse(503, "gateway busy: the result was not recorded, send it again"),
                              RESULT_RETRY_AFTER))
            return "result not recorded (database busy)"
        self._receipt(event.receipt)
        self._carry_out(action)
        return ""

    def _carry_out(self, action: Any) -> None:
        """Push what the engine wants done over this connection (post-PnP config, write memory)."""
        hello = self.session.hello
        if action is None or hello is None:
            return
        delivery = provision.delivery_for(action, hello.config_id, self.settings)
        if delivery is None or action.correlator in self._pushed:
            return
        subject, xml = delivery
        self._pushed.add(action.correlator)  # before the send, which may yield to the contact's greenlet
        if not self.push(subject, xml):
            self._pushed.discard(action.correlator)

    # ---- end ------------------------------------------------------------------------------------------------
    def _finish(self, reason: str) -> None:
        self.session.close()
        if self.token and self.worker.connections.get(self.token) is self:
            del self.worker.connections[self.token]
        close_socket(self.sock)
        if not self.token:
            return
        try:
            with self.app.app_context():
                rows = db.session.connection().execute(_SESSION_BY_TOKEN, {"token": self.token}).all()
                close_sessions(rows, self.ended_by or reason)
                db.session.commit()
        except Exception as exc:  # the device is gone either way; a stale row is swept on the next start
            log.warning("could not close CNS session %s: %s", self.token, exc)
        log.info("CNS device %s disconnected from port %s: %s", self.session.device_id, self.port,
                 self.ended_by or reason)


class GatewayPort:
    """The connection handler of one gateway port in this worker."""

    def __init__(self, app: Flask, port: int, tls: bool) -> None:
        self.app = app
        self.port = port
        self.tls = tls

    def __call__(self, sock: Any, address: tuple[str, int]) -> None:
        GatewayConnection(self.app, cns_worker(self.app), sock, address, self.port, self.tls).serve()

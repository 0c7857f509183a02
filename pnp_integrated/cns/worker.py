"""This worker's share of the CNS gateway: its live connections, and the mailbox other processes reach them through.

gunicorn runs several workers and the kernel spreads device connections across them (SO_REUSEPORT), so a push for a
device, or the replacement of its session, may be decided in a process that does not hold its socket. The database
says where each live session is (``DeviceSession.worker_pid``); every worker listens on a unix socket
``<data_dir>/run/worker-<pid>.sock`` (its mailbox) and acts on one-line JSON requests for sessions it holds. No
message broker is needed, so delivery works even while the bus is down.

Mailbox requests: ``{"op": "deliver", "token", "subject", "xml"}`` and ``{"op": "end", "token", "code",
"message"}``; the answer is ``{"ok": true|false}``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

from flask import Flask, current_app
from sqlalchemy import bindparam, select, update

from ..config import Settings
from ..context import TAKING_OVER_HOLD_SECONDS, accepting_devices, gateway_state, retry_after
from ..models import DeviceSession, db, utcnow
from ..outbox import record_event
from ..refusals import DISK_LOW, count_refusal
from ..storage import DISK_RETRY_AFTER, disk_low
from .codec import Frame
from .session import Refuse, busy, refusal

log = logging.getLogger(__name__)

MAILBOX_TIMEOUT = 5.0
MAX_MAILBOX_REQUEST = 4 * 1024 * 1024  # a DELIVER body (1 MiB) once JSON-escaped, with room to spare
# A unix socket path must fit in sockaddr_un (108 octets); longer paths are reached through the directory's fd.
MAX_UNIX_PATH = 100
# How often a worker writes its sessions' activity (last frame, subscriptions) to their rows, in one statement each:
# a write per PING or SUBSCRIBE would cost a pooled connection per device exactly when thousands return at once.
ACTIVITY_FLUSH_EVERY = 30.0
ACTIVITY_BATCH = 1000  # tokens per UPDATE ... WHERE token IN (...)
# Admissions (session row, event, engine contact) a worker runs at once: below the pool size (10 + 20), so the
# web services keep connections too.
ADMISSION_SLOTS = 16
# A new device's expected wait for admission beyond which the dispatcher answers BUSY: it must still be admitted
# well within its patience (10 s from connecting to WELCOME in the simulators), or it gives up and costs two more
# TLS handshakes.
ADMISSION_WAIT_BUSY = 3.0


class HeldSession(Protocol):
    """What the worker needs of a live connection (a :class:`.gateway.GatewayConnection`): the gateway module
    builds on this one, so it is named by its behaviour, not imported."""

    def end(self, code: int, message: str) -> None: ...

    def push(self, subject: str, xml: str) -> bool: ...


def run_dir(settings: Settings) -> Path:
    return settings.data_dir / "run"


def mailbox_path(settings: Settings, pid: int) -> Path:
    """Where worker ``pid`` of this node listens for mailbox requests."""
    return run_dir(settings) / f"worker-{pid}.sock"


@contextlib.contextmanager
def _short_path(path: Path) -> Iterator[str]:
    """A path to ``path`` short enough for ``sockaddr_un`` (through ``/proc/self/fd`` when it is too long)."""
    text = str(path.resolve())
    if len(text) <= MAX_UNIX_PATH:
        yield text
        return
    fd = os.open(path.parent, os.O_PATH | os.O_DIRECTORY)
    try:
        yield f"/proc/self/fd/{fd}/{path.name}"
    finally:
        os.close(fd)


def not_taking_devices(app: Flask) -> tuple[Frame, str] | None:
    """Why this node takes no device session now, for the dispatcher and the gateway ports alike: the frame that
    tells the device so and a close reason, or ``None`` when it takes them.

    An HA standby answers ERROR 503 (a node taking over first holds the device for its lease,
    ``TAKING_OVER_HOLD_SECONDS``); a node short of disk space answers BUSY.
    """
    if not accepting_devices(app, hold=TAKING_OVER_HOLD_SECONDS):
        return refusal(Refuse(503, "node is passive (standby); retry later"), retry_after(app)), "node passive"
    full = disk_low(app)
    if full is not None:
        count_refusal(DISK_LOW)
        return busy(DISK_RETRY_AFTER, f"gateway cannot take devices now: {full.describe()}"), "disk nearly full"
    return None


def close_sessions(rows: Sequence[Any], reason: str) -> None:
    """Mark live session rows closed and tell Prime; part of the caller's transaction."""
    now = utcnow()
    for row in rows:
        changed = db.session.execute(
            update(DeviceSession).where(DeviceSession.id == row.id, DeviceSession.closed_at.is_(None))
            .values(closed_at=now, close_reason=reason[:255])
        ).rowcount
        if changed:
            record_event("device.disconnected", {"device": session_device(row.device_key, row.address, row.port),
                                                  "reason": reason})


def session_device(device_key: str, address: str, port: int) -> dict[str, Any]:
    """The ``device`` object of device.connected / device.disconnected events."""
    return {"id": device_key, "serial": device_key, "pid": "", "udi": "", "protocol": "cns", "address": address,
            "port": port}


class AdmissionQueue:
    """At most ``slots`` admissions run at once in a worker; the others wait their turn, and are counted."""

    def __init__(self, slots: int) -> None:
        from gevent.lock import BoundedSemaphore

        self._slots = BoundedSemaphore(slots)
        self.slots = slots
        self.waiting = 0
        self.seconds_each = 0.05  # running mean of how long an admission holds its slot

    def acquire(self, timeout: float | None = None) -> bool:
        self.waiting += 1
        try:
            return bool(self._slots.acquire(timeout=timeout))
        finally:
            self.waiting -= 1

    def release(self, held: float) -> None:
        """Give the slot back; ``held``: seconds the admission took."""
        self.seconds_each += (held - self.seconds_each) * 0.1
        self._slots.release()

    def expected_wait(self) -> float:
        """Seconds a device arriving now would wait for its turn."""
        return self.waiting * self.seconds_each / self.slots


class CnsWorker:
    """The CNS connections this worker holds, by session token, and its mailbox server."""

    def __init__(self, app: Flask) -> None:
        self.app = app
        self.settings: Settings = gateway_state(app).settings
        self.pid = os.getpid()
        self.connections: dict[str, HeldSession] = {}
        self._mailbox: Any = None
        self._active: set[str] = set()  # tokens with a frame since the last activity flush
        self._subjects: dict[str, list[str]] = {}  # tokens whose subscriptions changed since then
        self._flusher: Any = None
        self.admission_slots: Any = AdmissionQueue(ADMISSION_SLOTS)
        self.admission_wait_busy = ADMISSION_WAIT_BUSY

    # ---- lifecycle ------------------------------------------------------------------------------------------
    def start(self) -> None:
        """Open the mailbox and close the session rows left behind by workers that no longer exist."""
        from gevent.server import StreamServer

        path = mailbox_path(self.settings, self.pid)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.unlink(missing_ok=True)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        with _short_path(path) as short:
            listener.bind(short)
        listener.listen(128)
        listener.setblocking(False)  # gevent's accept loop needs it when the process is not monkey-patched
        self._mailbox = StreamServer(listener, self._serve_mailbox)
        self._mailbox.start()
        import gevent

        self._flusher = gevent.spawn(self._flush_activity_forever)
        try:
            self.sweep_stale_sessions()
        except Exception as exc:  # the database may be busy at start; a later sweep or replacement cleans up
            log.warning("could not sweep stale CNS sessions: %s", exc)

    def stop(self) -> None:
        if self._flusher is not None:
            self._flusher.kill(block=False)
            self._flusher = None
        try:
            self.flush_activity()
        except Exception as exc:  # stopping anyway; the rows keep their older activity
            log.info("could not record CNS session activity at stop: %s", exc)
        if self._mailbox is not None:
            self._mailbox.close()
            self._mailbox = None
        mailbox_path(self.settings, self.pid).unlink(missing_ok=True)

    def sweep_stale_sessions(self) -> None:
        """Close live rows of this node whose worker is gone (crash, restart): they would skew the port counts."""
        with self.app.app_context():
            rows = list(db.session.scalars(select(DeviceSession).where(
                DeviceSession.closed_at.is_(None), DeviceSession.node == self.settings.node_name,
                DeviceSession.protocol == "cns")))
            stale = [r for r in rows if r.worker_pid == self.pid or not mailbox_alive(self.settings, r.worker_pid)]
            if stale:
                close_sessions(stale, "gateway worker ended")
                db.session.commit()
                log.info("closed %d CNS sessions left by ended workers", len(stale))

    # ---- session activity -----------------------------------------------------------------------------------
    def note_activity(self, token: str) -> None:
        """A frame arrived on session ``token``: its row's ``last_frame_at`` is brought up to date at the next flush."""
        if token:
            self._active.add(token)

    def note_subjects(self, token: str, subjects: list[str]) -> None:
        if token:
            self._active.add(token)
            self._subjects[token] = subjects

    def flush_activity(self) -> None:
        """Write the noted activity: one UPDATE for the last-frame times, one executemany for the subscriptions."""
        active, subjects = self._active, self._subjects
        if not active:
            return
        self._active, self._subjects = set(), {}
        try:
            with self.app.app_context():
                tokens = sorted(active)
                now = utcnow()
                for start in range(0, len(tokens), ACTIVITY_BATCH):
                    batch = tokens[start:start + ACTIVITY_BATCH]
                    db.session.execute(update(DeviceSession).where(DeviceSession.token.in_(batch))
                                       .values(last_frame_at=now).execution_options(synchronize_session=False))
                if subjects:
                    table = DeviceSession.__table__
                    db.session.execute(
                        table.update().where(table.c.token == bindparam("t")).values(subjects=bindparam("s")),
                        [{"t": token, "s": value} for token, value in subjects.items()])
                db.session.commit()
        except Exception:
            self._active |= active  # kept for the next flush: activity is a hint, a late one is still true
            self._subjects = {**subjects, **self._subjects}
            raise

    def _flush_activity_forever(self) -> None:
        import gevent

        while True:
            gevent.sleep(ACTIVITY_FLUSH_EVERY)
            try:
                self.flush_activity()
            except Exception as exc:
                log.warning("could not record CNS session activity (%s); trying again in %gs", exc,
                            ACTIVITY_FLUSH_EVERY)

    # ---- local operations -----------------------------------------------------------------------------------
    def end_local(self, token: str, code: int, message: str) -> bool:
        connection = self.connections.get(token)
        if connection is None:
            return False
        connection.end(code, message)
        return True

    def deliver_local(self, token: str, subject: str, xml: str) -> bool:
        connection = self.connections.get(token)
        return connection is not None and connection.push(subject, xml)

    def _serve_mailbox(self, sock: Any, _address: Any) -> None:
        try:
            request = json.loads(_read_line(sock))
            op = request.get("op")
            if op == "deliver":
                ok = self.deliver_local(str(request["token"]), str(request["subject"]), str(request["xml"]))
            elif op == "end":
                ok = self.end_local(str(request["token"]), int(request["code"]), str(request["message"]))
            elif op == "ping":
                ok = True
            else:
                ok = False
            sock.sendall(json.dumps({"ok": ok}).encode() + b"\n")
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.info("mailbox request refused: %s", exc)
        finally:
            sock.close()


def _read_line(sock: Any) -> bytes:
    data = bytearray()
    while not data.endswith(b"\n"):
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
        if len(data) > MAX_MAILBOX_REQUEST:
            raise ValueError("mailbox request too large")
    return bytes(data)


def post(settings: Settings, pid: int, request: dict[str, Any], timeout: float = MAILBOX_TIMEOUT) -> bool | None:
    """Send a request to worker ``pid``'s mailbox: its answer, or ``None`` when that worker is unreachable."""
    path = mailbox_path(settings, pid)
    if not path.exists():
        return None
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            with _short_path(path) as short:
                sock.connect(short)
            sock.sendall(json.dumps(request).encode() + b"\n")
            answer = json.loads(_read_line(sock) or b"null")
    except (OSError, ValueError):
        return None
    return bool(answer and answer.get("ok"))


def mailbox_alive(settings: Settings, pid: int) -> bool:
    return post(settings, pid, {"op": "ping"}, timeout=2.0) is True


def cns_worker(app: Flask) -> CnsWorker:
    """This process's :class:`CnsWorker` for ``app``, created (and its mailbox opened) on first use."""
    state = gateway_state(app)
    worker: CnsWorker | None = state.cns_worker
    if worker is None or worker.pid != os.getpid():
        worker = CnsWorker(app)
        state.cns_worker = worker
        worker.start()
    return worker


def end_session(settings: Settings, worker_pid: int, token: str, code: int, message: str) -> bool:
    """End a live session wherever it is held (this worker or another); ``False`` if its worker is unreachable.

    Needs an app context but no transaction: the caller read ``worker_pid`` and ``token`` of the session row.
    """
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    worker: CnsWorker | None = gateway_state(app).cns_worker
    if worker is not None and worker_pid == worker.pid:
        return worker.end_local(token, code, message)
    return bool(post(settings, worker_pid, {"op": "end", "token": token, "code": code, "message": message}))


def deliver(device_key: str, subject: str, xml: str) -> bool:
    """Send ``xml`` on ``subject`` to the device's live CNS session, whichever worker holds it.

    ``subject`` is the device-side subject (``cisco.mgmt.cns.config.load``) or its bus form with the Device-Id
    suffix. ``True`` once the DELIVER frame was written to the device; ``False`` when the device has no live session
    on this node or did not subscribe to the subject. Needs an application context, with the caller's changes
    committed: the session row is read in a transaction of its own, ended before any worker or device is talked to
    (an open transaction would hold a pooled connection and its snapshot for as long as the mailbox takes).
    """
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    settings = gateway_state(app).settings
    if db.session.new or db.session.dirty or db.session.deleted:
        raise RuntimeError("deliver() ends its read transaction before talking to a worker: commit your changes first")
    row = db.session.scalars(
        select(DeviceSession).where(DeviceSession.device_key == device_key, DeviceSession.closed_at.is_(None),
                                    DeviceSession.node == settings.node_name, DeviceSession.protocol == "cns")
        .order_by(DeviceSession.id.desc()).limit(1)
    ).first()
    if row is not None:
        db.session.expunge(row)  # its values stay as read: nothing reloads it, and so nothing reopens a transaction
    db.session.commit()  # only the read above is in it
    if row is None:
        return False
    worker: CnsWorker | None = gateway_state(app).cns_worker
    if worker is not None and row.worker_pid == worker.pid:
        return worker.deliver_local(row.token, subject, xml)
    answer = post(settings, row.worker_pid, {"op": "deliver", "token": row.token, "subject": subject, "xml": xml})
    if answer is None and not mailbox_alive(settings, row.worker_pid):
        close_sessions([row], "gateway worker ended")
        db.session.commit()
    return bool(answer)

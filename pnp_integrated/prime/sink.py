"""Prime's side of the event queue: consume ``/queue/pnp.gateway.events`` into SQLite, once per event id.

Delivery is at least once (a gateway resends an event whose receipt it did not see; the broker redelivers what was
not acknowledged), so the store keys events by their ``id`` and counts repeats instead of storing them twice. Each
message is acknowledged only after its row is committed.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..destinations import EVENTS_QUEUE
from .client import StompClient, StompClientError
from .stomp import Frame

log = logging.getLogger(__name__)



@dataclass(frozen=True)
class StoredEvent:
    event_id: str
    type: str
    at: str
    gateway: str
    body: dict[str, Any]
    received_at: str
    deliveries: int


class EventStore:
    """Events Prime received, in ``<data_dir>/prime/events.sqlite3``."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS events (seq INTEGER PRIMARY KEY AUTOINCREMENT, event_id TEXT UNIQUE,"
            " type TEXT, at TEXT, gateway TEXT, body TEXT, received_at TEXT, deliveries INTEGER DEFAULT 1)"
        )
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS rejected (seq INTEGER PRIMARY KEY AUTOINCREMENT, reason TEXT, body BLOB,"
            " received_at TEXT)"
        )

    def record(self, body: bytes) -> bool:
        """Store one message body; ``True`` when it is new, ``False`` for a repeat or a malformed body."""
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        try:
            event = json.loads(body)
            if not isinstance(event, dict) or not isinstance(event.get("id"), str) or not event["id"]:
                raise ValueError("no string 'id'")
            cur = self._db.execute(
                "INSERT INTO events (event_id, type, at, gateway, body, received_at) VALUES (?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (event_id) DO UPDATE SET deliveries = deliveries + 1 RETURNING deliveries",
                (event["id"], str(event.get("type", "")), str(event.get("at", "")), str(event.get("gateway", "")),
                 json.dumps(event), now),
            )
        except (ValueError, RecursionError) as exc:  # not JSON, nested too deeply, lone surrogates ...
            reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)[:200]
            self._db.execute("INSERT INTO rejected (reason, body, received_at) VALUES (?, ?, ?)",
                             (f"malformed event: {reason}", body, now))
            return False
        (deliveries,) = cur.fetchone()
        return bool(deliveries == 1)

    def events(self, type_prefix: str = "", limit: int | None = None) -> list[StoredEvent]:
        """Events in arrival order, optionally only those whose type starts with ``type_prefix``."""
        sql = "SELECT event_id, type, at, gateway, body, received_at, deliveries FROM events WHERE type LIKE ?"
        args: list[Any] = [type_prefix.replace("%", "") + "%"]
        sql += " ORDER BY seq"
        rows = self._db.execute(sql, args).fetchall()
        if limit is not None:
            rows = rows[-limit:]
        return [StoredEvent(r[0], r[1], r[2], r[3], json.loads(r[4]), r[5], r[6]) for r in rows]

    def rejected_count(self) -> int:
        return int(self._db.execute("SELECT count(*) FROM rejected").fetchone()[0])

    def close(self) -> None:
        self._db.close()


class EventSink:
    """Consumes the events queue over the node's plain bus port; reconnects forever with capped back-off."""

    def __init__(self, store: EventStore, host: str, port: int, *, login: tuple[str, str],
                 max_backoff: float = 5.0) -> None:
        self.store = store
        self.login = login
        self.host, self.port = host, port
        self.max_backoff = max_backoff
        self._stopping = threading.Event()
        self._client: StompClient | None = None
        self.connected = False

    def run(self) -> None:
        """Consume until :meth:`stop`; broker outages only delay it."""
        delay = 0.2
        while not self._stopping.is_set():
            try:
                self._consume()
                delay = 0.2
            except StompClientError as exc:
                if not self._stopping.is_set():
                    log.info("event sink: %s; retrying in %.1fs", exc, delay)
            except Exception:  # the store failed (disk, lock): the unacknowledged message comes back after a retry
                if not self._stopping.is_set():
                    log.exception("event sink failed; retrying in %.1fs", delay)
            self.connected = False
            self._stopping.wait(delay)
            delay = min(delay * 2, self.max_backoff)

    def _consume(self) -> None:
        client = StompClient(self.host, self.port, heartbeat=(5000, 5000), login=self.login)
        client.connect()
        self._client = client
        try:
            client.subscribe(EVENTS_QUEUE, "prime-sink", ack="client-individual",
                             headers={"activemq.prefetchSize": "500"})
            self.connected = True
            log.info("event sink consuming %s on %s:%s", EVENTS_QUEUE, self.host, self.port)
            idle = 0.0
            while not self._stopping.is_set():
                frame = client.receive(1.0)
                if frame is None:
                    if not client.is_open:  # the broker closed the connection
                        raise StompClientError("broker closed the connection")
                    idle += 1.0
                    if idle >= 4.0:
                        client.heartbeat()  # we promised one every 5 s
                        idle = 0.0
                    continue
                self._handle(client, frame)
        finally:
            self._client = None
            client.close()

    def _handle(self, client: StompClient, frame: Frame) -> None:
        if frame.command == "ERROR":
            raise StompClientError(f"broker error: {frame.get('message')}")
        if frame.command != "MESSAGE":
            return
        if not self.store.record(frame.body):
            log.debug("event sink: repeated or malformed message %s", frame.get("message-id"))
        client.ack(frame)

    def stop(self) -> None:
        self._stopping.set()
        client = self._client
        if client is not None:
            client.close()

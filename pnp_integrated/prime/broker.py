"""The simulated Prime's embedded STOMP 1.2 broker.

Theory of operation
-------------------
Three layers, innermost first:

* :class:`Broker` holds destinations in memory: a queue keeps pending messages and hands each one to exactly one of
  its subscriptions (round robin among those with prefetch room: competing consumers); a topic copies each message
  to every current subscription. A message delivered to an ``ack:client`` or ``ack:client-individual`` subscription
  stays *unacknowledged* until ACK; when its consumer unsubscribes or goes away it goes back to the head of its
  queue marked ``redelivered:true``. NACK redelivers at once, up to ``max_redeliveries`` times, then moves the
  message to ``/queue/ActiveMQ.DLQ`` as ActiveMQ does. ``persistent:true`` queue messages are written to a
  :class:`MessageStore` (SQLite) before the RECEIPT and removed on ACK, so a killed broker loses nothing it confirmed.
* :class:`StompSession` is one client connection's protocol state, sans-IO: ``receive_data(bytes)`` parses frames
  and applies them to the broker; everything to send goes through the ``send`` callable as bytes. A protocol error
  or a broken limit produces an ERROR frame and sets ``closing``. CONNECT must carry a login and passcode the
  ``authenticate`` callable accepts (:mod:`.accounts`); every SEND and SUBSCRIBE is then checked against that
  account's grants.
* :class:`BrokerController` is the thin gevent adapter: a TLS listener on ``broker_port`` (every address, like
  Prime's ActiveMQ) and a plain one on ``127.0.0.1:bus_port``; per connection a reader loop and a writer greenlet
  that also emits heart-beats. ``start()`` returns once both ports are bound and re-raises bind errors; ``stop()``
  stops accepting, lets writers flush, then closes. A client that agreed no heart-beats is closed once it has been
  silent for ``idle_timeout``. With a client CA (:func:`require_client_certificates`) the TLS port also refuses, in
  the handshake, a client without a certificate that chains to it; the login is asked for all the same.

The broker core is single-threaded by design: under gevent every call runs on one hub, so no locks are needed. Only
the passcode check of a CONNECT (scrypt, tens of milliseconds) runs in gevent's thread pool, touching no broker state:
the connection's greenlet waits for it while the hub serves every other connection.
"""

from __future__ import annotations

import itertools
import json
import logging
import socket
import sqlite3
import ssl
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..destinations import DLQ
from .accounts import Account
from .stomp import (
    HEARTBEAT,
    Frame,
    FrameParser,
    Limits,
    StompProtocolError,
    encode_frame,
    encode_heartbeat,
    error_frame,
    make_frame,
    negotiate_heartbeat,
    parse_heartbeat,
)

log = logging.getLogger(__name__)

SERVER_NAME = "pnp-integrated-prime/1.0"
ACK_MODES = ("auto", "client", "client-individual")
VERSIONS = ("1.2", "1.1", "1.0")
# Headers of a SEND that describe the SEND itself, not the message.
_TRANSPORT_HEADERS = frozenset({"receipt", "transaction", "content-length", "destination"})
DEFAULT_PREFETCH = 1000

# (login, passcode, peer host) -> the account, or why the login is refused.
Authenticate = Callable[[str, str, str], "Account | str"]


@dataclass
class Message:
    """A message held by the broker; ``seq`` is its row in the store when persistent."""

    message_id: str
    destination: str
    headers: tuple[tuple[str, str], ...]
    body: bytes
    persistent: bool = False
    redeliveries: int = 0
    seq: int | None = None


@dataclass(eq=False)
class Subscription:
    """One SUBSCRIBE of one session."""

    session: StompSession
    sub_id: str
    destination: str
    ack: str
    prefetch: int
    unacked: OrderedDict[str, Message] = field(default_factory=OrderedDict)

    @property
    def has_room(self) -> bool:
        return self.ack == "auto" or len(self.unacked) < self.prefetch


@dataclass
class _Queue:
    pending: deque[Message] = field(default_factory=deque)
    consumers: list[Subscription] = field(default_factory=list)
    next_consumer: int = 0


class MessageStore:
    """Persistent queue messages in SQLite: written before the RECEIPT, deleted on ACK."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS messages (seq INTEGER PRIMARY KEY AUTOINCREMENT, message_id TEXT,"
            " destination TEXT, headers TEXT, body BLOB, redeliveries INTEGER DEFAULT 0)"
        )

    def add(self, message: Message) -> None:
        cur = self._db.execute(
            "INSERT INTO messages (message_id, destination, headers, body) VALUES (?, ?, ?, ?)",
            (message.message_id, message.destination, json.dumps(message.headers), message.body),
        )
        message.seq = cur.lastrowid

    def remove(self, message: Message) -> None:
        if message.seq is not None:
            self._db.execute("DELETE FROM messages WHERE seq = ?", (message.seq,))

    def move(self, message: Message, destination: str) -> None:
        if message.seq is not None:
            self._db.execute("UPDATE messages SET destination = ? WHERE seq = ?", (destination, message.seq))

    def load(self) -> list[Message]:
        rows = self._db.execute(
            "SELECT seq, message_id, destination, headers, body, redeliveries FROM messages ORDER BY seq"
        ).fetchall()
        return [
            Message(mid, dest, tuple(tuple(h) for h in json.loads(headers)), bytes(body), True, int(red), int(seq))
            for seq, mid, dest, headers, body, red in rows
        ]

    def close(self) -> None:
        self._db.close()


class BrokerError(Exception):
    """A client request the broker refuses; becomes an ERROR frame."""


class Broker:
    """Destinations, subscriptions and delivery; no I/O except the optional message store."""

    def __init__(self, store: MessageStore | None = None, *, node: str = "prime", max_redeliveries: int = 6) -> None:
        self.store = store
        self.max_redeliveries = max_redeliveries
        self._queues: dict[str, _Queue] = {}
        self._topics: dict[str, list[Subscription]] = {}
        self._ids = itertools.count(1)
        self._node = node
        self.sessions: set[StompSession] = set()
        if store is not None:
            for message in store.load():
                self._queue(message.destination).pending.append(message)

    # ---- queries (tests, status) ------------------------------------------------------------------------------
    def depth(self, destination: str) -> int:
        """Messages waiting in a queue (not counting delivered but unacknowledged ones)."""
        queue = self._queues.get(destination)
        return len(queue.pending) if queue else 0

    # ---- operations -------------------------------------------------------------------------------------------
    def send(self, destination: str, headers: Iterable[tuple[str, str]], body: bytes) -> Message:
        """Accept a message; persistent queue messages are stored before this returns."""
        _check_destination(destination)
        kept = tuple((k, v) for k, v in headers if k not in _TRANSPORT_HEADERS)
        persistent = dict(kept).get("persistent", "false").lower() == "true"
        message = Message(f"ID:{self._node}-{next(self._ids)}", destination, kept, body, persistent)
        if destination.startswith("/topic/"):
            for sub in list(self._topics.get(destination, ())):
                self._deliver(sub, message)
            return message
        if persistent and self.store is not None:
            self.store.add(message)
        self._queue(destination).pending.append(message)
        self._dispatch(destination)
        return message

    def subscribe(self, sub: Subscription) -> None:
        _check_destination(sub.destination)
        if sub.destination.startswith("/topic/"):
            self._topics.setdefault(sub.destination, []).append(sub)
        else:
            self._queue(sub.destination).consumers.append(sub)
            self._dispatch(sub.destination)

    def unsubscribe(self, sub: Subscription) -> None:
        """Remove a subscription; its unacknowledged queue messages go back to the head of the queue."""
        if sub.destination.startswith("/topic/"):
            subs = self._topics.get(sub.destination, [])
            if sub in subs:
                subs.remove(sub)
            sub.unacked.clear()
            return
        queue = self._queue(sub.destination)
        if sub in queue.consumers:
            queue.consumers.remove(sub)
        returned = list(sub.unacked.values())
        sub.unacked.clear()
        for message in reversed(returned):
            message.redeliveries += 1
            queue.pending.appendleft(message)
        if returned:
            self._dispatch(sub.destination)

    def ack(self, sub: Subscription, ack_id: str) -> None:
        """Acknowledge one message (client-individual) or it and every earlier one (client)."""
        if ack_id not in sub.unacked:
            raise BrokerError(f"ACK for a message that is not awaiting acknowledgement: {ack_id}")
        for message in self._take(sub, ack_id):
            if self.store is not None and message.persistent:
                self.store.remove(message)
        self._dispatch(sub.destination)

    def nack(self, sub: Subscription, ack_id: str) -> None:
        """Refuse a message: redeliver it, or after ``max_redeliveries`` move it to the dead letter queue."""
        if ack_id not in sub.unacked:
            raise BrokerError(f"NACK for a message that is not awaiting acknowledgement: {ack_id}")
        if sub.destination.startswith("/topic/"):
            self._take(sub, ack_id)
            return
        queue = self._queue(sub.destination)
        for message in reversed(self._take(sub, ack_id)):
            message.redeliveries += 1
            if message.redeliveries > self.max_redeliveries:
                message.destination = DLQ
                if self.store is not None and message.persistent:
                    self.store.move(message, DLQ)
                self._queue(DLQ).pending.append(message)
                self._dispatch(DLQ)
            else:
                queue.pending.appendleft(message)
        self._dispatch(sub.destination)

    def session_closed(self, session: StompSession) -> None:
        for sub in list(session.subscriptions.values()):
            self.unsubscribe(sub)
        session.subscriptions.clear()
        self.sessions.discard(session)

    # ---- internals --------------------------------------------------------------------------------------------
    def _queue(self, name: str) -> _Queue:
        queue = self._queues.get(name)
        if queue is None:
            queue = self._queues[name] = _Queue()
        return queue

    def _take(self, sub: Subscription, ack_id: str) -> list[Message]:
        if sub.ack == "client":
            taken = []
            while sub.unacked:
                key, message = sub.unacked.popitem(last=False)
                taken.append(message)
                if key == ack_id:
                    break
            return taken
        return [sub.unacked.pop(ack_id)]

    def _dispatch(self, destination: str) -> None:
        queue = self._queues.get(destination)
        if queue is None:
            return
        while queue.pending and queue.consumers:
            count = len(queue.consumers)
            for offset in range(count):
                sub = queue.consumers[(queue.next_consumer + offset) % count]
                if sub.has_room:
                    queue.next_consumer = (queue.next_consumer + offset + 1) % count
                    break
            else:
                return  # every consumer is at its prefetch limit
            message = queue.pending.popleft()
            self._deliver(sub, message)
            if sub.ack == "auto" and self.store is not None and message.persistent:
                self.store.remove(message)

    def _deliver(self, sub: Subscription, message: Message) -> None:
        headers = [
            ("destination", message.destination),
            ("message-id", message.message_id),
            ("subscription", sub.sub_id),
        ]
        if sub.ack != "auto":
            ack_id = f"{message.message_id}:{sub.session.session_id}:{next(self._ids)}"
            sub.unacked[ack_id] = message
            headers.append(("ack", ack_id))
        if message.redeliveries:
            headers.append(("redelivered", "true"))
        headers += [(k, v) for k, v in message.headers if k not in ("message-id", "subscription", "ack")]
        sub.session.deliver(Frame("MESSAGE", tuple(headers), message.body))


def _check_destination(destination: str) -> None:
    if not destination.startswith(("/queue/", "/topic/")) or len(destination) <= len("/queue/"):
        raise BrokerError(f"destination {destination[:100]!r} must be /queue/<name> or /topic/<name>")


class StompSession:
    """One client connection's protocol state (sans-IO): bytes in via :meth:`receive_data`, bytes out via ``send``."""

    _ids = itertools.count(1)

    # ``heartbeat``: what the broker offers (can send every, wants every) in ms; the client's header widens both.
    def __init__(self, broker: Broker, send: Callable[[bytes], None], *, authenticate: Authenticate,
                 peer: str = "", limits: Limits | None = None, heartbeat: tuple[int, int] = (1000, 1000)) -> None:
        self.broker = broker
        self.peer = peer
        self._authenticate = authenticate
        self.account: Account | None = None
        self.session_id = f"session-{next(self._ids)}"
        self._send = send
        self._parser = FrameParser(limits or Limits())
        self._heartbeat_offer = heartbeat
        self.connected = False
        self.closing = False
        self.version = "1.2"
        self.heartbeat: tuple[int, int] = (0, 0)  # (send every ms, expect within ms), negotiated at CONNECT
        self.subscriptions: dict[str, Subscription] = {}
        self._transactions: dict[str, list[Frame]] = {}
        broker.sessions.add(self)

    # ---- input ------------------------------------------------------------------------------------------------
    def receive_data(self, data: bytes) -> None:
        """Parse and apply what the client sent; on a protocol error reply ERROR and set ``closing``."""
        if self.closing:
            return
        self._parser.receive_data(data)
        try:
            while not self.closing:
                event = self._parser.next_event()
                if event is None:
                    break
                if event is HEARTBEAT:
                    continue
                assert isinstance(event, Frame)
                self._handle(event)
        except StompProtocolError as exc:
            self._fail(str(exc), "the frame broke the STOMP 1.2 protocol or a broker limit")

    def _handle(self, frame: Frame) -> None:
        receipt = frame.get("receipt")
        try:
            if not self.connected and frame.command not in ("CONNECT", "STOMP"):
                raise BrokerError(f"{frame.command} before CONNECT")
            tx = frame.get("transaction")
            if tx is not None and frame.command in ("SEND", "ACK", "NACK"):
                if tx not in self._transactions:
                    raise BrokerError(f"transaction {tx!r} was not begun")
                self._transactions[tx].append(frame)
            else:
                handler = getattr(self, f"_on_{frame.command.lower()}", None)
                if handler is None:
                    raise BrokerError(f"{frame.command} is not a client frame")
                handler(frame)
        except BrokerError as exc:
            self._fail(str(exc), f"frame: {frame.command}", receipt)
            return
        if receipt is not None and frame.command not in ("CONNECT", "STOMP"):
            self._emit(make_frame("RECEIPT", {"receipt-id": receipt}))
        if frame.command == "DISCONNECT":
            self.closing = True

    # ---- frame handlers (dispatch by name) -------------------------------------------------------------------
    def _on_connect(self, frame: Frame) -> None:
        if self.connected:
            raise BrokerError("already connected")
        accepted = (frame.get("accept-version") or "1.0").split(",")
        common = [v for v in VERSIONS if v in accepted]
        if not common:
            raise BrokerError(f"supported protocol versions are {','.join(VERSIONS)}")
        self.version = common[0]
        try:
            peer_can, peer_wants = parse_heartbeat(frame.get("heart-beat"))
        except StompProtocolError as exc:
            raise BrokerError(str(exc)) from exc
        verdict = self._authenticate(frame.get("login") or "", frame.get("passcode") or "",
                                     self.peer.rsplit(":", 1)[0])
        if not isinstance(verdict, Account):
            raise BrokerError(verdict)
        self.account = verdict
        we_can, we_want = self._heartbeat_offer
        self.heartbeat = negotiate_heartbeat(peer_can, peer_wants, we_can, we_want)
        self.connected = True
        self._emit(make_frame("CONNECTED", {
            "version": self.version,
            "server": SERVER_NAME,
            "session": self.session_id,
            "heart-beat": f"{we_can},{we_want}",
        }))

    _on_stomp = _on_connect

    def _on_send(self, frame: Frame) -> None:
        destination = _required(frame, "destination")
        assert self.account is not None  # _handle refuses every frame before CONNECT
        if not self.account.may_send(destination):
            raise BrokerError(f"{self.account.login!r} may not send to {destination[:100]}")
        self.broker.send(destination, frame.headers, frame.body)

    def _on_subscribe(self, frame: Frame) -> None:
        destination = _required(frame, "destination")
        assert self.account is not None
        if not self.account.may_receive(destination):
            raise BrokerError(f"{self.account.login!r} may not subscribe to {destination[:100]}")
        sub_id = frame.get("id") or (destination if self.version == "1.0" else None)
        if sub_id is None:
            raise BrokerError("SUBSCRIBE needs an id header")
        if sub_id in self.subscriptions:
            raise BrokerError(f"subscription id {sub_id!r} is already in use")
        ack = frame.get("ack", "auto") or "auto"
        if ack not in ACK_MODES:
            raise BrokerError(f"ack mode {ack!r} is not one of {', '.join(ACK_MODES)}")
        prefetch_text = frame.get("activemq.prefetchSize") or str(DEFAULT_PREFETCH)
        if not prefetch_text.isdigit() or int(prefetch_text) < 1:
            raise BrokerError(f"activemq.prefetchSize {prefetch_text[:20]!r} must be a positive number")
        sub = Subscription(self, sub_id, destination, ack, int(prefetch_text))
        self.broker.subscribe(sub)  # may raise before the subscription is recorded
        self.subscriptions[sub_id] = sub

    def _on_unsubscribe(self, frame: Frame) -> None:
        sub_id = frame.get("id") or frame.get("destination")
        sub = self.subscriptions.pop(sub_id or "", None)
        if sub is None:
            raise BrokerError(f"no subscription with id {sub_id!r}")
        self.broker.unsubscribe(sub)

    def _find_ack(self, frame: Frame) -> tuple[Subscription, str]:
        ack_id = frame.get("id") if self.version == "1.2" else frame.get("message-id")
        ack_id = ack_id or frame.get("id") or frame.get("message-id")
        if not ack_id:
            raise BrokerError(f"{frame.command} needs an id header")
        for sub in self.subscriptions.values():
            if ack_id in sub.unacked:
                return sub, ack_id
            if self.version != "1.2":  # 1.0/1.1 acknowledge by message-id
                for key, message in sub.unacked.items():
                    if message.message_id == ack_id:
                        return sub, key
        raise BrokerError(f"{frame.command} for a message that is not awaiting acknowledgement: {ack_id}")

    def _on_ack(self, frame: Frame) -> None:
        sub, ack_id = self._find_ack(frame)
        self.broker.ack(sub, ack_id)

    def _on_nack(self, frame: Frame) -> None:
        sub, ack_id = self._find_ack(frame)
        self.broker.nack(sub, ack_id)

    def _on_begin(self, frame: Frame) -> None:
        tx = _required(frame, "transaction")
        if tx in self._transactions:
            raise BrokerError(f"transaction {tx!r} is already open")
        self._transactions[tx] = []

    def _on_commit(self, frame: Frame) -> None:
        tx = _required(frame, "transaction")
        if tx not in self._transactions:
            raise BrokerError(f"transaction {tx!r} was not begun")
        for queued in self._transactions.pop(tx):
            getattr(self, f"_on_{queued.command.lower()}")(queued)

    def _on_abort(self, frame: Frame) -> None:
        tx = _required(frame, "transaction")
        if self._transactions.pop(tx, None) is None:
            raise BrokerError(f"transaction {tx!r} was not begun")

    def _on_disconnect(self, _frame: Frame) -> None:
        pass  # the receipt (if asked) is sent by _handle, then the session closes

    # ---- output -----------------------------------------------------------------------------------------------
    def deliver(self, frame: Frame) -> None:
        """Called by the broker to hand this session a MESSAGE."""
        self._emit(frame)

    def _emit(self, frame: Frame) -> None:
        self._send(encode_frame(frame))

    def _fail(self, message: str, detail: str, receipt: str | None = None) -> None:
        log.info("STOMP client %s: %s", self.peer or self.session_id, message)
        self._emit(error_frame(message, detail, receipt))
        self.closing = True

    def close(self) -> None:
        """The connection is gone: return unacknowledged messages to their queues."""
        self.closing = True
        self.broker.session_closed(self)


def _required(frame: Frame, name: str) -> str:
    value = frame.get(name)
    if not value:
        raise BrokerError(f"{frame.command} needs a {name} header")
    return value


# ---- gevent adapter ---------------------------------------------------------------------------------------------


@dataclass
class BrokerPorts:
    """Where the broker listens: TLS for Prime's clients, plain on loopback for the node's own bus."""

    tls_host: str
    tls_port: int
    plain_host: str
    plain_port: int


def require_client_certificates(context: ssl.SSLContext, ca_file: str) -> ssl.SSLContext:
    """Make ``context`` refuse a TLS client without a certificate issued by a CA of ``ca_file`` (PEM bundle)."""
    context.load_verify_locations(cafile=ca_file)
    context.verify_mode = ssl.CERT_REQUIRED
    return context


class BrokerController:
    """Runs a :class:`Broker` on gevent sockets; ``start`` returns once bound, ``stop`` drains."""

    def __init__(self, broker: Broker, ports: BrokerPorts, *, context: ssl.SSLContext | None,
                 authenticate: Authenticate, handshake_timeout: float = 10.0, connect_timeout: float = 10.0,
                 limits: Limits | None = None, heartbeat: tuple[int, int] = (1000, 1000),
                 max_connections: int = 1000, idle_timeout: float = 120.0) -> None:
        self.broker = broker
        self._authenticate = authenticate
        self._idle_timeout = idle_timeout
        self.ports = ports
        self._context = context
        self._handshake_timeout = handshake_timeout
        self._connect_timeout = connect_timeout
        self._limits = limits or Limits()
        self._heartbeat = heartbeat
        self._max_connections = max_connections
        self._servers: list[Any] = []
        self._pool: Any = None
        self._outgoing: dict[StompSession, Any] = {}

    def start(self) -> None:
        """Bind both listeners and start accepting; a bind error is raised after closing what was opened."""
        from gevent.pool import Pool
        from gevent.server import StreamServer

        from ..listeners import bind_socket, tls_handshake

        self._pool = Pool(self._max_connections)
        try:
            if self._context is not None:
                tls_sock = bind_socket(self.ports.tls_host, self.ports.tls_port, reuse_port=False)
                context, timeout, port = self._context, self._handshake_timeout, self.ports.tls_port

                def handle_tls(raw: Any, address: tuple[str, int]) -> None:
                    tls = tls_handshake(raw, address, context, timeout, port)
                    if tls is not None:
                        self._serve(tls, address)

                self._servers.append(StreamServer(tls_sock, handle_tls, spawn=self._pool))
                self._servers[-1].start()
            plain_sock = bind_socket(self.ports.plain_host, self.ports.plain_port, reuse_port=False)
            self._servers.append(StreamServer(plain_sock, self._serve, spawn=self._pool))
            self._servers[-1].start()
        except BaseException:
            self.stop(0)
            raise
        log.info("STOMP broker listening on %s:%s (TLS) and %s:%s (plain)", self.ports.tls_host,
                 self.ports.tls_port, self.ports.plain_host, self.ports.plain_port)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop accepting, let each connection flush what it owes, then close every connection."""
        for server in self._servers:
            server.close()
        self._servers.clear()
        for session, outgoing in list(self._outgoing.items()):
            session.closing = True
            outgoing.put(None)  # after what is already queued: the writer flushes, then shuts the socket
        if self._pool is not None:
            if timeout > 0:
                self._pool.join(timeout=timeout)
            self._pool.kill(block=True, timeout=1)

    @property
    def connections(self) -> int:
        return len(self._pool) if self._pool is not None else 0

    def _serve(self, sock: Any, address: tuple[str, int]) -> None:
        import gevent
        from gevent.queue import Queue

        outgoing: Queue[bytes | None] = Queue()
        peer = f"{address[0]}:{address[1]}"
        session = StompSession(self.broker, outgoing.put, authenticate=self._authenticate, peer=peer,
                               limits=self._limits, heartbeat=self._heartbeat)
        writer = gevent.spawn(self._write_loop, sock, outgoing, session)
        self._outgoing[session] = outgoing
        try:
            self._read_loop(sock, session)
        finally:
            self._outgoing.pop(session, None)
            session.close()
            outgoing.put(None)
            writer.join(timeout=2)
            writer.kill(block=False)
            _close(sock)

    def _read_loop(self, sock: Any, session: StompSession) -> None:
        import gevent

        while not session.closing:
            if not session.connected:
                limit: float | None = self._connect_timeout
            else:
                expect = session.heartbeat[1]
                # Spec 1.2 allows a margin for timing inaccuracy; 2.5x matches what stomp.py clients use.
                limit = expect * 2.5 / 1000 if expect else self._idle_timeout
            try:
                with gevent.Timeout(limit):
                    data = sock.recv(65536)
            except gevent.Timeout:
                why = ("no CONNECT frame" if not session.connected else
                       "missed heart-beats" if session.heartbeat[1] else "silent, with no heart-beats agreed,")
                log.info("STOMP client %s: closing, %s within %.1fs", session.peer, why, limit or 0)
                return
            except (OSError, ssl.SSLError):
                return
            if not data:
                return
            session.receive_data(data)

    def _write_loop(self, sock: Any, outgoing: Any, session: StompSession) -> None:
        from gevent.queue import Empty

        while True:
            interval = session.heartbeat[0] / 1000 if session.connected and session.heartbeat[0] else None
            try:
                item = outgoing.get(timeout=interval)
            except Empty:
                item = encode_heartbeat()
            if item is None:
                if session.closing:
                    _shutdown(sock)
                return
            chunks = [item]
            while not outgoing.empty() and len(chunks) < 256:  # batch bursts into fewer TLS records
                more = outgoing.get_nowait()
                if more is None:
                    outgoing.put(None)
                    break
                chunks.append(more)
            try:
                sock.sendall(b"".join(chunks))
            except (OSError, ssl.SSLError):
                session.closing = True
                _shutdown(sock)
                return
            if session.closing and outgoing.empty():
                _shutdown(sock)  # wakes the reader: the ERROR / RECEIPT has been flushed
                return


def _shutdown(sock: Any) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


def _close(sock: Any) -> None:
    try:
        sock.close()
    except OSError:
        pass

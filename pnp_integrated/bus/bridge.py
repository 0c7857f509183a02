"""The bridge to Prime's broker (stomp.py 8.2.0 over TLS), run by the leader only.

It logs in with the gateway's broker credentials and, when ``PNP_BROKER_CLIENT_CERT_FILE`` is set, presents that
client certificate in the TLS handshake too (a broker may ask for both). A handshake the broker ends is explained
from one TLS probe of its own: stomp.py only reports a closed connection.

One connection at a time, and a reconnect loop of our own that never gives up (stomp.py's stops after three
attempts), with capped exponential back-off. While connected it

* sends unsent outbox rows in id order as persistent JSON messages to ``/queue/pnp.gateway.events``, each with a
  receipt, and marks a row sent only once its RECEIPT arrived (delivery is at least once; Prime de-duplicates by id).
  A batch is pipelined (every SEND goes out, then the RECEIPTs are awaited together) and settled in one commit; it
  is looked for when :meth:`PrimeBridge.wake` says events were committed (the leader's worker does at each commit
  that wrote some) and every ``poll_interval`` (the other workers' events);
* consumes ``/queue/pnp.gateway.commands`` with ``ack:client-individual``, applies each command in a transaction
  and only then ACKs it (a crash before the ACK means a redelivery, which the command id turns into a no-op).

Database work happens on the bridge's own thread (a greenlet under gunicorn's gevent workers), one app context per
unit of work. stomp.py's receiver thread only queues frames for it.
"""

from __future__ import annotations

import itertools
import logging
import queue
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import stomp
from flask import Flask
from sqlalchemy.exc import InterfaceError, OperationalError

from .. import outbox
from ..context import gateway_state
from ..credentials import CredentialsMissing, gateway_credentials
from ..destinations import COMMANDS_QUEUE, EVENTS_QUEUE
from ..healthcheck import ask_health
from ..tls import trust_path
from .commands import apply_command
from .state import BridgeState, write_state

log = logging.getLogger(__name__)

SUBSCRIPTION_ID = "gateway-commands"
# How long a healthy broker gets to answer DISCONNECT before the socket is closed anyway.
DISCONNECT_GRACE_SECONDS = 2.0
# TLS alerts a broker sends when it wants a client certificate it did not get, or does not accept the one it got.
_NO_CERTIFICATE = ("CERTIFICATE_REQUIRED", "BAD_CERTIFICATE", "HANDSHAKE_FAILURE")
_CERTIFICATE_REFUSED = ("UNKNOWN_CA", "CERTIFICATE_UNKNOWN", "BAD_CERTIFICATE", "CERTIFICATE_EXPIRED",
                        "CERTIFICATE_REVOKED", "UNSUPPORTED_CERTIFICATE", "DECRYPT_ERROR", "ACCESS_DENIED")


class BridgeDown(Exception):
    """The connection failed or was lost; the message says how."""


@dataclass(frozen=True)
class BridgeTarget:
    """Where Prime's broker is and what to trust; ``role`` is primary or secondary for a Prime pair with two
    addresses ("" for one address, which may be Prime's VIP)."""

    host: str
    port: int
    ca_file: Path
    role: str = ""

    @property
    def peer(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def default_targets(app: Flask) -> list[BridgeTarget]:
    """Prime's broker: the co-located node's VIP (integrated), or Prime's address, or its primary and secondary
    (standalone, Prime HA with different addresses); trust what ``pnpp prime trust`` stored, else the node's own CA."""
    state = gateway_state(app)
    settings = state.settings
    trusted = trust_path(settings)
    ca = trusted if trusted.exists() else state.certs.ca
    addresses = settings.prime_addresses
    roles = ("primary", "secondary") if len(addresses) > 1 else ("",)
    return [BridgeTarget(host, settings.broker_port, ca, role) for host, role in zip(addresses, roles, strict=False)]


def default_target(app: Flask) -> BridgeTarget:
    """The first of :func:`default_targets` (Prime's primary)."""
    return default_targets(app)[0]


class _Listener(stomp.ConnectionListener):  # type: ignore[misc]
    """Runs on stomp.py's receiver thread: records what arrived and wakes the bridge."""

    def __init__(self, bridge: PrimeBridge) -> None:
        self.bridge = bridge
        # Set once its connection is given up: a late callback of that connection's receiver thread must not touch
        # the next connection's state (a late on_disconnected would end a healthy new session).
        self.retired = False

    def on_connected(self, frame: Any) -> None:
        if self.retired:
            return
        self.bridge._connected.set()
        self.bridge._wake.set()

    def on_receipt(self, frame: Any) -> None:
        if self.retired:
            return
        bridge = self.bridge
        with bridge._receipt_arrived:
            receipt = frame.headers.get("receipt-id", "")
            bridge._receipts.add(receipt)
            bridge._awaited.discard(receipt)
            if not bridge._awaited:  # the whole batch is confirmed: one wake-up for it, not one per RECEIPT
                bridge._receipt_arrived.notify_all()

    def on_message(self, frame: Any) -> None:
        if self.retired:
            return  # not acknowledged: the broker delivers it again on the next connection
        self.bridge._commands.put((frame.headers.get("ack", ""), frame.body))
        self.bridge._wake.set()

    def on_error(self, frame: Any) -> None:
        if self.retired:
            return
        self.bridge._error = str(frame.headers.get("message", "ERROR frame"))
        self.bridge._wake.set()

    def on_disconnected(self) -> None:
        if self.retired:
            return
        self.bridge._lost.set()
        self.bridge._wake.set()
        with self.bridge._receipt_arrived:
            self.bridge._receipt_arrived.notify_all()


class PrimeBridge:
    """Keeps one STOMP connection to Prime and moves events out and commands in; :meth:`run` until :meth:`stop`."""

    def __init__(self, app: Flask, target: BridgeTarget | list[BridgeTarget] | None = None, *, holder: str = "",
                 is_leader: Callable[[], bool] = lambda: True, batch_size: int = 100,
                 receipt_timeout: float = 10.0, connect_timeout: float = 10.0, poll_interval: float = 0.5,
                 max_backoff: float = 30.0, heartbeats: tuple[int, int] = (10000, 10000), term: int = 0,
                 health_interval: float = 5.0) -> None:
        self.app = app
        self.targets = [target] if isinstance(target, BridgeTarget) else list(target or default_targets(app))
        self.target = self.targets[0]  # the broker connected to, or tried next
        self.health_interval = health_interval
        self.holder = holder
        self.is_leader = is_leader
        self.batch_size = batch_size
        self.receipt_timeout = receipt_timeout
        self.connect_timeout = connect_timeout
        self.poll_interval = poll_interval
        self.max_backoff = max_backoff
        self.heartbeats = heartbeats
        self.term = term  # the leader lease's term this bridge runs for: its status writes belong to it
        self.connections = 0  # successful connections since start
        self._stopping = threading.Event()
        self._wake = threading.Event()
        self._connected = threading.Event()
        self._lost = threading.Event()
        self._receipt_arrived = threading.Condition()
        self._receipts: set[str] = set()  # RECEIPTs arrived and not yet taken into account
        self._awaited: set[str] = set()  # RECEIPTs of the batch in flight still missing
        self._commands: queue.Queue[tuple[str, str]] = queue.Queue()
        self._error = ""
        self._receipt_ids = itertools.count(1)
        self._conn: Any = None
        self._listener: _Listener | None = None
        self._was_up = False

    # ---- lifecycle ----------------------------------------------------------------------------------------------
    def run(self) -> None:
        """Connect, work, reconnect after failures with capped back-off, until :meth:`stop`."""
        delay = 0.5
        while not self._stopping.is_set():
            try:
                self._session()
            except BridgeDown as exc:
                if not self._stopping.is_set():
                    log.warning("Prime broker %s: %s; reconnecting in %.1fs", self.target.peer, exc, delay)
                    self._publish(False, str(exc))
            except Exception as exc:  # a bug must not end the bridge for good: log it, then retry
                log.exception("Prime bridge failed unexpectedly")
                self._publish(False, f"internal error: {exc}")
            finally:
                self._disconnect()
            if self._was_up:
                delay = 0.5  # the broker was reachable: start the back-off again
            if self._stopping.wait(delay):
                break
            delay = min(delay * 2, self.max_backoff)
        self._publish(False, "bridge stopped")

    def wake(self) -> None:
        """Look for unsent events now, not at the next poll: a transaction just committed some."""
        self._wake.set()

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()
        with self._receipt_arrived:
            self._receipt_arrived.notify_all()

    @property
    def connected(self) -> bool:
        return self._conn is not None and self._connected.is_set() and not self._lost.is_set()

    # ---- one connection -----------------------------------------------------------------------------------------
    def _session(self) -> None:
        self._was_up = False
        self.target = self._choose_target()
        self._connect()
        self._was_up = True
        self._publish(True, "")
        log.info("connected to Prime broker %s (TLS%s)", self.target.peer,
                 f", Prime's {self.target.role}" if self.target.role else "")
        checked = time.monotonic()
        while not self._stopping.is_set():
            # Cleared before looking at anything: what happens from now on (a commit, a loss) ends the wait at once.
            self._wake.clear()
            if self._lost.is_set():
                raise BridgeDown(self._error or "connection lost")
            if not self.is_leader():
                raise BridgeDown("this worker no longer holds the leader lease")
            if len(self.targets) > 1 and time.monotonic() - checked >= self.health_interval:
                checked = time.monotonic()
                self._check_still_active()
            worked = self._apply_commands()
            worked = self._send_events() or worked  # after a batch, look again: more may have come meanwhile
            if not worked:
                self._wake.wait(self.poll_interval)

    # ---- which Prime -------------------------------------------------------------------------------------------
    def _state_of(self, target: BridgeTarget) -> str:
        """What ``target``'s health monitor says (active, standby), "" when it does not answer."""
        settings = gateway_state(self.app).settings
        health = ask_health(target.host, settings.health_port, timeout=2.0, ca_file=str(target.ca_file))
        return str(health.get("state", "")) if health else ""

    def _choose_target(self) -> BridgeTarget:
        """The Prime server to connect to: the one whose health monitor says it is active, primary first; when none
        says so, the next one after the one tried last (a failed primary must not be retried for ever)."""
        if len(self.targets) == 1:
            return self.targets[0]
        for target in self.targets:
            if self._state_of(target) == "active":
                return target
        if self._was_up:
            return self.target
        following = (self.targets.index(self.target) + 1) % len(self.targets)
        return self.targets[following]

    def _check_still_active(self) -> None:
        """Leave a Prime server that stepped down (failback, a healed partition) or stopped answering (a crash the
        connection has not noticed yet: heart-beats take up to 25 s) for the one now active; the outbox keeps every
        event not yet receipted, so nothing is lost by the move."""
        if self._state_of(self.target) == "active":
            return
        for other in self.targets:
            if other is not self.target and self._state_of(other) == "active":
                raise BridgeDown(f"Prime's {self.target.role or 'server'} {self.target.host} is no longer active; "
                                 f"{other.role or 'server'} {other.host} is")

    def _connect(self) -> None:
        settings = gateway_state(self.app).settings
        try:
            credentials = gateway_credentials(settings)
        except CredentialsMissing as exc:
            raise BridgeDown(str(exc)) from exc
        host_port = (self.target.host, self.target.port)
        conn = stomp.Connection12(
            [host_port],
            # Off: with hostname checks on, connecting to another name than the configured one would fail them.
            prefer_localhost=False,
            try_loopback_connect=False,
            reconnect_attempts_max=1,  # the retry loop is ours (run)
            heartbeats=self.heartbeats,
            heart_beat_receive_scale=2.5,
            timeout=self.connect_timeout,
        )
        # The client certificate, when configured, is presented beside the login (validated at start).
        conn.set_ssl(for_hosts=[host_port], ca_certs=str(self.target.ca_file),
                     cert_file=settings.broker_client_cert_file or None,
                     key_file=settings.broker_client_key_file or None)
        self._listener = _Listener(self)
        conn.set_listener("bridge", self._listener)
        self._connected.clear()
        self._lost.clear()
        self._error = ""
        self._receipts.clear()  # late ones of a former connection
        self._conn = conn
        try:
            conn.connect(credentials.login, credentials.passcode, wait=False,
                         headers={"client-id": self.holder} if self.holder else None)
        except (stomp.exception.ConnectFailedException, stomp.exception.NotConnectedException) as exc:
            # NotConnected: the broker closed the socket before CONNECT went out (a refused client certificate).
            raise BridgeDown(self._certificate_refusal(settings) or
                             f"cannot connect to {self.target.peer}: {exc or 'refused, unreachable or TLS failed'}") \
                from exc
        except OSError as exc:
            raise BridgeDown(self._certificate_refusal(settings) or f"cannot connect to {self.target.peer}: {exc}") \
                from exc
        if not self._await_connected() or self._lost.is_set():
            if self._error.startswith("login refused"):
                raise BridgeDown(f"Prime's broker refused the gateway's login {credentials.login!r} ({self._error}): "
                                 "ask Prime's administrator for the gateway's passcode and store it with "
                                 "`pnpp prime trust --login`")
            if self._error:
                raise BridgeDown(self._error)
            # Closed without an ERROR frame: with TLS 1.3 a refused client certificate shows only here.
            raise BridgeDown(self._certificate_refusal(settings) or
                             f"no CONNECTED from {self.target.peer} within {self.connect_timeout:g}s")
        sock = getattr(conn.transport, "socket", None)
        if sock is not None:
            sock.settimeout(None)  # the connect timeout must not end an idle but healthy connection
        self.connections += 1
        conn.subscribe(COMMANDS_QUEUE, id=SUBSCRIPTION_ID, ack="client-individual",
                       headers={"activemq.prefetchSize": "10"})

    def _await_connected(self) -> bool:
        """Wait for CONNECTED, but no longer than the connection lives: a closed one will not answer."""
        deadline = time.monotonic() + self.connect_timeout
        while not self._connected.is_set() and not self._lost.is_set() and not self._stopping.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self._wake.wait(remaining)
            self._wake.clear()
        return self._connected.is_set()

    def _certificate_refusal(self, settings: Any) -> str:
        """Why the broker ends the TLS handshake over the client certificate ("" for any other outcome).

        One handshake of our own with what stomp.py presents, then a short read: with TLS 1.3 the broker judges the
        client's certificate after the client's side of the handshake is done, so its alert comes with the first read.
        """
        cert, key = settings.broker_client_cert_file, settings.broker_client_key_file
        context = ssl.create_default_context(cafile=str(self.target.ca_file))
        if cert:
            context.load_cert_chain(cert, key)
        try:
            with socket.create_connection((self.target.host, self.target.port), timeout=self.connect_timeout) as raw, \
                    context.wrap_socket(raw, server_hostname=self.target.host) as tls:
                tls.settimeout(min(self.connect_timeout, 1.0))
                tls.recv(1)
        except ssl.SSLError as exc:
            reason = str(exc.reason or exc)
        except OSError:  # unreachable, or no alert before the time was up: not a certificate matter
            return ""
        else:
            return ""
        if not cert and any(alert in reason for alert in _NO_CERTIFICATE):
            return (f"Prime's broker {self.target.peer} ended the TLS handshake ({reason}): it asks for a client "
                    "certificate and the gateway presents none; set PNP_BROKER_CLIENT_CERT_FILE and "
                    "PNP_BROKER_CLIENT_KEY_FILE to the certificate Prime's administrator issued for the gateway and "
                    "its key")
        if cert and any(alert in reason for alert in _CERTIFICATE_REFUSED):
            return (f"Prime's broker {self.target.peer} refused the gateway's client certificate {cert} ({reason}): "
                    "PNP_BROKER_CLIENT_CERT_FILE must hold a valid certificate issued by a CA that Prime's broker "
                    "trusts for clients")
        return ""

    def _disconnect(self) -> None:
        """End the connection without ever blocking on the broker: a hung or frozen server answers neither the
        DISCONNECT nor the TLS close, and stomp.py's own shutdown waits for both without a time limit."""
        conn, self._conn = self._conn, None
        if conn is None:
            return
        transport = conn.transport
        sock = getattr(transport, "socket", None)
        try:
            if conn.is_connected() and not self._lost.is_set():
                conn.disconnect()  # a healthy broker answers at once and closes its side
                self._lost.wait(DISCONNECT_GRACE_SECONDS)
        except Exception:  # already broken: nothing more to close cleanly
            pass
        if self._listener is not None:
            self._listener.retired = True
        transport.running = False
        if sock is not None:
            try:
                # The TCP socket itself, not the TLS layer: no close_notify to wait for. The receiver thread's read
                # fails at once and the thread ends.
                socket.socket.shutdown(sock, socket.SHUT_RDWR)
            except OSError:
                pass
            try:
                sock.close()
            except OSError:
                pass
        # Commands received but not acknowledged will be redelivered by the broker.
        while not self._commands.empty():
            self._commands.get_nowait()

    # ---- work ---------------------------------------------------------------------------------------------------
    def _apply_commands(self) -> bool:
        worked = False
        while not self._lost.is_set():
            try:
                ack_id, body = self._commands.get_nowait()
            except queue.Empty:
                break
            try:
                with self.app.app_context():
                    outcome = apply_command(body)
            except (OperationalError, InterfaceError) as exc:
                # Not acknowledged: the broker delivers it again once we reconnect, by then the database may be back.
                raise BridgeDown(f"database unavailable while applying a command: {exc.orig or exc}") from exc
            log.debug("command %s: %s", outcome.command_id, outcome.status)
            self._conn.ack(ack_id)  # only after the commit: a crash before this means a redelivery
            worked = True
        return worked

    def _send_events(self) -> bool:
        """Send the oldest unsent events as one batch; whether there were any (all confirmed, else
        :class:`BridgeDown`)."""
        with self.app.app_context():
            batch = outbox.unsent(self.batch_size)
            if not batch:
                return False
            node = gateway_state(self.app).settings.node_name
            messages = [(e.id, outbox.event_message(e, node)) for e in batch]
        receipts = [f"ev-{next(self._receipt_ids)}" for _ in messages]
        with self._receipt_arrived:
            self._awaited = set(receipts)
        sent = 0
        try:
            # Pipelined: every SEND of the batch goes out before the first RECEIPT is awaited (one connection keeps
            # them in order).
            for (_, body), receipt in zip(messages, receipts, strict=True):
                self._conn.send(EVENTS_QUEUE, body, content_type="application/json",
                                headers={"persistent": "true"}, receipt=receipt)
                sent += 1
        except Exception as exc:  # stomp.py raises several kinds when the socket breaks
            self._lost.set()
            self._error = f"send failed: {exc}"
        confirmed = self._await_receipts(receipts[:sent])
        ids = [row_id for row_id, _ in messages]
        with self.app.app_context():
            outbox.mark_sent(ids[:confirmed], ids[confirmed:sent])
        if confirmed < len(messages):
            raise BridgeDown(self._error or f"{len(messages) - confirmed} events not confirmed by a RECEIPT")
        return True

    def _await_receipts(self, receipts: list[str]) -> int:
        """Wait for the RECEIPTs of a batch (no longer than ``receipt_timeout``, or the connection); how many, in
        send order, arrived before the first missing one (events after a gap are sent again with it)."""
        deadline = time.monotonic() + self.receipt_timeout
        with self._receipt_arrived:
            while self._awaited and not self._lost.is_set() and not self._stopping.is_set():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    self._error = f"no RECEIPT within {self.receipt_timeout:g}s"
                    break
                self._receipt_arrived.wait(remaining)
            confirmed = 0
            for receipt in receipts:
                if receipt not in self._receipts:
                    break
                confirmed += 1
            self._receipts.difference_update(receipts)
            self._awaited = set()
        return confirmed

    # ---- status -------------------------------------------------------------------------------------------------
    def _publish(self, connected: bool, detail: str) -> None:
        import os

        settings = gateway_state(self.app).settings
        try:
            write_state(settings, BridgeState(connected, self.target.peer, self.holder, os.getpid(),
                                              1 if connected else 0, detail, time.time(), self.term,
                                              self.target.role, self.target.host))
        except OSError as exc:
            log.warning("cannot record the bridge state: %s", exc)

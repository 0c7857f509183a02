"""Raw TCP/TLS listeners run inside each gunicorn worker (after gevent has patched the process).

gunicorn serves plain HTTP on the HTTP port. It cannot mix plain and TLS binds, so HTTPS, the monitoring port and
the CNS ports are served by this controller in every worker: each worker binds the same ports with SO_REUSEPORT
(the kernel spreads connections across workers) and IP_FREEBIND (the VIP may be bound before it arrives).

TLS handshakes happen inside the connection handler, under a time limit, with a one-line log on failure; gevent's
own ``ssl_context`` server option would log a traceback per refused handshake.
"""

from __future__ import annotations

import email.errors
import errno
import logging
import select as kernel_select
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import gevent
import gevent.socket
from gevent.lock import BoundedSemaphore
from gevent.monkey import get_original
from gevent.pool import Pool
from gevent.pywsgi import WSGIHandler, WSGIServer
from gevent.server import StreamServer
from gunicorn.workers.ggevent import PyWSGIHandler, PyWSGIServer

from .logs import client_mistake

log = logging.getLogger(__name__)

IP_FREEBIND = getattr(socket, "IP_FREEBIND", 15)

StreamHandler = Callable[[Any, tuple[str, int]], None]


class ListenerBindError(OSError):
    """A listener could not bind; the message names the port and the setting to change."""


def bind_socket(host: str, port: int, backlog: int = 1024, *, reuse_port: bool = True,
                setting: str = "PNP_*_PORT settings") -> socket.socket:
    """A listening socket with SO_REUSEPORT (shared by workers) and IP_FREEBIND (VIP may arrive later).

    ``setting`` names the variable that moves this port, for the error message.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        level = socket.IPPROTO_IPV6 if family == socket.AF_INET6 else socket.IPPROTO_IP
        sock.setsockopt(level, IP_FREEBIND, 1)
        sock.bind((host, port))
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        hint = ""
        if exc.errno == errno.EADDRINUSE:
            hint = f": another program holds this port; stop it or move the port (see {setting})"
        elif exc.errno == errno.EACCES:
            hint = ": ports below 1024 need root or CAP_NET_BIND_SERVICE; move it (e.g. PNP_HTTP_PORT=8080)"
        raise ListenerBindError(exc.errno, f"cannot listen on {host}:{port} ({exc.strerror}){hint}") from exc
    return sock


def peer_data_waiting(sock: Any) -> bool:
    """Whether bytes the peer sent wait unread in the kernel (seen with the kernel's poll: a zero-timeout look that
    never yields to other greenlets)."""
    poller = get_original("select", "poll")()
    try:
        poller.register(sock.fileno(), kernel_select.POLLIN)
    except (OSError, ValueError):  # already closed
        return False
    return any(mask & kernel_select.POLLIN for _, mask in poller.poll(0))


class _HandshakeTimeout(Exception):
    """The peer did not do its part of a TLS handshake in time."""


def tls_handshake(raw: Any, address: tuple[str, int], context: ssl.SSLContext, timeout: float, port: int,
                  turns: Any = None, timed_out: Callable[[], None] | None = None) -> Any:
    """Wrap an accepted socket in TLS, the peer's part within ``timeout`` seconds; ``None`` (socket closed) on
    failure.

    Only the time spent waiting for the peer counts, and when it is up while bytes the peer sent wait unread, the
    worker was late, not the peer (under a storm of devices a greenlet waits seconds for its turn): the handshake
    goes on. ``turns`` (a semaphore) bounds the handshake steps that compute at once; a handshake waits for a turn
    without using CPU. ``timed_out`` is called when a handshake is closed for its time.
    """
    reason = ""
    blocking = raw.gettimeout()
    try:
        tls = context.wrap_socket(raw, server_side=True, do_handshake_on_connect=False)
        tls.settimeout(0.0)  # each step returns at once; the waits for the peer are below
        waited = 0.0
        while True:
            try:
                if turns is None:
                    tls.do_handshake()
                else:
                    with turns:
                        tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                wait = gevent.socket.wait_read
            except ssl.SSLWantWriteError:
                wait = gevent.socket.wait_write
            began = time.monotonic()
            try:
                wait(tls.fileno(), timeout=max(0.0, timeout - waited), timeout_exc=_HandshakeTimeout())
            except _HandshakeTimeout:
                if not peer_data_waiting(tls):
                    raise
                continue  # the peer's bytes came while this worker was busy: not the peer's time
            waited += time.monotonic() - began
        tls.settimeout(blocking)
        return tls
    except _HandshakeTimeout:
        reason = f"no handshake within {timeout:g}s"
        if timed_out is not None:
            timed_out()
    except (ssl.SSLError, OSError) as exc:
        reason = getattr(exc, "reason", None) or str(exc) or type(exc).__name__
    log.info("TLS handshake refused on port %s from %s: %s", port, address[0], reason,
             extra=client_mistake(f"tls-refused-{port}"))
    try:
        raw.close()
    except OSError:
        pass
    return None


DEFAULT_HEADER_TIMEOUT = 30.0


class _HeadersTooSlow(BaseException):
    """The client took longer than the server's header deadline to send its request line and headers (not an
    ``Exception``: pywsgi would answer it as a malformed request, 400)."""


class _StrictHeaders:
    """Refuses (400) a request whose header section a proxy in front could read otherwise, on every HTTP port, and
    closes (408) a client that takes longer than the server's ``header_timeout`` to send its request line and
    headers once it has begun: the idle limit restarts with every byte, so a client that trickles a byte at a time
    (slowloris) would otherwise hold its connection for ever.

    The header parser underneath takes a bare CR as a line end and a line such as ``Host : x`` (a space before the
    colon) as the end of the headers, silently; both leave a defect on the parsed headers. A NUL is kept inside the
    value. Such a request is refused instead of served with what was left. (Two Content-Lengths, Content-Length with
    Transfer-Encoding, folded or unknown transfer codings are refused by the servers themselves.)
    """

    _header_deadline: gevent.Timeout | None = None

    def handle_one_request(self) -> Any:
        try:
            return super().handle_one_request()  # type: ignore[misc]
        except _HeadersTooSlow:
            address = self.client_address  # type: ignore[attr-defined]
            port = self.server.server_port  # type: ignore[attr-defined]
            log.info("HTTP client %s on port %s took longer than %gs to send its headers: closed",
                     address[0] if address else "?", port, self._limit(), extra=client_mistake(f"http-slow-{port}"))
            try:
                self.socket.sendall(b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\n"  # type: ignore[attr-defined]
                                    b"Content-Length: 0\r\n\r\n")
            except OSError:
                pass
            self.close_connection = True
            return None
        finally:
            self._end_header_deadline()

    def _limit(self) -> float:
        return float(getattr(self.server, "header_timeout", DEFAULT_HEADER_TIMEOUT))  # type: ignore[attr-defined]

    def read_requestline(self) -> Any:
        # The deadline starts with the request's first byte: a kept-alive connection waiting for its next request is
        # the idle limit's business.
        self.rfile.peek(1)  # type: ignore[attr-defined]
        self._header_deadline = gevent.Timeout.start_new(self._limit(), _HeadersTooSlow)
        return super().read_requestline()  # type: ignore[misc]

    def _end_header_deadline(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.close()
            self._header_deadline = None

    def read_request(self, raw_requestline: Any) -> Any:
        result = super().read_request(raw_requestline)  # type: ignore[misc]
        self._end_header_deadline()  # the headers are in; the body and the application have limits of their own
        headers = self.headers  # type: ignore[attr-defined]
        defects = [d for d in getattr(headers, "defects", ()) if not isinstance(d, _BODY_DEFECTS)]
        if defects or any("\x00" in value or "\r" in value for value in headers.values()):
            from gevent.pywsgi import _InvalidClientRequest

            raise _InvalidClientRequest("malformed header section (NUL, bare CR, or a space before a colon)")
        return result


# The parser reads the header section as a whole e-mail message: a multipart Content-Type without the body it reads
# leaves these defects, which say nothing of the headers (the body is the application's to parse).
_BODY_DEFECTS = (email.errors.StartBoundaryNotFoundDefect, email.errors.CloseBoundaryNotFoundDefect,
                 email.errors.MultipartInvariantViolationDefect, email.errors.NoBoundaryInMultipartDefect)
REFUSAL_TEXT_LIMIT = 200  # characters of gevent's reason kept in the log line: a request line may be 8 KiB


class _RefusalsLogged:
    """Logs what pywsgi refuses (a request line or header section it cannot parse) as one rate-limited INFO line
    of the listeners' logger: the client's mistake, which gevent itself writes to stderr once per request."""

    def log_error(self, msg: str, *args: Any) -> None:
        address = self.client_address  # type: ignore[attr-defined]
        try:
            reason = msg % args if args else msg
        except (TypeError, ValueError):
            reason = f"{msg!r} {args!r}"
        # gevent names the client in its text; the line names it once, before the reason.
        reason = reason.replace(f"(from {address}) ", "").replace(f" (from {address})", "")
        reason = "".join(c if c.isprintable() else repr(c)[1:-1] for c in reason)  # one line, whatever was sent
        if len(reason) > REFUSAL_TEXT_LIMIT:
            reason = f"{reason[:REFUSAL_TEXT_LIMIT]}... ({len(reason)} characters)"
        port = self.server.server_port  # type: ignore[attr-defined]
        log.info("HTTP request refused on port %s from %s: %s", port, address[0] if address else "?", reason,
                 extra=client_mistake(f"http-refused-{port}"))


ONE_SEND_LIMIT = 64 * 1024  # bytes of body sent with the header section; a larger body goes on in its own sends


class _OneSendPerResponse:
    """Sends a response's header section together with its body: pywsgi sends them apart, two system calls (and two
    TCP segments) for every device's answer, which is a few hundred bytes."""

    _held: bytearray | None = None

    def _write_with_headers(self, data: bytes) -> None:
        if len(data) > ONE_SEND_LIMIT:
            super()._write_with_headers(data)  # type: ignore[misc]
            return
        self._held = bytearray()
        try:
            super()._write_with_headers(data)  # type: ignore[misc]
            held = self._held
        finally:
            self._held = None
        self._sendall(held)

    def _sendall(self, data: bytes | bytearray) -> None:
        if self._held is not None:
            self._held += data
            return
        super()._sendall(data)  # type: ignore[misc]


# The WSGI environ key of the client certificate a TLS client presented and the server verified (the dict of
# ``SSLSocket.getpeercert()``); absent when it presented none.
CLIENT_CERTIFICATE = "pnp.client_certificate"


class _QuietWSGIHandler(_OneSendPerResponse, _RefusalsLogged, _StrictHeaders, WSGIHandler):
    """pywsgi handler whose access log goes through logging at debug level (gunicorn keeps the HTTP access log)."""

    def get_environ(self) -> dict[str, Any]:
        environ: dict[str, Any] = super().get_environ()
        getpeercert = getattr(self.socket, "getpeercert", None)
        certificate = getpeercert() if getpeercert is not None else None
        if certificate:  # only a verified certificate has fields (the context asks for one only with a CA)
            environ[CLIENT_CERTIFICATE] = certificate
        return environ

    def log_request(self) -> None:
        log.debug("%s", self.format_request())

    def handle_error(self, t: Any, v: Any, tb: Any) -> None:
        if isinstance(v, OSError):  # the client went away mid-request or mid-response (reset, TLS EOF): one line
            log.info("HTTP client %s went away: %s", self.client_address[0] if self.client_address else "?",
                     type(v).__name__, extra=client_mistake("http-client-gone"))
            self.close_connection = True
            return
        super().handle_error(t, v, tb)


class TLSWSGIServer(WSGIServer):
    """WSGI over TLS where the handshake runs in the connection's greenlet, with a time limit."""

    handler_class = _QuietWSGIHandler

    def __init__(self, listener: Any, application: Any, *, context: ssl.SSLContext, handshake_timeout: float,
                 idle_timeout: float = 60.0, header_timeout: float = DEFAULT_HEADER_TIMEOUT, **kwargs: Any) -> None:
        self._tls_context = context
        self._handshake_timeout = handshake_timeout
        self._idle_timeout = idle_timeout
        self.header_timeout = header_timeout
        super().__init__(listener, application, environ={"wsgi.url_scheme": "https"}, log=None, **kwargs)

    def handle(self, sock: Any, address: tuple[str, int]) -> None:
        port = self.server_port
        tls = tls_handshake(sock, address, self._tls_context, self._handshake_timeout, port)
        if tls is not None:
            # A client that goes silent (slowloris) is closed instead of holding its greenlet and socket forever.
            tls.settimeout(self._idle_timeout)
            try:
                super().handle(tls, address)
            except OSError as exc:  # gone while its connection was being closed (TLS EOF): not a server fault
                log.info("HTTPS client %s went away: %s", address[0], type(exc).__name__,
                         extra=client_mistake("http-client-gone"))


class GatewayHTTPHandler(_OneSendPerResponse, _RefusalsLogged, _StrictHeaders, PyWSGIHandler):
    """gunicorn's handler on the plain HTTP port, with the same header checks and refusal log as every other port."""


class GatewayHTTPServer(PyWSGIServer):
    """gunicorn's plain HTTP server in a worker.

    gunicorn's own ``gevent`` worker accepts one connection per event-loop turn once there are several workers; a
    turn runs every greenlet that is ready, so with hundreds of devices talking a new device's first request waited
    in the accept queue for seconds. This server takes a batch per turn (the other worker still gets its share).
    """

    max_accept = 32

    def __init__(self, *args: Any, idle_timeout: float = 60.0, header_timeout: float = DEFAULT_HEADER_TIMEOUT,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.idle_timeout = idle_timeout
        self.header_timeout = header_timeout

    def handle(self, sock: Any, address: tuple[str, int]) -> None:
        # As on HTTPS: a client that connects and goes silent is closed instead of holding a greenlet forever.
        sock.settimeout(self.idle_timeout)
        try:
            super().handle(sock, address)
        except OSError as exc:  # gone before its error answer was written (it sent garbage and left)
            log.info("HTTP client %s went away: %s", address[0] if address else "?", type(exc).__name__,
                     extra=client_mistake("http-client-gone"))


@dataclass
class ListenerSpec:
    """One port: its name in the status table, whether it is TLS, and what serves it."""

    name: str
    host: str
    port: int
    tls: bool
    wsgi_app: Any = None  # served as HTTP(S) when set
    stream_handler: StreamHandler | None = None  # raw protocol otherwise
    tls_context: ssl.SSLContext | None = None  # this port's own TLS context (the controller's otherwise)
    extra: dict[str, Any] = field(default_factory=dict)


def close_at_once(sock: Any, _address: tuple[str, int]) -> None:
    """Placeholder handler for a port whose protocol is not served: accept and close."""
    sock.close()


# TLS handshake steps a worker computes at once on its raw (CNS) ports. Thousands of devices come back at once after
# a failover; all their handshakes computing at once make each turn of the worker's event loop take seconds, so every
# timer of the worker comes late (HELLO deadlines, the lease's renewals). The others wait their turn without using
# CPU; a handshake waiting for its peer holds no turn, so slow peers cannot hold the others up.
STREAM_HANDSHAKES_AT_ONCE = 32


class ListenerController:
    """Starts every listener of a worker; ``start`` returns once all are bound and re-raises bind errors.

    ``handshake_timed_out`` is called for each raw-port TLS handshake closed for its time (counted by the caller).
    """

    def __init__(self, specs: list[ListenerSpec], *, context: ssl.SSLContext | None, handshake_timeout: float,
                 http_idle_timeout: float = 60.0, http_header_timeout: float = DEFAULT_HEADER_TIMEOUT,
                 max_connections: int = 20000, handshake_timed_out: Callable[[], None] | None = None) -> None:
        self.specs = specs
        self._context = context
        self._handshake_timeout = handshake_timeout
        self._http_idle_timeout = http_idle_timeout
        self._http_header_timeout = http_header_timeout
        self._pool = Pool(max_connections)
        self._handshakes = BoundedSemaphore(STREAM_HANDSHAKES_AT_ONCE)
        self._handshake_timed_out = handshake_timed_out
        self.servers: list[StreamServer] = []

    def _server_for(self, spec: ListenerSpec, sock: socket.socket) -> StreamServer:
        if spec.wsgi_app is not None:
            if spec.tls:
                assert self._context is not None
                return TLSWSGIServer(sock, spec.wsgi_app, context=spec.tls_context or self._context,
                                     handshake_timeout=self._handshake_timeout,
                                     idle_timeout=self._http_idle_timeout,
                                     header_timeout=self._http_header_timeout, spawn=self._pool)
            return WSGIServer(sock, spec.wsgi_app, log=None, spawn=self._pool, handler_class=_QuietWSGIHandler)
        handler = spec.stream_handler or close_at_once
        if spec.tls:
            assert self._context is not None
            context, timeout, port = self._context, self._handshake_timeout, spec.port
            handshakes, timed_out = self._handshakes, self._handshake_timed_out

            def handle_tls(raw: Any, address: tuple[str, int]) -> None:
                tls = tls_handshake(raw, address, context, timeout, port, handshakes, timed_out)
                if tls is not None:
                    handler(tls, address)

            return StreamServer(sock, handle_tls, spawn=self._pool)
        return StreamServer(sock, handler, spawn=self._pool)

    def start(self) -> None:
        try:
            for spec in self.specs:
                sock = bind_socket(spec.host, spec.port)
                server = self._server_for(spec, sock)
                server.start()
                self.servers.append(server)
        except BaseException:
            self.stop(0)
            raise
        log.info("listening on %s", ", ".join(f"{s.host}:{s.port}{' (TLS)' if s.tls else ''}" for s in self.specs))

    def stop(self, timeout: float = 10.0) -> None:
        """Stop accepting, give open connections ``timeout`` seconds to finish, then close them."""
        for server in self.servers:
            server.close()
        if timeout > 0:
            self._pool.join(timeout=timeout)
        self._pool.kill(block=True, timeout=1)
        self.servers.clear()

    @property
    def active_connections(self) -> int:
        return len(self._pool)

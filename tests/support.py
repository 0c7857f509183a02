"""Helpers shared by the tests of every layer (fixtures live in the conftest files; these are plain functions).

One wait helper (:func:`wait_until`), a command on a pseudo terminal, the simulated Prime's own login, in-process
CNS listeners, a default profile made through the REST API as an operator would, the published Open PnP samples the
tests share, the HA lab's states.
"""

from __future__ import annotations

import json
import os
import pty
import socket
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from select import select as wait_readable
from typing import Any
from unittest import mock

from flask import Flask
from sqlalchemy import select

from pnp_integrated.config import load_settings
from pnp_integrated.context import gateway_state
from pnp_integrated.devsim.node import PNPP, RunningNode
from pnp_integrated.lab import HaLab
from pnp_integrated.models import DeviceSession, OutboxEvent, db
from pnp_integrated.prime.accounts import PRIME_LOGIN, prime_passcode
from pnp_integrated.prime.client import StompClient


def wait_until(condition: Callable[[], Any], timeout: float, what: str, interval: float = 0.1) -> Any:
    """Poll ``condition`` until it returns something true (returned) or fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := condition():
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def run_in_terminal(command: list[str], env: dict[str, str], timeout: float) -> tuple[int, str]:
    """Run ``command`` with stdout and stderr on a pseudo terminal, as an operator's shell would; (exit code, text)."""
    controller, terminal = pty.openpty()
    try:
        process = subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL, stdout=terminal, stderr=terminal)
    finally:
        os.close(terminal)
    output = b""
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = wait_readable([controller], [], [], 0.5)
            if not ready:
                continue
            try:
                chunk = os.read(controller, 65536)
            except OSError:  # EIO: the command closed its end of the terminal
                break
            if not chunk:
                break
            output += chunk
        else:
            process.kill()
            raise AssertionError(f"{command} still running after {timeout}s; it wrote {output[-2000:]!r}")
        return process.wait(timeout=30), output.decode(errors="replace")
    finally:
        os.close(controller)


def prime_client(data_dir: Path, port: int, **options: Any) -> StompClient:
    """A STOMP client logged in as the simulated Prime of ``data_dir`` (its event sink's own account)."""
    settings = load_settings({"data_dir": str(data_dir)}, environ={})
    return StompClient("127.0.0.1", port, login=(PRIME_LOGIN, prime_passcode(settings)), **options)


class CnsNode:
    """The CNS listeners of one worker, run by a gevent hub in a background thread (tests use plain sockets)."""

    def __init__(self, app: Flask) -> None:
        self.app = app
        self.settings = gateway_state(app).settings
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import gevent

        from pnp_integrated import listeners
        from pnp_integrated.listeners import ListenerController
        from pnp_integrated.runtime import raw_listener_specs
        from pnp_integrated.tls import server_context

        try:
            state = gateway_state(self.app)
            specs = [s for s in raw_listener_specs(self.app, self.settings) if s.name.startswith("CNS")]
            controller = ListenerController(specs, context=server_context(self.settings, state.certs),
                                            handshake_timeout=self.settings.tls_handshake_timeout)
            # Unpatched (no monkey-patching in tests) listening sockets must be non-blocking for gevent's accept loop.
            def nonblocking_bind(*args: Any, **kwargs: Any) -> socket.socket:
                sock = bind(*args, **kwargs)
                sock.setblocking(False)
                return sock

            bind = listeners.bind_socket
            with mock.patch.object(listeners, "bind_socket", nonblocking_bind):
                controller.start()
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            return
        self._hub = gevent.get_hub()
        self._ready.set()
        while not self._stop.is_set():
            gevent.sleep(0.02)
        controller.stop(1)
        gateway_state(self.app).cns_worker.stop()

    def start(self) -> CnsNode:
        self._thread.start()
        self._ready.wait(20)
        if self._error:
            raise self._error
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def stall(self, seconds: float, at: float) -> None:
        """Hold the node's event loop for ``seconds``, ``at`` seconds from now, inside a timer's turn, as a greenlet
        woken with thousands of others in a storm does: nothing else of the worker runs meanwhile, and what arrives
        meanwhile is only seen at the next turn (returns at once; the stall runs in the node's thread)."""
        import gevent

        def busy() -> None:
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                pass

        self._hub.loop.run_callback_threadsafe(lambda: gevent.spawn_later(at, busy))

    @property
    def plain(self) -> list[int]:
        return self.settings.gateway_plain_ports

    @property
    def tls(self) -> list[int]:
        return self.settings.gateway_tls_ports

    def live_rows(self) -> list[DeviceSession]:
        with self.app.app_context():
            rows = list(db.session.scalars(select(DeviceSession).where(DeviceSession.closed_at.is_(None))
                                           .order_by(DeviceSession.id)))
            db.session.expunge_all()
            db.session.remove()
            return rows

    def outbox(self, type_: str) -> list[dict[str, Any]]:
        with self.app.app_context():
            rows = [e.payload for e in db.session.scalars(select(OutboxEvent).where(OutboxEvent.type == type_)
                                                         .order_by(OutboxEvent.id))]
            db.session.remove()
            return rows


def create_default_profile(node: RunningNode) -> None:
    token = subprocess.run([PNPP, "token", "create", "--role", "admin"], env=node.env, check=True,
                           capture_output=True, text=True).stdout.strip()
    body = json.dumps({"name": "branch", "is_default": True, "config_template": "hostname {{ serial }}"}).encode()
    request = urllib.request.Request(node.url("/api/v1/profiles"), data=body, method="POST",
                                     headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as resp:
        assert resp.status == 201


def states(lab: HaLab) -> tuple[str, str]:
    return lab.state("prime-a"), lab.state("prime-b")


# Cisco's and a CSR1000V's messages (tests/data/pnp/SOURCES.md) and a hostile one, shared by the Open PnP tests.
CSR_WORK_REQUEST = b"""<pnp xmlns="urn:cisco:pnp" version="1.0" udi="PID:CSR1000V,VID:V00,SN:99CWJ5DOLWQ">
  <info xmlns="urn:cisco:pnp:work-info" correlator="CiscoPnP-1.0-R33.200930-I1-P592-T43891-2">
    <deviceId>
      <udi>PID:CSR1000V,VID:V00,SN:99CWJ5DOLWQ</udi>
      <macAddress></macAddress>
      <hostname>Router</hostname>
      <authRequired>false</authRequired>
      <viaProxy>false</viaProxy>
      <securityAdvise>Password in clear text in unsecured transport</securityAdvise>
    </deviceId>
    <reason>
      <reload>
        <message>factory-reset</message><code>PnP Service Info 2408</code>
        <startupConfigPresent>false</startupConfigPresent>
      </reload>
    </reason>
  </info>
</pnp>"""

BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">]>
<pnp xmlns="urn:cisco:pnp" version="1.0" udi="PID:A,VID:B,SN:&lol3;"><info xmlns="urn:cisco:pnp:work-info"
 correlator="c"/></pnp>"""

"""A CNS device simulator: an IOS CNS event agent, config agent and image agent speaking CNS-W1 and HTTP.

:class:`CnsLink` is one event-agent connection (blocking sockets; under gevent it cooperates). :class:`CnsDevice`
plays a device's day 0: dispatcher -> REDIRECT -> gateway port -> HELLO -> SUBSCRIBE -> pull the initial
configuration over HTTP -> PUBLISH the result -> image agent inventory/status -> answer pushed config and exec
requests -> done. The ``pnpp simulate cns`` command runs many of them at once and prints a table.
"""

from __future__ import annotations

import hashlib
import socket
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import click

from ..cns.codec import GATEWAY_COMMANDS, NEED_DATA, CnsProtocolError, Frame, FrameReader, make_frame, serialize
from ..cns.messages import CONFIG_LOAD, EXEC_CMD, XmlRefused, parse_xml

DEFAULT_SUBJECTS = (CONFIG_LOAD, EXEC_CMD)


class LinkClosed(Exception):
    """The gateway closed the connection (``frames`` holds what it sent before)."""


@dataclass
class CnsLink:
    """One CNS-W1 connection from the device side."""

    host: str
    port: int
    tls: bool = False
    timeout: float = 10.0
    sock: Any = None
    reader: FrameReader = field(default_factory=lambda: FrameReader(GATEWAY_COMMANDS, max_body_bytes=16 << 20))

    @classmethod
    def open(cls, host: str, port: int, *, tls: bool = False, timeout: float = 10.0,
             context: ssl.SSLContext | None = None) -> CnsLink:
        """Connect (and for TLS, handshake) to ``host:port``."""
        link = cls(host, port, tls, timeout)
        raw = socket.create_connection((host, port), timeout=timeout)
        if tls:
            ctx = context or _insecure_context()
            raw = ctx.wrap_socket(raw, server_hostname=host)
        link.sock = raw
        return link

    def send(self, frame: Frame) -> None:
        self.sock.sendall(serialize(frame))

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def command(self, command: str, headers: dict[str, str] | None = None, body: bytes | str = b"") -> None:
        self.send(make_frame(command, headers, body))

    def receive(self, timeout: float | None = None) -> Frame:
        """The next frame from the gateway; raises LinkClosed when it closes, TimeoutError when nothing comes."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            event = self.reader.next_event()
            if isinstance(event, Frame):
                return event
            if event is not NEED_DATA:
                raise LinkClosed("gateway closed the connection")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("no frame from the gateway")
            self.sock.settimeout(remaining)
            try:
                data = self.sock.recv(65536)
            except (ConnectionResetError, BrokenPipeError, ssl.SSLError):
                data = b""
            except TimeoutError:
                raise TimeoutError("no frame from the gateway") from None
            self.reader.receive_data(data)

    def closed_by_peer(self, timeout: float = 5.0) -> bool:
        """Whether the gateway closes the connection within ``timeout`` (frames it sends meanwhile are dropped)."""
        try:
            while True:
                self.receive(timeout)
        except LinkClosed:
            return True
        except TimeoutError:
            return False

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self) -> CnsLink:
        return self

    def __exit__(self, *_exc: Any) -> None:
        self.close()


def _insecure_context() -> ssl.SSLContext:
    # Simulated devices do not check the server certificate (IOS trusts by `cns trusted-server`, by address).
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def hello_frame(device_id: str, *, config_id: str = "", keepalive: str = "", agent: str = "devsim") -> Frame:
    headers = {"Device-Id": device_id}
    if config_id:
        headers["Config-Id"] = config_id
    if keepalive:
        headers["Keepalive"] = keepalive
    if agent:
        headers["Agent"] = agent
    return make_frame("HELLO", headers)


def dispatch(host: str, port: int, device_id: str, *, tls: bool = False, timeout: float = 10.0) -> Frame:
    """Ask a dispatcher port where to go; the REDIRECT or BUSY (or ERROR) it answers."""
    with CnsLink.open(host, port, tls=tls, timeout=timeout) as link:
        link.send(hello_frame(device_id))
        return link.receive()


def connect(host: str, port: int, device_id: str, *, tls: bool = False, config_id: str = "",
            keepalive: str = "", timeout: float = 10.0,
            subjects: tuple[str, ...] = ()) -> tuple[CnsLink, Frame]:
    """HELLO on a gateway port (then SUBSCRIBE ``subjects`` with receipts); the link and the gateway's answer."""
    link = CnsLink.open(host, port, tls=tls, timeout=timeout)
    link.send(hello_frame(device_id, config_id=config_id, keepalive=keepalive))
    answer = link.receive()
    if answer.command == "WELCOME":
        for subject in subjects:
            link.command("SUBSCRIBE", {"Subject": subject, "Receipt": f"sub-{subject}"})
            got = link.receive()
            if got.command != "RECEIPT":
                raise CnsProtocolError(400, f"SUBSCRIBE {subject} answered with {got.command}")
    return link, answer


# ---- a whole simulated device ---------------------------------------------------------------------------------
@dataclass
class DeviceReport:
    """What happened to one simulated device."""

    serial: str
    steps: list[str] = field(default_factory=list)
    ok: bool = False
    detail: str = ""
    seconds: float = 0.0


@dataclass
class CnsDevice:
    """A simulated IOS device with CNS agents, configured by ``pnpp bootstrap --protocol cns``."""

    serial: str
    host: str
    dispatcher_port: int
    http_port: int = 80
    tls: bool = False
    timeout: float = 10.0
    pid: str = "C1111-8P"
    version: str = "16.9.1"
    flash_free: int = 1 << 30
    fail_lines: tuple[str, ...] = ()  # config lines this device refuses (to test failure reports)
    running_config: list[str] = field(default_factory=list)
    _pending: list[Frame] = field(default_factory=list)  # frames that arrived while awaiting a RECEIPT

    def run(self, max_seconds: float = 60.0) -> DeviceReport:
        """The day-0 conversation, until the gateway has nothing more for the device or ``max_seconds`` pass."""
        report = DeviceReport(self.serial)
        started = time.monotonic()
        try:
            self._run(report, started + max_seconds)
        except (OSError, CnsProtocolError, LinkClosed, TimeoutError, XmlRefused) as exc:
            report.detail = f"{type(exc).__name__}: {exc}"
        report.seconds = time.monotonic() - started
        return report

    def _run(self, report: DeviceReport, deadline: float) -> None:
        where = dispatch(self.host, self.dispatcher_port, self.serial, tls=self.tls, timeout=self.timeout)
        if where.command != "REDIRECT":
            report.detail = f"dispatcher answered {where.command} {where.get('Code', '')} {where.get('Message', '')}"
            return
        port = int(where.get("Port", "0") or 0)
        report.steps.append(f"redirect:{port}")
        link, answer = connect(where.get("Host") or self.host, port, self.serial, tls=self.tls,
                               keepalive="5,2", timeout=self.timeout, subjects=DEFAULT_SUBJECTS)
        with link:
            if answer.command != "WELCOME":
                report.detail = f"gateway answered {answer.command} {answer.get('Code', '')}"
                return
            report.steps.append("welcome")
            self._initial_config(link, report)
            self._image_agent(report)
            report.ok = self._serve_events(link, report, deadline)
            link.command("BYE")

    def _initial_config(self, link: CnsLink, report: DeviceReport) -> None:
        status, text = self.http("GET", f"/cns/config.asp?DeviceID={urllib.parse.quote(self.serial)}")
        if status != 200:
            report.steps.append(f"config.asp:{status}")
            return
        report.steps.append("initial-config")
        self.apply(link, "", text)

    def apply(self, link: CnsLink, identifier: str, text: str) -> bool:
        """Apply configuration lines like IOS (stop at the first refused line) and publish the result."""
        ident = f"<identifier>{_esc(identifier)}</identifier>" if identifier else ""
        for number, line in enumerate((x for x in text.splitlines() if x.strip()), start=1):
            if line.strip() in self.fail_lines:
                body = (f"<config-failure>{ident}<config-id>{_esc(self.serial)}</config-id><error-info>"
                        f"<line-number>{number}</line-number><error-message>% Invalid input: {_esc(line)}"
                        f"</error-message></error-info></config-failure>")
                self.publish(link, "cisco.mgmt.cns.config.failure", body)
                return False
            self.running_config.append(line)
        body = f"<config-success>{ident}<config-id>{_esc(self.serial)}</config-id></config-success>"
        self.publish(link, "cisco.mgmt.cns.config.complete", body)
        return True

    def publish(self, link: CnsLink, subject: str, body: str) -> None:
        token = uuid.uuid4().hex[:8]
        link.command("PUBLISH", {"Subject": subject, "Receipt": token, "Content-Type": "application/xml"}, body)
        for frame in self._frames_until(link, lambda f: f.command == "RECEIPT" and f.get("Receipt-Id") == token):
            self._pending.append(frame)

    def _frames_until(self, link: CnsLink, done: Any) -> Iterator[Frame]:
        """Frames received before the one ``done`` accepts (which is consumed)."""
        while True:
            frame = link.receive()
            if frame.command == "ERROR":
                raise CnsProtocolError(int(frame.get("Code", "400") or 400), frame.get("Message", "") or "")
            if done(frame):
                return
            yield frame

    def _image_agent(self, report: DeviceReport) -> None:
        inventory = (f'<image-inventory device-id="{_esc(self.serial)}"><image name="{self.version}.bin" '
                     f'md5=""/><filesystem name="flash:" free="{self.flash_free}"/></image-inventory>')
        status, text = self.http("POST", "/cns/HttpMsgDispatcher", inventory)
        if status != 200:
            report.steps.append(f"image-agent:{status}")
            return
        doc = parse_xml(text.encode())
        element = doc.element
        download = element.find("download") if element is not None else None
        if download is None:
            report.steps.append("image:none")
            return
        identifier = doc.attributes.get("identifier", "")
        url = download.get("url", "")
        path = urllib.parse.urlsplit(url).path or url
        status, data = self.http("GET", path, raw=True)
        md5 = hashlib.md5(data if isinstance(data, bytes) else b"").hexdigest()
        ok = status == 200 and md5 == download.get("md5", md5)
        state = "activated" if ok else "failed"
        detail = "" if ok else f"download of {url} gave HTTP {status} / md5 {md5}"
        self.http("POST", "/cns/HttpMsgDispatcher",
                  f'<image-status device-id="{_esc(self.serial)}" identifier="{_esc(identifier)}">'
                  f"<state>{state}</state><detail>{_esc(detail)}</detail></image-status>")
        report.steps.append(f"image:{state}")

    def _serve_events(self, link: CnsLink, report: DeviceReport, deadline: float) -> bool:
        """Answer pushed config and exec requests until the gateway is quiet for a while."""
        quiet = 3.0
        while time.monotonic() < deadline:
            frame = self._pending.pop(0) if self._pending else None
            if frame is None:
                try:
                    frame = link.receive(timeout=quiet)
                except TimeoutError:
                    return True
            if frame.command != "DELIVER":
                continue
            doc = parse_xml(frame.body)
            if frame.get("Subject") == CONFIG_LOAD:
                identifier = doc.text.get("identifier", "")
                url = doc.text.get("url", "")
                if url:  # pull: fetch the configuration from the Config Web Service
                    parts = urllib.parse.urlsplit(url)
                    status, lines = self.http("GET", f"{parts.path}?{parts.query}")
                    report.steps.append(f"config-pull:{status}")
                    if status != 200:
                        continue
                else:
                    assert doc.element is not None
                    lines = "\n".join(e.text or "" for e in doc.element.iter("cli"))
                    report.steps.append("config-push")
                self.apply(link, identifier, lines)
            elif frame.get("Subject") == EXEC_CMD:
                report.steps.append(f"exec:{doc.text.get('cli-exec', '')}")
                body = (f"<exec-cmd-response><identifier-exec>{_esc(doc.text.get('identifier-exec', ''))}"
                        f"</identifier-exec><status>success</status><response>[OK]</response></exec-cmd-response>")
                self.publish(link, "cisco.mgmt.cns.exec.rsp", body)
        return False

    def http(self, method: str, path: str, body: str | None = None, raw: bool = False) -> tuple[int, Any]:
        """One HTTP request to the gateway's web services; (status, text or bytes)."""
        url = f"http://{self.host}:{self.http_port}{path}"
        data = body.encode() if body is not None else None
        request = urllib.request.Request(url, data=data, method=method,
                                         headers={"Content-Type": "application/xml"} if data else {})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as resp:
                payload = resp.read()
                return resp.status, payload if raw else payload.decode("utf-8", "replace")
        except urllib.error.HTTPError as exc:
            return exc.code, b"" if raw else exc.read().decode("utf-8", "replace")


def _esc(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")


# ---- pnpp simulate cns ----------------------------------------------------------------------------------------
@click.command("cns")
@click.option("--devices", "count", type=int, default=1, show_default=True, help="how many devices to simulate")
@click.option("--serial-prefix", default="SIM", show_default=True, help="serials are <prefix><number>")
@click.option("--host", default=None, help="gateway address (default: the VIP from the settings)")
@click.option("--dispatcher-port", type=int, default=None, help="default: cns_port_base + 1 (+2 with --tls)")
@click.option("--http-port", type=int, default=None, help="default: http_port from the settings")
@click.option("--tls", is_flag=True, help="use the TLS dispatcher and gateway ports")
@click.option("--max-seconds", type=float, default=60.0, show_default=True, help="per-device time limit")
def simulate_cns(count: int, serial_prefix: str, host: str | None, dispatcher_port: int | None,
                 http_port: int | None, tls: bool, max_seconds: float) -> None:
    """Simulate CNS devices doing their day 0 against the gateway; prints one line per device."""
    from concurrent.futures import ThreadPoolExecutor

    from ..config import ConfigError, load_settings

    try:
        settings = load_settings()
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    if count < 1:
        raise click.BadParameter("must be at least 1", param_hint="--devices")
    port = dispatcher_port or (settings.dispatcher_tls_port if tls else settings.dispatcher_plain_port)
    devices = [CnsDevice(f"{serial_prefix}{i:05d}", host or settings.vip, port,
                         http_port=http_port or settings.http_port, tls=tls) for i in range(1, count + 1)]
    with ThreadPoolExecutor(max_workers=min(count, 64)) as pool:
        reports = list(pool.map(lambda d: d.run(max_seconds), devices))
    click.echo(f"{'SERIAL':<14} {'RESULT':<7} {'SECONDS':>7}  STEPS")
    for r in reports:
        click.echo(f"{r.serial:<14} {'ok' if r.ok else 'FAILED':<7} {r.seconds:7.2f}  {' '.join(r.steps)}"
                   + (f"  ({r.detail})" if r.detail else ""))
    failed = sum(not r.ok for r in reports)
    click.echo(f"{len(reports) - failed}/{len(reports)} devices finished")
    if failed:
        raise SystemExit(1)

"""A CNS device simulator: an IOS CNS event agent, config agent and image agent speaking CNS-W1 and HTTP.

:class:`~.link.CnsLink` is one event-agent connection (:mod:`.link`). :class:`CnsDevice`
plays a device's day 0: dispatcher -> REDIRECT -> gateway port -> HELLO -> SUBSCRIBE -> pull the initial
configuration over HTTP -> PUBLISH the result -> image agent inventory/status -> answer pushed config and exec
requests -> done. The ``pnpp simulate cns`` command runs many of them at once and prints a table.
"""

from __future__ import annotations

import contextlib
import hashlib
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from ..cns.codec import CnsProtocolError, Frame
from ..cns.messages import CONFIG_LOAD, EXEC_CMD, XmlRefused, parse_xml
from . import percentile
from .link import DEFAULT_SUBJECTS, CnsLink, LinkClosed, dispatch, hello_frame

# ---- a whole simulated device ---------------------------------------------------------------------------------
MAX_BOOTS = 3  # a device that is told to install an image again after two reloads gives up


@dataclass
class DeviceReport:
    """What happened to one simulated device; ``timings`` is the time spent per step (seconds), for benchmarks."""

    serial: str
    steps: list[str] = field(default_factory=list)
    ok: bool = False
    detail: str = ""
    seconds: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)

    @contextlib.contextmanager
    def timed(self, step: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.timings[step] = self.timings.get(step, 0.0) + time.perf_counter() - started


@dataclass
class CnsDevice:
    """A simulated IOS device with CNS agents, configured by ``pnpp bootstrap --protocol cns``.

    Its day 0 is finished when the gateway has had it save the configuration (``write memory``) and the session
    ended with BYE; anything else is a failure that says where the device was left waiting.
    """

    serial: str
    host: str
    dispatcher_port: int
    http_port: int = 80
    tls: bool = False
    timeout: float = 10.0
    quiet: float | None = None  # how long to wait for the gateway's next request (default: ``timeout``)
    pid: str = "C1111-8P"
    version: str = "16.9.1"
    image_file: str = ""  # the running image's file name (default: <version>.bin)
    flash_free: int = 1 << 30
    expect_image: bool = False  # fail unless the gateway had an image installed
    fail_lines: tuple[str, ...] = ()  # config lines this device refuses (to test failure reports)
    context: ssl.SSLContext | None = None  # TLS client context (default: no server certificate check)
    running_config: list[str] = field(default_factory=list)
    flash: dict[str, bytes] = field(default_factory=dict)  # images downloaded, by destination
    _pending: list[Frame] = field(default_factory=list)  # frames that arrived while awaiting a RECEIPT

    def run(self, max_seconds: float = 60.0) -> DeviceReport:
        """The day-0 conversation, until the device saved its configuration or ``max_seconds`` pass."""
        report = DeviceReport(self.serial)
        started = time.monotonic()
        try:
            self._run(report, started + max_seconds)
        except (OSError, CnsProtocolError, LinkClosed, TimeoutError, XmlRefused) as exc:
            report.ok = False
            report.detail = f"{type(exc).__name__} after {' '.join(report.steps[-2:]) or 'connecting'}: {exc}"
        report.seconds = time.monotonic() - started
        return report

    def _run(self, report: DeviceReport, deadline: float) -> None:
        for _boot in range(MAX_BOOTS):
            link = self._join(report)
            if link is None:
                return
            with link:
                self._initial_config(link, report)
                if self._image_agent(report):
                    report.steps.append("reload")
                    continue  # the connection drops with the reload; the device starts over on the new image
                report.ok = self._serve_events(link, report, deadline)
                if report.ok and self.expect_image and "image:activated" not in report.steps:
                    report.ok = False
                    report.detail = "provisioned without the image install it expected (the profile has no image?)"
                return
        report.detail = f"told to install an image again after {MAX_BOOTS - 1} reloads"

    def _join(self, report: DeviceReport) -> CnsLink | None:
        """Dispatcher -> REDIRECT -> HELLO on the gateway port -> WELCOME -> SUBSCRIBE; None (with why) if refused."""
        with report.timed("dispatch"):
            where = dispatch(self.host, self.dispatcher_port, self.serial, tls=self.tls, timeout=self.timeout)
        if where.command != "REDIRECT":
            report.detail = f"dispatcher answered {where.command} {where.get('Code', '')} {where.get('Message', '')}"
            return None
        port = int(where.get("Port", "0") or 0)
        report.steps.append(f"redirect:{port}")
        with report.timed("hello"):
            link = CnsLink.open(where.get("Host") or self.host, port, tls=self.tls, timeout=self.timeout,
                                context=self.context)
            link.send(hello_frame(self.serial, keepalive="60,3"))
            answer = link.receive()
        if answer.command != "WELCOME":
            link.close()
            report.detail = f"gateway answered {answer.command} {answer.get('Code', '')} {answer.get('Message', '')}"
            return None
        report.steps.append("welcome")
        with report.timed("subscribe"):
            for subject in DEFAULT_SUBJECTS:
                token = f"sub-{subject}"
                link.command("SUBSCRIBE", {"Subject": subject, "Receipt": token})
                self._await_receipt(link, token)
        return link

    def _initial_config(self, link: CnsLink, report: DeviceReport) -> None:
        with report.timed("config-pull"):
            status, text = self.http("GET", f"/cns/config.asp?DeviceID={urllib.parse.quote(self.serial)}")
        if status != 200:
            report.steps.append(f"config.asp:{status}")
            return
        report.steps.append("initial-config")
        with report.timed("config-publish"):
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
        self._await_receipt(link, token)

    def _await_receipt(self, link: CnsLink, token: str) -> None:
        """Wait for RECEIPT ``token``, keeping what else arrives meanwhile for later."""
        while True:
            frame = link.receive()
            if frame.command == "ERROR":
                raise CnsProtocolError(int(frame.get("Code", "400") or 400), frame.get("Message", "") or "")
            if frame.command == "RECEIPT" and frame.get("Receipt-Id") == token:
                return
            self._pending.append(frame)

    def _image_agent(self, report: DeviceReport) -> bool:
        """Inventory -> instruction -> download and MD5 check -> status; True when the device reloads now."""
        running = self.image_file or f"{self.version}.bin"
        version = f' version="{_esc(self.version)}"' if self.version else ""
        inventory = (f'<image-inventory device-id="{_esc(self.serial)}"><image name="{_esc(running)}"{version} '
                     f'md5=""/><filesystem name="flash:" free="{self.flash_free}"/></image-inventory>')
        with report.timed("inventory"):
            status, text = self.http("POST", "/cns/HttpMsgDispatcher", inventory)
        if status != 200:
            report.steps.append(f"image-agent:{status}")
            return False
        doc = parse_xml(text.encode())
        element = doc.element
        download = element.find("download") if element is not None else None
        if download is None:
            report.steps.append("image:none")
            return False
        identifier = doc.attributes.get("identifier", "")
        url = download.get("url", "")
        path = urllib.parse.urlsplit(url).path or url
        with report.timed("download"):
            status, data = self.http("GET", path, raw=True)
        data = data if isinstance(data, bytes) else b""
        md5 = hashlib.md5(data, usedforsecurity=False).hexdigest()
        problem = ""
        if status != 200:
            problem = f"download of {url} answered HTTP {status}"
        elif md5 != download.get("md5", ""):
            problem = f"MD5 of {url} is {md5}, the instruction said {download.get('md5', '')}"
        elif str(len(data)) != download.get("size", str(len(data))):
            problem = f"{url} has {len(data)} bytes, the instruction said {download.get('size')}"
        state = "failed" if problem else "activated"
        destination = download.get("destination", "") or f"flash:{path.rsplit('/', 1)[-1]}"
        with report.timed("image-status"):
            status, _ = self.http("POST", "/cns/HttpMsgDispatcher",
                                  f'<image-status device-id="{_esc(self.serial)}" identifier="{_esc(identifier)}">'
                                  f"<state>{state}</state><detail>{_esc(problem)}</detail></image-status>")
        report.steps.append(f"image:{state}" if status == 200 else f"image-status:{status}")
        if problem:
            return False
        self.flash[destination] = data
        reload = element is not None and element.find("activate") is not None
        if reload:
            # After the reload the device runs the new file; the gateway knows its version from its repository.
            self.image_file = destination.split(":", 1)[-1]
            self.version = ""
        return reload

    def _serve_events(self, link: CnsLink, report: DeviceReport, deadline: float) -> bool:
        """Answer pushed config and exec requests until the configuration is saved; then BYE."""
        quiet = self.timeout if self.quiet is None else self.quiet
        waited = time.perf_counter()
        while True:
            frame = self._pending.pop(0) if self._pending else None
            if frame is None:
                limit = min(quiet, deadline - time.monotonic())
                try:
                    if limit <= 0:
                        raise TimeoutError
                    frame = link.receive(timeout=limit)
                except TimeoutError:
                    report.detail = self._stalled(report, quiet if limit >= quiet else None)
                    return False
            if frame.command != "DELIVER":
                continue
            report.timings["await-deliver"] = (report.timings.get("await-deliver", 0.0)
                                               + time.perf_counter() - waited)
            doc = parse_xml(frame.body)
            if frame.get("Subject") == CONFIG_LOAD:
                identifier = doc.text.get("identifier", "")
                url = doc.text.get("url", "")
                if url:  # pull: fetch the configuration from the Config Web Service
                    parts = urllib.parse.urlsplit(url)
                    with report.timed("config-pull"):
                        status, lines = self.http("GET", f"{parts.path}?{parts.query}")
                    report.steps.append(f"config-pull:{status}")
                    if status != 200:
                        continue
                else:
                    assert doc.element is not None
                    lines = "\n".join(e.text or "" for e in doc.element.iter("cli"))
                    report.steps.append("config-push")
                with report.timed("config-publish"):
                    self.apply(link, identifier, lines)
            elif frame.get("Subject") == EXEC_CMD:
                command = doc.text.get("cli-exec", "")
                report.steps.append(f"exec:{command}")
                body = (f"<exec-cmd-response><identifier-exec>{_esc(doc.text.get('identifier-exec', ''))}"
                        f"</identifier-exec><status>success</status><response>[OK]</response></exec-cmd-response>")
                with report.timed("exec-publish"):
                    self.publish(link, "cisco.mgmt.cns.exec.rsp", body)
                if command == "write memory":
                    return self._goodbye(link, report)
            waited = time.perf_counter()

    def _goodbye(self, link: CnsLink, report: DeviceReport) -> bool:
        """BYE and wait for the gateway's: it handles frames in order, so the save has been reported by then."""
        with report.timed("bye"):
            link.command("BYE")
            while True:
                frame = self._pending.pop(0) if self._pending else link.receive()
                if frame.command == "BYE":
                    report.steps.append("bye")
                    return True

    def _stalled(self, report: DeviceReport, quiet: float | None) -> str:
        after = report.steps[-1] if report.steps else "connecting"
        waited = f"the gateway sent no request for {quiet:g}s" if quiet else "out of time"
        text = f"{waited} after {after}; the configuration was never saved"
        if "initial-config" not in report.steps and "image:none" in report.steps and not any(
                s.startswith(("config-", "exec:")) for s in report.steps):
            text += " (no configuration and no job for it: unclaimed?)"
        return text

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


def step_table(reports: list[DeviceReport]) -> list[str]:
    """Lines of a p50/p99 table (milliseconds) of the time devices spent in each step."""
    steps: dict[str, list[float]] = {}
    for r in reports:
        for step, seconds in r.timings.items():
            steps.setdefault(step, []).append(seconds * 1000)
    lines = [f"{'STEP':<16} {'COUNT':>6} {'P50 ms':>9} {'P99 ms':>9}"]
    for step, values in steps.items():
        lines.append(f"{step:<16} {len(values):>6} {percentile(values, 0.5):>9.1f} {percentile(values, 0.99):>9.1f}")
    return lines

"""An Open PnP agent simulator: plays IOS-XE devices through day 0 against a gateway, over HTTP or HTTPS.

:class:`PnpAgent` runs one device's loop the way the IOS PnP agent does: ``GET /pnp/HELLO``, then
``POST /pnp/WORK-REQUEST`` with its UDI; it executes what the server asks (device-info, image-install with a real
download and MD5 check followed by a "reload" that brings it back on the new version, config-upgrade fetching the
configuration URL, cli-config, cli-exec, file-transfer, reload, capability), reports each result with
``POST /pnp/WORK-RESPONSE`` and asks again after the bye, until the server tells it to terminate. Backoffs are
honoured (scaled by ``time_scale`` so tests run fast). Errors can be injected at a given rate.

:func:`simulate` runs many agents on threads and returns one :class:`DeviceReport` each: the outcome, why a device
failed, and how long every request took.
"""

from __future__ import annotations

import hashlib
import http.client
import random
import re
import ssl
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from ..pnp.messages import (
    Backoff,
    Bye,
    CapabilityRequest,
    CliConfigRequest,
    CliExecRequest,
    CliResult,
    ConfigUpgradeRequest,
    DeviceInfo,
    DeviceInfoRequest,
    ErrorInfo,
    Fault,
    FileSystem,
    FileTransferRequest,
    ImageInstallRequest,
    PnpProtocolError,
    ReloadRequest,
    ServerMessage,
    Udi,
    WorkRequest,
    WorkResponse,
    encode,
    parse_server_message,
)
from . import percentile, retry_after_seconds

CHUNK = 256 * 1024
XML_HEADERS = {"Content-Type": "text/xml; charset=utf-8"}
# A marker an image file may carry in its first bytes to say which version it boots (simulated images only).
VERSION_MARKER = re.compile(rb"PNPSIM-VERSION=([A-Za-z0-9.()_-]+)")
_VERSION_IN_NAME = re.compile(r"(\d+\.\d+\.\d+[a-zA-Z]?\d*|\d+\.\d+\(\d+\)[A-Za-z]*\d*)")

# Device error codes as IOS reports them (the numeric code is the last token of errorCode).
ERR_INVALID_INPUT = "PnP Service Error 1412"
ERR_SOURCE_NOT_FOUND = "PnP Service Error 1803"
ERR_CHECKSUM = "PnP Service Error 1816"
ERR_COPY_FAILED = "PnP Service Error 1829"

# After a gateway failure the agent tries again: at the server's Retry-After, or backing off from the first to the
# longest pause (seconds of device time, scaled like every other wait); never faster than the floor (real seconds).
RETRY_FIRST, RETRY_LONGEST, RETRY_FLOOR = 5.0, 60.0, 0.2
UNAVAILABLE = 503

PROVISIONED, FAILED, UNCLAIMED, WAITING, ERROR = "provisioned", "failed", "unclaimed", "waiting", "error"


@dataclass
class SimulatedDevice:
    """What a simulated device is and holds (its flash, running and startup configuration)."""

    serial: str
    pid: str = "CSR1000V"
    vid: str = "V00"
    version: str = "17.3.4a"
    image_file: str = "bootflash:packages.conf"
    hostname: str = "Router"
    flash_size: int = 6_286_540_800
    flash_free: int = 5_438_058_496
    auth_required: bool = False
    error_rate: float = 0.0  # probability that a service request fails with errorInfo
    fault_rate: float = 0.0  # probability that a service request is answered with a protocol fault
    fail_services: frozenset[str] = frozenset()  # services that always fail (errorInfo)
    # Injected errors are transient: after this many in a row for one service the next attempt succeeds.
    error_streak_limit: int = 2
    running_config: list[str] = field(default_factory=list)
    startup_config: list[str] = field(default_factory=list)
    flash: dict[str, str] = field(default_factory=dict)  # "bootflash:name" -> MD5
    reloads: int = 0
    credentials_seen: dict[str, str] | None = None

    @property
    def udi(self) -> Udi:
        return Udi(self.pid, self.vid, self.serial)

    def info(self) -> DeviceInfo:
        return DeviceInfo(
            version=self.version, image_file=self.image_file, hostname=self.hostname, platform=self.pid,
            board_id=self.serial, config_register="0x2102",
            filesystems=(FileSystem("bootflash", "disk", self.flash_size, self.flash_free, True, True),
                         FileSystem("nvram", "nvram", 33_554_432, 33_551_308, True, False)))


@dataclass
class DeviceReport:
    """How one simulated device fared."""

    serial: str
    outcome: str = ERROR  # provisioned | failed | unclaimed | waiting | error
    reason: str = ""
    seconds: float = 0.0
    version: str = ""
    reloads: int = 0
    services: list[str] = field(default_factory=list)  # requests the server sent, in order
    injected_errors: int = 0
    latencies: dict[str, list[float]] = field(default_factory=dict)  # endpoint -> seconds per request

    @property
    def ok(self) -> bool:
        return self.outcome == PROVISIONED


class SimulatorError(Exception):
    """The gateway answered something a device cannot work with (the reason ends the device's run)."""


class AgentHttp:
    """Keep-alive HTTP(S) connections of one agent, one per server; a connection closed by the server is reopened."""

    def __init__(self, context: ssl.SSLContext | None, timeout: float) -> None:
        self.context = context
        self.timeout = timeout
        self._conns: dict[tuple[str, str, int], http.client.HTTPConnection] = {}
        self.retry_after: str | None = None  # the Retry-After header of the last answer

    def _connection(self, scheme: str, host: str, port: int) -> http.client.HTTPConnection:
        key = (scheme, host, port)
        conn = self._conns.get(key)
        if conn is None:
            if scheme == "https":
                conn = http.client.HTTPSConnection(host, port, timeout=self.timeout,
                                                   context=self.context or ssl.create_default_context())
            else:
                conn = http.client.HTTPConnection(host, port, timeout=self.timeout)
            self._conns[key] = conn
        return conn

    def request(self, method: str, url: str, body: bytes | None = None, headers: dict[str, str] | None = None,
                sink: Callable[[bytes], None] | None = None) -> tuple[int, bytes]:
        """(status, body). With ``sink`` the body is streamed to it in chunks and ``b""`` is returned."""
        parts = urlsplit(url)
        scheme = parts.scheme or "http"
        host = parts.hostname or "127.0.0.1"
        port = parts.port or (443 if scheme == "https" else 80)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        for attempt in (1, 2):
            conn = self._connection(scheme, host, port)
            reused = conn.sock is not None
            try:
                conn.request(method, target, body=body, headers=headers or {})
                resp = conn.getresponse()
                self.retry_after = resp.getheader("Retry-After")
                if sink is None:
                    data = resp.read()
                else:
                    data = b""
                    while chunk := resp.read(CHUNK):
                        sink(chunk)
                if resp.will_close:
                    self._drop(scheme, host, port)
                return resp.status, data
            except (http.client.RemoteDisconnected, http.client.CannotSendRequest, ConnectionResetError,
                    BrokenPipeError):
                self._drop(scheme, host, port)
                if attempt == 2 or not reused:
                    raise
            except BaseException:
                self._drop(scheme, host, port)
                raise
        raise AssertionError("unreachable")

    def _drop(self, scheme: str, host: str, port: int) -> None:
        conn = self._conns.pop((scheme, host, port), None)
        if conn is not None:
            conn.close()

    def close(self) -> None:
        for conn in self._conns.values():
            conn.close()
        self._conns.clear()


class PnpAgent:
    """One simulated device talking Open PnP to ``base_url`` until it is told to terminate (or gives up)."""

    def __init__(self, device: SimulatedDevice, base_url: str, *, context: ssl.SSLContext | None = None,
                 time_scale: float = 0.01, max_wait: float = 2.0, reload_seconds: float = 30.0,
                 patience: int = 3, deadline: float = 120.0, timeout: float = 30.0,
                 rng: random.Random | None = None) -> None:
        self.device = device
        self.base_url = base_url.rstrip("/")
        self.http = AgentHttp(context, timeout)
        self.time_scale = time_scale
        self.max_wait = max_wait
        self.reload_seconds = reload_seconds
        self.patience = patience  # consecutive callbackAfter backoffs before giving up
        self.deadline = deadline
        self.rng = rng or random.Random(device.serial)
        self.report = DeviceReport(serial=device.serial)
        self._counter = 0
        self._reload_pending = False
        self._next_image = (device.image_file, device.version)  # what the device boots at its next reload
        self._reason = "factory-reset"
        self._streaks: dict[str, int] = {}  # service -> injected errors in a row
        self._deadline = time.monotonic() + deadline
        self.gateway_failures = 0  # requests that met a connection error or a 503 and were retried

    # ---- the loop ---------------------------------------------------------------------------------------------
    def run(self) -> DeviceReport:
        """Play day 0; never raises (the report says what went wrong)."""
        started = time.monotonic()
        try:
            self._run(started + self.deadline)
        except (OSError, http.client.HTTPException, SimulatorError, PnpProtocolError) as exc:
            self.report.outcome = ERROR
            self.report.reason = f"{type(exc).__name__}: {exc}"
        finally:
            self.http.close()
            self.report.seconds = time.monotonic() - started
            self.report.version = self.device.version
            self.report.reloads = self.device.reloads
        return self.report

    def _run(self, deadline: float) -> None:
        self._deadline = deadline
        self._hello()
        backoffs = 0
        while True:
            if time.monotonic() > deadline:
                self.report.outcome = WAITING
                self.report.reason = self.report.reason or "deadline reached before the server terminated"
                return
            message = self._work_request()
            if isinstance(message, Backoff):
                if message.terminate:
                    self._terminated(message.reason)
                    return
                backoffs += 1
                if backoffs >= self.patience:
                    unclaimed = "no profile" in message.reason.lower() or "unclaimed" in message.reason.lower()
                    self.report.outcome = UNCLAIMED if unclaimed else WAITING
                    self.report.reason = f"server keeps backing off: {message.reason}"
                    return
                seconds = message.seconds if message.seconds is not None else (message.default_minutes or 1) * 60
                self._sleep(seconds)
                continue
            if isinstance(message, Bye):
                self._sleep(1)
                continue
            backoffs = 0
            self.report.services.append(message.service)
            answer = self._execute(message)
            reply = self._post("WORK-RESPONSE", encode(answer))
            if not isinstance(reply, Bye | Backoff):
                raise SimulatorError(f"WORK-RESPONSE answered with {type(reply).__name__}, expected bye")
            if self._reload_pending:
                self._reload()

    def _terminated(self, reason: str) -> None:
        lowered = reason.lower()
        if "complete" in lowered:
            self.report.outcome = PROVISIONED
        else:
            self.report.outcome = FAILED
        self.report.reason = reason

    # ---- HTTP -------------------------------------------------------------------------------------------------
    def _timed(self, name: str, method: str, url: str, **kwargs: Any) -> tuple[int, bytes]:
        started = time.perf_counter()
        status, data = self.http.request(method, url, **kwargs)
        self.report.latencies.setdefault(name, []).append(time.perf_counter() - started)
        return status, data

    def _persistent(self, name: str, method: str, url: str, **kwargs: Any) -> tuple[int, bytes]:
        """A request the agent repeats after connection errors and 503 answers (a gateway failing over), until the
        device's deadline; any other answer is returned."""
        pause = RETRY_FIRST
        while True:
            try:
                status, data = self._timed(name, method, url, **kwargs)
                if status != UNAVAILABLE:
                    return status, data
                problem: Exception = SimulatorError(f"{name} answered {status}")
                wait = retry_after_seconds(self.http.retry_after) or pause
            except (OSError, http.client.HTTPException) as exc:
                problem, wait = exc, pause
            if time.monotonic() + RETRY_FLOOR > self._deadline:
                raise problem
            self.gateway_failures += 1
            time.sleep(max(RETRY_FLOOR, min(self.max_wait, wait * self.time_scale)))
            pause = min(pause * 2, RETRY_LONGEST)

    def _hello(self) -> None:
        status, _ = self._persistent("HELLO", "GET", f"{self.base_url}/pnp/HELLO")
        if status != 200:
            raise SimulatorError(f"HELLO answered {status}")

    def _post(self, endpoint: str, body: bytes) -> ServerMessage:
        status, data = self._persistent(endpoint, "POST", f"{self.base_url}/pnp/{endpoint}", body=body,
                                        headers=XML_HEADERS)
        if status != 200:
            raise SimulatorError(f"{endpoint} answered {status}: {data[:200].decode(errors='replace').strip()}")
        return parse_server_message(data)

    def _work_request(self) -> ServerMessage:
        self._counter += 1
        device = self.device
        message = WorkRequest(udi=device.udi, correlator=f"CiscoPnP-1.0-R{device.reloads}-T{self._counter}",
                              hostname=device.hostname, auth_required=device.auth_required, reason=self._reason,
                              startup_config_present=bool(device.startup_config))
        return self._post("WORK-REQUEST", encode(message))

    def _sleep(self, seconds: float) -> None:
        time.sleep(min(self.max_wait, max(0.0, seconds * self.time_scale)))

    # ---- executing requests -------------------------------------------------------------------------------------
    def _response(self, request: Any, success: bool = True, error: tuple[str, str] | None = None,
                  **fields: Any) -> WorkResponse:
        info = ErrorInfo(code=error[0].split()[-1], message=error[1], raw_code=error[0]) if error else None
        return WorkResponse(udi=self.device.udi, service=request.service, correlator=request.correlator,
                            success=success and error is None, error=info, **fields)

    def _execute(self, request: Any) -> WorkResponse | Fault:
        device = self.device
        if request.credentials:
            device.credentials_seen = dict(request.credentials)
        if request.service in device.fail_services:
            return self._response(request, error=(ERR_INVALID_INPUT, f"simulated {request.service} failure"))
        roll = self.rng.random()
        streak = self._streaks.get(request.service, 0)
        if roll < device.fault_rate + device.error_rate and streak < device.error_streak_limit:
            self._streaks[request.service] = streak + 1
            self.report.injected_errors += 1
            if roll < device.fault_rate:
                return Fault(device.udi, "XSVC:Client", "An unknown XML tag has been received", "simulated fault")
            return self._response(request, error=(ERR_INVALID_INPUT, f"simulated {request.service} failure"))
        self._streaks[request.service] = 0
        handler = {
            DeviceInfoRequest: self._device_info, ImageInstallRequest: self._image_install,
            ConfigUpgradeRequest: self._config_upgrade, CliConfigRequest: self._cli_config,
            CliExecRequest: self._cli_exec, FileTransferRequest: self._file_transfer,
            ReloadRequest: self._reload_request, CapabilityRequest: self._capability,
        }.get(type(request))
        if handler is None:
            return Fault(device.udi, "XSVC:Client", "An unknown XML tag has been received", request.service)
        return handler(request)

    def _device_info(self, request: DeviceInfoRequest) -> WorkResponse:
        return self._response(request, device_info=self.device.info())

    def _download(self, url: str, name: str) -> tuple[int, str, bytes]:
        """(status, MD5, first bytes) of a file fetched from the server."""
        digest = hashlib.md5(usedforsecurity=False)
        head = bytearray()

        def sink(chunk: bytes) -> None:
            digest.update(chunk)
            if len(head) < 4096:
                head.extend(chunk[: 4096 - len(head)])

        try:
            status, _ = self._timed(name, "GET", url, sink=sink)
        except (OSError, http.client.HTTPException):  # reported as a failed copy; the server asks again
            return UNAVAILABLE, "", b""
        return status, digest.hexdigest(), bytes(head)

    def _image_install(self, request: ImageInstallRequest) -> WorkResponse:
        status, md5, head = self._download(request.location, "image download")
        if status != 200:
            return self._response(request, error=(ERR_SOURCE_NOT_FOUND, f"{request.location}: HTTP {status}"))
        if request.checksum and md5.lower() != request.checksum.lower():
            return self._response(request, error=(ERR_CHECKSUM, f"checksum mismatch: got {md5}"))
        destination = request.destination or f"bootflash:{request.location.rsplit('/', 1)[-1]}"
        self.device.flash[destination] = md5
        if request.reload:
            self._reload_pending = True
            self._next_image = (destination, _version_of(head, destination) or self.device.version)
        return self._response(request)

    def _config_upgrade(self, request: ConfigUpgradeRequest) -> WorkResponse:
        status, data = self._persistent("config download", "GET", request.location)
        if status != 200:
            return self._response(request, error=(ERR_SOURCE_NOT_FOUND, f"{request.location}: HTTP {status}"))
        lines = [line for line in data.decode(errors="replace").splitlines() if line.strip()]
        self.device.running_config.extend(lines)
        if request.apply_to == "startup":
            self.device.startup_config = list(lines)
        if request.reload:
            self._reload_pending = True
            self._next_image = (self.device.image_file, self.device.version)
        return self._response(request)

    def _cli_config(self, request: CliConfigRequest) -> WorkResponse:
        self.device.running_config.extend(request.lines)
        results = tuple(CliResult(n, line, True) for n, line in enumerate(request.lines, 1))
        return self._response(request, cli_results=results)

    def _cli_exec(self, request: CliExecRequest) -> WorkResponse:
        command = request.command.strip()
        if command in ("write memory", "wr", "copy running-config startup-config"):
            self.device.startup_config = list(self.device.running_config)
            return self._response(request, exec_output="Building configuration...\n[OK]")
        if command.startswith("show version"):
            return self._response(request, exec_output=f"Cisco IOS XE Software, Version {self.device.version}")
        return self._response(request, exec_output=f"% simulated output of {command}")

    def _file_transfer(self, request: FileTransferRequest) -> WorkResponse:
        status, md5, _ = self._download(request.source, "file download")
        if status != 200:
            return self._response(request, error=(ERR_SOURCE_NOT_FOUND, f"{request.source}: HTTP {status}"))
        if request.checksum and md5.lower() != request.checksum.lower():
            return self._response(request, error=(ERR_CHECKSUM, f"checksum mismatch: got {md5}"))
        self.device.flash[request.destination] = md5
        return self._response(request)

    def _reload_request(self, request: ReloadRequest) -> WorkResponse:
        self._reload_pending = True
        self._next_image = (self.device.image_file, self.device.version)
        if request.erase_config:
            self.device.startup_config = []
        return self._response(request)

    def _capability(self, request: CapabilityRequest) -> WorkResponse:
        return self._response(request)

    def _reload(self) -> None:
        """Boot again: the running configuration is what startup held, the image the one installed last."""
        self._reload_pending = False
        self.device.image_file, self.device.version = self._next_image
        self.device.running_config = list(self.device.startup_config)
        self.device.reloads += 1
        self._reason = "reload"
        self._sleep(self.reload_seconds)
        self._hello()


def _version_of(head: bytes, filename: str) -> str:
    """The version a simulated image boots: its marker, else the version in its file name."""
    found = VERSION_MARKER.search(head)
    if found:
        return found.group(1).decode()
    by_name = _VERSION_IN_NAME.search(filename)
    return by_name.group(1) if by_name else ""


def simulate(devices: Iterable[SimulatedDevice], base_url: str, *, context: ssl.SSLContext | None = None,
             concurrency: int = 50, on_report: Callable[[DeviceReport], None] | None = None,
             **agent_options: Any) -> list[DeviceReport]:
    """Run one agent per device, ``concurrency`` at a time; the reports come back in the devices' order.

    ``on_report`` hears each report as its device finishes, from the agent's thread (a progress display).
    """
    devices = list(devices)
    if not devices:
        return []

    def play(device: SimulatedDevice) -> DeviceReport:
        report = PnpAgent(device, base_url, context=context, **agent_options).run()
        if on_report is not None:
            on_report(report)
        return report

    with ThreadPoolExecutor(max_workers=max(1, min(concurrency, len(devices))), thread_name_prefix="pnp-agent") as pool:
        return list(pool.map(play, devices))


def summary_rows(reports: list[DeviceReport]) -> list[tuple[str, int, float, float]]:
    """(endpoint, requests, p50 ms, p99 ms) over every device's requests."""
    by_name: dict[str, list[float]] = {}
    for report in reports:
        for name, values in report.latencies.items():
            by_name.setdefault(name, []).extend(values)
    order = ["HELLO", "WORK-REQUEST", "WORK-RESPONSE", "config download", "image download", "file download"]
    names = sorted(by_name, key=lambda n: (order.index(n) if n in order else len(order), n))
    return [(name, len(by_name[name]), percentile(by_name[name], 0.5) * 1000, percentile(by_name[name], 0.99) * 1000)
            for name in names]


def format_reports(reports: list[DeviceReport], elapsed: float) -> str:
    """A table people read: outcomes, request latencies, and why each failed device failed."""
    lines = []
    outcomes: dict[str, int] = {}
    for report in reports:
        outcomes[report.outcome] = outcomes.get(report.outcome, 0) + 1
    ok = outcomes.get(PROVISIONED, 0)
    rate = ok / elapsed if elapsed > 0 else 0.0
    lines.append(f"{len(reports)} devices in {elapsed:.1f}s: " + ", ".join(f"{n} {k}" for k, n in
                                                                          sorted(outcomes.items())))
    lines.append(f"complete day-0 conversations per second: {rate:.1f}")
    durations = [r.seconds for r in reports if r.ok]
    if durations:
        lines.append(f"day-0 duration per device: p50 {percentile(durations, 0.5):.2f}s, "
                     f"p99 {percentile(durations, 0.99):.2f}s")
    lines.append("")
    lines.append(f"{'REQUEST':<18}{'COUNT':>8}{'P50 ms':>10}{'P99 ms':>10}")
    for name, count, p50, p99 in summary_rows(reports):
        lines.append(f"{name:<18}{count:>8}{p50:>10.1f}{p99:>10.1f}")
    failed = [r for r in reports if not r.ok]
    if failed:
        lines.append("")
        for report in failed[:50]:
            lines.append(f"{report.serial}: {report.outcome}: {report.reason}")
        if len(failed) > 50:
            lines.append(f"... and {len(failed) - 50} more")
    return "\n".join(lines)

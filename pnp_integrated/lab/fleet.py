"""A mixed fleet of simulated devices that rides out a gateway failover, as real devices do.

Real devices do not give up when their gateway dies: the CNS event agent reconnects through the dispatcher with a
back-off and subscribes again (the gateway then pushes whatever its job waits on), its image agent polls again, and
the Open PnP agent repeats its WORK-REQUEST after connection errors and 503 answers (see
:mod:`pnp_integrated.devsim.pnp`). :class:`FailoverCnsDevice` plays the CNS side of that; :func:`run_fleet` runs CNS
and Open PnP devices together and returns one :class:`FleetResult` each.

``pnpp lab fleet`` runs it from the lab's devices namespace and writes one JSON line per device.
"""

from __future__ import annotations

import http.client
import json
import random
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

from ..cns.codec import CnsProtocolError, Frame
from ..cns.messages import CONFIG_LOAD, EXEC_CMD, XmlRefused, parse_xml
from ..devsim import retry_after_seconds
from ..devsim.link import CnsLink, LinkClosed, dispatch, hello_frame
from ..devsim.pnp import PnpAgent, SimulatedDevice

FLEET_PROFILE = "lab-fleet"
FLEET_CONFIG = "hostname {{ serial }}\nip domain name lab.example\n"
FLEET_POST = "ntp server 192.0.2.1\nlogging host 192.0.2.2\n"
# The CNS agent's reconnect back-off (seconds, real time: CNS has no server-given pause to scale).
RECONNECT_FIRST, RECONNECT_LONGEST = 0.5, 4.0


class GatewayLost(Exception):
    """The connection to the gateway failed or the gateway refused the device for now: reconnect later.

    ``retry_after``: the seconds the gateway asked for (BUSY and ERROR 503 carry Retry-After); 0 when it said none.
    """

    def __init__(self, message: str, retry_after: float = 0.0, short: str = "lost") -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.short = short  # one word for tallies: BUSY, ERROR-503, ...

    @classmethod
    def answered(cls, who: str, frame: Frame) -> GatewayLost:
        """``who`` (dispatcher, gateway) answered ``frame`` (BUSY, ERROR ...) instead of what the device wanted."""
        code = frame.get("Code", "")
        return cls(f"{who} answered {frame.command} {code} {frame.get('Message', '')}".rstrip(),
                   retry_after_seconds(frame.get("Retry-After")), f"{frame.command}-{code}" if code else frame.command)


@dataclass
class FleetResult:
    """How one device fared: ``reconnects`` counts the times it had to start a session again."""

    serial: str
    protocol: str
    ok: bool = False
    detail: str = ""
    seconds: float = 0.0
    finished_at: float = 0.0  # wall clock, to compare with the failover
    reconnects: int = 0


@dataclass(frozen=True)
class Published:
    """A result the device published; ``saved`` marks the answer to ``write memory`` (its day 0 ends with it)."""

    subject: str
    body: str
    saved: bool = False


@dataclass
class FailoverCnsDevice:
    """A CNS device (event, config and image agents) whose event agent reconnects after a gateway failure.

    ``quiet`` plays the CNS keepalive: a connection without any frame for that long is taken for dead (a killed
    node's connections die silently) and replaced by a new one through the dispatcher.

    A result published without a RECEIPT coming back is published again on the next session: the RECEIPT is the
    gateway's word that the result is recorded, and a node can die between recording it and sending the RECEIPT.
    The gateway receipts a result it already has without applying it twice (same correlator, job moved on).
    """

    serial: str
    host: str
    dispatcher_port: int
    http_port: int = 80
    timeout: float = 30.0
    quiet: float = 20.0
    running_config: list[str] = field(default_factory=list)
    initial_applied: bool = False
    unreceipted: list[Published] = field(default_factory=list)  # sent again at the start of the next session
    _pending: list[Frame] = field(default_factory=list)

    def run(self, deadline: float) -> FleetResult:
        result = FleetResult(self.serial, "cns")
        started = time.monotonic()
        pause = RECONNECT_FIRST
        while True:
            wait = pause
            try:
                result.ok = self._session(deadline)
                result.detail = "" if result.ok else "out of time: the configuration was never saved"
                break
            except (GatewayLost, OSError, http.client.HTTPException, LinkClosed, CnsProtocolError, XmlRefused) as exc:
                result.detail = f"{type(exc).__name__}: {exc}"
                wait = getattr(exc, "retry_after", 0.0) or pause  # what the gateway asked for, if it said
            if time.monotonic() + wait > deadline:
                result.detail = f"out of time; last problem: {result.detail}"
                break
            result.reconnects += 1
            time.sleep(wait * random.uniform(0.75, 1.25))  # spread the returning devices out
            pause = min(pause * 2, RECONNECT_LONGEST)
        result.seconds = time.monotonic() - started
        result.finished_at = time.time()
        return result

    # ---- one session ------------------------------------------------------------------------------------------
    def _session(self, deadline: float) -> bool:
        """Dispatcher -> gateway port -> SUBSCRIBE -> agents -> serve pushes until ``write memory`` (True)."""
        self._pending.clear()
        where = dispatch(self.host, self.dispatcher_port, self.serial, timeout=self.timeout)
        if where.command != "REDIRECT":
            raise GatewayLost.answered("dispatcher", where)
        with CnsLink.open(where.get("Host") or self.host, int(where.get("Port", "0") or 0),
                          timeout=self.timeout) as link:
            link.send(hello_frame(self.serial, keepalive="60,3"))
            answer = link.receive()
            if answer.command != "WELCOME":
                raise GatewayLost.answered("gateway", answer)
            for subject in (CONFIG_LOAD, EXEC_CMD):
                link.command("SUBSCRIBE", {"Subject": subject, "Receipt": f"sub-{subject}"})
                self._await_receipt(link, f"sub-{subject}")
            for result in list(self.unreceipted):
                self._publish(link, result)
                if result.saved:
                    link.command("BYE")
                    return True
            if not self.initial_applied:
                text = self._http("GET", f"/cns/config.asp?DeviceID={urllib.parse.quote(self.serial)}")
                self.initial_applied = True
                self._apply(link, "", text)
            # The image agent reports its inventory at every start; it is what answers the job's identify step.
            self._http("POST", "/cns/HttpMsgDispatcher",
                       f'<image-inventory device-id="{self.serial}"><image name="16.9.1.bin" version="16.9.1" '
                       f'md5=""/><filesystem name="flash:" free="1073741824"/></image-inventory>')
            return self._serve(link, deadline)

    def _serve(self, link: CnsLink, deadline: float) -> bool:
        while time.monotonic() < deadline:
            frame = self._pending.pop(0) if self._pending else link.receive(timeout=self.quiet)
            if frame.command == "ERROR":
                raise GatewayLost.answered("gateway", frame)
            if frame.command != "DELIVER":
                continue
            doc = parse_xml(frame.body)
            if frame.get("Subject") == CONFIG_LOAD:
                url = doc.text.get("url", "")
                if url:
                    parts = urllib.parse.urlsplit(url)
                    text = self._http("GET", f"{parts.path}?{parts.query}")
                else:
                    assert doc.element is not None
                    text = "\n".join(e.text or "" for e in doc.element.iter("cli"))
                self._apply(link, doc.text.get("identifier", ""), text)
            elif frame.get("Subject") == EXEC_CMD:
                command = doc.text.get("cli-exec", "")
                self._publish(link, Published(
                    "cisco.mgmt.cns.exec.rsp",
                    f"<exec-cmd-response><identifier-exec>{doc.text.get('identifier-exec', '')}</identifier-exec>"
                    "<status>success</status><response>[OK]</response></exec-cmd-response>",
                    saved=command == "write memory"))
                if command == "write memory":
                    link.command("BYE")
                    return True
        return False

    def _apply(self, link: CnsLink, identifier: str, text: str) -> None:
        self.running_config.extend(line for line in text.splitlines() if line.strip())
        ident = f"<identifier>{identifier}</identifier>" if identifier else ""
        self._publish(link, Published("cisco.mgmt.cns.config.complete",
                                      f"<config-success>{ident}<config-id>{self.serial}</config-id></config-success>"))

    def _publish(self, link: CnsLink, result: Published) -> None:
        if result not in self.unreceipted:
            self.unreceipted.append(result)
        token = uuid.uuid4().hex[:8]
        link.command("PUBLISH", {"Subject": result.subject, "Receipt": token, "Content-Type": "application/xml"},
                     result.body)
        self._await_receipt(link, token)
        self.unreceipted.remove(result)

    def _await_receipt(self, link: CnsLink, token: str) -> None:
        while True:
            frame = link.receive()
            if frame.command == "ERROR":
                raise GatewayLost.answered("gateway", frame)
            if frame.command == "RECEIPT" and frame.get("Receipt-Id") == token:
                return
            self._pending.append(frame)

    def _http(self, method: str, path: str, body: str | None = None) -> str:
        request = urllib.request.Request(f"http://{self.host}:{self.http_port}{path}", method=method,
                                         data=body.encode() if body is not None else None,
                                         headers={"Content-Type": "application/xml"} if body else {})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as resp:
                return str(resp.read().decode("utf-8", "replace"))
        except urllib.error.HTTPError as exc:
            raise GatewayLost(f"{method} {path.split('?')[0]} answered {exc.code}") from None


def run_fleet(cns_serials: list[str], pnp_serials: list[str], *, host: str, dispatcher_port: int, http_port: int,
              ramp: float = 10.0, deadline: float = 150.0, time_scale: float = 0.01, timeout: float = 30.0,
              quiet: float = 20.0, on_result: Any = None) -> list[FleetResult]:
    """Play every device at once (their starts spread over ``ramp`` seconds); one result per device.

    ``timeout`` bounds every answer a device waits for; ``quiet`` is how long a CNS device waits for the gateway's
    next push before it takes its connection for dead.
    """
    end = time.monotonic() + deadline
    serials = [(s, "cns") for s in cns_serials] + [(s, "pnp") for s in pnp_serials]
    random.Random(len(serials)).shuffle(serials)
    gap = ramp / max(1, len(serials))

    def play(index: int) -> FleetResult:
        serial, protocol = serials[index]
        time.sleep(index * gap)
        if protocol == "cns":
            result = FailoverCnsDevice(serial, host, dispatcher_port, http_port=http_port, timeout=timeout,
                                       quiet=quiet).run(end)
        else:
            started = time.monotonic()
            agent = PnpAgent(SimulatedDevice(serial=serial), f"http://{host}:{http_port}", time_scale=time_scale,
                             deadline=end - started, timeout=timeout, max_wait=1.0)
            report = agent.run()
            result = FleetResult(serial, "pnp", report.ok, "" if report.ok else f"{report.outcome}: {report.reason}",
                                 report.seconds, time.time(), agent.gateway_failures)
        if on_result is not None:
            on_result(result)
        return result

    with ThreadPoolExecutor(max_workers=len(serials), thread_name_prefix="fleet") as pool:
        return list(pool.map(play, range(len(serials))))


def result_line(result: FleetResult) -> str:
    return json.dumps(asdict(result), sort_keys=True)

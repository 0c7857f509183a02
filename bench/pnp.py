"""Open PnP benchmark: complete day-0 conversations per second, and p50/p99 per request, with many concurrent agents.

By default it starts its own node (``pnpp run`` on a temporary data directory, ports moved, a default profile with
a configuration and a post-PnP template) and plays ``--devices`` simulated agents, ``--concurrency`` at a time::

    .venv/bin/python bench/pnp.py --devices 500 --concurrency 500
    .venv/bin/python bench/pnp.py --devices 500 --concurrency 64 --new-connection-per-request

``--url`` points it at a node that is already running (its profiles must claim the simulated PID). Prints a table.
``--new-connection-per-request`` makes every agent open a TCP connection for each request and close it after the
answer (sending ``Connection: close``), as an agent that keeps no connection does; by default an agent keeps one
connection open.

Side by side with another Open PnP server (``--peer``)
-------------------------------------------------------
``--peer URL`` runs the same client against this gateway and against the server at URL in one run, alternating
(ours, peer, ours, peer ... ``--rounds`` of each, after an untimed warm-up of each), with 64 agents and a new TCP
connection per request, and prints one table: requests per second, p50/p99 per request kind, server CPU per request
(ours: its gunicorn master and workers; the peer: the processes listening on its port, or ``--peer-pid``), the
bench client's CPU per request, and the ratio ours/peer::

    .venv/bin/python bench/pnp.py --peer http://127.0.0.1:8080 --peer-configs PEER_DIR/configs --rounds 3

The peer it was written for is Open_PnP_Server (a small Flask app on Werkzeug's threaded server). It serves:
``GET /pnp/HELLO``: 200 with an empty body. ``POST /pnp/WORK-REQUEST``: always the same config-upgrade request (copy
``http://<its address>/configs/<serial>.cfg`` to the running configuration, no reload), whatever the device and
however often it asks; it keeps no state, so it has no end of day 0. ``POST /pnp/WORK-RESPONSE``: the bye, reading
only the udi and the correlator of the response. ``GET /configs/<serial>.cfg``: a file from its ``configs``
directory, 404 for a device it holds no file for (``--peer-configs`` writes one for every simulated device and
removes them afterwards). It closes every connection after its answer, so a new connection per request is the only
like-for-like client.

The conversation, then, is one both can complete with identical requests: the day 0 this gateway runs for a device
its profile claims with a configuration and a post-PnP template, played as a fixed script by every agent against
both servers (11 requests)::

    GET  /pnp/HELLO
    POST /pnp/WORK-REQUEST     ours asks device-info      POST /pnp/WORK-RESPONSE  device-info, the device's facts
    POST /pnp/WORK-REQUEST     both ask config-upgrade    GET  the configuration URL it names
                                                          POST /pnp/WORK-RESPONSE  config-upgrade, success
    POST /pnp/WORK-REQUEST     ours asks cli-config       POST /pnp/WORK-RESPONSE  cli-config, a result per line
    POST /pnp/WORK-REQUEST     ours asks cli-exec         POST /pnp/WORK-RESPONSE  cli-exec "write memory" output
    POST /pnp/WORK-REQUEST     ours: backoff, terminate "provisioning complete"; the peer: config-upgrade again

Every request carries the same bytes to both servers (each response carries the device's own correlator, which both
echo), except the configuration URL, which each server names itself; the bench checks it with a digest of every
request's method, path and body per round. The peer answers the device-info, cli-config and cli-exec steps with its
config-upgrade too, so there the device's response answers a request the peer did not make; the peer does not look.
This gateway persists every step (the job's state is in its database) and must end the day 0 with "provisioning
complete"; a conversation with the peer is complete when every request got 200 and an Open PnP message of the
expected kind (a request for a WORK-REQUEST, the bye for a WORK-RESPONSE). The table says what each server asked.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import os
import shutil
import ssl
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.proc import cpu_seconds, gateway_cpu_seconds, gateway_pids, listening_pids, process_tree  # noqa: E402
from pnp_integrated.devsim import percentile  # noqa: E402
from pnp_integrated.devsim.node import NodeDidNotStart, RunningNode, start_node  # noqa: E402
from pnp_integrated.devsim.pnp import (  # noqa: E402
    PROVISIONED,
    XML_HEADERS,
    AgentHttp,
    DeviceReport,
    PnpAgent,
    SimulatedDevice,
    format_reports,
)
from pnp_integrated.pnp.messages import (  # noqa: E402
    Backoff,
    Bye,
    CliResult,
    ConfigUpgradeRequest,
    PnpProtocolError,
    WorkRequest,
    WorkResponse,
    encode,
    parse_server_message,
)

PID = "C9300-24U"
CONFIG = "hostname {{ serial }}\ninterface Vlan1\n ip address dhcp\n"
POST = "ntp server 192.0.2.1\nlogging host 192.0.2.2\n"
POST_LINES = tuple(line for line in POST.splitlines() if line.strip())
WRITE_MEMORY_OUTPUT = "Building configuration...\n[OK]"

PEER_AGENTS = 64
PEER_DEVICES = 1280  # 20 conversations per agent: a round of some seconds even against the faster server
# The services of the scripted day 0, in order; one more WORK-REQUEST follows, which ours answers with terminate.
DAY0_SERVICES = ("device-info", "config-upgrade", "cli-config", "cli-exec")
KINDS = ("HELLO", "WORK-REQUEST", "WORK-RESPONSE", "config download")
TERMINATE = "terminate"


def start_bench_node(data_dir: Path, workers: int, image_kib: int, database_url: str | None) -> RunningNode:
    overrides: dict[str, Any] = {"workers": workers}
    if database_url:
        overrides["database_url"] = database_url
    try:
        node = start_node(data_dir, **overrides)
    except NodeDidNotStart as exc:
        raise SystemExit(f"node did not start: {str(exc)[-2000:]}") from None
    add_profile(node.settings, image_kib)
    return node


def add_profile(settings: dict[str, Any], image_kib: int) -> None:
    from pnp_integrated import create_app
    from pnp_integrated.models import Image, Profile, db

    app = create_app(settings)
    with app.app_context():
        image_id = None
        if image_kib:
            data = b"PNPSIM-VERSION=17.6.1\n" + os.urandom(image_kib * 1024)
            (Path(settings["data_dir"]) / "images" / "bench-17.6.1.bin").write_bytes(data)
            image = Image(name="bench-17.6.1", filename="bench-17.6.1.bin", version="17.6.1",
                          md5=hashlib.md5(data).hexdigest(), size=len(data))
            db.session.add(image)
            db.session.flush()
            image_id = image.id
        db.session.add(Profile(name="bench", match_pid=PID, config_template=CONFIG, post_template=POST,
                               image_id=image_id))
        db.session.commit()


class OneRequestPerConnection(AgentHttp):
    """A new TCP connection for every request, closed after the answer; the server is told (``Connection: close``)
    because a client that sends no more requests on a connection should say so."""

    def request(self, method: str, url: str, body: bytes | None = None, headers: dict[str, str] | None = None,
                sink: Callable[[bytes], None] | None = None) -> tuple[int, bytes]:
        try:
            return super().request(method, url, body, {**(headers or {}), "Connection": "close"}, sink)
        finally:
            self.close()


def agent_http(new_connection: bool, context: ssl.SSLContext | None, timeout: float) -> AgentHttp:
    return OneRequestPerConnection(context, timeout) if new_connection else AgentHttp(context, timeout)


def play_agents(devices: list[SimulatedDevice], url: str, *, context: ssl.SSLContext | None, concurrency: int,
                new_connection: bool, timeout: float) -> list[DeviceReport]:
    """The reactive agents of the default mode, ``concurrency`` at a time, with the chosen connection handling."""

    def play(device: SimulatedDevice) -> DeviceReport:
        agent = PnpAgent(device, url, context=context, time_scale=0.0, reload_seconds=0, deadline=600,
                         timeout=timeout)
        agent.http = agent_http(new_connection, context, timeout)
        return agent.run()

    with ThreadPoolExecutor(max_workers=max(1, min(concurrency, len(devices))), thread_name_prefix="pnp-agent") as pool:
        return list(pool.map(play, devices))


# ---- the scripted conversation of --peer mode ---------------------------------------------------------------------
class ConversationFailed(Exception):
    """A server's answer ends the scripted conversation (the message says which and why)."""


@dataclass
class Conversation:
    """One device's scripted day 0 against one server."""

    serial: str
    complete: bool = False
    reason: str = ""
    asked: list[str] = field(default_factory=list)  # what the server answered each WORK-REQUEST with
    latencies: dict[str, list[float]] = field(default_factory=dict)  # request kind -> seconds per request
    requests_digest: str = ""  # of every request's method, path and body (the configuration URL excepted)


class ScriptedAgent:
    """Plays the fixed day 0 of the module docstring against ``base_url``; sends the same requests to any server.

    ``ends_day0``: the server runs the day 0 itself (this gateway): it must ask exactly the scripted services and
    then terminate with "provisioning complete". Otherwise any request is accepted at each step (the peer).
    """

    def __init__(self, device: SimulatedDevice, base_url: str, *, ends_day0: bool, http: AgentHttp) -> None:
        self.device = device
        self.base_url = base_url.rstrip("/")
        self.ends_day0 = ends_day0
        self.http = http
        self.conversation = Conversation(serial=device.serial)
        self._digest = hashlib.sha256()

    def run(self) -> Conversation:
        """Play the script; never raises (the conversation says what went wrong)."""
        try:
            self._play()
            self.conversation.complete = True
        except (OSError, http.client.HTTPException, PnpProtocolError, ConversationFailed) as exc:
            self.conversation.reason = f"{type(exc).__name__}: {exc}"
        finally:
            self.http.close()
            self.conversation.requests_digest = self._digest.hexdigest()
        return self.conversation

    def _play(self) -> None:
        self._exchange("HELLO", "GET", "/pnp/HELLO")
        for step, service in enumerate(DAY0_SERVICES, 1):
            correlator = f"CiscoPnP-1.0-R0-T{step}"
            asked = self._work_request(correlator)
            if isinstance(asked, Backoff):
                raise ConversationFailed(f"step {step} ({service}): backoff: {asked.reason}")
            if self.ends_day0 and asked.service != service:
                raise ConversationFailed(f"step {step}: asked {asked.service}, the day 0 has {service}")
            if service == "config-upgrade":
                if not isinstance(asked, ConfigUpgradeRequest):
                    raise ConversationFailed(f"step {step}: asked {asked.service}, not config-upgrade")
                self._download(asked.location)
            answer = self._exchange("WORK-RESPONSE", "POST", "/pnp/WORK-RESPONSE", self._response(service, correlator))
            if not isinstance(parse_server_message(answer), Bye):
                raise ConversationFailed(f"step {step}: WORK-RESPONSE not answered with the bye")
        last = self._work_request(f"CiscoPnP-1.0-R0-T{len(DAY0_SERVICES) + 1}")
        if self.ends_day0 and not (isinstance(last, Backoff) and last.terminate and "complete" in last.reason):
            raise ConversationFailed(f"after the day 0: {last.service} {getattr(last, 'reason', '')}".strip())

    def _work_request(self, correlator: str) -> Any:
        device = self.device
        body = encode(WorkRequest(udi=device.udi, correlator=correlator, hostname=device.hostname,
                                  reason="factory-reset", startup_config_present=False))
        message = parse_server_message(self._exchange("WORK-REQUEST", "POST", "/pnp/WORK-REQUEST", body))
        if isinstance(message, Bye):
            raise ConversationFailed("WORK-REQUEST answered with the bye")
        self.conversation.asked.append(TERMINATE if isinstance(message, Backoff) and message.terminate
                                       else message.service)
        return message

    def _response(self, service: str, correlator: str) -> bytes:
        device = self.device
        fields: dict[str, Any] = {}
        if service == "device-info":
            fields["device_info"] = device.info()
        elif service == "cli-config":
            fields["cli_results"] = tuple(CliResult(n, line, True) for n, line in enumerate(POST_LINES, 1))
        elif service == "cli-exec":
            fields["exec_output"] = WRITE_MEMORY_OUTPUT
        return encode(WorkResponse(udi=device.udi, service=service, correlator=correlator, success=True, **fields))

    def _exchange(self, kind: str, method: str, path: str, body: bytes | None = None) -> bytes:
        self._digest.update(b"%s %s\n%s\n" % (method.encode(), path.encode(), body or b""))
        status, data = self._timed(kind, method, self.base_url + path, body)
        if status != 200:
            raise ConversationFailed(f"{kind} answered {status}: {data[:200].decode(errors='replace').strip()}")
        return data

    def _download(self, location: str) -> None:
        self._digest.update(b"GET the configuration\n")  # each server names its own URL
        status, _ = self._timed("config download", "GET", location, None)
        if status != 200:
            raise ConversationFailed(f"config download {location} answered {status}")

    def _timed(self, kind: str, method: str, url: str, body: bytes | None) -> tuple[int, bytes]:
        headers = XML_HEADERS if body is not None else None
        started = time.perf_counter()
        answer = self.http.request(method, url, body=body, headers=headers)
        self.conversation.latencies.setdefault(kind, []).append(time.perf_counter() - started)
        return answer


@dataclass
class Round:
    """One server's share of one round: every conversation, the wall time and the CPU it cost (seconds)."""

    server: str
    number: int
    conversations: list[Conversation]
    seconds: float
    server_cpu: float | None  # None when the server's processes are not known
    client_cpu: float
    rest_cpu: float | None = None  # the node's processes other than gunicorn (pnpp run, Prime, embedded broker)

    @property
    def requests(self) -> int:
        return sum(len(v) for c in self.conversations for v in c.latencies.values())

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds > 0 else 0.0

    @property
    def failed(self) -> list[Conversation]:
        return [c for c in self.conversations if not c.complete]

    def latencies(self, kind: str | None = None) -> list[float]:
        return [s for c in self.conversations for k, v in c.latencies.items() if kind in (None, k) for s in v]

    def p_ms(self, fraction: float, kind: str | None = None) -> float:
        return percentile(self.latencies(kind), fraction) * 1000

    def per_request_ms(self, seconds: float | None) -> float | None:
        return None if seconds is None else 1000 * seconds / max(1, self.requests)

    @property
    def digest(self) -> str:
        return hashlib.sha256("".join(c.requests_digest for c in self.conversations).encode()).hexdigest()


CpuReading = Callable[[], float]


def play_script(server: str, number: int, url: str, serials: list[str], *, concurrency: int, ends_day0: bool,
                timeout: float, server_cpu: CpuReading | None = None, rest_cpu: CpuReading | None = None) -> Round:
    """One round of scripted conversations against one server, a new connection per request."""

    def play(serial: str) -> Conversation:
        device = SimulatedDevice(serial=serial, pid=PID)
        return ScriptedAgent(device, url, ends_day0=ends_day0, http=OneRequestPerConnection(None, timeout)).run()

    server_before = server_cpu() if server_cpu else 0.0
    rest_before = rest_cpu() if rest_cpu else 0.0
    client_before = time.process_time()
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=max(1, min(concurrency, len(serials))), thread_name_prefix="pnp-agent") as pool:
        conversations = list(pool.map(play, serials))
    seconds = time.monotonic() - started
    client = time.process_time() - client_before
    return Round(server, number, conversations, seconds, server_cpu() - server_before if server_cpu else None,
                 client, rest_cpu() - rest_before if rest_cpu else None)


# ---- the table of --peer mode -------------------------------------------------------------------------------------
def _ms(value: float) -> str:
    return f"{value:.1f}" if value < 10 else f"{value:.0f}"


def _span(values: list[float], show: Callable[[float], str] = lambda v: f"{v:.0f}") -> str:
    """The range of ``values`` over the rounds, as people read it: ``458-463``, or one value when they agree."""
    if not values:
        return "n/a"
    lo, hi = show(min(values)), show(max(values))
    return lo if lo == hi else f"{lo}-{hi}"


def _cpu(value: float) -> str:
    return f"{value:.2f}"


def _ratio(value: float) -> str:
    return f"{value:.2f}"


def round_line(result: Round) -> str:
    """One server's round in a line, printed as it ends."""
    server_cpu = result.per_request_ms(result.server_cpu)
    return (f"  {result.server} round {result.number}: {result.requests} requests in {result.seconds:.1f}s, "
            f"{result.rate:.0f}/s, p50 {_ms(result.p_ms(0.5))} ms, p99 {_ms(result.p_ms(0.99))} ms, server CPU "
            f"{'n/a' if server_cpu is None else _cpu(server_cpu)} ms/request, client CPU "
            f"{_cpu(result.per_request_ms(result.client_cpu) or 0.0)} ms/request, {len(result.failed)} failed")


def format_side_by_side(ours: list[Round], peer: list[Round]) -> str:
    """The table: each measure's range over the rounds for both servers, and the range of the ratios ours/peer
    (each round of ours against the peer's round that followed it)."""
    pairs = list(zip(ours, peer, strict=True))
    rows: list[tuple[str, str, str, str]] = []

    def ratios(mine: Callable[[Round], float | None]) -> str:
        values = []
        for m, t in pairs:
            a, b = mine(m), mine(t)
            if a is not None and b:
                values.append(a / b)
        return _span(values, _ratio)

    rows.append(("requests/s", _span([r.rate for r in ours]), _span([r.rate for r in peer]),
                 ratios(lambda r: r.rate)))
    for kind in (*KINDS, None):
        label = f"{kind or 'all requests'} p50/p99 ms"
        cells = [f"{_span([r.p_ms(0.5, kind) for r in rs], _ms)} / {_span([r.p_ms(0.99, kind) for r in rs], _ms)}"
                 for rs in (ours, peer)]
        rows.append((label, *cells, f"p99 {ratios(lambda r, k=kind: r.p_ms(0.99, k))}"))

    def cpu_row(label: str, reading: Callable[[Round], float | None]) -> tuple[str, str, str, str]:
        cells = []
        for rs in (ours, peer):
            known = [v for v in (r.per_request_ms(reading(r)) for r in rs) if v is not None]
            cells.append(_span(known, _cpu) if known else "n/a")
        return (label, *cells, ratios(lambda r: r.per_request_ms(reading(r))))

    rows.append(cpu_row("server CPU ms/request", lambda r: r.server_cpu))
    rows.append(cpu_row("client CPU ms/request", lambda r: r.client_cpu))
    if any(r.rest_cpu is not None for r in ours):
        rest = [v for v in (r.per_request_ms(r.rest_cpu) for r in ours) if v is not None]
        rows.append(("rest of the node CPU ms/request", _span(rest, _cpu), "-", ""))
    rows.append(("complete conversations",
                 *(_span([float(len(r.conversations) - len(r.failed)) for r in rs]) + f" of {len(rs[0].conversations)}"
                   for rs in (ours, peer)), ""))
    header = (f"over {len(ours)} round{'s' if len(ours) != 1 else ''}", "ours", "peer", "ours/peer")
    widths = [max(len(row[n]) for row in (header, *rows)) + 3 for n in range(4)]
    return "\n".join("".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
                     for row in (header, *rows))


def describe_asks(rounds: list[Round]) -> str:
    """What the server answered the WORK-REQUESTs of a conversation with, most common sequences first."""
    sequences = Counter(" > ".join(c.asked) for r in rounds for c in r.conversations if c.complete)
    return "; ".join(f"{sequence} ({count})" for sequence, count in sequences.most_common(3)) or "nothing complete"


def describe_failures(rounds: list[Round], limit: int = 5) -> list[str]:
    failed = [(r, c) for r in rounds for c in r.failed]
    reasons = Counter(c.reason for _r, c in failed)
    return [f"  {count} x {reason}" for reason, count in reasons.most_common(limit)]


def peer_main(args: argparse.Namespace) -> int:
    """``--peer``: the scripted conversation against ours and the peer, alternating, then the table."""
    concurrency = args.concurrency or PEER_AGENTS
    devices = args.devices or PEER_DEVICES
    # Serials unique to this run, so a running node (--url) meets new devices; the same serials go to both servers.
    tag = f"B{int(time.time()) % 100000:05d}"
    warmup = [f"{tag}W{n:05d}" for n in range(args.warmup)]
    rounds = [[f"{tag}R{r}N{n:05d}" for n in range(devices)] for r in range(1, args.rounds + 1)]
    peer_port = urlsplit(args.peer).port or 80
    peer_pids = [args.peer_pid] if args.peer_pid else listening_pids(peer_port)
    written: list[Path] = []
    if args.peer_configs:
        for serial in warmup + [s for serials in rounds for s in serials]:
            path = args.peer_configs / f"{serial}.cfg"
            path.write_text(CONFIG.replace("{{ serial }}", serial))
            written.append(path)

    node = None
    with tempfile.TemporaryDirectory(prefix="pnp-bench-") as tmp:
        try:
            rest_cpu: CpuReading | None = None
            if args.url:
                url = args.url
                ours_pids = listening_pids(urlsplit(url).port or 80)

                def ours_cpu() -> float:
                    return sum(cpu_seconds(pid) for pid in ours_pids)
                where = f"pids {', '.join(map(str, ours_pids)) or 'not found'}"
            else:
                node = start_bench_node(Path(tmp), args.workers, 0, args.database_url)
                url = node.url("")
                root = node.process.pid

                def ours_cpu() -> float:
                    return gateway_cpu_seconds(root)

                def rest_cpu() -> float:
                    gateway = set(gateway_pids(root))
                    return sum(cpu_seconds(pid) for pid in process_tree(root) if pid not in gateway)
                database = urlsplit(args.database_url).scheme if args.database_url else "SQLite"
                where = (f"{args.workers} workers, {database}, gunicorn pids "
                         f"{', '.join(map(str, gateway_pids(root)))}")

            def peer_cpu() -> float:
                return sum(cpu_seconds(pid) for pid in peer_pids)

            print(f"Open PnP side by side: {concurrency} agents, a new TCP connection per request, {devices} "
                  f"conversations of {2 + 2 * len(DAY0_SERVICES) + 1} requests a round, {args.rounds} rounds each "
                  f"(ours, peer, ours, peer ...), {args.warmup} warm-up conversations each")
            print(f"ours: {url} ({where})")
            print(f"peer: {args.peer} (pids {', '.join(map(str, peer_pids)) or 'not found: no server CPU'})",
                  flush=True)
            options: dict[str, Any] = {"concurrency": concurrency, "timeout": args.timeout}
            if warmup:
                play_script("ours", 0, url, warmup, ends_day0=True, **options)
                play_script("peer", 0, args.peer, warmup, ends_day0=False, **options)
            ours: list[Round] = []
            peer: list[Round] = []
            for number, serials in enumerate(rounds, 1):
                ours.append(play_script("ours", number, url, serials, ends_day0=True, server_cpu=ours_cpu,
                                        rest_cpu=rest_cpu, **options))
                print(round_line(ours[-1]), flush=True)
                peer.append(play_script("peer", number, args.peer, serials, ends_day0=False,
                                        server_cpu=peer_cpu if peer_pids else None, **options))
                print(round_line(peer[-1]), flush=True)
            print()
            print(format_side_by_side(ours, peer))
            print()
            same = all(m.digest == t.digest for m, t in zip(ours, peer, strict=True))
            print(f"identical requests to both servers (configuration URL excepted): {'yes' if same else 'NO'}")
            print(f"ours answered the WORK-REQUESTs with: {describe_asks(ours)}")
            print(f"peer answered the WORK-REQUESTs with: {describe_asks(peer)}")
            for server, results in (("ours", ours), ("peer", peer)):
                failures = describe_failures(results)
                if failures:
                    print(f"{server}: failed conversations:", *failures, sep="\n")
            return 0 if same and not any(r.failed for r in ours + peer) else 1
        finally:
            if node is not None:
                node.stop()
                if args.node_log:
                    shutil.copyfile(node.log_path, args.node_log)
            for path in written:
                path.unlink(missing_ok=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=None,
                        help=f"agents (default 500; with --peer, {PEER_DEVICES} conversations a round)")
    parser.add_argument("--concurrency", type=int, default=None,
                        help=f"agents at a time (default: all of them; with --peer, {PEER_AGENTS})")
    parser.add_argument("--workers", type=int, default=2, help="gevent workers of the node it starts")
    parser.add_argument("--https", action="store_true", help="talk HTTPS (trusting the node's CA)")
    parser.add_argument("--image-kib", type=int, default=0, help="add an image of this size to the profile")
    parser.add_argument("--url", default=None, help="benchmark a running node instead of starting one")
    parser.add_argument("--node-log", type=Path, default=None, help="keep the started node's log in this file")
    parser.add_argument("--database-url", default=os.environ.get("PNP_DATABASE_URL"),
                        help="an empty database for the started node (default: PNP_DATABASE_URL, else SQLite)")
    parser.add_argument("--new-connection-per-request", action="store_true",
                        help="open a TCP connection for every request and close it after the answer")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds an agent waits for an answer")
    parser.add_argument("--peer", default=None, metavar="URL",
                        help="run the same client against the Open PnP server at URL too, alternating, and compare")
    parser.add_argument("--peer-pid", type=int, default=None,
                        help="the peer's process, for its CPU (default: the processes listening on its port)")
    parser.add_argument("--peer-configs", type=Path, default=None, metavar="DIR",
                        help="the directory the peer serves configurations from: <serial>.cfg written for each "
                             "simulated device, removed afterwards")
    parser.add_argument("--rounds", type=int, default=3, help="with --peer: rounds against each server")
    parser.add_argument("--warmup", type=int, default=PEER_AGENTS,
                        help="with --peer: untimed conversations with each server first")
    args = parser.parse_args()
    if args.peer:
        if args.https or args.image_kib:
            parser.error("--peer compares the plain-HTTP conversation of the docstring: no --https, no --image-kib")
        return peer_main(args)
    devices_wanted = args.devices or 500

    node = None
    context = None
    with tempfile.TemporaryDirectory(prefix="pnp-bench-") as tmp:
        if args.url:
            url = args.url
        else:
            node = start_bench_node(Path(tmp), args.workers, args.image_kib, args.database_url)
            url = node.url("", tls=args.https)
            if args.https:
                context = node.client_context()
        try:
            devices = [SimulatedDevice(serial=f"BENCH{n:06d}", pid=PID) for n in range(devices_wanted)]
            concurrency = args.concurrency or devices_wanted
            connections = "a new connection per request" if args.new_connection_per_request else "keep-alive"
            print(f"{devices_wanted} agents, {concurrency} at a time, {connections}, against {url}"
                  f"{f' ({args.workers} workers)' if node else ''}", flush=True)
            started = time.monotonic()
            node_cpu = gateway_cpu_seconds(node.process.pid) if node is not None else 0.0
            own_cpu = time.process_time()
            reports = play_agents(devices, url, context=context, concurrency=concurrency,
                                  new_connection=args.new_connection_per_request, timeout=args.timeout)
            elapsed = time.monotonic() - started
            print(format_reports(reports, elapsed))
            requests = sum(len(v) for r in reports for v in r.latencies.values())
            conversations = max(1, sum(1 for r in reports if r.outcome == PROVISIONED))
            print(f"\n{requests / len(reports):.1f} requests per device, {requests / elapsed:.0f} requests/s; "
                  f"bench client CPU {1000 * (time.process_time() - own_cpu) / len(reports):.1f} ms per device")
            if node is not None:
                used = gateway_cpu_seconds(node.process.pid) - node_cpu
                print(f"gateway CPU {used:.1f}s: {1000 * used / conversations:.1f} ms per conversation, "
                      f"{1000 * used / max(1, requests):.2f} ms per request; at that cost {os.cpu_count()} cores "
                      f"serve at most {(os.cpu_count() or 1) * conversations / max(used, 1e-9):.0f} conversations/s")
            return 0 if all(r.outcome == PROVISIONED for r in reports) else 1
        finally:
            if node is not None:
                node.stop()
                if args.node_log:
                    shutil.copyfile(node.log_path, args.node_log)


if __name__ == "__main__":
    sys.exit(main())

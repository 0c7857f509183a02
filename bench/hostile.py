"""Hostile-input and fault campaign: a real node attacked the way anybody on a provisioning network can, by family.

    python bench/hostile.py                                 # every family, 4 to 9 minutes on 2 shared cores
    python bench/hostile.py --families tls,xml,paths        # some of them
    python bench/hostile.py --fuzz-frames 20000 --devices 300 --kills 5

It starts a node (``pnpp run``: default settings, private ports, its own data directory under a temporary
directory) and, for the configuration-URL family, a second one with ``PNP_CONFIG_URL_TOKENS=true``. Every attack
goes to 127.0.0.1. It then prints one table, a row per family:

- ATTEMPTS: hostile requests, frames, handshakes or connections sent;
- EXPECTED: answered with the refusal the documentation promises (status code, alert, ERROR frame, BUSY ...);
- UNEXPECTED: any other answer (the lines under the table say which, with an example);
- HANGS: no answer and no close within ``--hang-seconds`` (10 s), or a slow client still held past its bound;
- DEATHS: gunicorn workers that died during the family ("Worker ... exited/was sent" lines, pids gone), not
  counting the ones the fault family kills on purpose;
- TRACEBACKS: "Traceback" lines the node logged during the family;
- LEAKED: an answer holding text of a file the node must not serve (/etc/passwd, its secrets and keys, a planted
  file), a connection the node made to an address named in hostile XML, or a broker message past a grant;
- LOST: where the family measures it: devices not provisioned, receipted CNS messages not stored ("-": not measured).

ATTEMPTS = EXPECTED + UNEXPECTED + HANGS in every row. Families:

 1. tls: hand-built SSLv2 and SSLv3 hellos, TLS 1.0 and 1.1 handshakes on every TLS port: refused.
 2. xml: entity bombs, external entities and DTDs, XInclude, odd encodings, truncated and junk documents on
    /pnp/WORK-REQUEST, /pnp/WORK-RESPONSE and /cns/HttpMsgDispatcher, HTTP and HTTPS: 400, nothing leaked.
 3. paths: traversal in many encodings on /images/, /resources/ and the REST API's images: nothing outside served.
 4. framing: ambiguous HTTP framings, oversized bodies (a 10 GB Content-Length, 2 MiB chunked): 400/413, no hang.
 5. slow: slowloris on HTTP and HTTPS (silent, and trickling a header byte at a time): closed, nothing held.
 6. cns-fuzz: random mutations of valid HELLO/SUBSCRIBE/PUBLISH frames (the project's CNS-W1 codec) on the plain
    CNS ports: malformed frames get ERROR 4xx, nothing crashes or hangs.
 7. cns-flood: PUBLISH floods past the per-session budget (count and octets): ERROR 413, nothing stored beyond it.
 8. broker: STOMP CONNECT without or with wrong logins, frames before CONNECT, and each party's valid login
    reaching for the other party's queues: refused, nothing delivered.
 9. control: the REST API without, with a wrong, revoked or read-only token; the console without sign-in: 401/403.
10. status: hundreds of /status and /metrics readers while devices provision: 200 or 503, devices unaffected.
11. config-urls (the second node): config.asp without a token, with a forged one or another device's: 403, and no
    device row created.
12. faults: SIGKILL of a gunicorn worker, several times, while simulated devices provision: all of them finish.

The client runs on the node's cores, so wall times are only indicative; counts are what the campaign is about.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import http.client
import json
import os
import random
import re
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import uuid
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pnp_integrated.cns.codec import (  # noqa: E402
    ALL_COMMANDS,
    CLOSED,
    DEVICE_COMMANDS,
    GATEWAY_COMMANDS,
    NEED_DATA,
    CnsProtocolError,
    Frame,
    FrameReader,
    make_frame,
    serialize,
)
from pnp_integrated.cns.messages import CONFIG_LOAD, EXEC_CMD  # noqa: E402
from pnp_integrated.config import Settings  # noqa: E402
from pnp_integrated.destinations import COMMANDS_QUEUE, DLQ, EVENTS_QUEUE  # noqa: E402
from pnp_integrated.devsim import percentile  # noqa: E402
from pnp_integrated.devsim.cns import CnsDevice, DeviceReport  # noqa: E402
from pnp_integrated.devsim.link import CnsLink, hello_frame  # noqa: E402
from pnp_integrated.devsim.node import PNPP, NodeDidNotStart, RunningNode, start_node  # noqa: E402
from pnp_integrated.devsim.pnp import PROVISIONED, PnpAgent, SimulatedDevice  # noqa: E402
from pnp_integrated.pnp.messages import (  # noqa: E402
    ConfigUpgradeRequest,
    DeviceInfo,
    Udi,
    WorkRequest,
    WorkResponse,
    encode,
    parse_server_message,
)
from pnp_integrated.prime.stomp import Frame as StompFrame  # noqa: E402
from pnp_integrated.prime.stomp import FrameParser, Limits, encode_frame  # noqa: E402
from pnp_integrated.prime.stomp import make_frame as stomp_frame  # noqa: E402

HOST = "127.0.0.1"
PNP_PID = "C9300-24U"  # the PID the campaign's Open PnP profile claims; hostile documents use another
EVENTS, COMMANDS = EVENTS_QUEUE, COMMANDS_QUEUE

EXPECTED, UNEXPECTED, HANG = "expected", "unexpected", "hang"


# ---- the table ------------------------------------------------------------------------------------------------------
@dataclass
class Row:
    """What one family did and what the node answered."""

    family: str
    attempts: int = 0
    expected: int = 0
    unexpected: int = 0
    hangs: int = 0
    leaked: int = 0
    deaths: int = 0
    tracebacks: int = 0
    lost: int | None = None
    seconds: float = 0.0
    problems: Counter[str] = field(default_factory=Counter)  # what was unexpected, by kind (an example each)
    notes: list[str] = field(default_factory=list)
    killed: set[int] = field(default_factory=set)  # worker pids this family killed on purpose
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def tally(self, verdict: str, problem: str = "", *, leak: bool = False) -> None:
        """Count one attempt; ``problem`` says what was wrong (unexpected, hang or leak)."""
        with self._lock:
            self.attempts += 1
            if verdict == EXPECTED:
                self.expected += 1
            elif verdict == HANG:
                self.hangs += 1
            else:
                self.unexpected += 1
            if leak:
                self.leaked += 1
            if verdict != EXPECTED or leak:
                self.problems[problem[:160]] += 1

    def note(self, text: str) -> None:
        with self._lock:
            self.notes.append(text)


COLUMNS = ("FAMILY", "ATTEMPTS", "EXPECTED", "UNEXPECTED", "HANGS", "DEATHS", "TRACEBACKS", "LEAKED", "LOST")


def print_table(rows: list[Row]) -> None:
    widths = [max(len(COLUMNS[0]), *(len(r.family) for r in rows))] + [len(c) for c in COLUMNS[1:]]
    cells = [[r.family, str(r.attempts), str(r.expected), str(r.unexpected), str(r.hangs), str(r.deaths),
              str(r.tracebacks), str(r.leaked), "-" if r.lost is None else str(r.lost)] for r in rows]
    print()
    print("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(COLUMNS, widths,
                                                                                        strict=True))))
    for line in cells:
        print("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths,
                                                                                             strict=True))))
    total = Row("total")
    for r in rows:
        for name in ("attempts", "expected", "unexpected", "hangs", "deaths", "tracebacks", "leaked"):
            setattr(total, name, getattr(total, name) + getattr(r, name))
    print("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(
        [total.family, *(str(getattr(total, n)) for n in ("attempts", "expected", "unexpected", "hangs", "deaths",
                                                           "tracebacks", "leaked")), ""], widths, strict=True))))
    print()
    for r in rows:
        print(f"{r.family} ({r.seconds:.0f} s):")
        for text in r.notes:
            print(f"  {text}")
        for problem, count in r.problems.most_common(8):
            print(f"  {count} x {problem}")


# ---- the node and what it logs ----------------------------------------------------------------------------------
WORKER_DIED = re.compile(r"Worker \(pid:(\d+)\) (?:exited|was sent)|WORKER TIMEOUT \(pid:(\d+)\)")


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


class Target:
    """A node under attack: its ports, its log, its worker processes and an admin token for the REST API."""

    def __init__(self, node: RunningNode, hang_seconds: float) -> None:
        self.node = node
        self.hang = hang_seconds
        self.context = node.client_context()
        self.admin = self.pnpp("token", "create", "--role", "admin", "--name", "hostile-campaign")
        self.reader = self.pnpp("token", "create", "--role", "read", "--name", "hostile-reader")

    def pnpp(self, *args: str) -> str:
        """Run ``pnpp`` against this node (its settings); its standard output, stripped."""
        done = subprocess.run([PNPP, *args], env=self.node.env, capture_output=True, text=True, timeout=120,
                              check=False)
        if done.returncode != 0:
            raise SystemExit(f"pnpp {' '.join(args)} failed: {done.stderr.strip()}")
        return done.stdout.strip()

    @property
    def data_dir(self) -> Path:
        return self.node.data_dir

    def port(self, name: str) -> int:
        return self.node.port(name)

    @property
    def http_ports(self) -> dict[str, tuple[int, bool]]:
        """The ports that serve the application: (port, TLS) by name."""
        return {"http": (self.port("http_port"), False), "https": (self.port("https_port"), True),
                "monitoring": (self.port("cns_port_base"), True)}

    @property
    def plain_cns_ports(self) -> list[int]:
        base = self.port("cns_port_base")
        return [base + 1, *range(base + 3, base + 13, 2)]  # the plain dispatcher and the 5 plain gateway ports

    def workers(self) -> set[int]:
        """Pids of the gunicorn workers (children of the gunicorn master under ``pnpp run``)."""
        masters = [p for p in _children(self.node.process.pid) if b"gunicorn" in _cmdline(p)]
        return {w for m in masters for w in _children(m)}

    def wait_for_workers(self, count: int, timeout: float = 60.0) -> set[int]:
        deadline = time.monotonic() + timeout
        while True:
            pids = self.workers()
            if len(pids) >= count or time.monotonic() > deadline:
                return pids
            time.sleep(0.2)

    @contextlib.contextmanager
    def watching(self, row: Row) -> Iterator[None]:
        """Count what the node logged and which workers died while the family ran."""
        offset = len(self.node.log_text())
        before = self.workers()
        started = time.monotonic()
        try:
            yield
        finally:
            time.sleep(1.0)  # lines of the family's last attempts reach the log
            row.seconds = time.monotonic() - started
            text = self.node.log_text()[offset:]
            row.tracebacks = text.count("Traceback")
            died = {int(a or b) for a, b in WORKER_DIED.findall(text)}
            died |= before - self.workers()
            row.deaths = len(died - row.killed)
            if row.tracebacks:
                lines = text[text.index("Traceback"):].splitlines()[1:]
                end = next((i for i, line in enumerate(lines) if not line.startswith(" ")), len(lines) - 1)
                frames = [line.strip() for line in lines[:end] if line.strip().startswith("File ")]
                row.note(f"first traceback: {frames[-1] if frames else ''} | {lines[end].strip() if lines else ''}")

    def api(self, method: str, path: str, body: Any = None, token: str | None = None) -> tuple[int, Any]:
        """A REST API call on the HTTP port with the admin token (or ``token``); (status, decoded JSON)."""
        data = json.dumps(body).encode() if body is not None else None
        conn = http.client.HTTPConnection(HOST, self.port("http_port"), timeout=30)
        try:
            conn.request(method, path, body=data, headers={"Authorization": f"Bearer {token or self.admin}",
                                                           "Content-Type": "application/json"})
            resp = conn.getresponse()
            raw = resp.read()
            return resp.status, json.loads(raw) if raw.strip().startswith((b"{", b"[")) else raw
        finally:
            conn.close()

    def app(self) -> Any:
        """An application on the node's database, to read what it stored."""
        from pnp_integrated import create_app

        return create_app({**self.node.settings, "TESTING": True})


@dataclass
class Answer:
    """What an HTTP(S) server answered one raw request: ``status`` None when it closed or reset without one."""

    status: int | None = None
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    hung: bool = False
    error: str = ""


def connect(port: int, tls: bool, target: Target, timeout: float | None = None,
            source: str | None = None) -> socket.socket:
    sock = socket.create_connection((HOST, port), timeout=timeout or target.hang,
                                    source_address=(source, 0) if source else None)
    if tls:
        try:
            return target.context.wrap_socket(sock)
        except BaseException:
            sock.close()
            raise
    return sock


def exchange(target: Target, port: int, tls: bool, raw: bytes, method: str = "GET") -> Answer:
    """Send ``raw`` on a new connection and read the first response, within the hang bound."""
    try:
        sock = connect(port, tls, target)
    except TimeoutError:
        return Answer(hung=True, error="no TLS handshake")
    except (OSError, ssl.SSLError) as exc:
        return Answer(error=f"connect: {type(exc).__name__}")
    with sock:
        try:
            sock.sendall(raw)
        except (OSError, ssl.SSLError) as exc:
            # The server may answer and close before a long request is all sent: read what it said.
            if not isinstance(exc, (BrokenPipeError, ConnectionResetError)):
                return Answer(error=f"send: {type(exc).__name__}")
        response = http.client.HTTPResponse(sock, method=method)  # type: ignore[arg-type]
        try:
            response.begin()
            body = response.read()
        except TimeoutError:
            return Answer(hung=True, error="no answer")
        except (OSError, ssl.SSLError, http.client.HTTPException) as exc:
            return Answer(error=type(exc).__name__)
        return Answer(response.status, body, {k.lower(): v for k, v in response.getheaders()})


def request(method: str, path: str, headers: dict[str, str] | None = None, body: bytes = b"",
            length: bool = True) -> bytes:
    """The bytes of a simple HTTP/1.1 request (Host, Connection: close, and Content-Length unless told not)."""
    lines = [f"{method} {path} HTTP/1.1", "Host: gateway", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    if length and (body or method in ("POST", "PUT")):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


class Secrets:
    """Text the node must never hand out, and a listener that notices a fetch of a URL named in hostile XML."""

    def __init__(self, target: Target) -> None:
        data = target.data_dir
        self.planted = f"HOSTILE-PLANTED-{uuid.uuid4().hex}"
        (data / "hostile-outside.txt").write_text(self.planted + "\n")  # beside, not inside, what is served
        self.markers = [self.planted.encode(), b"PRIVATE KEY", b"SQLite format 3"]
        self.markers += [line.encode() for line in Path("/etc/passwd").read_text().splitlines()
                         if line.count(":") >= 6][:5]
        for path in (data / "secrets" / "broker-credentials.json", data / "prime" / "secrets" / "prime-passcode"):
            with contextlib.suppress(OSError, ValueError):
                text = path.read_text()
                self.markers.append((json.loads(text)["passcode"] if text.startswith("{") else text.strip()).encode())
        self.markers.append(target.admin.encode())
        self.fetches = 0
        self._listener = socket.create_server((HOST, 0))
        self.canary = f"http://{HOST}:{self._listener.getsockname()[1]}"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            self.fetches += 1
            conn.close()

    def leak_in(self, body: bytes) -> bytes | None:
        return next((m for m in self.markers if m and m in body), None)


# ---- 1. TLS ---------------------------------------------------------------------------------------------------------
def sslv2_hello() -> bytes:
    """An SSL 2.0 CLIENT-HELLO (2-byte record header with the high bit set), offering SSL 2.0 cipher kinds only."""
    kinds = bytes.fromhex("010080" "020080" "030080" "040080" "060040" "0700c0")
    challenge = os.urandom(16)
    body = (b"\x01\x00\x02" + len(kinds).to_bytes(2, "big") + b"\x00\x00" + len(challenge).to_bytes(2, "big")
            + kinds + challenge)
    return (0x8000 | len(body)).to_bytes(2, "big") + body


def sslv3_hello() -> bytes:
    """A ClientHello offering SSL 3.0 only, in the record and in the hello (no library can still build one)."""
    version = b"\x03\x00"
    suites = bytes.fromhex("c009c00ac013c014002f0035000a00ff")
    extensions = bytes.fromhex("000a000400020017" "000b00020100")  # P-256 and uncompressed points, for ECDHE
    hello = (version + os.urandom(32) + b"\x00" + len(suites).to_bytes(2, "big") + suites + b"\x01\x00"
             + len(extensions).to_bytes(2, "big") + extensions)
    handshake = b"\x01" + len(hello).to_bytes(3, "big") + hello
    return b"\x16" + version + len(handshake).to_bytes(2, "big") + handshake


def offer_only(version: ssl.TLSVersion, target: Target) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(str(target.node.ca_file))
    context.check_hostname = False
    context.set_ciphers("DEFAULT:@SECLEVEL=0")  # OpenSSL 3 offers TLS 1.0/1.1 only at security level 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        context.minimum_version = context.maximum_version = version
    return context


def handshake(target: Target, port: int, context: ssl.SSLContext) -> str:
    """The negotiated version, ``refused`` or ``hang``."""
    try:
        with socket.create_connection((HOST, port), timeout=target.hang) as raw, context.wrap_socket(raw) as tls:
            return tls.version() or "?"
    except TimeoutError:
        return "hang"
    except (ssl.SSLError, ConnectionError):
        return "refused"


def hand_built(target: Target, port: int, hello: bytes) -> str:
    """What the server sends back to a hand-built hello: ``alert``, ``closed``, ``server-hello`` or ``hang``."""
    with socket.create_connection((HOST, port), timeout=target.hang) as sock:
        sock.sendall(hello)
        try:
            first = sock.recv(5)
        except TimeoutError:
            return "hang"
        except ConnectionError:
            return "closed"
    return {b"": "closed", b"\x15": "alert", b"\x16": "server-hello"}.get(first[:1], f"bytes {first[:5]!r}")


def family_tls(target: Target, rounds: int) -> Row:
    row = Row("tls: SSLv2/SSLv3/TLS 1.0/1.1")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        old = {"TLS 1.0": ssl.TLSVersion.TLSv1, "TLS 1.1": ssl.TLSVersion.TLSv1_1}
    contexts = {name: offer_only(version, target) for name, version in old.items()}
    # The gateway's TLS ports, and those of the node's own simulated Prime (broker, health monitor).
    ports = {**target.node.tls_ports(), "Prime broker": target.port("broker_port"),
             "Prime health": target.port("health_port")}
    with target.watching(row):
        control = {role: handshake(target, port, offer_only(ssl.TLSVersion.TLSv1_2, target))
                   for role, port in ports.items()}
        row.note(f"control: TLS 1.2 negotiated on {sum(v == 'TLSv1.2' for v in control.values())} of "
                 f"{len(ports)} TLS ports ({', '.join(ports)})")
        for _ in range(rounds):
            for role, port in ports.items():
                for name, hello in (("SSLv2", sslv2_hello()), ("SSLv3", sslv3_hello())):
                    got = hand_built(target, port, hello)
                    row.tally(HANG if got == "hang" else EXPECTED if got in ("alert", "closed") else UNEXPECTED,
                              f"{name} on {role}: {got}")
                for name, context in contexts.items():
                    got = handshake(target, port, context)
                    row.tally(HANG if got == "hang" else EXPECTED if got == "refused" else UNEXPECTED,
                              f"{name} on {role}: negotiated {got}")
    return row


# ---- 2. XML ---------------------------------------------------------------------------------------------------------
MARK = "HOSTILEXML1"  # the serial in the valid documents; payloads put their entity references in its place


def valid_documents() -> dict[str, bytes]:
    """A valid message for each XML endpoint, from the project's Open PnP codec (and the image agent's format)."""
    udi = Udi("ISR4451-X/K9", "V01", MARK)  # a PID no profile of the campaign claims
    return {
        "/pnp/WORK-REQUEST": encode(WorkRequest(udi, "CiscoPnP-1.0-1", hostname="Router")),
        "/pnp/WORK-RESPONSE": encode(WorkResponse(udi, "device-info", "CiscoPnP-1.0-2", True,
                                                  device_info=DeviceInfo(version="17.3.4a"))),
        "/cns/HttpMsgDispatcher": (f'<?xml version="1.0" encoding="UTF-8"?><image-inventory device-id="{MARK}">'
                                   f'<image name="c1100.bin" version="16.9.1" md5=""/>'
                                   f'<filesystem name="flash:" free="1000000"/></image-inventory>').encode(),
    }


def _root_of(document: bytes) -> str:
    start = document.index(b"<", document.index(b"?>") + 2 if document.startswith(b"<?xml") else 0)
    return document[start + 1:].split(b" ", 1)[0].split(b">", 1)[0].decode()


def _with_doctype(document: bytes, doctype: str, reference: str) -> bytes:
    """``document`` with ``doctype`` after its XML declaration and ``reference`` where the serial was."""
    text = document.decode()
    body = text.split("?>", 1)[1] if text.startswith("<?xml") else text
    return ('<?xml version="1.0" encoding="UTF-8"?>' + doctype.replace("ROOT", _root_of(document))
            + body.replace(MARK, reference)).encode()


def xml_payloads(document: bytes, secrets: Secrets, data_dir: Path) -> list[tuple[str, bytes, bool]]:
    """(name, body, must be refused with 400) for one endpoint's valid ``document``."""
    canary = secrets.canary
    laughs = '<!ENTITY l0 "lol">' + "".join(f'<!ENTITY l{i} "{f"&l{i - 1};" * 10}">' for i in range(1, 10))
    text = document.decode()
    half = len(document) // 2
    payloads: list[tuple[str, bytes, bool]] = [
        ("billion laughs", _with_doctype(document, f"<!DOCTYPE ROOT [{laughs}]>", "&l9;"), True),
        ("quadratic blowup", _with_doctype(document, f'<!DOCTYPE ROOT [<!ENTITY a "{"x" * 40000}">]>',
                                           "&a;" * 20000), True),
        ("external entity file:///etc/passwd",
         _with_doctype(document, '<!DOCTYPE ROOT [<!ENTITY x SYSTEM "file:///etc/passwd">]>', "&x;"), True),
        ("external entity: the node's broker credentials",
         _with_doctype(document, f'<!DOCTYPE ROOT [<!ENTITY x SYSTEM "file://{data_dir}/secrets/'
                                 f'broker-credentials.json">]>', "&x;"), True),
        ("external entity: a planted file",
         _with_doctype(document, f'<!DOCTYPE ROOT [<!ENTITY x SYSTEM "file://{data_dir}/hostile-outside.txt">]>',
                       "&x;"), True),
        ("external entity /proc/self/environ",
         _with_doctype(document, '<!DOCTYPE ROOT [<!ENTITY x SYSTEM "file:///proc/self/environ">]>', "&x;"), True),
        ("external entity over http", _with_doctype(
            document, f'<!DOCTYPE ROOT [<!ENTITY x SYSTEM "{canary}/entity">]>', "&x;"), True),
        ("parameter entity over http", _with_doctype(
            document, f'<!DOCTYPE ROOT [<!ENTITY % p SYSTEM "{canary}/p.dtd"> %p;]>', MARK), True),
        ("external DTD (SYSTEM)", _with_doctype(document, f'<!DOCTYPE ROOT SYSTEM "{canary}/x.dtd">', MARK), True),
        ("external DTD (PUBLIC)", _with_doctype(
            document, f'<!DOCTYPE ROOT PUBLIC "-//X//Y//EN" "{canary}/y.dtd">', MARK), True),
        ("internal DTD, no entity", _with_doctype(document, "<!DOCTYPE ROOT [<!ELEMENT ROOT ANY>]>", MARK), True),
        ("bare DOCTYPE", _with_doctype(document, "<!DOCTYPE ROOT>", MARK), True),
        ("unknown encoding", document.replace(b'encoding="UTF-8"', b'encoding="x-bogus"', 1)
         if b'encoding="UTF-8"' in document else b'<?xml version="1.0" encoding="x-bogus"?>' + document, True),
        ("UTF-7 declared", re.sub(rb"^<\?xml[^>]*\?>", b'<?xml version="1.0" encoding="UTF-7"?>', document)
         .replace(MARK.encode(), b"+ADw-x+AD4-"), True),
        ("UTF-16 declared, UTF-8 bytes", re.sub(rb"^<\?xml[^>]*\?>", b'<?xml version="1.0" encoding="UTF-16"?>',
                                                document), True),
        ("truncated in the middle", document[:half], True),
        ("truncated after the first tag", document[:document.index(b">", document.index(b"?>") + 2) + 1], True),
        ("empty body", b"", True),
        ("random bytes", random.Random(3).randbytes(2000), True),
        ("NUL inside", document[:half] + b"\x00" + document[half:], True),
        ("20,000 nested elements", b"<a>" * 20000 + b"</a>" * 20000, True),
        # Well-formed documents that only name things to fetch: no fetch, no leak, whatever the answer.
        ("XInclude of /etc/passwd", text.replace(
            MARK, f'{MARK}<xi:include xmlns:xi="http://www.w3.org/2001/XInclude" href="file:///etc/passwd" '
                  'parse="text"/>', 1).encode(), False),
        ("xml-stylesheet over http", document.replace(
            b"?>", f'?><?xml-stylesheet type="text/xsl" href="{canary}/s.xsl"?>'.encode(), 1), False),
        ("schemaLocation over http", re.sub(
            rb"<(\w[\w-]*) ", f'<\\1 xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xsi:schemaLocation='
                              f'"urn:x {canary}/x.xsd" '.encode(), document, count=1), False),
        ("UTF-16 with BOM", text.replace('encoding="UTF-8"', 'encoding="UTF-16"').encode("utf-16"), False),
        ("10,000 attributes", document.replace(f"<{_root_of(document)} ".encode(), (
            f"<{_root_of(document)} " + " ".join(f'a{i}="v"' for i in range(10000)) + " ").encode(), 1), False),
    ]
    return payloads


def family_xml(target: Target, secrets: Secrets) -> Row:
    row = Row("xml: bombs, XXE, DTDs, encodings")
    documents = valid_documents()
    with target.watching(row):
        controls = []
        for path, document in documents.items():
            answer = exchange(target, target.port("http_port"), False, request(
                "POST", path, {"Content-Type": "text/xml"}, document), "POST")
            controls.append(f"{path} {answer.status}")
        row.note("control: the valid documents answered " + ", ".join(controls))
        fetches = secrets.fetches
        for transport, tls in (("http", False), ("https", True)):
            port = target.port("https_port" if tls else "http_port")
            for path, document in documents.items():
                for name, body, refuse in xml_payloads(document, secrets, target.data_dir):
                    answer = exchange(target, port, tls, request("POST", path, {"Content-Type": "text/xml"}, body),
                                      "POST")
                    leak = secrets.leak_in(answer.body)
                    if answer.hung:
                        row.tally(HANG, f"{name} on {path} ({transport}): no answer")
                    elif leak is not None:
                        row.tally(UNEXPECTED, f"{name} on {path} ({transport}): answer holds {leak[:40]!r}",
                                  leak=True)
                    elif answer.status == 400 or (not refuse and answer.status is not None
                                                  and answer.status < 500):
                        row.tally(EXPECTED)
                    else:
                        row.tally(UNEXPECTED, f"{name} on {path} ({transport}): {answer.status or answer.error} "
                                              f"{answer.body[:80]!r}")
        time.sleep(1.0)
        if secrets.fetches > fetches:
            row.leaked += secrets.fetches - fetches
            row.problems[f"the node connected {secrets.fetches - fetches} times to the URL named in the XML"] += 1
    return row


# ---- 3. path traversal ----------------------------------------------------------------------------------------------
def traversal_paths() -> list[tuple[str, str]]:
    """(what, path below a route) reaching for files outside the served directories, in many spellings."""
    targets = {"planted": "hostile-outside.txt", "credentials": "secrets/broker-credentials.json",
               "database": "pnp.sqlite3", "ca key": "certs/ca.key"}
    ups = ["../", "..%2f", "%2e%2e/", "%2e%2e%2f", ".%2e/", "%252e%252e%252f", "..%5c", "..\\", "%2e%2e%5c",
           "..%255c", "%c0%ae%c0%ae/", "..%c0%af", "....//", "..;/", ".../", "%u002e%u002e/"]
    out: list[tuple[str, str]] = []
    for up in ups:
        for name, path in targets.items():
            out.append((f"{up} to the {name}", up + path.replace("/", "%2f" if "%" in up else "/")))
    for depth in (1, 4, 12):
        out.append((f"{depth} x ../ to /etc/passwd", "../" * depth + "etc/passwd"))
        out.append((f"{depth} x %2e%2e%2f to /etc/passwd", "%2e%2e%2f" * depth + "etc%2fpasswd"))
    out += [("absolute /etc/passwd", "/etc/passwd"), ("absolute %2fetc%2fpasswd", "%2fetc%2fpasswd"),
            ("file: URL", "file:%2f%2f%2fetc%2fpasswd"), ("NUL then a served name", "hostile-probe.txt%00"),
            ("NUL inside ..", "..%00/hostile-outside.txt"), ("a symbolic link out", "escape/hostile-outside.txt"),
            ("a hidden name", ".hidden-probe"), ("backslash absolute", "%5cetc%5cpasswd"),
            ("a very long name", "a" * 5000)]
    return out


def family_paths(target: Target, secrets: Secrets) -> Row:
    row = Row("paths: traversal, encodings")
    data = target.data_dir
    probe = f"served-{uuid.uuid4().hex}"
    for folder in ("images", "resources"):
        (data / folder / "hostile-probe.txt").write_text(probe)
        (data / folder / ".hidden-probe").write_text(secrets.planted)  # hidden names are never served
        with contextlib.suppress(FileExistsError):
            (data / folder / "escape").symlink_to(data)  # a link pointing out of the served directory
    routes = {"/images/": {}, "/resources/": {}, "/api/v1/images/": {"Authorization": f"Bearer {target.admin}"}}
    with target.watching(row):
        served = [exchange(target, target.port("http_port"), False, request("GET", f"{route}hostile-probe.txt"))
                  for route in ("/images/", "/resources/")]
        inside = [f"{a.status}{' with its content' if probe.encode() in a.body else ''}" for a in served]
        row.note(f"control: a file inside /images/ and /resources/ answered {', '.join(inside)}")
        for transport, tls in (("http", False), ("https", True)):
            port = target.port("https_port" if tls else "http_port")
            for route, headers in routes.items():
                for what, path in traversal_paths():
                    raw = f"GET {route}{path} HTTP/1.1\r\nHost: gateway\r\nConnection: close\r\n".encode()
                    raw += "".join(f"{k}: {v}\r\n" for k, v in headers.items()).encode() + b"\r\n"
                    answer = exchange(target, port, tls, raw)
                    leak = secrets.leak_in(answer.body)
                    where = f"{route}{path[:60]} ({what}, {transport})"
                    if answer.hung:
                        row.tally(HANG, f"{where}: no answer")
                    elif leak is not None:
                        row.tally(UNEXPECTED, f"{where}: served {leak[:40]!r}", leak=True)
                    elif answer.status in (400, 404, 405, 414):
                        row.tally(EXPECTED)
                    else:
                        row.tally(UNEXPECTED, f"{where}: {answer.status or answer.error} {answer.body[:60]!r}")
        # A raw NUL byte in the request target, which no URL can carry.
        for transport, tls in (("http", False), ("https", True)):
            port = target.port("https_port" if tls else "http_port")
            for route in ("/images/", "/resources/"):
                answer = exchange(target, port, tls, f"GET {route}..\x00/hostile-outside.txt HTTP/1.1\r\nHost: x\r\n"
                                                     "Connection: close\r\n\r\n".encode())
                leak = secrets.leak_in(answer.body)
                row.tally(HANG if answer.hung else UNEXPECTED if leak or answer.status not in (400, 404) else EXPECTED,
                          f"{route} raw NUL ({transport}): {answer.status or answer.error}", leak=leak is not None)
    return row


# ---- 4. HTTP framing and bodies ---------------------------------------------------------------------------------
def ambiguous_requests() -> dict[str, bytes]:
    """Requests whose framing two parsers could read differently (a proxy in front and the node): each must be 400."""
    post = b"POST /pnp/WORK-REQUEST HTTP/1.1\r\nHost: gateway\r\nContent-Type: text/xml\r\n"
    get = b"GET /pnp/HELLO HTTP/1.1\r\nHost: gateway\r\n"
    return {
        "Content-Length with Transfer-Encoding": post + b"Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n"
                                                         b"0\r\n\r\n",
        "Transfer-Encoding then Content-Length": post + b"Transfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n"
                                                         b"0\r\n\r\n",
        "two different Content-Lengths": post + b"Content-Length: 3\r\nContent-Length: 7\r\n\r\nabcdefg",
        "a Content-Length list": post + b"Content-Length: 3, 7\r\n\r\nabcdefg",
        "a signed Content-Length": post + b"Content-Length: +3\r\n\r\nabc",
        "a negative Content-Length": post + b"Content-Length: -1\r\n\r\n",
        "a hexadecimal Content-Length": post + b"Content-Length: 0x3\r\n\r\nabc",
        "a folded Transfer-Encoding": post + b"Transfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n",
        "an unknown transfer coding": post + b"Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
        "a misspelt chunked": post + b"Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
        "chunked twice": post + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        "a chunk size that is not hexadecimal": post + b"Transfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
        "a chunk size past 64 bits": post + b"Transfer-Encoding: chunked\r\n\r\n1" + b"0" * 20 + b"\r\nabc\r\n",
        "a NUL in a header value": get + b"X-Probe: a\x00b\r\n\r\n",
        "a bare CR in a header value": get + b"X-Probe: a\rb\r\n\r\n",
        "a space before the colon": b"GET /pnp/HELLO HTTP/1.1\r\nHost : gateway\r\n\r\n",
        "a header line without a colon": get + b"X-Probe\r\n\r\n",
        "a bare LF in the request line": b"GET /pnp/HELLO\nHTTP/1.1\r\nHost: gateway\r\n\r\n",
    }


def family_framing(target: Target) -> Row:
    row = Row("framing: ambiguous, oversized")
    xml = b'<?xml version="1.0"?><a>' + b"x" * 100 + b"</a>"
    big = 2 * 1024 * 1024 + 17
    api = {"Authorization": f"Bearer {target.admin}", "Content-Type": "application/json"}
    oversized = {
        # Content-Length says 10 GB and a little is sent: the answer must come at once, not after 10 GB.
        "10 GB Content-Length, partial body": lambda path, headers: (
            request("POST", path, {"Content-Type": "text/xml", **headers, "Content-Length": "10737418240"},
                    length=False) + xml),
        "2 MiB chunked": lambda path, headers: (
            request("POST", path, {"Content-Type": "text/xml", **headers, "Transfer-Encoding": "chunked"},
                    length=False) + b"".join(f"{len(c):x}\r\n".encode() + c + b"\r\n" for c in
                                             (b"<" * 65536 for _ in range(big // 65536 + 1))) + b"0\r\n\r\n"),
        "2 MiB with Content-Length": lambda path, headers: request(
            "POST", path, {"Content-Type": "text/xml", **headers}, b"<a>" + b"x" * big + b"</a>"),
    }
    routes = {"/pnp/WORK-REQUEST": {}, "/pnp/WORK-RESPONSE": {}, "/pnp/HELLO": {}, "/cns/HttpMsgDispatcher": {},
              "/api/v1/profiles": api,
              "/api/v1/images?name=hostile.bin": {**api, "Content-Type": "application/octet-stream"}}
    with target.watching(row):
        for transport, tls in (("http", False), ("https", True)):
            port = target.port("https_port" if tls else "http_port")
            control = exchange(target, port, tls, b"GET /pnp/HELLO HTTP/1.1\r\nHost: gateway\r\n"
                                                  b"Connection: close\r\n\r\n")
            row.note(f"control ({transport}): a plain GET /pnp/HELLO answered {control.status}")
            for name, raw in ambiguous_requests().items():
                answer = exchange(target, port, tls, raw, "POST" if raw.startswith(b"POST") else "GET")
                row.tally(HANG if answer.hung else EXPECTED if answer.status == 400 else UNEXPECTED,
                          f"{name} ({transport}): {answer.status or answer.error}")
            for name, build in oversized.items():
                for path, headers in routes.items():
                    if path.startswith("/api/v1/images") and name != "10 GB Content-Length, partial body":
                        continue  # the image upload's own limit is far above 2 MiB
                    started = time.monotonic()
                    answer = exchange(target, port, tls, build(path, headers), "POST")
                    waited = time.monotonic() - started
                    if answer.hung:
                        row.tally(HANG, f"{name} to {path} ({transport}): no answer in {target.hang:g} s")
                    elif answer.status == 413:
                        row.tally(EXPECTED)
                    else:
                        row.tally(UNEXPECTED, f"{name} to {path} ({transport}): {answer.status or answer.error} "
                                              f"after {waited:.1f} s")
    return row


# ---- 5. slow clients --------------------------------------------------------------------------------------------
class SlowClient:
    """One slowloris connection: silent (before or after the TLS handshake), or trickling a header byte at a time."""

    def __init__(self, target: Target, port: int, tls: bool, trickle: bool) -> None:
        self.trickle = trickle
        self.sock = connect(port, tls, target, timeout=30)
        self.sock.setblocking(False)
        self.closed_after: float | None = None
        self.answer = b""
        self.started = time.monotonic()
        self.sent = 0
        if trickle:
            # A header line is begun at once: the first trickled byte must never end the header section.
            self._send(b"GET /pnp/HELLO HTTP/1.1\r\nHost: gateway\r\nX-Slow: ")

    def _send(self, data: bytes) -> None:
        with contextlib.suppress(OSError):
            self.sock.send(data)
            self.sent += len(data)

    def poll(self, now: float) -> None:
        """Notice a close (or an answer); trickle one more byte of a header that never ends."""
        if self.closed_after is not None:
            return
        try:
            chunk: bytes | None = self.sock.recv(4096)
        except (BlockingIOError, ssl.SSLWantReadError):
            chunk = None
        except OSError:
            chunk = b""
        if chunk:
            self.answer += chunk
        if chunk == b"":
            self.closed_after = now - self.started
            self.sock.close()
            return
        if self.trickle:
            self._send(b"X" if self.sent % 40 else b"\r\nX-Slow: ")

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


def family_slow(target: Target, per_kind: int, trickle_every: float) -> Row:
    row = Row("slow: slowloris HTTP/HTTPS")
    settings, defaults = target.node.settings, Settings()
    idle = float(settings.get("http_idle_timeout", defaults.http_idle_timeout))
    handshake_limit = float(settings.get("tls_handshake_timeout", defaults.tls_handshake_timeout))
    http, https = target.port("http_port"), target.port("https_port")
    # (kind, port, TLS handshake, trickle, closed within): the documented limit plus the hang bound as slack.
    kinds = [("silent (http)", http, False, False, idle), ("silent after the handshake (https)", https, True, False,
                                                            idle),
             ("no handshake (https)", https, False, False, handshake_limit),
             ("trickling a header (http)", http, False, True, idle),
             ("trickling a header (https)", https, True, True, idle)]
    watch = idle + 2 * target.hang  # past the idle limit and then some
    with target.watching(row):
        clients: list[tuple[str, float, SlowClient]] = []
        for kind, port, tls, trickle, limit in kinds:
            for _ in range(per_kind):
                clients.append((kind, limit + target.hang, SlowClient(target, port, tls, trickle)))
        started = time.monotonic()
        served: list[int | None] = []
        last_trickle = 0.0
        while time.monotonic() - started < watch and any(c.closed_after is None for _, _, c in clients):
            now = time.monotonic()
            for _, _, client in clients:
                if not client.trickle or now - last_trickle >= trickle_every:
                    client.poll(now)
            if now - last_trickle >= trickle_every:
                last_trickle = now
                # Meanwhile a device is served as usual.
                served.append(exchange(target, http, False, request("GET", "/pnp/HELLO")).status)
            time.sleep(0.25)
        row.note(f"{len(clients)} slow connections watched for up to {watch:.0f} s (HTTP idle limit {idle:g} s, TLS "
                 f"handshake limit {handshake_limit:g} s; the trickling ones send a byte every {trickle_every:g} s); "
                 f"meanwhile {served.count(200)} of {len(served)} GET /pnp/HELLO answered 200")
        closed: dict[str, list[float]] = {}
        for kind, bound, client in clients:
            client.poll(time.monotonic())
            after = client.closed_after
            if after is None:
                row.tally(HANG, f"{kind}: still open after {time.monotonic() - client.started:.0f} s "
                                f"({client.sent} header bytes sent)")
                continue
            closed.setdefault(kind, []).append(after)
            if client.answer.startswith((b"HTTP/1.1 2", b"HTTP/1.0 2")):
                row.tally(UNEXPECTED, f"{kind}: answered {client.answer[:20]!r}")
            elif after <= bound:
                row.tally(EXPECTED)
            else:
                row.tally(UNEXPECTED, f"{kind}: closed after {after:.0f} s")
        for kind, times in closed.items():
            row.note(f"{kind}: {len(times)} closed after {min(times):.0f} to {max(times):.0f} s")
        for _, _, client in clients:
            client.close()
    return row


# ---- 6. CNS fuzzing -------------------------------------------------------------------------------------------------
CONFIG_SUCCESS = b"<config-success><identifier>fuzz</identifier><config-id>FUZZ</config-id></config-success>"
LENGTHS = ["-1", "+5", "0x10", "99999999999999999999", "1048577", "2147483648", "abc", "5 5", " ", "", "1e3",
           "\u0665"]


def mutate(rng: random.Random, data: bytes) -> bytes:
    """One to four random edits of ``data``: bit flips, inserted, deleted or repeated bytes, cut ends, odd
    Content-Lengths, control bytes, over-long heads, wrong protocol names and commands."""
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(13)
        at = rng.randrange(len(out) + 1)
        if op == 0 and out:
            out[min(at, len(out) - 1)] ^= 1 << rng.randrange(8)
        elif op == 1 and out:
            out[min(at, len(out) - 1)] = rng.randrange(256)
        elif op == 2:
            out[at:at] = rng.randbytes(rng.randint(1, 16))
        elif op == 3 and out:
            del out[at:at + rng.randint(1, 12)]
        elif op == 4 and out:
            out[at:at] = out[at:at + rng.randint(1, 64)] * rng.randint(2, 50)
        elif op == 5:
            del out[at:]
        elif op == 6:
            value = rng.choice(LENGTHS)
            out = bytearray(re.sub(rb"Content-Length:[^\n]*", f"Content-Length:{value}".encode(), bytes(out))
                            if b"Content-Length" in out else bytes(out).replace(b"\n\n", f"\nContent-Length:"
                                                                                     f"{value}\n\n".encode(), 1))
        elif op == 7:
            out[at:at] = bytes([rng.choice([0, 0x7F, 0x0D, 0x1B, 0x08, 0xFF, 0xC0])])
        elif op == 8:
            out = bytearray(bytes(out).replace(b"\n", b"\nX-Long:" + b"a" * rng.choice([100, 8200, 70000]) + b"\n",
                                               1))
        elif op == 9:
            out = bytearray(bytes(out).replace(b"\n", b"\n" + b"X-Many:1\n" * rng.choice([300, 1200]), 1))
        elif op == 10:
            out = bytearray(bytes(out).replace(b"CNS/1", rng.choice([b"CNS/2", b"cns/1", b"HTTP/1.1", b"CNS/1 ",
                                                                     b"", b"CNS/1\x00"]), 1))
        elif op == 11:
            command = rng.choice([*sorted(ALL_COMMANDS), "GET", "HELL0", "hello", "PUBLISH" * 40, ""]).encode()
            out = bytearray(re.sub(rb"^(CNS/1 )\S*", lambda m, c=command: m.group(1) + c, bytes(out), count=1))
        elif op == 12:
            out = bytearray(bytes(out).replace(b":", rng.choice([b"", b"::", b" :", b":\xff\xfe"]), 1))
    return bytes(out)


def predicted(stream: bytes, first_only: bool) -> str:
    """What the project's codec makes of ``stream`` as it stands: "malformed" (the gateway must refuse it),
    "complete" (whole frames) or "partial" (whole frames, then the start of one more). A dispatcher reads one
    frame only: it answers the HELLO and closes; a gateway port reads nothing after a BYE. Nothing at all is a
    partial frame: the gateway waits for it."""
    if not stream:
        return "partial"
    reader = FrameReader(DEVICE_COMMANDS)  # the gateway's default limits
    reader.receive_data(stream)
    while True:
        try:
            event = reader.next_event()
        except CnsProtocolError:
            return "malformed"
        if event is NEED_DATA or event is CLOSED:
            return "partial" if reader.buffered else "complete"
        if first_only or event.command == "BYE":
            return "complete"


def fuzz_stream(rng: random.Random, serial: str) -> bytes:
    hello = serialize(hello_frame(serial, keepalive="30,3"))
    subscribe = serialize(make_frame("SUBSCRIBE", {"Subject": rng.choice([CONFIG_LOAD, EXEC_CMD]), "Receipt": "s1"}))
    publish = serialize(make_frame("PUBLISH", {"Subject": "cisco.mgmt.cns.config.complete", "Receipt": "p1",
                                               "Content-Type": "application/xml"}, CONFIG_SUCCESS))
    shape = rng.randrange(4)
    if shape == 0:
        return mutate(rng, hello)
    if shape == 1:
        return hello + mutate(rng, publish)
    if shape == 2:
        return hello + subscribe + mutate(rng, publish)
    return mutate(rng, hello + publish)


def answers_of(target: Target, port: int, stream: bytes, expect: str) -> tuple[list[Frame], str]:
    """Send ``stream`` as a device would (no half-close: the gateway drops a device that hangs up) and read the
    gateway's frames: (frames, how it ended: "closed", "reset", "quiet" (we closed it), "hang" or why unreadable).

    A malformed stream must be refused and closed by the gateway within the hang bound. Whole frames are answered and
    the session stays; it is closed here once quiet. A partial frame is followed by the end of the connection, which
    the gateway must notice and close too.
    """
    reader = FrameReader(GATEWAY_COMMANDS, max_body_bytes=16 << 20)
    frames: list[Frame] = []
    with socket.create_connection((HOST, port), timeout=target.hang) as sock:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(stream)
        deadline = time.monotonic() + target.hang
        half_closed = False
        while True:
            now = time.monotonic()
            if not half_closed and ((expect == "complete" and frames) or expect == "partial"):
                wait = 0.5  # answered (or waiting for the rest of a frame): is anything more coming?
            else:
                wait = deadline - now
            if wait <= 0:
                return frames, "hang"
            sock.settimeout(wait)
            try:
                data = sock.recv(65536)
            except TimeoutError:
                if expect == "malformed" or half_closed or (expect == "complete" and not frames):
                    return frames, "hang"
                if expect == "complete":
                    return frames, "quiet"
                sock.shutdown(socket.SHUT_WR)  # the rest of the partial frame never comes
                half_closed, deadline = True, time.monotonic() + target.hang
                continue
            except ConnectionResetError:
                return frames, "reset"
            reader.receive_data(data)
            try:
                while isinstance(event := reader.next_event(), Frame):
                    frames.append(event)
            except CnsProtocolError as exc:
                return frames, f"unreadable answer: {exc}"
            if not data:
                return frames, "closed"


def family_cns_fuzz(target: Target, count: int, seed: int, concurrency: int) -> Row:
    row = Row("cns-fuzz: mutated frames")
    ports = target.plain_cns_ports
    dispatcher = ports[0]
    kinds: Counter[str] = Counter()

    def attempt(index: int) -> None:
        rng = random.Random(seed * 1_000_003 + index)
        stream = fuzz_stream(rng, f"FUZZ{index:06d}")
        port = ports[index % len(ports)]
        expect = predicted(stream, first_only=port == dispatcher)
        try:
            frames, ended = answers_of(target, port, stream, expect)
        except OSError as exc:
            row.tally(UNEXPECTED, f"connect to {port}: {type(exc).__name__}")
            return
        last = frames[-1] if frames else None
        last_word = "nothing" if last is None else f"ERROR {last.get('Code')}" if last.command == "ERROR" \
            else last.command
        kinds[f"{expect} -> {last_word}, {ended}"] += 1
        # A refusal is an ERROR 4xx or BUSY; ERROR 503 "internal gateway error" is the gateway failing.
        failed = [f for f in frames if f.command == "ERROR" and "internal" in (f.get("Message") or "")]
        refused = last is not None and (last.command == "BUSY" or (last.command == "ERROR"
                                                                   and (last.get("Code") or "").startswith("4")))
        where = f"{expect} stream of {len(stream)} bytes on port {port}"
        if ended == "hang":
            row.tally(HANG, f"{where}: {'no answer' if not frames else 'not closed'} within {target.hang:g} s "
                            f"({[f.command for f in frames]})")
        elif ended not in ("closed", "reset", "quiet"):
            row.tally(UNEXPECTED, f"{where}: {ended}")
        elif failed:
            row.tally(UNEXPECTED, f"{where}: ERROR {failed[0].get('Code')} {failed[0].get('Message')}")
        elif expect == "malformed" and not (refused or ended == "reset"):
            row.tally(UNEXPECTED, f"{where}: answered {[f.command for f in frames] or 'nothing'} before the "
                                  f"close: {stream[:80]!r}")
        else:
            row.tally(EXPECTED)

    with target.watching(row):
        with ThreadPoolExecutor(concurrency) as pool:
            list(pool.map(attempt, range(count)))
        row.note(f"{count} streams over {len(ports)} plain CNS ports (dispatcher and gateway), seed {seed}; "
                 f"the codec's view -> the gateway's last word: " + ", ".join(f"{k} {n}" for k, n in
                                                                                kinds.most_common(10)))
    return row


# ---- 7. CNS PUBLISH floods ------------------------------------------------------------------------------------------
def flood(target: Target, port: int, device: str, count: int, body: bytes) -> tuple[int, Frame | None, int, bool]:
    """One session PUBLISHing up to ``count`` messages, each as soon as the last is receipted: (receipts, the
    refusal, messages sent, whether the gateway closed the session after it)."""
    with CnsLink.open(HOST, port, timeout=target.hang) as link:
        link.send(hello_frame(device))
        welcome = link.receive()
        if welcome.command != "WELCOME":
            return 0, welcome, 0, True
        receipts = 0
        for i in range(count):
            link.command("PUBLISH", {"Subject": "cisco.mgmt.cns.config.complete", "Receipt": f"f{i}",
                                     "Content-Type": "application/xml"}, body)
            answer = link.receive()
            if answer.command != "RECEIPT":
                return receipts, answer, i + 1, link.closed_by_peer(target.hang)
            receipts += 1
        return receipts, None, count, False


def stored_events(target: Target, devices: Iterable[str]) -> Counter[str]:
    """cns.event rows the node stored per device id."""
    from sqlalchemy import select

    from pnp_integrated.models import OutboxEvent, db

    wanted = set(devices)
    app = target.app()
    with app.app_context():
        rows = db.session.scalars(select(OutboxEvent.payload).where(OutboxEvent.type == "cns.event")).all()
        db.session.remove()
    return Counter(p["device"]["id"] for p in rows if p.get("device", {}).get("id") in wanted)


def family_cns_flood(target: Target, sessions: int) -> Row:
    row = Row("cns-flood: PUBLISH past budget")
    small = b"<config-success><identifier>flood</identifier></config-success>"
    large = b"<config-success><identifier>" + b"x" * (256 * 1024) + b"</identifier></config-success>"
    plans = [(f"FLOOD{uuid.uuid4().hex[:6].upper()}", 300, small) for _ in range(sessions)]
    plans.append((f"FLOODBYTES{uuid.uuid4().hex[:6].upper()}", 60, large))
    with target.watching(row):
        results = {}
        ports = target.plain_cns_ports[1:]
        for i, (device, count, body) in enumerate(plans):
            results[device] = flood(target, ports[i % len(ports)], device, count, body)
        time.sleep(1.0)
        stored = stored_events(target, results)
        lost = 0
        for device, (receipts, error, sent, closed) in results.items():
            kept = stored.get(device, 0)
            refused = error is not None and error.get("Code") == "413" and error.get("Retry-After") == "60"
            row.note(f"{device}: {sent} PUBLISH sent, {receipts} receipted, then "
                     f"{'ERROR ' + str(error.get('Code')) + ' ' + str(error.get('Message')) if error else 'no ERROR'}"
                     f"; {kept} stored")
            lost += max(0, receipts - kept)
            # Each session is one attempt to store past its budget: refused, and exactly the receipted ones kept.
            if refused and not closed:
                row.tally(HANG, f"{device}: the session stayed open after the ERROR")
            elif refused and kept == receipts and receipts < sent:
                row.tally(EXPECTED)
            else:
                row.tally(UNEXPECTED, f"{device}: {receipts} receipted of {sent}, {kept} stored, "
                                      f"{'413' if refused else 'no 413'}")
        row.lost = lost
    return row


# ---- 8. broker ------------------------------------------------------------------------------------------------------
def stomp_answer(sock: socket.socket, timeout: float) -> tuple[list[StompFrame], str]:
    """Frames the broker sends until it closes: (frames, "closed" or "hang")."""
    parser = FrameParser(Limits())
    frames: list[StompFrame] = []
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return frames, "hang"
        sock.settimeout(remaining)
        try:
            data = sock.recv(65536)
        except TimeoutError:
            return frames, "hang"
        except (ConnectionResetError, ssl.SSLError, OSError):
            data = b""
        if not data:
            return frames, "closed"
        parser.receive_data(data)
        with contextlib.suppress(Exception):
            while (event := parser.next_event()) is not None:
                if isinstance(event, StompFrame):
                    frames.append(event)


def family_broker(target: Target, guesses: int) -> Row:
    row = Row("broker: logins, grants")
    tls = ssl.create_default_context(cafile=str(target.node.ca_file))
    tls.check_hostname = False
    ports = {"TLS broker": (target.port("broker_port"), tls), "bus": (target.port("bus_port"), None)}
    suffix = uuid.uuid4().hex[:6]
    logins = {role: (f"hostile-{role}-{suffix}", target.pnpp("prime", "account", "create", f"hostile-{role}-{suffix}",
                                                             "--role", role)) for role in ("gateway", "prime")}
    forged_command = f"hostile-{uuid.uuid4()}"
    forged_events: list[str] = []
    crossings = [
        ("gateway", "SUBSCRIBE", EVENTS), ("gateway", "SUBSCRIBE", DLQ), ("gateway", "SEND", COMMANDS),
        ("gateway", "SEND", "/queue/anything.else"), ("gateway", "SUBSCRIBE", "/queue/>"),
        ("gateway", "SEND", "/topic/pnp.gateway.events"),
        ("prime", "SEND", EVENTS), ("prime", "SUBSCRIBE", COMMANDS), ("prime", "SEND", "/queue/anything.else"),
        ("prime", "SUBSCRIBE", "/queue/>"), ("prime", "SUBSCRIBE", "/topic/pnp.gateway.commands"),
    ]
    hello = {"accept-version": "1.2", "host": HOST}

    def session(port: int, context: ssl.SSLContext | None, frames: list[StompFrame],
                source: str | None = None) -> tuple[list[StompFrame], str]:
        sock = socket.create_connection((HOST, port), timeout=target.hang,
                                        source_address=(source, 0) if source else None)
        if context is not None:
            sock = context.wrap_socket(sock, server_hostname=HOST)
        with sock:
            for frame in frames:
                with contextlib.suppress(OSError):
                    sock.sendall(encode_frame(frame))
            return stomp_answer(sock, target.hang)

    def judge(what: str, frames: list[StompFrame], ended: str) -> None:
        commands = [f.command for f in frames]
        if ended == "hang":
            row.tally(HANG, f"{what}: neither refused nor closed")
        elif "MESSAGE" in commands:
            row.tally(UNEXPECTED, f"{what}: a MESSAGE was delivered", leak=True)
        elif commands[-1:] == ["ERROR"] and "RECEIPT" not in commands:
            row.tally(EXPECTED)
        else:
            row.tally(UNEXPECTED, f"{what}: answered {commands}")

    def forged(role: str, command: str, destination: str) -> StompFrame:
        headers = {"destination": destination, "receipt": "r1"}
        if command == "SUBSCRIBE":
            return stomp_frame(command, {**headers, "id": "s1", "ack": "auto"})
        if destination == COMMANDS:
            body = {"id": forged_command, "type": "device.reprovision", "device": "HOSTILE-NOBODY"}
        else:
            forged_events.append(f"hostile-{uuid.uuid4()}")
            body = {"id": forged_events[-1], "type": "device.provisioned", "at": "2020-01-01T00:00:00Z",
                    "gateway": "forged", "device": {"serial": "FORGED"}}
        return stomp_frame(command, headers, json.dumps(body).encode())

    with target.watching(row):
        # Each party's valid login reaching for the other party's queues (first: the guesses below would get
        # these logins refused for a minute, whatever their passcode).
        for name, (port, context) in ports.items():
            for role, command, destination in crossings:
                login, passcode = logins[role]
                got, ended = session(port, context, [
                    stomp_frame("CONNECT", {**hello, "login": login, "passcode": passcode}),
                    forged(role, command, destination)])
                what = f"{role} login {command} {destination} on {name}"
                if not got or got[0].command != "CONNECTED":
                    row.tally(UNEXPECTED, f"{what}: the valid login was not let in ({[f.command for f in got]})")
                    continue
                judge(what, got[1:], ended)
        # Nobody in without a valid login, and no frame before CONNECT.
        for name, (port, context) in ports.items():
            attempts: list[tuple[str, list[StompFrame], str | None]] = [
                ("CONNECT without a login", [stomp_frame("CONNECT", hello)], None),
                ("STOMP without a login", [stomp_frame("STOMP", hello)], None),
                ("CONNECT with an unknown login", [stomp_frame("CONNECT", {**hello, "login": "nobody",
                                                                           "passcode": "whatever-it-is-1"})], None),
                ("CONNECT with an empty passcode", [stomp_frame("CONNECT", {**hello, "login": logins["gateway"][0],
                                                                            "passcode": ""})], None),
                ("SEND before CONNECT", [stomp_frame("SEND", {"destination": COMMANDS},
                                                     b'{"id": "x", "type": "device.reprovision"}')], None),
                ("SUBSCRIBE before CONNECT", [stomp_frame("SUBSCRIBE", {"destination": EVENTS, "id": "s"})], None),
            ]
            for role, (login, _) in logins.items():
                for i in range(guesses):
                    attempts.append((f"{role} login, wrong passcode", [stomp_frame("CONNECT", {
                        **hello, "login": login, "passcode": f"wrong-passcode-{i:04d}"})], None))
            for login in ("pnp-gateway", "prime"):  # the node's own logins, guessed from another address
                for i in range(guesses // 2):
                    attempts.append((f"{login} guessed from 127.0.0.2", [stomp_frame("CONNECT", {
                        **hello, "login": login, "passcode": f"guessed-passcode-{i:04d}"})], "127.0.0.2"))
            for what, frames, source in attempts:
                got, ended = session(port, context, frames, source)
                judge(f"{what} on {name}", got, ended)
        time.sleep(3.0)  # anything that got through would have reached its consumer by now
        delivered = forged_delivered(target, forged_command, forged_events)
        if delivered:
            row.leaked += delivered
            row.problems[f"{delivered} forged messages reached the gateway or Prime"] += 1
        row.note(f"forged messages found where they would be consumed (the gateway's processed commands, Prime's "
                 f"event store): {delivered}")
    return row


def forged_delivered(target: Target, command_id: str, event_ids: list[str]) -> int:
    import sqlite3

    from sqlalchemy import select

    from pnp_integrated.models import ProcessedCommand, db

    app = target.app()
    with app.app_context():
        commands = len(db.session.scalars(select(ProcessedCommand).where(ProcessedCommand.command_id == command_id))
                       .all())
        db.session.remove()
    store = sqlite3.connect(str(target.data_dir / "prime" / "events.sqlite3"))
    try:
        marks = ",".join("?" * len(event_ids)) or "''"
        events = store.execute(f"SELECT count(*) FROM events WHERE event_id IN ({marks})", event_ids).fetchone()[0]
    finally:
        store.close()
    return commands + int(events)


# ---- 9. control ports -----------------------------------------------------------------------------------------------
def family_control(target: Target) -> Row:
    row = Row("control: REST API, dashboard")
    revoked = target.pnpp("token", "create", "--role", "admin", "--name", "hostile-revoked")
    target.pnpp("token", "revoke", "hostile-revoked")
    profile = json.dumps({"name": "hostile-sneaky", "config_template": "username x privilege 15"}).encode()
    endpoints = [
        ("GET", "/api/v1/devices", b""), ("GET", "/api/v1/devices/FUZZ000001", b""), ("GET", "/api/v1/profiles", b""),
        ("GET", "/api/v1/jobs", b""), ("GET", "/api/v1/images", b""), ("POST", "/api/v1/profiles", profile),
        ("POST", "/api/v1/devices/FUZZ000001/reprovision", b"{}"), ("POST", "/api/v1/jobs/1/cancel", b"{}"),
        ("POST", "/api/v1/images?name=hostile.bin", b"not an image"), ("DELETE", "/api/v1/profiles/hostile-pnp",
                                                                        b""),
    ]
    credentials = {
        "no token": {}, "a wrong token": {"Authorization": "Bearer " + base64.urlsafe_b64encode(os.urandom(24))
                                                                     .decode()},
        "an empty bearer": {"Authorization": "Bearer "}, "basic auth": {"Authorization": "Basic YWRtaW46YWRtaW4="},
        "a revoked token": {"Authorization": f"Bearer {revoked}"},
        "the token in a cookie": {"Cookie": f"pnp_console={base64.urlsafe_b64encode(os.urandom(24)).decode()}"},
    }
    writes = [e for e in endpoints if e[0] != "GET"]
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    # (method, path, headers, body, wanted): the console's pages and data without a sign-in are 401; a sign-in
    # without the form's CSRF token is 403 before any password is looked at.
    dashboard = [
        ("GET", "/dashboard/data", {}, b"", 401),
        ("GET", "/dashboard/data", {"Cookie": f"pnp_console={revoked}"}, b"", 401),
        ("GET", "/", {}, b"", 401), ("GET", "/console/devices", {}, b"", 401),
        ("GET", "/dashboard/data", {"Cookie": "pnp_console=' OR 1=1 --"}, b"", 401),
        ("POST", "/console/signin", form, b"method=token&token=" + urllib.parse.quote(revoked).encode(), 403),
    ]
    known = [b"FUZZ0000", b"FLOOD", b"hostile-pnp"]  # serials and names the node holds by now

    def judge(what: str, answer: Answer, wanted: int) -> None:
        leak = next((k for k in known if k in answer.body), None)
        if answer.hung:
            row.tally(HANG, f"{what}: no answer")
        elif leak is not None:
            row.tally(UNEXPECTED, f"{what}: {answer.status} with {leak!r} in it", leak=True)
        elif answer.status == wanted:
            row.tally(EXPECTED)
        else:
            row.tally(UNEXPECTED, f"{what}: {answer.status or answer.error}, expected {wanted}")

    with target.watching(row):
        control = exchange(target, target.port("http_port"), False, request(
            "GET", "/api/v1/devices", {"Authorization": f"Bearer {target.admin}"}))
        row.note(f"control: GET /api/v1/devices with the admin token answered {control.status}")
        for name, (port, tls) in target.http_ports.items():
            for method, path, body in endpoints:
                for how, headers in credentials.items():
                    raw = request(method, path, {"Content-Type": "application/json", **headers}, body)
                    judge(f"{method} {path} with {how} ({name})", exchange(target, port, tls, raw, method), 401)
            for method, path, body in writes:
                raw = request(method, path, {"Content-Type": "application/json",
                                             "Authorization": f"Bearer {target.reader}"}, body)
                judge(f"{method} {path} with a read token ({name})", exchange(target, port, tls, raw, method), 403)
            for method, path, headers, body, wanted in dashboard:
                judge(f"{method} {path} {headers} ({name})", exchange(target, port, tls,
                                                                      request(method, path, headers, body), method),
                      wanted)
        status, profiles = target.api("GET", "/api/v1/profiles")
        sneaky = [p for p in profiles.get("items", []) if p.get("name") == "hostile-sneaky"] if status == 200 else []
        if sneaky:
            row.leaked += 1
            row.problems["an unauthenticated POST created the profile hostile-sneaky"] += 1
    return row


# ---- provisioning (status flood, faults) --------------------------------------------------------------------------
def add_profiles(target: Target, cns_serials: list[str]) -> None:
    """The campaign's profiles: Open PnP devices by PID, CNS devices by serial (fuzzed devices stay unclaimed)."""
    config = "hostname {{ serial }}\ninterface Vlan1\n ip address dhcp\n"
    post = "ntp server 192.0.2.1\nlogging host 192.0.2.2\n"
    status, body = target.api("POST", "/api/v1/profiles", {"name": "hostile-pnp", "match_pid": PNP_PID,
                                                           "config_template": config, "post_template": post})
    if status != 201:
        raise SystemExit(f"creating the Open PnP profile answered {status}: {body}")
    for start in range(0, len(cns_serials), 10_000):
        name = f"hostile-cns-{start // 10_000}"
        status, body = target.api("POST", "/api/v1/profiles", {
            "name": name, "match_serials": cns_serials[start:start + 10_000], "config_template": config,
            "post_template": post})
        if status != 201:
            raise SystemExit(f"creating the CNS profile answered {status}: {body}")


@dataclass
class Fleet:
    """Simulated devices provisioning through a node, arriving over ``ramp`` seconds: Open PnP agents and CNS
    devices (which start their day 0 over when their session is lost, as an IOS agent reconnects)."""

    target: Target
    pnp_serials: list[str]
    cns_serials: list[str]
    ramp: float = 0.0
    concurrency: int = 30
    cns_attempts: int = 20  # sessions a CNS device may lose (each kill can cut one) ...
    cns_seconds: float = 300.0  # ... within this long
    durations: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    done: set[str] = field(default_factory=set)  # serials whose day 0 finished on the device
    retried: int = 0
    cut_after_save: int = 0
    seconds: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def job_state(self, serial: str) -> str:
        """The state of the device's current job, as the REST API tells it."""
        status, device = self.target.api("GET", f"/api/v1/devices/{serial}")
        if status != 200 or not device.get("current_job_id"):
            return "no job"
        status, job = self.target.api("GET", f"/api/v1/jobs/{device['current_job_id']}")
        return str(job.get("state")) if status == 200 else f"HTTP {status}"

    def pnp(self, serial: str) -> bool:
        """An Open PnP device's day 0 (the agent itself retries through connection errors and 503s)."""
        agent = PnpAgent(SimulatedDevice(serial=serial, pid=PNP_PID), self.target.node.url(""), time_scale=0.001,
                         reload_seconds=0, deadline=240, timeout=30)
        report = agent.run()
        if report.outcome == PROVISIONED:
            self.durations.append(report.seconds)
            return True
        self.failures.append(f"{serial}: {report.outcome}: {report.reason}")
        return False

    def cns(self, serial: str) -> bool:
        """A CNS device's day 0; after a lost session it starts over while the node still has work for it."""
        given_up = time.monotonic() + self.cns_seconds
        started = time.monotonic()
        for attempt in range(self.cns_attempts):
            device = CnsDevice(serial, HOST, self.target.port("cns_port_base") + 1,
                               http_port=self.target.port("http_port"), timeout=30)
            try:
                report = device.run(120)
            except http.client.HTTPException as exc:  # an HTTP answer cut by a kill, which the simulator lets out
                report = DeviceReport(serial, detail=f"{type(exc).__name__} from the web services: {exc}")
            if report.ok:
                self.durations.append(time.monotonic() - started)
                return True
            if self.job_state(serial) == "completed":
                with self._lock:
                    self.cut_after_save += 1  # its result was in; only the goodbye was lost with the worker
                return True
            if attempt + 1 == self.cns_attempts or time.monotonic() > given_up:
                self.failures.append(f"{serial}: {report.detail} (session {attempt + 1})")
                return False
            with self._lock:
                self.retried += 1
            time.sleep(1.0)
        return False

    def run(self) -> int:
        """Play every device to the end; how many finished their day 0."""
        started = time.monotonic()
        devices = [(self.pnp, s) for s in self.pnp_serials] + [(self.cns, s) for s in self.cns_serials]
        random.Random(5).shuffle(devices)  # both kinds arrive all along the ramp

        def play(index: int) -> None:
            day0, serial = devices[index]
            time.sleep(max(0.0, started + self.ramp * index / len(devices) - time.monotonic()))
            if day0(serial):
                with self._lock:
                    self.done.add(serial)

        with ThreadPoolExecutor(self.concurrency) as pool:
            list(pool.map(play, range(len(devices))))
        self.seconds = time.monotonic() - started
        return len(self.done)


def job_states(target: Target, serials: list[str]) -> dict[str, str]:
    """The node's view: the state of each device's current job ("no job", "never seen")."""
    from sqlalchemy import select

    from pnp_integrated.models import Device, ProvisioningJob, db

    app = target.app()
    states = dict.fromkeys(serials, "never seen")
    with app.app_context():
        for start in range(0, len(serials), 500):
            for device in db.session.scalars(select(Device).where(Device.serial.in_(serials[start:start + 500]))):
                job = db.session.get(ProvisioningJob, device.current_job_id) if device.current_job_id else None
                states[device.serial] = job.state if job is not None else "no job"
        db.session.remove()
    return states


def provisioned(target: Target, fleet: Fleet, row: Row) -> int:
    """Devices provisioned on both sides (the device finished, the node's job completed); the rest is lost."""
    serials = fleet.pnp_serials + fleet.cns_serials
    states = job_states(target, serials)
    done = [s for s in serials if s in fleet.done and states[s] == "completed"]
    row.lost = len(serials) - len(done)
    row.note(f"{len(fleet.done)} of {len(serials)} devices finished their day 0; the node's jobs: "
             + ", ".join(f"{state} {n}" for state, n in Counter(states.values()).most_common()))
    for serial in [s for s in serials if s not in done][:5]:
        why = next((f for f in fleet.failures if f.startswith(f"{serial}:")), "finished on the device")
        row.problems[f"not provisioned: {why} (job {states[serial]})"] += 1
    return len(done)


# ---- 10. /status flood ----------------------------------------------------------------------------------------------
def readers_main(spec: dict[str, Any]) -> None:
    """A reader process: ``readers`` threads GET /status (a quarter /metrics) until stdin closes; a JSON line out.

    The readers run in processes of their own so that the simulated devices in the main one are not slowed by them
    (they share the cores with the node all the same).
    """
    port, hang, stop = spec["port"], spec["hang"], threading.Event()
    answers: Counter[str] = Counter()
    waits: list[float] = []
    lock = threading.Lock()

    def read(index: int) -> None:
        path = "/metrics" if index % 4 == 0 else "/status"
        while not stop.is_set():
            started = time.monotonic()
            conn = http.client.HTTPConnection(HOST, port, timeout=hang)
            try:
                conn.request("GET", path)
                resp = conn.getresponse()
                resp.read()
                kind = f"ok {resp.status}" if resp.status == 200 or (resp.status == 503
                                                                    and resp.getheader("Retry-After")) \
                    else f"{path}: {resp.status}"
            except TimeoutError:
                kind = "hang"
            except (OSError, http.client.HTTPException) as exc:
                kind = f"{path}: {type(exc).__name__}"
            finally:
                conn.close()
            with lock:
                answers[kind] += 1
                waits.append(time.monotonic() - started)

    threads = [threading.Thread(target=read, args=(i,), daemon=True) for i in range(spec["readers"])]
    for thread in threads:
        thread.start()
    print("started", flush=True)
    sys.stdin.read()
    stop.set()
    for thread in threads:
        thread.join(hang + 5)
    print(json.dumps({"answers": answers, "waits": waits}), flush=True)


def family_status(target: Target, readers: int, pnp_serials: list[str], cns_serials: list[str],
                  baseline: tuple[list[str], list[str]], ramp: float, processes: int = 2) -> Row:
    row = Row("status: readers vs devices")
    alone = Fleet(target, *baseline, ramp=ramp)
    alone.run()
    with target.watching(row):
        children = [subprocess.Popen(
            [sys.executable, __file__, "--readers-child", json.dumps({
                "port": target.port("http_port"), "hang": target.hang, "readers": readers // processes})],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT) for _ in range(processes)]
        for child in children:
            assert child.stdout is not None
            child.stdout.readline()
        time.sleep(2.0)  # the crowd is in
        fleet = Fleet(target, pnp_serials, cns_serials, ramp=ramp)
        fleet.run()
        waits: list[float] = []
        statuses: Counter[str] = Counter()
        for child in children:
            out, _ = child.communicate(timeout=target.hang + 60)
            report = json.loads(out.strip().splitlines()[-1]) if out.strip() else {"answers": {"reader died": 1},
                                                                                    "waits": []}
            waits += report["waits"]
            for kind, count in report["answers"].items():
                if kind.startswith("ok "):
                    statuses[kind[3:]] += count
                for _ in range(count):
                    row.tally(EXPECTED if kind.startswith("ok ") else HANG if kind == "hang" else UNEXPECTED,
                              f"{kind}" if kind != "hang" else f"no answer in {target.hang:g} s")
        row.note(f"{readers} readers in {processes} processes (a quarter on /metrics): {statuses['200']} answered 200, "
                 f"{statuses['503']} 503 with Retry-After; in a median of {percentile(waits, 0.5) * 1000:.0f} ms, "
                 f"p99 {percentile(waits, 0.99) * 1000:.0f} ms")
        done = provisioned(target, fleet, row)
        row.note(f"{done} devices (arriving over {ramp:g} s) provisioned during the flood; day 0 p50/p99 "
                 f"{percentile(fleet.durations, 0.5):.2f}/{percentile(fleet.durations, 0.99):.2f} s, against "
                 f"{percentile(alone.durations, 0.5):.2f}/{percentile(alone.durations, 0.99):.2f} s for as many "
                 f"devices without readers just before")
        if "lost the leader lease" in target.node.log_text():
            row.note("the leader lease was lost")
    return row


# ---- 11. configuration URLs with tokens -----------------------------------------------------------------------
def config_location(target: Target, serial: str) -> str:
    """The configuration URL the node gives an Open PnP device ``serial`` (device-info first, as a device does)."""
    udi = Udi(PNP_PID, "V01", serial)
    url = target.node.url("/pnp/")

    def post(endpoint: str, message: Any) -> Any:
        conn = http.client.HTTPConnection(HOST, target.port("http_port"), timeout=30)
        try:
            conn.request("POST", urllib.parse.urlsplit(url + endpoint).path, body=encode(message),
                         headers={"Content-Type": "text/xml"})
            return parse_server_message(conn.getresponse().read())
        finally:
            conn.close()

    for turn in range(6):
        work = post("WORK-REQUEST", WorkRequest(udi, f"CiscoPnP-1.0-{serial}-{turn}"))
        if isinstance(work, ConfigUpgradeRequest):
            return str(work.location)
        service = getattr(work, "service", "")
        if service:
            post("WORK-RESPONSE", WorkResponse(udi, service, work.correlator, True,
                                               device_info=DeviceInfo(version="17.3.4a")))
    raise SystemExit(f"the node gave {serial} no configuration URL")


def family_config_urls(target: Target) -> Row:
    row = Row("config-urls: tokens on (node 2)")
    mine, other = f"FOCA{uuid.uuid4().hex[:7].upper()}", f"FOCB{uuid.uuid4().hex[:7].upper()}"
    for serial in (mine, other):
        status, body = target.api("POST", "/api/v1/profiles", {"name": f"p-{serial}", "match_serials": [serial],
                                                               "config_template": "hostname {{ serial }}\n"})
        if status != 201:
            raise SystemExit(f"creating a profile on the second node answered {status}: {body}")
    with target.watching(row):
        location = config_location(target, mine)
        query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(location).query))
        good = exchange(target, target.port("http_port"), False, request("GET", "/cns/config.asp?" +
                                                                          urllib.parse.urlencode(query)))
        row.note(f"control: {mine}'s own URL (with {', '.join(sorted(query))}) answered {good.status} "
                 f"{good.body[:30]!r}")
        token, expires = query.get("Token", ""), query.get("Expires", "")
        strangers = [f"HOSTILENEW{i:03d}" for i in range(8)]
        forged_tokens = ["", "A" * len(token), token[:-2] + ("AA" if not token.endswith("AA") else "BB"), token[:10],
                         token + "A", base64.urlsafe_b64encode(os.urandom(18)).decode(), "é" * 24, "%00",
                         token.upper() if token != token.upper() else token.lower(), "x" * 4096]
        queries: list[tuple[str, str]] = []
        queries.append(("no token, mine", urllib.parse.urlencode({"DeviceID": mine})))
        queries.append(("no token, with its identifier", urllib.parse.urlencode(
            {k: v for k, v in query.items() if k != "Token"})))
        for i, forged in enumerate(forged_tokens):
            queries.append((f"forged token {i}", urllib.parse.urlencode({**query, "Token": forged})))
        for moved in (str(int(expires) + 1), str(int(expires) - 1), "99999999999", "0", "-5", "abc"):
            queries.append((f"expiry changed to {moved}", urllib.parse.urlencode({**query, "Expires": moved})))
        queries.append(("another device's token", urllib.parse.urlencode({**query, "DeviceID": other})))
        queries.append(("another device's token, no identifier", urllib.parse.urlencode(
            {k: v for k, v in {**query, "DeviceID": other}.items() if k != "Identifier"})))
        queries.append(("its token, other's serial lower case", urllib.parse.urlencode({**query,
                                                                                        "DeviceID": other.lower()})))
        queries.append(("DeviceID twice, other's first", f"DeviceID={other}&" + urllib.parse.urlencode(query)))
        queries.append(("DeviceID twice, other's last", urllib.parse.urlencode(query) + f"&DeviceID={other}"))
        queries.append(("Token twice, forged first", "Token=AAAA&" + urllib.parse.urlencode(query)
                        .replace(f"DeviceID={mine}", f"DeviceID={other}")))
        for stranger in strangers:
            queries.append((f"unknown serial {stranger}, no token", f"DeviceID={stranger}"))
            queries.append((f"unknown serial {stranger}, a borrowed token", urllib.parse.urlencode(
                {**query, "DeviceID": stranger})))
        refusals: Counter[int] = Counter()
        for transport, tls in (("http", False), ("https", True)):
            port = target.port("https_port" if tls else "http_port")
            for what, text in queries:
                answer = exchange(target, port, tls, request("GET", f"/cns/config.asp?{text}"))
                # Only the URL's own device's configuration may ever come back, and only on its own URL.
                shown = f"hostname {other}".encode() in answer.body or b"hostname HOSTILENEW" in answer.body
                if answer.hung:
                    row.tally(HANG, f"{what} ({transport}): no answer")
                elif shown:
                    row.tally(UNEXPECTED, f"{what} ({transport}): {answer.status} {answer.body[:40]!r}", leak=True)
                elif answer.status in (400, 403):  # 400: a malformed token or a parameter given twice
                    refusals[answer.status] += 1
                    row.tally(EXPECTED)
                else:
                    row.tally(UNEXPECTED, f"{what} ({transport}): {answer.status or answer.error} "
                                          f"{answer.body[:60]!r}")
        row.note(f"refused with 403: {refusals[403]}; with 400 (a token that is not 1 to 64 printable characters, "
                 f"a parameter given twice): {refusals[400]}")
        created = [s for s in strangers if target.api("GET", f"/api/v1/devices/{s}")[0] != 404]
        row.note(f"device rows created for the {len(strangers)} unknown serials: {len(created)}")
        if created:
            row.problems[f"device rows created for unknown serials: {', '.join(created)}"] += len(created)
            row.unexpected += len(created)
            row.attempts += len(created)
    return row


# ---- 12. faults -----------------------------------------------------------------------------------------------------
def family_faults(target: Target, pnp_serials: list[str], cns_serials: list[str], kills: int,
                  kill_every: float) -> Row:
    row = Row(f"faults: {kills} worker kills")
    workers = len(target.workers())
    with target.watching(row):
        # Devices keep arriving until after the last kill, so every kill cuts a fleet in the middle of its day 0.
        fleet = Fleet(target, pnp_serials, cns_serials, ramp=(kills + 1) * kill_every)
        finished = threading.Event()

        def provision() -> None:
            fleet.run()
            finished.set()

        runner = threading.Thread(target=provision)
        runner.start()
        rng = random.Random(11)
        while len(row.killed) < kills and not finished.wait(kill_every):
            pids = target.wait_for_workers(workers)
            if not pids:
                continue
            victim = rng.choice(sorted(pids))
            with contextlib.suppress(ProcessLookupError):
                os.kill(victim, signal.SIGKILL)
                row.killed.add(victim)
        runner.join()
        target.wait_for_workers(workers)
        total = len(pnp_serials) + len(cns_serials)
        row.family = f"faults: {len(row.killed)} worker kills"
        row.note(f"{len(row.killed)} workers SIGKILLed, one every {kill_every:g} s (once the last one was replaced) "
                 f"while {len(pnp_serials)} Open PnP and {len(cns_serials)} CNS devices arrived over "
                 f"{fleet.ramp:g} s and provisioned ({fleet.seconds:.0f} s)")
        done = provisioned(target, fleet, row)
        row.attempts, row.expected, row.unexpected = total, done, total - done
        row.note(f"CNS sessions lost and started over: {fleet.retried}; devices whose job had completed when their "
                 f"session was cut before the goodbye: {fleet.cut_after_save}")
    return row


# ---- main -------------------------------------------------------------------------------------------------------
FAMILIES = ("tls", "xml", "paths", "framing", "slow", "cns-fuzz", "cns-flood", "broker", "control", "status",
            "config-urls", "faults")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--families", default=",".join(FAMILIES), help=f"comma-separated, of: {', '.join(FAMILIES)}")
    parser.add_argument("--hang-seconds", type=float, default=10.0, help="no answer within this long is a hang")
    parser.add_argument("--tls-rounds", type=int, default=3, help="each old-protocol attempt, per TLS port")
    parser.add_argument("--slow-clients", type=int, default=50, help="slowloris connections per kind and port")
    parser.add_argument("--trickle-every", type=float, default=5.0, help="seconds between two trickled bytes")
    parser.add_argument("--fuzz-frames", type=int, default=10000, help="mutated CNS streams")
    parser.add_argument("--fuzz-seed", type=int, default=1)
    parser.add_argument("--flood-sessions", type=int, default=3, help="CNS sessions flooding PUBLISH (+1 by size)")
    parser.add_argument("--guesses", type=int, default=4, help="wrong passcodes per campaign login and port")
    parser.add_argument("--readers", type=int, default=300, help="concurrent /status and /metrics readers")
    parser.add_argument("--status-devices", type=int, default=60, help="devices provisioning during the flood")
    parser.add_argument("--status-seconds", type=float, default=15.0, help="those devices arrive over this long")
    parser.add_argument("--devices", type=int, default=300, help="devices provisioning while workers are killed")
    parser.add_argument("--kills", type=int, default=5, help="workers SIGKILLed during the fault family")
    parser.add_argument("--kill-every", type=float, default=4.0, help="seconds between two kills")
    parser.add_argument("--keep", action="store_true", help="keep the nodes' data directories and logs")
    parser.add_argument("--readers-child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.readers_child:
        readers_main(json.loads(args.readers_child))
        return 0
    chosen = [f.strip() for f in args.families.split(",") if f.strip()]
    unknown = sorted(set(chosen) - set(FAMILIES))
    if unknown:
        parser.error(f"unknown families: {', '.join(unknown)}")

    workdir = Path(tempfile.mkdtemp(prefix="pnp-hostile-"))
    tag = uuid.uuid4().hex[:4].upper()
    pnp_status = [f"HSP{tag}{i:05d}" for i in range(args.status_devices * 2 // 3)]
    cns_status = [f"HSC{tag}{i:05d}" for i in range(args.status_devices - len(pnp_status))]
    pnp_base = [f"HBP{tag}{i:05d}" for i in range(len(pnp_status))]
    cns_base = [f"HBC{tag}{i:05d}" for i in range(len(cns_status))]
    pnp_fault = [f"HFP{tag}{i:05d}" for i in range(args.devices * 2 // 3)]
    cns_fault = [f"HFC{tag}{i:05d}" for i in range(args.devices - len(pnp_fault))]
    rows: list[Row] = []
    nodes: list[RunningNode] = []
    started = time.monotonic()
    try:
        print(f"starting a node (default settings, private ports) in {workdir} ...", flush=True)
        try:
            node = start_node(workdir / "node")
        except NodeDidNotStart as exc:
            raise SystemExit(f"the node did not start: {str(exc)[-2000:]}") from None
        nodes.append(node)
        target = Target(node, args.hang_seconds)
        add_profiles(target, cns_status + cns_base + cns_fault)
        secrets = Secrets(target)
        plan: dict[str, Callable[[], Row]] = {
            "tls": lambda: family_tls(target, args.tls_rounds),
            "xml": lambda: family_xml(target, secrets),
            "paths": lambda: family_paths(target, secrets),
            "framing": lambda: family_framing(target),
            "slow": lambda: family_slow(target, args.slow_clients, args.trickle_every),
            "cns-fuzz": lambda: family_cns_fuzz(target, args.fuzz_frames, args.fuzz_seed, 32),
            "cns-flood": lambda: family_cns_flood(target, args.flood_sessions),
            "broker": lambda: family_broker(target, args.guesses),
            "control": lambda: family_control(target),
            "status": lambda: family_status(target, args.readers, pnp_status, cns_status, (pnp_base, cns_base),
                                            args.status_seconds),
            "faults": lambda: family_faults(target, pnp_fault, cns_fault, args.kills, args.kill_every),
        }
        for family in FAMILIES:
            if family not in chosen:
                continue
            print(f"{family} ...", flush=True)
            if family == "config-urls":
                try:
                    second = start_node(workdir / "node-tokens", config_url_tokens=True)
                except NodeDidNotStart as exc:
                    raise SystemExit(f"the second node did not start: {str(exc)[-2000:]}") from None
                nodes.append(second)
                rows.append(family_config_urls(Target(second, args.hang_seconds)))
                second.stop(timeout=60)
                continue
            rows.append(plan[family]())
            print(f"  {rows[-1].attempts} attempts, {rows[-1].expected} as expected ({rows[-1].seconds:.0f} s)",
                  flush=True)
    finally:
        for running in nodes:
            running.stop(timeout=60)
    print_table(rows)
    print(f"\nwhole run {time.monotonic() - started:.0f} s on {os.cpu_count()} cores shared with the node; "
          f"{'data and logs kept in ' + str(workdir) if args.keep else 'data removed'}")
    if not args.keep:
        import shutil

        shutil.rmtree(workdir, ignore_errors=True)
    bad = sum(r.unexpected + r.hangs + r.deaths + r.tracebacks + r.leaked + (r.lost or 0) for r in rows)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

"""Many CNS devices that hold their sessions and come back after a failover: one gevent greenlet per device.

Run as a program (:mod:`.hold_sessions` patches the process with gevent first; importing this module patches nothing)::

    python -m pnp_integrated.lab.hold_sessions --first 1 --count 5000 --host VIP --dispatcher-port P --tls --events FILE

Each device goes dispatcher -> REDIRECT -> gateway port -> HELLO -> WELCOME and holds the session, sending a PING
every ``--keepalive`` seconds as the CNS agent does; a session that is reset, refused or unanswered for three
keepalives is replaced through the dispatcher after a short jittered back-off (after about the Retry-After the gateway
gave with a BUSY or ERROR). Every session that comes up or goes down is written to ``--events`` as
``up|down <serial> <unix time>``, and every failed attempt to get one as ``retry <serial> <unix time> <why>`` (what the
gateway answered, or the socket error). One process holds at most about 19,000 sockets.
"""

import argparse
import random
import resource
import time
from typing import TextIO

import gevent

from ..cns.codec import CnsProtocolError, make_frame
from ..devsim.link import CnsLink, LinkClosed, dispatch, hello_frame
from .fleet import GatewayLost

MAX_SOCKETS = 19_000
BACKOFF_FIRST, BACKOFF_LONGEST = 0.25, 2.0


class EventLog:
    """``up``/``down`` lines, flushed in batches (thousands of devices change at once)."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.lines: list[str] = []

    def note(self, what: str, serial: str, why: str = "") -> None:
        self.lines.append(f"{what} {serial} {time.time():.3f}{' ' + why if why else ''}\n")

    def flush(self) -> None:
        if self.lines:
            lines, self.lines = self.lines, []
            self.out.write("".join(lines))
            self.out.flush()

    def run(self) -> None:
        while True:
            gevent.sleep(0.2)
            self.flush()


def hold(serial: str, host: str, dispatcher_port: int, tls: bool, keepalive: float, events: EventLog) -> None:
    """Keep one device's session up for as long as the process runs."""
    pause = BACKOFF_FIRST
    while True:
        link = None
        up = False
        wait = 0.0
        try:
            where = dispatch(host, dispatcher_port, serial, tls=tls, timeout=10)
            if where.command != "REDIRECT":
                raise GatewayLost.answered("dispatcher", where)
            link = CnsLink.open(where.get("Host") or host, int(where.get("Port", "0") or 0), tls=tls, timeout=10)
            link.send(hello_frame(serial, keepalive=f"{keepalive:g},3"))
            answer = link.receive()
            if answer.command != "WELCOME":
                raise GatewayLost.answered("gateway", answer)
            events.note("up", serial)
            up = True
            pause = BACKOFF_FIRST
            silent = 0
            while silent < 3:  # three keepalives without any frame: the gateway is gone
                try:
                    link.receive(timeout=keepalive)
                    silent = 0
                except TimeoutError:
                    silent += 1
                    link.send(make_frame("PING", {}))
        except GatewayLost as exc:
            wait = exc.retry_after  # as the gateway said (CNS-W1 BUSY and ERROR 503 carry Retry-After)
            if not up:
                events.note("retry", serial, exc.short)
        except (OSError, LinkClosed, CnsProtocolError) as exc:
            if not up:
                events.note("retry", serial, type(exc).__name__)
        finally:
            if up:
                events.note("down", serial)
            if link is not None:
                link.close()
        gevent.sleep((wait or pause) * random.uniform(0.5, 1.5))  # the returning devices spread out
        pause = min(pause * 2, BACKOFF_LONGEST)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--first", type=int, default=1)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--prefix", default="HOLD")
    parser.add_argument("--host", required=True)
    parser.add_argument("--dispatcher-port", type=int, required=True)
    parser.add_argument("--tls", action="store_true")
    parser.add_argument("--keepalive", type=float, default=5.0)
    parser.add_argument("--ramp", type=float, default=10.0, help="seconds over which the devices first connect")
    parser.add_argument("--events", required=True)
    args = parser.parse_args()
    if args.count > MAX_SOCKETS:
        parser.error(f"one process holds at most {MAX_SOCKETS} devices; start several")
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 20_000), hard))
    with open(args.events, "a") as out:
        events = EventLog(out)
        gevent.spawn(events.run)
        greenlets = []
        for n in range(args.first, args.first + args.count):
            greenlets.append(gevent.spawn(hold, f"{args.prefix}{n:06d}", args.host, args.dispatcher_port, args.tls,
                                          args.keepalive, events))
            gevent.sleep(args.ramp / args.count)
        gevent.joinall(greenlets)

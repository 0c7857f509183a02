"""CNS dispatcher and gateway ports over real sockets (plain and TLS), served in-process by the worker's listeners."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import select

from pnp_integrated import create_app
from pnp_integrated.cns.worker import deliver
from pnp_integrated.context import gateway_state
from pnp_integrated.devsim.link import CnsLink, LinkClosed, connect, dispatch, hello_frame
from pnp_integrated.models import DeviceSession, db
from tests.support import CnsNode, wait_until

HOST = "127.0.0.1"


# ---- dispatcher ---------------------------------------------------------------------------------------------
def test_dispatcher_redirects_to_the_lowest_port_when_all_are_empty(node: CnsNode) -> None:
    answer = dispatch(HOST, node.settings.dispatcher_plain_port, "R1")
    assert answer.command == "REDIRECT"
    assert (answer.get("Host"), answer.get("Port")) == (node.settings.vip, str(node.plain[0]))


def test_dispatcher_picks_the_least_loaded_port_of_the_same_transport(node: CnsNode) -> None:
    links = [connect(HOST, node.plain[0], f"A{i}")[0] for i in range(2)]
    links += [connect(HOST, node.plain[1], "B0")[0]]
    links += [connect(HOST, p, f"C{p}")[0] for p in node.plain[2:]]
    try:
        # loads: 2, 1, 1, 1, 1 -> the lowest of the ports holding one device
        assert dispatch(HOST, node.settings.dispatcher_plain_port, "R1").get("Port") == str(node.plain[1])
        tls_answer = dispatch(HOST, node.settings.dispatcher_tls_port, "R2", tls=True)
        assert tls_answer.command == "REDIRECT" and tls_answer.get("Port") == str(node.tls[0])
    finally:
        for link in links:
            link.close()


def test_dispatcher_says_busy_when_every_port_is_full(node_factory: Callable[..., CnsNode]) -> None:
    node = node_factory(cns_port_capacity=1)
    links = [connect(HOST, p, f"D{p}")[0] for p in node.plain]
    try:
        answer = dispatch(HOST, node.settings.dispatcher_plain_port, "LATE")
        assert answer.command == "BUSY" and int(answer.get("Retry-After") or 0) > 0
        assert dispatch(HOST, node.settings.dispatcher_tls_port, "TLS", tls=True).command == "REDIRECT"
    finally:
        for link in links:
            link.close()


def test_devices_sent_away_together_are_told_to_come_back_at_different_times(
    node_factory: Callable[..., CnsNode],
) -> None:
    from pnp_integrated.cns.gateway import BUSY_RETRY_AFTER

    node = node_factory(cns_port_capacity=1)
    links = [connect(HOST, p, f"F{p}")[0] for p in node.plain]
    try:
        waits = [int(dispatch(HOST, node.settings.dispatcher_plain_port, f"LATE{i}").get("Retry-After") or 0)
                 for i in range(20)]
    finally:
        for link in links:
            link.close()
    # Within the documented wait and half again; a refused fleet spreads out instead of returning in lock-step.
    assert all(BUSY_RETRY_AFTER <= wait <= BUSY_RETRY_AFTER * 3 // 2 for wait in waits), waits
    assert len(set(waits)) >= 4, waits


def test_dispatcher_wants_hello_first(node: CnsNode) -> None:
    with CnsLink.open(HOST, node.settings.dispatcher_plain_port) as link:
        link.command("PING")
        answer = link.receive()
        assert (answer.command, answer.get("Code")) == ("ERROR", "401")
        assert link.closed_by_peer()


# ---- HELLO and admission ------------------------------------------------------------------------------------
def test_welcome_gives_a_session_and_the_keepalive(node: CnsNode) -> None:
    link, answer = connect(HOST, node.plain[0], "FTX1", keepalive="30,2")
    with link:
        assert answer.command == "WELCOME" and answer.get("Keepalive") == "30"
        [row] = node.live_rows()
        assert (row.token, row.device_key, row.port, row.tls) == (answer.get("Session"), "FTX1", node.plain[0], False)
    wait_until(lambda: not node.live_rows(), 5, "every session to close")
    assert [e["device"]["id"] for e in node.outbox("device.disconnected")] == ["FTX1"]


def test_tls_gateway_port(node: CnsNode) -> None:
    link, answer = connect(HOST, node.tls[0], "TLS1", tls=True)
    with link:
        assert answer.command == "WELCOME"
        assert node.live_rows()[0].tls is True
        link.command("PING", {"Receipt": "p"})
        assert [link.receive().command, link.receive().command] == ["PONG", "RECEIPT"]


class AdmissionGate:
    """Admission slots that stay taken until the test opens them (a worker busy admitting a returning fleet).

    Counts its waiting devices like the worker's AdmissionQueue."""

    def __init__(self) -> None:
        self.opened = threading.Event()
        self.waiting = 0

    def acquire(self, timeout: float | None = None) -> bool:
        import gevent

        self.waiting += 1
        while not self.opened.is_set():
            gevent.sleep(0.02)
        self.waiting -= 1
        return True

    def release(self, held: float) -> None:
        pass

    def expected_wait(self) -> float:
        return self.waiting * 1.0  # a second each: a slow database


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
def test_a_device_that_hung_up_while_waiting_for_admission_is_not_admitted(node: CnsNode, tls: bool) -> None:
    gate = AdmissionGate()
    node.app.extensions["pnp_gateway"].cns_worker.admission_slots = gate
    ports = node.tls if tls else node.plain
    gone = CnsLink.open(HOST, ports[0], tls=tls)
    gone.send(hello_frame("GAVEUP1"))
    patient = CnsLink.open(HOST, ports[0], tls=tls)
    patient.send(hello_frame("PATIENT1"))
    wait_until(lambda: gate.waiting == 2, 5, "two devices waiting for admission")
    gone.close()  # its wait for WELCOME ran out: it will come back through the dispatcher
    time.sleep(0.2)
    gate.opened.set()
    with patient:
        assert patient.receive().command == "WELCOME"
        assert [row.device_key for row in node.live_rows()] == ["PATIENT1"]
    # Prime never hears that the device that left connected.
    assert [e["device"]["id"] for e in node.outbox("device.connected")] == ["PATIENT1"]


def test_dispatcher_says_busy_while_the_admission_queue_is_long(node: CnsNode) -> None:
    gate = AdmissionGate()
    worker = node.app.extensions["pnp_gateway"].cns_worker
    worker.admission_slots, worker.admission_wait_busy = gate, 2.0
    queued = []
    for n in range(2):
        link = CnsLink.open(HOST, node.plain[n])
        link.send(hello_frame(f"QUEUED{n}"))
        queued.append(link)
    wait_until(lambda: gate.waiting == 2, 5, "two devices waiting for admission")
    answer = dispatch(HOST, node.settings.dispatcher_plain_port, "STORM1")
    assert answer.command == "BUSY" and int(answer.get("Retry-After") or 0) >= 5
    assert "admitting" in (answer.get("Message") or "")
    gate.opened.set()
    for link in queued:
        with link:
            assert link.receive().command == "WELCOME"
    assert dispatch(HOST, node.settings.dispatcher_plain_port, "STORM1").command == "REDIRECT"


def test_first_frame_must_be_hello(node: CnsNode) -> None:
    with CnsLink.open(HOST, node.plain[0]) as link:
        link.command("SUBSCRIBE", {"Subject": "x"})
        answer = link.receive()
        assert (answer.command, answer.get("Code")) == ("ERROR", "401")
        assert answer.get("Message")
        assert link.closed_by_peer()


@pytest.mark.parametrize("headers", [{}, {"Device-Id": "has space"}, {"Device-Id": "x" * 256},
                                     {"Device-Id": "ok", "Keepalive": "fast"},
                                     {"Device-Id": "ok", "Keepalive": "0,1"}])
def test_bad_hello_is_400_and_closed(node: CnsNode, headers: dict[str, str]) -> None:
    with CnsLink.open(HOST, node.plain[0]) as link:
        link.command("HELLO", headers)
        answer = link.receive()
        assert (answer.command, answer.get("Code")) == ("ERROR", "400")
        assert link.closed_by_peer()
    assert node.live_rows() == []


def test_silent_client_is_closed_after_the_hello_timeout(node_factory: Callable[..., CnsNode]) -> None:
    node = node_factory(cns_hello_timeout=0.5)
    with CnsLink.open(HOST, node.plain[0]) as link:
        started = time.monotonic()
        assert link.closed_by_peer(timeout=5)
        assert time.monotonic() - started < 3


def test_slow_client_trickling_a_hello_is_cut_at_the_hello_timeout(node_factory: Callable[..., CnsNode]) -> None:
    node = node_factory(cns_hello_timeout=1)
    with CnsLink.open(HOST, node.plain[0]) as link:
        started = time.monotonic()
        with pytest.raises(OSError):  # the gateway hangs up while bytes still trickle in
            for byte in b"CNS/1 HELLO\nDevice-Id:" + b"s" * 200:
                link.send_raw(bytes([byte]))
                time.sleep(0.02)
        assert time.monotonic() - started < 4


# ---- a worker busy with a storm: deadlines are the peer's, not the worker's ----------------------------------------
def late_turns(node: CnsNode) -> None:
    """The worker's turns from now on: one busy from 0.8 s to 1.3 s (the 1 s deadline passes meanwhile), the next
    busy until 2.3 s before it comes to the deadline; the device does its part at 1.5 s, well before the worker looks
    at it again."""
    node.stall(0.5, at=0.8)
    node.stall(1.0, at=1.1)
    time.sleep(1.5)


def test_a_hello_sent_in_time_is_answered_when_the_worker_reads_it_late(node_factory: Callable[..., CnsNode]) -> None:
    node = node_factory(cns_hello_timeout=1)
    with CnsLink.open(HOST, node.settings.dispatcher_plain_port, timeout=10) as link:
        late_turns(node)
        link.send(hello_frame("LATE1"))
        assert link.receive().command == "REDIRECT"


def test_a_connection_without_hello_is_counted_as_refused(node_factory: Callable[..., CnsNode]) -> None:
    from pnp_integrated.refusals import CNS_HELLO_TIMEOUT, REFUSED

    node = node_factory(cns_hello_timeout=0.5)
    counted = REFUSED.labels(CNS_HELLO_TIMEOUT)._value.get()
    for port in (node.settings.dispatcher_plain_port, node.plain[0]):
        with CnsLink.open(HOST, port) as link:
            assert link.closed_by_peer(timeout=5)
    wait_until(lambda: REFUSED.labels(CNS_HELLO_TIMEOUT)._value.get() == counted + 2, 5,
               "both closes in pnp_refused_total")


def test_idle_session_is_closed_after_keepalive_times_retries(node: CnsNode) -> None:
    link, answer = connect(HOST, node.plain[0], "IDLE", keepalive="1,0")
    with link:
        assert answer.command == "WELCOME"
        link.command("PING")
        assert link.receive().command == "PONG"
        started = time.monotonic()
        assert link.closed_by_peer(timeout=5)
        assert 0.5 < time.monotonic() - started < 3
    wait_until(lambda: not node.live_rows(), 5, "every session to close")


def test_pings_keep_a_session_alive(node: CnsNode) -> None:
    link, _ = connect(HOST, node.plain[0], "ALIVE", keepalive="1,0")
    with link:
        for _ in range(4):
            time.sleep(0.5)
            link.command("PING")
            assert link.receive().command == "PONG"


def test_second_hello_replaces_the_old_session(node: CnsNode) -> None:
    old, first = connect(HOST, node.plain[0], "DUP")
    new, second = connect(HOST, node.plain[1], "DUP")
    with old, new:
        assert second.command == "WELCOME" and second.get("Session") != first.get("Session")
        kicked = old.receive()
        assert (kicked.command, kicked.get("Code")) == ("ERROR", "409")
        assert old.closed_by_peer()
        [row] = node.live_rows()
        assert (row.token, row.port) == (second.get("Session"), node.plain[1])
        new.command("PING")
        assert new.receive().command == "PONG"


def test_hello_twice_on_one_connection_is_400(node: CnsNode) -> None:
    link, _ = connect(HOST, node.plain[0], "TWICE")
    with link:
        link.send(hello_frame("TWICE"))
        assert link.receive().get("Code") == "400"
        assert link.closed_by_peer()


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_full_gateway_port_answers_busy(node_factory: Callable[..., CnsNode], database: str,
                                        request: pytest.FixtureRequest) -> None:
    # PostgreSQL: near capacity the admissions to a port take turns on an advisory lock.
    extra = {"database_url": request.getfixturevalue("postgres_url")} if database == "postgresql" else {}
    node = node_factory(cns_port_capacity=1, **extra)
    first, _ = connect(HOST, node.plain[0], "ONE")
    with first:
        link, answer = connect(HOST, node.plain[0], "TWO")
        with link:
            assert answer.command == "BUSY" and answer.get("Retry-After")
            assert link.closed_by_peer()
        assert [r.device_key for r in node.live_rows()] == ["ONE"]
    # Prime hears of the admitted device only: a refused one never "connected", so it never "disconnects" either.
    assert [e["device"]["id"] for e in node.outbox("device.connected")] == ["ONE"]
    gone = wait_until(lambda: node.outbox("device.disconnected"), 5, "ONE's disconnection")
    assert [e["device"]["id"] for e in gone] == ["ONE"]


def test_passive_node_refuses_with_503(node: CnsNode) -> None:
    import dataclasses

    from pnp_integrated.context import NodeRole

    # An HA node whose lease is held by nobody: PASSIVE.
    in_ha = dataclasses.replace(node.settings, ha_mode="vip")
    gateway_state(node.app).role = NodeRole(settings=in_ha, state="PASSIVE")
    for port in (node.settings.dispatcher_plain_port, node.plain[0]):
        with CnsLink.open(HOST, port) as link:
            link.send(hello_frame("STANDBY"))
            answer = link.receive()
            assert (answer.get("Code"), answer.get("Retry-After") is not None) == ("503", True)
            assert link.closed_by_peer()


def test_node_taking_over_holds_a_device_for_its_lease_then_serves_it(node: CnsNode) -> None:
    import dataclasses
    import datetime as dt

    from pnp_integrated.context import NodeRole
    from pnp_integrated.models import utcnow

    in_ha = dataclasses.replace(node.settings, ha_mode="vip")

    def taking_over() -> None:
        """The VIP has arrived, the lease follows 0.3 s later: a refusal now would cost the device its Retry-After."""
        role = gateway_state(node.app).role = NodeRole(settings=in_ha, vip_ok=True, state="PASSIVE")

        def lease_taken() -> None:
            time.sleep(0.3)
            role.lease_node, role.lease_expires = in_ha.node_name, utcnow() + dt.timedelta(seconds=60)

        threading.Thread(target=lease_taken, daemon=True).start()

    taking_over()
    answer = dispatch(HOST, node.settings.dispatcher_plain_port, "TAKEOVER-D")
    assert answer.command == "REDIRECT"
    taking_over()
    link, welcome = connect(HOST, node.plain[0], "TAKEOVER-G")
    with link:
        assert welcome.command == "WELCOME"
    assert "TAKEOVER-G" in [e["device"]["id"] for e in node.outbox("device.connected")]


# ---- framing errors and limits ------------------------------------------------------------------------------
@pytest.mark.parametrize("wire", [b"GET / HTTP/1.1\r\n\r\n", b"CNS/1 FROB\n\n", b"CNS/1 HELLO\nno colon\n\n"])
def test_garbage_is_400_and_closed(node: CnsNode, wire: bytes) -> None:
    with CnsLink.open(HOST, node.plain[0]) as link:
        link.send_raw(wire)
        answer = link.receive()
        assert (answer.command, answer.get("Code")) == ("ERROR", "400")
        assert link.closed_by_peer()


def test_oversized_head_and_body_are_413(node_factory: Callable[..., CnsNode]) -> None:
    node = node_factory(cns_max_body_bytes=2048)
    link, _ = connect(HOST, node.plain[0], "BIG")
    with link:
        link.send_raw(b"CNS/1 PUBLISH\nSubject:a.b\nContent-Length:4096\n\n")
        answer = link.receive()
        assert (answer.command, answer.get("Code")) == ("ERROR", "413")
        assert link.closed_by_peer()
    with CnsLink.open(HOST, node.plain[1]) as link:
        link.send_raw(b"CNS/1 HELLO\nDevice-Id:x\nJunk:" + b"j" * 9000 + b"\n\n")
        assert link.receive().get("Code") == "413"


# ---- subscriptions, publish, deliver ------------------------------------------------------------------------
def test_subscribe_maps_subjects_per_device_and_deliver_respects_them(node: CnsNode) -> None:
    link, _ = connect(HOST, node.plain[0], "SUB1", subjects=("cisco.mgmt.cns.config.load",))
    other_process = create_app({**node.app.config["PNP_SETTINGS"], "TESTING": True})
    worker = node.app.extensions["pnp_gateway"].cns_worker
    with link:
        connected_at = node.live_rows()[0].last_frame_at
        worker.flush_activity()  # the worker writes activity in batches, not one statement per frame
        row = node.live_rows()[0]
        assert row.subjects == ["cisco.mgmt.cns.config.load.SUB1"] and row.last_frame_at > connected_at
        with other_process.app_context():
            # The other worker is reached through its mailbox with no database transaction of ours held open.
            import pnp_integrated.cns.worker as cns_worker_module

            real_post, open_during_post = cns_worker_module.post, []

            def watched_post(*args: Any, **kwargs: Any) -> bool | None:
                open_during_post.append(db.session().in_transaction())
                return real_post(*args, **kwargs)

            cns_worker_module.post = watched_post  # type: ignore[assignment]
            try:
                assert deliver("SUB1", "cisco.mgmt.cns.config.load", "<config-event/>") is True
            finally:
                cns_worker_module.post = real_post  # type: ignore[assignment]
            assert open_during_post == [False]
            assert deliver("SUB1", "cisco.mgmt.cns.exec.cmd", "<exec-cmd-event/>") is False
            assert deliver("NOBODY", "cisco.mgmt.cns.config.load", "<config-event/>") is False
        frame = link.receive()
        assert (frame.command, frame.get("Subject"), frame.body) == (
            "DELIVER", "cisco.mgmt.cns.config.load", b"<config-event/>")
        assert frame.get("Message-Id")
        link.command("UNSUBSCRIBE", {"Subject": "cisco.mgmt.cns.config.load", "Receipt": "u"})
        assert link.receive().get("Receipt-Id") == "u"
        worker.flush_activity()
        assert node.live_rows()[0].subjects == []
        with other_process.app_context():
            assert deliver("SUB1", "cisco.mgmt.cns.config.load.SUB1", "<config-event/>") is False


def test_subscribe_without_subject_is_400(node: CnsNode) -> None:
    link, _ = connect(HOST, node.plain[0], "NOSUBJ")
    with link:
        link.command("SUBSCRIBE")
        assert link.receive().get("Code") == "400"
        assert link.closed_by_peer()


def test_publish_is_recorded_before_its_receipt(node: CnsNode) -> None:
    link, _ = connect(HOST, node.plain[0], "PUB1")
    body = "<config-success><identifier>J1</identifier><config-id>PUB1</config-id></config-success>"
    with link:
        link.command("PUBLISH", {"Subject": "cisco.mgmt.cns.config.complete", "Receipt": "r1"}, body)
        assert link.receive().get("Receipt-Id") == "r1"
        [event] = node.outbox("cns.event")  # already committed when the receipt arrived
        assert (event["subject"], event["xml"], event["device"]["id"]) == (
            "cisco.mgmt.cns.config.complete.PUB1", body, "PUB1")


@pytest.mark.parametrize("subject, body", [
    ("cisco.mgmt.cns.inventory", "<device-details><unclosed></device-details>"),
    ("cisco.mgmt.cns.inventory", ""),
    ("cisco.mgmt.cns.config.complete", "<config-failure/>"),
    ("x.y", '<!DOCTYPE x [<!ENTITY a "aaaa">]><x>&a;</x>'),
])
def test_bad_publish_body_is_400_and_the_session_stays_open(node: CnsNode, subject: str, body: str) -> None:
    link, _ = connect(HOST, node.plain[0], "XML1")
    with link:
        link.command("PUBLISH", {"Subject": subject, "Receipt": "bad"}, body)
        answer = link.receive()
        assert (answer.command, answer.get("Code")) == ("ERROR", "400")
        link.command("PING")
        assert link.receive().command == "PONG"
    assert node.outbox("cns.event") == []


def test_bye_ends_the_session_cleanly(node: CnsNode) -> None:
    link, _ = connect(HOST, node.plain[0], "BYE1")
    with link:
        link.command("BYE", {"Receipt": "b"})
        assert [link.receive().command, link.receive().command] == ["RECEIPT", "BYE"]
        with pytest.raises(LinkClosed):
            link.receive()
    rows = wait_until(lambda: [r for r in closed_rows(node) if r.device_key == "BYE1"], 5,
                      "the session of BYE1 to close")
    assert rows[0].close_reason == "BYE from device"


def closed_rows(node: CnsNode) -> list[DeviceSession]:
    with node.app.app_context():
        rows = list(db.session.scalars(select(DeviceSession).where(DeviceSession.closed_at.is_not(None))))
        db.session.expunge_all()
        db.session.remove()
        return rows


def test_many_devices_at_once(node: CnsNode) -> None:
    links = []
    try:
        for i in range(60):
            answer = dispatch(HOST, node.settings.dispatcher_plain_port, f"M{i}")
            link, welcome = connect(HOST, int(answer.get("Port") or 0), f"M{i}")
            assert welcome.command == "WELCOME"
            links.append(link)
        per_port = [sum(r.port == p for r in node.live_rows()) for p in node.plain]
        assert per_port == [12] * 5  # the dispatcher spread them evenly
    finally:
        for link in links:
            link.close()


def test_connection_reset_mid_frame_closes_the_session(node: CnsNode) -> None:
    link, _ = connect(HOST, node.plain[0], "RST")
    link.send_raw(b"CNS/1 PUBLISH\nSubject:a.b\nContent-Length:100\n\n<x")
    link.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    link.close()
    wait_until(lambda: not node.live_rows(), 5, "every session to close")


def test_stopping_the_gateway_tells_devices_to_come_back(node_factory: Callable[..., CnsNode]) -> None:
    node = node_factory()
    link, _ = connect(HOST, node.plain[0], "STOPME")
    with link:
        node.stop()
        answer = link.receive()
        assert (answer.command, answer.get("Code"), answer.get("Retry-After") is not None) == ("ERROR", "503", True)
    assert node.live_rows() == []

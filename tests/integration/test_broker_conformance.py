"""One STOMP conformance suite for both brokers the simulated Prime can run: the embedded one and ActiveMQ 5.17.

What a gateway relies on: receipts, acknowledgement modes, redelivery of what a vanished consumer did not
acknowledge, competing consumers, topics, heart-beats in both directions, the TLS policy of the Prime port, the
loopback-only bus port and frame limits; and who may do what: a login on both ports, and per-destination grants.
"""

from __future__ import annotations

import socket
import ssl
import time
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from pnp_integrated.config import Settings, load_settings
from pnp_integrated.devsim.node import node_environment, node_settings
from pnp_integrated.prime.accounts import AccountStore, accounts_path, prime_passcode
from pnp_integrated.prime.client import StompClient, StompClientError
from pnp_integrated.prime.server import PrimeProcess
from pnp_integrated.prime.stomp import Frame, make_frame
from pnp_integrated.tls import ensure_certificates


@pytest.fixture(scope="module", params=["embedded", "activemq"])
def broker(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    data_dir = tmp_path_factory.mktemp(f"prime-{request.param}")
    values = {k: v for k, v in node_settings(Path(data_dir)).items()
              if k in ("data_dir", "broker_port", "bus_port", "health_port")}
    settings = load_settings(values, environ={})
    ensure_certificates(settings)
    store = AccountStore(accounts_path(settings))
    for login, role in (("pnp-gateway", "gateway"), ("other", "gateway")):
        store.put(login, role, PASSCODES[login], activemq=True)
    # The generic STOMP behaviour is exercised on destinations of its own, granted to this account only.
    store.put("conformance", "conformance", PASSCODES["conformance"], activemq=True,
              send=CONFORMANCE, receive=CONFORMANCE)
    prime_passcode(settings, activemq=True)
    prime = PrimeProcess(settings, broker=request.param, env=node_environment(values))
    prime.start()
    yield settings
    prime.stop()


PASSCODES = {"pnp-gateway": "gateway-passcode-1", "other": "other-passcode-22", "conformance": "conformance-pass"}
CONFORMANCE = ["/queue/conformance.>", "/topic/conformance.>"]
EVENTS, COMMANDS = "/queue/pnp.gateway.events", "/queue/pnp.gateway.commands"


def queue_name() -> str:
    return f"/queue/conformance.{uuid.uuid4().hex[:8]}"


def plain(settings: Settings, login: str = "conformance", **kwargs: object) -> StompClient:
    passcode = prime_passcode(settings) if login == "prime" else PASSCODES[login]
    client = StompClient("127.0.0.1", settings.bus_port, timeout=5, login=(login, passcode),
                         **kwargs)  # type: ignore[arg-type]
    client.connect()
    return client


def tls_context(settings: Settings, version: ssl.TLSVersion | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(settings.certs_dir / "ca.pem"))
    if version is not None:
        with warnings.catch_warnings():  # an old version on purpose: it must be refused
            warnings.simplefilter("ignore", DeprecationWarning)
            ctx.minimum_version = ctx.maximum_version = version
        ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    return ctx


def messages(client: StompClient, count: int, timeout: float = 5.0) -> list[Frame]:
    out: list[Frame] = []
    deadline = time.monotonic() + timeout
    while len(out) < count and time.monotonic() < deadline:
        frame = client.receive(max(0.05, deadline - time.monotonic()))
        if frame is not None and frame.command == "MESSAGE":
            out.append(frame)
    return out


def test_send_with_receipt_is_confirmed(broker: Settings) -> None:
    with plain(broker) as client:
        answer = client.request(make_frame("SEND", {"destination": queue_name()}, b"hello"))
    assert answer.command == "RECEIPT"


def test_client_individual_unacked_messages_are_redelivered_to_the_next_consumer(broker: Settings) -> None:
    queue = queue_name()
    with plain(broker) as producer:
        for i in range(6):
            producer.send(queue, f"m{i}".encode())
    first = plain(broker)
    first.subscribe(queue, "s1", ack="client-individual")
    got = messages(first, 6)
    assert [m.body for m in got] == [f"m{i}".encode() for i in range(6)]
    for m in got[::2]:
        first.ack(m, receipt=True)  # m0, m2, m4
    first.close()  # vanishes without acknowledging m1, m3, m5

    with plain(broker) as second:
        second.subscribe(queue, "s2", ack="client-individual")
        again = messages(second, 3)
        assert [m.body for m in again] == [b"m1", b"m3", b"m5"]
        assert all(m.get("redelivered") == "true" for m in again)
        for m in again:
            second.ack(m, receipt=True)
        assert messages(second, 1, timeout=0.5) == []


def test_client_ack_is_cumulative(broker: Settings) -> None:
    queue = queue_name()
    with plain(broker) as producer:
        for i in range(5):
            producer.send(queue, f"m{i}".encode())
    first = plain(broker)
    first.subscribe(queue, "s1", ack="client")
    got = messages(first, 5)
    first.ack(got[2], receipt=True)  # acknowledges m0..m2
    first.close()
    with plain(broker) as second:
        second.subscribe(queue, "s2", ack="auto")
        assert [m.body for m in messages(second, 2)] == [b"m3", b"m4"]


def test_auto_ack_messages_are_not_redelivered(broker: Settings) -> None:
    queue = queue_name()
    with plain(broker) as producer:
        producer.send(queue, b"once")
    first = plain(broker)
    first.subscribe(queue, "s1")
    assert [m.body for m in messages(first, 1)] == [b"once"]
    first.close()
    with plain(broker) as second:
        second.subscribe(queue, "s2")
        assert messages(second, 1, timeout=0.7) == []


def test_competing_consumers_share_a_queue_without_duplicates(broker: Settings) -> None:
    queue = queue_name()
    one, two = plain(broker), plain(broker)
    for client, name in ((one, "a"), (two, "b")):
        client.subscribe(queue, name, ack="client-individual", headers={"activemq.prefetchSize": "1"})
    with plain(broker) as producer:
        for i in range(10):
            producer.send(queue, f"m{i}".encode())
    seen: dict[str, list[bytes]] = {"a": [], "b": []}
    deadline = time.monotonic() + 8
    while sum(map(len, seen.values())) < 10 and time.monotonic() < deadline:
        for client, name in ((one, "a"), (two, "b")):
            frame = client.receive(0.1)
            if frame is not None and frame.command == "MESSAGE":
                seen[name].append(frame.body)
                client.ack(frame)
    one.disconnect()
    two.disconnect()
    everything = seen["a"] + seen["b"]
    assert sorted(everything) == sorted(f"m{i}".encode() for i in range(10))
    assert seen["a"] and seen["b"]


def test_topic_messages_reach_every_subscriber(broker: Settings) -> None:
    topic = f"/topic/conformance.{uuid.uuid4().hex[:8]}"
    one, two = plain(broker), plain(broker)
    one.subscribe(topic, "a")
    two.subscribe(topic, "b")
    with plain(broker) as producer:
        producer.send(topic, b"to all")
    assert [m.body for m in messages(one, 1)] == [b"to all"]
    assert [m.body for m in messages(two, 1)] == [b"to all"]
    one.disconnect()
    two.disconnect()


def test_nack_is_accepted_and_the_message_not_lost_silently(broker: Settings) -> None:
    queue = queue_name()
    with plain(broker) as client:
        client.send(queue, b"refuse me")
        client.subscribe(queue, "s", ack="client-individual")
        [message] = messages(client, 1)
        client.nack(message)  # raises on ERROR: both brokers must accept it with a receipt


def test_broker_sends_heartbeats_when_asked(broker: Settings) -> None:
    client = plain(broker, heartbeat=(0, 500))
    try:
        cx, _cy = (int(v) for v in (client.connected_frame.get("heart-beat") or "0,0").split(","))  # type: ignore[union-attr]
        assert cx > 0, "the broker offers no heart-beats"
        deadline = time.monotonic() + max(3.0, cx * 3 / 1000)
        while client.heartbeats_received == 0 and time.monotonic() < deadline:
            client.receive(0.2)
        assert client.heartbeats_received >= 1
    finally:
        client.close()


def test_silent_client_that_promised_heartbeats_is_disconnected(broker: Settings) -> None:
    client = plain(broker, heartbeat=(500, 0))
    deadline = time.monotonic() + 8
    closed = False
    while time.monotonic() < deadline:
        try:
            client.receive(0.3)
        except StompClientError:
            closed = True
            break
        if not client.is_open:
            closed = True
            break
    client.close()
    assert closed, "the broker kept a connection whose client stopped its heart-beats"


def test_prime_port_speaks_tls_12_or_newer_with_the_node_certificate(broker: Settings) -> None:
    client = StompClient("127.0.0.1", broker.broker_port, context=tls_context(broker), timeout=5,
                         login=("conformance", PASSCODES["conformance"]))
    assert client.connect().command == "CONNECTED"
    client.disconnect()
    with pytest.raises(StompClientError):
        StompClient("127.0.0.1", broker.broker_port, context=tls_context(broker, ssl.TLSVersion.TLSv1_1),
                    timeout=5).connect()
    with pytest.raises(StompClientError):  # plain STOMP on the TLS port gets nowhere
        StompClient("127.0.0.1", broker.broker_port, timeout=3).connect()


def test_bus_port_listens_on_loopback_only(broker: Settings) -> None:
    addresses = {c.laddr.ip for c in psutil.net_connections(kind="tcp")
                 if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == broker.bus_port}
    assert addresses and all(a in ("127.0.0.1", "::ffff:127.0.0.1") for a in addresses)


def test_oversized_frame_gets_an_error_and_the_connection_closes(broker: Settings) -> None:
    client = plain(broker)
    size = 11 * 1024 * 1024  # both brokers cap frames at 10 MiB
    client.send_raw(f"SEND\ndestination:{queue_name()}\ncontent-length:{size}\n\n".encode())
    try:
        client.send_raw(b"x" * size + b"\x00")
    except StompClientError:
        pass  # the broker may close before the body is through
    answers: list[Frame] = []
    try:
        while (frame := client.receive(5)) is not None:
            answers.append(frame)
    except StompClientError:
        pass
    client.close()
    # ActiveMQ sometimes repeats its ERROR before closing; what matters is errors only, then the close.
    assert answers and {f.command for f in answers} == {"ERROR"}


def test_frames_before_connect_are_refused(broker: Settings) -> None:
    with socket.create_connection(("127.0.0.1", broker.bus_port), timeout=5) as sock:
        sock.sendall(b"SEND\ndestination:/queue/x\n\nsneaky\x00")
        data = b""
        try:
            while b"\x00" not in data and (chunk := sock.recv(4096)):
                data += chunk
        except TimeoutError:
            pass
    assert data.startswith(b"ERROR\n")


# ---- who may do what -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("port_name", ["bus_port", "broker_port"])
@pytest.mark.parametrize("login", [None, ("pnp-gateway", "not-the-passcode"), ("nobody", "gateway-passcode-1")])
def test_connect_without_a_valid_login_is_refused_on_both_ports(broker: Settings, port_name: str,
                                                                login: tuple[str, str] | None) -> None:
    port = getattr(broker, port_name)
    context = tls_context(broker) if port_name == "broker_port" else None
    client = StompClient("127.0.0.1", port, context=context, timeout=5, login=login)
    with pytest.raises(StompClientError, match="refused CONNECT"):
        client.connect()


def refusal(client: StompClient, frame: Frame) -> Frame | None:
    """What the broker answers a frame sent with a receipt: RECEIPT, ERROR, or None when it just closed."""
    try:
        client.send_frame(frame)
        while (answer := client.receive(5)) is not None:
            if answer.command in ("RECEIPT", "ERROR"):
                return answer
    except StompClientError:
        pass
    return None


@pytest.mark.parametrize(("login", "command", "destination"), [
    ("pnp-gateway", "SUBSCRIBE", EVENTS),    # would take events away from Prime
    ("pnp-gateway", "SEND", COMMANDS),       # would command the devices
    ("other", "SEND", "/queue/anything.else"),
    ("prime", "SUBSCRIBE", COMMANDS),        # would swallow commands meant for the gateway
    ("prime", "SEND", EVENTS),               # forged gateway events
])
def test_an_account_is_refused_every_destination_outside_its_grants(broker: Settings, login: str, command: str,
                                                                    destination: str) -> None:
    client = plain(broker, login)
    headers = {"destination": destination, "receipt": "r1"}
    if command == "SUBSCRIBE":
        headers.update(id="s1", ack="client-individual")
    answer = refusal(client, make_frame(command, headers, b'{"type": "cns.exec"}' if command == "SEND" else b""))
    client.close()
    assert answer is None or answer.command == "ERROR", f"{login} {command} {destination} was accepted"


def test_the_contract_parties_get_exactly_their_queues(broker: Settings) -> None:
    prime, gateway = plain(broker, "prime"), plain(broker, "pnp-gateway")
    body = f'{{"id": "{uuid.uuid4()}"}}'.encode()
    gateway.subscribe(COMMANDS, "cmd", ack="client-individual")
    assert prime.request(make_frame("SEND", {"destination": COMMANDS, "persistent": "true"}, body)).command \
        == "RECEIPT"
    [command] = messages(gateway, 1)
    assert command.body == body
    gateway.ack(command, receipt=True)
    assert gateway.request(make_frame("SEND", {"destination": EVENTS, "persistent": "true"}, body)).command \
        == "RECEIPT"
    # The simulated Prime's own sink consumes the events queue too, so only the grant is checked here.
    subscribe = make_frame("SUBSCRIBE", {"destination": EVENTS, "id": "ev", "ack": "client-individual"})
    assert prime.request(subscribe).command == "RECEIPT"
    prime.disconnect()
    gateway.disconnect()

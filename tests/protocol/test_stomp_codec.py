"""The STOMP 1.2 codec: what a broker peer would see on the wire."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pnp_integrated.prime.stomp import (
    HEARTBEAT,
    Frame,
    FrameParser,
    Limits,
    StompProtocolError,
    encode_frame,
    error_frame,
    make_frame,
    negotiate_heartbeat,
    parse_heartbeat,
)

header_text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=30)
header_names = header_text.filter(lambda s: s != "content-length" and s != "")
commands = st.sampled_from(["SEND", "MESSAGE", "SUBSCRIBE", "ACK", "RECEIPT", "ERROR"])
frames = st.builds(
    Frame,
    commands,
    st.lists(st.tuples(header_names, header_text), max_size=6).map(tuple),
    st.binary(max_size=300),
)


def parse_all(data: bytes, chunk: int | None = None, limits: Limits | None = None) -> list[object]:
    parser = FrameParser(limits or Limits())
    events: list[object] = []
    pieces = [data] if chunk is None else [data[i : i + chunk] for i in range(0, len(data), chunk)]
    for piece in pieces:
        parser.receive_data(piece)
        while (event := parser.next_event()) is not None:
            events.append(event)
    return events


def body_headers(frame: Frame) -> Frame:
    """The frame as it comes back: the encoder adds content-length for non-empty bodies."""
    extra = (("content-length", str(len(frame.body))),) if frame.body else ()
    return Frame(frame.command, frame.headers + extra, frame.body)


@given(st.lists(frames, min_size=1, max_size=5), st.integers(min_value=1, max_value=64))
@settings(max_examples=200, deadline=None)
def test_frames_survive_a_round_trip_in_any_chunking(sent: list[Frame], chunk: int) -> None:
    wire = b"".join(encode_frame(f) + b"\n" for f in sent)
    events = parse_all(wire, chunk)
    received = [e for e in events if e is not HEARTBEAT]
    assert received == [body_headers(f) for f in sent]
    assert events.count(HEARTBEAT) == len(sent)  # the EOL after each NUL is a heart-beat


@given(header_text)
def test_connect_headers_are_not_escaped(value: str) -> None:
    value = value.replace("\r", "").replace("\n", "")
    frame = make_frame("CONNECT", {"login": value, "accept-version": "1.2"})
    assert encode_frame(frame).startswith(f"CONNECT\nlogin:{value}\n".encode())
    assert parse_all(encode_frame(frame)) == [frame]


def test_escapes_on_the_wire_follow_the_spec() -> None:
    wire = encode_frame(make_frame("SEND", {"a:b": "x\ny\\z\r"}))
    assert wire == b"SEND\na\\cb:x\\ny\\\\z\\r\n\n\x00"


def test_undefined_escape_is_a_protocol_error() -> None:
    with pytest.raises(StompProtocolError, match="undefined escape"):
        parse_all(b"SEND\ndestination:/queue/a\\t\n\n\x00")


def test_body_with_nul_needs_content_length() -> None:
    [frame] = parse_all(b"SEND\ncontent-length:3\n\na\x00b\x00")
    assert isinstance(frame, Frame) and frame.body == b"a\x00b"
    assert parse_all(b"SEND\n\na\x00") == [Frame("SEND", (), b"a")]


def test_crlf_line_endings_and_heartbeats() -> None:
    events = parse_all(b"\r\n\nSEND\r\ndestination:/queue/a\r\n\r\nhi\x00\r\n")
    assert events == [HEARTBEAT, HEARTBEAT, Frame("SEND", (("destination", "/queue/a"),), b"hi"), HEARTBEAT]


def test_repeated_header_first_value_wins() -> None:
    [frame] = parse_all(b"MESSAGE\nfoo:first\nfoo:second\n\n\x00")
    assert isinstance(frame, Frame) and frame.get("foo") == "first"


@pytest.mark.parametrize(
    ("wire", "message"),
    [
        (b"BOGUS\n\n\x00", "unknown command"),
        (b"SEND\nno-colon\n\n\x00", "without a colon"),
        (b"SEND\ncontent-length:abc\n\n\x00", "not a number"),
        (b"SEND\ncontent-length:\xc2\xb2\n\n\x00", "not a number"),  # a digit to str.isdigit, not to int()
        (b"SEND\ncontent-length:2\n\nabc\x00", "not followed by NUL"),
        (b"SEND\ndestination:/q\x00", "NUL"),
        (b"SEND\ncontent-length:99999999\n\n", "exceeds the limit"),
        (b"SEND\nx:\xff\n\n\x00", "UTF-8"),
    ],
)
def test_malformed_input_is_a_protocol_error(wire: bytes, message: str) -> None:
    with pytest.raises(StompProtocolError, match=message):
        parse_all(wire, limits=Limits(max_body_bytes=1000))


def test_limits_stop_oversized_frames_before_they_are_buffered_whole() -> None:
    parser = FrameParser(Limits(max_header_bytes=100, max_body_bytes=100))
    parser.receive_data(b"SEND\n" + b"h:" + b"x" * 200)
    with pytest.raises(StompProtocolError, match="headers larger"):
        parser.next_event()
    parser = FrameParser(Limits(max_body_bytes=100))
    parser.receive_data(b"SEND\n\n" + b"y" * 101)
    with pytest.raises(StompProtocolError, match="body exceeds"):
        parser.next_event()
    parser = FrameParser(Limits(max_headers=2))
    parser.receive_data(b"SEND\na:1\nb:2\nc:3\n\n\x00")
    with pytest.raises(StompProtocolError, match="more than 2 headers"):
        parser.next_event()


@given(st.binary(max_size=200))
@settings(max_examples=300, deadline=None)
def test_garbage_never_crashes_the_parser(data: bytes) -> None:
    parser = FrameParser(Limits(max_header_bytes=64, max_body_bytes=64))
    parser.receive_data(data)
    try:
        for _ in range(len(data) + 1):
            if parser.next_event() is None:
                break
    except StompProtocolError as exc:
        assert str(exc)


def test_nul_in_a_header_is_refused_when_encoding() -> None:
    with pytest.raises(ValueError, match="NUL"):
        encode_frame(make_frame("SEND", {"destination": "/queue/a\x00"}))


def test_error_frame_carries_message_and_receipt() -> None:
    wire = encode_frame(error_frame("frame too large", "limit is 10 bytes", receipt_id="r1"))
    [frame] = parse_all(wire)
    assert isinstance(frame, Frame)
    assert frame.get("message") == "frame too large" and frame.get("receipt-id") == "r1"
    assert frame.body == b"limit is 10 bytes"


def test_heartbeat_negotiation() -> None:
    assert parse_heartbeat("1000,2000") == (1000, 2000)
    assert parse_heartbeat(None) == (0, 0)
    with pytest.raises(StompProtocolError):
        parse_heartbeat("fast")
    # peer can send every 1000ms and wants ours every 500; we can send every 2000 and want theirs every 3000
    assert negotiate_heartbeat(1000, 500, 2000, 3000) == (2000, 3000)
    assert negotiate_heartbeat(0, 500, 2000, 3000) == (2000, 0)
    assert negotiate_heartbeat(1000, 0, 2000, 3000) == (0, 3000)

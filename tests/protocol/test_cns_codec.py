"""CNS-W1 codec: round trips, limits, line ends, and arbitrary input never escaping as anything but a protocol error."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pnp_integrated.cns.codec import (
    ALL_COMMANDS,
    CLOSED,
    DEVICE_COMMANDS,
    GATEWAY_COMMANDS,
    NEED_DATA,
    CnsProtocolError,
    Frame,
    FrameReader,
    error_frame,
    make_frame,
    serialize,
)

names = st.from_regex(r"[A-Za-z0-9-]{1,20}", fullmatch=True).filter(lambda n: n.lower() != "content-length")
values = st.text(
    alphabet=st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="\x7f"), max_size=40
).map(lambda v: v.strip(" "))
frames = st.builds(
    Frame,
    command=st.sampled_from(sorted(ALL_COMMANDS)),
    headers=st.lists(st.tuples(names, values), max_size=6).map(tuple),
    body=st.binary(max_size=300),
)


def read_all(data: bytes, chunks: list[int] | None = None, accept: frozenset[str] = ALL_COMMANDS,
             **limits: int) -> list[Frame]:
    """Feed ``data`` (split at ``chunks`` sizes) then EOF; every frame read."""
    reader = FrameReader(accept, **limits)
    out: list[Frame] = []
    pos = 0
    for size in [*(chunks or []), len(data)]:
        reader.receive_data(data[pos:pos + size])
        pos += size
        while (event := reader.next_event()) is not NEED_DATA:
            assert event is not CLOSED
            assert isinstance(event, Frame)
            out.append(event)
        if pos >= len(data):
            break
    reader.receive_data(b"")
    assert reader.next_event() is CLOSED
    return out


@settings(max_examples=300, deadline=None)
@given(st.lists(frames, min_size=1, max_size=4), st.lists(st.integers(1, 64), max_size=30))
def test_every_frame_round_trips_in_any_chunking(batch: list[Frame], chunks: list[int]) -> None:
    wire = b"".join(serialize(f) for f in batch)
    assert read_all(wire, chunks) == batch


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=400), st.lists(st.integers(1, 50), max_size=20))
def test_arbitrary_bytes_only_ever_raise_the_protocol_error(data: bytes, chunks: list[int]) -> None:
    reader = FrameReader(DEVICE_COMMANDS, max_header_bytes=256, max_body_bytes=1024)
    pos = 0
    try:
        for size in [*chunks, len(data)]:
            reader.receive_data(data[pos:pos + size])
            pos += size
            while isinstance(reader.next_event(), Frame):
                pass
        reader.receive_data(b"")
        while isinstance(reader.next_event(), Frame):
            pass
    except CnsProtocolError as exc:
        assert exc.code in (400, 413)
        with pytest.raises(CnsProtocolError):  # a broken stream stays broken
            reader.next_event()


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_garbage_after_a_valid_frame_still_yields_the_frame_first(garbage: bytes) -> None:
    reader = FrameReader(DEVICE_COMMANDS)
    reader.receive_data(b"CNS/1 PING\n\n" + garbage)
    assert reader.next_event() == Frame("PING")


def test_crlf_and_lf_give_the_same_frame() -> None:
    lf = b"CNS/1 HELLO\nDevice-Id:r1\nContent-Length:4\n\n<a/>"
    crlf = lf.replace(b"\n", b"\r\n")
    assert read_all(lf) == read_all(crlf) == [Frame("HELLO", (("Device-Id", "r1"),), b"<a/>")]


def test_header_names_are_case_insensitive_and_values_trimmed() -> None:
    [frame] = read_all(b"CNS/1 HELLO\ndEvIcE-iD:   r1  \nCONTENT-LENGTH: 2\n\nab")
    assert frame.get("Device-Id") == "r1"
    assert frame.body == b"ab"


def test_unknown_headers_are_ignored_and_first_repeat_wins() -> None:
    [frame] = read_all(b"CNS/1 PING\nX-Whatever:1\nReceipt:a\nreceipt:b\n\n")
    assert frame.get("receipt") == "a"
    assert frame.get("Missing", "dflt") == "dflt"


def test_blank_lines_between_frames_are_skipped() -> None:
    assert read_all(b"\n\r\nCNS/1 PING\n\n\nCNS/1 BYE\n\n") == [Frame("PING"), Frame("BYE")]


def test_head_limit_is_exact() -> None:
    start = b"CNS/1 PING\n"
    filler = b"X:" + b"a" * (100 - len(start) - 3) + b"\n"
    assert len(start + filler) == 100
    assert read_all(start + filler + b"\n", max_header_bytes=256) == [Frame("PING", (("X", "a" * 86),))]
    with pytest.raises(CnsProtocolError) as exc:
        read_all(start + b"X:" + b"a" * 300 + b"\n\n", max_header_bytes=256)
    assert exc.value.code == 413


def test_head_limit_refuses_before_the_line_ends() -> None:
    reader = FrameReader(max_header_bytes=256)
    reader.receive_data(b"CNS/1 HELLO\nDevice-Id:" + b"a" * 300)  # no LF yet: must not wait for it
    with pytest.raises(CnsProtocolError) as exc:
        reader.next_event()
    assert exc.value.code == 413


def test_default_limits_are_8192_and_one_mebibyte() -> None:
    reader = FrameReader()
    reader.receive_data(b"CNS/1 PUBLISH\nContent-Length:%d\n\n" % (1024 * 1024 + 1))
    with pytest.raises(CnsProtocolError) as exc:
        reader.next_event()
    assert exc.value.code == 413
    big_head = b"CNS/1 PING\n" + b"H:" + b"v" * 8200 + b"\n\n"
    with pytest.raises(CnsProtocolError) as exc:
        read_all(big_head)
    assert exc.value.code == 413
    body = b"x" * (1024 * 1024)
    [frame] = read_all(b"CNS/1 PUBLISH\nContent-Length:%d\n\n" % len(body) + body)
    assert frame.body == body


def test_body_limit_is_refused_before_the_body_arrives() -> None:
    reader = FrameReader(max_body_bytes=1024)
    reader.receive_data(b"CNS/1 PUBLISH\nContent-Length:1025\n\n")
    with pytest.raises(CnsProtocolError) as exc:
        reader.next_event()
    assert exc.value.code == 413
    assert reader.buffered == 0


def test_huge_content_length_digits_are_too_large_not_a_crash() -> None:
    with pytest.raises(CnsProtocolError) as exc:
        read_all(b"CNS/1 PUBLISH\nContent-Length:" + b"9" * 5000 + b"\n\n")
    assert exc.value.code == 413
    [frame] = read_all(b"CNS/1 PUBLISH\nContent-Length:0003\n\nabc")
    assert frame.body == b"abc"


@pytest.mark.parametrize(
    "wire, why",
    [
        (b"HELLO\n\n", "no protocol token"),
        (b"CNS/2 HELLO\n\n", "wrong version"),
        (b"CNS/1 HELO\n\n", "unknown command"),
        (b"CNS/1 hello\n\n", "commands are case-sensitive"),
        (b"CNS/1 WELCOME\n\n", "gateway command sent by a device"),
        (b"CNS/1 HELLO\nDevice-Id r1\n\n", "header without colon"),
        (b"CNS/1 HELLO\nDevice Id:r1\n\n", "space in header name"),
        (b"CNS/1 HELLO\n:r1\n\n", "empty header name"),
        (b"CNS/1 HELLO\nDevice-Id:r\x001\n\n", "control character"),
        (b"CNS/1 HELLO\nDevice-Id:r\r1\n\n", "lone CR inside a value"),
        (b"CNS/1 HELLO\nDevice-Id:\xff\xfe\n\n", "not UTF-8"),
        (b"CNS/1 PUBLISH\nContent-Length:abc\n\n", "non-numeric length"),
        (b"CNS/1 PUBLISH\nContent-Length:-1\n\n", "negative length"),
        (b"CNS/1 PUBLISH\nContent-Length:1\nContent-Length:2\n\nab", "conflicting lengths"),
        (b"CNS/1 PUBLISH\nContent-Length:10\n\nabc", "stream ends inside the body"),
        (b"CNS/1 PING\nReceipt:1", "stream ends inside the head"),
    ],
)
def test_unparseable_input_is_400(wire: bytes, why: str) -> None:
    with pytest.raises(CnsProtocolError) as exc:
        read_all(wire, accept=DEVICE_COMMANDS)
    assert exc.value.code == 400, why
    assert exc.value.message


def test_device_side_reader_accepts_gateway_commands_only() -> None:
    assert read_all(b"CNS/1 WELCOME\nSession:s\n\n", accept=GATEWAY_COMMANDS)[0].command == "WELCOME"
    with pytest.raises(CnsProtocolError):
        read_all(b"CNS/1 HELLO\n\n", accept=GATEWAY_COMMANDS)


def test_serialize_writes_content_length_from_the_body() -> None:
    wire = serialize(make_frame("DELIVER", {"Subject": "s", "Content-Length": "999"}, "<x/>"))
    assert wire == b"CNS/1 DELIVER\nSubject:s\nContent-Length:4\n\n<x/>"
    assert serialize(Frame("PONG")) == b"CNS/1 PONG\n\n"


@pytest.mark.parametrize(
    "frame",
    [
        Frame("NOPE"),
        Frame("PING", (("Bad Name", "v"),)),
        Frame("PING", (("N", "line\nbreak"),)),
        Frame("PING", (("N", " padded"),)),
    ],
)
def test_serialize_refuses_frames_that_could_not_be_read_back(frame: Frame) -> None:
    with pytest.raises(ValueError):
        serialize(frame)


def test_error_frame_carries_code_message_and_extras() -> None:
    frame = error_frame(503, "node is\npassive", Retry_After="10")
    assert (frame.get("Code"), frame.get("Message"), frame.get("Retry-After")) == ("503", "node is passive", "10")
    assert read_all(serialize(frame)) == [frame]

"""SipFramer: bytes in, events out. The relay forwards first; these tests check what is observed."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from siptap.sansio.sip_framer import KeepAlive, SipFramer, SipMessage, Unframeable


def sip(start: str, headers: list[str], body: bytes = b"", *, length: bool = True) -> bytes:
    lines = [start, *headers]
    if length:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


SDP_OFFER = (
    b"v=0\r\no=- 1 1 IN IP4 192.0.2.10\r\ns=-\r\nc=IN IP4 192.0.2.10\r\nt=0 0\r\n"
    b"m=audio 40000 RTP/SAVP 0 8 101\r\n"
    b"a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz\r\n"
    b"a=rtpmap:101 telephone-event/8000\r\n"
)
SDP_ANSWER = SDP_OFFER.replace(b"192.0.2.10", b"198.51.100.7").replace(b"40000", b"50000")

DIALOG = [
    "From: \"Alice\" <sip:alice@customer.example>;tag=a1",
    "To: <sip:bob@core.example>",
    "Call-ID: 3848276298220188511@customer.example",
]
VIA = "Via: SIP/2.0/TLS 192.0.2.10:5061;branch=z9hG4bK776asdhds"
INVITE = sip(
    "INVITE sip:bob@core.example SIP/2.0",
    [VIA, "Max-Forwards: 70", *DIALOG, "CSeq: 1 INVITE", "Content-Type: application/sdp"],
    SDP_OFFER,
)
TRYING = sip("SIP/2.0 100 Trying", [VIA, *DIALOG, "CSeq: 1 INVITE"])
TO_TAGGED = [DIALOG[0], DIALOG[1] + ";tag=b2", DIALOG[2]]
RINGING = sip("SIP/2.0 180 Ringing", [VIA, *TO_TAGGED, "CSeq: 1 INVITE"])
OK_INVITE = sip(
    "SIP/2.0 200 OK",
    [VIA, *TO_TAGGED, "CSeq: 1 INVITE", "Content-Type: application/sdp"],
    SDP_ANSWER,
)
ACK = sip("ACK sip:bob@core.example SIP/2.0", [VIA.replace("776", "777"), *DIALOG, "CSeq: 1 ACK"])
BYE = sip("BYE sip:bob@core.example SIP/2.0", [VIA.replace("776", "778"), *DIALOG, "CSeq: 2 BYE"])
OK_BYE = sip("SIP/2.0 200 OK", [VIA.replace("776", "778"), *DIALOG, "CSeq: 2 BYE"])
OPTIONS = sip(
    "OPTIONS sip:core.example SIP/2.0",
    [
        VIA.replace("776", "779"),
        "Call-ID: opt1",
        "From: <sip:ping@x>;tag=9",
        "To: <sip:core.example>",
        "CSeq: 7 OPTIONS",
    ],
)
CALL = [INVITE, TRYING, RINGING, OK_INVITE, ACK, BYE, OK_BYE, OPTIONS]
STREAM = b"".join(CALL)
TLS_HELLO = bytes.fromhex("16030100a5010000a10303") + bytes(range(32)) + b"\x00\x20\xc0\x2f"


def frame(*chunks: bytes, **limits: int) -> list[object]:
    framer = SipFramer(**limits)
    events: list[object] = []
    for chunk in chunks:
        events.extend(framer.feed(chunk))
    events.extend(framer.close())
    return events


def messages(events: list[object]) -> list[bytes]:
    return [e.data for e in events if isinstance(e, SipMessage)]


def joined(events: list[object]) -> bytes:
    return b"".join(e.data for e in events)  # type: ignore[attr-defined]


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    bounds = [0, *sorted(cuts), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


# -- valid streams ---------------------------------------------------------------------------


def test_call_in_one_chunk_frames_every_message_exactly() -> None:
    events = frame(STREAM)
    assert events == [
        SipMessage(m, m.index(b"\r\n\r\n") + 4, len(m) - m.index(b"\r\n\r\n") - 4) for m in CALL
    ]
    assert events[0].body_length == len(SDP_OFFER)  # type: ignore[attr-defined]


def test_every_single_split_point_yields_identical_events() -> None:
    expected = frame(STREAM)
    for cut in range(1, len(STREAM)):
        assert frame(STREAM[:cut], STREAM[cut:]) == expected, cut


def test_byte_at_a_time_yields_identical_events() -> None:
    assert frame(*(STREAM[i : i + 1] for i in range(len(STREAM)))) == frame(STREAM)


def test_feed_returns_events_as_soon_as_a_message_completes() -> None:
    framer = SipFramer()
    assert framer.feed(INVITE[:-1]) == []
    invite = SipMessage(INVITE, INVITE.index(b"\r\n\r\n") + 4, len(SDP_OFFER))
    assert framer.feed(INVITE[-1:] + TRYING[:10]) == [invite]
    assert framer.buffered == 10


def test_many_messages_in_one_chunk() -> None:
    assert messages(frame(OPTIONS * 500)) == [OPTIONS] * 500


def test_missing_content_length_means_empty_body() -> None:
    msg = sip("OPTIONS sip:x SIP/2.0", ["Call-ID: a"], length=False)
    assert frame(msg + TRYING) == [SipMessage(msg, len(msg), 0), SipMessage(TRYING, len(TRYING), 0)]


def test_body_containing_crlfcrlf_is_framed_by_content_length() -> None:
    body = b"first\r\n\r\nINVITE sip:fake SIP/2.0\r\n\r\nlast"
    msg = sip("MESSAGE sip:x SIP/2.0", ["Content-Type: text/plain"], body)
    assert messages(frame(msg + BYE)) == [msg, BYE]


def test_non_utf8_bytes_in_headers_and_body() -> None:
    # Latin-1 and invalid UTF-8 in headers; a binary body that also holds CRLFCRLF.
    msg = (
        b"MESSAGE sip:x SIP/2.0\r\nFrom: \xe9\xff <sip:a@b>;tag=1\r\nSubject: caf\xe9\r\n"
        b"Content-Length: 8\r\n\r\n\xff\xfe\x00\x80\r\n\r\n"
    )
    events = frame(msg, OPTIONS)
    assert messages(events) == [msg, OPTIONS]


def test_compact_content_length_and_call_id() -> None:
    msg = b"MESSAGE sip:x SIP/2.0\r\ni: abc\r\nl:5\r\n\r\nhello"
    assert frame(msg + OPTIONS) == [
        SipMessage(msg, len(msg) - 5, 5),
        SipMessage(OPTIONS, len(OPTIONS), 0),
    ]


def test_content_length_name_case_whitespace_and_folding() -> None:
    for header in (b"content-LENGTH : 5", b"L :\t5", b"Content-Length:\r\n   5"):
        msg = b"MESSAGE sip:x SIP/2.0\r\nCall-ID: a\r\n" + header + b"\r\n\r\nhello"
        assert frame(msg) == [SipMessage(msg, len(msg) - 5, 5)], header


def test_repeated_equal_content_length_is_accepted() -> None:
    msg = b"MESSAGE sip:x SIP/2.0\r\nContent-Length: 2\r\nl: 02\r\n\r\nhi"
    assert messages(frame(msg)) == [msg]


def test_start_line_without_headers() -> None:
    msg = b"OPTIONS sip:x SIP/2.0\r\n\r\n"
    assert frame(msg + msg) == [SipMessage(msg, len(msg), 0)] * 2


# -- keepalives ------------------------------------------------------------------------------


PING = KeepAlive(b"\r\n\r\n", "ping")
PONG = KeepAlive(b"\r\n", "pong")


def test_ping_and_pong() -> None:
    assert frame(b"\r\n\r\n") == [PING]
    assert frame(b"\r\n") == [PONG]
    assert frame(b"\r\n\r\n\r\n") == [PING, PONG]
    assert frame(b"\r\n\r\n\r\n\r\n") == [PING, PING]


def test_keepalives_between_messages() -> None:
    events = frame(b"\r\n\r\n" + OPTIONS + b"\r\n" + OPTIONS + b"\r\n\r\n\r\n" + OPTIONS)
    options = SipMessage(OPTIONS, len(OPTIONS), 0)
    assert events == [PING, options, PONG, options, PING, PONG, options]


def test_crlf_at_chunk_end_waits_for_the_next_byte() -> None:
    framer = SipFramer()
    assert framer.feed(b"\r\n") == []
    assert framer.feed(b"\r") == []
    assert framer.feed(b"\n") == [PING]
    assert framer.feed(b"\r\n") == []
    assert framer.feed(b"O") == [PONG]
    assert framer.feed(OPTIONS[1:]) == [SipMessage(OPTIONS, len(OPTIONS), 0)]


def test_pong_then_stray_cr_is_garbage() -> None:
    events = frame(b"\r\n\rX\r\n" + OPTIONS)
    assert events[0] == PONG
    assert events[1] == Unframeable(b"\rX\r\n", "not a SIP start line")
    assert messages(events) == [OPTIONS]


def test_keepalive_split_invariance() -> None:
    data = b"\r\n\r\n\r\n" + OPTIONS + b"\r\n\r\n"
    expected = frame(data)
    for a in range(len(data)):
        for b in range(a, min(len(data), a + 8)):
            assert frame(*split_at(data, [a, b])) == expected


# -- garbage and resync ----------------------------------------------------------------------


def test_tls_bytes_are_unframeable_at_once() -> None:
    framer = SipFramer()
    events = framer.feed(TLS_HELLO)
    assert events == [Unframeable(TLS_HELLO, "TLS record where cleartext SIP was expected")]
    assert framer.buffered == 0


def test_garbage_then_valid_sip_resyncs() -> None:
    garbage = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n\x00\x01binary\nmore junk\r\n"
    events = frame(garbage + INVITE + BYE)
    assert joined([e for e in events if isinstance(e, Unframeable)]) == garbage
    assert messages(events) == [INVITE, BYE]


def test_resync_is_split_invariant_for_where_sip_resumes() -> None:
    data = TLS_HELLO + b"\r\nxyz INVITE\r\n" + OPTIONS + b"junk\r\n" + BYE
    expected = messages(frame(data))
    assert expected == [OPTIONS, BYE]
    for cut in range(1, len(data)):
        events = frame(data[:cut], data[cut:])
        assert messages(events) == expected, cut
        assert joined(events) == data


def test_sip_after_a_mid_line_chunk_boundary_is_not_a_line_start() -> None:
    # "junk" ends a chunk without LF: OPTIONS begins mid-line, so it is not SIP in any split.
    events = frame(b"\x00junk", OPTIONS, b"\r\n" + BYE)
    assert messages(events) == [BYE]


def test_resync_holds_at_most_a_candidate_line() -> None:
    framer = SipFramer()
    for _ in range(1000):
        framer.feed(b"\x00" * 1000 + b"\n")
        assert framer.buffered == 0
    assert framer.feed(OPTIONS) == [SipMessage(OPTIONS, len(OPTIONS), 0)]


def test_blank_lines_after_garbage_are_garbage_in_any_split() -> None:
    data = b"\x00junk\r\n\r\n\r\n" + OPTIONS
    for cut in range(1, len(data)):
        events = frame(data[:cut], data[cut:])
        assert events[-1] == SipMessage(OPTIONS, len(OPTIONS), 0), cut
        assert joined(events[:-1]) == data[: -len(OPTIONS)]
        assert all(isinstance(e, Unframeable) for e in events[:-1])


def test_close_resyncs_a_line_rejected_late() -> None:
    data = b"SIP/2.0 \nOPT"
    events = frame(*(data[i : i + 1] for i in range(len(data))))
    assert events[-1] == Unframeable(b"OPT", "truncated at end of stream")
    assert joined(events[:-1]) == b"SIP/2.0 \n"
    assert {e.reason for e in events[:-1]} == {"not a SIP start line"}  # type: ignore[attr-defined]


def test_long_start_line_byte_at_a_time_is_skipped_at_the_header_limit() -> None:
    framer = SipFramer()
    data = b"INVITE sip:" + b"a" * 20000
    events = [e for i in range(len(data)) for e in framer.feed(data[i : i + 1])]
    assert events[0] == Unframeable(data[:16384], "header block exceeds 16384 bytes without end")
    assert joined(events) == data


# -- limits and lying lengths: skip, then frame again ------------------------------------------
# Until issue 13 each of these ended observation for the rest of the connection ("not
# observing"); the framer now skips the region and frames the next message after it.


def test_ten_megabytes_without_header_end_are_skipped_with_bounded_memory_then_framing_resumes() -> None:
    framer = SipFramer()
    head = b"INVITE sip:x SIP/2.0\r\n"
    events = list(framer.feed(head))
    chunk = b"X-Filler: " + b"a" * 4000 + b"\r\n"
    total = len(head)
    while total < 10_000_000:
        events.extend(framer.feed(chunk))
        total += len(chunk)
        assert framer.buffered <= 16384
    assert events[0] == Unframeable(events[0].data, "header block exceeds 16384 bytes without end")
    assert events[0].data.startswith(head)
    assert {e.reason for e in events} == {"header block exceeds 16384 bytes without end"}
    assert sum(len(e.data) for e in events) == total
    # The header block ends; the next message is framed.
    after = framer.feed(b"\r\n" + OPTIONS)
    assert after == [Unframeable(b"\r\n", "header block exceeds 16384 bytes without end"),
                     SipMessage(OPTIONS, len(OPTIONS), 0)]


def test_one_huge_chunk_without_header_end() -> None:
    framer = SipFramer()
    data = b"INVITE sip:x SIP/2.0\r\n" + b"a" * 10_000_000
    events = framer.feed(data)
    assert joined(events) == data and len(events) <= 2
    assert {e.reason for e in events} == {"header block exceeds 16384 bytes without end"}  # type: ignore[attr-defined]
    assert framer.buffered == 0


def test_header_limit_is_independent_of_chunking() -> None:
    msg = sip("OPTIONS sip:x SIP/2.0", ["X-Big: " + "b" * 200])
    small = b"BYE sip:x SIP/2.0\r\nCall-ID: b\r\n\r\n"
    data = msg + small
    expected = frame(data, max_header_size=100)
    assert expected == [Unframeable(msg, "header block exceeds 100 bytes without end"),
                        SipMessage(small, len(small), 0)]
    for cut in range(1, len(data)):
        events = frame(data[:cut], data[cut:], max_header_size=100)
        assert events[0].reason == expected[0].reason  # type: ignore[attr-defined]
        assert joined(events) == data
        assert events[-1] == expected[-1]


def test_oversized_content_length_is_skipped() -> None:
    head = b"MESSAGE sip:x SIP/2.0\r\nContent-Length: 99999999\r\n\r\n"
    reason = "Content-Length 99999999 exceeds max_message_size 65536"
    framer = SipFramer()
    assert framer.feed(OPTIONS + head + b"body\r\n" + BYE) == [
        SipMessage(OPTIONS, len(OPTIONS), 0),
        Unframeable(head, reason),
        Unframeable(b"body\r\n", reason),
        SipMessage(BYE, BYE.index(b"\r\n\r\n") + 4, 0),
    ]
    assert framer.buffered == 0


def test_invalid_content_length_is_skipped_and_framing_resumes() -> None:
    cases = {
        b"Content-Length: abc": "invalid Content-Length: 'abc'",
        b"Content-Length: -5": "invalid Content-Length: '-5'",
        b"Content-Length: 5\r\nl: 6": "invalid Content-Length: conflicting values 5, 6",
        b"Content-Length: " + b"9" * 40: "Content-Length of 40 digits exceeds any max_message_size",
    }
    for header, reason in cases.items():
        head = b"MESSAGE sip:x SIP/2.0\r\n" + header + b"\r\n\r\n"
        framer = SipFramer()
        # "hello" may yet begin a start line: held (one candidate line), then refused. The
        # region keeps the reason it started with.
        assert framer.feed(head + b"hello") == [Unframeable(head, reason)]
        assert framer.feed(b"\r\n" + OPTIONS) == [Unframeable(b"hello\r\n", reason), SipMessage(OPTIONS, len(OPTIONS), 0)]


def test_a_body_that_holds_the_next_message_is_reported_and_the_message_framed() -> None:
    # Content-Length 200 for a 5-byte body: the "body" swallows OPTIONS and part of BYE.
    lying = b"MESSAGE sip:x SIP/2.0\r\nCall-ID: l1\r\nContent-Length: 200\r\n\r\nhello\r\n"
    data = lying + OPTIONS + BYE
    for cut in range(0, len(data), 7):
        events = frame(data[:cut], data[cut:])
        assert events[0] == Unframeable(lying, "Content-Length 200 runs into the next message"), cut
        assert messages(events) == [OPTIONS, BYE]
    # Also when the stream ends before the lying length is reached.
    events = frame(lying + OPTIONS)
    assert messages(events) == [OPTIONS] and joined(events) == lying + OPTIONS


def test_a_sipfrag_body_is_trusted() -> None:
    frag = b"SIP/2.0 200 OK\r\nContact: <sip:x>\r\n"
    notify = sip("NOTIFY sip:x SIP/2.0", ["Call-ID: n1", "Content-Type: message/sipfrag;version=2.0"], frag)
    plain = sip("MESSAGE sip:x SIP/2.0", ["Call-ID: n1", "Content-Type: text/plain"], b"SIP/2.0 is the version\r\n")
    assert messages(frame(notify + plain + OPTIONS)) == [notify, plain, OPTIONS]


def test_resync_needs_a_header_block_of_header_lines() -> None:
    # Garbage, then a line that looks like a start line but is followed by prose: not a message.
    fake = b"SIP/2.0 200 OK\r\nthis is not a header\r\n\r\n"
    events = frame(b"\x00junk\r\n" + fake + OPTIONS)
    assert messages(events) == [OPTIONS]
    assert joined([e for e in events if isinstance(e, Unframeable)]) == b"\x00junk\r\n" + fake
    # Without garbage before it, the same message is framed as it always was.
    assert messages(frame(OPTIONS + fake)) == [OPTIONS, fake]


def test_body_at_the_limit_is_framed() -> None:
    body = b"x" * 100
    msg = sip("MESSAGE sip:x SIP/2.0", [], body)
    assert messages(frame(msg, max_message_size=100)) == [msg]
    assert not messages(frame(msg, max_message_size=99))


# -- end of stream ---------------------------------------------------------------------------


def test_close_reports_a_partial_message() -> None:
    framer = SipFramer()
    assert framer.feed(OPTIONS + INVITE[:-10]) == [SipMessage(OPTIONS, len(OPTIONS), 0)]
    assert framer.close() == [Unframeable(INVITE[:-10], "truncated at end of stream")]
    assert framer.close() == []


def test_close_after_a_trailing_crlf_is_a_pong() -> None:
    assert frame(OPTIONS + b"\r\n") == [SipMessage(OPTIONS, len(OPTIONS), 0), PONG]
    assert frame(b"\r\n\r") == [PONG, Unframeable(b"\r", "truncated at end of stream")]


def test_feed_after_close_is_an_error() -> None:
    framer = SipFramer()
    framer.close()
    try:
        framer.feed(b"x")
    except RuntimeError:
        pass
    else:
        raise AssertionError("feed after close accepted")


# -- properties ------------------------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=len(STREAM)), max_size=12))
def test_any_split_of_a_valid_stream_frames_identically(cuts: list[int]) -> None:
    assert frame(*split_at(STREAM, cuts)) == frame(STREAM)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.sampled_from([*CALL, b"\r\n\r\n", b"\r\n"]), max_size=12),
    st.data(),
)
def test_any_split_of_messages_and_keepalives_frames_identically(
    parts: list[bytes], data: st.DataObject
) -> None:
    stream = b"".join(parts)
    cuts = data.draw(st.lists(st.integers(min_value=0, max_value=len(stream)), max_size=10))
    events = frame(*split_at(stream, cuts))
    assert events == frame(stream)
    assert messages(events) == [p for p in parts if not p.startswith(b"\r")]
    assert joined(events) == stream
    assert not any(isinstance(e, Unframeable) for e in events)


_SIPPY = st.sampled_from(
    [
        *(b"\r", b"\n", b"\r\n", b"\r\n\r\n", b" ", b"SIP/2.0 ", b"200 OK", b"\x16\x03\x01"),
        *(b"INVITE sip:a SIP/2.0\r\n", b"l: 3\r\n", b"Content-Length: 1\r\n", OPTIONS, TRYING[:40]),
    ]
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.binary(max_size=40), _SIPPY), max_size=25), st.data())
def test_every_input_byte_is_reported_exactly_once(parts: list[bytes], data: st.DataObject) -> None:
    stream = b"".join(parts)
    cuts = data.draw(st.lists(st.integers(min_value=0, max_value=len(stream)), max_size=8))
    events = frame(*split_at(stream, cuts), max_header_size=64, max_message_size=32)
    assert joined(events) == stream
    assert all(e.data for e in events)  # type: ignore[attr-defined]
    # Even amid garbage, where SIP and keepalives are recognised does not depend on chunking.
    whole = frame(stream, max_header_size=64, max_message_size=32)
    framed = [e for e in events if not isinstance(e, Unframeable)]
    assert framed == [e for e in whole if not isinstance(e, Unframeable)]

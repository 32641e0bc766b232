"""SipFramer.gap(): bytes missing from the stream, then resynchronisation at the next message."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from siptap.sansio.sip_framer import SipFramer, SipMessage, Unframeable
from tests.sansio.test_sip_framer import ACK, BYE, CALL, INVITE, OK_BYE, OPTIONS, messages, split_at


def frame_with_gap(before: list[bytes], after: list[bytes], **limits: int) -> list[object]:
    framer = SipFramer(**limits)
    events: list[object] = []
    for chunk in before:
        events.extend(framer.feed(chunk))
    events.extend(framer.gap())
    for chunk in after:
        events.extend(framer.feed(chunk))
    events.extend(framer.close())
    return events


def test_a_lost_whole_message_costs_only_that_message() -> None:
    # The usual drop: whole chunks, each one message. The message right after the hole begins
    # at the first byte the framer sees again, and is framed.
    events = frame_with_gap([INVITE], [ACK, BYE])
    assert messages(events) == [INVITE, ACK, BYE]
    assert not any(isinstance(e, Unframeable) for e in events)


def test_a_partial_message_before_the_gap_is_reported_as_gap() -> None:
    events = frame_with_gap([INVITE[:100]], [BYE])
    assert events[0] == Unframeable(INVITE[:100], "gap")
    assert messages(events) == [BYE]


def test_bytes_after_the_gap_up_to_the_next_start_line_are_reported_as_gap() -> None:
    tail = INVITE[INVITE.index(b"Max-Forwards"):]  # headers and body of a message whose start was lost
    events = frame_with_gap([], [tail, BYE])
    assert [e.reason for e in events if isinstance(e, Unframeable)] == ["gap"]
    assert b"".join(e.data for e in events if isinstance(e, Unframeable)) == tail  # type: ignore[attr-defined]
    assert messages(events) == [BYE]


def test_a_start_line_rejected_late_after_a_gap_is_still_the_gap() -> None:
    # The first line after the hole looks like a start line until its end arrives.
    events = frame_with_gap([], [b"INVITE sip:bob@x", b" junk\r\n", OPTIONS])
    assert {e.reason for e in events if isinstance(e, Unframeable)} == {"gap"}
    assert messages(events) == [OPTIONS]
    # ... but after a framed message, garbage is garbage again.
    later = frame_with_gap([], [OPTIONS, b"junk\r\n", BYE])
    assert [e.reason for e in later if isinstance(e, Unframeable)] == ["not a SIP start line"]


def test_a_framer_that_skipped_an_oversized_message_resyncs_after_a_gap_too() -> None:
    # Until issue 13 a framer that hit a limit gave up for good, and a gap did not undo it.
    framer = SipFramer(max_message_size=10)
    assert not messages(framer.feed(INVITE))  # the SDP body exceeds the limit: skipped
    framer.gap()
    assert messages(framer.feed(BYE)) == [BYE]


def test_gap_after_close_is_an_error() -> None:
    framer = SipFramer()
    framer.close()
    try:
        framer.gap()
    except RuntimeError:
        pass
    else:
        raise AssertionError("gap after close accepted")


PARTS = [*CALL, INVITE, OK_BYE]  # every body ends with CRLF, as SDP does
STREAM = b"".join(PARTS)


def message_starts(stream: bytes, parts: list[bytes]) -> list[tuple[int, bytes]]:
    out, at = [], 0
    for part in parts:
        out.append((at, part))
        at += len(part)
    return out


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_after_a_gap_anywhere_every_message_past_the_next_line_end_is_framed(data: st.DataObject) -> None:
    parts = PARTS
    lost_from = data.draw(st.integers(min_value=0, max_value=len(STREAM)), label="lost_from")
    lost_to = data.draw(st.integers(min_value=lost_from, max_value=len(STREAM)), label="lost_to")
    cuts_before = data.draw(st.lists(st.integers(min_value=0, max_value=lost_from), max_size=5))
    cuts_after = data.draw(st.lists(st.integers(min_value=0, max_value=len(STREAM) - lost_to), max_size=5))
    before, after = STREAM[:lost_from], STREAM[lost_to:]
    events = frame_with_gap(split_at(before, cuts_before), split_at(after, cuts_after))

    # Every byte that arrived is reported exactly once, in order.
    assert b"".join(e.data for e in events) == before + after  # type: ignore[attr-defined]
    # However the bytes on either side of the hole were split, the same messages and keepalives
    # come out (garbage is reported as soon as it is known, so its runs follow the chunks).
    whole = frame_with_gap([before], [after])
    assert [e for e in events if not isinstance(e, Unframeable)] == [e for e in whole if not isinstance(e, Unframeable)]

    framed = messages(events)
    line_end = STREAM.find(b"\r\n", lost_to)
    resync = len(STREAM) if line_end < 0 else line_end + 2
    for start, message in message_starts(STREAM, parts):
        if start + len(message) <= lost_from or start == lost_to or start >= resync:
            assert message in framed, (start, message[:20])
    # Nothing framed after the hole is spliced across it: each framed message is made of
    # bytes from one side only.
    for event in events:
        if isinstance(event, SipMessage):
            assert event.data in before or event.data in after

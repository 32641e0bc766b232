"""DirectionObserver on its own: bytes in; published events, counters and log lines out.

The log is a list-collecting writer (tests.relay.memory.RecordingLog), the publish callable
a list; no stream, no clock to control (event timestamps are left out of comparisons).
"""

from __future__ import annotations

import itertools
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from siptap.mirror.events import LegInfo, MirrorEvent, SipEvent, SrtpKeyEvent
from siptap.relay.observe import DirectionObserver
from siptap.sansio.sip_message import SipMessageView
from tests.relay.memory import BYE, CALL_ID, INLINE, INVITE, OK, SDP, Published, RecordingLog, sip

CUSTOMER = LegInfo("m-1", "lab", "customer", ("192.0.2.10", 40000), ("192.0.2.1", 5061))
CORE = LegInfo("m-1", "lab", "core", ("192.0.2.1", 45000), ("198.51.100.7", 5061))
STREAM = INVITE + b"\r\n\r\n" + OK + BYE  # three messages and a keepalive ping


def observer(publish: Any = None, log: RecordingLog | None = None, *, legs: list[tuple[LegInfo, bool]] | None = None,
             **options: Any) -> DirectionObserver:
    return DirectionObserver(
        direction="customer->core", legs=[(CUSTOMER, True)] if legs is None else legs,
        publish=publish if publish is not None else Published(), log=log if log is not None else RecordingLog(),
        max_message_size=65536, **options,
    )


def observe(chunks: list[bytes], **options: Any) -> tuple[DirectionObserver, list[MirrorEvent], RecordingLog]:
    published, log = Published(), RecordingLog()
    watcher = observer(published, log, **options)
    for chunk in chunks:
        watcher.feed(chunk)
    watcher.close()
    return watcher, published, log


def without_time(events: list[MirrorEvent]) -> list[tuple[Any, ...]]:
    out: list[tuple[Any, ...]] = []
    for e in events:
        if isinstance(e, SipEvent):
            out.append(("sip", e.leg, e.from_client, e.data))
        elif isinstance(e, SrtpKeyEvent):
            out.append(("srtp", e.leg, e.from_client, e.call_id, e.method_or_status, e.key))
        else:
            out.append((type(e).__name__,))
    return out


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    bounds = [0, *sorted(set(cuts)), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds) if b > a]


@settings(max_examples=150, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=len(STREAM) - 1), max_size=12))
def test_chunks_split_anywhere_give_the_same_events(cuts: list[int]) -> None:
    whole, whole_events, whole_log = observe([STREAM])
    parts, part_events, part_log = observe(split(STREAM, cuts))
    assert without_time(part_events) == without_time(whole_events)
    assert part_log.events == whole_log.events
    assert (parts.messages, parts.keepalives, parts.unframeable_bytes) == (whole.messages, whole.keepalives, 0)


def test_a_whole_stream_frames_into_its_messages() -> None:
    watcher, events, log = observe([STREAM])
    assert [e[3] for e in without_time(events) if e[0] == "sip"] == [INVITE, OK, BYE]
    assert watcher.messages == 3 and watcher.keepalives == 1 and watcher.observing
    assert log.names() == ["sip", "srtp_key", "sip", "srtp_key", "sip"]


def test_a_keepalive_is_counted_not_published_or_logged() -> None:
    watcher, events, log = observe([b"\r\n\r\n", b"\r\n"])  # a ping, then a pong
    assert watcher.keepalives == 2 and watcher.messages == 0
    assert events == [] and log.events == []


def test_an_unframeable_stream_is_reported_once() -> None:
    record = b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" + bytes(range(200))  # a TLS ClientHello's start
    chunks = [record[:5], record[5:], b"\x17\x03\x03" + bytes(100), bytes(range(256))]
    watcher, events, log = observe(chunks)
    assert events == []
    assert log.names() == ["unframeable"]  # one warning, however many garbage chunks follow
    warning = log.events[0]
    assert warning["level"] == "warning" and warning["direction"] == "customer->core"
    # A TLS record header is refused at once (its first 5 bytes); the framer keeps looking
    # for a SIP start line in what follows, quietly.
    assert warning["reason"] == "TLS record where cleartext SIP was expected"
    assert warning["head"] == chunks[0] and warning["size"] == 5 and warning["observing"] is True
    assert watcher.unframeable_bytes == sum(map(len, chunks)) and watcher.messages == 0


def test_when_the_framer_gives_up_the_rest_is_relayed_unobserved() -> None:
    oversized = sip("MESSAGE sip:bob@example.com SIP/2.0", "5 MESSAGE").replace(
        b"Content-Length: 0", b"Content-Length: 1000000")
    watcher, events, log = observe([oversized, b"x" * 1000, BYE])
    assert log.names() == ["unframeable"] and log.events[0]["observing"] is False
    assert not watcher.observing
    assert events == [] and watcher.messages == 0  # the BYE after it is relayed, not observed
    assert watcher.unframeable_bytes == len(oversized) + 1000 + len(BYE)


def test_a_message_cut_off_by_the_end_of_the_stream_is_reported() -> None:
    watcher, events, log = observe([INVITE[:100]])
    assert events == [] and log.names() == ["unframeable"]
    assert log.events[0]["reason"] == "truncated at end of stream" and log.events[0]["size"] == 100
    assert watcher.unframeable_bytes == 100 and watcher.messages == 0


def test_sdp_a_crypto_publishes_an_srtp_key_for_each_mirrored_leg() -> None:
    watcher, events, log = observe([INVITE], legs=[(CUSTOMER, True), (CORE, True)])
    kinds = [(type(e).__name__, e.leg.leg) for e in events]
    assert kinds == [("SipEvent", "customer"), ("SipEvent", "core"), ("SrtpKeyEvent", "customer"), ("SrtpKeyEvent", "core")]
    key_event = events[2]
    assert isinstance(key_event, SrtpKeyEvent)
    assert key_event.call_id == CALL_ID and key_event.method_or_status == "INVITE" and key_event.from_client
    assert key_event.key.suite == "AES_CM_128_HMAC_SHA1_80" and key_event.key.key_params_b64.startswith(INLINE)
    assert key_event.key.media == "audio" and key_event.key.port == 49170
    line = log.find("srtp_key")[0]
    assert line["direction"] == "customer->core" and line["call_id"] == CALL_ID and line["message"] == "INVITE"
    assert line["address"] == "192.0.2.10" and line["port"] == 49170 and line["suite"] == "AES_CM_128_HMAC_SHA1_80"
    assert line["inline"] == key_event.key.key_params_b64
    assert line["master_key"] == key_event.key.master_key.hex()
    assert line["master_salt"] == key_event.key.master_salt.hex()


def test_srtp_key_lines_leave_the_key_out_when_key_material_is_not_logged() -> None:
    _, events, log = observe([OK], log_key_material=False)
    assert [type(e).__name__ for e in events] == ["SipEvent", "SrtpKeyEvent"]  # the mirror still gets it
    line = log.find("srtp_key")[0]
    assert line["message"] == "200"
    assert not {"inline", "master_key", "master_salt"} & set(line)


def test_sip_log_lines() -> None:
    _, _, log = observe([INVITE, OK])
    request, response = log.find("sip")
    assert request == {"direction": "customer->core", "size": len(INVITE), "method": "INVITE", "call_id": CALL_ID,
                       "cseq": "1 INVITE", "event": "sip", "level": "info"}
    assert response == {"direction": "customer->core", "size": len(OK), "status": 200, "reason": "OK",
                        "call_id": CALL_ID, "cseq": "1 INVITE", "event": "sip", "level": "info"}


def test_sip_payloads_are_logged_only_when_asked() -> None:
    _, _, log = observe([BYE], log_payloads=True)
    assert log.find("sip")[0]["payload"] == BYE
    _, events, log = observe([BYE], log_messages=False)
    assert log.events == [] and len(events) == 1  # not logged, still mirrored


def test_a_message_a_sink_dropped_is_counted_and_each_message_is_counted_for_metrics() -> None:
    views: list[SipMessageView | None] = []
    answers = iter([True, False, True])
    watcher = observer(lambda event: next(answers), count_message=views.append)
    watcher.feed(BYE + sip("OPTIONS sip:core.example SIP/2.0", "3 OPTIONS") + BYE)
    assert watcher.messages == 3 and watcher.mirror_dropped == 1
    assert [v.method if v else None for v in views] == ["BYE", "OPTIONS", "BYE"]


def test_body_bytes_are_not_taken_for_a_new_message() -> None:
    body = SDP + b"\r\n\r\nINVITE sip:x SIP/2.0\r\n\r\n"  # looks like a keepalive and a message, is body
    message = sip("MESSAGE sip:bob@example.com SIP/2.0", "4 MESSAGE", body=body)
    watcher, events, _ = observe([message])
    assert watcher.messages == 1 and watcher.keepalives == 0
    assert [e[3] for e in without_time(events) if e[0] == "sip"] == [message]

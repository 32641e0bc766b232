"""Observer: relay records in, mirror events and log lines out, all in memory.

The log is a list-collecting writer (tests.relay.memory.RecordingLog), publish a list. The
expected events and lines are those relay/observe.py and relay/session.py produce today
(tests/relay/test_observe.py holds the same expectations for the relay's observer).
"""

from __future__ import annotations

import io
import itertools
import re
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest
import structlog
import trustme
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from siptap import log as siptap_log
from siptap.certificates import certificate_summary
from siptap.config import LogSettings
from siptap.log import configure, get_logger
from siptap.metrics import Metrics, SipMessageCounts
from siptap.mirror.events import ConnectionClosed as ClosedEvent
from siptap.mirror.events import KeyEvent, LegInfo, MirrorEvent, SipEvent, SrtpKeyEvent
from siptap.mirror.observed import sip_line_fields, sip_line_writer
from siptap.mirror.observer import Observer
from siptap.sansio.chunk_records import (
    FROM_ACCEPTED,
    FROM_DIALLED,
    Chunk,
    ConnectionClosed,
    ConnectionOpened,
    Dropped,
    HandshakeDone,
    KeyMaterial,
    LegAddresses,
    Record,
)
from siptap.sansio.handshake import CertificateSummary, vars_of
from siptap.sansio.sip_fields import SipFields, read_fields
from siptap.sansio.sip_message import parse_message
from tests.relay.memory import BYE, CALL_ID, INLINE, INVITE, OK, RecordingLog, handshake, sip

CUSTOMER = LegInfo("m-1", "lab", "customer", ("192.0.2.10", 40000), ("192.0.2.1", 5061))
CORE = LegInfo("m-1", "lab", "core", ("192.0.2.1", 45000), ("198.51.100.7", 5061))
OPENED = ConnectionOpened(7, 1.0, "m-1", "lab", (
    LegAddresses("customer", CUSTOMER.client, CUSTOMER.server), LegAddresses("core", CORE.client, CORE.server)))
BOUND = {"conn": "m-1", "route": "lab", "peer": "192.0.2.10:40000"}  # what the relay's logger carried
STREAM = INVITE + b"\r\n\r\n" + OK + BYE  # three messages and a keepalive ping


class Run:
    """An observer with a list for publish and a recording log."""

    def __init__(self, **options: Any) -> None:
        self.published: list[MirrorEvent] = []
        self.log = RecordingLog()
        self.counts = SipMessageCounts()
        self.observer = Observer(publish=self.publish, log=self.log, counts=self.counts, clock=lambda: 100.0,
                                 **options)
        self.answers: Any = None  # an iterator of publish results, when a test wants drops

    def publish(self, event: MirrorEvent) -> bool:
        self.published.append(event)
        return True if self.answers is None else bool(next(self.answers))

    def feed(self, *records: Record, channel: int = 1) -> Run:
        for record in records:
            self.observer.handle(channel, record)
        return self

    def of(self, kind: type) -> list[Any]:
        return [e for e in self.published if isinstance(e, kind)]


def chunks(data: bytes, cuts: list[int] | None = None, *, direction: int = FROM_ACCEPTED, start: int = 0,
           conn: int = 7) -> list[Chunk]:
    bounds = [0, *sorted(set(cuts or ())), len(data)]
    return [Chunk(conn, direction, start + a, 2.0, data[a:b]) for a, b in itertools.pairwise(bounds) if b > a]


def closed(bytes_up: int = 0, bytes_down: int = 0, conn: int = 7) -> ConnectionClosed:
    return ConnectionClosed(conn, 9.0, 8.0, bytes_up, bytes_down, "customer", "customer sent close_notify")


def without_time(events: list[MirrorEvent]) -> list[tuple[Any, ...]]:
    out: list[tuple[Any, ...]] = []
    for e in events:
        if isinstance(e, SipEvent):
            out.append(("sip", e.leg, e.from_client, e.data, e.view))
        elif isinstance(e, SrtpKeyEvent):
            out.append(("srtp", e.leg, e.from_client, e.call_id, e.method_or_status, e.key))
        else:
            out.append((type(e).__name__, e.leg))
    return out


def lines(log: RecordingLog) -> list[dict[str, Any]]:
    return [{k: v for k, v in line.items() if k not in BOUND} for line in log.events]


# -- SIP messages ------------------------------------------------------------------------------


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=len(STREAM) - 1), max_size=12))
def test_chunks_split_anywhere_give_the_same_events_and_lines(cuts: list[int]) -> None:
    whole = Run().feed(OPENED, *chunks(STREAM), closed(len(STREAM)))
    parts = Run().feed(OPENED, *chunks(STREAM, cuts), closed(len(STREAM)))
    assert without_time(parts.published) == without_time(whole.published)
    assert parts.log.events == whole.log.events
    assert [e.data for e in whole.of(SipEvent)] == [INVITE, OK, BYE]


def test_sip_lines_are_the_relays() -> None:
    run = Run().feed(OPENED, *chunks(INVITE + OK))
    request, response = run.log.find("sip")
    assert request == {**BOUND, "direction": "customer->core", "size": len(INVITE), "method": "INVITE",
                       "call_id": CALL_ID, "cseq": "1 INVITE", "event": "sip", "level": "info"}
    assert response == {**BOUND, "direction": "customer->core", "size": len(OK), "status": 200, "reason": "OK",
                        "call_id": CALL_ID, "cseq": "1 INVITE", "event": "sip", "level": "info"}


SIP_LINE_CASES: list[tuple[bytes, Any]] = [
    (INVITE, read_fields(INVITE, INVITE.index(b"\r\n\r\n") + 4)),
    (OK, read_fields(OK, OK.index(b"\r\n\r\n") + 4)),
    (b"garbage framed as a message", None),  # unparsed: direction and size only
    (BYE, SipFields(False, None, None, 503, "", None, None, None, None, None, None, None, 0)),
    (BYE, SipFields(True, None, None, None, None, 'a"\u00e9\\b\x01', 7, None, None, None, None, None, 0)),
    (BYE, parse_message(BYE.replace(b"Call-ID: ", b"Call-ID: \xc3\xa9"))),  # the view's decoded str
]


@pytest.fixture
def own_logging() -> Iterator[None]:
    """configure() is process-wide: put back structlog's and siptap.log's set-up afterwards, or
    later tests would log into this test's closed writer (tests/relay/test_heap_trim.py
    counts what that keeps alive)."""
    structlog_config, siptap_config = structlog.get_config(), dict(siptap_log._configured)
    try:
        yield
    finally:
        structlog.reset_defaults()
        structlog.configure(**structlog_config)
        siptap_log._configured.clear()
        siptap_log._configured.update(siptap_config)


@pytest.mark.usefixtures("own_logging")
def test_the_sip_line_writer_renders_structlogs_line_byte_for_byte() -> None:
    """The mirror's per-direction renderer writes exactly what log.info("sip", ...) writes
    through structlog (bound context, fields, event, context variables, level, timestamp)."""
    stream = io.StringIO()
    writer = configure(LogSettings(format="json", level="info"), stream)
    structlog.contextvars.bind_contextvars(process="mirror")
    try:
        log = get_logger().bind(**BOUND)
        for payloads in (False, True):
            write = sip_line_writer(log, "core->customer", payloads=payloads)
            assert write is not None
            for data, fields in SIP_LINE_CASES:
                write(data, fields)
                log.info("sip", **sip_line_fields("core->customer", data, fields, payloads=payloads))
    finally:
        structlog.contextvars.unbind_contextvars("process")
        writer.close()
    lines = [re.sub(r'"timestamp": "[^"]*"', '"timestamp": "T"', line) for line in stream.getvalue().splitlines()]
    assert len(lines) == 4 * len(SIP_LINE_CASES)
    for fast, slow in zip(lines[::2], lines[1::2], strict=True):
        assert fast == slow
    assert '"size": 27, "event": "sip"' in lines[4] and '"call_id": "\\u00e9' in lines[10]


@pytest.mark.usefixtures("own_logging")
def test_the_sip_line_writer_declines_what_event_writer_declines() -> None:
    writer = configure(LogSettings(format="console"), io.StringIO())
    try:
        assert sip_line_writer(get_logger().bind(conn="c"), "a->b", payloads=False) is None
        assert sip_line_writer(get_logger().bind(conn="c"), "a->b", payloads=True) is None
    finally:
        writer.close()
    writer = configure(LogSettings(format="json"), io.StringIO())
    try:  # not structlog's logger (the tests' recording log): the usual way
        assert sip_line_writer(RecordingLog(), "a->b", payloads=False) is None
        assert sip_line_writer(get_logger().bind(conn="c"), "a->b", payloads=False) is not None
    finally:
        writer.close()


def test_payloads_only_when_asked_and_no_lines_when_sip_messages_is_off() -> None:
    run = Run(log_settings=LogSettings(sip_payloads=True)).feed(OPENED, *chunks(BYE))
    assert run.log.find("sip")[0]["payload"] == BYE
    quiet = Run(log_settings=LogSettings(sip_messages=False)).feed(OPENED, *chunks(BYE))
    assert quiet.log.events == [] and len(quiet.of(SipEvent)) == 1  # not logged, still mirrored


def test_events_carry_the_fields_of_one_pass_and_each_direction_its_side() -> None:
    run = Run(mirror_legs=frozenset({"customer", "core"}))
    run.feed(OPENED, *chunks(BYE), *chunks(OK, direction=FROM_DIALLED))
    sips = run.of(SipEvent)
    # The accepted side's bytes travel client -> server on both legs; the dialled side's back.
    assert [(e.leg, e.from_client) for e in sips[:2]] == [(CUSTOMER, True), (CORE, True)]
    assert [(e.leg, e.from_client) for e in sips[2:4]] == [(CUSTOMER, False), (CORE, False)]
    assert isinstance(sips[0].view, SipFields) and sips[0].view.cseq_method == "BYE" and sips[0].ts == 2.0
    assert run.log.find("sip")[1]["direction"] == "core->customer"


def test_a_routes_own_mirror_legs_override_the_mirror_section() -> None:
    # [mirror] legs = "customer", but route "lab" mirrors both; another route follows [mirror].
    run = Run(mirror_legs=frozenset({"customer"}), route_legs={"lab": frozenset({"customer", "core"})})
    run.feed(OPENED, *chunks(BYE))
    assert [e.leg.leg for e in run.of(SipEvent)] == ["customer", "core"]
    other = Run(mirror_legs=frozenset({"customer"}), route_legs={"elsewhere": frozenset({"core"})})
    other.feed(OPENED, *chunks(BYE))
    assert [e.leg.leg for e in other.of(SipEvent)] == ["customer"]


def test_an_odd_message_falls_back_to_the_full_view() -> None:
    odd = BYE.replace(b"From: <sip:alice", b"From: \xc3\xa9 <sip:alice")  # non-ASCII: read_fields declines
    run = Run().feed(OPENED, *chunks(odd))
    view = run.of(SipEvent)[0].view
    assert view is not None and not isinstance(view, SipFields) and view.method == "BYE"


def test_sdp_a_crypto_publishes_an_srtp_key_for_each_mirrored_leg_and_logs_it() -> None:
    run = Run(mirror_legs=frozenset({"customer", "core"})).feed(OPENED, *chunks(INVITE))
    assert [(type(e).__name__, e.leg.leg) for e in run.published] == [
        ("SipEvent", "customer"), ("SipEvent", "core"), ("SrtpKeyEvent", "customer"), ("SrtpKeyEvent", "core")]
    key_event = run.published[2]
    assert isinstance(key_event, SrtpKeyEvent)
    assert key_event.call_id == CALL_ID and key_event.method_or_status == "INVITE" and key_event.from_client
    assert key_event.key.key_params_b64.startswith(INLINE) and key_event.key.port == 49170
    line = run.log.find("srtp_key")[0]
    assert line["direction"] == "customer->core" and line["message"] == "INVITE" and line["address"] == "192.0.2.10"
    assert line["inline"] == key_event.key.key_params_b64 and line["master_key"] == key_event.key.master_key.hex()
    quiet = Run(log_settings=LogSettings(key_material=False)).feed(OPENED, *chunks(OK))
    assert not {"inline", "master_key", "master_salt"} & set(quiet.log.find("srtp_key")[0])


def test_unframeable_bytes_are_reported_once_when_the_region_ends() -> None:
    # Until issue 13 the line came at the first unframeable run, without offset or full size;
    # now it comes once the region is known whole (here at the close), and says both.
    record = b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" + bytes(range(200))
    garbage = record + bytes(range(256))
    run = Run().feed(OPENED, *chunks(garbage, [5]))
    assert run.log.names() == [] and run.published == []
    assert run.counts.unobserved_bytes == {("lab", "unframeable"): len(garbage)}  # counted as it is skipped
    run.feed(closed(len(garbage)))
    line = run.log.find("unframeable")[0]
    assert line["reason"] == "TLS record where cleartext SIP was expected"
    assert (line["offset"], line["size"], line["head"]) == (0, len(garbage), garbage[:64])


# -- gaps --------------------------------------------------------------------------------------


def test_an_offset_jump_is_one_gap_then_framing_resumes_at_the_next_message() -> None:
    # OK's chunk never arrived, and no marker said so.
    run = Run().feed(OPENED, *chunks(INVITE), *chunks(BYE, start=len(INVITE) + len(OK)), *chunks(BYE, start=len(INVITE + OK + BYE)))
    assert [e.data for e in run.of(SipEvent)] == [INVITE, BYE, BYE]
    gap, = run.log.find("gap")
    assert gap == {**BOUND, "direction": "customer->core", "cause": "bytes missing", "offset": len(INVITE),
                   "missing": len(OK), "chunks": None, "other_records": None, "event": "gap", "level": "warning"}
    assert run.counts.gaps == {"lab": 1} and run.counts.gap_bytes == {"lab": len(OK)}


def test_a_gap_inside_a_message_drops_the_partial_message_and_resyncs() -> None:
    stream = INVITE + OK + BYE
    cut = len(INVITE) + 40  # the hole starts inside OK's header block ...
    resume = len(INVITE) + len(OK) - 10  # ... and ends inside OK's body
    run = Run().feed(OPENED, *chunks(stream[:cut]), *chunks(stream[resume:], [3, 20], start=resume), closed(len(stream)))
    assert [e.data for e in run.of(SipEvent)] == [INVITE, BYE]
    assert len(run.log.find("gap")) == 1 and not run.log.find("unframeable")  # debris is the gap's, not garbage
    observed = run.log.find("connection_observed")[0]
    assert observed["gaps"] == 1 and observed["missing_bytes"] == resume - cut
    assert observed["resync_bytes"] == 40 + 10 and observed["unframeable_bytes"] == 0


def test_a_dropped_marker_is_the_gap_report_and_the_next_chunk_is_not_a_second_one() -> None:
    marker = Dropped(7, 3.0, chunks_from_accepted=1, bytes_from_accepted=len(OK), other_records=1)
    run = Run().feed(OPENED, *chunks(INVITE), marker, *chunks(BYE, start=len(INVITE) + len(OK)))
    assert [e.data for e in run.of(SipEvent)] == [INVITE, BYE]
    gap, = run.log.find("gap")
    assert (gap["cause"], gap["direction"], gap["offset"], gap["missing"], gap["chunks"], gap["other_records"]) == (
        "channel full", "customer->core", len(INVITE), len(OK), 1, 1)


def test_framers_are_made_at_a_directions_first_byte_or_gap() -> None:
    # Idle connections hold no framer (issue 16, S4); one made at a gap still resynchronises:
    # the first bytes after the hole are the tail of a lost message, then a whole one.
    run = Run().feed(OPENED)
    connection = run.observer._connections[(1, 7)]
    assert connection.up.framer is None and connection.down.framer is None
    lost = len(OK) - 5
    run.feed(Dropped(7, 2.0, chunks_from_accepted=1, bytes_from_accepted=lost, other_records=0),
             *chunks(OK[lost:] + BYE, start=lost))
    assert connection.up.framer is not None and connection.down.framer is None
    assert [e.data for e in run.of(SipEvent)] == [BYE]
    run.feed(ConnectionClosed(7, 5.0, 4.0, lost + 5 + len(BYE), 0, "customer", "closed"))
    observed, = run.log.find("connection_observed")
    assert (observed["gaps"], observed["missing_bytes"], observed["messages_observed"]) == (1, lost, 1)


def test_a_marker_for_both_directions_reports_each_and_lost_records_alone_are_reported_too() -> None:
    marker = Dropped(7, 3.0, 2, 100, 1, 50, other_records=0)
    run = Run().feed(OPENED, marker, Dropped(7, 4.0, other_records=2))
    assert [(g["direction"], g["missing"], g["other_records"]) for g in run.log.find("gap")] == [
        ("customer->core", 100, 0), ("core->customer", 50, None), (None, 0, 2)]


def test_chunks_of_a_connection_never_announced_are_reported_once() -> None:
    run = Run().feed(*chunks(INVITE, [10, 20]))
    gap, = run.log.find("gap")
    assert gap["cause"] == "connection not announced" and gap["channel"] == 1 and gap["conn_number"] == 7
    assert run.published == []


def test_bytes_seen_twice_are_skipped() -> None:
    run = Run().feed(OPENED, *chunks(INVITE), *chunks(INVITE[-10:] + BYE, start=len(INVITE) - 10))
    assert [e.data for e in run.of(SipEvent)] == [INVITE, BYE] and not run.log.find("gap")


def test_a_tail_the_relay_sent_but_we_never_got_is_a_gap_at_close() -> None:
    run = Run().feed(OPENED, *chunks(INVITE), closed(len(INVITE) + 500))
    gap, = run.log.find("gap")
    assert gap["cause"] == "tail not received" and gap["missing"] == 500


# -- handshakes and keys -----------------------------------------------------------------------


def test_a_handshake_record_is_a_key_event_and_the_relays_handshake_done_line() -> None:
    facts = handshake("core")
    record = HandshakeDone(7, 1.5, "core", {**facts.as_dict(), "upstream": "core.example:5061"})
    run = Run().feed(OPENED, record)
    event, = run.published
    assert event == KeyEvent(1.5, CORE, facts)
    line, = run.log.find("handshake_done")
    data = facts.as_dict()
    del data["peer_chain"]
    assert line == {**BOUND, **data, "upstream": "core.example:5061", "client": "192.0.2.1:45000",
                    "server": "198.51.100.7:5061", "peer_certificate": None, "peer_chain_length": 0,
                    "event": "handshake_done", "level": "info"}
    quiet = Run(log_settings=LogSettings(key_material=False)).feed(OPENED, record)
    assert not {"master_secret", "keylog"} & set(quiet.log.find("handshake_done")[0])
    assert quiet.published[0] == KeyEvent(1.5, CORE, facts)  # the key log still gets the keys


def test_the_relays_raw_chain_is_summarised_here_as_the_relay_summarised_it() -> None:
    """The relay hands the peer chain over as DER (issue 16 item 6): the mirror's summaries,
    in the KeyEvent and the handshake_done line, are what siptap.certificates makes of it."""
    ca = trustme.CA()
    leaf = ca.issue_cert("core.example", "192.0.2.9")
    ders = tuple(x509.load_pem_x509_certificate(blob.bytes()).public_bytes(Encoding.DER)
                 for blob in (leaf.cert_chain_pems[0], ca.cert_pem))
    summaries = tuple(certificate_summary(x509.load_der_x509_certificate(der)) for der in ders)
    facts = replace(handshake("core"), peer_chain=summaries)
    members = facts.as_dict()
    del members["peer_chain"]
    run = Run().feed(OPENED, HandshakeDone(7, 1.5, "core", members, ders), HandshakeDone(8, 1.6, "core", members, ders))
    assert run.published[0] == KeyEvent(1.5, CORE, facts)
    line = run.log.find("handshake_done")[0]
    assert line["peer_certificate"] == vars_of(summaries[0]) and line["peer_chain_length"] == 2
    assert "DNS:core.example" in line["peer_certificate"]["sans"]
    bad = Run().feed(OPENED, HandshakeDone(7, 1.5, "core", members, (b"not a certificate",)))
    assert bad.published == [] and bad.log.names() == ["handshake_record_invalid"]


def test_records_before_their_connection_opened_wait_for_it() -> None:
    accepted_only = ConnectionOpened(7, 1.0, "m-1", "lab", OPENED.legs[:1])
    dialled_only = ConnectionOpened(7, 1.2, "m-1", "lab", OPENED.legs[1:])
    customer, core = handshake("customer"), handshake("core")
    run = Run().feed(HandshakeDone(7, 1.1, "customer", customer.as_dict()), accepted_only,
                     HandshakeDone(7, 1.3, "core", core.as_dict()), dialled_only)
    assert run.published == [KeyEvent(1.1, CUSTOMER, customer), KeyEvent(1.3, CORE, core)]
    assert run.log.names() == ["handshake_done", "handshake_done"]


def test_key_lines_before_the_handshake_are_merged_and_later_new_ones_published() -> None:
    facts = handshake("customer")
    bare = {k: v for k, v in facts.as_dict().items() if k != "keylog"}
    run = Run().feed(OPENED, KeyMaterial(7, 1.0, "customer", facts.keylog_lines), HandshakeDone(7, 1.1, "customer", bare))
    assert run.published == [KeyEvent(1.1, CUSTOMER, facts)]
    run.feed(KeyMaterial(7, 1.2, "customer", facts.keylog_lines))  # already carried: nothing
    run.feed(KeyMaterial(7, 1.3, "customer", ("EXPORTER_SECRET a b",)))
    later = run.published[1]
    assert isinstance(later, KeyEvent) and later.facts.keylog_lines == ("EXPORTER_SECRET a b",)


def test_an_idle_connection_keeps_no_peer_chain_or_offer_after_publishing_them() -> None:
    # The memory of an idle connection (issue 16, S4): after its KeyEvent went out with the
    # whole record, the observer keeps only what a later key line needs.
    summary = CertificateSummary(subject="CN=sbc", issuer="CN=ca", serial="01", not_before="2026-01-01",
                                 not_after="2027-01-01", sha256="ef" * 32, sans=("sbc.example.com",),
                                 common_name="sbc")
    facts = replace(handshake("customer"), peer_chain=(summary,), client_offer={"ciphers": ["AES256-SHA"]})
    run = Run().feed(OPENED, HandshakeDone(7, 1.1, "customer", facts.as_dict()))
    assert run.published == [KeyEvent(1.1, CUSTOMER, facts)]
    kept = run.observer._connections[(1, 7)].handshakes["customer"]
    assert kept.peer_chain == () and kept.client_offer is None and kept.keylog_lines == facts.keylog_lines
    run.feed(KeyMaterial(7, 1.3, "customer", ("EXPORTER_SECRET a b",)))
    later = run.published[1]
    assert isinstance(later, KeyEvent) and later.leg == CUSTOMER
    assert (later.facts.version, later.facts.cipher, later.facts.keylog_lines) == (
        facts.version, facts.cipher, ("EXPORTER_SECRET a b",))


def test_an_invalid_handshake_record_is_logged_not_raised() -> None:
    run = Run().feed(OPENED, HandshakeDone(7, 1.0, "customer", {"leg": "customer"}))
    assert run.published == [] and run.log.find("handshake_record_invalid")[0]["detail"].endswith("role is missing")


# -- ends --------------------------------------------------------------------------------------


def test_close_flushes_publishes_a_close_per_leg_and_logs_the_counts() -> None:
    run = Run()
    run.answers = itertools.chain([True, False], itertools.repeat(True))  # a sink dropped the second SipEvent
    stream = BYE + b"\r\n\r\n" + OK + INVITE[:100]
    run.feed(OPENED, *chunks(stream), *chunks(BYE, direction=FROM_DIALLED), closed(len(stream), len(BYE)))
    assert run.log.names()[-2:] == ["unframeable", "connection_observed"]
    assert run.log.find("unframeable")[0]["reason"] == "truncated at end of stream"
    closes = run.of(ClosedEvent)
    # Both legs, whatever mirror.legs says: the fan-out filters, as for the relay's closes.
    assert [c.leg for c in closes] == [CUSTOMER, CORE]
    assert closes[0] == ClosedEvent(9.0, CUSTOMER, 8.0, bytes_from_client=len(stream), bytes_from_server=len(BYE),
                                    messages_observed=3, reason="customer sent close_notify")
    observed = run.log.find("connection_observed")[0]
    assert observed == {**BOUND, "reason": "customer sent close_notify", "messages_customer_to_core": 2,
                        "messages_core_to_customer": 1, "keepalives": 1, "messages_observed": 3,
                        "messages_mirrored": 2, "messages_mirror_dropped": 1, "unframeable_bytes": 100,
                        "gaps": 0, "missing_bytes": 0, "resync_bytes": 0, "event": "connection_observed",
                        "level": "info"}
    assert run.observer.open_connections == 0


def test_channel_lost_reports_and_closes_that_channels_connections_only() -> None:
    run = Run()
    run.feed(OPENED, *chunks(BYE), *chunks(INVITE[:50], start=len(BYE)), channel=1)
    run.feed(OPENED, *chunks(BYE), channel=2)
    run.observer.channel_lost(1)
    assert [line["event"] for line in lines(run.log)] == ["sip", "sip", "gap", "unframeable", "connection_observed"]
    assert run.log.find("gap")[0]["cause"] == "relay worker lost"
    closes = run.of(ClosedEvent)
    assert len(closes) == 2 and {c.reason for c in closes} == {"relay worker lost"}
    assert closes[0].duration == 99.0 and closes[0].bytes_from_client == len(BYE) + 50
    assert run.observer.open_connections == 1
    run.observer.close()
    assert run.of(ClosedEvent)[-1].reason == "mirror stopped" and run.observer.open_connections == 0


# -- counters ----------------------------------------------------------------------------------


def test_messages_are_counted_as_plain_integers_and_scraped_under_todays_name() -> None:
    registry = CollectorRegistry()
    counts = SipMessageCounts()
    Metrics(registry, sip_message_counts=counts)
    run = Run()
    run.observer.counts = counts  # the registered counts, swapped in before any connection exists
    run.feed(OPENED, *chunks(INVITE + BYE + sip("SIP/2.0 200 OK", "2 BYE")), *chunks(b"x\r\n", start=10**6))
    assert registry.get_sample_value(
        "siptap_sip_messages_total", {"route": "lab", "direction": "customer->core", "kind": "INVITE"}) == 1
    assert registry.get_sample_value(
        "siptap_sip_messages_total", {"route": "lab", "direction": "customer->core", "kind": "2xx"}) == 1
    assert registry.get_sample_value("siptap_mirror_gaps_total", {"route": "lab"}) == 1


def test_in_multiprocess_mode_counts_are_copied_into_the_shared_counter() -> None:
    registry = CollectorRegistry()
    counts = SipMessageCounts()
    metrics = Metrics(registry, multiprocess=True, sip_message_counts=counts)
    bye = counts.for_direction("lab", "customer->core")
    bye["BYE"] = 3
    metrics.sync_sip_messages()
    bye["BYE"] = 5
    metrics.sync_sip_messages()
    metrics.sync_sip_messages()
    assert registry.get_sample_value(
        "siptap_sip_messages_total", {"route": "lab", "direction": "customer->core", "kind": "BYE"}) == 5

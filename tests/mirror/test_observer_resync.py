"""The mirror never goes blind (issue 13): skipped regions reported once, with where and how much.

Records in, events and log lines out, as tests/mirror/test_observer.py; here the streams hold
what the framer cannot frame (garbage, an oversized header block, lying Content-Lengths) and
the checks are that every valid message after it is still published, that each skipped region
is one ``unframeable`` line with its offset and size, and that the bytes are counted.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from siptap.metrics import Metrics, SipMessageCounts
from siptap.mirror.events import SipEvent
from siptap.sansio.chunk_records import Dropped
from tests.mirror.test_observer import BOUND, OPENED, Run, chunks, closed
from tests.relay.memory import BYE, INVITE, OK

GARBAGE = b"\x00\x01\xffbinary junk\r\n"
HUGE = b"OPTIONS sip:x SIP/2.0\r\nX-Filler: " + b"a" * 20000 + b"\r\n\r\n"
LYING = b"MESSAGE sip:x SIP/2.0\r\nCall-ID: lie\r\nContent-Length: 400\r\n\r\nshort\r\n"
BAD_LENGTH = b"MESSAGE sip:x SIP/2.0\r\nContent-Length: -1\r\n\r\nhi\r\n"


def stream_and_regions() -> tuple[bytes, list[bytes], list[tuple[int, int, str]]]:
    """A stream of valid messages with every kind of bad region between them; the valid
    messages; each region's (offset, size, reason)."""
    parts: list[tuple[bytes, str | None]] = [
        (INVITE, None), (GARBAGE, "not a SIP start line"), (OK, None),
        (HUGE, "header block exceeds 16384 bytes without end"), (BYE, None),
        (LYING, "Content-Length 400 runs into the next message"), (INVITE, None),
        (BAD_LENGTH, "invalid Content-Length: '-1'"), (OK, None), (BYE, None),
    ]
    stream, valid, regions = b"", [], []
    for data, reason in parts:
        if reason is None:
            valid.append(data)
        else:
            regions.append((len(stream), len(data), reason))
        stream += data
    return stream, valid, regions


def test_every_valid_message_after_each_bad_region_is_published_and_each_region_logged_once() -> None:
    stream, valid, regions = stream_and_regions()
    for cuts in ([], list(range(0, len(stream), 1000)), list(range(0, len(stream), 97))):
        run = Run().feed(OPENED, *chunks(stream, cuts), closed(len(stream)))
        published = [e.data for e in run.of(SipEvent) if e.leg.leg == "customer"]
        assert published == valid, cuts
        lines = run.log.find("unframeable")
        assert [(u["offset"], u["size"], u["reason"]) for u in lines] == regions, cuts
        assert all(u["direction"] == "customer->core" and u["conn"] == BOUND["conn"] for u in lines)
        observed = run.log.find("connection_observed")[0]
        skipped = sum(size for _, size, _ in regions)
        assert observed["unframeable_bytes"] == skipped and observed["messages_customer_to_core"] == len(valid)
        assert run.counts.unobserved_bytes == {("lab", "unframeable"): skipped}


def test_a_region_ends_at_a_gap_and_the_debris_is_the_gaps() -> None:
    # Garbage, then the relay drops a chunk (half of OK), then BYE.
    head = INVITE + GARBAGE
    lost = len(OK) // 2
    marker = Dropped(7, 3.0, chunks_from_accepted=1, bytes_from_accepted=lost)
    run = Run().feed(OPENED, *chunks(head), marker, *chunks(OK[lost:] + BYE, start=len(head) + lost))
    events = [line["event"] for line in run.log.events if line["event"] in ("unframeable", "gap")]
    assert events == ["unframeable", "gap"]  # the region's line first: it ended where the hole began
    region = run.log.find("unframeable")[0]
    assert (region["offset"], region["size"]) == (len(INVITE), len(GARBAGE))
    assert [e.data for e in run.of(SipEvent) if e.leg.leg == "customer"] == [INVITE, BYE]
    debris = len(OK) - lost
    assert run.counts.unobserved_bytes == {("lab", "unframeable"): len(GARBAGE), ("lab", "gap"): lost + debris}


def test_unobserved_bytes_are_exported_by_a_single_process_and_under_a_supervisor() -> None:
    stream, _, regions = stream_and_regions()
    skipped = sum(size for _, size, _ in regions)
    single, shared = CollectorRegistry(), CollectorRegistry()
    counts = SipMessageCounts()
    Metrics(single, sip_message_counts=counts)
    metrics = Metrics(shared, multiprocess=True, sip_message_counts=counts)
    run = Run()
    run.observer.counts = counts
    run.feed(OPENED, *chunks(stream[:1000]), *chunks(stream[1500:], start=1500))  # and a gap of 500
    metrics.sync_sip_messages()
    metrics.sync_sip_messages()  # a second copy adds nothing
    for registry in (single, shared):
        assert registry.get_sample_value("siptap_mirror_unobserved_bytes_total",
                                         {"route": "lab", "cause": "unframeable"}) == counts.unobserved_bytes[
                                             ("lab", "unframeable")]
        assert registry.get_sample_value("siptap_mirror_unobserved_bytes_total",
                                         {"route": "lab", "cause": "gap"}) >= 500
        assert registry.get_sample_value("siptap_mirror_gaps_total", {"route": "lab"}) == 1
    assert 0 < counts.unobserved_bytes[("lab", "unframeable")] <= skipped


def test_gap_lines_are_rate_limited_per_direction_and_every_gap_is_still_accounted() -> None:
    """An overloaded mirror gets a marker every few records: one gap line per direction per
    GAP_LINE_INTERVAL (record time), the next line carries what was kept out, and the close
    summarises the rest, so the lines still add up to every gap."""
    markers = [Dropped(7, ts, chunks_from_accepted=1, bytes_from_accepted=10) for ts in (3.0, 4.0, 5.0, 20.0, 21.0)]
    run = Run().feed(OPENED, *markers, closed(50))
    gaps = run.log.find("gap")
    assert [(g["offset"], g["missing"], g.get("suppressed_gaps"), g.get("suppressed_missing")) for g in gaps] == [
        (0, 10, None, None), (30, 10, 2, 20)]
    summary, = run.log.find("gaps_summarised")
    assert (summary["direction"], summary["gaps"], summary["missing"]) == ("customer->core", 1, 10)
    observed = run.log.find("connection_observed")[0]
    assert observed["gaps"] == 5 and observed["missing_bytes"] == 50

"""One observed connection in the mirror process: its legs, and per direction a framer and counts.

:class:`~siptap.mirror.observer.Observer` routes records here. :class:`Direction` is the hot
path, the mirror-side twin of ``relay/observe.py``'s ``DirectionObserver``: chunk bytes ->
framer -> per message the SIP fields in one pass (read by the framer's fast path with the
Content-Length, ``sip_fields.read_head``; else ``read_fields``; the full ``SipMessageView``
only when both decline), a ``SipEvent`` per mirrored leg, the ``sip`` log line, the
per-message count and SRTP keys. Everything a message's outputs share is fixed once per
direction: the leg infos with their direction flag, the direction's name, the count dict of
its route and direction, and (at its first message) the ``sip`` line's rendered prefix with
the bound context and the direction (:func:`sip_line_writer`).
"""

from __future__ import annotations

from collections.abc import Callable
from json.encoder import encode_basestring_ascii
from typing import Any, Literal

from siptap.log import LogWriter, event_parts, event_writer
from siptap.metrics import SipMessageCounts, message_kind
from siptap.mirror.events import LegInfo, MirrorEvent, SipEvent, SrtpKeyEvent
from siptap.sansio.chunk_records import Dropped, HandshakeDone, KeyMaterial
from siptap.sansio.handshake import HandshakeFacts
from siptap.sansio.sdp_crypto import parse_sdp_crypto
from siptap.sansio.sip_fields import SipFields, read_fields
from siptap.sansio.sip_framer import Event, KeepAlive, SipFramer, SipMessage, Unframeable
from siptap.sansio.sip_message import SipMessageView, SipParseError, parse_message

# The fan-out's publish (or a test's list.append): it returns False when a sink dropped the
# event, anything else when all took it. Typed as returning object so that a plain append
# (returning None) is a valid stand-in: only an explicit False counts as a drop.
Publish = Callable[[MirrorEvent], object]
# SipFramer's reason for bytes dropped or skipped because of a gap. Repeated here rather than
# imported: the framer keeps its reason strings private, and this one is part of what it
# reports (the string, not a name, is the interface).
_GAP = "gap"
# Writes one message's ``sip`` line (sip_line_writer).
SipLineWriter = Callable[[bytes, "SipFields | SipMessageView | None"], None]
# At most one gap line per direction in this many seconds (of record time); see report_gap.
GAP_LINE_INTERVAL = 10.0
# How much of a skipped region its log line shows: enough to recognise a TLS record or a
# protocol mismatch, without putting a whole (maybe secret-bearing) run in the log.
_HEAD = 64


class Direction:
    """One direction of one connection (``customer->core`` or back). Slotted: a trunk's
    mirror holds two of these per idle connection."""

    # A trunk keeps its connections open for hours with little traffic: the per-connection
    # footprint is what the mirror pays for each idle trunk, so no instance dict.
    __slots__ = (
        "_counts",
        "_gap_counts",
        "_gap_lines",
        "_log",
        "_log_key_material",
        "_log_messages",
        "_log_payloads",
        "_max_message_size",
        "_publish",
        "_region",
        "_reported_to",
        "_route",
        "_sip_line",
        "duplicate_bytes",
        "expected",
        "framer",
        "gaps",
        "keepalives",
        "legs",
        "messages",
        "mirror_dropped",
        "missing_bytes",
        "name",
        "resync_bytes",
        "unframeable_bytes",
    )

    def __init__(self, *, name: str, route: str, log: LogWriter, publish: Publish, counts: SipMessageCounts,
                 max_message_size: int, log_messages: bool, log_payloads: bool, log_key_material: bool) -> None:
        self.name = name
        self._route = route
        self._log = log
        self._publish = publish
        # The per-kind dict of this route and direction, looked up once: per message the count
        # is then one dict increment (no (route, direction) key built per message).
        self._counts = counts.for_direction(route, name)
        # The whole counter too, for gaps: rare, so counted by route there, not per direction.
        self._gap_counts = counts
        # The route's max_sip_message (Observer.from_config): a message over it is skipped
        # (one unframeable region) and framing goes on after it. The header limit stays the
        # framer's default.
        # Made at this direction's first byte (or first gap), not here: most of a trunk's
        # connections idle, many directions of them never carry a byte, and a framer with its
        # buffer is ~0.3 KiB per direction of every open connection (S4, issue 16).
        self._max_message_size = max_message_size
        self.framer: SipFramer | None = None
        # (leg, from_client on that leg) for each mirrored leg, accepted leg first.
        # Empty until ConnectionOpened names the legs (ObservedConnection.add_leg): a direction
        # without mirrored legs still frames, counts and logs, it only publishes nothing.
        self.legs: tuple[tuple[LegInfo, bool], ...] = ()
        # The [log] switches, copied per direction: read per message, where an attribute of
        # self is cheaper than reaching into the settings.
        self._log_messages = log_messages
        self._log_payloads = log_payloads
        self._log_key_material = log_key_material
        # False: not made yet; None: sip_line_writer cannot render this logger's lines.
        self._sip_line: SipLineWriter | Literal[False] | None = False
        # The skipped region being read (see _unframeable): None, or [offset, size, reason,
        # head]. Reported once, when it ends, so that one line says where and how much.
        self._region: list[Any] | None = None
        # Offsets are per direction and count from the connection's first byte, as the relay
        # numbers them (sansio/chunk_records): comparing is how holes and replays are found.
        self.expected = 0  # offset of the next byte of this direction's stream
        # Offset of the next byte the framer will report: every byte fed comes back in exactly
        # one event, in order, so each event's offset is the sum of the sizes before it.
        self._reported_to = 0
        # Rate limit of the gap lines, made at the first gap: [ts of the last gap line, gaps
        # and missing bytes since then not given a line of their own]. One slot, None on the
        # idle connections that never see a gap.
        self._gap_lines: list[float] | None = None
        # The counts below are what connection_observed reports at the end (observer._finish
        # sums the two directions); nothing reads them per message.
        self.messages = 0
        self.mirror_dropped = 0  # messages at least one sink had to drop
        self.keepalives = 0
        self.unframeable_bytes = 0
        self.gaps = 0
        self.missing_bytes = 0  # bytes the relay could not send us
        self.resync_bytes = 0  # bytes received but discarded around a gap (partial messages)
        self.duplicate_bytes = 0  # bytes received twice (a replayed record), skipped

    # -- bytes in --------------------------------------------------------------------------

    def chunk(self, offset: int, data: bytes, ts: float) -> None:
        """A chunk of this direction's stream, starting at ``offset``."""
        expected = self.expected
        # The usual case is offset == expected (records of one channel arrive in order) and
        # costs one comparison; the branches below are for a channel that lost records.
        if offset != expected:
            if offset > expected:
                # Bytes went missing and no Dropped marker said so (a marker lost too).
                # report_gap moves expected to offset, so the chunk is then fed as usual.
                # At expected 0 this mirror never saw the stream's start: a connection the relay
                # re-announced after a mirror restart (relay/tap.py).
                self.report_gap("bytes missing" if expected else "joined mid-stream", expected, offset - expected, ts)
            else:
                # Overlap: bytes already framed. Feeding them again would frame a message twice
                # (test_bytes_seen_twice_are_skipped); only the unseen tail, if any, goes on.
                seen = expected - offset
                if seen >= len(data):
                    # Entirely old (a replayed record): nothing to frame, expected unchanged.
                    self.duplicate_bytes += len(data)
                    return
                data = data[seen:]
                self.duplicate_bytes += seen
        # Advanced before framing: whatever the framer does with them, these bytes were
        # received, and the next chunk's offset is checked against their end.
        self.expected += len(data)
        framer = self.framer
        if framer is None:
            framer = self.framer = SipFramer(max_message_size=self._max_message_size)
        events = framer.feed(data)
        # Most chunks that do not end a message return no events: skip the loop's setup.
        if events:
            self._events(events, ts)

    def report_gap(self, cause: str, offset: int, missing: int, ts: float, *, chunks: int | None = None,
                   other_records: int | None = None) -> None:
        """``missing`` bytes from ``offset`` on never reached us: say so once, count it, and
        let the framer resynchronise at the next message."""
        # Counted three ways: this direction (the connection_observed line), the route (the
        # metrics), and a warning now, so a gap is visible before the connection ends.
        self.gaps += 1
        self.missing_bytes += missing
        self._gap_counts.count_gap(self._route, missing)
        self._gap_counts.count_unobserved(self._route, "gap", missing)
        # A region being skipped ends at the hole: its line comes first, in stream order.
        self._end_region()
        # One line per gap, but at most one per GAP_LINE_INTERVAL per direction: an overloaded
        # mirror sees a marker per connection every few records (6,773 gap lines in 40 s in
        # bench/overload.py), which would bury the very log that says why. The counts are
        # exact anyway: in the next line (suppressed_*), in gaps_summarised at the close, in
        # connection_observed and in the metrics.
        lines = self._gap_lines
        if lines is not None and ts - lines[0] < GAP_LINE_INTERVAL:
            lines[1] += 1
            lines[2] += missing
        else:
            # The gaps kept out of the log since the previous line, if any, ride on this one.
            suppressed = {} if lines is None or not lines[1] else {
                "suppressed_gaps": int(lines[1]), "suppressed_missing": int(lines[2])}
            self._log.warning("gap", direction=self.name, cause=cause, offset=offset, missing=missing, chunks=chunks,
                              other_records=other_records, **suppressed)
            self._gap_lines = [ts, 0, 0]
        # Past the hole: a Dropped marker reports it before the next chunk arrives, and the
        # chunk (at offset + missing) must then not report it a second time
        # (test_a_dropped_marker_is_the_gap_report_and_the_next_chunk_is_not_a_second_one).
        self.expected = offset + missing
        # What the framer held (before the hole) comes back as gap debris; then its reports
        # continue after the hole.
        # Made here if no byte came yet: the gap state (resynchronise at the next line start)
        # must be there for the first bytes after the hole.
        framer = self.framer
        if framer is None:
            framer = self.framer = SipFramer(max_message_size=self._max_message_size)
        self._events(framer.gap(), ts)
        self._reported_to = self.expected

    # Called once per direction by observer._finish, after any tail gap was reported, so
    # that a message cut by the hole is reported as gap debris, not as truncated.
    def close(self, ts: float) -> None:
        # The framer reports what it still holds (a message cut off by the close) as
        # "truncated": logged as unframeable, so a connection that ends mid-message says so.
        if self.framer is not None:  # no framer: no byte came, nothing held
            self._events(self.framer.close(), ts)
        self._end_region()
        # The gaps the rate limit kept out of the log, so that the gap lines of a connection
        # always account for all of them.
        lines = self._gap_lines
        if lines is not None and lines[1]:
            self._log.warning("gaps_summarised", direction=self.name, gaps=int(lines[1]), missing=int(lines[2]),
                              detail=f"gaps without a line of their own (at most one gap line per {GAP_LINE_INTERVAL:g} s)")
            lines[1] = lines[2] = 0

    # -- events out ------------------------------------------------------------------------

    def _events(self, events: list[Event], ts: float) -> None:
        for event in events:
            # SipMessage first: nearly every event is one, so the common case costs one
            # isinstance. Keepalives are counted only: a line each would say nothing that the
            # connection_observed line's keepalives count does not.
            if isinstance(event, SipMessage):
                # Framing resumed: the region skipped before this message is complete.
                if self._region is not None:
                    self._end_region()
                self._message(event, ts)
            elif isinstance(event, KeepAlive):
                if self._region is not None:
                    self._end_region()
                self.keepalives += 1
            else:
                # Unframeable: the only other kind the framer emits (Event is a closed union).
                self._unframeable(event)
            self._reported_to += len(event.data)

    def _unframeable(self, event: Unframeable) -> None:
        size = len(event.data)
        # Bytes around a hole (the partial message before it, the debris after it) are the
        # gap's cost, already reported by report_gap: not the peer's fault, so not logged
        # as unframeable, and counted apart (resync_bytes) from garbage the peer sent.
        if event.reason == _GAP:
            self.resync_bytes += size  # part of the gap already reported
            self._gap_counts.count_unobserved(self._route, "gap", size)
            return
        self.unframeable_bytes += size
        # Counted as they are skipped, not when the region ends: the metric shows a stream that
        # stopped being SIP at once, the region's line only when SIP resumes (or at the close).
        self._gap_counts.count_unobserved(self._route, "unframeable", size)
        region = self._region
        # The framer reports a region in pieces (one per feed, as it is read, so that it never
        # holds it); consecutive pieces of one reason are one region, reported once.
        if region is not None and region[2] == event.reason:
            region[1] += size
            if len(region[3]) < _HEAD:  # a piece may be a few bytes: the head spans pieces
                region[3] += event.data[: _HEAD - len(region[3])]
            return
        if region is not None:
            self._end_region()
        self._region = [self._reported_to, size, event.reason, event.data[:_HEAD]]

    def _end_region(self) -> None:
        """One ``unframeable`` line for the skipped region just ended: where it began in this
        direction's stream (``offset``), how many bytes it held (``size``), why."""
        region, self._region = self._region, None
        if region is not None:
            offset, size, reason, head = region
            self._log.warning("unframeable", direction=self.name, reason=reason, offset=offset, size=size, head=head)

    def _message(self, message: SipMessage, ts: float) -> None:
        self.messages += 1
        data = message.data
        header_end = message.header_end
        # One pass for every field any sink reads (bench/results/2026-12-02-observer.md: read
        # once here, it costs less than the sinks reading a lazy view each). SipFields and
        # SipMessageView name the same attributes, so everything below takes either. The
        # framer's fast path read them already, with the Content-Length (sip_fields.read_head).
        fields: SipFields | SipMessageView | None = message.fields
        if fields is None:
            fields = read_fields(data, header_end)
        if fields is None:  # an odd message: the full view decides, as before
            # Rare (non-ASCII headers, folded lines, a start line read_fields does not take):
            # the full parser is slower but takes everything SIP allows
            # (test_an_odd_message_falls_back_to_the_full_view).
            try:
                fields = parse_message(data, header_end)
            except SipParseError:
                # Not SIP after all: the framer checks only the start line and Content-Length.
                fields = None
        # A framed message the full parser refuses still goes to the sinks (raw bytes, no
        # fields): the framer vouched for its boundaries, and a capture must not have holes.
        if fields is None:
            kind = "unparsed"
        else:
            # Bounded label values (message_kind): a peer's invented methods cannot grow
            # the metrics' label set.
            kind = message_kind(fields.is_request, fields.method, fields.status_code)
        # A plain dict increment: the metrics read these counts when scraped, so the hot path
        # pays no prometheus-client lock
        # (test_messages_are_counted_as_plain_integers_and_scraped_under_todays_name).
        counts = self._counts
        counts[kind] = counts.get(kind, 0) + 1
        # Locals for the loop over legs: one attribute lookup instead of one per leg.
        publish = self._publish
        complete = True
        # One event per mirrored leg: the same bytes crossed both, and a sink writing the
        # customer leg's capture must see them with that leg's addresses. The fields object
        # is shared, not copied: events are read-only to the sinks.
        for leg, from_client in self.legs:
            if publish(SipEvent(ts, leg, from_client, data, fields)) is False:
                complete = False
        # Per message, not per event: connection_observed reports messages_mirrored as
        # messages every sink took on every leg.
        if not complete:
            self.mirror_dropped += 1
        # Optional ([log] sip_messages): at trunk rates the line is about 17 % of this path's
        # CPU (bench/results/2026-12-02-observer.md).
        if self._log_messages:
            self._log_line(data, fields)
        # SDES keys (RFC 4568) are only found in SDP bodies; the find skips the SDP parse for
        # every message without one: nearly all (no SDP, or SDP without SDES).
        if fields is not None and data.find(b"a=crypto", header_end) >= 0:  # no body copy per message
            self._srtp(data[header_end:], fields, ts)

    def _log_line(self, data: bytes, fields: SipFields | SipMessageView | None) -> None:
        """The ``sip`` line, with the keys in the order relay/observe.py logged them."""
        # The renderer is made at the first message, not in __init__: a direction that never
        # carries a message never pays for it. sip_line_writer renders the same JSON without
        # structlog's ~10 µs processor chain per line (log.py); None means it cannot.
        write = self._sip_line
        if write is False:
            write = self._sip_line = sip_line_writer(self._log, self.name, payloads=self._log_payloads)
        if write is not None:
            write(data, fields)
        else:
            self._log.info("sip", **sip_line_fields(self.name, data, fields, payloads=self._log_payloads))

    def _srtp(self, body: bytes, fields: SipFields | SipMessageView, ts: float) -> None:
        # The key's label names the message that carried it (INVITE, 200...): an offer's key and
        # an answer's key protect opposite directions, and the SRTP key log must tell them apart.
        label = fields.method if fields.is_request else str(fields.status_code)
        # parse_sdp_crypto returns every key of the body in document order and never raises
        # (a peer's malformed SDP costs its keys, not the observer); an offer may carry
        # several (one per suite, per media section), and each is published and logged.
        for key in parse_sdp_crypto(body):
            # Each mirrored leg: the SRTP key sink writes per leg, like the other sinks. Its
            # returned drop flag is not counted: the sink's own drop counters say it.
            for leg, from_client in self.legs:
                self._publish(SrtpKeyEvent(ts, leg, from_client, fields.call_id, label or "?", key))
            # The key itself goes to the log only with [log] key_material: the srtp_key line
            # still says a key was seen (suite, media, address) without being a secret.
            secret: dict[str, object] = {}
            if self._log_key_material:
                secret = {"inline": key.key_params_b64, "master_key": key.master_key_hex,
                          "master_salt": key.master_salt_hex}
            self._log.info(
                "srtp_key", direction=self.name, call_id=fields.call_id, message=label, suite=key.suite,
                media=key.media, address=key.connection_address, port=key.port, **secret,
            )


class ObservedConnection:
    """A proxied connection as the mirror knows it: its legs and two :class:`Direction` s."""

    # Slotted for the same reason as Direction: one per open connection, most of them idle.
    __slots__ = ("_waiting", "accepted_leg", "conn_id", "dialled_leg", "down", "handshakes", "legs", "log",
                 "opened_ts", "pending_keys", "route", "up")

    def __init__(self, *, conn_id: str, route: str, opened_ts: float, accepted_leg: str, dialled_leg: str,
                 log: LogWriter, publish: Publish, counts: SipMessageCounts, max_message_size: int,
                 log_messages: bool, log_payloads: bool, log_key_material: bool) -> None:
        # opened_ts: the relay's time of opening, used for the duration when no close record
        # comes (a lost relay worker, the mirror stopping).
        self.conn_id, self.route, self.opened_ts = conn_id, route, opened_ts
        self.accepted_leg, self.dialled_leg = accepted_leg, dialled_leg
        # Bound by the observer with conn, route and peer, as the relay's logger was: every
        # line about this connection carries them without passing them each time.
        self.log = log
        self.legs: dict[str, LegInfo] = {}
        # up: accepted -> dialled (the relay's FROM_ACCEPTED), down the other way. Named after
        # the legs, so a route that accepts on the core side ("reverse") reads correctly.
        self.up, self.down = (
            Direction(name=name, route=route, log=log, publish=publish, counts=counts,
                      max_message_size=max_message_size, log_messages=log_messages, log_payloads=log_payloads,
                      log_key_material=log_key_material)
            for name in (f"{accepted_leg}->{dialled_leg}", f"{dialled_leg}->{accepted_leg}"))
        # Kept after publishing so that key lines learned later can be checked against what
        # the handshake's KeyEvent already carried (observer._keys publishes only new ones);
        # without the peer chain and client offer, which nothing reads back.
        self.handshakes: dict[str, HandshakeFacts] = {}  # published (slimmed), by leg
        # Key lines may come before their leg's handshake record (observer.py allows either
        # order): held here and merged into the facts when the handshake comes.
        self.pending_keys: dict[str, tuple[str, ...]] = {}  # key lines that came before their handshake
        self._waiting: list[HandshakeDone | KeyMaterial] = []  # records of a leg not opened yet

    def add_leg(self, info: LegInfo, *, mirrored: bool) -> None:
        # Every leg is known (closes and key events go to both), but only mirrored legs get
        # SIP events: [mirror] legs decides, as the relay did.
        self.legs[info.leg] = info
        if mirrored and all(leg.leg != info.leg for leg, _ in self.up.legs):
            # On both legs the accepted side's bytes travel from the TLS client to the TLS
            # server; keep the accepted leg first, as the relay published them.
            # The legs arrive in two ConnectionOpened records (accepted, then dialled once the
            # dial succeeded), so the tuple is rebuilt sorted rather than appended to; a leg
            # name neither accepted nor dialled sorts last (index 2).
            order = (self.accepted_leg, self.dialled_leg)
            legs = sorted((leg for leg, _ in (*self.up.legs, (info, True))), key=lambda leg: order.index(leg.leg)
                          if leg.leg in order else 2)
            # Tuples, replaced whole here (the only writer): iterated per message, and a tuple
            # is the cheapest thing to iterate.
            self.up.legs = tuple((leg, True) for leg in legs)
            self.down.legs = tuple((leg, False) for leg in legs)

    def wait(self, record: HandshakeDone | KeyMaterial) -> None:
        # Records of a leg whose ConnectionOpened has not come yet. Bounded: a leg never
        # announced must not grow this forever; a leg has one handshake and a few key
        # records, so 8 keeps every real case (test_records_before_their_connection_opened_wait_for_it).
        if len(self._waiting) < 8:
            self._waiting.append(record)

    def take_waiting(self) -> list[HandshakeDone | KeyMaterial]:
        # Swapped, not cleared: the observer re-handles these, and a record that still finds
        # its leg missing goes back into the new list instead of the one being iterated.
        waiting, self._waiting = self._waiting, []
        return waiting

    def dropped(self, record: Dropped, ts: float) -> None:
        """The relay's marker: what it could not send since its last marker. Each direction
        that lost bytes reports its gap (the lifecycle records lost ride on the first line)."""
        # The lost lifecycle records (other_records) are reported once, on the first gap line,
        # so that summing other_records over gap lines gives the marker's count.
        other: int | None = record.other_records
        reported = False
        for direction, chunks, missing in ((self.up, record.chunks_from_accepted, record.bytes_from_accepted),
                                           (self.down, record.chunks_from_dialled, record.bytes_from_dialled)):
            # A direction with nothing lost says nothing: one line per direction that lost bytes.
            # The gap starts where that direction's stream was expected to go on.
            if chunks or missing:
                direction.report_gap("channel full", direction.expected, missing, ts, chunks=chunks,
                                     other_records=other)
                other, reported = None, True
        # Only lifecycle records were lost (no bytes): still one line, or the loss would be
        # silent
        # (test_a_marker_for_both_directions_reports_each_and_lost_records_alone_are_reported_too).
        if not reported:
            self.log.warning("gap", direction=None, cause="channel full", offset=None, missing=0, chunks=0,
                             other_records=record.other_records)


def log_handshake(log: LogWriter, facts: HandshakeFacts, info: LegInfo, *, upstream: str | None,
                  secrets: bool) -> None:
    """The ``handshake_done`` line exactly as relay/session.py's ``_log_handshake`` writes it."""
    # secrets: the master secret and key-log lines go in only with [log] key_material; the
    # KeyEvent that carries them to the key-log sink is published regardless.
    data = facts.as_dict(secrets=secrets)
    # The line names the leaf (the peer's identity) and the chain's length, as relay/session.py's
    # line did; the full chain travels in the KeyEvent the observer publishes next to it.
    chain = data.pop("peer_chain")
    assert isinstance(chain, list)  # as_dict renders the chain as a list of dicts
    # No chain: the facts recorded no peer certificate; the line says None, not an error.
    peer = chain[0] if chain else None
    log.info(
        "handshake_done", **data, upstream=upstream,
        # host:port strings (IPv6 hosts unbracketed), as relay/session.py wrote them.
        client=f"{info.client[0]}:{info.client[1]}", server=f"{info.server[0]}:{info.server[1]}",
        peer_certificate=peer, peer_chain_length=len(chain),
    )


def sip_line_fields(direction: str, data: bytes, fields: SipFields | SipMessageView | None, *,
                    payloads: bool) -> dict[str, object]:
    """The ``sip`` line's fields, in the order relay/observe.py logged them."""
    # Key order is part of the line: log readers compare lines with those the relay wrote
    # before the mirror process existed (test_sip_lines_are_the_relays).
    line: dict[str, object] = {"direction": direction, "size": len(data)}
    # Without fields (an unparsed message) the line still says a message of that size
    # went that way: one line per framed message, parsed or not.
    if fields is not None:
        if fields.is_request:
            line["method"] = fields.method
        else:
            line["status"] = fields.status_code
            line["reason"] = fields.reason
        line["call_id"] = fields.call_id
        line["cseq"] = f"{fields.cseq_number} {fields.cseq_method}"
    # Payloads only on request ([log] sip_payloads): they hold phone numbers and, in
    # SDP, SRTP keys (test_payloads_only_when_asked_and_no_lines_when_sip_messages_is_off).
    if payloads:
        line["payload"] = data
    return line


def sip_line_writer(log: LogWriter, direction: str, *, payloads: bool) -> SipLineWriter | None:
    """One direction's ``sip`` line renderer: the line ``log.info("sip", **sip_line_fields(...))``
    writes, byte for byte, or None when log.py cannot render it this way (console format...).

    Per message only what changes is rendered: the bound context (conn, route, peer), the
    direction and the event's suffix are one string per direction (log.event_parts), and the
    fields go straight into one f-string, with no dict per message. With payloads the generic
    renderer takes the fields' dict (a debugging setting; its bytes render through json)."""
    if payloads:
        generic = event_writer(log, "sip")
        if generic is None:
            return None
        return lambda data, fields: generic(sip_line_fields(direction, data, fields, payloads=True))
    parts = event_parts(log, "sip")
    if parts is None:
        return None
    prefix, suffix, stamp, append = parts
    # event_parts' rendering, fixed here: a str through encode_basestring_ascii, an int by
    # str(), None as null (method, reason and call_id are None only on odd messages).
    head = f'{prefix}"direction": {encode_basestring_ascii(direction)}, "size": '
    encode = encode_basestring_ascii

    def text(value: str | None) -> str:
        return "null" if value is None else encode(value)

    def write(data: bytes, fields: SipFields | SipMessageView | None) -> None:
        if fields is None:
            append(f'{head}{len(data)}, {suffix}{stamp()}"}}')
            return
        call_id = fields.call_id
        rest = (f'"call_id": {"null" if call_id is None else encode(call_id)}, '
                f'"cseq": {encode(f"{fields.cseq_number} {fields.cseq_method}")}, {suffix}{stamp()}"}}')
        if fields.is_request:
            append(f'{head}{len(data)}, "method": {text(fields.method)}, {rest}')
        else:
            status = fields.status_code
            append(f'{head}{len(data)}, "status": {"null" if status is None else status}, '
                   f'"reason": {text(fields.reason)}, {rest}')

    return write

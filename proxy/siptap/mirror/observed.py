"""One observed connection in the mirror process: its legs, and per direction a framer and counts.

:class:`~siptap.mirror.observer.Observer` routes records here. :class:`Direction` is the hot
path, the mirror-side twin of ``relay/observe.py``'s ``DirectionObserver``: chunk bytes ->
framer -> per message the SIP fields in one pass (``sip_fields.read_fields``, the full
``SipMessageView`` only when it declines), a ``SipEvent`` per mirrored leg, the ``sip`` log
line, the per-message count and SRTP keys. Everything a message's outputs share is fixed once
per direction: the leg infos with their direction flag, the direction's name, the count dict
of its route and direction, and (at its first message) the ``sip`` line's rendered prefix.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

from siptap.log import LogWriter, event_writer
from siptap.metrics import SipMessageCounts, message_kind
from siptap.mirror.events import LegInfo, MirrorEvent, SipEvent, SrtpKeyEvent
from siptap.sansio.chunk_records import Dropped, HandshakeDone, KeyMaterial
from siptap.sansio.handshake import HandshakeFacts
from siptap.sansio.sdp_crypto import parse_sdp_crypto
from siptap.sansio.sip_fields import SipFields, read_fields
from siptap.sansio.sip_framer import Event, KeepAlive, SipFramer, SipMessage, Unframeable
from siptap.sansio.sip_message import SipMessageView, SipParseError, parse_message

Publish = Callable[[MirrorEvent], object]
_GAP = "gap"  # SipFramer's reason for bytes dropped or skipped because of a gap


class Direction:
    """One direction of one connection (``customer->core`` or back). Slotted: a trunk's
    mirror holds two of these per idle connection."""

    __slots__ = (
        "_counts",
        "_gap_counts",
        "_log",
        "_log_key_material",
        "_log_messages",
        "_log_payloads",
        "_publish",
        "_reported_unframeable",
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
        self._counts = counts.for_direction(route, name)
        self._gap_counts = counts
        self.framer = SipFramer(max_message_size=max_message_size)
        # (leg, from_client on that leg) for each mirrored leg, accepted leg first.
        self.legs: tuple[tuple[LegInfo, bool], ...] = ()
        self._log_messages = log_messages
        self._log_payloads = log_payloads
        self._log_key_material = log_key_material
        # False: not made yet; None: event_writer cannot render this logger's lines.
        self._sip_line: Callable[[dict[str, Any]], None] | Literal[False] | None = False
        self._reported_unframeable = False
        self.expected = 0  # offset of the next byte of this direction's stream
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
        if offset != expected:
            if offset > expected:
                # Bytes went missing and no Dropped marker said so (a marker lost too).
                self.report_gap("bytes missing", expected, offset - expected, ts)
            else:
                seen = expected - offset
                if seen >= len(data):
                    self.duplicate_bytes += len(data)
                    return
                data = data[seen:]
                self.duplicate_bytes += seen
        self.expected += len(data)
        framer = self.framer
        if not framer.observing:
            self.unframeable_bytes += len(data)
            return
        events = framer.feed(data)
        if events:
            self._events(events, ts)

    def report_gap(self, cause: str, offset: int, missing: int, ts: float, *, chunks: int | None = None,
                   other_records: int | None = None) -> None:
        """``missing`` bytes from ``offset`` on never reached us: say so once, count it, and
        let the framer resynchronise at the next message."""
        self.gaps += 1
        self.missing_bytes += missing
        self._gap_counts.count_gap(self._route, missing)
        self._log.warning("gap", direction=self.name, cause=cause, offset=offset, missing=missing, chunks=chunks,
                          other_records=other_records)
        self.expected = offset + missing
        if self.framer.observing:
            self._events(self.framer.gap(), ts)

    def close(self, ts: float) -> None:
        self._events(self.framer.close(), ts)

    # -- events out ------------------------------------------------------------------------

    def _events(self, events: list[Event], ts: float) -> None:
        for event in events:
            if isinstance(event, SipMessage):
                self._message(event, ts)
            elif isinstance(event, KeepAlive):
                self.keepalives += 1
            else:
                self._unframeable(event)

    def _unframeable(self, event: Unframeable) -> None:
        if event.reason == _GAP:
            self.resync_bytes += len(event.data)  # part of the gap already reported
            return
        self.unframeable_bytes += len(event.data)
        observing = self.framer.observing
        # As relay/observe.py: the first unframeable run is reported, and the one that made
        # the framer give up (a later "not observing" chunk is not).
        if not self._reported_unframeable or not observing:
            if not (self._reported_unframeable and event.reason == "not observing"):
                self._log.warning("unframeable", direction=self.name, reason=event.reason, size=len(event.data),
                                  head=event.data[:64], observing=observing)
            self._reported_unframeable = True

    def _message(self, message: SipMessage, ts: float) -> None:
        self.messages += 1
        data = message.data
        header_end = message.header_end
        fields: SipFields | SipMessageView | None = read_fields(data, header_end)
        if fields is None:  # an odd message: the full view decides, as before
            try:
                fields = parse_message(data, header_end)
            except SipParseError:
                fields = None
        if fields is None:
            kind = "unparsed"
        else:
            kind = message_kind(fields.is_request, fields.method, fields.status_code)
        counts = self._counts
        counts[kind] = counts.get(kind, 0) + 1
        publish = self._publish
        complete = True
        for leg, from_client in self.legs:
            if publish(SipEvent(ts, leg, from_client, data, fields)) is False:
                complete = False
        if not complete:
            self.mirror_dropped += 1
        if self._log_messages:
            self._log_line(data, fields)
        if fields is not None and data.find(b"a=crypto", header_end) >= 0:  # no body copy per message
            self._srtp(data[header_end:], fields, ts)

    def _log_line(self, data: bytes, fields: SipFields | SipMessageView | None) -> None:
        """The ``sip`` line, with the keys in the order relay/observe.py logged them."""
        line: dict[str, object] = {"direction": self.name, "size": len(data)}
        if fields is not None:
            if fields.is_request:
                line["method"] = fields.method
            else:
                line["status"] = fields.status_code
                line["reason"] = fields.reason
            line["call_id"] = fields.call_id
            line["cseq"] = f"{fields.cseq_number} {fields.cseq_method}"
        if self._log_payloads:
            line["payload"] = data
        write = self._sip_line
        if write is False:
            write = self._sip_line = event_writer(self._log, "sip")
        if write is not None:
            write(line)
        else:
            self._log.info("sip", **line)

    def _srtp(self, body: bytes, fields: SipFields | SipMessageView, ts: float) -> None:
        label = fields.method if fields.is_request else str(fields.status_code)
        for key in parse_sdp_crypto(body):
            for leg, from_client in self.legs:
                self._publish(SrtpKeyEvent(ts, leg, from_client, fields.call_id, label or "?", key))
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

    __slots__ = ("_waiting", "accepted_leg", "conn_id", "dialled_leg", "down", "handshakes", "legs", "log",
                 "opened_ts", "pending_keys", "route", "up")

    def __init__(self, *, conn_id: str, route: str, opened_ts: float, accepted_leg: str, dialled_leg: str,
                 log: LogWriter, publish: Publish, counts: SipMessageCounts, max_message_size: int,
                 log_messages: bool, log_payloads: bool, log_key_material: bool) -> None:
        self.conn_id, self.route, self.opened_ts = conn_id, route, opened_ts
        self.accepted_leg, self.dialled_leg = accepted_leg, dialled_leg
        self.log = log
        self.legs: dict[str, LegInfo] = {}
        self.up, self.down = (
            Direction(name=name, route=route, log=log, publish=publish, counts=counts,
                      max_message_size=max_message_size, log_messages=log_messages, log_payloads=log_payloads,
                      log_key_material=log_key_material)
            for name in (f"{accepted_leg}->{dialled_leg}", f"{dialled_leg}->{accepted_leg}"))
        self.handshakes: dict[str, HandshakeFacts] = {}  # published, by leg
        self.pending_keys: dict[str, tuple[str, ...]] = {}  # key lines that came before their handshake
        self._waiting: list[HandshakeDone | KeyMaterial] = []  # records of a leg not opened yet

    def add_leg(self, info: LegInfo, *, mirrored: bool) -> None:
        self.legs[info.leg] = info
        if mirrored and all(leg.leg != info.leg for leg, _ in self.up.legs):
            # On both legs the accepted side's bytes travel from the TLS client to the TLS
            # server; keep the accepted leg first, as the relay published them.
            order = (self.accepted_leg, self.dialled_leg)
            legs = sorted((leg for leg, _ in (*self.up.legs, (info, True))), key=lambda leg: order.index(leg.leg)
                          if leg.leg in order else 2)
            self.up.legs = tuple((leg, True) for leg in legs)
            self.down.legs = tuple((leg, False) for leg in legs)

    def wait(self, record: HandshakeDone | KeyMaterial) -> None:
        if len(self._waiting) < 8:
            self._waiting.append(record)

    def take_waiting(self) -> list[HandshakeDone | KeyMaterial]:
        waiting, self._waiting = self._waiting, []
        return waiting

    def dropped(self, record: Dropped, ts: float) -> None:
        """The relay's marker: what it could not send since its last marker. Each direction
        that lost bytes reports its gap (the lifecycle records lost ride on the first line)."""
        other: int | None = record.other_records
        reported = False
        for direction, chunks, missing in ((self.up, record.chunks_from_accepted, record.bytes_from_accepted),
                                           (self.down, record.chunks_from_dialled, record.bytes_from_dialled)):
            if chunks or missing:
                direction.report_gap("channel full", direction.expected, missing, ts, chunks=chunks,
                                     other_records=other)
                other, reported = None, True
        if not reported:
            self.log.warning("gap", direction=None, cause="channel full", offset=None, missing=0, chunks=0,
                             other_records=record.other_records)


def log_handshake(log: LogWriter, facts: HandshakeFacts, info: LegInfo, *, upstream: str | None,
                  secrets: bool) -> None:
    """The ``handshake_done`` line exactly as relay/session.py's ``_log_handshake`` writes it."""
    data = facts.as_dict(secrets=secrets)
    chain = data.pop("peer_chain")
    assert isinstance(chain, list)  # as_dict renders the chain as a list of dicts
    peer = chain[0] if chain else None
    log.info(
        "handshake_done", **data, upstream=upstream,
        client=f"{info.client[0]}:{info.client[1]}", server=f"{info.server[0]}:{info.server[1]}",
        peer_certificate=peer, peer_chain_length=len(chain),
    )

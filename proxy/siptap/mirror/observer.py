"""The mirror process's observation engine: relay records in, mirror events and log lines out.

Theory of operation
-------------------
A relay worker only relays: per received chunk it sends one :mod:`~siptap.sansio.chunk_records`
record (the bytes, which connection and direction, their offset in that direction's stream,
the arrival time), plus a few lifecycle records per connection. Everything the relay used to
do with those bytes (``relay/observe.py``'s framing, logging and publishing; the
``handshake_done`` line and the ``KeyEvent``/``ConnectionClosed`` events of
``relay/session.py``) happens here, with the same events and the same log lines, so sinks and
log readers cannot tell where it ran.

Records of one channel (one relay worker) arrive in order; state is kept per
(channel, connection number) in :class:`~siptap.mirror.observed.ObservedConnection`:

- ``ConnectionOpened`` creates it (or adds the dialled leg): the legs' :class:`LegInfo`, a
  logger bound as the relay's was (``conn``, ``route``, ``peer``), one framer per direction.
  Records of a connection that arrive before its ``ConnectionOpened`` (the relay may send a
  handshake first) wait for it; chunks of a connection never announced (its opening record
  was dropped) are reported once as a gap and not observed.
- ``Chunk``: the offset is checked against what that direction has seen. A hole (bytes the
  relay could not send, with no ``Dropped`` marker to say so) is reported once as a ``gap``
  and the framer resynchronises (:meth:`SipFramer.gap`); bytes seen twice are skipped.
- ``Dropped``: the sender's own count of what it dropped; the same ``gap`` report, and the
  expected offsets move past the hole, so the next chunk does not report it again.
- ``HandshakeDone``/``KeyMaterial``: the handshake record rebuilt from its JSON
  (:meth:`HandshakeFacts.from_dict`), logged as ``handshake_done`` and published as a
  ``KeyEvent``. What the sender is expected to put there: ``facts.as_dict(secrets=True)``
  (the log line leaves the secrets out when ``[log] key_material`` is off), plus an
  ``upstream`` member (``str(upstream.address)``) for the dialled leg, which the relay's
  ``handshake_done`` line carried. ``KeyMaterial`` sent *before* its leg's handshake record
  is merged into facts that lack key-log lines; sent after, only lines the facts did not
  carry are published, as a ``KeyEvent`` of their own.
- ``ConnectionClosed``, a lost channel (:meth:`Observer.channel_lost`) or the end of the run
  (:meth:`Observer.close`): framers flushed (a truncated message is reported), a
  ``ConnectionClosed`` event per leg, and one ``connection_observed`` line with the counts
  the relay's ``connection_closed`` line used to carry.

Nothing here blocks: ``publish`` is the fan-out's non-blocking publish, log lines go to the
writer thread's queue, and per-message counters are plain integers
(:class:`~siptap.metrics.SipMessageCounts`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import replace

from siptap.certificates import CertificateCache
from siptap.config import Config, LogSettings
from siptap.log import LogWriter
from siptap.metrics import SipMessageCounts
from siptap.mirror.events import ConnectionClosed as ClosedEvent
from siptap.mirror.events import KeyEvent, LegInfo, MirrorEvent
from siptap.mirror.observed import ObservedConnection, log_handshake
from siptap.sansio.chunk_records import (
    FROM_ACCEPTED,
    Chunk,
    ConnectionClosed,
    ConnectionOpened,
    Dropped,
    HandshakeDone,
    KeyMaterial,
    Record,
)
from siptap.sansio.handshake import HandshakeFacts

__all__ = ["Observer", "Publish"]

Publish = Callable[[MirrorEvent], object]  # returns False when a sink dropped the event

DEFAULT_MAX_MESSAGE = 65536  # Limits.max_sip_message's default
_OTHER_LEG = {"customer": "core", "core": "customer"}
# A connection's records that came before its ConnectionOpened wait for it, up to this many:
# a relay sends a handshake and a key record or two per leg, never more before opening.
_EARLY_LIMIT = 8


class Observer:
    """Records of every channel in, mirror events and log lines out (module docstring)."""

    def __init__(
        self,
        *,
        publish: Publish,
        log: LogWriter,
        mirror_legs: frozenset[str] = frozenset({"customer"}),
        log_settings: LogSettings | None = None,
        max_message_sizes: Mapping[str, int] | None = None,
        route_legs: Mapping[str, frozenset[str]] | None = None,
        shown_legs: frozenset[str] = frozenset(),
        counts: SipMessageCounts | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        settings = log_settings or LogSettings()
        self._publish = publish
        self._log = log
        self._mirror_legs = mirror_legs
        self._route_legs = dict(route_legs or {})  # a route's own mirror_legs, by route name
        # Legs whose SIP events are published for an in-process viewer (the demo's) without
        # being mirrored: their LegInfo says mirrored=False, so the fan-out keeps them from
        # the sinks.
        self._shown_legs = shown_legs
        self._log_messages = settings.sip_messages
        self._log_payloads = settings.sip_payloads
        self._log_key_material = settings.key_material
        self._max_message_sizes = dict(max_message_sizes or {})
        self.counts = counts if counts is not None else SipMessageCounts()
        self._clock = clock
        self._connections: dict[tuple[int, int], ObservedConnection] = {}
        self._early: dict[tuple[int, int], list[Record]] = {}
        self._unannounced: set[tuple[int, int]] = set()
        # The peer chains the relay hands over as DER, summarised here (issue 16 item 6), each
        # distinct certificate once: a deployment sees few (one per E-SBC, the CAs, the cores).
        self._certificates = CertificateCache()

    @classmethod
    def from_config(cls, config: Config, *, publish: Publish, log: LogWriter,
                    counts: SipMessageCounts | None = None) -> Observer:
        """The observer the mirror process runs for ``config``: its mirrored legs (each
        route's own ``mirror_legs``), log settings and each route's ``max_sip_message``."""
        observer = cls(publish=publish, log=log, log_settings=config.log, counts=counts)
        observer.reload(config)
        return observer

    def reload(self, config: Config) -> None:
        """A reloaded config's routes (SIGHUP): each route's mirrored legs, [mirror] legs and
        ``max_sip_message`` for the connections opened from now on; open ones keep theirs."""
        self._mirror_legs = config.mirror.mirror_legs
        self._route_legs = {route.name: route.mirrored_legs(config.mirror.mirror_legs) for route in config.routes}
        self._max_message_sizes = {route.name: route.limits.max_sip_message for route in config.routes}

    @property
    def open_connections(self) -> int:
        return len(self._connections)

    # -- records ---------------------------------------------------------------------------

    def handle(self, channel: int, record: Record) -> None:
        """One record of ``channel``, in that channel's order."""
        if type(record) is Chunk:  # the common case first, without an isinstance chain
            connection = self._connections.get((channel, record.conn))
            if connection is None:
                self._unannounced_chunk(channel, record)
                return
            direction = connection.up if record.direction == FROM_ACCEPTED else connection.down
            direction.chunk(record.offset, record.data, record.ts)
            return
        key = (channel, record.conn)
        if isinstance(record, ConnectionOpened):
            self._opened(key, record)
            return
        connection = self._connections.get(key)
        if isinstance(record, ConnectionClosed):
            self._early.pop(key, None)
            self._unannounced.discard(key)
            if connection is not None:
                del self._connections[key]
                self._finish(connection, record.ts, record.duration, record.reason or "closed",
                             (record.bytes_from_accepted, record.bytes_from_dialled))
            return
        if isinstance(record, Dropped):
            if connection is not None:
                connection.dropped(record, record.ts)
            else:
                self._log.warning("gap", channel=channel, conn_number=record.conn, cause="channel full",
                                  direction=None, offset=None, missing=record.bytes_from_accepted + record.bytes_from_dialled,
                                  chunks=record.chunks_from_accepted + record.chunks_from_dialled,
                                  other_records=record.other_records)
            return
        if connection is None:
            early = self._early.setdefault(key, [])
            if len(early) < _EARLY_LIMIT:
                early.append(record)
            return
        if isinstance(record, HandshakeDone):
            self._handshake(connection, record)
        elif isinstance(record, KeyMaterial):
            self._keys(connection, record)

    def channel_lost(self, channel: int) -> None:
        """The relay worker behind ``channel`` died or disconnected: every connection it had
        open ends here, reported as a gap (what it still had in flight is unknown) and closed."""
        now = self._clock()
        for key in [key for key in self._connections if key[0] == channel]:
            connection = self._connections.pop(key)
            connection.log.warning("gap", cause="relay worker lost", direction=None, offset=None, missing=None)
            self._finish(connection, now, now - connection.opened_ts, "relay worker lost", None)
        self._early = {key: early for key, early in self._early.items() if key[0] != channel}
        self._unannounced = {key for key in self._unannounced if key[0] != channel}

    def close(self) -> None:
        """End of the run: connections still open (their close records never came) are
        flushed, a truncated message reported, and closed with reason ``mirror stopped``."""
        now = self._clock()
        connections, self._connections = self._connections, {}
        for connection in connections.values():
            self._finish(connection, now, now - connection.opened_ts, "mirror stopped", None)
        self._early.clear()
        self._unannounced.clear()

    # -- lifecycle -------------------------------------------------------------------------

    def _opened(self, key: tuple[int, int], record: ConnectionOpened) -> None:
        connection = self._connections.get(key)
        if connection is None:
            accepted = record.legs[0]
            dialled = next((leg.leg for leg in record.legs[1:]), _OTHER_LEG.get(accepted.leg, "unknown"))
            log = self._log.bind(conn=record.conn_id, route=record.route,
                                 peer=f"{accepted.client[0]}:{accepted.client[1]}")
            connection = ObservedConnection(
                conn_id=record.conn_id, route=record.route, opened_ts=record.ts, accepted_leg=accepted.leg,
                dialled_leg=dialled, log=log, publish=self._publish, counts=self.counts,
                max_message_size=self._max_message_sizes.get(record.route, DEFAULT_MAX_MESSAGE),
                log_messages=self._log_messages, log_payloads=self._log_payloads,
                log_key_material=self._log_key_material,
            )
            self._connections[key] = connection
            self._unannounced.discard(key)
        # Decided here, once per leg, and carried by the leg's LegInfo to the fan-out: a
        # reload changes what new connections mirror, never an open one's.
        mirrored = self._route_legs.get(record.route, self._mirror_legs)
        for leg in record.legs:
            is_mirrored = leg.leg in mirrored
            info = LegInfo(record.conn_id, record.route, leg.leg, client=leg.client, server=leg.server,
                           mirrored=is_mirrored)
            connection.add_leg(info, mirrored=is_mirrored or leg.leg in self._shown_legs)
        for waiting in [*self._early.pop(key, ()), *connection.take_waiting()]:
            self.handle(key[0], waiting)

    def _handshake(self, connection: ObservedConnection, record: HandshakeDone) -> None:
        info = connection.legs.get(record.leg)
        if info is None:  # that leg's ConnectionOpened has not come yet
            connection.wait(record)
            return
        try:
            facts = HandshakeFacts.from_dict(record.facts)
            if record.chain:  # the relay's raw chain; without one, the facts carry their own
                facts = replace(facts, peer_chain=tuple(self._certificates.summary(der) for der in record.chain))
        except ValueError as exc:  # cryptography's error for a DER that is not a certificate too
            connection.log.warning("handshake_record_invalid", leg=record.leg, detail=str(exc))
            return
        keys = connection.pending_keys.pop(record.leg, None)
        if keys and not facts.keylog_lines:
            facts = replace(facts, keylog_lines=keys)
        # Kept slim: only the late-key path below reads it back (version, cipher, key lines),
        # and an idle connection would otherwise hold its peer chain summaries and the client's
        # offer (the bulk of the decoded JSON, ~6 KiB per connection) for as long as it lives.
        connection.handshakes[record.leg] = replace(facts, peer_chain=(), client_offer=None)
        upstream = record.facts.get("upstream")  # an extra member the sender may add (from_dict ignores it)
        log_handshake(connection.log, facts, info, upstream=upstream if isinstance(upstream, str) else None,
                      secrets=self._log_key_material)
        self._publish(KeyEvent(record.ts, info, facts))

    def _keys(self, connection: ObservedConnection, record: KeyMaterial) -> None:
        facts = connection.handshakes.get(record.leg)
        if facts is None:
            # Before the handshake record: merged into its facts when it comes.
            connection.pending_keys[record.leg] = connection.pending_keys.get(record.leg, ()) + record.lines
            return
        new = tuple(line for line in record.lines if line not in facts.keylog_lines)
        if not new:
            return  # the handshake's facts already carried these lines
        # Lines learned after the handshake was published: a KeyEvent of their own, so the
        # key log gets them (with the handshake's version and cipher in its comment line). Its
        # facts carry no peer chain or client offer: the handshake's own KeyEvent published those.
        connection.handshakes[record.leg] = replace(facts, keylog_lines=facts.keylog_lines + new)
        self._publish(KeyEvent(record.ts, connection.legs[record.leg], replace(facts, keylog_lines=new)))

    def _unannounced_chunk(self, channel: int, record: Chunk) -> None:
        key = (channel, record.conn)
        if key in self._unannounced:
            return
        self._unannounced.add(key)
        self._log.warning("gap", channel=channel, conn_number=record.conn, cause="connection not announced",
                          direction=None, offset=record.offset, missing=None)

    def _finish(self, connection: ObservedConnection, ts: float, duration: float, reason: str,
                sent: tuple[int, int] | None) -> None:
        """Flush the framers, publish ``ConnectionClosed`` for each leg, log the counts.

        ``sent``: the relay's byte counts per direction, when its close record says them; a
        tail it could not send (and could no longer announce) is then reported as a gap."""
        up, down = connection.up, connection.down
        if sent is not None:
            for direction, total in zip((up, down), sent, strict=True):
                if total > direction.expected:
                    direction.report_gap("tail not received", direction.expected, total - direction.expected, ts)
        up.close(ts)
        down.close(ts)
        observed = up.messages + down.messages
        bytes_up = sent[0] if sent is not None else up.expected
        bytes_down = sent[1] if sent is not None else down.expected
        # The same bytes crossed both legs: one close per leg, as relay/session.py published
        # (the fan-out filters by leg; the key log takes both).
        for info in connection.legs.values():
            self._publish(ClosedEvent(ts, info, duration, bytes_from_client=bytes_up, bytes_from_server=bytes_down,
                                      messages_observed=observed, reason=reason))
        a, d = connection.accepted_leg, connection.dialled_leg
        dropped = up.mirror_dropped + down.mirror_dropped
        connection.log.info(
            "connection_observed", reason=reason,
            **{f"messages_{a}_to_{d}": up.messages, f"messages_{d}_to_{a}": down.messages},
            keepalives=up.keepalives + down.keepalives,
            messages_observed=observed,
            # "mirrored": queued to every sink; a sink that later fails counts it in its own
            # sent/dropped counters (mirror_events_dropped, mirror_stopped).
            messages_mirrored=observed - dropped,
            messages_mirror_dropped=dropped,
            unframeable_bytes=up.unframeable_bytes + down.unframeable_bytes,
            gaps=up.gaps + down.gaps,
            missing_bytes=up.missing_bytes + down.missing_bytes,
            resync_bytes=up.resync_bytes + down.resync_bytes,
        )


"""HEPv3 sink: each mirrored SIP message to a Homer collector or ``sngrep -L``.

One HEP packet per SIP message, built with :mod:`siptap.sansio.hep`: the leg's real
addresses and ports in the direction of the message, the observation time (sec/usec), IP
protocol 6 (TCP, what the wire carries; ``ip_proto = "tls"`` sends Kamailio's 22 instead),
protocol type SIP, the capture agent id, the optional auth key and node name, and the
Call-ID as correlation id (chunk 0x0011, before the payload), which is how Homer groups a
call. Key material goes as HEP *log* packets (protocol type 0x64, Kamailio's convention):

- a ``KeyEvent`` (one per completed handshake) carries the NSS key-log lines, one per line,
  then one line of compact JSON (:func:`siptap.mirror.render.event_to_dict`: leg, addresses,
  version, cipher, key exchange...); addresses client -> server of that leg; correlation id
  = the connection id, shared by both legs of one proxied connection;
- an ``SrtpKeyEvent`` carries the JSON of the SDES key; addresses in the direction of the
  SIP message whose SDP offered it; correlation id = its Call-ID, so Homer shows it with
  the call.

Transport: UDP (one packet per datagram), TCP or TLS (packets back to back; a collector
frames on the length field; TLS with siptap's client certificate and the collector's
verified, :mod:`siptap.mirror.collector_tls`), through :class:`siptap.mirror.link.Link`,
which reconnects with back-off. While the collector is down, packets are dropped and counted; a collector that is
down at start-up is the same state, not an error. A message too large for one HEP packet
(65535 octets with headers) is dropped with its own reason rather than truncated: a
truncated SIP message would mislead whoever reads it.
"""

from __future__ import annotations

from typing import Unpack

from siptap.config.mirror import HepSinkSettings
from siptap.mirror.events import Address, ConnectionClosed, KeyEvent, LegInfo, MirrorEvent, SipEvent, SrtpKeyEvent
from siptap.mirror.link import Link, LinkOptions, LinkSink
from siptap.mirror.render import event_to_dict, srtp_event_json, to_json
from siptap.sansio import hep

IP_PROTOS = {"tcp": hep.IPPROTO_TCP, "tls": hep.IPPROTO_IDP_TLS}


class HepEncoder:
    """Events to HEP3 packets, with this sink's fixed chunks. Pure; raises ValueError when
    an event cannot become a packet (too large, mixed address families)."""

    def __init__(self, settings: HepSinkSettings) -> None:
        self.ip_proto = IP_PROTOS[settings.ip_proto]
        self.capture_id = settings.capture_id
        self.auth_key = settings.auth_key.encode("utf-8") if settings.auth_key else None
        self.node_name = settings.node_name.encode("utf-8") if settings.node_name else None
        # One cached encoder per protocol type (SIP, log): the chunks fixed for an address
        # pair are built once, not per message.
        self._encoders = {
            proto_type: hep.Encoder(ip_proto=self.ip_proto, proto_type=proto_type, capture_id=self.capture_id,
                                    auth_key=self.auth_key, node_name=self.node_name)
            for proto_type in (hep.PROTO_SIP, hep.PROTO_LOG)
        }
        self._sip = self._encoders[hep.PROTO_SIP]

    def _packet(self, ts: float, leg: LegInfo, src: tuple[str, int], dst: tuple[str, int], payload: bytes,
                proto_type: int, correlation: str | None) -> bytes:
        encoder = self._encoders[proto_type]
        return encoder.encode(ts, src, dst, payload, correlation.encode("utf-8") if correlation else None,
                              pair_cache=_pairs(leg, encoder))

    def encode(self, event: MirrorEvent) -> bytes | None:
        """The packet for an event, or None for events HEP does not carry (closes)."""
        kind = type(event)
        if kind is SipEvent:  # the hot path: every message
            assert isinstance(event, SipEvent)  # for mypy: the type test above says it, and faster
            view = event.view
            call_id = None if view is None else view.call_id
            leg = event.leg
            src, dst = (leg.client, leg.server) if event.from_client else (leg.server, leg.client)
            # An empty Call-ID, like none, sends no correlation chunk.
            return self._sip.encode(event.ts, src, dst, event.data, call_id.encode() if call_id else None,
                                    pair_cache=_pairs(leg, self._sip))
        if kind is SrtpKeyEvent:  # two per SDES call: the same as the isinstance branch below, fewer steps
            assert isinstance(event, SrtpKeyEvent)
            leg, call_id = event.leg, event.call_id
            src, dst = (leg.client, leg.server) if event.from_client else (leg.server, leg.client)
            log = self._encoders[hep.PROTO_LOG]
            return log.encode(event.ts, src, dst, srtp_event_json(event).encode("utf-8"),
                              call_id.encode("utf-8") if call_id else None, pair_cache=_pairs(leg, log))
        if isinstance(event, SipEvent):
            call_id = event.view.call_id if event.view is not None else None
            return self._packet(event.ts, event.leg, event.src, event.dst, event.data, hep.PROTO_SIP, call_id)
        if isinstance(event, KeyEvent):
            info = event_to_dict(event)
            info["tls"].pop("keylog", None)  # the lines above the JSON already say it
            text = "".join(line + "\n" for line in event.facts.keylog_lines) + to_json(info)
            return self._packet(event.ts, event.leg, event.leg.client, event.leg.server, text.encode("utf-8"),
                                hep.PROTO_LOG, event.leg.conn_id)
        if isinstance(event, SrtpKeyEvent):
            src, dst = (event.leg.client, event.leg.server) if event.from_client else (event.leg.server, event.leg.client)
            # The same text as the JSON-lines sink's line for it (rendered once for both).
            text = srtp_event_json(event)
            return self._packet(event.ts, event.leg, src, dst, text.encode("utf-8"), hep.PROTO_LOG, event.call_id)
        return None


AddressPairChunks = dict[tuple[Address, Address], bytes]


def _pairs(leg: LegInfo, encoder: hep.Encoder) -> AddressPairChunks:
    """The encoder's address chunks for this connection, kept with the connection (the
    leg's cache entry under the encoder itself: each HEP sink's encoders have their own)."""
    pairs = leg.cache.get(encoder)
    if not isinstance(pairs, dict):  # not yet (only this function writes the entry)
        new: AddressPairChunks = {}
        pairs = leg.cache[encoder] = new
    return pairs


class HepSink(LinkSink):
    """Each event HEP carries as one HEP3 packet to a collector, over a :class:`Link`."""

    def __init__(
        self,
        settings: HepSinkSettings,
        *,
        name: str | None = None,
        **link_options: Unpack[LinkOptions],
    ) -> None:
        super().__init__(name or f"hep:{settings.transport}:{settings.address}")
        self.settings = settings
        self.encoder = HepEncoder(settings)
        self.link = Link(
            self,
            settings.transport,
            (settings.address.host, settings.address.port),
            **link_options,
        )

    def accepts(self, event: MirrorEvent) -> bool:
        if isinstance(event, SipEvent):
            return True
        if isinstance(event, (KeyEvent, SrtpKeyEvent)):
            return self.settings.log_key_material
        return False  # ConnectionClosed: HEP has no place for it

    def accepts_kind(self, kind: type) -> bool | None:
        if kind is SipEvent:
            return True
        if kind is KeyEvent or kind is SrtpKeyEvent:
            return self.settings.log_key_material
        return False if kind is ConnectionClosed else None

    def encode_unit(self, event: MirrorEvent) -> bytes | None:
        if isinstance(event, ConnectionClosed):
            return None
        try:
            return self.encoder.encode(event)
        except ValueError as exc:
            reason = "too large for HEP" if "too large" in str(exc) else "not encodable as HEP"
            self.error("encode", exc, size=len(getattr(event, "data", b"")))
            self.drop(reason)
            return None

"""What the relay tells the mirror: plain immutable records, built once per observation.

The relay publishes these without waiting; every sink formats them its own way (HEP, JSON
lines, pcap, key log, SRTP keys). Addresses are those on the wire for the leg: ``client`` is
the TLS client's side of that TCP connection, ``server`` the TLS server's.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from siptap.sansio.handshake import HandshakeFacts
from siptap.sansio.sdp_crypto import SdesKey
from siptap.sansio.sip_fields import SipFields
from siptap.sansio.sip_message import SipMessageView

Address = tuple[str, int]


@dataclass(frozen=True, slots=True)
class LegInfo:
    """One TCP/TLS connection of a proxied pair, as a capture of that leg would show it."""

    conn_id: str  # shared by both legs of one proxied connection
    route: str
    leg: str  # "customer" or "core"
    client: Address
    server: Address
    # Whether this leg's SIP, key and close events reach the sinks that follow ``legs``
    # (all but the key log): decided once per connection, when it opens, by the observer
    # from its route's ``mirror_legs`` (else [mirror] legs), so a reload that changes them
    # never turns an open connection's mirroring on or off halfway through a call. None:
    # not decided upstream (tests, bench), and the fan-out's own ``legs`` decides. Not part
    # of a leg's identity: equality and hash are the connection's and the leg's.
    mirrored: bool | None = field(default=None, compare=False)
    # What sinks render once per connection (JSON members, HEP address chunks), kept here so
    # it lives exactly as long as the connection's events: no process-wide cache that fills
    # up with the addresses of connections long closed.
    cache: dict[object, object] = field(default_factory=dict, compare=False, hash=False, repr=False)


@dataclass(frozen=True, slots=True)
class SipEvent:
    ts: float  # wall clock, seconds since the epoch
    leg: LegInfo
    from_client: bool  # direction on this leg: True when the TLS client sent it
    data: bytes  # the exact framed message
    # The message's fields: SipFields (one pass, what the mirror process reads) or the full
    # view (an odd message, or the relay's own observer); the same attribute names. None when
    # the start line did not parse.
    view: SipMessageView | SipFields | None

    @property
    def src(self) -> Address:
        return self.leg.client if self.from_client else self.leg.server

    @property
    def dst(self) -> Address:
        return self.leg.server if self.from_client else self.leg.client


@dataclass(frozen=True, slots=True)
class KeyEvent:
    """A completed handshake on one leg, with its key material."""

    ts: float
    leg: LegInfo
    facts: HandshakeFacts


@dataclass(frozen=True, slots=True)
class SrtpKeyEvent:
    ts: float
    leg: LegInfo
    from_client: bool
    call_id: str | None
    method_or_status: str
    key: SdesKey


@dataclass(frozen=True, slots=True)
class ConnectionClosed:
    ts: float
    leg: LegInfo
    duration: float
    bytes_from_client: int
    bytes_from_server: int
    messages_observed: int
    reason: str


MirrorEvent = SipEvent | KeyEvent | SrtpKeyEvent | ConnectionClosed

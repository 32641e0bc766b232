"""The ladder (sequence diagram) of a call: columns E-SBC | siptap | core, one row per captured message.

Pure: captured messages (as :mod:`siptap.tools.export.captures` reads them back, in capture
order) and what is known of each TCP flow (:class:`FlowLeg`: which leg of which siptap
connection, siptap's side of it, its TLS facts) in; :class:`Ladder` out. The renderers
(:mod:`.text`, :mod:`.svg`) only lay it out.

siptap relays bytes unchanged, so a message crosses both legs: the customer leg's flow
(E-SBC <-> siptap) and the core leg's (siptap <-> core) each carry a byte-identical copy. The
mirror publishes one received chunk as one event per mirrored leg, accepted leg first and
with one timestamp, whichever way the message went: in the capture a response from the core
shows on the customer leg *before* its core-leg copy. The model pairs the two copies (same
bytes, same direction, two flows of one connection, next to each other in the capture) and
orders each pair causally: first the copy siptap received, then the one it relayed.

Which flow is which leg comes from the key log and the JSON log (:mod:`.legs`); a flow they
do not name is placed by the same pairing: the accepted leg's copy comes first, so a flow
whose messages are first copies is taken for the customer leg (siptap the TLS server), one
whose messages are second copies for the core leg, and a flow with no pair for the customer
leg (the default ``[mirror] legs``).

SDP offer/answer (RFC 3264 as RFC 6337 walks through it): an SDP body in a request is an
offer, except in ACK and PRACK, where it answers an offer made in a response; in a response
it is the answer when its request carried an offer, else an offer (an INVITE without SDP).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from siptap.tools.calls.grouping import CapturedMessage as GroupedMessage
from siptap.tools.calls.grouping import Flow, group_calls

Address = tuple[str, int]

ESBC, SIPTAP, CORE = 0, 1, 2
COLUMN_NAMES = ("E-SBC", "siptap", "core")
# How far ahead in a call's messages the relayed copy of a message may be: the mirror writes
# the two copies one after the other, so in practice it is the next message of the call.
_PAIR_LOOKAHEAD = 8
_PAIR_WINDOW_US = 1_000_000


class CapturedMessage(GroupedMessage, Protocol):
    """What the ladder reads of a message: what grouping reads (time, view, flow), and which
    way it went and its bytes (:class:`siptap.tools.export.captures.Message` is one)."""

    @property
    def from_client(self) -> bool: ...
    @property
    def data(self) -> bytes: ...


@dataclass(frozen=True, slots=True)
class LegTls:
    """The TLS facts of one leg, shown above the column of the peer at its far end."""

    leg: str  # "customer" or "core"
    conn: str | None
    version: str | None = None
    cipher: str | None = None
    key_exchange: str | None = None
    peer_subject: str | None = None  # the peer's certificate
    peer_not_after: str | None = None


@dataclass(frozen=True, slots=True)
class FlowLeg:
    """What is known of one TCP flow of the captures."""

    leg: str  # "customer" (E-SBC <-> siptap) or "core" (siptap <-> core)
    siptap_server: bool  # siptap is the flow's TCP/TLS server (the accepted leg)
    conn: str | None = None  # siptap's connection id, from the key log or the JSON log
    tls: LegTls | None = None
    known: bool = True  # False: placed by the pairing rule, not named by the key log or the JSON log


@dataclass(frozen=True, slots=True)
class Column:
    name: str  # E-SBC, siptap, core
    addresses: tuple[str, ...]  # ip:port, in order of first use
    tls: tuple[LegTls, ...]  # the legs ending at this peer (none for siptap's own column)


@dataclass(frozen=True, slots=True)
class Row:
    """One arrow: one captured message on one leg."""

    index: int
    src: int  # column indexes
    dst: int
    label: str  # "INVITE", "486 Busy Here"
    cseq: str | None  # "1 INVITE"
    start_line: str  # "INVITE sip:486@core.example SIP/2.0"
    request_uri: str | None
    time_us: int
    offset_us: int  # since the call's first message
    delta_us: int  # since the row before
    leg: str
    conn: str | None
    src_address: str
    dst_address: str
    failed: bool  # a response >= 400
    sdp: str | None  # "offer", "answer" or None
    crypto: bool  # the SDP carries SDES keys (a=crypto): they are in srtp-keys.log, never here
    relay_of: int | None  # the row whose message siptap relayed as this one


@dataclass(frozen=True, slots=True)
class Ladder:
    call_id: str
    start_us: int
    columns: tuple[Column, Column, Column]
    rows: tuple[Row, ...]
    outcome: str  # "INVITE -> 486 Busy Here": the first request and its final status (as `siptap calls` finds it)
    unplaced: tuple[str, ...] = ()  # flows whose leg was inferred: "client -> server"


def hostport(address: Address) -> str:
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def build_ladders(messages: Sequence[CapturedMessage], legs: Mapping[Flow, FlowLeg]) -> list[Ladder]:
    """One :class:`Ladder` per Call-ID, ordered by each call's first message; messages without a Call-ID are left out."""
    by_call: dict[str, list[CapturedMessage]] = {}
    for message in messages:
        if message.view.call_id is not None:
            by_call.setdefault(message.view.call_id, []).append(message)
    placed = infer_legs(messages, legs)
    ladders = [build_ladder(call_id, msgs, placed) for call_id, msgs in by_call.items()]
    ladders.sort(key=lambda ladder: ladder.start_us)
    return ladders


def infer_legs(messages: Sequence[CapturedMessage], known: Mapping[Flow, FlowLeg]) -> dict[Flow, FlowLeg]:
    """``known`` plus a :class:`FlowLeg` for every other flow of ``messages`` (see the module's docstring)."""
    legs = dict(known)
    by_call: dict[str | None, list[CapturedMessage]] = {}
    for message in messages:
        by_call.setdefault(message.view.call_id, []).append(message)
    firsts: dict[Flow, int] = {}
    seconds: dict[Flow, int] = {}
    for msgs in by_call.values():
        for i, j in pairs(msgs, known).items():
            firsts[msgs[i].flow] = firsts.get(msgs[i].flow, 0) + 1
            seconds[msgs[j].flow] = seconds.get(msgs[j].flow, 0) + 1
    for message in messages:
        flow = message.flow
        if flow not in legs:
            core = seconds.get(flow, 0) > firsts.get(flow, 0)
            legs[flow] = FlowLeg("core" if core else "customer", siptap_server=not core, known=False)
    return legs


def pairs(messages: Sequence[CapturedMessage], legs: Mapping[Flow, FlowLeg]) -> dict[int, int]:
    """Index of a message -> index of its copy on the other leg (same bytes, same direction,
    another flow of the same connection when the connections are known), in capture order."""
    partner: dict[int, int] = {}
    taken: set[int] = set()
    for i, message in enumerate(messages):
        if i in taken:
            continue
        leg = legs.get(message.flow)
        for j in range(i + 1, min(len(messages), i + 1 + _PAIR_LOOKAHEAD)):
            other = messages[j]
            if j in taken or other.flow == message.flow or other.from_client != message.from_client:
                continue
            if abs(other.ts_us - message.ts_us) > _PAIR_WINDOW_US or other.data != message.data:
                continue
            other_leg = legs.get(other.flow)
            if leg is not None and other_leg is not None and (
                    leg.leg == other_leg.leg or (leg.conn and other_leg.conn and leg.conn != other_leg.conn)):
                continue
            partner[i] = j
            taken.add(j)
            break
    return partner


def _siptap_receives(message: CapturedMessage, leg: FlowLeg) -> bool:
    # The client's bytes go to the server: siptap receives them when it is the server.
    return message.from_client == leg.siptap_server


def build_ladder(call_id: str, messages: Sequence[CapturedMessage], legs: Mapping[Flow, FlowLeg]) -> Ladder:
    """The ladder of one call (``messages``: its messages in capture order; ``legs``: every flow placed)."""
    partner = pairs(messages, legs)
    seconds = set(partner.values())
    ordered: list[tuple[CapturedMessage, bool]] = []  # message, relayed (the second copy of a pair)
    for i, message in enumerate(messages):
        if i in seconds:
            continue
        if i not in partner:
            ordered.append((message, False))
            continue
        other = messages[partner[i]]
        if _siptap_receives(message, legs[message.flow]) or not _siptap_receives(other, legs[other.flow]):
            ordered += [(message, False), (other, True)]
        else:  # the copy siptap received is the later one in the capture (a response from the core)
            ordered += [(other, False), (message, True)]
    start = min((m.ts_us for m in messages), default=0)
    addresses: list[list[str]] = [[], [], []]
    tls: list[list[LegTls]] = [[], [], []]
    offers: set[tuple[Flow, bool, int | None, str | None]] = set()
    rows: list[Row] = []
    previous = start
    for message, relayed in ordered:
        leg = legs[message.flow]
        client, server, _generation = message.flow
        peer_column = ESBC if leg.leg == "customer" else CORE
        siptap_address, peer_address = (server, client) if leg.siptap_server else (client, server)
        for column, address in ((peer_column, peer_address), (SIPTAP, siptap_address)):
            if hostport(address) not in addresses[column]:
                addresses[column].append(hostport(address))
        if leg.tls is not None and leg.tls not in tls[peer_column]:
            tls[peer_column].append(leg.tls)
        inbound = _siptap_receives(message, leg)
        view = message.view
        cseq = f"{view.cseq_number} {view.cseq_method}" if view.cseq_number is not None else None
        rows.append(Row(
            index=len(rows),
            src=peer_column if inbound else SIPTAP,
            dst=SIPTAP if inbound else peer_column,
            label=view.method or "?" if view.is_request else f"{view.status_code} {view.reason or ''}".rstrip(),
            cseq=cseq,
            start_line=_start_line(message.data),
            request_uri=view.request_uri,
            time_us=message.ts_us,
            offset_us=message.ts_us - start,
            delta_us=message.ts_us - previous,
            leg=leg.leg,
            conn=leg.conn,
            src_address=hostport(message.flow[0] if message.from_client else message.flow[1]),
            dst_address=hostport(message.flow[1] if message.from_client else message.flow[0]),
            failed=view.status_code is not None and view.status_code >= 400,
            sdp=_offer_answer(message, offers),
            crypto=_has_sdp(message) and b"a=crypto:" in _body(message),
            relay_of=rows[-1].index if relayed and rows else None,
        ))
        previous = message.ts_us
    columns = tuple(Column(name, tuple(addresses[i]), tuple(tls[i])) for i, name in enumerate(COLUMN_NAMES))
    unplaced = tuple(dict.fromkeys(f"{hostport(m.flow[0])} -> {hostport(m.flow[1])}"
                                   for m in messages if not legs[m.flow].known))
    return Ladder(call_id, start, (columns[0], columns[1], columns[2]), tuple(rows), _outcome(messages), unplaced)


def _outcome(messages: Sequence[CapturedMessage]) -> str:
    calls = group_calls(messages)
    if not calls:
        return "-"
    call = calls[0]
    final = f"{call.status} {call.reason or ''}".rstrip() if call.status is not None else "no final response"
    return f"{call.method} -> {final}" if call.method else "responses only"


def _start_line(data: bytes) -> str:
    end = data.find(b"\r\n")
    return data[:end if end >= 0 else min(len(data), 200)].decode("utf-8", errors="replace")


def _body(message: CapturedMessage) -> bytes:
    length = message.view.body_length
    return message.data[len(message.data) - length:] if length else b""


def _has_sdp(message: CapturedMessage) -> bool:
    body = _body(message)
    if not body:
        return False
    content_type = (message.view.content_type or "").lower()
    if "application/sdp" in content_type:
        return True
    # A multipart body with an SDP part (SIP-I, ...), or a body that plainly is SDP.
    return ("multipart/" in content_type and b"application/sdp" in body.lower()) or body.lstrip().startswith(b"v=0")


def _offer_answer(message: CapturedMessage, offers: set[tuple[Flow, bool, int | None, str | None]]) -> str | None:
    """"offer", "answer" or None for a message's SDP; ``offers`` remembers the requests that carried an offer."""
    if not _has_sdp(message):
        return None
    view = message.view
    if view.is_request:
        if view.method in ("ACK", "PRACK"):
            return "answer"
        offers.add((message.flow, message.from_client, view.cseq_number, view.cseq_method))
        return "offer"
    # A response travels the other way from its request.
    return "answer" if (message.flow, not message.from_client, view.cseq_number, view.cseq_method) in offers else "offer"


def messages_of(ladders: Iterable[Ladder]) -> int:
    return sum(len(ladder.rows) for ladder in ladders)

"""The records a relay worker sends to the mirror process, one datagram each (issue 16), sans-IO.

Theory of operation
-------------------
The relay only relays. Per received chunk it hands the mirror the bytes, which connection and
direction they belong to, where they sit in that direction's byte stream and when they arrived,
and nothing else: framing, SIP fields, log lines and every sink run in the mirror process. The
rare lifecycle records (a leg opened, a handshake's facts with the peer's chain as DER, key
material, a close) travel the same channel, raw, so the relay never renders them either.

Every record is one datagram (a Unix SOCK_SEQPACKET message or one slot of a shared ring):
a fixed little-endian ``struct`` header, then a kind-specific tail. The header begins with the
magic ``b"ST"``, the format version and the record kind, so a decoder can refuse anything else
with a clear :class:`RecordError` instead of misreading it.

A chunk's header is 32 bytes and is built by one ``Struct.pack`` (:func:`chunk_header`): that
is all the relay's hot path pays here. ``conn`` is the worker's integer connection number (the
counter behind its string id); numbers are unique per worker, and each worker has its own
channel, so the mirror keys its state by (channel, conn). :class:`ConnectionOpened` maps the
number to the string id the logs show.

When the channel is full the sender drops the record, counts it per connection and, before the
next record of that connection gets through, sends a :class:`Dropped` marker with the counts:
the mirror reports the gap and resynchronises framing at the next message. A chunk's
``offset`` (its first byte's position in its direction's stream) lets the mirror check that
nothing went missing without a marker (a marker lost too is still a visible hole).

Timestamps are wall-clock seconds since the epoch (``time.time()``), as in today's events.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TypeAlias

__all__ = [
    "CHUNK_HEADER",
    "CHUNK_HEADER_SIZE",
    "FROM_ACCEPTED",
    "FROM_DIALLED",
    "Chunk",
    "ConnectionClosed",
    "ConnectionOpened",
    "Dropped",
    "HandshakeDone",
    "KeyMaterial",
    "LegAddresses",
    "Record",
    "RecordError",
    "chunk_header",
    "decode",
    "encode",
    "without_chain",
]

MAGIC = b"ST"
VERSION = 2  # 2: HandshakeDone carries the peer chain as DER (session 7)

# Record kinds: the fourth byte of every record.
KIND_CHUNK = 1
KIND_OPENED = 2
KIND_HANDSHAKE = 3
KIND_KEYS = 4
KIND_CLOSED = 5
KIND_DROPPED = 6

# A chunk's direction: from the accepted leg's peer toward the dialled leg ("up" in the
# relay's session), or back.
FROM_ACCEPTED = 0
FROM_DIALLED = 1

_PREFIX = struct.Struct("<2sBB")  # magic, version, kind
# magic, version, kind, direction, (pad), conn, offset, ts
_CHUNK = struct.Struct("<2sBBB3xQQd")
# magic, version, kind, (pad), conn, ts: the head of every other record
_HEAD = struct.Struct("<2sBB4xQd")
# The same layouts with the padding read back, so that the decoder can insist it is zero.
_CHUNK_IN = struct.Struct("<2sBBB3sQQd")
_HEAD_IN = struct.Struct("<2sBB4sQd")
_CLOSED = struct.Struct("<dQQ")  # duration, bytes from accepted, bytes from dialled
_DROPPED = struct.Struct("<IQIQI")  # chunks+bytes from accepted, chunks+bytes from dialled, other records
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_U8 = struct.Struct("<B")

CHUNK_HEADER_SIZE = _CHUNK.size  # 32
# The chunk header's layout, for a writer that packs it in place (``pack_into`` a ring slot):
# fields magic, version, kind, direction, conn, offset, ts.
CHUNK_HEADER = _CHUNK

Address = tuple[str, int]


class RecordError(ValueError):
    """The bytes are not one well-formed record of this format (or a record cannot be encoded)."""


@dataclass(frozen=True, slots=True)
class Chunk:
    """Bytes received on one direction of one connection, exactly as relayed."""

    conn: int
    direction: int  # FROM_ACCEPTED or FROM_DIALLED
    offset: int  # position of data[0] in this direction's byte stream
    ts: float
    data: bytes


@dataclass(frozen=True, slots=True)
class LegAddresses:
    """One TCP/TLS leg as a capture of it shows it: ``client`` is the TLS client's side."""

    leg: str  # "customer" or "core"
    client: Address
    server: Address


@dataclass(frozen=True, slots=True)
class ConnectionOpened:
    """Legs of a proxied connection are up: the accepted leg after its handshake, the dialled
    leg once the core answered (one record each, or both in one), before any of their chunks."""

    conn: int
    ts: float
    conn_id: str  # the string id the relay's log lines carry
    route: str
    legs: tuple[LegAddresses, ...]


@dataclass(frozen=True, slots=True)
class HandshakeDone:
    """A completed handshake on one leg, its facts as plain JSON data and the peer's
    certificate chain as DER, leaf first (the mirror summarises and renders both)."""

    conn: int
    ts: float
    leg: str
    facts: Mapping[str, object]  # JSON values only: str, int, float, bool, None, lists, dicts
    chain: tuple[bytes, ...] = ()


@dataclass(frozen=True, slots=True)
class KeyMaterial:
    """NSS key-log lines (``CLIENT_RANDOM ...``) of one leg's handshake."""

    conn: int
    ts: float
    leg: str
    lines: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ConnectionClosed:
    conn: int
    ts: float
    duration: float
    bytes_from_accepted: int
    bytes_from_dialled: int
    closed_by: str
    reason: str


@dataclass(frozen=True, slots=True)
class Dropped:
    """What the sender could not put into a full channel for one connection since its last
    marker: the mirror reports the gap and resynchronises framing in the directions that lost
    bytes."""

    conn: int
    ts: float
    chunks_from_accepted: int = 0
    bytes_from_accepted: int = 0
    chunks_from_dialled: int = 0
    bytes_from_dialled: int = 0
    other_records: int = 0  # lifecycle records (opened, handshake, keys, closed)


Record: TypeAlias = Chunk | ConnectionOpened | HandshakeDone | KeyMaterial | ConnectionClosed | Dropped


def chunk_header(conn: int, direction: int, offset: int, ts: float) -> bytes:
    """The 32 bytes that precede a chunk's data: the relay's whole per-chunk encoding cost.

    Send ``chunk_header(...) + data`` as one datagram (or write both into a ring slot). No
    validation beyond what ``struct`` does: out-of-range integers raise ``struct.error``.
    """
    return _CHUNK.pack(MAGIC, VERSION, KIND_CHUNK, direction, conn, offset, ts)


def encode(record: Record) -> bytes:
    """One datagram for any record. Raises :class:`RecordError` for what the format cannot hold."""
    try:
        return _encode(record)
    except (struct.error, UnicodeEncodeError, OverflowError) as exc:
        raise RecordError(f"cannot encode {type(record).__name__}: {exc}") from exc


def _encode(record: Record) -> bytes:
    if isinstance(record, Chunk):
        if record.direction not in (FROM_ACCEPTED, FROM_DIALLED):
            raise RecordError(f"direction must be FROM_ACCEPTED or FROM_DIALLED, not {record.direction!r}")
        return chunk_header(record.conn, record.direction, record.offset, record.ts) + record.data
    if isinstance(record, ConnectionOpened):
        if not 1 <= len(record.legs) <= 255:
            raise RecordError(f"a ConnectionOpened names 1 to 255 legs, not {len(record.legs)}")
        parts = [_head(KIND_OPENED, record), _str(record.conn_id), _str(record.route), _U8.pack(len(record.legs))]
        for leg in record.legs:
            parts += [_str(leg.leg), _str(leg.client[0]), _U16.pack(leg.client[1]),
                      _str(leg.server[0]), _U16.pack(leg.server[1])]
        return b"".join(parts)
    if isinstance(record, HandshakeDone):
        try:
            facts = json.dumps(record.facts, separators=(",", ":"), allow_nan=False).encode("utf-8")
        except (TypeError, ValueError) as exc:
            raise RecordError(f"handshake facts must be plain JSON data: {exc}") from exc
        if len(record.chain) > 255:
            raise RecordError(f"a HandshakeDone carries at most 255 certificates, not {len(record.chain)}")
        parts = [_head(KIND_HANDSHAKE, record), _str(record.leg), _U8.pack(len(record.chain))]
        for der in record.chain:
            parts += [_U32.pack(len(der)), der]
        parts.append(facts)
        return b"".join(parts)
    if isinstance(record, KeyMaterial):
        if any(not line or "\n" in line for line in record.lines):
            raise RecordError("key-log lines must be non-empty and hold no line break")
        return _head(KIND_KEYS, record) + _str(record.leg) + "\n".join(record.lines).encode("utf-8")
    if isinstance(record, ConnectionClosed):
        return (_head(KIND_CLOSED, record)
                + _CLOSED.pack(record.duration, record.bytes_from_accepted, record.bytes_from_dialled)
                + _str(record.closed_by) + _str(record.reason))
    if isinstance(record, Dropped):
        return _head(KIND_DROPPED, record) + _DROPPED.pack(
            record.chunks_from_accepted, record.bytes_from_accepted, record.chunks_from_dialled,
            record.bytes_from_dialled, record.other_records)
    raise RecordError(f"not a record: {type(record).__name__}")


def without_chain(encoded: bytes) -> bytes:
    """``encoded`` itself, or, for a HandshakeDone that carries a peer chain, the same record
    without it (count 0): what the relay's tap keeps per live connection for a replay to a
    restarted mirror. The chain (a few KiB of DER per leg) is for the handshake_done line and
    summaries, which the first mirror already rendered; kept, it would cost every idle
    connection that memory in the relay for nothing (S4). Bytes are sliced, nothing decoded
    beyond the lengths: the record was encoded here a moment ago."""
    if len(encoded) <= _HEAD.size or encoded[3] != KIND_HANDSHAKE:
        return encoded
    reader = _Reader(encoded, _HEAD.size, KIND_HANDSHAKE)
    reader.text()  # the leg
    counted = reader.pos
    if reader.number(_U8) == 0:
        return encoded
    for _ in range(encoded[counted]):
        reader.take(reader.number(_U32))
    return encoded[:counted] + b"\x00" + encoded[reader.pos:]


def _head(kind: int, record: ConnectionOpened | HandshakeDone | KeyMaterial | ConnectionClosed | Dropped) -> bytes:
    return _HEAD.pack(MAGIC, VERSION, kind, record.conn, record.ts)


def _str(text: str) -> bytes:
    raw = text.encode("utf-8")
    if len(raw) > 0xFFFF:
        raise RecordError(f"string of {len(raw)} bytes is too long (at most 65535)")
    return _U16.pack(len(raw)) + raw


def decode(datagram: bytes) -> Record:
    """The record in one datagram. Anything else (truncated, trailing bytes, unknown kind or
    version, bad UTF-8 or JSON, a non-finite time) raises :class:`RecordError`."""
    if len(datagram) < _PREFIX.size:
        raise RecordError(f"truncated record: {len(datagram)} bytes, a record starts with {_PREFIX.size}")
    magic, version, kind = _PREFIX.unpack_from(datagram)
    if magic != MAGIC:
        raise RecordError(f"not a siptap record: magic {bytes(magic)!r}")
    if version != VERSION:
        raise RecordError(f"record format version {version} (this decoder reads {VERSION})")
    if kind == KIND_CHUNK:  # the common case first
        if len(datagram) < _CHUNK.size:
            raise RecordError(f"truncated chunk record: {len(datagram)} bytes, its header is {_CHUNK.size}")
        _, _, _, direction, pad, conn, offset, ts = _CHUNK_IN.unpack_from(datagram)
        if direction not in (FROM_ACCEPTED, FROM_DIALLED):
            raise RecordError(f"chunk record with unknown direction {direction}")
        if pad != b"\0\0\0":
            raise RecordError("chunk record with non-zero padding")
        return Chunk(conn, direction, offset, _finite(ts), bytes(datagram[_CHUNK.size :]))
    if kind not in _TAILS:
        raise RecordError(f"unknown record kind {kind}")
    if len(datagram) < _HEAD.size:
        raise RecordError(f"truncated record of kind {kind}: {len(datagram)} bytes, its header is {_HEAD.size}")
    _, _, _, pad, conn, ts = _HEAD_IN.unpack_from(datagram)
    if pad != b"\0\0\0\0":
        raise RecordError(f"record of kind {kind} with non-zero padding")
    reader = _Reader(datagram, _HEAD.size, kind)
    try:
        return _TAILS[kind](reader, conn, _finite(ts))
    except UnicodeDecodeError as exc:
        raise RecordError(f"record of kind {kind}: a string is not UTF-8 ({exc.reason})") from exc


class _Reader:
    """Reads a record's tail front to back; every read checks the length first."""

    __slots__ = ("data", "kind", "pos")

    def __init__(self, data: bytes, pos: int, kind: int) -> None:
        self.data, self.pos, self.kind = data, pos, kind

    def take(self, size: int) -> bytes:
        end = self.pos + size
        if end > len(self.data):
            raise RecordError(f"truncated record of kind {self.kind}: needs {end} bytes, has {len(self.data)}")
        raw = bytes(self.data[self.pos : end])
        self.pos = end
        return raw

    def unpack(self, fmt: struct.Struct) -> tuple[int | float, ...]:
        values: tuple[int | float, ...] = fmt.unpack(self.take(fmt.size))
        return values

    def number(self, fmt: struct.Struct) -> int:
        value = self.unpack(fmt)[0]
        assert isinstance(value, int)
        return value

    def text(self) -> str:
        return self.take(self.number(_U16)).decode("utf-8")

    def rest(self) -> bytes:
        raw = bytes(self.data[self.pos :])
        self.pos = len(self.data)
        return raw

    def end(self) -> None:
        if self.pos != len(self.data):
            raise RecordError(f"record of kind {self.kind} has {len(self.data) - self.pos} trailing bytes")


def _finite(value: float, what: str = "time") -> float:
    if not math.isfinite(value):
        raise RecordError(f"record {what} is not finite: {value!r}")
    return value


def _opened(reader: _Reader, conn: int, ts: float) -> ConnectionOpened:
    conn_id, route, count = reader.text(), reader.text(), reader.number(_U8)
    if count == 0:
        raise RecordError("ConnectionOpened record names no leg")
    legs = []
    for _ in range(count):
        leg = reader.text()
        client = (reader.text(), reader.number(_U16))
        server = (reader.text(), reader.number(_U16))
        legs.append(LegAddresses(leg, client, server))
    reader.end()
    return ConnectionOpened(conn, ts, conn_id, route, tuple(legs))


def _handshake(reader: _Reader, conn: int, ts: float) -> HandshakeDone:
    leg = reader.text()
    chain = tuple(reader.take(reader.number(_U32)) for _ in range(reader.number(_U8)))
    try:
        facts = json.loads(reader.rest().decode("utf-8"))
    except json.JSONDecodeError as exc:
        raise RecordError(f"handshake record: facts are not JSON ({exc.msg})") from exc
    if not isinstance(facts, dict):
        raise RecordError(f"handshake record: facts are a JSON {type(facts).__name__}, not an object")
    return HandshakeDone(conn, ts, leg, facts, chain)


def _keys(reader: _Reader, conn: int, ts: float) -> KeyMaterial:
    leg = reader.text()
    text = reader.rest().decode("utf-8")
    lines = tuple(text.split("\n")) if text else ()
    if any(not line for line in lines):
        raise RecordError("key material record holds an empty line")
    return KeyMaterial(conn, ts, leg, lines)


def _closed(reader: _Reader, conn: int, ts: float) -> ConnectionClosed:
    duration, from_accepted, from_dialled = reader.unpack(_CLOSED)
    closed_by, reason = reader.text(), reader.text()
    reader.end()
    assert isinstance(from_accepted, int) and isinstance(from_dialled, int)
    return ConnectionClosed(conn, ts, _finite(float(duration), "duration"), from_accepted, from_dialled, closed_by, reason)


def _dropped(reader: _Reader, conn: int, ts: float) -> Dropped:
    counts = reader.unpack(_DROPPED)
    reader.end()
    chunks_a, bytes_a, chunks_d, bytes_d, other = (int(n) for n in counts)
    return Dropped(conn, ts, chunks_a, bytes_a, chunks_d, bytes_d, other)


_TAILS: dict[int, Callable[[_Reader, int, float], Record]] = {
    KIND_OPENED: _opened,
    KIND_HANDSHAKE: _handshake,
    KIND_KEYS: _keys,
    KIND_CLOSED: _closed,
    KIND_DROPPED: _dropped,
}

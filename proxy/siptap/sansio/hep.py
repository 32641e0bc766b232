"""HEPv3 (EEP3) packet encoder and strict decoder.

Source: "HEP3 Network Protocol Specification", rev. 37 (2025-06-25), sipcapture/HEP,
sections "Packet header", "Chunk layout", "Generic chunk types" and the 113-octet worked
example; chunk order and conventions from Kamailio siptrace_hep.c (kamailio @ 38711a3e).
See /work/shared/reference/hep3.md.

Theory of operation: a HEP3 packet is ``"HEP3" | uint16 total length | chunks``; every chunk
is ``uint16 vendor | uint16 type | uint16 length (incl. its 6-octet header) | value``, all
big-endian. We emit only generic (vendor 0) chunks, in Kamailio's order
1,2,(3,4|5,6),7,8,9,a,b,c,[e],[11],[13],f. The correlation id (0x0011) goes before the
payload (0x000f) because a Wireshark Lua dissector choked on chunks after the payload
(OpenSIPS issue #2146). Over TCP packets are simply concatenated; ``frame_length`` lets a
reader split them.

Choices:
- IP family chunk (0x0001) carries the Linux ``AF_*`` value, 2 for IPv4 and 10 for IPv6,
  because that is what Kamailio sends (``sa_family``) and what Homer has always seen.
- Timestamps are two integers (seconds, microseconds) so encoding never rounds; use
  ``split_timestamp`` to convert a float clock reading.
- IPv4-mapped IPv6 addresses (``::ffff:a.b.c.d``, seen on dual-stack listeners) are stored as
  plain IPv4 so both ends share one family and Homer shows familiar addresses.
- A packet whose total length would exceed 65535 raises ValueError: the caller decides
  whether to truncate the payload (see ``max_payload_len``) or drop the message.
"""

from __future__ import annotations

import functools
import ipaddress
import struct
from dataclasses import dataclass
from typing import Any

MAGIC = b"HEP3"
MAX_PACKET = 0xFFFF

PROTO_SIP = 0x01
PROTO_LOG = 0x64

IPPROTO_TCP = 6
IPPROTO_UDP = 17
IPPROTO_IDP_TLS = 22  # Kamailio's "fake proto" for SIP over TLS/WS/WSS (IPPROTO_IDP)

AF_INET = 2
AF_INET6 = 10  # Linux value; BSDs use other numbers, but collectors expect Linux's

CHUNK_IP_FAMILY = 0x0001
CHUNK_IP_PROTO = 0x0002
CHUNK_IPV4_SRC = 0x0003
CHUNK_IPV4_DST = 0x0004
CHUNK_IPV6_SRC = 0x0005
CHUNK_IPV6_DST = 0x0006
CHUNK_SRC_PORT = 0x0007
CHUNK_DST_PORT = 0x0008
CHUNK_TS_SEC = 0x0009
CHUNK_TS_USEC = 0x000A
CHUNK_PROTO_TYPE = 0x000B
CHUNK_CAPTURE_ID = 0x000C
CHUNK_AUTH_KEY = 0x000E
CHUNK_PAYLOAD = 0x000F
CHUNK_CORRELATION_ID = 0x0011
CHUNK_NODE_NAME = 0x0013

_HEADER = struct.Struct("!4sH")
_CHUNK_HEADER = struct.Struct("!HHH")

IPAddr = ipaddress.IPv4Address | ipaddress.IPv6Address


@functools.lru_cache(maxsize=4096)  # a connection's addresses recur in every packet
def _canonical_ip(text: str) -> IPAddr:
    addr = ipaddress.ip_address(text)
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def split_timestamp(t: float) -> tuple[int, int]:
    """Seconds and microseconds of a float clock reading, rounded to the nearest microsecond,
    so the two HEP timestamp chunks never carry 1_000_000 usec."""
    total = round(t * 1_000_000)
    return total // 1_000_000, total % 1_000_000


@dataclass(frozen=True, slots=True)
class HepPacket:
    """Everything one HEP3 packet carries. Addresses are normalised at construction, so a
    decoded packet compares equal to the one that was encoded."""

    src_ip: str
    dst_ip: str
    src_port: int
    dst_port: int
    ts_sec: int
    ts_usec: int
    payload: bytes
    ip_proto: int = IPPROTO_TCP
    proto_type: int = PROTO_SIP
    capture_id: int = 0
    auth_key: bytes | None = None
    correlation_id: bytes | None = None
    node_name: bytes | None = None

    def __post_init__(self) -> None:
        src = _canonical_ip(self.src_ip)
        dst = _canonical_ip(self.dst_ip)
        if src.version != dst.version:
            raise ValueError(f"HEP addresses must share a family: {self.src_ip} -> {self.dst_ip}")
        object.__setattr__(self, "src_ip", str(src))
        object.__setattr__(self, "dst_ip", str(dst))
        for name, limit in (
            ("src_port", 0xFFFF),
            ("dst_port", 0xFFFF),
            ("ts_sec", 0xFFFFFFFF),
            ("ts_usec", 999_999),
            ("ip_proto", 0xFF),
            ("proto_type", 0xFF),
            ("capture_id", 0xFFFFFFFF),
        ):
            value = getattr(self, name)
            if not 0 <= value <= limit:
                raise ValueError(f"HEP {name} out of range 0..{limit}: {value}")

    @property
    def is_ipv6(self) -> bool:
        return ":" in self.src_ip

    @classmethod
    def at(cls, t: float, **fields: object) -> HepPacket:
        """Build a packet from a float timestamp (seconds since the epoch)."""
        sec, usec = split_timestamp(t)
        return cls(ts_sec=sec, ts_usec=usec, **fields)  # type: ignore[arg-type]  # the fields are the dataclass's own keywords, checked by its __init__


def _chunk(type_id: int, value: bytes) -> bytes:
    return _CHUNK_HEADER.pack(0, type_id, _CHUNK_HEADER.size + len(value)) + value


def _overhead(packet: HepPacket) -> int:
    """Octets of everything except the payload value itself."""
    addr = 16 if packet.is_ipv6 else 4
    size = _HEADER.size
    size += 7 + 7  # family, proto
    size += 2 * (6 + addr)
    size += 8 + 8  # ports
    size += 10 + 10  # ts sec, usec
    size += 7 + 10  # proto type, capture id
    for optional in (packet.auth_key, packet.correlation_id, packet.node_name):
        if optional is not None:
            size += 6 + len(optional)
    return size + 6  # payload chunk header


def max_payload_len(packet: HepPacket) -> int:
    """How many payload octets fit beside this packet's other chunks: for callers that
    prefer truncating an oversize message to dropping it."""
    return MAX_PACKET - _overhead(packet)


def encode(packet: HepPacket) -> bytes:
    """One HEP3 packet; raises ValueError if it would exceed the 16-bit total length."""
    total = _overhead(packet) + len(packet.payload)
    if total > MAX_PACKET:
        raise ValueError(f"HEP packet too large: {total} octets > {MAX_PACKET}")
    src = _packed(packet.src_ip)
    dst = _packed(packet.dst_ip)
    if packet.is_ipv6:
        family, src_type, dst_type = AF_INET6, CHUNK_IPV6_SRC, CHUNK_IPV6_DST
    else:
        family, src_type, dst_type = AF_INET, CHUNK_IPV4_SRC, CHUNK_IPV4_DST
    parts = [
        _HEADER.pack(MAGIC, total),
        _chunk(CHUNK_IP_FAMILY, bytes([family])),
        _chunk(CHUNK_IP_PROTO, bytes([packet.ip_proto])),
        _chunk(src_type, src),
        _chunk(dst_type, dst),
        _chunk(CHUNK_SRC_PORT, packet.src_port.to_bytes(2, "big")),
        _chunk(CHUNK_DST_PORT, packet.dst_port.to_bytes(2, "big")),
        _chunk(CHUNK_TS_SEC, packet.ts_sec.to_bytes(4, "big")),
        _chunk(CHUNK_TS_USEC, packet.ts_usec.to_bytes(4, "big")),
        _chunk(CHUNK_PROTO_TYPE, bytes([packet.proto_type])),
        _chunk(CHUNK_CAPTURE_ID, packet.capture_id.to_bytes(4, "big")),
    ]
    if packet.auth_key is not None:
        parts.append(_chunk(CHUNK_AUTH_KEY, packet.auth_key))
    if packet.correlation_id is not None:
        parts.append(_chunk(CHUNK_CORRELATION_ID, packet.correlation_id))
    if packet.node_name is not None:
        parts.append(_chunk(CHUNK_NODE_NAME, packet.node_name))
    parts.append(_chunk(CHUNK_PAYLOAD, packet.payload))
    data = b"".join(parts)
    assert len(data) == total
    return data


@functools.lru_cache(maxsize=4096)
def _packed(text: str) -> bytes:
    return ipaddress.ip_address(text).packed


_TS_CHUNKS = struct.Struct("!HHHIHHHI")
_ADDRESS_CACHE_MAX = 4096


class Encoder:
    """Encodes packets that share ``ip_proto``, ``proto_type``, ``capture_id``, auth key
    and node name, byte for byte as ``encode(HepPacket.at(t, ...))`` would, raising the
    same ValueErrors; but the chunks fixed for one address pair (family, addresses,
    ports) are built and validated once and cached, so a packet costs a few struct packs
    and one join. For the mirror's hot path: one per SIP message."""

    __slots__ = ("_addresses", "_layouts", "_middle", "_tail", "auth_key", "capture_id", "ip_proto", "node_name",
                 "proto_type")

    def __init__(
        self,
        *,
        ip_proto: int = IPPROTO_TCP,
        proto_type: int = PROTO_SIP,
        capture_id: int = 0,
        auth_key: bytes | None = None,
        node_name: bytes | None = None,
    ) -> None:
        self.ip_proto = ip_proto
        self.proto_type = proto_type
        self.capture_id = capture_id
        self.auth_key = auth_key
        self.node_name = node_name
        self._addresses: dict[tuple[tuple[str, int], tuple[str, int]], bytes] = {}
        self._middle = b""  # proto type, capture id, auth key: built with the first pair
        self._tail = b"" if node_name is None else _chunk(CHUNK_NODE_NAME, node_name)
        # By the address chunks' length (IPv4 or IPv6): see _layout.
        self._layouts: dict[int, tuple[int, struct.Struct, struct.Struct, struct.Struct]] = {}

    def _address_chunks(self, src: tuple[str, int], dst: tuple[str, int], sec: int, usec: int,
                        cache: dict[Any, bytes] | None) -> bytes:
        key = (src, dst)
        if cache is None:
            cache = self._addresses
        chunks = cache.get(key)
        if chunks is None:
            # Validated (and laid out) by the reference path, with this packet's time, so
            # errors are the same, in the same order.
            packet = HepPacket(
                src_ip=src[0], dst_ip=dst[0], src_port=src[1], dst_port=dst[1], ts_sec=sec, ts_usec=usec,
                payload=b"", ip_proto=self.ip_proto, proto_type=self.proto_type, capture_id=self.capture_id,
                auth_key=self.auth_key, correlation_id=None, node_name=None,
            )
            full = encode(packet)
            end = _HEADER.size + 7 + 7 + 2 * (6 + (16 if packet.is_ipv6 else 4)) + 8 + 8
            chunks = full[_HEADER.size : end]
            self._middle = full[end + 20 : len(full) - _CHUNK_HEADER.size]
            if len(chunks) not in self._layouts:
                self._layouts[len(chunks)] = self._layout(len(chunks))
            if cache is self._addresses and len(cache) >= _ADDRESS_CACHE_MAX:
                cache.clear()
            cache[key] = chunks
        return chunks

    def _layout(self, address_size: int) -> tuple[int, struct.Struct, struct.Struct, struct.Struct]:
        """How this encoder's packets with address chunks of ``address_size`` octets are
        laid out: the octets of everything but the payload and the correlation chunk, then
        three packers. ``plain``: everything before the payload of a packet without a
        correlation id (header, address chunks, the two timestamp chunks, the middle, the
        tail, the payload chunk's header) in one pack; ``correlated``: the same up to the
        correlation chunk's header, and ``rest``: the tail and the payload chunk's header,
        for the packets with one (the id goes between them)."""
        middle, tail = len(self._middle), len(self._tail)
        base = _HEADER.size + address_size + _TS_CHUNKS.size + middle + tail + _CHUNK_HEADER.size
        head = f"!4sH{address_size}sHHHIHHHI{middle}s"
        return (base, struct.Struct(f"{head}{tail}sHHH"), struct.Struct(f"{head}HHH"), struct.Struct(f"!{tail}sHHH"))

    def encode(
        self, t: float, src: tuple[str, int], dst: tuple[str, int], payload: bytes, correlation_id: bytes | None = None,
        *, pair_cache: dict[Any, bytes] | None = None,
    ) -> bytes:
        """``pair_cache``: where to keep the chunks of this address pair, when the caller
        has a home for them that dies with the connection (the mirror: its LegInfo);
        by default a bounded cache of the encoder's own."""
        sec, usec = divmod(round(t * 1_000_000), 1_000_000)  # split_timestamp, inlined: once per message
        chunks = (self._addresses if pair_cache is None else pair_cache).get((src, dst))
        if chunks is None:
            chunks = self._address_chunks(src, dst, sec, usec, pair_cache)
        if not 0 <= sec <= 0xFFFFFFFF:  # a cached pair was validated with another time
            raise ValueError(f"HEP ts_sec out of range 0..{0xFFFFFFFF}: {sec}")
        base, plain, correlated, rest = self._layouts[len(chunks)]
        size = len(payload)
        if correlation_id is None:
            total = base + size
            if total > MAX_PACKET:
                raise ValueError(f"HEP packet too large: {total} octets > {MAX_PACKET}")
            return plain.pack(MAGIC, total, chunks, 0, CHUNK_TS_SEC, 10, sec, 0, CHUNK_TS_USEC, 10, usec, self._middle,
                              self._tail, 0, CHUNK_PAYLOAD, _CHUNK_HEADER.size + size) + payload
        total = base + _CHUNK_HEADER.size + len(correlation_id) + size
        if total > MAX_PACKET:
            raise ValueError(f"HEP packet too large: {total} octets > {MAX_PACKET}")
        return b"".join((
            correlated.pack(MAGIC, total, chunks, 0, CHUNK_TS_SEC, 10, sec, 0, CHUNK_TS_USEC, 10, usec, self._middle,
                            0, CHUNK_CORRELATION_ID, _CHUNK_HEADER.size + len(correlation_id)),
            correlation_id,
            rest.pack(self._tail, 0, CHUNK_PAYLOAD, _CHUNK_HEADER.size + size),
            payload,
        ))


def frame_length(buffer: bytes | bytearray | memoryview) -> int | None:
    """Total length of the HEP3 packet at the start of a TCP byte stream, or None if fewer
    than 6 octets are buffered. Raises ValueError when the stream is not HEP3."""
    if len(buffer) < _HEADER.size:
        return None
    magic, total = _HEADER.unpack_from(buffer, 0)
    if magic != MAGIC:
        raise ValueError(f"not a HEP3 packet: magic {bytes(magic)!r}")
    if total < _HEADER.size:
        raise ValueError(f"HEP3 total length {total} shorter than its header")
    return int(total)


_UINT_SIZES = {
    CHUNK_IP_FAMILY: 1,
    CHUNK_IP_PROTO: 1,
    CHUNK_IPV4_SRC: 4,
    CHUNK_IPV4_DST: 4,
    CHUNK_IPV6_SRC: 16,
    CHUNK_IPV6_DST: 16,
    CHUNK_SRC_PORT: 2,
    CHUNK_DST_PORT: 2,
    CHUNK_TS_SEC: 4,
    CHUNK_TS_USEC: 4,
    CHUNK_PROTO_TYPE: 1,
    CHUNK_CAPTURE_ID: 4,
}


def decode(data: bytes) -> HepPacket:
    """Parse exactly one HEP3 packet. Strict, because it checks what we (and peers we test
    against) put on the wire: bad magic, a length that disagrees with ``len(data)``, a
    truncated or mis-sized chunk, or a missing mandatory chunk raise ValueError. Chunks of
    other vendors and unknown generic types are skipped, as the spec intends."""
    total = frame_length(data)
    if total is None or total != len(data):
        raise ValueError(f"HEP3 total length {total} does not match {len(data)} octets")
    chunks: dict[int, bytes] = {}
    offset = _HEADER.size
    while offset < total:
        if total - offset < _CHUNK_HEADER.size:
            raise ValueError(f"truncated HEP3 chunk header at offset {offset}")
        vendor, type_id, length = _CHUNK_HEADER.unpack_from(data, offset)
        if length < _CHUNK_HEADER.size or offset + length > total:
            raise ValueError(f"bad HEP3 chunk length {length} at offset {offset}")
        value = bytes(data[offset + _CHUNK_HEADER.size : offset + length])
        offset += length
        if vendor != 0:
            continue
        expected = _UINT_SIZES.get(type_id)
        if expected is not None and len(value) != expected:
            raise ValueError(f"HEP3 chunk 0x{type_id:04x} has {len(value)} octets, expected {expected}")
        chunks[type_id] = value

    def need(type_id: int) -> bytes:
        try:
            return chunks[type_id]
        except KeyError:
            raise ValueError(f"HEP3 packet lacks chunk 0x{type_id:04x}") from None

    def uint(type_id: int) -> int:
        return int.from_bytes(need(type_id), "big")

    family = uint(CHUNK_IP_FAMILY)
    src: ipaddress.IPv4Address | ipaddress.IPv6Address
    dst: ipaddress.IPv4Address | ipaddress.IPv6Address
    if family == AF_INET:
        src = ipaddress.IPv4Address(need(CHUNK_IPV4_SRC))
        dst = ipaddress.IPv4Address(need(CHUNK_IPV4_DST))
    elif family == AF_INET6:
        src = ipaddress.IPv6Address(need(CHUNK_IPV6_SRC))
        dst = ipaddress.IPv6Address(need(CHUNK_IPV6_DST))
    else:
        raise ValueError(f"unknown HEP3 IP family {family}")
    return HepPacket(
        src_ip=str(src),
        dst_ip=str(dst),
        src_port=uint(CHUNK_SRC_PORT),
        dst_port=uint(CHUNK_DST_PORT),
        ts_sec=uint(CHUNK_TS_SEC),
        ts_usec=uint(CHUNK_TS_USEC),
        payload=need(CHUNK_PAYLOAD),
        ip_proto=uint(CHUNK_IP_PROTO),
        proto_type=uint(CHUNK_PROTO_TYPE),
        capture_id=uint(CHUNK_CAPTURE_ID),
        auth_key=chunks.get(CHUNK_AUTH_KEY),
        correlation_id=chunks.get(CHUNK_CORRELATION_ID),
        node_name=chunks.get(CHUNK_NODE_NAME),
    )

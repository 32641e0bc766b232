"""A small pcap/pcapng reader and an Ethernet/IP/TCP decoder, sans-IO (bytes in, records out).

Sources: libpcap savefile format (pcap-savefile(5); draft-ietf-opsawg-pcap §4-5: magics
0xA1B2C3D4 microseconds and 0xA1B23C4D nanoseconds, either byte order), pcapng
(draft-ietf-opsawg-pcapng: §4.1 SHB with its byte-order magic, §4.2 IDB with ``if_tsresol``
option 9, §4.3 EPB, §4.4 SPB, §4.7 DSB), RFC 791 / RFC 8200 / RFC 9293 for the headers.

Theory of operation: this is the inverse of :mod:`siptap.sansio.pcap`, meant for reading
back what siptap's cleartext sink wrote (``siptap export``), yet it accepts any well-formed
capture of the link types listed in :data:`SUPPORTED_LINKTYPES`. ``read_capture`` returns
every packet with its timestamp as integer microseconds since the epoch (exact for the
files siptap writes; nanosecond or other resolutions are rounded down) and, for pcapng,
the text of any Decryption Secrets Blocks. ``decode_tcp`` takes one frame apart into a
:class:`TcpSegment`, or returns None for anything that is not an unfragmented TCP segment
over IPv4/IPv6. Unknown pcapng blocks are skipped, as the format asks; a truncated or
inconsistent file raises :class:`PcapFormatError` naming the offset.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass, field

__all__ = [
    "SUPPORTED_LINKTYPES",
    "Capture",
    "Packet",
    "PcapFormatError",
    "TcpSegment",
    "decode_tcp",
    "read_capture",
]

LINKTYPE_NULL = 0
LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101
LINKTYPE_LINUX_SLL = 113
LINKTYPE_IPV4 = 228
LINKTYPE_IPV6 = 229
SUPPORTED_LINKTYPES = frozenset({LINKTYPE_NULL, LINKTYPE_ETHERNET, LINKTYPE_RAW, LINKTYPE_LINUX_SLL,
                                 LINKTYPE_IPV4, LINKTYPE_IPV6})

_PCAP_USEC = 0xA1B2C3D4
_PCAP_NSEC = 0xA1B23C4D
_SHB = 0x0A0D0D0A
_IDB = 0x00000001
_PB_OBSOLETE = 0x00000002
_SPB = 0x00000003
_EPB = 0x00000006
_DSB = 0x0000000A
_BYTE_ORDER_MAGIC = 0x1A2B3C4D
_OPT_IF_TSRESOL = 9


class PcapFormatError(ValueError):
    """Not a pcap/pcapng file, or a truncated/inconsistent one."""


@dataclass(frozen=True, slots=True)
class Packet:
    ts_us: int  # microseconds since the epoch (0 when the format carries no timestamp)
    linktype: int
    data: bytes

    @property
    def ts(self) -> float:
        return self.ts_us / 1e6


@dataclass(slots=True)
class Capture:
    format: str  # "pcap" or "pcapng"
    packets: list[Packet] = field(default_factory=list)
    secrets: list[tuple[int, bytes]] = field(default_factory=list)  # pcapng DSB: (type, data)
    truncated: str | None = None  # with tolerate_truncation: why reading stopped early


@dataclass(frozen=True, slots=True)
class TcpSegment:
    src: tuple[str, int]
    dst: tuple[str, int]
    seq: int
    ack: int
    flags: int
    payload: bytes


def read_capture(data: bytes, *, tolerate_truncation: bool = False) -> Capture:
    """Parse a whole pcap or pcapng file held in memory.

    A file still being written may end in half a record: with ``tolerate_truncation`` the
    packets before it are returned and ``Capture.truncated`` says what was cut; otherwise
    that raises :class:`PcapFormatError` like any other damage.
    """
    if len(data) < 4:
        raise PcapFormatError("file too short for a capture header")
    magic_le = struct.unpack_from("<I", data)[0]
    pcap_order = next((o for o in "<>" if struct.unpack_from(o + "I", data)[0] in (_PCAP_USEC, _PCAP_NSEC)), None)
    if magic_le != _SHB and pcap_order is None:
        raise PcapFormatError(f"not a pcap or pcapng file (magic 0x{magic_le:08x})")
    capture = Capture("pcapng" if magic_le == _SHB else "pcap")
    try:
        if pcap_order is None:
            _read_pcapng(data, capture)
        else:
            nanoseconds = struct.unpack_from(pcap_order + "I", data)[0] == _PCAP_NSEC
            _read_pcap(data, pcap_order, capture, nanoseconds=nanoseconds)
    except _Truncated as exc:
        if not tolerate_truncation:
            raise PcapFormatError(str(exc)) from None
        capture.truncated = str(exc)
    return capture


class _Truncated(Exception):
    """The data ends inside a record or block."""


def _read_pcap(data: bytes, order: str, capture: Capture, *, nanoseconds: bool) -> None:
    if len(data) < 24:
        raise PcapFormatError("pcap global header truncated")
    linktype = struct.unpack_from(order + "I", data, 20)[0] & 0x0FFFFFFF  # upper bits: FCS info
    record = struct.Struct(order + "IIII")
    pos = 24
    while pos < len(data):
        if pos + 16 > len(data):
            raise _Truncated(f"record header truncated at offset {pos}")
        sec, frac, incl, _orig = record.unpack_from(data, pos)
        end = pos + 16 + incl
        if end > len(data):
            raise _Truncated(f"record at offset {pos} truncated ({incl} octets announced)")
        usec = frac // 1000 if nanoseconds else frac
        capture.packets.append(Packet(sec * 1_000_000 + usec, linktype, data[pos + 16 : end]))
        pos = end


def _read_pcapng(data: bytes, capture: Capture) -> None:
    order = "<"
    interfaces: list[tuple[int, int, int]] = []  # (linktype, units per second, offset seconds)
    pos = 0
    while pos < len(data):
        if pos + 12 > len(data):
            raise _Truncated(f"block header truncated at offset {pos}")
        block_type = struct.unpack_from("<I", data, pos)[0]
        if block_type == _SHB:
            bom = data[pos + 8 : pos + 12]
            if bom == struct.pack("<I", _BYTE_ORDER_MAGIC):
                order = "<"
            elif bom == struct.pack(">I", _BYTE_ORDER_MAGIC):
                order = ">"
            else:
                raise PcapFormatError(f"section header at offset {pos} has no byte-order magic")
            interfaces = []  # interface ids are per section
        block_type, length = struct.unpack_from(order + "II", data, pos)
        if length < 12 or length % 4:
            raise PcapFormatError(f"block at offset {pos} has an invalid length {length}")
        if pos + length > len(data):
            raise _Truncated(f"block at offset {pos} truncated ({length} octets announced)")
        trailer = struct.unpack_from(order + "I", data, pos + length - 4)[0]
        if trailer != length:
            raise PcapFormatError(f"block at offset {pos}: trailing length {trailer} != {length}")
        body = data[pos + 8 : pos + length - 4]
        if block_type == _IDB:
            if len(body) < 8:
                raise PcapFormatError(f"interface description at offset {pos} truncated")
            linktype = struct.unpack_from(order + "H", body)[0]
            units, offset = _tsresol(body[8:], order)
            interfaces.append((linktype, units, offset))
        elif block_type in (_EPB, _PB_OBSOLETE):
            if len(body) < 20:
                raise PcapFormatError(f"packet block at offset {pos} truncated")
            if block_type == _EPB:
                iface, high, low, incl, _orig = struct.unpack_from(order + "IIIII", body)
            else:
                iface, _drops, high, low, incl, _orig = struct.unpack_from(order + "HHIIII", body)
            start = 20  # both layouts: 20 octets before the packet data
            if start + incl > len(body):
                raise PcapFormatError(f"packet block at offset {pos}: {incl} octets do not fit the block")
            if iface >= len(interfaces):
                raise PcapFormatError(f"packet block at offset {pos} names unknown interface {iface}")
            linktype, units, offset = interfaces[iface]
            ticks = (high << 32) | low
            ts_us = ticks * 1_000_000 // units + offset * 1_000_000
            capture.packets.append(Packet(ts_us, linktype, body[start : start + incl]))
        elif block_type == _SPB:
            if not interfaces or len(body) < 4:
                raise PcapFormatError(f"simple packet block at offset {pos} without interface or truncated")
            orig = struct.unpack_from(order + "I", body)[0]
            capture.packets.append(Packet(0, interfaces[0][0], body[4 : 4 + orig]))
        elif block_type == _DSB:
            if len(body) < 8:
                raise PcapFormatError(f"decryption secrets block at offset {pos} truncated")
            kind, size = struct.unpack_from(order + "II", body)
            if 8 + size > len(body):
                raise PcapFormatError(f"decryption secrets block at offset {pos}: {size} octets do not fit")
            capture.secrets.append((kind, body[8 : 8 + size]))
        pos += length


def _tsresol(options: bytes, order: str) -> tuple[int, int]:
    """(units per second, offset seconds) from an IDB's options; default microseconds."""
    units, offset = 1_000_000, 0
    pos = 0
    while pos + 4 <= len(options):
        code, size = struct.unpack_from(order + "HH", options, pos)
        value = options[pos + 4 : pos + 4 + size]
        if code == 0:
            break
        if len(value) < size:
            raise PcapFormatError(f"interface option {code}: {size} octets do not fit in the block")
        if code == _OPT_IF_TSRESOL and size >= 1:
            raw = value[0]
            units = 2 ** (raw & 0x7F) if raw & 0x80 else 10 ** raw
        elif code == 14 and size == 8:  # if_tsoffset
            offset = struct.unpack(order + "q", value)[0]
        pos += 4 + size + (-size % 4)
    return units, offset


def decode_tcp(frame: bytes, linktype: int = LINKTYPE_ETHERNET) -> TcpSegment | None:
    """The TCP segment in ``frame``, or None (not IP, not TCP, a fragment, truncated)."""
    ip = _ip_payload(frame, linktype)
    if ip is None or not ip:
        return None
    version = ip[0] >> 4
    src: ipaddress.IPv4Address | ipaddress.IPv6Address
    dst: ipaddress.IPv4Address | ipaddress.IPv6Address
    if version == 4:
        if len(ip) < 20:
            return None
        ihl = (ip[0] & 0x0F) * 4
        total = struct.unpack_from("!H", ip, 2)[0]
        frag = struct.unpack_from("!H", ip, 6)[0]
        if ip[9] != 6 or frag & 0x3FFF or ihl < 20 or total < ihl or total > len(ip):
            return None  # not TCP, or a fragment (MF set or an offset)
        src, dst = ipaddress.IPv4Address(ip[12:16]), ipaddress.IPv4Address(ip[16:20])
        tcp = ip[ihl:total]
    elif version == 6:
        if len(ip) < 40:
            return None
        length = struct.unpack_from("!H", ip, 4)[0]
        if ip[6] != 6 or 40 + length > len(ip):
            return None  # extension headers are not followed: siptap never writes them
        src, dst = ipaddress.IPv6Address(ip[8:24]), ipaddress.IPv6Address(ip[24:40])
        tcp = ip[40 : 40 + length]
    else:
        return None
    if len(tcp) < 20:
        return None
    sport, dport, seq, ack, offset, flags = struct.unpack_from("!HHIIBB", tcp)
    header = (offset >> 4) * 4
    if header < 20 or header > len(tcp):
        return None
    return TcpSegment((str(src), sport), (str(dst), dport), seq, ack, flags, bytes(tcp[header:]))


def _ip_payload(frame: bytes, linktype: int) -> bytes | None:
    if linktype == LINKTYPE_ETHERNET:
        pos, ethertype = 12, None
        while pos + 2 <= len(frame):
            ethertype = struct.unpack_from("!H", frame, pos)[0]
            if ethertype in (0x8100, 0x88A8):  # VLAN tags
                pos += 4
                continue
            break
        if ethertype not in (0x0800, 0x86DD):
            return None
        return frame[pos + 2 :]
    if linktype == LINKTYPE_LINUX_SLL:
        if len(frame) < 16 or struct.unpack_from("!H", frame, 14)[0] not in (0x0800, 0x86DD):
            return None
        return frame[16:]
    if linktype in (LINKTYPE_RAW, LINKTYPE_IPV4, LINKTYPE_IPV6):
        return frame
    if linktype == LINKTYPE_NULL:
        return frame[4:] if len(frame) > 4 else None
    return None

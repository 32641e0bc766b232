"""pcap and pcapng encoders, and synthetic Ethernet/IP/TCP frames for relayed SIP.

Sources: libpcap file format (tcpdump.org pcap-savefile(5); draft-ietf-opsawg-pcap §4-5),
pcapng (draft-ietf-opsawg-pcapng-02: §4.1 SHB, §4.2 IDB, §4.3 EPB, §4.7 DSB with secrets type
0x544C534B "TLSK"), RFC 791 (IPv4 header and checksum), RFC 8200 (IPv6 header), RFC 9293
(TCP header, checksum over the pseudo-header) and RFC 1071 (ones'-complement sum).

Theory of operation: siptap sees cleartext SIP as a byte stream per TLS connection, with no
packets. To let Wireshark/tshark and sngrep open the file as SIP without any key, each relayed
chunk becomes a TCP segment of a synthetic connection that has the connection's real
addresses and ports. ``TcpFlow`` keeps each direction's next sequence number, so segments
are contiguous and each acknowledges all the peer has sent: the analyser sees a clean
stream (no lost segment, retransmission or out-of-order flags) and reassembles SIP messages
that span several segments. Frames use Ethernet II (link type 1) because sngrep accepts
Ethernet and Linux cooked captures but not raw IP; the MACs are fixed, locally administered
02:00:00:00:00:01 (client) and 02:00:00:00:00:02 (server). Checksums are computed for real
so a tool that validates them shows no errors.

Files are written little-endian with microsecond timestamps (pcap magic 0xA1B2C3D4; pcapng
default if_tsresol of 6). Timestamps are passed in: this module never reads a clock.
"""

from __future__ import annotations

import functools
import ipaddress
import struct

LINKTYPE_ETHERNET = 1
DEFAULT_SNAPLEN = 262144

MAC_CLIENT = bytes.fromhex("020000000001")
MAC_SERVER = bytes.fromhex("020000000002")

ETHERTYPE_IPV4 = 0x0800
ETHERTYPE_IPV6 = 0x86DD
IPPROTO_TCP = 6

TCP_FIN = 0x01
TCP_SYN = 0x02
TCP_RST = 0x04
TCP_PSH = 0x08
TCP_ACK = 0x10

TCP_WINDOW = 0xFFFF
# Window scale announced in the synthetic handshake: the peers never really acknowledge in
# step with our segments, so a huge window keeps analysers from reporting "window full".
TCP_WSCALE = 14
# Largest TCP payload in one IPv4 packet: 65535 minus IPv4 (20) and TCP (20) headers. IPv6
# could carry 20 more octets; one limit for both keeps flows alike (it is also Linux's
# loopback MSS).
MAX_SEGMENT = 0xFFFF - 20 - 20

_U32 = 0xFFFFFFFF

PCAP_MAGIC_USEC = 0xA1B2C3D4
PCAPNG_BLOCK_SHB = 0x0A0D0D0A
PCAPNG_BLOCK_IDB = 0x00000001
PCAPNG_BLOCK_EPB = 0x00000006
PCAPNG_BLOCK_DSB = 0x0000000A
PCAPNG_BYTE_ORDER_MAGIC = 0x1A2B3C4D
PCAPNG_SECRETS_TLS_KEYLOG = 0x544C534B  # "TLSK": NSS key-log text
_OPT_ENDOFOPT = 0
_OPT_SHB_USERAPPL = 4
_OPT_IF_NAME = 2


# --- pcap (libpcap savefile) -------------------------------------------------------------


def pcap_global_header(snaplen: int = DEFAULT_SNAPLEN, linktype: int = LINKTYPE_ETHERNET) -> bytes:
    """The 24-octet file header: version 2.4, UTC, microsecond resolution."""
    return struct.pack("<IHHiIII", PCAP_MAGIC_USEC, 2, 4, 0, 0, snaplen, linktype)


def pcap_record(ts_sec: int, ts_usec: int, frame: bytes) -> bytes:
    """One record: 16-octet header then the frame, never truncated (our frames are below the
    default snaplen by construction)."""
    return struct.pack("<IIII", ts_sec, ts_usec, len(frame), len(frame)) + frame


# --- pcapng --------------------------------------------------------------------------------


def _pad4(data: bytes) -> bytes:
    return data + b"\x00" * (-len(data) % 4)


def _block(block_type: int, body: bytes) -> bytes:
    body = _pad4(body)
    total = 12 + len(body)
    return struct.pack("<II", block_type, total) + body + struct.pack("<I", total)


def _options(options: list[tuple[int, bytes]]) -> bytes:
    if not options:
        return b""
    out = b"".join(struct.pack("<HH", code, len(value)) + _pad4(value) for code, value in options)
    return out + struct.pack("<HH", _OPT_ENDOFOPT, 0)


def pcapng_section_header(user_appl: bytes | None = None) -> bytes:
    """Section Header Block, version 1.0, section length unknown (-1) because we stream."""
    body = struct.pack("<IHHq", PCAPNG_BYTE_ORDER_MAGIC, 1, 0, -1)
    opts = [(_OPT_SHB_USERAPPL, user_appl)] if user_appl else []
    return _block(PCAPNG_BLOCK_SHB, body + _options(opts))


def pcapng_interface_description(
    snaplen: int = DEFAULT_SNAPLEN, linktype: int = LINKTYPE_ETHERNET, name: bytes | None = None
) -> bytes:
    """Interface Description Block; no if_tsresol option, so timestamps are microseconds."""
    body = struct.pack("<HHI", linktype, 0, snaplen)
    opts = [(_OPT_IF_NAME, name)] if name else []
    return _block(PCAPNG_BLOCK_IDB, body + _options(opts))


def pcapng_enhanced_packet(ts_sec: int, ts_usec: int, frame: bytes, interface_id: int = 0) -> bytes:
    """Enhanced Packet Block; the 64-bit timestamp counts microseconds since the epoch."""
    ts = ts_sec * 1_000_000 + ts_usec
    header = struct.pack("<IIIII", interface_id, ts >> 32, ts & _U32, len(frame), len(frame))
    return _block(PCAPNG_BLOCK_EPB, header + frame)


def pcapng_decryption_secrets(keylog_text: bytes) -> bytes:
    """Decryption Secrets Block carrying NSS key-log lines, so Wireshark decrypts the TLS
    connections in the same file without a separate key-log file. Must precede the packets
    it decrypts."""
    return _block(PCAPNG_BLOCK_DSB, struct.pack("<II", PCAPNG_SECRETS_TLS_KEYLOG, len(keylog_text)) + keylog_text)


# --- frames --------------------------------------------------------------------------------


def _ones_complement_sum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\x00"
    total = sum(memoryview(data).cast("H"))  # native order; folded and swapped below
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def _folded_sum(data: bytes) -> int:
    """The ones'-complement sum of ``data`` as big-endian 16-bit words, folded to 16 bits
    (RFC 1071), in C rather than a loop: the words are the base-65536 digits of the
    buffer read as one integer, and 65536 = 1 (mod 65535), so their sum is that integer
    mod 65535; the end-around carry only ever yields 0 for an all-zero buffer, else a
    value in 1..0xFFFF, i.e. 0xFFFF where the remainder is 0."""
    value = int.from_bytes(data, "big")
    if len(data) & 1:
        value <<= 8  # an odd length is padded with a zero octet
    if not value:
        return 0
    return value % 0xFFFF or 0xFFFF


def internet_checksum(data: bytes) -> int:
    """RFC 1071 checksum, returned in network byte order as an int."""
    return ~_folded_sum(data) & 0xFFFF


@functools.lru_cache(maxsize=4096)  # a connection's addresses recur in every frame
def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    addr = ipaddress.ip_address(text)
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def ethernet_ip_tcp_frame(
    src_ip: str,
    dst_ip: str,
    src_port: int,
    dst_port: int,
    seq: int,
    ack: int,
    flags: int,
    payload: bytes = b"",
    ip_id: int = 0,
    *,
    src_mac: bytes = MAC_CLIENT,
    dst_mac: bytes = MAC_SERVER,
    tcp_options: bytes = b"",
) -> bytes:
    """One Ethernet II frame holding an IPv4 or IPv6 (chosen by the addresses) TCP segment
    with correct IP and TCP checksums. IPv4-mapped IPv6 addresses are written as IPv4 so a
    dual-stack listener's connections look like what the client really used."""
    src, dst = _ip(src_ip), _ip(dst_ip)
    if src.version != dst.version:
        raise ValueError(f"addresses of different families: {src_ip} -> {dst_ip}")
    if len(tcp_options) % 4 or len(tcp_options) > 40:
        raise ValueError("TCP options must be padded to 4 octets and at most 40")
    tcp_len = 20 + len(tcp_options) + len(payload)
    header = struct.pack(
        "!HHIIBBHHH",
        src_port,
        dst_port,
        seq & _U32,
        ack & _U32,
        (5 + len(tcp_options) // 4) << 4,
        flags,
        TCP_WINDOW,
        0,
        0,
    )
    segment = header + tcp_options + payload
    if src.version == 4:
        if 20 + tcp_len > 0xFFFF:
            raise ValueError(f"TCP segment of {tcp_len} octets does not fit one IPv4 packet")
        pseudo = src.packed + dst.packed + struct.pack("!BBH", 0, IPPROTO_TCP, tcp_len)
        ip_header = struct.pack(
            "!BBHHHBBH4s4s", 0x45, 0, 20 + tcp_len, ip_id & 0xFFFF, 0x4000, 64, IPPROTO_TCP, 0, src.packed, dst.packed
        )
        ip_header = ip_header[:10] + struct.pack("!H", internet_checksum(ip_header)) + ip_header[12:]
        ethertype = ETHERTYPE_IPV4
    else:
        if tcp_len > 0xFFFF:
            raise ValueError(f"TCP segment of {tcp_len} octets does not fit one IPv6 packet")
        pseudo = src.packed + dst.packed + struct.pack("!I3xB", tcp_len, IPPROTO_TCP)
        ip_header = struct.pack("!IHBB16s16s", 6 << 28, tcp_len, IPPROTO_TCP, 64, src.packed, dst.packed)
        ethertype = ETHERTYPE_IPV6
    checksum = internet_checksum(pseudo + segment)
    segment = segment[:16] + struct.pack("!H", checksum) + segment[18:]
    return dst_mac + src_mac + struct.pack("!H", ethertype) + ip_header + segment


# Ethernet (the two MACs and the EtherType, fixed per direction: one 14-octet field), then
# the IP and TCP headers: a frame's headers in one pack.
_IPV4_TCP = struct.Struct("!14sBBHHHBBH4s4sHHIIBBHHH")
_IPV6_TCP = struct.Struct("!14sIHBB16s16sHHIIBBHHH")


def _word_sum(data: bytes) -> int:
    """Sum of big-endian 16-bit words, unfolded (even length)."""
    return sum(struct.unpack(f"!{len(data) // 2}H", data))


class _Template:
    """What every option-less frame of one direction of a flow shares, so building one is
    a struct pack and two checksums from precomputed partial sums; the bytes are those of
    :func:`ethernet_ip_tcp_frame` (and it raises the same errors, at the same point: the
    first frame)."""

    __slots__ = ("dst", "dst_port", "ethernet", "ip_sum", "src", "src_port", "tcp_sum", "v4")

    def __init__(self, flow: TcpFlow, from_client: bool) -> None:
        src_addr, dst_addr = (flow.client, flow.server) if from_client else (flow.server, flow.client)
        src, dst = _ip(src_addr[0]), _ip(dst_addr[0])
        if src.version != dst.version:
            raise ValueError(f"addresses of different families: {src_addr[0]} -> {dst_addr[0]}")
        src_mac, dst_mac = (MAC_CLIENT, MAC_SERVER) if from_client else (MAC_SERVER, MAC_CLIENT)
        self.v4 = src.version == 4
        self.ethernet = dst_mac + src_mac + struct.pack("!H", ETHERTYPE_IPV4 if self.v4 else ETHERTYPE_IPV6)
        self.src, self.dst = src.packed, dst.packed
        self.src_port, self.dst_port = src_addr[1], dst_addr[1]
        addresses = _word_sum(self.src + self.dst)
        # IPv4 header words but length, id and checksum: 0x4500, flags DF, TTL|proto, addresses.
        self.ip_sum = 0x4500 + 0x4000 + ((64 << 8) | IPPROTO_TCP) + addresses
        # Pseudo-header but length, and the TCP header words fixed here: ports, window.
        self.tcp_sum = addresses + IPPROTO_TCP + self.src_port + self.dst_port + TCP_WINDOW

    def frame(self, seq: int, ack: int, flags: int, payload: bytes, ip_id: int) -> bytes:
        return self.headers(seq, ack, flags, payload, ip_id) + payload

    def headers(self, seq: int, ack: int, flags: int, payload: bytes, ip_id: int) -> bytes:
        """The frame's Ethernet, IP and TCP headers (its checksums cover ``payload``):
        :meth:`frame` without copying the payload after them."""
        seq &= _U32
        ack &= _U32
        tcp_len = 20 + len(payload)
        # Checksums as RFC 1071 sums reduced mod 65535 (see _folded_sum); both sums are
        # never zero (they include the protocol number), so the fold is the remainder,
        # or 0xFFFF where it is 0.
        total = (self.tcp_sum + tcp_len + (seq >> 16) + (seq & 0xFFFF) + (ack >> 16) + (ack & 0xFFFF)
                 + ((5 << 12) | flags))
        if payload:
            value = int.from_bytes(payload, "big")
            total += value << 8 if len(payload) & 1 else value
        tcp_check = 0xFFFF - (total % 0xFFFF or 0xFFFF)
        if self.v4:
            if 20 + tcp_len > 0xFFFF:
                raise ValueError(f"TCP segment of {tcp_len} octets does not fit one IPv4 packet")
            ip_id &= 0xFFFF
            ip_check = 0xFFFF - ((self.ip_sum + 20 + tcp_len + ip_id) % 0xFFFF or 0xFFFF)
            return _IPV4_TCP.pack(
                self.ethernet, 0x45, 0, 20 + tcp_len, ip_id, 0x4000, 64, IPPROTO_TCP, ip_check, self.src, self.dst,
                self.src_port, self.dst_port, seq, ack, 5 << 4, flags, TCP_WINDOW, tcp_check, 0,
            )
        if tcp_len > 0xFFFF:
            raise ValueError(f"TCP segment of {tcp_len} octets does not fit one IPv6 packet")
        return _IPV6_TCP.pack(
            self.ethernet, 6 << 28, tcp_len, IPPROTO_TCP, 64, self.src, self.dst,
            self.src_port, self.dst_port, seq, ack, 5 << 4, flags, TCP_WINDOW, tcp_check, 0,
        )


class TcpFlow:
    """One synthetic TCP connection between a client and a server; tracks the next sequence
    number of each direction so every segment continues the stream and acknowledges
    everything the peer has sent so far."""

    __slots__ = ("_ip_id", "_next_seq", "_templates", "client", "server")

    def __init__(
        self,
        client: tuple[str, int],
        server: tuple[str, int],
        *,
        isn_client: int = 1000,
        isn_server: int = 5000,
    ) -> None:
        self.client = client
        self.server = server
        # Index 0: client -> server, 1: server -> client. Before the handshake the ISNs
        # count as consumed by SYN, so data may be emitted without a handshake.
        self._next_seq = [(isn_client + 1) & _U32, (isn_server + 1) & _U32]
        self._ip_id = [0, 0]
        self._templates: list[_Template | None] = [None, None]

    def next_seq(self, from_client: bool) -> int:
        return self._next_seq[0 if from_client else 1]

    def _frame(
        self,
        from_client: bool,
        flags: int,
        payload: bytes = b"",
        *,
        seq: int | None = None,
        ack: int | None = None,
        options: bytes = b"",
    ) -> bytes:
        side = 0 if from_client else 1
        if not options:  # every frame but SYNs: from the direction's cached template
            ip_id = self._ip_id[side]
            self._ip_id[side] = (ip_id + 1) & 0xFFFF
            template = self._templates[side]
            if template is None:
                template = self._templates[side] = _Template(self, from_client)
            return template.frame(
                self._next_seq[side] if seq is None else seq,
                self._next_seq[1 - side] if ack is None else ack,
                flags,
                payload,
                ip_id,
            )
        src, dst = (self.client, self.server) if from_client else (self.server, self.client)
        src_mac, dst_mac = (MAC_CLIENT, MAC_SERVER) if from_client else (MAC_SERVER, MAC_CLIENT)
        ip_id = self._ip_id[side]
        self._ip_id[side] = (ip_id + 1) & 0xFFFF
        return ethernet_ip_tcp_frame(
            src[0],
            dst[0],
            src[1],
            dst[1],
            self._next_seq[side] if seq is None else seq,
            self._next_seq[1 - side] if ack is None else ack,
            flags,
            payload,
            ip_id,
            src_mac=src_mac,
            dst_mac=dst_mac,
            tcp_options=options,
        )

    def handshake(self) -> list[bytes]:
        """SYN, SYN-ACK, ACK. Optional, but with it analysers know the window scale and that
        the stream starts here (no "previous segment not captured")."""
        # MSS (kind 2) 65495, NOP, window scale (kind 3) so windows never look full.
        options = struct.pack("!BBH", 2, 4, MAX_SEGMENT) + struct.pack("!BBBB", 1, 3, 3, TCP_WSCALE)
        isn_c = (self._next_seq[0] - 1) & _U32
        isn_s = (self._next_seq[1] - 1) & _U32
        return [
            self._frame(True, TCP_SYN, seq=isn_c, ack=0, options=options),
            self._frame(False, TCP_SYN | TCP_ACK, seq=isn_s, ack=self._next_seq[0], options=options),
            self._frame(True, TCP_ACK),
        ]

    def segment(self, from_client: bool, payload: bytes, mss: int = MAX_SEGMENT) -> list[bytes]:
        """PSH|ACK segments carrying ``payload``, split so each fits one IP packet (and
        ``mss``); an empty payload yields nothing."""
        side = 0 if from_client else 1
        limit = max(1, min(mss, MAX_SEGMENT))
        if 0 < len(payload) <= limit:  # a SIP message in one segment: nearly always
            frame = self._frame(from_client, TCP_PSH | TCP_ACK, payload)
            self._next_seq[side] = (self._next_seq[side] + len(payload)) & _U32
            return [frame]
        frames = []
        for start in range(0, len(payload), limit):
            piece = payload[start : start + limit]
            frames.append(self._frame(from_client, TCP_PSH | TCP_ACK, piece))
            self._next_seq[side] = (self._next_seq[side] + len(piece)) & _U32
        return frames

    def segment_headers(self, from_client: bool, payload: bytes) -> bytes:
        """The headers of :meth:`segment`'s one frame for a ``payload`` of 1 to
        ``MAX_SEGMENT`` octets (a SIP message nearly always): that frame is these + the
        payload, which a writer can then write from where it is instead of copying it into
        a frame first. The flow moves on as :meth:`segment` moves it."""
        if not 0 < len(payload) <= MAX_SEGMENT:
            raise ValueError(f"a payload of {len(payload)} octets is not one segment's")
        side = 0 if from_client else 1
        ip_id = self._ip_id[side]
        self._ip_id[side] = (ip_id + 1) & 0xFFFF
        template = self._templates[side]
        if template is None:
            template = self._templates[side] = _Template(self, from_client)
        next_seq = self._next_seq
        seq = next_seq[side]
        headers = template.headers(seq, next_seq[1 - side], TCP_PSH | TCP_ACK, payload, ip_id)
        next_seq[side] = (seq + len(payload)) & _U32
        return headers

    def fin(self, from_client: bool) -> list[bytes]:
        """FIN|ACK from one side and the peer's ACK of it: a complete half-close. Call it for
        both sides for a four-way close."""
        side = 0 if from_client else 1
        frames = [self._frame(from_client, TCP_FIN | TCP_ACK)]
        self._next_seq[side] = (self._next_seq[side] + 1) & _U32
        frames.append(self._frame(not from_client, TCP_ACK))
        return frames

    def rst(self, from_client: bool) -> list[bytes]:
        """RST|ACK from one side, for connections that ended abruptly."""
        return [self._frame(from_client, TCP_RST | TCP_ACK)]

"""pcap/pcapng encoders and synthetic TCP flows: byte-exact headers, checksums recomputed
independently, sequence continuity, and (with tshark installed) a real reader's verdict."""

from __future__ import annotations

import ipaddress
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from siptap.sansio import pcap
from siptap.sansio.pcap import TcpFlow, ethernet_ip_tcp_frame, internet_checksum

TS = 1700000000


def slow_checksum(data: bytes) -> int:
    """Independent RFC 1071 implementation: big-endian words, fold, complement."""
    if len(data) % 2:
        data += b"\x00"
    total = 0
    for i in range(0, len(data), 2):
        total += (data[i] << 8) | data[i + 1]
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def parse(frame: bytes) -> dict[str, object]:
    """Split an Ethernet/IP/TCP frame into fields the tests check."""
    dst_mac, src_mac, ethertype = frame[:6], frame[6:12], struct.unpack("!H", frame[12:14])[0]
    ip = frame[14:]
    out: dict[str, object] = {"dst_mac": dst_mac, "src_mac": src_mac, "ethertype": ethertype}
    if ethertype == 0x0800:
        ihl = (ip[0] & 0x0F) * 4
        total_len = struct.unpack("!H", ip[2:4])[0]
        assert total_len == len(ip)
        src, dst = ip[12:16], ip[16:20]
        tcp = ip[ihl:]
        pseudo = src + dst + struct.pack("!BBH", 0, 6, len(tcp))
        out.update(ip_header=ip[:ihl], ip_id=struct.unpack("!H", ip[4:6])[0], ttl=ip[8], proto=ip[9])
    else:
        assert ethertype == 0x86DD
        payload_len = struct.unpack("!H", ip[4:6])[0]
        assert payload_len == len(ip) - 40
        src, dst = ip[8:24], ip[24:40]
        tcp = ip[40:]
        pseudo = src + dst + struct.pack("!I3xB", len(tcp), 6)
        out.update(ip_header=ip[:40], proto=ip[6], ttl=ip[7])
    sport, dport, seq, ack, off, flags, win, csum, urg = struct.unpack("!HHIIBBHHH", tcp[:20])
    hlen = (off >> 4) * 4
    out.update(
        src=str(ipaddress.ip_address(src)),
        dst=str(ipaddress.ip_address(dst)),
        sport=sport,
        dport=dport,
        seq=seq,
        ack=ack,
        flags=flags,
        window=win,
        tcp_checksum=csum,
        options=tcp[20:hlen],
        payload=tcp[hlen:],
        tcp_sum_ok=slow_checksum(pseudo + tcp) == 0,
    )
    return out


# --- file headers --------------------------------------------------------------------------


def test_pcap_global_header_bytes() -> None:
    assert pcap.pcap_global_header() == bytes.fromhex("d4c3b2a1 0200 0400 00000000 00000000 00000400 01000000")
    assert pcap.pcap_global_header(65535, linktype=101)[-8:] == bytes.fromhex("ffff0000 65000000")


def test_pcap_record_bytes() -> None:
    rec = pcap.pcap_record(TS, 123456, b"\xaa\xbb\xcc")
    assert rec == struct.pack("<IIII", TS, 123456, 3, 3) + b"\xaa\xbb\xcc"
    assert rec[:8] == bytes.fromhex("00f15365 40e20100")


def test_pcapng_section_header_bytes() -> None:
    assert pcap.pcapng_section_header() == bytes.fromhex(
        "0a0d0d0a 1c000000 4d3c2b1a 0100 0000 ffffffffffffffff 1c000000"
    )
    with_appl = pcap.pcapng_section_header(b"siptap")
    # option 4 (shb_userappl), length 6, padded to 8, then opt_endofopt.
    assert with_appl == bytes.fromhex(
        "0a0d0d0a 2c000000 4d3c2b1a 0100 0000 ffffffffffffffff"
        "0400 0600 736970746170 0000 0000 0000 2c000000"
    )


def test_pcapng_interface_description_bytes() -> None:
    assert pcap.pcapng_interface_description() == bytes.fromhex("01000000 14000000 0100 0000 00000400 14000000")
    named = pcap.pcapng_interface_description(name=b"lo")
    assert named == bytes.fromhex("01000000 20000000 0100 0000 00000400 0200 0200 6c6f0000 0000 0000 20000000")


def test_pcapng_enhanced_packet_bytes() -> None:
    block = pcap.pcapng_enhanced_packet(TS, 5, b"\x01\x02\x03\x04\x05")
    ts = TS * 1_000_000 + 5
    expected = (
        struct.pack("<II", 6, 40)
        + struct.pack("<IIIII", 0, ts >> 32, ts & 0xFFFFFFFF, 5, 5)
        + b"\x01\x02\x03\x04\x05\x00\x00\x00"
        + struct.pack("<I", 40)
    )
    assert block == expected


def test_pcapng_decryption_secrets_bytes() -> None:
    text = b"CLIENT_RANDOM " + b"ab" * 32 + b" " + b"cd" * 48 + b"\n"
    assert len(text) == 176
    block = pcap.pcapng_decryption_secrets(text)
    # type, total length, secrets type, secrets length, data, total length again.
    assert block[:16] == struct.pack("<IIII", 0x0A, 20 + 176, 0x544C534B, 176)
    assert block[16:-4] == text
    assert block[-4:] == struct.pack("<I", 196)
    odd = pcap.pcapng_decryption_secrets(b"abcde")
    assert odd == struct.pack("<IIII", 0x0A, 28, 0x544C534B, 5) + b"abcde\x00\x00\x00" + struct.pack("<I", 28)


# --- checksums and frames ------------------------------------------------------------------


def test_internet_checksum_rfc1071_example() -> None:
    # RFC 1071 §3: words 0001 f203 f4f5 f6f7 sum to ddf2 (after folding); checksum is ~ddf2.
    data = bytes.fromhex("0001f203f4f5f6f7")
    assert internet_checksum(data) == 0x220D == slow_checksum(data)
    assert internet_checksum(b"\x01") == slow_checksum(b"\x01")


@pytest.mark.parametrize("payload", [b"", b"x", b"OPTIONS sip:a SIP/2.0\r\n\r\n", bytes(range(256)) * 7 + b"odd"])
def test_ipv4_frame_checksums_and_layout(payload: bytes) -> None:
    frame = ethernet_ip_tcp_frame(
        "192.0.2.10", "198.51.100.20", 40000, 5061, 123456789, 987654321, pcap.TCP_PSH | pcap.TCP_ACK, payload, 77
    )
    f = parse(frame)
    assert f["dst_mac"] == pcap.MAC_SERVER and f["src_mac"] == pcap.MAC_CLIENT
    assert f["ethertype"] == 0x0800
    ip_header = f["ip_header"]
    assert isinstance(ip_header, bytes)
    assert slow_checksum(ip_header) == 0  # a correct header sums to 0xffff
    assert ip_header[:10] == struct.pack("!BBHHHBB", 0x45, 0, 40 + len(payload), 77, 0x4000, 64, 6)
    assert f["tcp_sum_ok"]
    assert (f["src"], f["dst"], f["sport"], f["dport"]) == ("192.0.2.10", "198.51.100.20", 40000, 5061)
    assert (f["seq"], f["ack"], f["flags"], f["payload"]) == (123456789, 987654321, 0x18, payload)
    assert len(frame) == 14 + 20 + 20 + len(payload)


@pytest.mark.parametrize("payload", [b"", b"SIP/2.0 200 OK\r\n\r\n", b"odd"])
def test_ipv6_frame_checksums_and_layout(payload: bytes) -> None:
    frame = ethernet_ip_tcp_frame("2001:db8::1", "2001:db8::2", 5061, 40000, 1, 2, pcap.TCP_ACK, payload)
    f = parse(frame)
    assert f["ethertype"] == 0x86DD
    assert f["ip_header"] == (
        struct.pack("!IHBB", 0x60000000, 20 + len(payload), 6, 64)
        + ipaddress.IPv6Address("2001:db8::1").packed
        + ipaddress.IPv6Address("2001:db8::2").packed
    )
    assert f["tcp_sum_ok"]
    assert (f["src"], f["sport"], f["payload"]) == ("2001:db8::1", 5061, payload)


def test_ipv4_mapped_addresses_written_as_ipv4() -> None:
    f = parse(ethernet_ip_tcp_frame("::ffff:10.0.0.1", "10.0.0.2", 1, 2, 0, 0, pcap.TCP_ACK))
    assert f["ethertype"] == 0x0800 and f["src"] == "10.0.0.1" and f["tcp_sum_ok"]


def test_frame_rejects_mixed_families_and_oversize() -> None:
    with pytest.raises(ValueError, match="families"):
        ethernet_ip_tcp_frame("10.0.0.1", "::1", 1, 2, 0, 0, pcap.TCP_ACK)
    with pytest.raises(ValueError, match="IPv4"):
        ethernet_ip_tcp_frame("10.0.0.1", "10.0.0.2", 1, 2, 0, 0, pcap.TCP_ACK, b"x" * (pcap.MAX_SEGMENT + 1))
    with pytest.raises(ValueError, match="options"):
        ethernet_ip_tcp_frame("10.0.0.1", "10.0.0.2", 1, 2, 0, 0, pcap.TCP_ACK, tcp_options=b"\x01")


# --- flows ---------------------------------------------------------------------------------


def test_handshake_frames() -> None:
    flow = TcpFlow(("127.0.0.1", 40000), ("127.0.0.1", 5061), isn_client=100, isn_server=900)
    syn, synack, ack = (parse(fr) for fr in flow.handshake())
    assert (syn["flags"], syn["seq"], syn["ack"], syn["sport"]) == (pcap.TCP_SYN, 100, 0, 40000)
    assert (synack["flags"], synack["seq"], synack["ack"], synack["sport"]) == (pcap.TCP_SYN | pcap.TCP_ACK, 900, 101, 5061)
    assert (ack["flags"], ack["seq"], ack["ack"]) == (pcap.TCP_ACK, 101, 901)
    assert synack["src_mac"] == pcap.MAC_SERVER and synack["dst_mac"] == pcap.MAC_CLIENT
    # MSS 65495, NOP, window scale 14.
    assert syn["options"] == bytes.fromhex("0204ffd7 0103030e")
    assert all(f["tcp_sum_ok"] for f in (syn, synack, ack))


def test_flow_sequence_numbers_are_continuous() -> None:
    flow = TcpFlow(("10.0.0.1", 40000), ("10.0.0.2", 5061))
    frames = flow.handshake()
    sent = {True: [b"INVITE ...", b"ACK ...", b"BYE ..."], False: [b"SIP/2.0 100", b"SIP/2.0 200"]}
    order = [True, False, False, True, True]
    for side in order:
        frames += flow.segment(side, sent[side].pop(0))
    parsed = [parse(fr) for fr in frames][3:]
    expect = {True: 1001, False: 5001}
    for side, f in zip(order, parsed):
        assert f["seq"] == expect[side]
        assert f["ack"] == expect[not side]
        assert f["flags"] == pcap.TCP_PSH | pcap.TCP_ACK
        assert f["tcp_sum_ok"]
        expect[side] += len(f["payload"])  # type: ignore[arg-type]
    assert flow.next_seq(True) == expect[True] and flow.next_seq(False) == expect[False]
    ids = [f["ip_id"] for f in parsed if f["sport"] == 40000]
    assert ids == [2, 3, 4]  # SYN and ACK used 0 and 1


def test_segment_splits_large_payloads() -> None:
    flow = TcpFlow(("10.0.0.1", 1), ("10.0.0.2", 2), isn_client=2**32 - 100)
    payload = bytes(range(256)) * 600  # 153600 octets
    frames = flow.segment(True, payload)
    parsed = [parse(fr) for fr in frames]
    assert [len(f["payload"]) for f in parsed] == [65495, 65495, 153600 - 2 * 65495]  # type: ignore[arg-type]
    assert b"".join(f["payload"] for f in parsed) == payload  # type: ignore[misc]
    assert [f["seq"] for f in parsed] == [2**32 - 99, (2**32 - 99 + 65495) % 2**32, (2**32 - 99 + 2 * 65495) % 2**32]
    assert all(f["tcp_sum_ok"] for f in parsed)
    assert flow.next_seq(True) == (2**32 - 99 + 153600) % 2**32
    small = flow.segment(False, b"abcdefghij", mss=4)
    assert [parse(fr)["payload"] for fr in small] == [b"abcd", b"efgh", b"ij"]
    assert flow.segment(True, b"") == []


def test_fin_and_rst() -> None:
    flow = TcpFlow(("::1", 40000), ("::1", 5061))
    flow.segment(True, b"hello")
    c_fin, s_ack = (parse(fr) for fr in flow.fin(True))
    assert (c_fin["flags"], c_fin["seq"], c_fin["ack"]) == (pcap.TCP_FIN | pcap.TCP_ACK, 1006, 5001)
    assert (s_ack["flags"], s_ack["seq"], s_ack["ack"], s_ack["sport"]) == (pcap.TCP_ACK, 5001, 1007, 5061)
    s_fin, c_ack = (parse(fr) for fr in flow.fin(False))
    assert (s_fin["seq"], s_fin["ack"], c_ack["seq"], c_ack["ack"]) == (5001, 1007, 1007, 5002)
    (rst,) = (parse(fr) for fr in flow.rst(True))
    assert rst["flags"] == pcap.TCP_RST | pcap.TCP_ACK and rst["tcp_sum_ok"]


# --- real readers --------------------------------------------------------------------------

CALL_ID = b"a84b4c76e66710@pc33.example.com"
OPTIONS = (
    b"OPTIONS sip:core@127.0.0.1:5061;transport=tls SIP/2.0\r\n"
    b"Via: SIP/2.0/TLS 127.0.0.1:40000;branch=z9hG4bK776asdhds\r\n"
    b"Max-Forwards: 70\r\n"
    b"From: <sip:sbc@example.com>;tag=1928301774\r\n"
    b"To: <sip:core@example.com>\r\n"
    b"Call-ID: " + CALL_ID + b"\r\n"
    b"CSeq: 63104 OPTIONS\r\n"
    b"Content-Length: 0\r\n\r\n"
)
OK = (
    b"SIP/2.0 200 OK\r\n"
    b"Via: SIP/2.0/TLS 127.0.0.1:40000;branch=z9hG4bK776asdhds\r\n"
    b"From: <sip:sbc@example.com>;tag=1928301774\r\n"
    b"To: <sip:core@example.com>;tag=a6c85cf\r\n"
    b"Call-ID: " + CALL_ID + b"\r\n"
    b"CSeq: 63104 OPTIONS\r\n"
    b"Content-Length: 0\r\n\r\n"
)
KEYLOG = b"CLIENT_RANDOM " + b"ab" * 32 + b" " + b"cd" * 48 + b"\n"

# tshark 4.0 registers 5061 as SIP over TLS; decode-as makes it cleartext SIP, which also
# lets SIP reassemble messages whose first segment is too short for the SIP heuristic.
TSHARK_FIELDS = [
    "-d", "tcp.port==5061,sip",
    "-o", "tcp.check_checksum:TRUE",
    "-o", "ip.check_checksum:TRUE",
    "-T", "fields", "-E", "separator=|",
    "-e", "sip.Method", "-e", "sip.Status-Code", "-e", "sip.Call-ID",
    "-e", "ip.src", "-e", "ipv6.src", "-e", "tcp.srcport",
    "-e", "tcp.analysis.flags", "-e", "tcp.checksum.status", "-e", "ip.checksum.status",
]  # fmt: skip


def flow_frames(client_ip: str, *, handshake: bool) -> list[bytes]:
    flow = TcpFlow((client_ip, 40000), (client_ip, 5061))
    frames = flow.handshake() if handshake else []
    frames += flow.segment(True, OPTIONS)
    # The 200 OK arrives in two pieces, as TLS records may cut it. sngrep 1.6 drops a message
    # whose first segment is shorter than about 14 octets ("SIP/2.0 200 OK"): the cut is at 40.
    frames += flow.segment(False, OK[:40]) + flow.segment(False, OK[40:])
    if handshake:
        frames += flow.fin(True) + flow.fin(False)
    return frames


def write_pcap(path: Path, frames: list[bytes]) -> None:
    path.write_bytes(
        pcap.pcap_global_header() + b"".join(pcap.pcap_record(TS + i, i * 1000, fr) for i, fr in enumerate(frames))
    )


def write_pcapng(path: Path, frames: list[bytes], keylog: bytes | None = None) -> None:
    blocks = [pcap.pcapng_section_header(b"siptap"), pcap.pcapng_interface_description(name=b"siptap")]
    if keylog is not None:
        blocks.append(pcap.pcapng_decryption_secrets(keylog))
    blocks += [pcap.pcapng_enhanced_packet(TS + i, i * 1000, fr) for i, fr in enumerate(frames)]
    path.write_bytes(b"".join(blocks))


def tshark_rows(path: Path) -> list[list[str]]:
    result = subprocess.run(
        ["tshark", "-r", str(path), *TSHARK_FIELDS], capture_output=True, text=True, timeout=60, check=True
    )
    return [line.split("|") for line in result.stdout.splitlines()]


needs_tshark = pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark not installed")


@pytest.mark.peers
@needs_tshark
@pytest.mark.parametrize("client_ip", ["127.0.0.1", "::1"])
@pytest.mark.parametrize("fmt", ["pcap", "pcapng"])
@pytest.mark.parametrize("handshake", [True, False])
def test_tshark_reads_cleartext_sip(tmp_path: Path, client_ip: str, fmt: str, handshake: bool) -> None:
    path = tmp_path / f"sip.{fmt}"
    frames = flow_frames(client_ip, handshake=handshake)
    (write_pcap if fmt == "pcap" else write_pcapng)(path, frames)
    rows = tshark_rows(path)
    assert len(rows) == len(frames)
    v4 = client_ip == "127.0.0.1"
    for _method, _status, _call_id, ip_src, ip6_src, sport, analysis, tcp_sum, ip_sum in rows:
        assert analysis == ""  # no retransmission / out-of-order / lost-segment complaints
        assert tcp_sum == "1"  # 1 = good
        assert ip_sum == ("1" if v4 else "")
        assert (ip_src if v4 else ip6_src) == client_ip
        assert sport in ("40000", "5061")
    sip = [(r[0], r[1], r[2], r[5]) for r in rows if r[2]]
    assert sip == [
        ("OPTIONS", "", CALL_ID.decode(), "40000"),
        ("", "200", CALL_ID.decode(), "5061"),
    ]


@pytest.mark.peers
@needs_tshark
def test_tshark_reassembles_large_split_message(tmp_path: Path) -> None:
    body = b"v=0\r\n" + b"a=x-filler:" + b"z" * 150_000 + b"\r\n"
    message = OPTIONS.replace(b"Content-Length: 0", b"Content-Type: application/sdp\r\nContent-Length: %d" % len(body))
    flow = TcpFlow(("10.0.0.1", 40000), ("10.0.0.2", 5061))
    frames = flow.handshake() + flow.segment(True, message[:20]) + flow.segment(True, message[20:] + body)
    frames += flow.segment(False, OK)
    path = tmp_path / "big.pcap"
    write_pcap(path, frames)
    rows = tshark_rows(path)
    assert all(r[6] == "" and r[7] == "1" and r[8] == "1" for r in rows)
    assert [(r[0], r[1], r[2]) for r in rows if r[2]] == [
        ("OPTIONS", "", CALL_ID.decode()),
        ("", "200", CALL_ID.decode()),
    ]


@pytest.mark.peers
@pytest.mark.skipif(shutil.which("capinfos") is None, reason="capinfos not installed")
@needs_tshark
def test_pcapng_decryption_secrets_block_is_recognised(tmp_path: Path) -> None:
    path = tmp_path / "dsb.pcapng"
    write_pcapng(path, flow_frames("127.0.0.1", handshake=True), keylog=KEYLOG)
    info = subprocess.run(["capinfos", str(path)], capture_output=True, text=True, timeout=60, check=True).stdout
    assert "Number of decryption secrets in file: 1" in info
    rows = tshark_rows(path)
    assert [r[1] for r in rows if r[2]] == ["", "200"]


@pytest.mark.peers
@pytest.mark.skipif(shutil.which("sngrep") is None, reason="sngrep not installed")
@pytest.mark.skipif(shutil.which("capinfos") is None, reason="capinfos not installed")
@pytest.mark.parametrize("client_ip", ["127.0.0.1", "::1"])
def test_sngrep_reads_cleartext_sip(tmp_path: Path, client_ip: str) -> None:
    # sngrep has no text output; -N -O saves the packets of the dialogs it recognised.
    src, out = tmp_path / "in.pcap", tmp_path / "out.pcap"
    write_pcap(src, flow_frames(client_ip, handshake=True))
    result = subprocess.run(
        ["sngrep", "-I", str(src), "-N", "-O", str(out)], capture_output=True, text=True, timeout=60
    )
    assert "Dialog count: 1" in result.stdout
    info = subprocess.run(["capinfos", "-c", str(out)], capture_output=True, text=True, timeout=60, check=True)
    # OPTIONS, and the 200 OK's two segments.
    assert "Number of packets:   3" in info.stdout

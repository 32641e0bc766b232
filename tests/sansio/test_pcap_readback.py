"""Property: what the pcap encoder writes, a real reader reads back byte for byte.

Random SIP-ish payloads go through :class:`siptap.sansio.pcap.TcpFlow` (both directions,
random MSS, IPv4 or IPv6, sequence numbers that may wrap) into pcap records or pcapng
enhanced packet blocks; they are read back with :mod:`siptap.sansio.pcap_reader` (always) and
with tshark (a reader we did not write; a ``peers`` test): every frame carries exactly the
payload segment written, in order, from the right side, at the right sequence number, with a
good checksum. The framer's split-invariance and the HEP round trip have their own properties
in test_sip_framer.py and test_hep.py.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from siptap.sansio import pcap
from siptap.sansio.pcap_reader import decode_tcp, read_capture
from tests.integration.capture import require

TS = 1700000000
U32 = 0xFFFFFFFF

_LINES = st.sampled_from([
    b"INVITE sip:+15551230001@core.example.com SIP/2.0\r\n", b"SIP/2.0 200 OK\r\n", b"SIP/2.0 100 Trying\r\n",
    b"Via: SIP/2.0/TLS 192.0.2.10:5061;branch=z9hG4bK74bf9\r\n", b"Call-ID: 3848276298@esbc\r\n",
    b"CSeq: 1 INVITE\r\n", b"l: 0\r\n", b"Content-Length: 12\r\n", b"\r\n", b"\r\n\r\n",
    b"a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz\r\n",
])
_PAYLOAD = st.one_of(
    st.lists(_LINES, min_size=1, max_size=12).map(b"".join),
    st.binary(min_size=1, max_size=3000),  # anything: a TLS record, a UTF-8 body, NULs
)
_ADDRESSES = st.sampled_from([
    (("192.0.2.10", 40123), ("198.51.100.5", 5061)),
    (("::1", 40000), ("::1", 15061)),
    (("2001:db8::1", 1), ("2001:db8::2", 65535)),
    (("::ffff:127.0.0.1", 5060), ("127.0.0.2", 5061)),  # IPv4-mapped: written as IPv4
])


@st.composite
def flows(draw: st.DrawFn) -> dict:
    client, server = draw(_ADDRESSES)
    return {
        "client": client,
        "server": server,
        "isn": (draw(st.sampled_from([0, 1000, U32 - 100, U32])), draw(st.integers(0, U32))),
        "mss": draw(st.sampled_from([pcap.MAX_SEGMENT, 1460, 536, 7])),
        "handshake": draw(st.booleans()),
        "messages": draw(st.lists(st.tuples(st.booleans(), _PAYLOAD), min_size=1, max_size=8)),
        "format": draw(st.sampled_from(["pcap", "pcapng"])),
    }


def written(flow_spec: dict) -> tuple[bytes, list[tuple[bool, int, bytes]]]:
    """The capture file, and per frame (from_client, seq, payload) as the encoder meant it."""
    flow = pcap.TcpFlow(flow_spec["client"], flow_spec["server"],
                        isn_client=flow_spec["isn"][0], isn_server=flow_spec["isn"][1])
    frames: list[bytes] = []
    expected: list[tuple[bool, int, bytes]] = []
    if flow_spec["handshake"]:
        frames += flow.handshake()
        expected += [(True, flow_spec["isn"][0], b""), (False, flow_spec["isn"][1], b""),
                     (True, (flow_spec["isn"][0] + 1) & U32, b"")]
    for from_client, payload in flow_spec["messages"]:
        seq = flow.next_seq(from_client)
        limit = min(flow_spec["mss"], pcap.MAX_SEGMENT)
        segments = flow.segment(from_client, payload, flow_spec["mss"])
        for i, frame in enumerate(segments):
            piece = payload[i * limit : (i + 1) * limit]
            expected.append((from_client, (seq + i * limit) & U32, piece))
            frames.append(frame)
    if flow_spec["format"] == "pcap":
        blob = pcap.pcap_global_header() + b"".join(
            pcap.pcap_record(TS + i // 1000, i % 1000, f) for i, f in enumerate(frames))
    else:
        blob = pcap.pcapng_section_header(b"siptap") + pcap.pcapng_interface_description(name=b"siptap") + b"".join(
            pcap.pcapng_enhanced_packet(TS + i // 1000, i % 1000, f) for i, f in enumerate(frames))
    return blob, expected


def _canonical(address: tuple[str, int]) -> tuple[str, int]:
    host = address[0].removeprefix("::ffff:") if address[0].count(".") == 3 else address[0]
    return host, address[1]


@settings(max_examples=150, deadline=None)
@given(flows())
def test_pcap_reader_reads_back_every_segment(flow_spec: dict) -> None:
    blob, expected = written(flow_spec)
    capture = read_capture(blob)
    assert capture.format == flow_spec["format"]
    assert len(capture.packets) == len(expected)
    client, server = _canonical(flow_spec["client"]), _canonical(flow_spec["server"])
    for i, (packet, (from_client, seq, payload)) in enumerate(zip(capture.packets, expected)):
        assert packet.ts_us == (TS + i // 1000) * 1_000_000 + i % 1000
        segment = decode_tcp(packet.data, packet.linktype)
        assert segment is not None
        assert (segment.src, segment.dst) == ((client, server) if from_client else (server, client))
        assert segment.seq == seq
        assert segment.payload == payload
    for side in (True, False):  # and the streams are what was sent
        assert b"".join(s.payload for s in (decode_tcp(p.data) for p in capture.packets)
                        if s is not None and s.src == (client if side else server)) == b"".join(
            payload for from_client, payload in flow_spec["messages"] if from_client == side)


@pytest.mark.peers
@require("tshark")
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(flows())
def test_tshark_reads_back_every_segment(tmp_path: Path, flow_spec: dict) -> None:
    blob, expected = written(flow_spec)
    path = tmp_path / f"flow.{flow_spec['format']}"
    path.write_bytes(blob)
    # SIP off and no reassembly: every frame shows its own payload as tcp.payload.
    result = subprocess.run(
        ["tshark", "-r", str(path), "-o", "tcp.desegment_tcp_streams:FALSE", "-o", "tcp.check_checksum:TRUE",
         "-o", "tcp.relative_sequence_numbers:FALSE", "--disable-protocol", "sip",
         "-T", "fields", "-E", "separator=|", "-e", "tcp.srcport", "-e", "tcp.seq_raw", "-e", "tcp.payload",
         "-e", "tcp.checksum.status"],
        capture_output=True, text=True, timeout=60, check=True,
    )
    rows = [line.split("|") for line in result.stdout.splitlines()]
    assert len(rows) == len(expected)
    client_port, server_port = flow_spec["client"][1], flow_spec["server"][1]
    for row, (from_client, seq, payload) in zip(rows, expected):
        assert row == [str(client_port if from_client else server_port), str(seq), payload.hex(), "1"], (row, payload)

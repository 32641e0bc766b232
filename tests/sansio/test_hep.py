"""HEPv3 encoder/decoder: golden vectors from the rev-37 spec and hand-built IPv6 bytes."""

from __future__ import annotations

import ipaddress
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from siptap.sansio import hep
from siptap.sansio.hep import HepPacket, decode, encode, frame_length, max_payload_len, split_timestamp

# hep3.md §7: the spec's 113-octet worked example, verbatim.
SPEC_EXAMPLE = bytes.fromhex(
    "48455033"
    "0071"
    "00000001000702"
    "00000002000711"
    "00000003000ad4ca0001"
    "00000004000a527400d3"
    "0000000700082eea"
    "00000008000813c4"
    "00000009000a4e4982cb"
    "0000000a000a0001d4c0"
    "0000000b000701"
    "0000000c000a000000e4"
    "0000000f0014494e56495445207369703a626f62"
)


def spec_packet(**over: object) -> HepPacket:
    fields: dict[str, object] = dict(
        src_ip="212.202.0.1",
        dst_ip="82.116.0.211",
        src_port=12010,
        dst_port=5060,
        ts_sec=1313440459,
        ts_usec=120000,
        payload=b"INVITE sip:bob",
        ip_proto=hep.IPPROTO_UDP,
        proto_type=hep.PROTO_SIP,
        capture_id=228,
    )
    fields.update(over)
    return HepPacket(**fields)  # type: ignore[arg-type]  # hypothesis draws the keywords HepPacket takes


def chunk(type_id: int, value: bytes) -> bytes:
    return struct.pack("!HHH", 0, type_id, 6 + len(value)) + value


def test_spec_worked_example_is_byte_exact() -> None:
    assert len(SPEC_EXAMPLE) == 113
    assert encode(spec_packet()) == SPEC_EXAMPLE


def test_spec_worked_example_decodes() -> None:
    assert decode(SPEC_EXAMPLE) == spec_packet()


def test_ipv6_golden() -> None:
    src, dst = "2001:db8::1", "2001:db8::5:6"
    packet = HepPacket(
        src_ip=src,
        dst_ip=dst,
        src_port=40000,
        dst_port=5061,
        ts_sec=1700000000,
        ts_usec=999999,
        payload=b"OPTIONS sip:a SIP/2.0\r\n\r\n",
        ip_proto=hep.IPPROTO_IDP_TLS,
        capture_id=0xDEADBEEF,
    )
    body = (
        chunk(0x0001, b"\x0a")  # AF_INET6 on Linux
        + chunk(0x0002, b"\x16")  # 22: Kamailio's TLS marker
        + chunk(0x0005, bytes.fromhex("20010db8000000000000000000000001"))
        + chunk(0x0006, bytes.fromhex("20010db8000000000000000000050006"))
        + chunk(0x0007, b"\x9c\x40")
        + chunk(0x0008, b"\x13\xc5")
        + chunk(0x0009, bytes.fromhex("6553f100"))
        + chunk(0x000A, bytes.fromhex("000f423f"))
        + chunk(0x000B, b"\x01")
        + chunk(0x000C, bytes.fromhex("deadbeef"))
        + chunk(0x000F, b"OPTIONS sip:a SIP/2.0\r\n\r\n")
    )
    expected = b"HEP3" + struct.pack("!H", 6 + len(body)) + body
    assert encode(packet) == expected
    assert len(expected) == 6 + 7 + 7 + 22 + 22 + 8 + 8 + 10 + 10 + 7 + 10 + 6 + 25
    assert decode(expected) == packet


def test_optional_chunks_order_correlation_before_payload() -> None:
    packet = spec_packet(auth_key=b"secret", correlation_id=b"abc@host", node_name=b"siptap-1")
    data = encode(packet)
    tail = chunk(0x000E, b"secret") + chunk(0x0011, b"abc@host") + chunk(0x0013, b"siptap-1")
    tail += chunk(0x000F, b"INVITE sip:bob")
    # Same prefix as the spec example up to the capture id chunk, then e, 11, 13, f.
    assert data[6:] == SPEC_EXAMPLE[6:-20] + tail
    assert struct.unpack("!H", data[4:6])[0] == len(data)
    assert data.index(b"\x00\x11") < data.index(b"\x00\x00\x00\x0f")
    assert decode(data) == packet


def test_auth_key_chunk_is_plain_text() -> None:
    data = encode(spec_packet(auth_key=b"myHep"))
    assert chunk(0x000E, b"myHep") in data
    assert decode(data).auth_key == b"myHep"
    assert decode(data).correlation_id is None


def test_auth_key_chunk_bytes_from_the_encoder_the_sinks_use() -> None:
    # What a collector checks (heplify-server's HEPAuthKey, Kamailio's $hep(0x00e)): vendor 0,
    # type 0x000E, length = 6 + key, the key as is; once per packet, for every packet of an
    # encoder built with it (the HEP sink's cached encoder), and absent without one.
    with_key = hep.Encoder(ip_proto=hep.IPPROTO_TCP, proto_type=hep.PROTO_SIP, capture_id=7, auth_key=b"lab-s3cret")
    without = hep.Encoder(ip_proto=hep.IPPROTO_TCP, proto_type=hep.PROTO_SIP, capture_id=7)
    cache: dict[tuple[tuple[str, int], tuple[str, int]], bytes] = {}
    for payload in (b"OPTIONS sip:a SIP/2.0\r\n\r\n", b"SIP/2.0 200 OK\r\n\r\n"):
        data = with_key.encode(1.5, ("192.0.2.1", 5061), ("192.0.2.2", 40000), payload, None, pair_cache=cache)
        assert data.count(b"\x00\x00\x00\x0e\x00\x10lab-s3cret") == 1
        assert decode(data).auth_key == b"lab-s3cret" and decode(data).payload == payload
        plain = without.encode(1.5, ("192.0.2.1", 5061), ("192.0.2.2", 40000), payload, None)
        assert b"lab-s3cret" not in plain and decode(plain).auth_key is None
        assert len(data) == len(plain) + 6 + len(b"lab-s3cret")


def test_log_type_and_empty_payload() -> None:
    packet = spec_packet(proto_type=hep.PROTO_LOG, payload=b"", correlation_id=b"cid")
    data = encode(packet)
    assert data[-6:] == chunk(0x000F, b"")
    assert decode(data) == packet


def test_ipv4_mapped_addresses_become_ipv4() -> None:
    packet = spec_packet(src_ip="::ffff:10.0.0.1", dst_ip="10.0.0.2")
    assert packet.src_ip == "10.0.0.1"
    assert encode(packet)[6:13] == chunk(0x0001, b"\x02")


def test_mixed_families_rejected() -> None:
    with pytest.raises(ValueError, match="family"):
        spec_packet(src_ip="10.0.0.1", dst_ip="::1")


@pytest.mark.parametrize(
    "field,value",
    [("src_port", 65536), ("dst_port", -1), ("ts_usec", 1_000_000), ("capture_id", 2**32), ("ip_proto", 256)],
)
def test_out_of_range_fields_rejected(field: str, value: int) -> None:
    with pytest.raises(ValueError, match=field):
        spec_packet(**{field: value})


def test_oversize_raises_and_max_payload_fits() -> None:
    base = spec_packet(correlation_id=b"x" * 40)
    limit = max_payload_len(base)
    fits = spec_packet(correlation_id=b"x" * 40, payload=b"a" * limit)
    assert len(encode(fits)) == 65535
    with pytest.raises(ValueError, match="HEP packet too large"):
        encode(spec_packet(correlation_id=b"x" * 40, payload=b"a" * (limit + 1)))


def test_max_payload_len_ipv6() -> None:
    packet = HepPacket(src_ip="::1", dst_ip="::1", src_port=1, dst_port=2, ts_sec=0, ts_usec=0, payload=b"")
    limit = max_payload_len(packet)
    assert limit == 65535 - (6 + 7 + 7 + 22 + 22 + 8 + 8 + 10 + 10 + 7 + 10 + 6)
    big = HepPacket(src_ip="::1", dst_ip="::1", src_port=1, dst_port=2, ts_sec=0, ts_usec=0, payload=b"z" * limit)
    assert len(encode(big)) == 65535


def test_split_timestamp() -> None:
    assert split_timestamp(1313440459.12) == (1313440459, 120000)
    assert split_timestamp(1.9999999) == (2, 0)
    packet = HepPacket.at(
        1313440459.12,
        src_ip="212.202.0.1",
        dst_ip="82.116.0.211",
        src_port=12010,
        dst_port=5060,
        payload=b"INVITE sip:bob",
        ip_proto=17,
        capture_id=228,
    )
    assert encode(packet) == SPEC_EXAMPLE


@pytest.mark.parametrize(
    "data,match",
    [
        (b"HEP2" + SPEC_EXAMPLE[4:], "magic"),
        (SPEC_EXAMPLE[:-1], "does not match"),
        (SPEC_EXAMPLE + b"\x00", "does not match"),
        (b"HEP3\x00\x03", "shorter"),
        (b"HEP", "does not match"),
        # A chunk whose length runs past the packet end.
        (b"HEP3\x00\x0d" + struct.pack("!HHH", 0, 1, 8) + b"\x02", "chunk length"),
        # A chunk length below its own header size.
        (b"HEP3\x00\x0c" + struct.pack("!HHH", 0, 1, 5), "chunk length"),
        (b"HEP3\x00\x08\x00\x00", "truncated"),
        # Mandatory chunks missing.
        (b"HEP3\x00\x0d" + chunk(1, b"\x02"), "lacks chunk"),
        # A uint8 chunk with the wrong size.
        (b"HEP3\x00\x0e" + chunk(1, b"\x00\x02"), "expected 1"),
    ],
)
def test_decode_is_strict(data: bytes, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        decode(data)


def test_decode_rejects_unknown_family() -> None:
    bad = SPEC_EXAMPLE[:12] + b"\x07" + SPEC_EXAMPLE[13:]
    with pytest.raises(ValueError, match="family"):
        decode(bad)


def test_decode_skips_vendor_and_unknown_chunks() -> None:
    extra = struct.pack("!HHH", 2, 0x0020, 8) + b"\x00\x01" + chunk(0x0012, b"\x00\x64")
    body = SPEC_EXAMPLE[6:-20] + extra + SPEC_EXAMPLE[-20:]
    data = b"HEP3" + struct.pack("!H", 6 + len(body)) + body
    assert decode(data) == spec_packet()


def test_frame_length_splits_tcp_stream() -> None:
    first = encode(spec_packet(payload=b"one"))
    second = encode(spec_packet(payload=b"second message"))
    stream = first + second
    assert frame_length(stream[:5]) is None
    n = frame_length(stream)
    assert n == len(first)
    assert decode(stream[:n]).payload == b"one"
    rest = stream[n:]
    assert decode(rest[: frame_length(rest)]).payload == b"second message"
    with pytest.raises(ValueError, match="magic"):
        frame_length(b"GET / HTTP/1.1\r\n")


def test_packet_is_frozen() -> None:
    packet = spec_packet()
    with pytest.raises(AttributeError):
        packet.src_port = 1  # type: ignore[misc]  # the point: the packet is frozen


ipv4 = st.ip_addresses(v=4).map(str)
ipv6 = st.ip_addresses(v=6).filter(lambda a: a.ipv4_mapped is None).map(str)
opt_bytes = st.none() | st.binary(max_size=64)


@st.composite
def packets(draw: st.DrawFn) -> HepPacket:
    family = draw(st.sampled_from([ipv4, ipv6]))
    return HepPacket(
        src_ip=draw(family),
        dst_ip=draw(family),
        src_port=draw(st.integers(0, 65535)),
        dst_port=draw(st.integers(0, 65535)),
        ts_sec=draw(st.integers(0, 2**32 - 1)),
        ts_usec=draw(st.integers(0, 999_999)),
        payload=draw(st.binary(max_size=2048)),
        ip_proto=draw(st.sampled_from([hep.IPPROTO_TCP, hep.IPPROTO_UDP, hep.IPPROTO_IDP_TLS])),
        proto_type=draw(st.sampled_from([hep.PROTO_SIP, hep.PROTO_LOG])),
        capture_id=draw(st.integers(0, 2**32 - 1)),
        auth_key=draw(opt_bytes),
        correlation_id=draw(opt_bytes),
        node_name=draw(opt_bytes),
    )


@given(packets())
def test_round_trip(packet: HepPacket) -> None:
    data = encode(packet)
    assert data[:4] == b"HEP3"
    assert struct.unpack("!H", data[4:6])[0] == len(data)
    assert frame_length(data) == len(data)
    assert decode(data) == packet
    assert len(data) + max_payload_len(packet) - len(packet.payload) == 65535
    family = data[12]
    assert family == (10 if ipaddress.ip_address(packet.src_ip).version == 6 else 2)

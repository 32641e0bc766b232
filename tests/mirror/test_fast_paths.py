"""The mirror's fast paths produce exactly what the straightforward code produces: HEP
packets from the cached encoder, JSON lines spliced from pre-rendered leg members, the
once-per-second ISO timestamps, frames from a flow's cached templates, and the checksum
computed as a big integer. The references are the original, obvious implementations."""

from __future__ import annotations

import gc
import ipaddress
import math
import struct
import types
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from hypothesis import example, given, settings
from hypothesis import strategies as st

from siptap.config.mirror import HepSinkSettings
from siptap.mirror.events import Address, LegInfo, SipEvent, SrtpKeyEvent
from siptap.mirror.hep import HepEncoder
from siptap.mirror.render import (
    _number,
    _stamp,
    event_to_dict,
    iso_utc,
    iso_utc_reference,
    sip_event_json,
    sip_summary,
    sip_summary_json,
    srtp_event_json,
    to_json,
)
from siptap.mirror.srtp import _token, rtp_decoder_args, srtp_key_line
from siptap.sansio import hep, pcap
from siptap.sansio.sdp_crypto import SdesKey
from siptap.sansio.sip_fields import read_fields
from siptap.sansio.sip_message import SipParseError, parse_message

from .helpers import TS, dialog, key_event, srtp_event
from .test_golden import golden_events

AddressPair = tuple[Address, Address]


def rfc1071_loop(data: bytes) -> int:
    """RFC 1071 checksum, one 16-bit word at a time."""
    if len(data) % 2:
        data += b"\x00"
    total = 0
    for (word,) in struct.iter_unpack("!H", data):
        total += word
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


@given(st.binary(max_size=3000))
@example(b"")
@example(b"\x00" * 7)
@example(b"\xff\xff" * 3)
@example(b"\xff\xff\x00\x00")
@example(b"\xff")
def test_checksum_matches_rfc1071_loop(data: bytes) -> None:
    assert pcap.internet_checksum(data) == rfc1071_loop(data)


ipv4 = st.ip_addresses(v=4).map(str)
ipv6 = st.ip_addresses(v=6).map(str)
mapped = ipv4.map(lambda a: f"::ffff:{a}")
ports = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFFFFFF)


@st.composite
def address_pairs(draw: st.DrawFn) -> AddressPair:
    family = draw(st.sampled_from(["4", "6", "mapped", "mixed"]))
    if family == "4":
        a, b = draw(ipv4), draw(st.one_of(ipv4, mapped))
    elif family == "6":
        a, b = draw(ipv6), draw(ipv6)
    elif family == "mapped":
        a, b = draw(mapped), draw(ipv4)
    else:
        a, b = draw(ipv4), draw(ipv6)
    return (a, draw(ports)), (b, draw(ports))


def outcome(fn: Callable[..., object], *args: object, **kwargs: object) -> object:
    try:
        return fn(*args, **kwargs)
    except ValueError as exc:
        return ("ValueError", str(exc))


@settings(max_examples=300, deadline=None)  # byte identity, not speed: a loaded machine must not fail it
@given(
    pair=address_pairs(),
    seq=u32,
    ack=u32,
    flags=st.sampled_from([pcap.TCP_PSH | pcap.TCP_ACK, pcap.TCP_ACK, pcap.TCP_FIN | pcap.TCP_ACK, pcap.TCP_RST | pcap.TCP_ACK]),
    payload=st.binary(max_size=2000),
    ip_id=st.integers(0, 0xFFFF),
    from_client=st.booleans(),
)
def test_template_frames_match_reference(pair: AddressPair, seq: int, ack: int, flags: int, payload: bytes, ip_id: int,
                                         from_client: bool) -> None:
    client, server = pair
    flow = pcap.TcpFlow(client, server)
    flow._ip_id = [ip_id, ip_id]
    src, dst = (client, server) if from_client else (server, client)
    macs = (pcap.MAC_CLIENT, pcap.MAC_SERVER) if from_client else (pcap.MAC_SERVER, pcap.MAC_CLIENT)
    expected = outcome(pcap.ethernet_ip_tcp_frame, src[0], dst[0], src[1], dst[1], seq, ack, flags, payload, ip_id,
                       src_mac=macs[0], dst_mac=macs[1])
    assert outcome(flow._frame, from_client, flags, payload, seq=seq, ack=ack) == expected
    # a second frame of the same direction comes from the cached template
    expected2 = outcome(pcap.ethernet_ip_tcp_frame, src[0], dst[0], src[1], dst[1], seq, ack, flags, payload,
                        (ip_id + 1) & 0xFFFF, src_mac=macs[0], dst_mac=macs[1])
    assert outcome(flow._frame, from_client, flags, payload, seq=seq, ack=ack) == expected2


def test_large_segments_match_reference() -> None:
    payload = bytes(range(256)) * 400  # splits into two segments
    flow = pcap.TcpFlow(("192.0.2.10", 40000), ("192.0.2.1", 5061))
    frames = flow.handshake() + flow.segment(True, payload) + flow.fin(False)
    seq_c, seq_s = 1001, 5001
    expected = frames[:3]
    first, second = payload[: pcap.MAX_SEGMENT], payload[pcap.MAX_SEGMENT :]
    for i, piece in enumerate((first, second)):
        expected.append(pcap.ethernet_ip_tcp_frame("192.0.2.10", "192.0.2.1", 40000, 5061, seq_c, seq_s,
                                                   pcap.TCP_PSH | pcap.TCP_ACK, piece, 2 + i))  # SYN, ACK took 0, 1
        seq_c += len(piece)
    assert frames[3:5] == expected[3:5]
    assert len(frames) == 7


# --- HEP ---------------------------------------------------------------------------------


def reference_packet(ts: float, src: Address, dst: Address, payload: bytes, **fields: Any) -> bytes:
    return hep.encode(hep.HepPacket.at(ts, src_ip=src[0], dst_ip=dst[0], src_port=src[1], dst_port=dst[1],
                                       payload=payload, **fields))


@settings(max_examples=300, deadline=None)  # byte identity, not speed: a loaded machine must not fail it
@given(
    pair=address_pairs(),
    ts=st.one_of(st.floats(-10, 2**32 + 10, allow_nan=False), st.just(TS), st.integers(0, 2**32)),
    payload=st.one_of(st.binary(max_size=300), st.integers(65400, 65600).map(lambda n: b"x" * n)),
    correlation=st.one_of(st.none(), st.binary(min_size=1, max_size=80)),
    ip_proto=st.sampled_from([hep.IPPROTO_TCP, hep.IPPROTO_IDP_TLS]),
    proto_type=st.sampled_from([hep.PROTO_SIP, hep.PROTO_LOG]),
    capture_id=st.sampled_from([0, 2001, 0xFFFFFFFF, 2**32, -1]),
    auth_key=st.one_of(st.none(), st.binary(min_size=1, max_size=20)),
    node_name=st.one_of(st.none(), st.binary(min_size=1, max_size=20)),
)
def test_hep_encoder_matches_reference(pair: AddressPair, ts: float, payload: bytes, correlation: bytes | None,
                                       ip_proto: int, proto_type: int, capture_id: int, auth_key: bytes | None,
                                       node_name: bytes | None) -> None:
    src, dst = pair
    fields = dict(ip_proto=ip_proto, proto_type=proto_type, capture_id=capture_id, auth_key=auth_key,
                  node_name=node_name)
    encoder = hep.Encoder(**fields)
    expected = outcome(reference_packet, ts, src, dst, payload, correlation_id=correlation, **fields)
    assert outcome(encoder.encode, ts, src, dst, payload, correlation) == expected
    assert outcome(encoder.encode, ts, src, dst, payload, correlation) == expected  # cached pair


def test_hep_sink_encoder_sip_events_match_reference() -> None:
    settings_ = HepSinkSettings(address="127.0.0.1:9060", capture_id=7, node_name="n", auth_key="k")  # type: ignore[arg-type]  # encoding never reads the address
    encoder = HepEncoder(settings_)
    leg = LegInfo("c1", "lab", "customer", ("::ffff:192.0.2.10", 40000), ("192.0.2.1", 5061))
    for i, (from_client, data) in enumerate(dialog()):
        event = SipEvent(TS + i * 0.001, leg, from_client, data, parse_message(data))
        expected = reference_packet(event.ts, event.src, event.dst, data, ip_proto=6, proto_type=1, capture_id=7,
                                    auth_key=b"k", node_name=b"n", correlation_id=event.view.call_id.encode())
        assert encoder.encode(event) == expected


# --- JSON --------------------------------------------------------------------------------


@settings(max_examples=500, deadline=None)  # byte identity, not speed: a loaded machine must not fail it
@given(st.one_of(
    st.floats(0, 2**33, allow_nan=False),
    st.floats(-(2**31), 0, allow_nan=False),
    st.integers(0, 2**33).map(lambda n: n + 0.5e-6),  # half-microsecond ties
    st.integers(0, 2**33).map(lambda n: n + 0.9999995),
    st.integers(0, 2**33),
))
@example(TS)
@example(1_700_000_000.9999996)
@example(-0.0000004)
@example(-1.5)
def test_iso_utc_matches_datetime(ts: float) -> None:
    assert iso_utc(ts) == iso_utc_reference(ts)


def stamp_reference(ts: float) -> str:
    """The ``ts`` and ``epoch`` members by their definitions: two roundings, two conversions."""
    return f'"ts":"{iso_utc_reference(ts)}","epoch":{_number(round(ts, 6))}'


micros = st.integers(2**13 * 10**6, 2**33 * 10**6)


@settings(max_examples=1000, deadline=None)  # byte identity, not speed: a loaded machine must not fail it
@given(st.one_of(
    st.floats(2**13, 2**33, allow_nan=False),  # the one-rounding path's range
    micros.map(lambda n: n / 1e6),  # whole microseconds
    micros.map(lambda n: (n + 0.5) / 1e6),  # half a microsecond, the nearest float either side
    micros.map(lambda n: math.nextafter((n + 0.5) / 1e6, 0)),
    micros.map(lambda n: math.nextafter((n + 0.5) / 1e6, math.inf)),
    st.integers(2**13 * 128, 2**33 * 128).map(lambda n: n / 128),  # exact ties: x.0078125 = 7812.5 us
    st.integers(2**13, 2**33).map(lambda n: n + 0.9999995),  # rounds up into the next second
    st.floats(0, 2**34, allow_nan=False),  # around and outside the range: the two-rounding path
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(0, 2**34),
))
@example(TS)
@example(8192.0)
@example(8192.0078125)
@example(math.nextafter(8192.0, 0))
@example(2.0**33)
@example(math.nextafter(2.0**33, 0))
@example(1_764_680_000.0105)
def test_stamp_matches_its_definition(ts: float) -> None:
    def result(stamp: Callable[[float], str]) -> object:
        try:
            return stamp(ts)
        except (ValueError, OverflowError, OSError) as exc:  # NaN, infinities, years past 9999: the same error
            return type(exc)

    assert result(_stamp) == result(stamp_reference)


def srtp_key_line_reference(event: SrtpKeyEvent) -> str:
    """The SRTP key file's line as first written: each value through ``_token`` on its own."""
    key, leg = event.key, event.leg
    address = key.connection_address or "-"
    addr = f"[{address}]:{key.port}" if ":" in address else f"{address}:{key.port}"
    key_hex, salt_hex = key.master_key_hex, key.master_salt_hex
    args = rtp_decoder_args(key)
    line = (
        f"{iso_utc_reference(event.ts)} call-id={_token(event.call_id)} conn={_token(leg.conn_id)} leg={leg.leg}"
        f" dir={'client->server' if event.from_client else 'server->client'} sip={_token(event.method_or_status)}"
        f" media={_token(key.media)} addr={addr} suite={_token(key.suite)} tag={key.tag}"
        f" inline={_token(key.key_params_b64)} key={key_hex} salt={salt_hex or '-'} key_salt={key_hex}{salt_hex}"
    )
    if key.lifetime:
        line += f" lifetime={_token(key.lifetime)}"
    if key.mki:
        line += f" mki={_token(key.mki)}"
    return line + (f' rtp_decoder="{args}"' if args else " rtp_decoder=unsupported")


texts = st.one_of(st.none(), st.text(max_size=20))


@settings(max_examples=200, deadline=None)  # byte identity, not speed: a loaded machine must not fail it
@given(
    pair=address_pairs(),
    ts=st.one_of(st.floats(0, 2**33, allow_nan=False), st.integers(0, 2**33)),
    from_client=st.booleans(),
    data=st.one_of(st.binary(max_size=200), st.sampled_from([d for _, d in dialog()]),
                   st.text(max_size=50).map(lambda t: t.encode())),
    conn_id=st.text(max_size=10),
    payload=st.booleans(),
    parse=st.booleans(),
)
def test_sip_event_json_matches_event_to_dict(pair: AddressPair, ts: float, from_client: bool, data: bytes, conn_id: str,
                                              payload: bool, parse: bool) -> None:
    leg = LegInfo(conn_id, "route\n\"x\"", "customer", *pair)
    try:
        view = parse_message(data) if parse else None
    except SipParseError:
        view = None
    event = SipEvent(ts, leg, from_client, data, view)
    assert sip_event_json(event, payload=payload) == to_json(event_to_dict(event, payload=payload))
    assert sip_event_json(event, payload=payload) == to_json(event_to_dict(event, payload=payload))


def test_sip_summary_json_matches_the_encoder_for_views_and_one_scan_fields() -> None:
    """The template gives the encoder's characters, whether the event carries the full view
    or the one-scan fields the mirror process reads (same attribute names)."""
    events = [e for e in golden_events() if isinstance(e, SipEvent) and e.view is not None]
    assert len(events) > 20
    for event in events:
        assert event.view is not None
        expected = to_json(sip_summary(event.view))
        assert sip_summary_json(event.view) == expected
        fields = read_fields(event.data, event.data.index(b"\r\n\r\n") + 4)
        if fields is not None:
            assert sip_summary_json(fields) == expected  # type: ignore[arg-type]  # SipFields reads as the view


sdes_keys = st.builds(
    SdesKey,
    tag=st.integers(0, 2**31), suite=st.text(max_size=30), key_params_b64=st.text(max_size=60),
    master_key=st.binary(max_size=32), master_salt=st.binary(max_size=14), lifetime=st.one_of(st.none(), st.text(max_size=8)),
    mki=st.one_of(st.none(), st.text(max_size=8)), media=st.text(max_size=10), port=st.integers(0, 0xFFFF),
    connection_address=st.one_of(st.none(), st.text(max_size=20)), session_params=st.lists(st.text(max_size=10)).map(tuple),
)


@settings(max_examples=300, deadline=None)  # byte identity, not speed: a loaded machine must not fail it
@given(key=sdes_keys, pair=address_pairs(), ts=st.floats(0, 2**33, allow_nan=False), from_client=st.booleans(),
       call_id=st.one_of(st.none(), st.text(max_size=20)), sip=st.text(max_size=10), conn_id=st.text(max_size=10))
def test_srtp_event_json_matches_event_to_dict(key: SdesKey, pair: AddressPair, ts: float, from_client: bool,
                                               call_id: str | None, sip: str, conn_id: str) -> None:
    leg = LegInfo(conn_id, "route\n\"x\"", "customer", *pair)
    event = SrtpKeyEvent(ts, leg, from_client, call_id, sip, key)
    expected = to_json(event_to_dict(event))
    assert srtp_event_json(event) == expected
    assert srtp_event_json(event) == expected  # the second sink's, from the leg's memo
    other = SrtpKeyEvent(ts + 1, leg, not from_client, call_id, sip, key)
    assert srtp_event_json(other) == to_json(event_to_dict(other))  # a new event is rendered anew


token_texts = st.one_of(st.none(), st.text(max_size=12), st.text(alphabet=" \t\x1c\x85\u2028\u3000\"'ab-", max_size=8))


@settings(max_examples=500, deadline=None)  # byte identity, not speed: a loaded machine must not fail it
@given(key=sdes_keys, call_id=token_texts, sip=token_texts.map(lambda t: t or ""), conn_id=token_texts.map(lambda t: t or ""),
       media=token_texts.map(lambda t: t or ""), suite=st.one_of(token_texts.map(lambda t: t or ""),
                                                                  st.just("AES_CM_128_HMAC_SHA1_80")),
       lifetime=token_texts, mki=token_texts, ts=st.floats(0, 2**33, allow_nan=False), from_client=st.booleans())
def test_srtp_key_line_matches_reference(key: SdesKey, call_id: str | None, sip: str, conn_id: str, media: str,
                                         suite: str, lifetime: str | None, mki: str | None, ts: float,
                                         from_client: bool) -> None:
    """One test of all the values together picks the line's values as ``_token`` of each."""
    key = replace(key, media=media, suite=suite, lifetime=lifetime, mki=mki)
    leg = LegInfo(conn_id, "lab", "customer", ("192.0.2.10", 40000), ("192.0.2.1", 5061))
    event = SrtpKeyEvent(ts, leg, from_client, call_id, sip, key)
    assert srtp_key_line(event) == srtp_key_line_reference(event)


def test_srtp_texts_memo_is_bounded() -> None:
    """The memo that lets JSON lines reuse HEP's rendering holds at most a batch's worth."""
    from siptap.mirror import render

    for i in range(1000):
        srtp_event_json(srtp_event(ts=TS + i))
    assert len(render._srtp_texts.texts) == 256


def token_reference(text: str | None) -> str:
    if not text:
        return "-"
    return "".join("_" if ch.isspace() or ch in "\"'" else ch for ch in text)


@given(st.one_of(st.none(), st.text(), st.text(alphabet=" \t\x1c\x85\u2028\u3000\"'ab")))
def test_srtp_token_matches_reference(text: str | None) -> None:
    assert _token(text) == token_reference(text)


def test_ipaddress_cache_keeps_normalising() -> None:
    assert str(hep._canonical_ip("::ffff:192.0.2.1")) == "192.0.2.1"
    assert hep._canonical_ip("2001:db8::1") == ipaddress.ip_address("2001:db8::1")


def reachable_ids(root: object) -> set[int]:
    """The ids of the objects reachable from ``root`` through containers and instances;
    classes, modules and functions are not followed (through them everything is reachable)."""
    seen: set[int] = set()
    stack = [root]
    while stack:
        obj = stack.pop()
        if id(obj) in seen or isinstance(obj, (type, types.ModuleType, types.FunctionType, types.MethodType)):
            continue
        seen.add(id(obj))
        stack.extend(gc.get_referents(obj))
    return seen


def test_per_connection_renderings_live_on_the_leg_not_in_the_process() -> None:
    """Churned connections (a new port pair each) leave nothing behind in the sinks' encoders:
    what HEP and JSON lines render once per connection is kept in that connection's LegInfo,
    so it is freed with it (the soak's RSS grew while process-wide caches filled up)."""
    encoder = HepEncoder(HepSinkSettings(address=None))  # type: ignore[arg-type]  # encoding never reads the address
    _, message = dialog()[0]
    legs = [LegInfo(f"c{i}", "lab", "customer", ("192.0.2.10", 10000 + i), ("192.0.2.1", 5061)) for i in range(500)]
    for leg in legs:
        assert encoder.encode(key_event(leg)) is not None  # a HEP log packet, like SRTP keys
        assert encoder.encode(srtp_event(leg)) is not None
        for from_client in (True, False):
            event = SipEvent(TS, leg, from_client, message, parse_message(message, message.index(b"\r\n\r\n") + 4))
            assert encoder.encode(event) is not None
            sip_event_json(event)
    # No connection's address tuple (each leg has its own client tuple) is held by the encoder.
    assert not reachable_ids(encoder) & {id(leg.client) for leg in legs}
    for leg in legs:
        assert isinstance(leg.cache.get("jsonl"), tuple)
        # One entry per HEP protocol type: the log packets' one address pair (client to
        # server, both events), the SIP packets' two (both directions).
        pair_chunks = [entry for key, entry in leg.cache.items() if key != "jsonl"]
        assert sorted(len(entry) for entry in pair_chunks if isinstance(entry, dict)) == [1, 2]
    assert legs[0] == LegInfo("c0", "lab", "customer", ("192.0.2.10", 10000), ("192.0.2.1", 5061))  # cache not compared

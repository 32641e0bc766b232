"""The relay -> mirror record format: every record survives a round trip, and the decoder
refuses anything that is not exactly one well-formed record with RecordError (never another
exception, never a half-read record)."""

from __future__ import annotations

import json
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from siptap.sansio import chunk_records as cr
from siptap.sansio.chunk_records import (
    CHUNK_HEADER_SIZE,
    FROM_ACCEPTED,
    FROM_DIALLED,
    Chunk,
    ConnectionClosed,
    ConnectionOpened,
    Dropped,
    HandshakeDone,
    KeyMaterial,
    LegAddresses,
    RecordError,
    chunk_header,
    decode,
    encode,
)

u64 = st.integers(0, 2**64 - 1)
u32 = st.integers(0, 2**32 - 1)
times = st.floats(allow_nan=False, allow_infinity=False)
names = st.text(st.characters(exclude_categories=("Cs",)), max_size=40)
addresses = st.tuples(names, st.integers(0, 65535))
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63) | st.floats(allow_nan=False, allow_infinity=False) | names,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(names, inner, max_size=4),
    max_leaves=20,
)
key_lines = st.lists(st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\n"), min_size=1,
                             max_size=120), max_size=4)

records = st.one_of(
    st.builds(Chunk, u64, st.sampled_from([FROM_ACCEPTED, FROM_DIALLED]), u64, times, st.binary(max_size=3000)),
    st.builds(ConnectionOpened, u64, times, names, names,
              st.lists(st.builds(LegAddresses, names, addresses, addresses), min_size=1, max_size=2).map(tuple)),
    st.builds(HandshakeDone, u64, times, names, st.dictionaries(names, json_values, max_size=8),
              st.lists(st.binary(max_size=300), max_size=3).map(tuple)),
    st.builds(KeyMaterial, u64, times, names, key_lines.map(tuple)),
    st.builds(ConnectionClosed, u64, times, times, u64, u64, names, names),
    st.builds(Dropped, u64, times, u32, u64, u32, u64, u32),
)


@settings(max_examples=800, deadline=None)
@given(records)
def test_every_record_round_trips(record: cr.Record) -> None:
    datagram = encode(record)
    assert decode(datagram) == record
    assert decode(bytearray(datagram)) == record  # a receive buffer works as well as bytes


@settings(max_examples=500, deadline=None)
@given(records, st.data())
def test_truncated_records_are_rejected(record: cr.Record, data: st.DataObject) -> None:
    datagram = encode(record)
    cut = data.draw(st.integers(0, len(datagram) - 1))
    if isinstance(record, Chunk) and cut >= CHUNK_HEADER_SIZE:
        return  # a chunk's data is the rest of the datagram: a shorter chunk is still a chunk
    if isinstance(record, HandshakeDone | KeyMaterial) and cut >= len(datagram) - len(_tail(record)):
        return  # also read to the end: a cut there may still be a record (fewer key-log lines)
    with pytest.raises(RecordError):
        decode(datagram[:cut])


def test_key_material_cut_where_its_lines_begin_is_a_record_without_lines() -> None:
    datagram = encode(KeyMaterial(0, 0.0, "core", ("CLIENT_RANDOM a b",)))
    assert decode(datagram[: len(datagram) - len("CLIENT_RANDOM a b")]) == KeyMaterial(0, 0.0, "core", ())


def _tail(record: HandshakeDone | KeyMaterial) -> bytes:
    if isinstance(record, HandshakeDone):
        return json.dumps(record.facts, separators=(",", ":")).encode()
    return "\n".join(record.lines).encode()


@settings(max_examples=1500, deadline=None)
@given(st.binary(max_size=200) | st.binary(max_size=60).map(lambda tail: b"ST\x02" + tail))
def test_garbage_raises_record_error_or_decodes(garbage: bytes) -> None:
    try:
        record = decode(garbage)
    except RecordError:
        return
    assert encode(record) == garbage or isinstance(record, HandshakeDone)  # JSON spacing may differ


@settings(max_examples=300, deadline=None)
@given(records, st.binary(min_size=1, max_size=8))
def test_trailing_bytes_are_rejected_where_the_length_is_known(record: cr.Record, extra: bytes) -> None:
    if isinstance(record, Chunk | HandshakeDone | KeyMaterial):
        return  # these end with "the rest of the datagram"
    with pytest.raises(RecordError, match="trailing"):
        decode(encode(record) + extra)


def test_chunk_header_is_32_bytes_and_data_follows_unchanged() -> None:
    header = chunk_header(7, FROM_DIALLED, 1234, 1764689441.25)
    assert len(header) == CHUNK_HEADER_SIZE == 32
    assert header[:4] == b"ST\x02\x01"
    data = b"INVITE sip:a@b SIP/2.0\r\n\r\n"
    assert decode(header + data) == Chunk(7, FROM_DIALLED, 1234, 1764689441.25, data)


def test_record_sizes() -> None:
    """What one record costs on the channel (the capacity figures in bench/results assume these)."""
    assert len(encode(Chunk(1, FROM_ACCEPTED, 0, 1.0, bytes(800)))) == 832
    assert len(encode(Dropped(1, 1.0, 1, 800))) == 24 + 28
    closed = ConnectionClosed(1, 1.0, 2.5, 10, 20, "peer", "eof")
    assert len(encode(closed)) == 24 + 24 + 2 + 4 + 2 + 3
    opened = ConnectionOpened(3, 1.0, "a1b2-3", "trunk", (LegAddresses("customer", ("192.0.2.1", 40000), ("192.0.2.2", 5061)),
                                                        LegAddresses("core", ("192.0.2.2", 41000), ("192.0.2.9", 5061))))
    assert len(encode(opened)) < 150


@pytest.mark.parametrize(
    ("datagram", "message"),
    [
        (b"", "truncated record"),
        (b"ST", "truncated record"),
        (b"XY\x01\x01" + bytes(28), "magic"),
        (b"ST\x09\x01" + bytes(28), "version 9"),
        (b"ST\x02\x09" + bytes(28), "unknown record kind 9"),
        (b"ST\x02\x01" + bytes(20), "truncated chunk"),
        (b"ST\x02\x01\x05" + bytes(27), "unknown direction 5"),
        (b"ST\x02\x06" + bytes(20), "truncated record of kind 6"),
        (b"ST\x02\x06" + bytes(20) + bytes(27), "truncated record of kind 6"),
        (struct.pack("<2sBB4xQd", b"ST", cr.VERSION, 3, 1, 1.0) + b"\x00\x00\x00" + b"[1,2]", "not an object"),
        (struct.pack("<2sBB4xQd", b"ST", cr.VERSION, 3, 1, 1.0) + b"\x00\x00\x00" + b"{", "not JSON"),
        # A certificate of 10 bytes, 3 there: the chain's lengths are checked like every other.
        (struct.pack("<2sBB4xQd", b"ST", cr.VERSION, 3, 1, 1.0) + b"\x00\x00\x01" + struct.pack("<I", 10) + b"abc",
         "truncated record of kind 3"),
        (struct.pack("<2sBB4xQd", b"ST", cr.VERSION, 4, 1, 1.0) + b"\x01\x00\xff", "not UTF-8"),
        (struct.pack("<2sBB4xQd", b"ST", cr.VERSION, 4, 1, 1.0) + b"\x00\x00a\n\nb", "empty line"),
        (struct.pack("<2sBB4xQd", b"ST", cr.VERSION, 2, 1, 1.0) + b"\x00\x00\x00\x00\x00", "names no leg"),
        (struct.pack("<2sBB4xQd", b"ST", cr.VERSION, 6, 1, float("nan")) + bytes(28), "time is not finite"),
        (struct.pack("<2sBBB3xQQd", b"ST", cr.VERSION, 1, 0, 1, 0, float("inf")), "time is not finite"),
    ],
)
def test_malformed_records_say_what_is_wrong(datagram: bytes, message: str) -> None:
    with pytest.raises(RecordError, match=message):
        decode(datagram)


@pytest.mark.parametrize(
    "record",
    [
        Chunk(1, 2, 0, 1.0, b""),
        Chunk(-1, FROM_ACCEPTED, 0, 1.0, b""),
        ConnectionOpened(1, 1.0, "c", "r", ()),
        ConnectionOpened(1, 1.0, "c", "r", (LegAddresses("customer", ("h", 70000), ("h", 1)),)),
        HandshakeDone(1, 1.0, "customer", {"when": object()}),
        HandshakeDone(1, 1.0, "customer", {"x": float("nan")}),
        KeyMaterial(1, 1.0, "core", ("CLIENT_RANDOM a b\nCLIENT_RANDOM c d",)),
        KeyMaterial(1, 1.0, "core", ("",)),
        ConnectionClosed(1, 1.0, 0.0, 0, 0, "x" * 70000, ""),
        ConnectionClosed(1, 1.0, 0.0, 0, 0, "\udc80", ""),
        Dropped(1, 1.0, chunks_from_accepted=2**32),
    ],
)
def test_what_the_format_cannot_hold_is_refused_when_encoding(record: cr.Record) -> None:
    with pytest.raises(RecordError):
        encode(record)


@settings(max_examples=1500, deadline=None)
@given(records, st.data())
def test_a_corrupted_byte_is_rejected_or_decodes_to_what_reencodes_to_it(record: cr.Record, data: st.DataObject) -> None:
    """Flip one byte of a valid record: the decoder either refuses it or read every byte of it
    (re-encoding gives the same datagram), so no byte is silently ignored (padding included)."""
    datagram = bytearray(encode(record))
    at = data.draw(st.integers(0, len(datagram) - 1))
    datagram[at] ^= data.draw(st.integers(1, 255))
    try:
        decoded = decode(bytes(datagram))
    except RecordError:
        return
    if not isinstance(decoded, HandshakeDone):  # JSON may spell the same document another way
        assert encode(decoded) == datagram


def test_non_zero_padding_is_rejected() -> None:
    header = bytearray(chunk_header(1, FROM_ACCEPTED, 0, 1.0))
    header[6] = 1
    with pytest.raises(RecordError, match="padding"):
        decode(bytes(header))
    dropped = bytearray(encode(Dropped(1, 1.0)))
    dropped[4] = 1
    with pytest.raises(RecordError, match="padding"):
        decode(bytes(dropped))


def test_without_chain_keeps_a_handshake_record_whole_but_its_chain() -> None:
    facts = {"version": "TLSv1.2", "cipher": "AES256-GCM-SHA384"}
    full = cr.encode(cr.HandshakeDone(7, 1.5, "customer", facts, (b"\x30\x82leaf", b"\x30\x82ca")))
    trimmed = cr.without_chain(full)
    assert len(trimmed) == len(full) - (4 + 6) - (4 + 4)
    assert cr.decode(trimmed) == cr.HandshakeDone(7, 1.5, "customer", facts, ())
    # Nothing to trim: the very same bytes.
    bare = cr.encode(cr.HandshakeDone(7, 1.5, "core", facts))
    assert cr.without_chain(bare) is bare
    opened = cr.encode(cr.ConnectionOpened(7, 1.5, "c-1", "lab", (cr.LegAddresses("customer", ("a", 1), ("b", 2)),)))
    assert cr.without_chain(opened) is opened

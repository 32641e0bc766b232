"""Issue 13 item 1 end to end: the mirror never goes blind.

A customer sends, through a real `siptap run` (TLS both legs, mirror process), one stream that
holds an oversized header block, a lying Content-Length and binary garbage between valid
messages. The core (tests/integration/test_hostile.CountingCore) hashes every byte it gets:
the relay stays byte-transparent. The mirror's HEP datagrams (a UDP socket read here) and its
cleartext pcap (read back with sansio.pcap_reader) hold every valid message after each bad
region, and the JSON log holds one ``unframeable`` event per region with its offset and size.
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

import trio

from siptap.sansio import hep
from siptap.sansio.pcap_reader import decode_tcp, read_capture
from siptap.tools.lab.core import core_context
from siptap.tools.lab.customer import CustomerSession, customer_context
from tests.integration.test_hostile import CountingCore
from tests.relay.harness import SiptapProcess, write_config


def message(n: int, *, body: bytes = b"", length: int | None = None, filler: int = 0) -> bytes:
    head = (
        f"MESSAGE sip:core.invalid SIP/2.0\r\nVia: SIP/2.0/TLS 127.0.0.1;branch=z9hG4bK{n}\r\n"
        f"From: <sip:esbc.invalid>;tag={n}\r\nTo: <sip:core.invalid>\r\nCall-ID: resync-{n}@esbc.invalid\r\n"
        f"CSeq: {n} MESSAGE\r\nMax-Forwards: 70\r\nContent-Type: text/plain\r\n"
    ).encode()
    if filler:
        head += b"X-Filler: " + b"f" * filler + b"\r\n"
    return head + b"Content-Length: %d\r\n\r\n" % (len(body) if length is None else length) + body


def stream() -> tuple[bytes, list[bytes], list[tuple[int, int, str]]]:
    """The customer's bytes; the valid messages in them; each bad region's (offset, size, reason)."""
    parts: list[tuple[bytes, str | None]] = [
        (message(1, body=b"hello\r\n"), None),
        (message(2, filler=20000), "header block exceeds 16384 bytes without end"),
        (message(3), None),
        (message(4, body=b"short\r\n", length=700), "Content-Length 700 runs into the next message"),
        (message(5, body=b"swallowed by the lie, framed all the same\r\n"), None),
        (message(6), None),
        (bytes(range(256)) * 3 + b"\r\n", "not a SIP start line"),
        (message(7, body=b"after the garbage\r\n"), None),
        (message(8), None),
    ]
    data, valid, regions = b"", [], []
    for part, reason in parts:
        if reason is None:
            valid.append(part)
        else:
            regions.append((len(data), len(part), reason))
        data += part
    return data, valid, regions


def mirror_config(tmp: Path, hep_port: int) -> str:
    return f"""
[mirror]
legs = "customer"
[[mirror.hep]]
address = "127.0.0.1:{hep_port}"
[mirror.pcap]
directory = "{tmp}/pcap"
"""


async def test_every_valid_message_after_each_bad_region_reaches_hep_and_pcap(pki: Path, tmp_path: Path) -> None:
    data, valid, regions = stream()
    collector = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
    await collector.bind(("127.0.0.1", 0))
    hep_port = collector.getsockname()[1]
    async with trio.open_nursery() as nursery:
        core = CountingCore(core_context(pki))
        core_port = await nursery.start(functools.partial(core.serve))
        siptap = SiptapProcess(write_config(tmp_path, pki, cores=[core_port], top=mirror_config(tmp_path, hep_port)))
        await siptap.start(nursery)
        port = await siptap.port()
        session = await CustomerSession.connect("127.0.0.1", port, customer_context(pki))
        # In pieces that cut through the bad regions: the mirror sees them across chunks.
        for at in range(0, len(data), 4000):
            await session.stream.send_all(data[at : at + 4000])
        await core.wait_until(lambda: any(c.total == len(data) for c in core.connections))
        await session.aclose()
        await siptap.wait_for("connection_closed")
        observed = (await siptap.wait_for("connection_observed"))[0]
        # HEP: one SIP datagram per message and leg (key packets besides); the customer leg's
        # customer->siptap ones.
        payloads: list[bytes] = []
        with trio.fail_after(20):
            while len(payloads) < len(valid):
                packet = hep.decode(await collector.recv(65536))
                if packet.proto_type == hep.PROTO_SIP and packet.dst_port == port:
                    payloads.append(packet.payload)
        assert await siptap.stop() == 0
        nursery.cancel_scope.cancel()
    collector.close()

    # The relay stayed byte-transparent through every bad region.
    target = next(c for c in core.connections if c.total == len(data))
    assert target.digest.digest() == hashlib.sha256(data).digest()
    # HEP holds every valid message, in order, each exactly as sent.
    assert payloads == valid
    # So does the cleartext pcap (its customer->siptap segments, reassembled).
    files = sorted((tmp_path / "pcap").iterdir())
    assert files
    sent = b""
    for path in files:
        for packet in read_capture(path.read_bytes()).packets:
            segment = decode_tcp(packet.data, packet.linktype)
            if segment is not None and segment.dst[1] == port:
                sent += segment.payload
    assert sent == b"".join(valid)
    # The JSON log: one event per skipped region, with connection, direction, offset and size.
    lines = siptap.find("unframeable")
    assert [(u["offset"], u["size"], u["reason"]) for u in lines] == regions
    assert all(u["direction"] == "customer->core" and u["conn"] == observed["conn"] for u in lines)
    assert observed["messages_customer_to_core"] == len(valid)
    assert observed["unframeable_bytes"] == sum(size for _, size, _ in regions)

"""Fuzz harnesses: one function per target, ``bytes -> None``; a harness raises (an
AssertionError or the offending exception) only when the code under test broke its contract.

Pure (standard library and siptap.sansio only), so the same functions serve three callers:
atheris (``run_atheris.py``, coverage-guided, in a subprocess), the corpus replay in
``test_fuzz.py`` (every corpus file through every harness, as regression tests), and a
developer reproducing a crash file (``python -m tests.fuzz.run_atheris TARGET crash-file``).

Contracts checked, from each module's documentation:

``sip_framer``   never raises on any input split; every input byte comes back in exactly one
                 event's ``data``, in order; between feeds it holds at most
                 ``max_header_size + max_message_size`` bytes; the SIP messages and keepalives
                 it frames do not depend on where the chunks were cut.
``sip_message``  ``parse_message`` raises nothing but ``SipParseError``, with or without the
                 framer's ``header_end``; ``header()`` and ``split_values`` never raise.
``sdp_crypto``   ``parse_sdp_crypto`` never raises; every key fits its suite's lengths.
``hep``          ``decode`` raises nothing but ``ValueError``, ``frame_length`` too; whatever
                 decodes re-encodes to a packet that decodes equal (decode(encode(p)) == p).
``pcap_reader``  ``read_capture`` raises nothing but ``PcapFormatError`` (tolerant mode too);
                 ``decode_tcp`` never raises, for any frame and link type.
``pcap_writer``  payloads written as TcpFlow segments in pcap/pcapng records read back equal,
                 in order, with contiguous sequence numbers.
``tls_hello``    ``ClientHelloSniffer.feed`` and ``ServerHelloReader.feed`` (the probe's) never
                 raise on any split; their results' ``summary()`` / ``looks_like`` /
                 ``version_name`` / ``name`` never raise.
"""

from __future__ import annotations

from collections.abc import Callable

from siptap.sansio import hep, pcap, pcap_reader, sdp_crypto, sip_framer, sip_message, tls_hello


class _Input:
    """A minimal FuzzedDataProvider over the input bytes (atheris' own is not importable
    without atheris, and the harnesses must run without it): deterministic, never raises.

    Harnesses that take parameters read them from a *control prefix*: an input whose first
    byte is below 8 starts with control bytes; any other input (raw SIP, SDP, a ClientHello,
    a pcap file: what the corpus holds) is used whole with default parameters."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def byte(self) -> int:
        if self.pos >= len(self.data):
            return 0
        self.pos += 1
        return self.data[self.pos - 1]

    def rest(self) -> bytes:
        out = self.data[self.pos :]
        self.pos = len(self.data)
        return out


def _cuts(data: bytes, seed: int) -> list[bytes]:
    """Split ``data`` into chunks whose sizes come from a small deterministic generator
    seeded by the input: 1..64-byte chunks, sometimes large, so the harness sees both
    byte-at-a-time and whole-buffer feeding."""
    chunks = []
    pos = 0
    state = seed or 1
    while pos < len(data):
        state = (state * 1103515245 + 12345) & 0x7FFFFFFF
        size = 1 + (state >> 8) % (64 if state & 3 else 4096)
        chunks.append(data[pos : pos + size])
        pos += size
    return chunks


def _frame_all(framer: sip_framer.SipFramer, chunks: list[bytes], bound: int) -> list[sip_framer.Event]:
    events: list[sip_framer.Event] = []
    for chunk in chunks:
        events += framer.feed(chunk)
        assert framer.buffered <= bound, (framer.buffered, bound)
    events += framer.close()
    return events


def _framed(events: list[sip_framer.Event]) -> list[tuple[str, bytes]]:
    """What a mirror sees: messages and keepalives with their offsets' order; runs of
    Unframeable merged (how garbage is chunked into events may depend on the split)."""
    out: list[tuple[str, bytes]] = []
    for event in events:
        if isinstance(event, sip_framer.Unframeable):
            if out and out[-1][0] == "unframeable":
                out[-1] = ("unframeable", out[-1][1] + event.data)
            else:
                out.append(("unframeable", event.data))
        elif isinstance(event, sip_framer.SipMessage):
            assert event.data[event.header_end - 4 : event.header_end] == b"\r\n\r\n"
            assert len(event.data) == event.header_end + event.body_length
            out.append(("message", event.data))
        else:
            assert event.data in (b"\r\n", b"\r\n\r\n")
            out.append((event.kind, event.data))
    return out


def fuzz_sip_framer(data: bytes) -> None:
    given = _Input(data)
    # Control prefix: small limits, so the give-up paths are reached with short inputs.
    small = given.byte() if data[:1] < b"\x08" and data else 0
    max_header = 4 + given.byte() if small & 1 else 16384
    max_message = given.byte() if small & 2 else 65536
    stream = given.rest()
    bound = max_header + max_message
    whole = _frame_all(sip_framer.SipFramer(max_message_size=max_message, max_header_size=max_header), [stream], bound)
    split = _frame_all(sip_framer.SipFramer(max_message_size=max_message, max_header_size=max_header),
                       _cuts(stream, small * 7919 + len(stream)), bound)
    for events in (whole, split):
        assert b"".join(e.data for e in events) == stream, "framer lost, duplicated or reordered bytes"
        assert all(e.data for e in events), "empty event"
    assert _framed(whole) == _framed(split), "framing depends on where the chunks were cut"


def fuzz_sip_message(data: bytes) -> None:
    given = _Input(data)
    selector = given.byte() if data[:1] < b"\x08" and data else len(data)
    message = given.rest()
    end = message.find(b"\r\n\r\n")
    for header_end in (None, end + 4 if end >= 0 else len(message), selector * 31 % (len(message) + 1)):
        try:
            view = sip_message.parse_message(message, header_end)
        except sip_message.SipParseError:
            continue
        assert view.is_request == (view.method is not None)
        assert view.body_length >= 0
        for name in ("via", "v", "From", "contact", "X-Unknown"):
            for value in view.header(name):
                sip_message.split_values(value)


def fuzz_sdp_crypto(data: bytes) -> None:
    for key in sdp_crypto.parse_sdp_crypto(data):
        lengths = sdp_crypto.key_salt_lengths(key.suite)
        if lengths is not None:
            assert (len(key.master_key), len(key.master_salt)) == lengths, key
        else:
            assert key.master_key and key.master_salt == b"", key
        assert 0 <= key.port <= 65535
        key.master_key_hex, key.master_salt_hex  # noqa: B018 - properties must not raise


def fuzz_hep(data: bytes) -> None:
    try:
        hep.frame_length(data)
    except ValueError:
        pass
    try:
        packet = hep.decode(data)
    except ValueError:
        return
    again = hep.decode(hep.encode(packet))
    assert again == packet, (again, packet)


def fuzz_pcap_reader(data: bytes) -> None:
    for tolerant in (False, True):
        try:
            capture = pcap_reader.read_capture(data, tolerate_truncation=tolerant)
        except pcap_reader.PcapFormatError:
            continue
        assert capture.format in ("pcap", "pcapng")
        for packet in capture.packets:
            pcap_reader.decode_tcp(packet.data, packet.linktype)
    # decode_tcp on the raw bytes, for every link type the reader knows (and one it does not).
    for linktype in (*sorted(pcap_reader.SUPPORTED_LINKTYPES), 147):
        pcap_reader.decode_tcp(data, linktype)


def fuzz_pcap_writer(data: bytes) -> None:
    if len(data) < 2:
        return
    given = _Input(data)
    flags = given.byte()
    payloads = [p for p in given.rest().split(b"\x00\x00") if p][:16]
    v6 = flags & 1
    client = ("::1" if v6 else "10.0.0.1", 40000 + flags)
    server = ("2001:db8::2" if v6 else "10.0.0.2", 5061)
    isn = (flags * 0x01010101 * 251) & 0xFFFFFFFF  # wraps the 32-bit sequence space sometimes
    flow = pcap.TcpFlow(client, server, isn_client=isn, isn_server=(isn ^ 0xFFFFFFF0))
    mss = 16 + given.byte() * 4 if flags & 4 else pcap.MAX_SEGMENT
    frames: list[tuple[bool, bytes]] = []
    for i, payload in enumerate(payloads):
        from_client = bool((flags >> (i % 8)) & 1) if flags & 2 else i % 2 == 0
        frames += [(from_client, f) for f in flow.segment(from_client, payload, mss)]
    if flags & 8:
        blob = pcap.pcapng_section_header(b"fuzz") + pcap.pcapng_interface_description() + b"".join(
            pcap.pcapng_enhanced_packet(1700000000, i, f) for i, (_, f) in enumerate(frames))
    else:
        blob = pcap.pcap_global_header() + b"".join(
            pcap.pcap_record(1700000000, i, f) for i, (_, f) in enumerate(frames))
    capture = pcap_reader.read_capture(blob)
    assert len(capture.packets) == len(frames)
    streams: dict[bool, bytearray] = {True: bytearray(), False: bytearray()}
    next_seq = {True: (isn + 1) & 0xFFFFFFFF, False: ((isn ^ 0xFFFFFFF0) + 1) & 0xFFFFFFFF}
    for (from_client, _), packet in zip(frames, capture.packets):
        segment = pcap_reader.decode_tcp(packet.data, packet.linktype)
        assert segment is not None
        assert (segment.src, segment.dst) == ((client, server) if from_client else (server, client))
        assert segment.seq == next_seq[from_client]
        next_seq[from_client] = (segment.seq + len(segment.payload)) & 0xFFFFFFFF
        streams[from_client] += segment.payload
    sent = {True: bytearray(), False: bytearray()}
    for i, payload in enumerate(payloads):
        from_client = bool((flags >> (i % 8)) & 1) if flags & 2 else i % 2 == 0
        sent[from_client] += payload
    assert streams == sent


def fuzz_tls_hello(data: bytes) -> None:
    seed, hello = len(data) & 0xFF, data
    for chunks in ([hello], _cuts(hello, seed)):
        sniffer = tls_hello.ClientHelloSniffer(max_bytes=256 + seed * 64)
        for chunk in chunks:
            sniffer.feed(chunk)
        result = sniffer.result
        if isinstance(result, tls_hello.ClientHello):
            result.summary()
            result.only_forward_secret, result.rsa_kex_suites, result.tls13_only  # noqa: B018
        elif isinstance(result, tls_hello.NotTls):
            assert isinstance(result.looks_like, str)
        reader = tls_hello.ServerHelloReader(max_bytes=256 + seed * 64)
        for chunk in chunks:
            reader.feed(chunk)
        answer = reader.result
        if isinstance(answer, tls_hello.ServerHello):
            assert isinstance(answer.version_name, str) and 0 <= answer.cipher_suite <= 0xFFFF
        elif isinstance(answer, tls_hello.Alert):
            assert isinstance(answer.name, str)


TARGETS: dict[str, Callable[[bytes], None]] = {
    "sip_framer": fuzz_sip_framer,
    "sip_message": fuzz_sip_message,
    "sdp_crypto": fuzz_sdp_crypto,
    "hep": fuzz_hep,
    "pcap_reader": fuzz_pcap_reader,
    "pcap_writer": fuzz_pcap_writer,
    "tls_hello": fuzz_tls_hello,
}

"""Golden output: a fixed list of mirror events -> the exact bytes every sink wrote on
2026-12-02, before the sinks' hot paths were made lean (issue 16). Any change in any
output format fails here, whatever the other tests (which parse the outputs) accept.

The events mix what real traffic and its odd corners bring, interleaved across three
connections: two dialogs with SDP on both legs of an IPv4 connection, one on an IPv6
connection, an IPv4-mapped leg, a message whose start line did not parse (``view`` None),
non-UTF-8 bytes, non-ASCII text and control characters in headers, handshakes of TLS 1.2
and 1.3, SDES keys (with and without lifetime, MKI, address; suites rtp_decoder knows and
does not), closes, and timestamps that cross seconds and round up to the next one.

The expected outputs are pinned by their SHA-256 and length in ``golden.sha256`` (the outputs
themselves are captures and key logs, which are generated, never committed). The digests were
written by this test with ``SIPTAP_GOLDEN_UPDATE=1`` from the code before the change; regenerate
them only for a deliberate, documented format change. On a mismatch the test writes what it got
to a temporary file and names it, for a byte-level comparison with an older checkout's output.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import pytest

from siptap.addresses import Endpoint
from siptap.config.mirror import HepSinkSettings, JsonlSinkSettings, PcapSettings
from siptap.mirror.events import ConnectionClosed, KeyEvent, LegInfo, MirrorEvent, SipEvent, SrtpKeyEvent
from siptap.mirror.hep import HepSink
from siptap.mirror.jsonl import JsonlSink
from siptap.mirror.keylog import KeylogSink
from siptap.mirror.pcap import PcapSink
from siptap.mirror.srtp import SrtpKeysSink
from siptap.sansio.handshake import CertificateSummary, HandshakeFacts
from siptap.sansio.sdp_crypto import parse_sdp_crypto
from siptap.sansio.sip_message import parse_message

from .helpers import SDP, dialog, facts

DIGESTS = Path(__file__).parent / "golden.sha256"
UPDATE = os.environ.get("SIPTAP_GOLDEN_UPDATE") == "1"
T0 = 1_700_000_000.25

SDP_MORE = (
    b"v=0\r\no=- 2 2 IN IP6 2001:db8::10\r\ns=-\r\nc=IN IP6 2001:db8::10\r\nt=0 0\r\n"
    b"m=audio 50000 RTP/SAVP 0\r\n"
    b"a=crypto:1 AES_256_CM_HMAC_SHA1_80 inline:AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHyAhIiMkJSYnKCkqKywtLg\r\n"
    b"a=crypto:2 AES_192_CM_HMAC_SHA1_80 inline:ZWZnaGlqa2xtbm9wcXJzdHV2d3h5ent8fX5/gIGCg4SFhoeIiYo=|2^31|5:4 KDR=1\r\n"
    b"m=video 50002 RTP/SAVP 96\r\n"
    b"a=crypto:1 AES_CM_128_HMAC_SHA1_32 inline:NzB4d1BINUAvLEw6UzF3WSJ+PSdFcGdUJShpX1Zj\r\n"
)


def _legs() -> dict[str, LegInfo]:
    return {
        "c1-customer": LegInfo("3fa2c1-1", "lab", "customer", ("192.0.2.10", 40000), ("192.0.2.1", 5061)),
        "c1-core": LegInfo("3fa2c1-1", "lab", "core", ("192.0.2.1", 45000), ("198.51.100.7", 5061)),
        "c2-customer": LegInfo("3fa2c1-2", "trunk \"b\"", "customer", ("2001:db8::10", 40001),
                               ("2001:db8::1", 5061)),
        "c3-customer": LegInfo("3fa2c1-3", "lab", "customer", ("::ffff:192.0.2.30", 40003), ("192.0.2.1", 5061)),
    }


def _tls13_facts() -> HandshakeFacts:
    random = "12" * 32
    chain = (CertificateSummary("CN=core", "CN=lab CA", "0A1B", "2023-01-01T00:00:00Z", "2033-01-01T00:00:00Z",
                                "AB:CD", ("core.example.net",), "core"),)
    return HandshakeFacts(
        leg="core", role="client", version="TLSv1.3", cipher="TLS_AES_256_GCM_SHA384",
        key_exchange="TLSv1.3 (x25519)", extended_master_secret=False, session_reused=False,
        sni="core.example.net", client_random=random, master_secret=None,
        keylog_lines=(f"CLIENT_HANDSHAKE_TRAFFIC_SECRET {random} {'34' * 48}",
                      f"SERVER_HANDSHAKE_TRAFFIC_SECRET {random} {'56' * 48}\n",
                      f"CLIENT_TRAFFIC_SECRET_0 {random} {'78' * 48}",
                      f"SERVER_TRAFFIC_SECRET_0 {random} {'9a' * 48}"),
        peer_chain=chain,
    )


def _sip(leg: LegInfo, ts: float, from_client: bool, data: bytes) -> SipEvent:
    return SipEvent(ts, leg, from_client, data, parse_message(data))


def golden_events() -> list[MirrorEvent]:
    """The fixed stream (fresh objects each call, so no leg cache carries over)."""
    legs = _legs()
    c1, core, c2, c3 = legs["c1-customer"], legs["c1-core"], legs["c2-customer"], legs["c3-customer"]
    events: list[MirrorEvent] = [
        KeyEvent(T0 - 0.5, c1, facts("customer")),
        KeyEvent(T0 - 0.4, core, _tls13_facts()),
        KeyEvent(T0 - 0.3, c2, facts("customer")),
    ]
    calls = [(c1, "call-1@pc33.example.com", True), (core, "call-1@pc33.example.com", True),
             (c2, "call-2@[2001:db8::10]", True), (c3, "call-3", False)]
    # The dialogs interleaved message by message, each message 0.1237 s after the previous
    # one: seconds change mid-stream, and micro-second rounding sees varied fractions.
    dialogs = [(leg, dialog(call_id)) for leg, call_id, _ in calls]
    ts = T0
    for step in range(7):
        for leg, messages in dialogs:
            from_client, data = messages[step]
            events.append(_sip(leg, ts, from_client, data))
            ts += 0.1237
    (key,) = parse_sdp_crypto(SDP)
    more = parse_sdp_crypto(SDP_MORE)
    events += [
        SrtpKeyEvent(T0 + 0.01, c1, True, "call-1@pc33.example.com", "INVITE", key),
        *(SrtpKeyEvent(T0 + 0.02 + i / 100, c2, False, "call-2@[2001:db8::10]", "200", k) for i, k in enumerate(more)),
        SrtpKeyEvent(T0 + 0.05, c3, True, None, "INVITE", key),
    ]
    odd: list[MirrorEvent] = [
        # Not SIP at all (the framer let it through; the view is None).
        SipEvent(ts + 0.1, c1, True, b"HELLO\r\n\r\n", None),
        # Non-UTF-8 bytes in a header: payload_b64 in JSON, as-is elsewhere.
        _sip(c1, ts + 0.2, False, b"OPTIONS sip:x@example.com SIP/2.0\r\nCall-ID: o\xff1\r\nCSeq: 7 OPTIONS\r\n"
                                   b"Content-Length: 0\r\n\r\n"),
        # Non-ASCII UTF-8, a quote, a backslash and a tab: JSON escaping and ensure_ascii=False.
        _sip(c2, ts + 0.3, True, "MESSAGE sip:j\u00f6rg@example.com SIP/2.0\r\nFrom: \"J\u00f6rg \\\"x\\\"\""
                                 " <sip:j@example.com>;tag=9\r\nCall-ID: m\t1\r\nCSeq: 1 MESSAGE\r\n"
                                 "Content-Length: 0\r\n\r\n".encode()),
        # An empty Call-ID: no HEP correlation chunk, "" in JSON.
        _sip(c3, ts + 0.35, False, b"SIP/2.0 200 OK\r\nCall-ID: \r\nCSeq: 1 MESSAGE\r\nContent-Length: 0\r\n\r\n"),
        # A timestamp that rounds up to the next whole second.
        _sip(c3, 1_700_000_009.9999996, True, dialog("call-3")[0][1]),
        ConnectionClosed(ts + 0.4, c1, 3.25, 12345, 6789, 9, "client closed"),
        ConnectionClosed(ts + 0.4, core, 3.25, 6789, 12345, 7, "core closed"),
        ConnectionClosed(ts + 0.5, c2, 2.0, 100, 200, 8, "idle timeout"),
    ]
    return events + odd


def batches(events: Sequence[MirrorEvent], size: int = 5) -> list[list[MirrorEvent]]:
    """Uneven batches, as a dispatcher hands them over."""
    return [list(events[i : i + size]) for i in range(0, len(events), size)]


def _digests() -> dict[str, tuple[str, int]]:
    """name -> (sha256 hex, length) from golden.sha256 (``sha256sum``'s layout plus a length)."""
    out = {}
    for line in DIGESTS.read_text().splitlines():
        digest, length, name = line.split()
        out[name] = (digest, int(length))
    return out


def check(name: str, data: bytes) -> None:
    got = (hashlib.sha256(data).hexdigest(), len(data))
    if UPDATE:
        digests = _digests() if DIGESTS.exists() else {}
        digests[name] = got
        DIGESTS.write_text("".join(f"{d}  {n}  {k}\n" for k, (d, n) in sorted(digests.items())))
    expected = _digests().get(name)
    assert expected is not None, f"no digest for {name} in {DIGESTS}: run with SIPTAP_GOLDEN_UPDATE=1 on the reference code"
    if got != expected:
        kept = Path(tempfile.mkdtemp(prefix="siptap-golden-")) / name
        kept.write_bytes(data)
        pytest.fail(f"{name}: output differs from the golden digest (got {got[1]} octets, expected {expected[1]}); "
                    f"what this code wrote is in {kept}")


HEP_VARIANTS = {
    "hep-tcp-auth-node.bin": HepSinkSettings(Endpoint("127.0.0.1", 9060), capture_id=2001, auth_key="s3cret",
                                             node_name="siptap-lab"),
    "hep-tls-plain.bin": HepSinkSettings(Endpoint("127.0.0.1", 9060), capture_id=0xFFFFFFFF, ip_proto="tls"),
    "hep-no-keys.bin": HepSinkSettings(Endpoint("127.0.0.1", 9060), log_key_material=False),
}


@pytest.mark.parametrize("name", sorted(HEP_VARIANTS))
def test_hep_packets(name: str) -> None:
    sink = HepSink(HEP_VARIANTS[name])
    units = [sink.encode_unit(event) for event in golden_events() if sink.accepts(event)]
    assert None not in units and sink.dropped == 0
    check(name, b"".join(u for u in units if u is not None))


JSONL_VARIANTS = {
    "jsonl-stream.jsonl": JsonlSinkSettings(transport="unix", path=Path("/nonexistent/j.sock")),
    "jsonl-dgram-no-payload.jsonl": JsonlSinkSettings(transport="unix-dgram", path=Path("/nonexistent/j.sock"),
                                                      payload=False),
}


@pytest.mark.parametrize("name", sorted(JSONL_VARIANTS))
def test_jsonl_lines(name: str) -> None:
    settings = JSONL_VARIANTS[name]
    sink = JsonlSink(settings)
    units = [sink.encode_unit(event) for event in golden_events() if sink.accepts(event)]
    assert all(u is not None and (u.endswith(b"\n") == sink.link.stream) for u in units)
    # Datagram units carry no newline; one per line here, so the file reads as JSON lines too.
    check(name, b"".join(u if sink.link.stream else u + b"\n" for u in units if u is not None))


async def test_keylog_file(tmp_path: Path) -> None:
    sink = KeylogSink(tmp_path / "keys.log")
    for batch in batches([e for e in golden_events() if sink.accepts(e)]):
        assert sink.handle_batch_nowait(batch) == len(batch)
    assert sink.sent == 3 and sink.dropped == 0
    check("keys.log", (tmp_path / "keys.log").read_bytes())


async def test_srtp_keys_file(tmp_path: Path) -> None:
    sink = SrtpKeysSink(tmp_path / "srtp.log")
    for batch in batches([e for e in golden_events() if sink.accepts(e)], 3):
        assert sink.handle_batch_nowait(batch) == len(batch)
    assert sink.sent == 5 and sink.dropped == 0
    check("srtp-keys.log", (tmp_path / "srtp.log").read_bytes())


@pytest.mark.parametrize("fmt", ["pcap", "pcapng"])
async def test_pcap_files(tmp_path: Path, fmt: str) -> None:
    # rotate_seconds 1: the dialogs span several seconds of event time, so flows continue
    # across files, each file re-emitting their handshakes.
    sink = PcapSink(PcapSettings(tmp_path, format=fmt, rotate_seconds=1.0, rotate_bytes=0))
    events = [e for e in golden_events() if sink.accepts(e)]
    for batch in batches(events, 4):
        assert sink.handle_batch_nowait(batch) == len(batch)
    await sink.aclose()
    assert sink.dropped == 0
    names = sorted(p.name for p in tmp_path.iterdir())
    check(f"{fmt}-names.txt", "".join(n + "\n" for n in names).encode())
    for i, name in enumerate(names):
        check(f"{fmt}-{i + 1}.{fmt}", (tmp_path / name).read_bytes())

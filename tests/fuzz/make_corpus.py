"""(Re)generate the seed corpus under tests/fuzz/corpus/<target>/ (run by hand; the files are
committed, and crash inputs found later are added next to them by hand).

    python -m tests.fuzz.make_corpus

Realistic traffic of the kinds siptap relays: an INVITE with SDP and a=crypto (SDES), the
provisional and final responses, ACK/BYE, OPTIONS, compact header forms, folded headers, CRLF
keepalives, a trunk stream of several messages; a real ClientHello of the customer's cipher
offer (stdlib ssl, like the lab E-SBC), a TLS 1.3-only one and plain SIP on the TLS port;
the probe's hand-built ClientHello, a ServerHello and an alert for its reader;
HEP3 packets from the encoder and the spec's worked example; pcap and pcapng files from the
encoder, plus a big-endian nanosecond pcap and a Linux cooked capture. Small files only.
"""

from __future__ import annotations

import base64
import ssl
import struct
from pathlib import Path

from siptap.sansio import hep, pcap, tls_hello
from siptap.tools.lab.customer import IMG2020_CIPHERS

CORPUS = Path(__file__).parent / "corpus"

KEY = base64.b64encode(bytes(range(1, 31))).decode()
SDP = (
    "v=0\r\no=esbc 1234 5678 IN IP4 192.0.2.10\r\ns=-\r\nc=IN IP4 192.0.2.10\r\nt=0 0\r\n"
    "m=audio 30000 RTP/SAVP 8 0 101\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:101 telephone-event/8000\r\n"
    f"a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{KEY}|2^31|1:1\r\n"
    f"a=crypto:2 AES_256_CM_HMAC_SHA1_80 inline:{base64.b64encode(bytes(46)).decode()}\r\n"
    "a=sendrecv\r\n"
).encode()
SDP_TWO_MEDIA = (
    "v=0\no=- 1 1 IN IP6 2001:db8::1\ns=-\nt=0 0\nm=audio 49170 RTP/SAVP 0\nc=IN IP6 2001:db8::5\n"
    f"a=crypto:1 AEAD_AES_128_GCM inline:{base64.b64encode(bytes(28)).decode().rstrip('=')}\n"
    "m=video 0/2 RTP/SAVP 31\n"
    f"a=crypto:7 F8_128_HMAC_SHA1_80 inline:{KEY};inline:{KEY}|2^20 FEC_ORDER=FEC_SRTP\n"
    "a=crypto:3 UNKNOWN_SUITE inline:QUJD\n"
).encode()


def invite(body: bytes = SDP) -> bytes:
    return (
        b"INVITE sip:+15551230001@core.example.com;transport=tls SIP/2.0\r\n"
        b"Via: SIP/2.0/TLS 192.0.2.10:5061;branch=z9hG4bK74bf9;rport\r\n"
        b"Max-Forwards: 70\r\n"
        b'From: "Alice \\"A\\", Sales" <sip:+15551230000@esbc.example.com;user=phone>;tag=9fxced76sl\r\n'
        b"To: <sip:+15551230001@core.example.com>\r\n"
        b"Call-ID: 3848276298220188511@esbc.example.com\r\n"
        b"CSeq: 1 INVITE\r\n"
        b"Contact: <sip:esbc.example.com:5061;transport=tls>\r\n"
        b"Allow: INVITE, ACK, CANCEL, OPTIONS, BYE\r\n"
        b"Content-Type: application/sdp\r\n"
        b"Content-Length: %d\r\n\r\n" % len(body)
    ) + body


def response(code: bytes, tag: bytes = b";tag=314159", body: bytes = b"") -> bytes:
    ctype = b"Content-Type: application/sdp\r\n" if body else b""
    return (
        b"SIP/2.0 " + code + b"\r\n"
        b"Via: SIP/2.0/TLS 192.0.2.10:5061;branch=z9hG4bK74bf9;rport=40123;received=192.0.2.10\r\n"
        b'From: "Alice \\"A\\", Sales" <sip:+15551230000@esbc.example.com;user=phone>;tag=9fxced76sl\r\n'
        b"To: <sip:+15551230001@core.example.com>" + tag + b"\r\n"
        b"Call-ID: 3848276298220188511@esbc.example.com\r\n"
        b"CSeq: 1 INVITE\r\n" + ctype + b"Content-Length: %d\r\n\r\n" % len(body)
    ) + body


ACK = (
    b"ACK sip:core.example.com;transport=tls SIP/2.0\r\nVia: SIP/2.0/TLS 192.0.2.10:5061;branch=z9hG4bKack1\r\n"
    b"From: <sip:+15551230000@esbc.example.com>;tag=9fxced76sl\r\nTo: <sip:+15551230001@core.example.com>;tag=314159\r\n"
    b"Call-ID: 3848276298220188511@esbc.example.com\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n"
)
BYE = ACK.replace(b"ACK sip", b"BYE sip").replace(b"CSeq: 1 ACK", b"CSeq: 2 BYE").replace(b"ack1", b"bye1")
OPTIONS = (
    b"OPTIONS sip:core.example.com:5061;transport=tls SIP/2.0\r\n"
    b"Via: SIP/2.0/TLS 192.0.2.10:5061;branch=z9hG4bKopt\r\nFrom: <sip:ping@esbc.example.com>;tag=o1\r\n"
    b"To: <sip:core.example.com>\r\nCall-ID: opt-1@esbc\r\nCSeq: 101 OPTIONS\r\nMax-Forwards: 0\r\n"
    b"Content-Length: 0\r\n\r\n"
)
COMPACT = (
    b"MESSAGE sip:bob@example.com SIP/2.0\r\n"
    b"v: SIP/2.0/TLS a.example.com;branch=z9hG4bK1, SIP/2.0/TLS b.example.com;branch=z9hG4bK2\r\n"
    b"f: sip:alice@example.com;tag=f1\r\nt: sip:bob@example.com\r\ni: compact@a.example.com\r\n"
    b"CSeq: 7 MESSAGE\r\nc: text/plain\r\nl: 5\r\n\r\nhello"
)
FOLDED = (
    b"NOTIFY sip:esbc.example.com SIP/2.0\r\nVia: SIP/2.0/TLS core.example.com\r\n"
    b" ;branch=z9hG4bKfold\r\nFrom: <sip:core.example.com>\r\n\t;tag=n1\r\nTo: <sip:esbc.example.com>;tag=e1\r\n"
    b"Call-ID: folded@core\r\nCSeq: 3 NOTIFY\r\nEvent: dialog\r\ncontent-length  :\r\n  0\r\n\r\n"
)


def client_hello(**kw: object) -> bytes:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if "ciphers" in kw:
        ctx.set_ciphers(str(kw["ciphers"]))
    if "minimum" in kw:
        ctx.minimum_version = kw["minimum"]  # type: ignore[assignment]
    if "maximum" in kw:
        ctx.maximum_version = kw["maximum"]  # type: ignore[assignment]
    obj = ctx.wrap_bio(ssl.MemoryBIO(), out := ssl.MemoryBIO(), server_hostname="sbc.example.com")
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return out.read()


def hep_packets() -> dict[str, bytes]:
    v4 = hep.HepPacket("192.0.2.10", "198.51.100.5", 5061, 40123, 1700000000, 123456, OPTIONS,
                       correlation_id=b"opt-1@esbc", node_name=b"siptap", auth_key=b"secret", capture_id=2001)
    v6 = hep.HepPacket("2001:db8::1", "2001:db8::2", 5061, 5061, 1, 999999, b'{"type":"tls_keys"}',
                       proto_type=hep.PROTO_LOG, ip_proto=hep.IPPROTO_IDP_TLS)
    vendor = hep.encode(v4)
    # A vendor chunk and an unknown generic chunk, which decoders must skip.
    extra = struct.pack("!HHH", 0x0003, 0x0020, 9) + b"abc" + struct.pack("!HHH", 0, 0x0099, 6)
    vendor = b"HEP3" + struct.pack("!H", len(vendor) + len(extra)) + vendor[6:] + extra
    return {"options-v4.hep": hep.encode(v4), "log-v6.hep": hep.encode(v6), "vendor-chunks.hep": vendor}


def captures() -> dict[str, bytes]:
    flow = pcap.TcpFlow(("192.0.2.10", 40123), ("198.51.100.5", 5061))
    frames = flow.handshake() + flow.segment(True, OPTIONS) + flow.segment(False, response(b"200 OK")[:40])
    frames += flow.segment(False, response(b"200 OK")[40:]) + flow.fin(True) + flow.rst(False)
    flow6 = pcap.TcpFlow(("2001:db8::1", 40000), ("2001:db8::2", 5061), isn_client=0xFFFFFFF0)
    frames6 = flow6.segment(True, COMPACT)
    out = {
        "v4-handshake-options.pcap": pcap.pcap_global_header()
        + b"".join(pcap.pcap_record(1700000000 + i, i, f) for i, f in enumerate(frames)),
        "v6-keylog.pcapng": pcap.pcapng_section_header(b"siptap") + pcap.pcapng_interface_description(name=b"lo")
        + pcap.pcapng_decryption_secrets(b"CLIENT_RANDOM " + b"ab" * 32 + b" " + b"cd" * 48 + b"\n")
        + b"".join(pcap.pcapng_enhanced_packet(1700000000, i, f) for i, f in enumerate(frames6)),
    }
    # Big-endian, nanosecond resolution, Linux cooked (SLL) link type.
    ip = frames[3][14:]
    sll = struct.pack("!HHH8sH", 0, 772, 6, bytes(8), 0x0800) + ip
    out["be-nsec-sll.pcap"] = struct.pack(">IHHiIII", 0xA1B23C4D, 2, 4, 0, 0, 65535, 113) + struct.pack(
        ">IIII", 1700000000, 999_999_999, len(sll), len(sll)) + sll
    return out


def corpus() -> dict[str, dict[str, bytes]]:
    call = invite() + response(b"100 Trying", b"") + response(b"180 Ringing") + response(b"200 OK", body=SDP)
    stream = call + ACK + b"\r\n\r\n" + b"\r\n" + BYE + response(b"200 OK")
    sip = {
        "invite-sdes.sip": invite(),
        "trying-100.sip": response(b"100 Trying", b""),
        "ok-200-sdp.sip": response(b"200 OK", body=SDP),
        "ack.sip": ACK,
        "bye.sip": BYE,
        "options.sip": OPTIONS,
        "compact-forms.sip": COMPACT,
        "folded-headers.sip": FOLDED,
        "keepalive-ping.bin": b"\r\n\r\n",
        "keepalive-pong.bin": b"\r\n",
        "trunk-call-stream.sip": stream,
        "garbage-then-sip.bin": b"\x16\x03\x01\x00\x05hello\r\nnot sip\r\n\r\n" + OPTIONS,
        "conflicting-content-length.sip": OPTIONS.replace(b"Content-Length: 0", b"Content-Length: 0\r\nl: 3"),
        # Control prefix (first byte < 8, see targets._Input): tiny header/message limits.
        "small-limits.bin": b"\x03\x40\x10" + invite(),
    }
    # What the framer skips and resynchronises after (issue 13), each followed by messages.
    tiny = b"BYE sip:x SIP/2.0\r\nCall-ID: t\r\nCSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n"
    sip.update({
        # header limit 4 + 0xc8 = 204: the first header block exceeds it, the BYE does not
        "resync-oversized-header.bin": b"\x01\xc8" + ACK.replace(b"\r\n\r\n", b"\r\nX-Pad: " + b"p" * 300 + b"\r\n\r\n")
        + tiny + b"\r\n\r\n" + tiny,
        "resync-lying-content-length.sip": BYE.replace(b"Content-Length: 0", b"Content-Length: 300") + OPTIONS + ACK,
        "resync-invalid-content-length.sip": BYE.replace(b"Content-Length: 0", b"Content-Length: -4") + b"body\r\n"
        + OPTIONS,
        "resync-missing-blank-line.sip": BYE[:-2] + OPTIONS + ACK,
        "resync-binary-mid-stream.bin": ACK + bytes(range(256)) + b"\r\n" + BYE,
        "resync-sipfrag-body.sip": OPTIONS.replace(b"Content-Length: 0", b"Content-Type: message/sipfrag\r\n"
                                                   b"Content-Length: 16") + b"SIP/2.0 200 OK\r\n" + BYE,
    })
    return {
        "sip_framer": dict(sip),
        "sip_message": {k: v for k, v in sip.items() if k.endswith(".sip")},
        "sdp_crypto": {"offer.sdp": SDP, "two-media-v6-lf.sdp": SDP_TWO_MEDIA},
        "hep": hep_packets(),
        "pcap_reader": captures(),
        "pcap_writer": {"sip-payloads.bin": b"\x0b" + OPTIONS + b"\x00\x00" + response(b"200 OK"),
                        "v6-small-mss.bin": b"\x07\x02" + COMPACT},
        "tls_hello": {
            "esbc-img2020.hello": client_hello(ciphers=IMG2020_CIPHERS),
            "tls13-only.hello": client_hello(minimum=ssl.TLSVersion.TLSv1_3),
            "ecdhe-only-tls12.hello": client_hello(ciphers="ECDHE-RSA-AES128-GCM-SHA256",
                                                   maximum=ssl.TLSVersion.TLSv1_2),
            "plain-sip.bin": OPTIONS,
            "http.bin": b"GET / HTTP/1.1\r\nHost: sbc\r\n\r\n",
            # The probe's side: its hand-built hello, and a server's answers to read back.
            "probe-tls12.hello": tls_hello.build_client_hello(0x0303, (0xC0A0, 0xC050, 0x000A, 0x009C),
                                                             random=bytes(32), server_name="sbc.example"),
            "server-hello-tls12.bin": server_hello(),
            "alert-protocol-version.bin": b"\x15\x03\x03\x00\x02\x02\x46",
        },
    }


def server_hello() -> bytes:
    """A TLS 1.2 ServerHello choosing ARIA-128-GCM, with EMS, renegotiation_info and a ticket promise."""
    extensions = b"\x00\x17\x00\x00" + b"\xff\x01\x00\x01\x00" + b"\x00\x23\x00\x00"
    body = b"\x03\x03" + bytes(range(32)) + b"\x20" + bytes(32) + b"\xc0\x50\x00"
    body += len(extensions).to_bytes(2, "big") + extensions
    handshake = b"\x02" + len(body).to_bytes(3, "big") + body
    return b"\x16\x03\x03" + len(handshake).to_bytes(2, "big") + handshake


def main() -> None:
    for target, files in corpus().items():
        folder = CORPUS / target
        # Keep regression inputs (crash-*, regress-*) found by fuzzing; rewrite the seeds.
        if folder.exists():
            for path in folder.iterdir():
                if not path.name.startswith(("crash-", "regress-")):
                    path.unlink()
        folder.mkdir(parents=True, exist_ok=True)
        for name, data in files.items():
            (folder / name).write_bytes(data)
        print(f"{target}: {len(files)} files")


if __name__ == "__main__":
    main()

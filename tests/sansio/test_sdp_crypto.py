"""SDES a=crypto extraction (RFC 4568) with known key/salt vectors and hostile bodies."""

from __future__ import annotations

import base64
import shutil
import subprocess
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from siptap.sansio.sdp_crypto import SdesKey, key_salt_lengths, parse_sdp_crypto

KEY16 = bytes(range(16))
SALT14 = bytes(range(100, 114))
B64_30 = base64.b64encode(KEY16 + SALT14).decode()


def sdp(*lines: str, eol: str = "\r\n") -> bytes:
    return (eol.join(lines) + eol).encode()


BASIC = [
    "v=0",
    "o=- 1 1 IN IP4 192.0.2.1",
    "s=-",
    "c=IN IP4 192.0.2.1",
    "t=0 0",
    "m=audio 49170 RTP/SAVP 0 8 101",
    f"a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{B64_30}|2^20|1:4",
    "a=rtpmap:0 PCMU/8000",
]


@pytest.mark.parametrize("eol", ["\r\n", "\n"])
def test_basic_key_and_salt(eol: str) -> None:
    (key,) = parse_sdp_crypto(sdp(*BASIC, eol=eol))
    assert key == SdesKey(
        tag=1,
        suite="AES_CM_128_HMAC_SHA1_80",
        key_params_b64=B64_30,
        master_key=KEY16,
        master_salt=SALT14,
        lifetime="2^20",
        mki="1:4",
        media="audio",
        port=49170,
        connection_address="192.0.2.1",
        session_params=(),
    )
    assert key.master_key_hex == "000102030405060708090a0b0c0d0e0f"
    assert key.master_salt_hex == "6465666768696a6b6c6d6e6f7071"


def test_rfc4568_example() -> None:
    # RFC 4568 §4 example attribute.
    body = sdp(
        "v=0",
        "m=audio 49170 RTP/SAVP 0",
        "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR|2^20|1:32",
    )
    (key,) = parse_sdp_crypto(body)
    assert key.master_key_hex == "3d2d6e40255e7821426a75667239293f"
    assert key.master_salt_hex == "2c2335685c603d265d7b71695051"
    assert (key.lifetime, key.mki, key.connection_address) == ("2^20", "1:32", None)


@pytest.mark.parametrize(
    "suite,key_len,salt_len",
    [
        ("AES_CM_128_HMAC_SHA1_80", 16, 14),
        ("AES_CM_128_HMAC_SHA1_32", 16, 14),
        ("F8_128_HMAC_SHA1_80", 16, 14),
        ("AES_192_CM_HMAC_SHA1_80", 24, 14),
        ("AES_192_CM_HMAC_SHA1_32", 24, 14),
        ("AES_256_CM_HMAC_SHA1_80", 32, 14),
        ("AES_256_CM_HMAC_SHA1_32", 32, 14),
        ("AES_CM_256_HMAC_SHA1_80", 32, 14),  # vendor spelling
        ("AEAD_AES_128_GCM", 16, 12),
        ("AEAD_AES_256_GCM", 32, 12),
    ],
)
def test_suite_lengths(suite: str, key_len: int, salt_len: int) -> None:
    material = bytes(range(1, key_len + salt_len + 1))
    b64 = base64.b64encode(material).decode()
    (key,) = parse_sdp_crypto(sdp("v=0", "m=video 5004 RTP/SAVP 96", f"a=crypto:7 {suite} inline:{b64}"))
    assert (key.tag, key.suite, key.media, key.port) == (7, suite, "video", 5004)
    assert key.master_key == material[:key_len]
    assert key.master_salt == material[key_len:]
    assert key_salt_lengths(suite) == (key_len, salt_len)


def test_unknown_suite_keeps_raw_bytes() -> None:
    raw = b"\xff" * 20
    b64 = base64.b64encode(raw).decode()
    (key,) = parse_sdp_crypto(sdp("m=audio 1 RTP/SAVP 0", f"a=crypto:3 FANCY_NEW_SUITE inline:{b64}"))
    assert (key.master_key, key.master_salt, key.suite) == (raw, b"", "FANCY_NEW_SUITE")
    assert key_salt_lengths("FANCY_NEW_SUITE") is None


def test_unpadded_base64_accepted() -> None:
    material = bytes(range(44))  # AEAD_AES_256_GCM: 44 octets, base64 ends with one "="
    b64 = base64.b64encode(material).decode()
    assert b64.endswith("=")
    (key,) = parse_sdp_crypto(sdp("m=audio 1 RTP/SAVP 0", f"a=crypto:1 AEAD_AES_256_GCM inline:{b64.rstrip('=')}"))
    assert key.master_key + key.master_salt == material
    assert key.key_params_b64 == b64.rstrip("=")


def test_multiple_media_sections_and_connection_override() -> None:
    b64_video = base64.b64encode(bytes(range(200, 230))).decode()
    body = sdp(
        "v=0",
        "o=- 1 1 IN IP4 192.0.2.1",
        "s=-",
        "c=IN IP4 192.0.2.1",
        "t=0 0",
        "m=audio 49170 RTP/SAVP 0",
        f"a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{B64_30}",
        f"a=crypto:2 AES_CM_128_HMAC_SHA1_32 inline:{B64_30}|2^31",
        "m=video 51372/2 RTP/SAVP 96",
        "c=IN IP6 2001:db8::7",
        f"a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{b64_video} UNENCRYPTED_SRTCP KDR=23",
        "m=audio 0 RTP/AVP 0",  # rejected stream without crypto
        "m=audio 6000 RTP/SAVP 0",
        "c=IN IP4 233.252.0.1/127/3",
        f"a=crypto:9 AES_CM_128_HMAC_SHA1_80 inline:{B64_30}",
    )
    keys = parse_sdp_crypto(body)
    assert [(k.tag, k.media, k.port, k.connection_address) for k in keys] == [
        (1, "audio", 49170, "192.0.2.1"),
        (2, "audio", 49170, "192.0.2.1"),
        (1, "video", 51372, "2001:db8::7"),
        (9, "audio", 6000, "233.252.0.1"),
    ]
    assert keys[1].lifetime == "2^31" and keys[1].mki is None
    assert keys[2].master_key == bytes(range(200, 216))
    assert keys[2].session_params == ("UNENCRYPTED_SRTCP", "KDR=23")


def test_media_connection_after_crypto_still_applies() -> None:
    body = sdp(
        "c=IN IP4 192.0.2.1",
        "m=audio 4000 RTP/SAVP 0",
        f"a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{B64_30}",
        "c=IN IP4 198.51.100.9",
    )
    (key,) = parse_sdp_crypto(body)
    assert key.connection_address == "198.51.100.9"


def test_multiple_inline_key_params_each_yield_a_key() -> None:
    other = base64.b64encode(bytes(range(30, 60))).decode()
    body = sdp(
        "m=audio 4000 RTP/SAVP 0",
        f"a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{B64_30}|2^20|1:4;inline:{other}|2^20|2:4 FEC_ORDER=FEC_SRTP",
    )
    keys = parse_sdp_crypto(body)
    assert [(k.key_params_b64, k.mki) for k in keys] == [(B64_30, "1:4"), (other, "2:4")]
    assert all(k.session_params == ("FEC_ORDER=FEC_SRTP",) for k in keys)
    assert keys[1].master_key == bytes(range(30, 46))


def test_mki_without_lifetime() -> None:
    (key,) = parse_sdp_crypto(sdp("m=audio 4000 RTP/SAVP 0", f"a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{B64_30}|1:4"))
    assert (key.lifetime, key.mki) == (None, "1:4")


def test_garbage_lines_are_skipped() -> None:
    good = f"a=crypto:5 AES_CM_128_HMAC_SHA1_80 inline:{B64_30}"
    short = base64.b64encode(b"short").decode()
    body = sdp(
        "this is not sdp",
        "=",
        "",
        f"a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{B64_30}",  # session level: not allowed
        "c=IN",
        "m=audio 4000 RTP/SAVP 0",
        "a=crypto:",
        "a=crypto:x AES_CM_128_HMAC_SHA1_80 inline:" + B64_30,
        "a=crypto:1234567890 AES_CM_128_HMAC_SHA1_80 inline:" + B64_30,  # tag > 9 digits
        "a=crypto:1 AES_CM_128_HMAC_SHA1_80",
        "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:!!!notbase64!!!",
        "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:",
        f"a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{short}",  # wrong length for the suite
        f"a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{B64_30}|bogus",
        f"a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{B64_30}|1:4|2^20",  # MKI before lifetime
        f"a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{B64_30}|2^20|1:4|9",
        f"a=crypto:1 AES_CM_128_HMAC_SHA1_80 uri:{B64_30}",  # not inline
        good,
        "m=audio notaport RTP/SAVP 0",
        f"a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{B64_30}",  # in a malformed media section
        "m=audio 70000 RTP/SAVP 0",
        f"a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{B64_30}",
        "m=audio",
        f"a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{B64_30}",
    )
    keys = parse_sdp_crypto(body)
    assert [(k.tag, k.port) for k in keys] == [(5, 4000)]


def test_non_utf8_body_and_empty_inputs() -> None:
    body = (
        b"v=0\r\ns=\xff\xfe caf\xe9\r\nc=IN IP4 10.0.0.1\r\nm=audio 7078 RTP/SAVP 0\r\n"
        + f"a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{B64_30}\r\n".encode()
        + b"a=x-\x80\x81\r\n"
    )
    (key,) = parse_sdp_crypto(body)
    assert (key.port, key.connection_address, key.master_key) == (7078, "10.0.0.1", KEY16)
    assert parse_sdp_crypto(b"") == []
    assert parse_sdp_crypto(b"\x00\xff" * 100) == []


def test_trailing_whitespace_and_tabs_tolerated() -> None:
    body = sdp("m=audio 4000 RTP/SAVP 0", f"a=crypto:1\tAES_CM_128_HMAC_SHA1_80\tinline:{B64_30}  ")
    (key,) = parse_sdp_crypto(body)
    assert key.master_salt == SALT14


def test_key_is_frozen() -> None:
    (key,) = parse_sdp_crypto(sdp(*BASIC))
    with pytest.raises(AttributeError):
        key.tag = 2  # type: ignore[misc]


@given(st.binary(max_size=2000))
def test_never_raises_on_bytes(body: bytes) -> None:
    parse_sdp_crypto(body)


@given(st.lists(st.sampled_from([*BASIC, "m=video 1 RTP/SAVP 0", "c=IN IP4 1.2.3.4", "a=crypto:1 X y", "junk"])))
def test_never_raises_on_shuffled_lines(lines: list[str]) -> None:
    for key in parse_sdp_crypto(sdp(*lines) if lines else b""):
        assert key.master_key == KEY16


@pytest.mark.peers
@pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark not installed")
def test_wireshark_agrees_on_key_and_salt(tmp_path: Path) -> None:
    from siptap.sansio import pcap

    sdp_body = sdp(*BASIC)
    invite = (
        b"INVITE sip:bob@192.0.2.2 SIP/2.0\r\n"
        b"Via: SIP/2.0/TLS 192.0.2.1:40000;branch=z9hG4bK1\r\n"
        b"From: <sip:a@x>;tag=1\r\nTo: <sip:bob@x>\r\nCall-ID: sdes@x\r\nCSeq: 1 INVITE\r\n"
        b"Contact: <sip:a@192.0.2.1:40000;transport=tls>\r\n"
        b"Content-Type: application/sdp\r\nContent-Length: %d\r\n\r\n" % len(sdp_body)
    ) + sdp_body
    flow = pcap.TcpFlow(("192.0.2.1", 40000), ("192.0.2.2", 5061))
    frames = flow.handshake() + flow.segment(True, invite)
    path = tmp_path / "sdes.pcap"
    path.write_bytes(pcap.pcap_global_header() + b"".join(pcap.pcap_record(0, i, fr) for i, fr in enumerate(frames)))
    out = subprocess.run(
        ["tshark", "-r", str(path), "-d", "tcp.port==5061,sip", "-Y", "sdp",
         "-T", "fields", "-e", "sdp.crypto.master_key", "-e", "sdp.crypto.master_salt"],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout.split()  # fmt: skip
    (key,) = parse_sdp_crypto(sdp_body)
    assert [s.replace(":", "") for s in out] == [key.master_key_hex, key.master_salt_hex]

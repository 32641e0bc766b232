"""The probe's half of tls_hello: hand-built ClientHellos, and the server's answer read back.

Round trips: a built hello parsed by the ClientHelloSniffer; a built hello fed to a real OpenSSL
server (the stdlib's, in memory, no socket) whose ServerHello is then read; constructed
ServerHello, HelloRetryRequest and alert bytes, whole and split anywhere.
"""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from siptap.sansio.tls_hello import (
    EXT_ENCRYPT_THEN_MAC,
    EXT_EXTENDED_MASTER_SECRET,
    EXT_KEY_SHARE,
    EXT_RENEGOTIATION_INFO,
    EXT_SESSION_TICKET,
    EXT_STATUS_REQUEST,
    EXT_SUPPORTED_VERSIONS,
    HELLO_RETRY_RANDOM,
    TLS12,
    TLS13,
    Alert,
    ClientHello,
    ClientHelloSniffer,
    NotTls,
    ServerHello,
    ServerHelloReader,
    build_client_hello,
)
from siptap.sansio.tls_suites import (
    TLS12_SUITE_NAMES,
    TLS13_SUITE_NAMES,
    is_cbc_suite,
    key_exchange_of_suite,
    suite_name,
)

RANDOM = bytes(range(32))
KEY_SHARE = bytes(range(1, 33))
# Suites no OpenSSL build negotiates by default: CCM_8, ARIA, CAMELLIA, 3DES, SEED, and a GOST one.
EXOTIC = (0xC0A0, 0xC050, 0x0041, 0x000A, 0x0096, 0xC100)


def sniffed(data: bytes) -> ClientHello:
    sniffer = ClientHelloSniffer()
    sniffer.feed(data)
    assert isinstance(sniffer.result, ClientHello), sniffer.result
    return sniffer.result


def read(data: bytes, chunk: int | None = None) -> ServerHello | Alert | NotTls | None:
    reader = ServerHelloReader()
    step = chunk or len(data)
    for i in range(0, len(data), step):
        reader.feed(data[i : i + step])
    return reader.result


def test_tls12_hello_offers_exactly_what_it_is_given() -> None:
    data = build_client_hello(TLS12, EXOTIC, random=RANDOM, server_name="sbc.example.net")
    assert data[:3] == b"\x16\x03\x03"  # the record carries the offered version
    hello = sniffed(data)
    assert hello.legacy_version == TLS12 and hello.versions == (TLS12,)
    assert hello.cipher_suites == EXOTIC
    assert hello.sni == "sbc.example.net"
    for ext in (EXT_EXTENDED_MASTER_SECRET, EXT_ENCRYPT_THEN_MAC, EXT_RENEGOTIATION_INFO, EXT_SESSION_TICKET,
                EXT_STATUS_REQUEST):
        assert ext in hello.extensions
    assert EXT_SUPPORTED_VERSIONS not in hello.extensions and EXT_KEY_SHARE not in hello.extensions


def test_tls13_hello_carries_the_version_and_a_key_share() -> None:
    data = build_client_hello(TLS13, (0x1301, 0x1305), random=RANDOM, key_share=KEY_SHARE, session_id=bytes(32))
    hello = sniffed(data)
    assert hello.legacy_version == TLS12 and hello.versions == (TLS13,)
    assert hello.tls13_only and hello.cipher_suites == (0x1301, 0x1305) and hello.session_id_length == 32
    assert EXT_KEY_SHARE in hello.extensions and EXT_RENEGOTIATION_INFO not in hello.extensions
    assert hello.sni is None
    with pytest.raises(ValueError, match="key_share"):
        build_client_hello(TLS13, (0x1301,), random=RANDOM)
    with pytest.raises(ValueError, match="random"):
        build_client_hello(TLS12, (0x002F,), random=b"short")


def openssl_answer(pki: Path, hello: bytes, *, ciphers: str | None = None,
                   maximum: ssl.TLSVersion = ssl.TLSVersion.TLSv1_3) -> bytes:
    """A real OpenSSL server (the stdlib's, on memory BIOs) answering ``hello``."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(pki / "core.pem", pki / "core.key")
    ctx.maximum_version = maximum
    if ciphers:
        ctx.set_ciphers(ciphers)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    server = ctx.wrap_bio(incoming, outgoing, server_side=True)
    incoming.write(hello)
    try:
        server.do_handshake()
    except ssl.SSLWantReadError:
        pass
    except ssl.SSLError:
        pass  # an alert is queued in ``outgoing``
    return outgoing.read()


def test_openssl_server_answers_a_built_tls12_hello(pki: Path) -> None:
    offer = (*EXOTIC, 0x009C, 0xC030)  # OpenSSL can serve the last two with an RSA key
    answer = read(openssl_answer(pki, build_client_hello(TLS12, offer, random=RANDOM, server_name="localhost"),
                                 ciphers="AES128-GCM-SHA256:ECDHE-RSA-AES256-GCM-SHA384"))
    assert isinstance(answer, ServerHello), answer
    assert answer.version == TLS12 and answer.version_name == "TLSv1.2"
    assert answer.cipher_suite in (0x009C, 0xC030) and not answer.hello_retry
    assert answer.has(EXT_EXTENDED_MASTER_SECRET) and answer.has(EXT_RENEGOTIATION_INFO)
    assert not answer.has(EXT_ENCRYPT_THEN_MAC)  # an AEAD suite: encrypt-then-MAC does not apply


def test_openssl_server_echoes_encrypt_then_mac_for_cbc(pki: Path) -> None:
    hello = build_client_hello(TLS12, (0x002F,), random=RANDOM)
    answer = read(openssl_answer(pki, hello, ciphers="AES128-SHA"))
    assert isinstance(answer, ServerHello) and answer.cipher_suite == 0x002F
    assert answer.has(EXT_ENCRYPT_THEN_MAC)


def test_openssl_server_answers_a_built_tls13_hello(pki: Path) -> None:
    hello = build_client_hello(TLS13, (0x1305, 0x1302), random=RANDOM, key_share=KEY_SHARE, session_id=bytes(32))
    answer = read(openssl_answer(pki, hello))
    assert isinstance(answer, ServerHello), answer
    assert answer.version == TLS13 and answer.cipher_suite == 0x1302  # CCM_8 is off by default
    assert answer.has(EXT_SUPPORTED_VERSIONS) and answer.has(EXT_KEY_SHARE)


def test_openssl_server_refuses_with_an_alert(pki: Path) -> None:
    no_common = read(openssl_answer(pki, build_client_hello(TLS12, EXOTIC, random=RANDOM)))
    assert no_common == Alert(2, 40) and no_common.name == "handshake_failure"
    old = read(openssl_answer(pki, build_client_hello(0x0301, (0x002F,), random=RANDOM)))
    assert isinstance(old, Alert) and old.name == "protocol_version"


def constructed_server_hello(*, random: bytes = RANDOM, suite: int = 0xC050, extensions: bytes = b"") -> bytes:
    body = b"\x03\x03" + random + b"\x20" + bytes(32) + suite.to_bytes(2, "big") + b"\x00"
    body += len(extensions).to_bytes(2, "big") + extensions
    handshake = b"\x02" + len(body).to_bytes(3, "big") + body
    return b"\x16\x03\x03" + len(handshake).to_bytes(2, "big") + handshake


@pytest.mark.parametrize("chunk", [1, 5, 6, 50, None])
def test_constructed_server_hello_split_anywhere(chunk: int | None) -> None:
    ems_and_reneg = b"\x00\x17\x00\x00" + b"\xff\x01\x00\x01\x00"
    answer = read(constructed_server_hello(extensions=ems_and_reneg), chunk)
    assert answer == ServerHello(version=TLS12, cipher_suite=0xC050, extensions=(0x0017, 0xFF01),
                                 session_id=bytes(32), hello_retry=False)


def test_hello_retry_request_names_its_suite() -> None:
    supported_versions = b"\x00\x2b\x00\x02\x03\x04"
    answer = read(constructed_server_hello(random=HELLO_RETRY_RANDOM, suite=0x1304, extensions=supported_versions))
    assert isinstance(answer, ServerHello)
    assert answer.hello_retry and answer.version == TLS13 and answer.cipher_suite == 0x1304


def test_a_record_split_across_two_records_and_a_fatal_alert() -> None:
    whole = constructed_server_hello()
    handshake = whole[5:]
    two_records = (b"\x16\x03\x03" + (10).to_bytes(2, "big") + handshake[:10]
                   + b"\x16\x03\x03" + len(handshake[10:]).to_bytes(2, "big") + handshake[10:])
    assert read(two_records) == read(whole)
    assert read(b"\x15\x03\x03\x00\x02\x02\x46") == Alert(2, 70)
    assert read(b"\x16\x03\x03\x00\x10" + bytes(4)) is None  # more bytes needed


def test_not_tls_and_malformed_never_raise() -> None:
    assert isinstance(read(b"SIP/2.0 400 Bad Request\r\n\r\n"), NotTls)
    reader = ServerHelloReader()
    reader.feed(b"\x16\x03\x03\x00\x05" + b"\x01\x00\x00\x01\x00")  # a handshake that is no ServerHello
    assert reader.done and reader.result is None
    reader = ServerHelloReader()
    reader.feed(b"\x16\x03\x03\x00\x08" + b"\x02\x00\x00\x04\x03\x03\x00\x00")  # truncated body
    assert reader.done and reader.result is None


def test_registry() -> None:
    assert len(TLS12_SUITE_NAMES) > 300
    assert suite_name(0xC0A0) == "TLS_RSA_WITH_AES_128_CCM_8"
    assert suite_name(0x1305) == "TLS_AES_128_CCM_8_SHA256"
    assert not set(TLS12_SUITE_NAMES) & set(TLS13_SUITE_NAMES)
    assert key_exchange_of_suite(0x009D) == "RSA" and key_exchange_of_suite(0xC030) == "ECDHE"
    assert key_exchange_of_suite(0x1301) == "TLSv1.3" and key_exchange_of_suite(0xFFFF) is None
    assert is_cbc_suite(0x0041) and not is_cbc_suite(0x009C)

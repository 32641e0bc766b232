"""The ClientHello sniffer, fed with real ClientHellos made by the stdlib's OpenSSL."""

from __future__ import annotations

import ssl

import pytest

from siptap.sansio.tls_hello import (
    TLS12,
    TLS13,
    ClientHello,
    ClientHelloSniffer,
    NotTls,
    described,
    suite_name,
)


def real_client_hello(**settings: object) -> bytes:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if "ciphers" in settings:
        ctx.set_ciphers(settings["ciphers"])  # type: ignore[arg-type]
    if "minimum" in settings:
        ctx.minimum_version = settings["minimum"]  # type: ignore[assignment]
    if "maximum" in settings:
        ctx.maximum_version = settings["maximum"]  # type: ignore[assignment]
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname="esbc.example")
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    return outgoing.read()


def sniff(data: bytes, chunk: int | None = None) -> ClientHello | NotTls | None:
    sniffer = ClientHelloSniffer()
    step = chunk or len(data)
    for i in range(0, len(data), step):
        sniffer.feed(data[i : i + step])
    return sniffer.result


def test_default_hello() -> None:
    hello = sniff(real_client_hello())
    assert isinstance(hello, ClientHello)
    assert hello.versions[:2] == (TLS13, TLS12)
    assert hello.sni == "esbc.example"
    assert hello.offers_ems
    assert not hello.tls13_only
    # design.md: Python's default client cipher list has no RSA key exchange suite.
    assert hello.only_forward_secret and hello.rsa_kex_suites == ()


@pytest.mark.parametrize("chunk", [1, 3, 7, 100])
def test_split_anywhere(chunk: int) -> None:
    data = real_client_hello()
    assert sniff(data, chunk) == sniff(data)


def test_tls13_only() -> None:
    hello = sniff(real_client_hello(minimum=ssl.TLSVersion.TLSv1_3))
    assert isinstance(hello, ClientHello) and hello.tls13_only


def test_ecdhe_only() -> None:
    hello = sniff(real_client_hello(ciphers="ECDHE-RSA-AES128-GCM-SHA256", maximum=ssl.TLSVersion.TLSv1_2))
    assert isinstance(hello, ClientHello)
    assert hello.only_forward_secret and hello.rsa_kex_suites == ()
    assert "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256" in hello.summary()["cipher_suites"]  # type: ignore[operator]


def test_rsa_suites_detected() -> None:
    hello = sniff(real_client_hello(ciphers="ECDHE-RSA-AES128-GCM-SHA256:AES256-GCM-SHA384"))
    assert isinstance(hello, ClientHello)
    assert hello.rsa_kex_suites == (0x009D,) and not hello.only_forward_secret


@pytest.mark.parametrize(
    ("data", "looks_like"),
    [
        (b"OPTIONS sip:x SIP/2.0\r\nVia: x\r\n\r\n", "plain SIP"),
        (b"GET / HTTP/1.1\r\n\r\n", "HTTP"),
        (b"\x00\x01\x02\x03\x04\x05\x06\x07\x08\n", "not TLS"),
    ],
)
def test_not_tls(data: bytes, looks_like: str) -> None:
    result = sniff(data)
    assert isinstance(result, NotTls) and looks_like in result.looks_like


def test_partial_and_malformed_never_raise() -> None:
    data = real_client_hello()
    assert sniff(data[:20]) is None
    corrupted = data[:9] + b"\xff\xff" + data[11:]
    sniff(corrupted)  # no exception whatever the verdict
    sniffer = ClientHelloSniffer(max_bytes=64)
    sniffer.feed(b"\x16\x03\x01\xff\xff" + bytes(200))
    assert sniffer.done and sniffer.result is None


def test_suite_names() -> None:
    assert suite_name(0x009D) == "TLS_RSA_WITH_AES_256_GCM_SHA384"
    assert suite_name(0xABCD) == "0xABCD"


def test_described_is_the_summary_made_once_per_distinct_hello() -> None:
    hello = ClientHello(0x0303, (0x0303,), (0xC030, 0x009D), (0x0017,), "a.example", 0)
    first = described(hello)
    assert first == hello.summary()
    assert described(ClientHello(0x0303, (0x0303,), (0xC030, 0x009D), (0x0017,), "a.example", 0)) is first
    assert described(ClientHello(0x0303, (0x0303,), (0x009D,), (0x0017,), "a.example", 0))["cipher_suites"] == [
        suite_name(0x009D)]

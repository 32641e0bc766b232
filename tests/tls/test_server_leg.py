"""The customer-facing server leg over real loopback sockets, with a real (stdlib ssl) client."""

from __future__ import annotations

import functools
import ssl
from pathlib import Path

import pytest
import trio

from siptap.config import ServerTlsSettings
from siptap.errors import CertificateError, HandshakeFailed
from siptap.sansio.keylog import parse_line
from siptap.tls.contexts import build_server_context
from siptap.tls.stream import OpenSSLStream
from tests.tls.helpers import IMG2020_CIPHERS, customer_client_context

RSA_SUITES = {"AES256-GCM-SHA384", "AES128-GCM-SHA256", "AES256-SHA256", "AES128-SHA256", "AES256-SHA", "AES128-SHA"}


def server_settings(pki: Path, **overrides: object) -> ServerTlsSettings:
    base = dict(cert=pki / "proxy-server.pem", key=pki / "proxy-server.key", client_ca=pki / "ca.pem")
    base.update(overrides)
    return ServerTlsSettings(**base)  # type: ignore[arg-type]  # overrides are untyped keyword values


class OneShotServer:
    """Accepts connections, handshakes each, records the facts or the failure."""

    def __init__(self, settings: ServerTlsSettings, timeout: float = 10.0) -> None:
        self.ctx = build_server_context(settings)
        self.timeout = timeout
        self.results: trio.MemorySendChannel
        self.send, self.receive = trio.open_memory_channel(100)

    async def handler(self, tcp: trio.SocketStream) -> None:
        stream = OpenSSLStream(tcp, self.ctx, server_side=True, leg="customer")
        try:
            facts = await stream.do_handshake(self.timeout)
        except HandshakeFailed as exc:
            await self.send.send(exc)
            await stream.aclose()
            return
        await self.send.send(facts)
        data = await stream.receive_some()
        await stream.send_all(data[::-1])
        await stream.aclose()


async def start(nursery: trio.Nursery, server: OneShotServer) -> int:
    listeners = await nursery.start(functools.partial(trio.serve_tcp, server.handler, 0, host="127.0.0.1"))
    return listeners[0].socket.getsockname()[1]


async def client_attempt(port: int, ctx: ssl.SSLContext) -> str:
    """Run a stdlib-ssl client; return its cipher on success or the error text."""
    tcp = await trio.open_tcp_stream("127.0.0.1", port)
    client = trio.SSLStream(tcp, ctx, server_hostname="localhost")
    try:
        await client.do_handshake()
        await client.send_all(b"OPTIONS")
        reply = await client.receive_some()
        assert reply == b"SNOITPO"
        return client.cipher()[0]
    except (ssl.SSLError, trio.BrokenResourceError) as exc:
        return f"error: {exc!r} {exc.__cause__!r}"
    finally:
        await client.aclose()


async def test_img2020_client_gets_rsa_key_exchange(pki: Path) -> None:
    server = OneShotServer(server_settings(pki))
    async with trio.open_nursery() as nursery:
        port = await start(nursery, server)
        cipher = await client_attempt(port, customer_client_context(pki, ciphers=IMG2020_CIPHERS))
        facts = await server.receive.receive()
        nursery.cancel_scope.cancel()
    assert cipher == "AES256-GCM-SHA384"
    assert facts.version == "TLSv1.2"
    assert facts.cipher in RSA_SUITES and facts.key_exchange == "RSA"
    assert facts.extended_master_secret is True
    assert facts.session_reused is False
    assert facts.peer_chain[0].common_name == "customer"
    assert facts.peer_chain[-1].common_name == "siptap lab CA"
    assert facts.client_offer is not None
    tls12_offer = [name for name in facts.client_offer["cipher_suites"] if "_WITH_" in name]
    assert tls12_offer[0].startswith("TLS_ECDHE")  # the client preferred ECDHE; we chose RSA
    lines = [parse_line(line) for line in facts.keylog_lines]
    client_random_lines = [line for line in lines if line and line.label == "CLIENT_RANDOM"]
    assert len(client_random_lines) == 1
    assert client_random_lines[0].random == facts.client_random
    assert client_random_lines[0].secret == facts.master_secret


async def test_every_connection_is_a_full_handshake(pki: Path) -> None:
    """No tickets, no cache: a client that tries to resume gets a new full RSA handshake."""
    server = OneShotServer(server_settings(pki))
    ctx = customer_client_context(pki, maximum=ssl.TLSVersion.TLSv1_2)
    async with trio.open_nursery() as nursery:
        port = await start(nursery, server)
        tcp = await trio.open_tcp_stream("127.0.0.1", port)
        first = trio.SSLStream(tcp, ctx, server_hostname="localhost")
        await first.send_all(b"x")
        await first.receive_some()
        session = first._ssl_object.session
        await first.aclose()
        tcp = await trio.open_tcp_stream("127.0.0.1", port)
        second = trio.SSLStream(tcp, ctx, server_hostname="localhost")
        second._ssl_object.session = session
        await second.send_all(b"y")
        await second.receive_some()
        reused = second._ssl_object.session_reused
        await second.aclose()
        facts = [await server.receive.receive(), await server.receive.receive()]
        nursery.cancel_scope.cancel()
    assert reused is False
    assert [f.session_reused for f in facts] == [False, False]
    assert facts[0].client_random != facts[1].client_random


async def test_sngrep_compatible_turns_off_ems_and_restricts_suites(pki: Path) -> None:
    server = OneShotServer(server_settings(pki, sngrep_compatible=True))
    async with trio.open_nursery() as nursery:
        port = await start(nursery, server)
        cipher = await client_attempt(port, customer_client_context(pki))
        facts = await server.receive.receive()
        nursery.cancel_scope.cancel()
    assert cipher == "AES256-GCM-SHA384"
    assert facts.extended_master_secret is False


async def test_key_exchange_any_lets_tls13_through(pki: Path) -> None:
    # No max_version: with "any" the default ceiling is TLS 1.3 (README, config.toml).
    server = OneShotServer(server_settings(pki, key_exchange="any"))
    async with trio.open_nursery() as nursery:
        port = await start(nursery, server)
        cipher = await client_attempt(port, customer_client_context(pki, minimum=ssl.TLSVersion.TLSv1_3))
        facts = await server.receive.receive()
        nursery.cancel_scope.cancel()
    assert cipher.startswith("TLS_")
    assert facts.version == "TLSv1.3" and facts.key_exchange.startswith("TLSv1.3")
    labels = {parse_line(line).label for line in facts.keylog_lines}  # type: ignore[union-attr]  # the channel carries facts or a failure; here facts
    assert {"CLIENT_HANDSHAKE_TRAFFIC_SECRET", "SERVER_HANDSHAKE_TRAFFIC_SECRET",
            "CLIENT_TRAFFIC_SECRET_0", "SERVER_TRAFFIC_SECRET_0", "EXPORTER_SECRET"} <= labels
    assert facts.master_secret is None


@pytest.mark.parametrize(
    ("client_kwargs", "settings_kwargs", "reason", "detail_part"),
    [
        (dict(ciphers="ECDHE-RSA-AES256-GCM-SHA384:ECDHE-RSA-AES128-SHA", maximum=ssl.TLSVersion.TLSv1_2), {},
         "ecdhe_only_client", "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384"),
        (dict(ciphers="AES128-CCM", maximum=ssl.TLSVersion.TLSv1_2), {}, "no_shared_cipher", "client offered"),
        (dict(minimum=ssl.TLSVersion.TLSv1_3), {}, "tls13_only_client", "only TLS 1.3"),
        (dict(cert=None), {}, "no_client_certificate", "mutual TLS"),
        (dict(cert="foreign"), {}, "unknown_ca", "CN=foreign"),
        (dict(cert="expired"), {}, "certificate_expired", "CN=expired"),
        (dict(cert="future"), {}, "certificate_not_yet_valid", "CN=future"),
        (dict(cert="serveronly"), {}, "wrong_key_usage", "unsuitable certificate purpose"),
        (dict(cert="other-customer"), dict(allow=("cn:customer",)), "not_allowed", "allow-list"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
async def test_failure_matrix(pki: Path, client_kwargs: dict, settings_kwargs: dict, reason: str,
                              detail_part: str) -> None:
    server = OneShotServer(server_settings(pki, **settings_kwargs))
    async with trio.open_nursery() as nursery:
        port = await start(nursery, server)
        outcome = await client_attempt(port, customer_client_context(pki, **client_kwargs))
        failure = await server.receive.receive()
        nursery.cancel_scope.cancel()
    assert outcome.startswith("error"), outcome
    assert isinstance(failure, HandshakeFailed), failure
    assert failure.reason == reason, failure
    assert detail_part in failure.detail


@pytest.mark.parametrize(
    ("settings_kwargs", "says", "does_not_say"),
    [
        ({}, 'key_exchange = "rsa"', "max_version"),
        # "any" with TLS 1.3 turned off by hand: the refusal names max_version, not RSA.
        (dict(key_exchange="any", max_version="TLSv1.2"), 'max_version = "TLSv1.2"', "RSA"),
    ],
    ids=["rsa", "any-capped"],
)
async def test_tls13_only_client_refusal_names_what_to_change(pki: Path, settings_kwargs: dict, says: str,
                                                             does_not_say: str) -> None:
    server = OneShotServer(server_settings(pki, **settings_kwargs))
    async with trio.open_nursery() as nursery:
        port = await start(nursery, server)
        outcome = await client_attempt(port, customer_client_context(pki, minimum=ssl.TLSVersion.TLSv1_3))
        failure = await server.receive.receive()
        nursery.cancel_scope.cancel()
    assert outcome.startswith("error"), outcome
    assert isinstance(failure, HandshakeFailed) and failure.reason == "tls13_only_client", failure
    assert says in failure.detail and does_not_say not in failure.detail, failure.detail


async def test_allow_list_by_fingerprint_and_san(pki: Path) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    cert = x509.load_pem_x509_certificate((pki / "customer.pem").read_bytes())
    fingerprint = cert.fingerprint(hashes.SHA256()).hex(":")
    for allow in (("sha256:" + fingerprint,), ("san:DNS:customer",), ("san:customer",)):
        server = OneShotServer(server_settings(pki, allow=allow))
        async with trio.open_nursery() as nursery:
            port = await start(nursery, server)
            outcome = await client_attempt(port, customer_client_context(pki))
            await server.receive.receive()
            nursery.cancel_scope.cancel()
        assert not outcome.startswith("error"), (allow, outcome)


@pytest.mark.parametrize(
    ("payload", "reason", "detail_part"),
    [
        (b"OPTIONS sip:core SIP/2.0\r\nVia: SIP/2.0/TCP x\r\n\r\n", "not_tls", "plain SIP"),
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "not_tls", "HTTP"),
        (bytes(range(256)) * 4, "not_tls", "not TLS"),
    ],
    ids=["plain-sip", "http", "garbage"],
)
async def test_not_tls(pki: Path, payload: bytes, reason: str, detail_part: str) -> None:
    server = OneShotServer(server_settings(pki))
    async with trio.open_nursery() as nursery:
        port = await start(nursery, server)
        tcp = await trio.open_tcp_stream("127.0.0.1", port)
        await tcp.send_all(payload)
        failure = await server.receive.receive()
        await tcp.aclose()
        nursery.cancel_scope.cancel()
    assert isinstance(failure, HandshakeFailed)
    assert failure.reason == reason
    assert detail_part in failure.detail


async def test_truncated_hello_times_out(pki: Path) -> None:
    server = OneShotServer(server_settings(pki), timeout=0.3)
    async with trio.open_nursery() as nursery:
        port = await start(nursery, server)
        tcp = await trio.open_tcp_stream("127.0.0.1", port)
        await tcp.send_all(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")
        failure = await server.receive.receive()
        await tcp.aclose()
        nursery.cancel_scope.cancel()
    assert isinstance(failure, HandshakeFailed)
    assert failure.reason == "timeout"


async def test_peer_closing_mid_handshake(pki: Path) -> None:
    server = OneShotServer(server_settings(pki))
    async with trio.open_nursery() as nursery:
        port = await start(nursery, server)
        tcp = await trio.open_tcp_stream("127.0.0.1", port)
        await tcp.send_all(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")
        await tcp.aclose()
        failure = await server.receive.receive()
        nursery.cancel_scope.cancel()
    assert isinstance(failure, HandshakeFailed)
    assert failure.reason == "peer_closed"


def test_forced_rsa_refuses_ec_server_key(pki: Path) -> None:
    with pytest.raises(CertificateError, match="RSA key exchange needs an RSA server key") as info:
        build_server_context(server_settings(pki, cert=pki / "ec-server.pem", key=pki / "ec-server.key"))
    assert str(pki / "ec-server.key") in str(info.value)


def test_mismatched_key_refused(pki: Path) -> None:
    with pytest.raises(CertificateError, match="does not match"):
        build_server_context(server_settings(pki, key=pki / "core.key"))


def test_world_readable_key_refused(pki: Path, tmp_path: Path) -> None:
    key = tmp_path / "srv.key"
    key.write_bytes((pki / "proxy-server.key").read_bytes())
    key.chmod(0o644)
    with pytest.raises(CertificateError, match="readable by group/others") as info:
        build_server_context(server_settings(pki, key=key))
    assert str(key) in str(info.value)


def test_expired_server_certificate_refused(pki: Path) -> None:
    with pytest.raises(CertificateError, match="expired"):
        build_server_context(server_settings(pki, cert=pki / "expired.pem", key=pki / "expired.key"))


def test_missing_client_ca_refused(pki: Path, tmp_path: Path) -> None:
    with pytest.raises(CertificateError) as info:
        build_server_context(server_settings(pki, client_ca=tmp_path / "nope.pem"))
    assert "nope.pem" in str(info.value)


async def test_bad_signature(pki: Path, tmp_path: Path) -> None:
    """A client certificate whose CA signature was tampered with."""
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    der = bytearray(x509.load_pem_x509_certificate((pki / "customer.pem").read_bytes()).public_bytes(Encoding.DER))
    der[-1] ^= 0xFF  # the last byte belongs to the signature value
    forged = x509.load_der_x509_certificate(bytes(der))
    (tmp_path / "forged.pem").write_bytes(forged.public_bytes(Encoding.PEM))
    ctx = customer_client_context(pki, cert=None)
    ctx.load_cert_chain(tmp_path / "forged.pem", pki / "customer.key")
    server = OneShotServer(server_settings(pki))
    async with trio.open_nursery() as nursery:
        port = await start(nursery, server)
        outcome = await client_attempt(port, ctx)
        failure = await server.receive.receive()
        nursery.cancel_scope.cancel()
    assert outcome.startswith("error")
    assert isinstance(failure, HandshakeFailed) and failure.reason == "bad_signature", failure


async def test_resumption_when_enabled(pki: Path) -> None:
    """resumption = true: a client can resume (such a connection needs the key log)."""
    server = OneShotServer(server_settings(pki, resumption=True))
    ctx = customer_client_context(pki, maximum=ssl.TLSVersion.TLSv1_2)
    reused = []
    async with trio.open_nursery() as nursery:
        port = await start(nursery, server)
        session = None
        for payload in (b"x", b"y"):
            tcp = await trio.open_tcp_stream("127.0.0.1", port)
            client = trio.SSLStream(tcp, ctx, server_hostname="localhost")
            if session is not None:
                client._ssl_object.session = session
            await client.send_all(payload)
            await client.receive_some()
            reused.append(client._ssl_object.session_reused)
            session = client._ssl_object.session
            await client.aclose()
        facts = [await server.receive.receive(), await server.receive.receive()]
        nursery.cancel_scope.cancel()
    assert reused == [False, True]
    assert [f.session_reused for f in facts] == [False, True]

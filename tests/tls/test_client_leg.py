"""The core-facing client leg against a real (stdlib ssl) core server over loopback."""

from __future__ import annotations

import functools
import ssl
from pathlib import Path

import pytest
import trio
from OpenSSL import SSL

from siptap.config import ClientTlsSettings, ServerTlsSettings
from siptap.errors import HandshakeFailed
from siptap.sansio.keylog import parse_line
from siptap.tls.contexts import build_client_context, build_server_context
from siptap.tls.stream import OpenSSLStream
from tests.tls.helpers import OpenSSLServer, core_server_context


def client_settings(pki: Path, **overrides: object) -> ClientTlsSettings:
    base: dict[str, object] = dict(
        cert=pki / "proxy-client.pem", key=pki / "proxy-client.key", ca=pki / "ca.pem", server_name="localhost"
    )
    base.update(overrides)
    return ClientTlsSettings(**base)  # type: ignore[arg-type]  # overrides are untyped keyword values


async def run_core(nursery: trio.Nursery, ctx: ssl.SSLContext, seen: list) -> int:
    async def handler(tcp: trio.SocketStream) -> None:
        stream = trio.SSLStream(tcp, ctx, server_side=True)
        try:
            await stream.do_handshake()
            seen.append(stream.getpeercert())
            data = await stream.receive_some()
            await stream.send_all(b"core:" + data)
        except (trio.BrokenResourceError, ssl.SSLError):
            seen.append(None)
        finally:
            await stream.aclose()

    listeners = await nursery.start(functools.partial(trio.serve_tcp, handler, 0, host="127.0.0.1"))
    return listeners[0].socket.getsockname()[1]


async def dial(port: int, settings: ClientTlsSettings, host: str = "127.0.0.1") -> OpenSSLStream:
    tcp = await trio.open_tcp_stream(host, port)
    return OpenSSLStream(
        tcp, build_client_context(settings), server_side=False, leg="core",
        server_hostname=settings.server_name, check_hostname=settings.check_hostname,
    )


@pytest.mark.parametrize("maximum", [ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2])
async def test_core_leg_with_mutual_tls(pki: Path, maximum: ssl.TLSVersion) -> None:
    ctx = core_server_context(pki)
    ctx.maximum_version = maximum
    seen: list = []
    async with trio.open_nursery() as nursery:
        port = await run_core(nursery, ctx, seen)
        stream = await dial(port, client_settings(pki))
        facts = await stream.do_handshake(5)
        await stream.send_all(b"OPTIONS")
        assert await stream.receive_some() == b"core:OPTIONS"
        await stream.aclose()
        nursery.cancel_scope.cancel()
    assert seen and seen[0] is not None  # the core saw and verified our client certificate
    assert dict(x[0] for x in seen[0]["subject"])["commonName"] == "proxy-client"
    assert facts.role == "client" and facts.leg == "core"
    assert facts.peer_chain[0].common_name == "core"
    assert facts.sni == "localhost"
    labels = {parse_line(line).label for line in facts.keylog_lines}  # type: ignore[union-attr]  # a failure would have failed the asserts above
    if maximum == ssl.TLSVersion.TLSv1_3:
        assert facts.version == "TLSv1.3"
        assert "CLIENT_TRAFFIC_SECRET_0" in labels and "SERVER_TRAFFIC_SECRET_0" in labels
    else:
        assert facts.version == "TLSv1.2" and facts.key_exchange == "ECDHE"
        assert "CLIENT_RANDOM" in labels


async def test_core_ecdhe_tls13_only_is_fine(pki: Path) -> None:
    """A core allowing only TLS 1.3 (like a Teams-style peer) still works; the key log covers it."""
    seen: list = []
    async with trio.open_nursery() as nursery:
        port = await run_core(nursery, core_server_context(pki, minimum=ssl.TLSVersion.TLSv1_3), seen)
        stream = await dial(port, client_settings(pki))
        facts = await stream.do_handshake(5)
        await stream.aclose()
        nursery.cancel_scope.cancel()
    assert facts.version == "TLSv1.3" and len(facts.keylog_lines) == 5


@pytest.mark.parametrize(
    ("core_cert", "overrides", "reason"),
    [
        ("core", dict(server_name="wrong.example"), "hostname_mismatch"),
        ("foreign-core", {}, "unknown_ca"),
        ("customer", {}, "wrong_key_usage"),  # a clientAuth-only certificate on a server
    ],
)
async def test_core_verification_failures(pki: Path, core_cert: str, overrides: dict, reason: str) -> None:
    seen: list = []
    async with trio.open_nursery() as nursery:
        port = await run_core(nursery, core_server_context(pki, cert=core_cert), seen)
        stream = await dial(port, client_settings(pki, **overrides))
        with pytest.raises(HandshakeFailed) as info:
            await stream.do_handshake(5)
        await stream.aclose()
        nursery.cancel_scope.cancel()
    assert info.value.reason == reason, info.value


async def test_verification_can_be_turned_off(pki: Path) -> None:
    seen: list = []
    async with trio.open_nursery() as nursery:
        port = await run_core(nursery, core_server_context(pki, cert="foreign-core"), seen)
        stream = await dial(port, client_settings(pki, verify=False))
        facts = await stream.do_handshake(5)
        await stream.aclose()
        nursery.cancel_scope.cancel()
    assert facts.peer_chain[0].common_name == "foreign-core"


async def test_core_without_our_client_cert_rejects(pki: Path) -> None:
    """openssl s_server requires a client certificate; we present none: its alert is reported."""
    with OpenSSLServer("-cert", str(pki / "core.pem"), "-key", str(pki / "core.key"), "-Verify", "1",
                       "-CAfile", str(pki / "ca.pem"), "-naccept", "1") as core:
        stream = await dial(core.port, client_settings(pki, cert=None, key=None, max_version="TLSv1.2"))
        with pytest.raises(HandshakeFailed) as info:
            await stream.do_handshake(5)
        await stream.aclose()
    assert info.value.reason == "peer_alert", info.value
    assert "alert" in info.value.detail


async def test_tls13_core_rejecting_us_after_our_finished(pki: Path) -> None:
    """In TLS 1.3 the client's handshake completes before the server checks its certificate:
    the rejection arrives as an alert on the first read, and must say so."""
    with OpenSSLServer("-cert", str(pki / "core.pem"), "-key", str(pki / "core.key"), "-Verify", "1",
                       "-CAfile", str(pki / "ca.pem"), "-naccept", "1") as core:
        stream = await dial(core.port, client_settings(pki, cert=None, key=None))
        await stream.do_handshake(5)
        with pytest.raises(trio.BrokenResourceError, match="alert certificate required"):
            await stream.receive_some()
        await stream.aclose()


# -- the core leg's key shares (issue 16: memory per idle connection) ---------------------------


def offered_groups(ctx: SSL.Context) -> tuple[list[int], list[int]]:
    """(supported_groups, the groups with a key share) of the ClientHello ``ctx`` sends."""
    conn = SSL.Connection(ctx, None)
    conn.set_connect_state()
    with pytest.raises(SSL.WantReadError):
        conn.do_handshake()
    body = conn.bio_read(65536)[5 + 4:]  # record header, handshake header
    at = 2 + 32  # version, random
    at += 1 + body[at]  # session id
    at += 2 + int.from_bytes(body[at:at + 2])  # cipher suites
    at += 1 + body[at]  # compression methods
    end = at + 2 + int.from_bytes(body[at:at + 2])
    at += 2
    groups: list[int] = []
    shares: list[int] = []
    while at < end:
        kind, size = int.from_bytes(body[at:at + 2]), int.from_bytes(body[at + 2:at + 4])
        data = body[at + 4:at + 4 + size]
        at += 4 + size
        if kind == 10:  # supported_groups
            groups = [int.from_bytes(data[i:i + 2]) for i in range(2, len(data), 2)]
        elif kind == 51:  # key_share
            i = 2
            while i < len(data):
                shares.append(int.from_bytes(data[i:i + 2]))
                i += 4 + int.from_bytes(data[i + 2:i + 4])
    return groups, shares


def test_core_leg_offers_openssls_groups_with_an_x25519_share_only(pki: Path) -> None:
    # The offer is OpenSSL's own default, group for group and in order; only the key shares
    # differ: OpenSSL keeps every share it made for the life of the connection, so the
    # X25519MLKEM768 one (unused by a core that picks X25519) was ~8.6 KiB per idle core leg.
    default_groups, default_shares = offered_groups(SSL.Context(SSL.TLS_METHOD))
    groups, shares = offered_groups(build_client_context(client_settings(pki)))
    assert groups == default_groups
    assert shares == [0x001D]  # x25519
    assert 0x11EC in groups and 0x11EC in default_shares  # X25519MLKEM768: offered, no longer precomputed


async def test_core_leg_still_gets_the_group_the_core_prefers(pki: Path) -> None:
    # A classical core (the stdlib's OpenSSL 3.0) picks X25519 from the share it got; a core on
    # siptap's own OpenSSL (its server leg with TLS 1.3 allowed) prefers X25519MLKEM768 and gets
    # it through a HelloRetryRequest. Either way the leg then relays.
    server = build_server_context(ServerTlsSettings(
        cert=pki / "core.pem", key=pki / "core.key", client_ca=pki / "ca.pem", key_exchange="any"))

    async def pq_core(tcp: trio.SocketStream) -> None:
        stream = OpenSSLStream(tcp, server, server_side=True, leg="customer")
        try:
            await stream.do_handshake(5)
            data = await stream.receive_some()
            await stream.send_all(b"core:" + data)
        finally:
            await stream.aclose()

    seen: list = []
    async with trio.open_nursery() as nursery:
        classical = await run_core(nursery, core_server_context(pki), seen)
        listeners = await nursery.start(functools.partial(trio.serve_tcp, pq_core, 0, host="127.0.0.1"))
        pq = listeners[0].socket.getsockname()[1]
        for port, expected in ((classical, "TLSv1.3 (x25519)"), (pq, "TLSv1.3 (X25519MLKEM768)")):
            stream = await dial(port, client_settings(pki))
            facts = await stream.do_handshake(5)
            assert facts.key_exchange == expected
            await stream.send_all(b"OPTIONS")
            assert await stream.receive_some() == b"core:OPTIONS"
            await stream.aclose()
        nursery.cancel_scope.cancel()

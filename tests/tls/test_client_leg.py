"""The core-facing client leg against a real (stdlib ssl) core server over loopback."""

from __future__ import annotations

import functools
import ssl
from pathlib import Path

import pytest
import trio

from siptap.config import ClientTlsSettings
from siptap.errors import HandshakeFailed
from siptap.sansio.keylog import parse_line
from siptap.tls.contexts import build_client_context
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

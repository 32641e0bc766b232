"""OpenSSLStream on the transports and record layers production can use.

test_stream.py runs trio's conformance suite over memory streams. Production runs the stream
over real TCP sockets, which OpenSSLStream drives through their descriptors (its own read and
write loop, not trio's SocketStream methods), and on the cffi record layer; a pyOpenSSL
without the private bindings gets the public-API record layer instead. Each of those paths
gets the same suite here, and the fallback also a real handshake and a relayed SIP message.
"""

from __future__ import annotations

import functools
import ssl
from pathlib import Path

import pytest
import trio
import trio.testing

from siptap.config import ClientTlsSettings, ServerTlsSettings
from siptap.relay.sockets import tune_socket
from siptap.relay.upstream import open_tcp
from siptap.tls.contexts import build_client_context, build_server_context
from siptap.tls.records import FastRecords, PortableRecords
from siptap.tls.stream import OpenSSLStream
from tests.tls.helpers import core_server_context, customer_client_context

INVITE = (
    b"INVITE sip:+15550100@core.lab SIP/2.0\r\n"
    b"Via: SIP/2.0/TLS 127.0.0.1:5061;branch=z9hG4bK-portable\r\n"
    b"From: <sip:+15550199@customer.lab>;tag=1\r\nTo: <sip:+15550100@core.lab>\r\n"
    b"Call-ID: portable-records@customer.lab\r\nCSeq: 1 INVITE\r\nMax-Forwards: 70\r\n"
    b"Content-Length: 0\r\n\r\n"
)


async def tcp_pair() -> tuple[trio.SocketStream, trio.SocketStream]:
    """Two ends of a loopback TCP connection, made the way the relay makes its legs: the
    dialled end by relay.upstream.open_tcp, the accepted end by a trio listener, both tuned."""
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    try:
        port = listener.socket.getsockname()[1]
        dialled = await open_tcp("127.0.0.1", port)
        accepted = await listener.accept()
    finally:
        await listener.aclose()
    for end in (dialled, accepted):
        tune_socket(end.socket)
    return dialled, accepted


class CheckpointingSend(OpenSSLStream):
    """OpenSSLStream whose successful send_all ends in a checkpoint, for the conformance suite.

    Over a socket, send_all deliberately has no scheduling point when the kernel takes the
    bytes at once (see "the transport" in siptap.tls.record_io: the pump's next receive yields
    anyway, and a pass through the scheduler per relayed message is measurable). trio's
    suite asserts every send_all is a checkpoint, so this adds exactly that and nothing else;
    test_send_all_over_a_socket_does_not_yield pins the deviation itself."""

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await super().send_all(data)
        await trio.lowlevel.checkpoint()


def tls_pair(contexts, a: trio.abc.Stream, b: trio.abc.Stream, *, portable: bool,
             cls: type[OpenSSLStream] = OpenSSLStream) -> tuple[OpenSSLStream, OpenSSLStream]:
    server_ctx, client_ctx = contexts
    client = cls(a, client_ctx, server_side=False, leg="core", server_hostname="localhost",
                 check_hostname=True, portable_records=portable)
    server = cls(b, server_ctx, server_side=True, leg="customer", portable_records=portable)
    return client, server


@pytest.mark.parametrize("portable", [False, True], ids=["fast-records", "portable-records"])
async def test_two_way_stream_over_tcp_sockets(contexts, portable: bool) -> None:
    """The descriptor branch (what production runs). No clogged variant: a real socket cannot
    be clogged without either writing bytes the TLS receiver would reject or cancelling a
    send_all mid-record, which breaks a TLS stream by design."""
    made: list[OpenSSLStream] = []

    async def stream_maker() -> tuple[OpenSSLStream, OpenSSLStream]:
        client, server = tls_pair(contexts, *await tcp_pair(), portable=portable, cls=CheckpointingSend)
        made.extend((client, server))
        return client, server

    await trio.testing.check_two_way_stream(stream_maker, None)
    for stream in made:
        assert type(stream.transport_stream) is trio.SocketStream and stream._record_io.socket is not None
        assert isinstance(stream._record_io.records, PortableRecords if portable else FastRecords)


async def test_send_all_over_a_socket_does_not_yield(contexts) -> None:
    """The one deliberate departure from trio's Stream contract, pinned so that changing it is
    a decision: a send_all the socket takes at once has no scheduling point (the receive that
    follows in the relay's pump provides it). Over any other transport send_all yields."""
    client, server = tls_pair(contexts, *await tcp_pair(), portable=False)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client.do_handshake)
        nursery.start_soon(server.do_handshake)
    with trio.testing.assert_no_checkpoints():
        await client.send_all(INVITE)
    assert await receive_until(server, b"\r\n\r\n") == INVITE
    memory_client, memory_server = tls_pair(contexts, *trio.testing.memory_stream_pair(), portable=False)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(memory_client.do_handshake)
        nursery.start_soon(memory_server.do_handshake)
    with trio.testing.assert_checkpoints():
        await memory_client.send_all(INVITE)
    for stream in (client, server, memory_client, memory_server):
        await stream.aclose()


async def test_two_way_stream_on_portable_records_over_memory(contexts) -> None:
    """The public-API record layer under the whole suite, clogged streams included."""

    async def stream_maker() -> tuple[OpenSSLStream, OpenSSLStream]:
        return tls_pair(contexts, *trio.testing.memory_stream_pair(), portable=True)

    async def clogged_stream_maker() -> tuple[OpenSSLStream, OpenSSLStream]:
        client, server = tls_pair(contexts, *trio.testing.lockstep_stream_pair(), portable=True)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client.do_handshake)
            nursery.start_soon(server.do_handshake)
        return client, server

    await trio.testing.check_two_way_stream(stream_maker, clogged_stream_maker)


@pytest.mark.parametrize("maximum", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3], ids=["core-tls12", "core-tls13"])
async def test_portable_records_relay_a_sip_message_between_real_peers(pki: Path, maximum: ssl.TLSVersion) -> None:
    """A stdlib-ssl customer and core (a different OpenSSL build), siptap's two legs on the
    public-API record layer over TCP, and the relay's loop between them: the INVITE and the
    answer arrive byte for byte, and both handshakes produced their facts."""
    server_ctx = build_server_context(
        ServerTlsSettings(cert=pki / "proxy-server.pem", key=pki / "proxy-server.key", client_ca=pki / "ca.pem")
    )
    client_ctx = build_client_context(ClientTlsSettings(
        cert=pki / "proxy-client.pem", key=pki / "proxy-client.key", ca=pki / "ca.pem", server_name="localhost",
    ))
    core_ctx = core_server_context(pki)
    core_ctx.maximum_version = maximum
    core_got: list[bytes] = []

    async def core(tcp: trio.SocketStream) -> None:
        stream = trio.SSLStream(tcp, core_ctx, server_side=True)
        request = await receive_until(stream, b"\r\n\r\n")
        core_got.append(request)
        await stream.send_all(b"SIP/2.0 100 Trying\r\nCall-ID: portable-records@customer.lab\r\nContent-Length: 0\r\n\r\n")
        await stream.aclose()

    async def pump(src: OpenSSLStream, dst: OpenSSLStream) -> None:
        while data := await src.receive_some():
            await dst.send_all(data)
        await dst.send_eof()

    async with trio.open_nursery() as nursery:
        core_listener = (await nursery.start(functools.partial(trio.serve_tcp, core, 0, host="127.0.0.1")))[0]
        core_port = core_listener.socket.getsockname()[1]
        customer_tcp, accepted_tcp = await tcp_pair()
        accepted = OpenSSLStream(accepted_tcp, server_ctx, server_side=True, leg="customer", portable_records=True)
        dialled = OpenSSLStream(await open_tcp("127.0.0.1", core_port), client_ctx, server_side=False, leg="core",
                                server_hostname="localhost", check_hostname=True, portable_records=True)
        customer = trio.SSLStream(customer_tcp, customer_client_context(pki), server_hostname="localhost")
        async with trio.open_nursery() as handshakes:
            handshakes.start_soon(customer.do_handshake)
            handshakes.start_soon(accepted.do_handshake)
            handshakes.start_soon(dialled.do_handshake)
        assert isinstance(accepted._record_io.records, PortableRecords) and isinstance(dialled._record_io.records, PortableRecords)
        assert accepted.facts is not None and accepted.facts.rsa_key_exchange
        assert accepted.facts.peer_chain[0].common_name == "customer"
        assert dialled.facts is not None and dialled.facts.version == maximum.name.replace("_", ".")
        async with trio.open_nursery() as relay:
            relay.start_soon(pump, accepted, dialled)
            relay.start_soon(pump, dialled, accepted)
            await customer.send_all(INVITE)
            answer = await receive_until(customer, b"\r\n\r\n")
            await customer.aclose()
        for stream in (accepted, dialled):
            await stream.aclose()
        nursery.cancel_scope.cancel()
    assert core_got == [INVITE]
    assert answer.startswith(b"SIP/2.0 100 Trying\r\n")


async def receive_until(stream: trio.abc.ReceiveStream, end: bytes) -> bytes:
    data = b""
    while end not in data:
        chunk = await stream.receive_some()
        assert chunk, f"EOF after {data!r}"
        data += chunk
    return data

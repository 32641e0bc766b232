"""OpenSSLStream against trio's own Stream conformance suite and edge cases."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from siptap.certificates import CertificateCache
from siptap.config import ClientTlsSettings, ServerTlsSettings
from siptap.tls.contexts import build_client_context, build_server_context
from siptap.tls.stream import OpenSSLStream


def pair(contexts, transport_pair):
    server_ctx, client_ctx = contexts
    a, b = transport_pair()
    client = OpenSSLStream(a, client_ctx, server_side=False, leg="core", server_hostname="localhost",
                           check_hostname=True)
    server = OpenSSLStream(b, server_ctx, server_side=True, leg="customer")
    return client, server


async def test_check_two_way_stream(contexts) -> None:
    async def stream_maker():
        return pair(contexts, trio.testing.memory_stream_pair)

    async def clogged_stream_maker():
        client, server = pair(contexts, trio.testing.lockstep_stream_pair)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client.do_handshake)
            nursery.start_soon(server.do_handshake)
        return client, server

    await trio.testing.check_two_way_stream(stream_maker, clogged_stream_maker)


async def test_large_transfer_both_ways_concurrently(contexts) -> None:
    client, server = pair(contexts, trio.testing.memory_stream_pair)
    payload = bytes(range(256)) * 4096  # 1 MiB: many 16 KiB records, partial writes

    async def send(stream: OpenSSLStream) -> None:
        await stream.send_all(payload)
        await stream.send_eof()

    async def receive(stream: OpenSSLStream, out: bytearray) -> None:
        while data := await stream.receive_some():
            out += data

    got_client, got_server = bytearray(), bytearray()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(send, client)
        nursery.start_soon(send, server)
        nursery.start_soon(receive, client, got_client)
        nursery.start_soon(receive, server, got_server)
    assert bytes(got_client) == payload and bytes(got_server) == payload
    assert client.close_notify_received and server.close_notify_received


async def test_eof_without_close_notify_is_reported(contexts) -> None:
    client, server = pair(contexts, trio.testing.memory_stream_pair)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client.do_handshake)
        nursery.start_soon(server.do_handshake)
    await client.send_all(b"hi")
    await client.transport_stream.aclose()  # vanish without close_notify
    assert await server.receive_some() == b"hi"
    assert await server.receive_some() == b""
    assert server.eof_without_close_notify and not server.close_notify_received
    # Asked again: still the end of the stream (trio's contract), not an error.
    assert await server.receive_some() == b"" and await server.receive_some() == b""
    await server.aclose()
    await client.aclose()


async def test_use_after_close_raises(contexts) -> None:
    client, server = pair(contexts, trio.testing.memory_stream_pair)
    await client.aclose()
    with pytest.raises(trio.ClosedResourceError):
        await client.send_all(b"x")
    with pytest.raises(trio.ClosedResourceError):
        await client.receive_some()
    await server.aclose()


def handshake_step(conn: Any) -> bool:
    """One step of a hand-driven pyOpenSSL handshake (memory BIOs): True once it is complete."""
    from OpenSSL import SSL

    try:
        conn.do_handshake()
    except SSL.WantReadError:
        return False
    return True


def pending_output(conn: Any) -> bytes:
    """Everything a hand-driven pyOpenSSL connection has written to its outgoing BIO."""
    from OpenSSL import SSL

    chunks = []
    while True:
        try:
            chunks.append(conn.bio_read(65536))
        except SSL.WantReadError:
            return b"".join(chunks)


async def test_record_arriving_with_the_finished_survives_the_fresh_bios(pki: Path) -> None:
    """After the handshake the stream swaps in empty memory BIOs (an idle connection should
    not keep handshake-sized buffers). A TLS 1.3 client's first record can arrive in the same
    read as its Finished, so it is still in the old incoming BIO then: it must not be lost."""
    from OpenSSL import SSL

    server_ctx = build_server_context(ServerTlsSettings(
        cert=pki / "proxy-server.pem", key=pki / "proxy-server.key", client_ca=pki / "ca.pem",
        key_exchange="any", max_version="TLSv1.3",
    ))
    client_ctx = build_client_context(ClientTlsSettings(
        cert=pki / "customer.pem", key=pki / "customer.key", ca=pki / "ca.pem", server_name="localhost",
    ))
    near, far = trio.testing.memory_stream_pair()
    server = OpenSSLStream(far, server_ctx, server_side=True, leg="customer")
    client = SSL.Connection(client_ctx, None)  # driven by hand, so the write boundaries are ours
    client.set_connect_state()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.do_handshake)
        while not handshake_step(client):
            # The ClientHello; a second one when the server asks for another key share (a
            # HelloRetryRequest: siptap's client precomputes an X25519 share only, and siptap's
            # server prefers X25519MLKEM768). Nothing once the client has the server's flight.
            await near.send_all(pending_output(client))
            client.bio_write(await near.receive_some())
        client.send(b"first record")
        await near.send_all(pending_output(client))  # Certificate, CertificateVerify, Finished and the record at once
    assert server.facts is not None and server.facts.version == "TLSv1.3"
    await near.send_eof()  # a lost record then reads as EOF instead of waiting forever
    assert await server.receive_some() == b"first record"
    assert await server.receive_some() == b"" and server.eof_without_close_notify
    await server.aclose()


async def test_renegotiation_after_the_fresh_bios_is_refused_and_the_data_before_it_kept(pki: Path) -> None:
    """The BIO swap happens at the handshake's end, so everything later runs on the fresh pair:
    a TLS 1.2 customer that asks to renegotiate (a ClientHello inside the session) gets the
    contexts' no_renegotiation alert back over the new outgoing BIO, what it sent before the
    request still arrives, and its EOF after giving up reads as a bare EOF."""
    from OpenSSL import SSL

    server_ctx = build_server_context(ServerTlsSettings(
        cert=pki / "proxy-server.pem", key=pki / "proxy-server.key", client_ca=pki / "ca.pem"))
    client_ctx = SSL.Context(SSL.TLS_METHOD)  # pyOpenSSL's defaults allow renegotiation
    client_ctx.set_max_proto_version(SSL.TLS1_2_VERSION)
    client_ctx.set_cipher_list(b"AES256-GCM-SHA384")
    client_ctx.use_certificate_chain_file(str(pki / "customer.pem"))
    client_ctx.use_privatekey_file(str(pki / "customer.key"))
    near, far = trio.testing.memory_stream_pair()
    server = OpenSSLStream(far, server_ctx, server_side=True, leg="customer")
    client = SSL.Connection(client_ctx, None)  # driven by hand: renegotiate() is not in trio's API
    client.set_connect_state()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.do_handshake)
        while True:
            done = handshake_step(client)
            await near.send_all(pending_output(client))
            if done:
                break
            client.bio_write(await near.receive_some())
    client.send(b"before")
    assert client.renegotiate()
    assert not handshake_step(client)  # the renegotiating ClientHello, waiting for an answer
    await near.send_all(pending_output(client))
    assert await server.receive_some() == b"before"
    got: list[bytes] = []
    async with trio.open_nursery() as nursery:
        async def server_reads() -> None:
            got.append(await server.receive_some())  # reads the ClientHello, answers, waits on
        nursery.start_soon(server_reads)
        client.bio_write(await near.receive_some())  # the server's answer
        with pytest.raises(SSL.Error, match="no renegotiation"):
            client.do_handshake()
        await near.aclose()  # the customer gives up
    assert got == [b""] and server.eof_without_close_notify
    await server.aclose()


async def test_handshake_records_are_let_go(contexts) -> None:
    """The observer goes with the handshake; the facts stay until the owner discards them."""
    client, server = pair(contexts, trio.testing.memory_stream_pair)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client.do_handshake)
        nursery.start_soon(server.do_handshake)
    assert client.observer is None and server.observer is None
    assert client._conn.get_app_data() is None
    facts = await server.do_handshake()
    assert facts == server.facts and facts.peer_chain[0].common_name == "customer"
    # Kept raw (issue 16 item 6): the chain as DER, summarised only when someone asks.
    record = server.handshake
    assert record is not None and len(record.peer_chain_der) == len(facts.peer_chain)
    assert facts == record.facts(CertificateCache().summary)
    server.discard_facts()
    assert server.facts is None and server.handshake is None
    with pytest.raises(RuntimeError):
        await server.do_handshake()
    await client.send_all(b"still relays")
    assert await server.receive_some() == b"still relays"
    await client.aclose()
    await server.aclose()


async def test_stream_mutex_is_fifo_and_survives_a_cancelled_waiter() -> None:
    from siptap.tls.stream_locks import FifoMutex

    mutex = FifoMutex()
    with trio.testing.assert_no_checkpoints():
        await mutex.acquire()  # free: taken at once, as the flush path relies on
    order: list[str] = []
    cancelled = trio.CancelScope()

    async def take(name: str) -> None:
        await mutex.acquire()
        order.append(name)
        await trio.lowlevel.checkpoint()
        mutex.release()

    async def give_up() -> None:
        with cancelled:
            await take("never")

    async with trio.open_nursery() as nursery:
        for waiter in (functools.partial(take, "a"), give_up, functools.partial(take, "b")):
            nursery.start_soon(waiter)  # one at a time: queued in this order
            await trio.testing.wait_all_tasks_blocked()
        cancelled.cancel()
        await trio.testing.wait_all_tasks_blocked()
        mutex.release()
    assert order == ["a", "b"]
    with trio.testing.assert_no_checkpoints():
        await mutex.acquire()  # free again after the last holder let go

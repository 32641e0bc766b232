"""OpenSSLStream moves bursts whole: every record one transport read delivered comes out of one
receive_some, and one send_all leaves in one transport write (issue 16, "a leaner TLS shell").

Both record layers, over trio's memory streams: they hand a receiver everything sent so far in
one receive, which makes "several records in one transport read" deterministic without timing.
"""

from __future__ import annotations

import pytest
import trio
import trio.testing

from siptap.tls.stream import OpenSSLStream

LAYERS = pytest.mark.parametrize("portable", [False, True], ids=["fast-records", "portable-records"])


class CountingTransport(trio.abc.Stream):
    """A memory stream that remembers the size of every send_all it was given."""

    def __init__(self, inner: trio.abc.Stream) -> None:
        self.inner = inner
        self.writes: list[int] = []

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        self.writes.append(len(data))
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        return await self.inner.receive_some(max_bytes)

    async def send_eof(self) -> None:  # pragma: no cover - the TLS stream never half-closes TCP
        raise NotImplementedError

    async def aclose(self) -> None:
        await self.inner.aclose()


async def handshaken(contexts, portable: bool) -> tuple[OpenSSLStream, OpenSSLStream, CountingTransport]:
    server_ctx, client_ctx = contexts
    a, b = trio.testing.memory_stream_pair()
    counting = CountingTransport(a)
    client = OpenSSLStream(counting, client_ctx, server_side=False, leg="core", server_hostname="localhost",
                           check_hostname=True, portable_records=portable)
    server = OpenSSLStream(b, server_ctx, server_side=True, leg="customer", portable_records=portable)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client.do_handshake)
        nursery.start_soon(server.do_handshake)
    counting.writes.clear()
    return client, server, counting


@LAYERS
async def test_one_receive_returns_every_record_already_delivered(contexts, portable: bool) -> None:
    """Three messages sent separately (three records) reach the server in one transport read:
    one receive_some hands out all three, where a record per call would take three."""
    client, server, _ = await handshaken(contexts, portable)
    messages = [b"OPTIONS sip:a SIP/2.0\r\n\r\n", b"OPTIONS sip:b SIP/2.0\r\n\r\n", b"x" * 20000]
    for message in messages:
        await client.send_all(message)
    assert await server.receive_some() == b"".join(messages)
    await client.aclose()
    await server.aclose()


@LAYERS
async def test_receive_stops_at_max_bytes_and_keeps_the_rest(contexts, portable: bool) -> None:
    client, server, _ = await handshaken(contexts, portable)
    await client.send_all(b"a" * 100)
    await client.send_all(b"b" * 100)
    assert await server.receive_some(150) == b"a" * 100 + b"b" * 50
    assert await server.receive_some(150) == b"b" * 50
    await client.aclose()
    await server.aclose()


@LAYERS
async def test_close_notify_behind_data_comes_after_the_data(contexts, portable: bool) -> None:
    """The peer's last message and its close_notify in one transport read: the message first,
    the end of stream on the next call, as if the records had arrived one by one."""
    client, server, _ = await handshaken(contexts, portable)
    await client.send_all(b"BYE sip:a SIP/2.0\r\n\r\n")
    await client.send_eof()
    assert await server.receive_some() == b"BYE sip:a SIP/2.0\r\n\r\n"
    assert not server.close_notify_received
    assert await server.receive_some() == b""
    assert server.close_notify_received
    assert await server.receive_some() == b""  # and stays ended
    await client.aclose()
    await server.aclose()


@LAYERS
async def test_eof_without_close_notify_behind_data(contexts, portable: bool) -> None:
    client, server, _ = await handshaken(contexts, portable)
    await client.send_all(b"one")
    await client.send_all(b"two")
    await client.transport_stream.aclose()  # vanish without close_notify
    assert await server.receive_some() == b"onetwo"
    assert await server.receive_some() == b""
    assert server.eof_without_close_notify and not server.close_notify_received
    await server.aclose()


@LAYERS
async def test_send_all_leaves_in_one_transport_write(contexts, portable: bool) -> None:
    """40 KiB is three records (partial writes: one record per SSL_write); they leave together."""
    client, server, counting = await handshaken(contexts, portable)
    payload = bytes(range(256)) * 160
    await client.send_all(payload)
    assert len(counting.writes) == 1 and counting.writes[0] > len(payload)
    received = bytearray()
    while len(received) < len(payload):
        received += await server.receive_some()
    assert bytes(received) == payload
    await client.aclose()
    await server.aclose()


@LAYERS
async def test_a_large_send_is_written_in_batches(contexts, portable: bool) -> None:
    """1 MiB is not encrypted into memory at once: one transport write per 64 KiB batch."""
    client, server, counting = await handshaken(contexts, portable)
    payload = bytes(range(256)) * 4096
    received = bytearray()

    async def receive() -> None:
        while len(received) < len(payload):
            received.extend(await server.receive_some())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(receive)
        await client.send_all(payload)
    assert bytes(received) == payload
    assert len(counting.writes) == len(payload) // 65536
    await client.aclose()
    await server.aclose()


@LAYERS
async def test_a_cancelled_receive_loses_no_plaintext(contexts, portable: bool) -> None:
    """Plaintext left in OpenSSL (the receive before asked for less) is not taken by a receive
    whose caller is already cancelled: it fails first, and the next receive gets the bytes."""
    client, server, _ = await handshaken(contexts, portable)
    await client.send_all(b"a" * 100)
    await client.send_all(b"b" * 100)
    assert await server.receive_some(150) == b"a" * 100 + b"b" * 50
    with trio.CancelScope() as scope:
        scope.cancel()
        await server.receive_some(150)
    assert scope.cancelled_caught
    assert await server.receive_some(150) == b"b" * 50
    await client.aclose()
    await server.aclose()

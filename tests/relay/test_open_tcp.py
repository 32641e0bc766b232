"""upstream.open_tcp: trio.open_tcp_stream's socket and errors, without its machinery for
an IP literal."""

from __future__ import annotations

import functools
import socket

import pytest
import trio

from siptap.relay.upstream import _literal_family, open_tcp


async def _refused_port() -> tuple[trio.socket.SocketType, int]:
    dead = trio.socket.socket()
    await dead.bind(("127.0.0.1", 0))  # bound, never listening: connection refused
    return dead, dead.getsockname()[1]


async def test_connects_like_trio() -> None:
    async def echo(stream: trio.SocketStream) -> None:
        await stream.send_all(await stream.receive_some())

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(functools.partial(trio.serve_tcp, echo, 0, host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        ours = await open_tcp("127.0.0.1", port)
        theirs = await trio.open_tcp_stream("127.0.0.1", port)
        for stream in (ours, theirs):
            assert isinstance(stream, trio.SocketStream)
            await stream.send_all(b"ping")
            assert await stream.receive_some() == b"ping"
        a, b = ours.socket, theirs.socket
        assert (a.family, a.type, a.proto) == (b.family, b.type, b.proto)
        assert a.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == b.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        await ours.aclose()
        await theirs.aclose()
        nursery.cancel_scope.cancel()


async def test_refused_fails_with_trios_error() -> None:
    dead, port = await _refused_port()
    with dead:
        with pytest.raises(OSError) as ours:
            await open_tcp("127.0.0.1", port)
        with pytest.raises(OSError) as theirs:
            await trio.open_tcp_stream("127.0.0.1", port)
    assert str(ours.value) == str(theirs.value) == f"all attempts to connect to 127.0.0.1:{port} failed"
    assert ours.value.strerror is theirs.value.strerror is None
    ours_cause, theirs_cause = ours.value.__cause__, theirs.value.__cause__
    assert isinstance(ours_cause, ExceptionGroup) and isinstance(theirs_cause, ExceptionGroup)
    assert [type(e) for e in ours_cause.exceptions] == [type(e) for e in theirs_cause.exceptions]


def test_only_plain_literals_take_the_short_path() -> None:
    assert _literal_family("127.0.0.1") == socket.AF_INET
    assert _literal_family("::1") == socket.AF_INET6
    assert _literal_family("localhost") is None
    assert _literal_family("127.1") is None  # getaddrinfo's spelling differs: trio decides
    assert _literal_family("fe80::1%lo") is None

"""How much a Python event loop costs per relayed message, before any TLS or SIP work.

A client sends an 800-byte message, waits for it to come back from an echo server, and
paces that at ``--rate`` round trips per second, so every message wakes the middle up on
its own (as in bench/run.py's S3). The middle is a bare plain-TCP relay of one connection
in its own process, written four ways: ``selectors`` (a hand-rolled epoll loop),
``asyncio`` (streams), ``trio`` (SocketStream ``receive_some``/``send_all``) and ``trio-raw``
(``wait_readable`` + ``os.read``/``os.write`` on the descriptor, the way siptap's
OpenSSLStream drives its socket). Figure: the middle's utime+stime from /proc over the
paced window / messages relayed (both directions), after a 50-message warm-up.

It answers one question for issue 7: how far below the C relays (the stunnel pair's whole
TLS relay) a trio relay can go on this machine at all. Run by hand:

    python bench/loop_floor.py [--rate 350] [--seconds 6] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import selectors
import socket
import statistics
import subprocess
import sys
import threading
import time

MESSAGE = b"X" * 796 + b"\r\n\r\n"
MODES = ("selectors", "asyncio", "trio", "trio-raw")


def _listener() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    print(sock.getsockname()[1], flush=True)  # tell the parent where to connect
    return sock


def relay_selectors(upstream: int) -> None:
    listener = _listener()
    a, _ = listener.accept()
    b = socket.create_connection(("127.0.0.1", upstream))
    a.setblocking(False)
    b.setblocking(False)
    sel = selectors.EpollSelector()
    sel.register(a, selectors.EVENT_READ, b)
    sel.register(b, selectors.EVENT_READ, a)
    while True:
        for key, _ in sel.select():
            data = key.fileobj.recv(65536)  # type: ignore[union-attr]
            if not data:
                return
            key.data.sendall(data)


def relay_asyncio(upstream: int) -> None:
    import asyncio

    listener = _listener()

    async def pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            writer.write(data)
        writer.close()

    async def main() -> None:
        done = asyncio.Event()

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", upstream)
            await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer))
            done.set()

        await asyncio.start_server(handle, sock=listener)
        await done.wait()

    asyncio.run(main())


def relay_trio(upstream: int, raw: bool) -> None:
    import trio

    listener = _listener()

    async def pump_stream(src: trio.SocketStream, dst: trio.SocketStream, scope: trio.CancelScope) -> None:
        while data := await src.receive_some(65536):
            await dst.send_all(data)
        scope.cancel()

    async def pump_raw(src: trio.socket.SocketType, dst: trio.socket.SocketType, scope: trio.CancelScope) -> None:
        src_fd, dst_fd = src.fileno(), dst.fileno()
        while True:
            try:
                data = os.read(src_fd, 65536)
            except BlockingIOError:
                await trio.lowlevel.wait_readable(src)
                continue
            if not data:
                break
            os.write(dst_fd, data)  # 800 bytes into an empty loopback buffer: never short
        scope.cancel()

    async def main() -> None:
        sock, _ = await trio.socket.from_stdlib_socket(listener).accept()
        up = trio.socket.socket()
        await up.connect(("127.0.0.1", upstream))
        async with trio.open_nursery() as nursery:
            if raw:
                nursery.start_soon(pump_raw, sock, up, nursery.cancel_scope)
                nursery.start_soon(pump_raw, up, sock, nursery.cancel_scope)
            else:
                a, b = trio.SocketStream(sock), trio.SocketStream(up)
                nursery.start_soon(pump_stream, a, b, nursery.cancel_scope)
                nursery.start_soon(pump_stream, b, a, nursery.cancel_scope)

    trio.run(main)


def _echo_server(ready: list[int]) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    ready.append(listener.getsockname()[1])
    conn, _ = listener.accept()
    while data := conn.recv(65536):
        conn.sendall(data)


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _round_trip(sock: socket.socket) -> None:
    sock.sendall(MESSAGE)
    need = len(MESSAGE)
    while need:
        need -= len(sock.recv(need))


def measure(mode: str, rate: float, seconds: float) -> float:
    """CPU µs of the middle per relayed message."""
    ready: list[int] = []
    threading.Thread(target=_echo_server, args=(ready,), daemon=True).start()
    while not ready:
        time.sleep(0.001)
    middle = subprocess.Popen([sys.executable, __file__, "--serve", mode, str(ready[0])], stdout=subprocess.PIPE, text=True)
    try:
        assert middle.stdout is not None
        port = int(middle.stdout.readline())
        client = socket.create_connection(("127.0.0.1", port))
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for _ in range(50):
            _round_trip(client)
        before = _cpu_seconds(middle.pid)
        count = int(rate * seconds)
        start = time.monotonic()
        for i in range(count):
            delay = start + i / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            _round_trip(client)
        cpu = _cpu_seconds(middle.pid) - before
        client.close()
        middle.wait(timeout=10)
    finally:
        if middle.poll() is None:
            middle.kill()
    return cpu / (2 * count) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=350.0, help="round trips/s (2 relayed messages each)")
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--serve", nargs=2, metavar=("MODE", "UPSTREAM_PORT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        mode, upstream = args.serve[0], int(args.serve[1])
        if mode == "selectors":
            relay_selectors(upstream)
        elif mode == "asyncio":
            relay_asyncio(upstream)
        else:
            relay_trio(upstream, raw=mode == "trio-raw")
        return
    print(f"{2 * args.rate:.0f} relayed messages/s, {args.seconds:g} s windows, median of {args.repeat}")
    print("| middle (plain TCP, no TLS) | CPU µs per relayed message | runs |")
    print("|---|---|---|")
    for mode in args.modes.split(","):
        runs = [measure(mode, args.rate, args.seconds) for _ in range(args.repeat)]
        print(f"| {mode} | {statistics.median(runs):.1f} | {', '.join(f'{r:.0f}' for r in runs)} |", flush=True)


if __name__ == "__main__":
    main()

"""What ``siptap.relay.tap.MirrorTap.chunk`` costs the relay per chunk (issue 16).

Compared, interleaved within each repeat (the machine is shared: quote the ratios), each
sending the same SIP-sized records (300-1,500 bytes, seeded) to a consumer process on a Unix
SOCK_SEQPACKET socket with the same SO_SNDBUF:

- ``bare``: ``sock.send(chunk_header(...) + data)`` as in bench/channel.py (the floor);
- ``sendmsg``: ``sock.sendmsg([chunk_header(...), data])``, two buffers instead of a copy;
- ``tap``: ``MirrorTap.chunk(conn, direction, offset, data)``, the product's data path
  (connected by its own ``run`` task inside ``trio.run``; the loop itself never awaits).

Scenarios (sender CPU = ``time.process_time()`` per record):

1. load: ``--load`` records in groups of 100 with a 1 ms sleep after each (the consumer keeps
   up), net of the CPU of the same loop with only its sleeps;
2. back to back (the consumer cannot keep up: some sends are refused, counted);
3. refused: the consumer is SIGSTOPped and the channel full: every send is refused (the tap
   counts a drop per connection and sets the report event);
4. down (tap only): no mirror at all, the tap's "not connected" path.

    python bench/tap_cpu.py [--repeat 5] [--load 50000] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import random
import select
import signal
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog
import trio

from siptap.relay.tap import MirrorTap
from siptap.sansio.chunk_records import FROM_ACCEPTED, chunk_header

CTX = mp.get_context("fork")
SNDBUF = 4 * 1024 * 1024
CANDIDATES = ("bare", "sendmsg", "tap")
REFUSED = 10000  # sends timed against a full channel


def consume(path: str, ready: Any) -> None:
    """Accept any number of channels and read them all, forever (until killed)."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    listener.bind(path)
    listener.listen(16)
    ready.set()
    socks = [listener]
    buffer = bytearray(1 << 18)
    while True:
        for sock in select.select(socks, [], [])[0]:
            if sock is listener:
                conn, _ = listener.accept()
                conn.setblocking(False)
                socks.append(conn)
                continue
            while True:
                try:
                    if not sock.recv_into(buffer):
                        socks.remove(sock)
                        sock.close()
                        break
                except BlockingIOError:
                    break


def payloads(count: int) -> list[bytes]:
    rng = random.Random(16)
    return [bytes(rng.getrandbits(8) for _ in range(8)) * (rng.randrange(300, 1500) // 8) for _ in range(count)]


def bare_socket(path: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SNDBUF)
    sock.connect(path)
    sock.setblocking(False)
    return sock


def senders(sock: socket.socket, tap: MirrorTap) -> dict[str, Callable[[int, int, bytes], bool]]:
    send, sendmsg, chunk = sock.send, sock.sendmsg, tap.chunk

    def bare(conn: int, offset: int, data: bytes) -> bool:
        try:
            send(chunk_header(conn, FROM_ACCEPTED, offset, time.time()) + data)
            return True
        except BlockingIOError:
            return False

    def two_buffers(conn: int, offset: int, data: bytes) -> bool:
        try:
            sendmsg([chunk_header(conn, FROM_ACCEPTED, offset, time.time()), data])
            return True
        except BlockingIOError:
            return False

    def product(conn: int, offset: int, data: bytes) -> bool:
        chunk(conn, FROM_ACCEPTED, offset, data)
        return True  # drops are read from the tap's counters

    return {"bare": bare, "sendmsg": two_buffers, "tap": product}


def timed(send: Callable[[int, int, bytes], bool] | None, data: list[bytes], group: int, pause: float) -> tuple[float, int]:
    """CPU seconds and refused sends for one pass; ``send`` None: the loop with only its sleeps."""
    refused = 0
    start = time.process_time()
    for i, record in enumerate(data):
        if send is not None and not send(1, i, record):
            refused += 1
        if pause and i % group == group - 1:
            time.sleep(pause)
    return time.process_time() - start, refused


async def one_repeat(path: str, consumer: Any, data: list[bytes], order: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    async with trio.open_nursery() as nursery:
        tap = MirrorTap(path, buffer_size=SNDBUF, warn_interval=3600)
        await nursery.start(tap.run)
        assert tap.connected
        sock = bare_socket(path)
        send = senders(sock, tap)
        idle, _ = timed(None, data, 100, 0.001)
        for name in order:
            cpu, _ = timed(send[name], data, 100, 0.001)
            out[f"load/{name}"] = max(cpu - idle, 0.0) / len(data) * 1e6
        for name in order:
            before = tap.dropped_records
            cpu, refused = timed(send[name], data, len(data), 0.0)
            out[f"b2b/{name}"] = cpu / len(data) * 1e6
            out[f"b2b_refused/{name}"] = refused if name != "tap" else tap.dropped_records - before
            await trio.sleep(0.3)  # let the consumer drain before the next candidate
        os.kill(consumer.pid, signal.SIGSTOP)
        try:
            for name in order:  # fill the channel, then time sends that are all refused
                if name == "tap":
                    full = tap.dropped_records
                    while tap.dropped_records == full:
                        tap.chunk(2, FROM_ACCEPTED, 0, data[0])
                else:
                    while send[name](2, 0, data[0]):
                        pass
                before = tap.dropped_records
                cpu, refused = timed(send[name], data[:REFUSED], REFUSED, 0.0)
                out[f"refused/{name}"] = cpu / len(data[:REFUSED]) * 1e6
                out[f"refused_count/{name}"] = refused if name != "tap" else tap.dropped_records - before
        finally:
            os.kill(consumer.pid, signal.SIGCONT)
        sock.close()
        nursery.cancel_scope.cancel()
    down = MirrorTap(path + ".nobody")  # never connected: every chunk is a counted drop
    cpu, _ = timed(senders(socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET), down)["tap"], data[:REFUSED],
                   REFUSED, 0.0)
    out["down/tap"] = cpu / len(data[:REFUSED]) * 1e6
    assert down.dropped_records == len(data[:REFUSED])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--load", type=int, default=50000)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    structlog.configure(logger_factory=structlog.ReturnLoggerFactory())  # the tap's log lines: not measured
    data = payloads(args.load)
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeat):
            path = f"{tmp}/mirror-{repeat}.sock"
            ready = CTX.Event()
            consumer = CTX.Process(target=consume, args=(path, ready), daemon=True)
            consumer.start()
            ready.wait(10)
            order = list(CANDIDATES)
            random.Random(repeat).shuffle(order)
            try:
                runs.append(trio.run(one_repeat, path, consumer, data, order))
            finally:
                consumer.kill()
                consumer.join()
            print(f"repeat {repeat + 1}: " + ", ".join(f"{k} {v:.2f}" for k, v in runs[-1].items()), file=sys.stderr)
    keys = list(runs[0])
    medians = {k: statistics.median(r[k] for r in runs) for k in keys}
    ratios = {f"{scenario}/{name}÷bare": statistics.median(r[f"{scenario}/{name}"] / r[f"{scenario}/bare"]
                                                           for r in runs if r[f"{scenario}/bare"] > 0)
              for scenario in ("load", "b2b", "refused") for name in ("sendmsg", "tap")}
    print(f"{'figure':28} median")
    for key, value in {**medians, **ratios}.items():
        print(f"{key:28} {value:.2f}")
    if args.json is not None:
        args.json.write_text(json.dumps({"args": vars(args) | {"json": str(args.json)}, "runs": runs,
                                         "medians": medians, "ratios": ratios, "load": os.getloadavg()}, indent=1))


if __name__ == "__main__":
    main()

"""Which local channel should carry the relay's chunk records to the mirror process (issue 16)?

Candidates, each with the receiver in another process:

- ``seqpacket``: a Unix SOCK_SEQPACKET socketpair per relay worker (record boundaries kept,
  connection-oriented: the mirror sees a worker go away);
- ``dgram``: a Unix SOCK_DGRAM socketpair per worker;
- ``ring``: a shared-memory ring (anonymous shared ``mmap`` + ``struct``) per worker, single
  producer, single consumer, with ``ring-notify`` the same ring plus an eventfd the producer
  writes when the consumer said it is going to sleep;
- ``dgram-bound`` (capacity only): every worker ``sendto`` one bound SOCK_DGRAM socket, the
  other way to fan several producers into one consumer.

Every record is what the relay would send per received chunk: ``chunk_header(conn, direction,
offset, time.time()) + data`` (siptap.sansio.chunk_records, 32 bytes) for SIP-sized data
(300-1,500 bytes, seeded), built and sent from Python the way the pump would, non-blocking:
a full channel is a counted drop, never a wait. ``conn`` is the producer, ``offset`` its
sequence number, so the consumer checks order and counts what arrived.

Figures (CPU = ``time.process_time()`` of the process concerned, medians over ``--repeat``;
ratios are taken within one repeat, candidates interleaved, because the machine is shared):

1. load: one producer sends ``--load`` records in groups of 100 with a 1 ms sleep after each
   group (a busy trunk: ~60k records/s, the consumer keeps up) and back to back (the consumer
   cannot keep up: drops, never a wait); sender CPU per record (what the relay pays, net of
   the sleeping loop's own CPU), consumer CPU per record, drops, order.
2. paced: one record every ``--pace`` seconds (a relay at lab rates: the consumer is idle
   between records), consumer either woken per record (blocking recv / eventfd) or batching
   (sleeps 10 ms, drains everything: the mirror's batch_interval); sender CPU per record net
   of the sleeping loop's own CPU, consumer CPU per record.
3. two producers (two worker processes, a channel each) into one consumer, load as in 1.
4. stopped consumer (SIGSTOP): records and bytes that fit before the first EAGAIN / ring-full
   with the default and the largest allowed send buffer, how long a refused send takes,
   order and count after SIGCONT.
5. trio: the back-to-back load sent from inside ``trio.run`` with a plain non-blocking ``send`` (no
   await) against ``await trio_socket.send`` (a checkpoint per record, and it waits when full).

    python bench/channel.py [--repeat 5] [--load 100000] [--paced 3000] [--pace 0.0005] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import mmap
import multiprocessing as mp
import os
import random
import select
import signal
import socket
import statistics
import struct
import sys
import time
from typing import Any

from siptap.sansio.chunk_records import (
    CHUNK_HEADER,
    CHUNK_HEADER_SIZE,
    FROM_ACCEPTED,
    FROM_DIALLED,
    VERSION,
    chunk_header,
)

CTX = mp.get_context("fork")
PAYLOADS = [b"x" * size for size in random.Random(16).choices(range(300, 1501), k=64)]
MEAN_RECORD = CHUNK_HEADER_SIZE + statistics.fmean(len(p) for p in PAYLOADS)
SOCKET_KINDS = {"seqpacket": socket.SOCK_SEQPACKET, "dgram": socket.SOCK_DGRAM}
WMEM_MAX = int(open("/proc/sys/net/core/wmem_max").read())  # noqa: SIM115 - one read at import
DGRAM_QLEN = int(open("/proc/sys/net/unix/max_dgram_qlen").read())  # noqa: SIM115
END = FROM_DIALLED  # a chunk "from the dialled side" marks a producer's end (offset = records sent)


# -- the shared-memory ring ------------------------------------------------------------------

_U64 = struct.Struct("<Q")
_U32 = struct.Struct("<I")
_SLOT = struct.Struct("<I" + CHUNK_HEADER.format.lstrip("<"))  # record length, then the chunk header
_META = 192  # head (bytes written) at 0, tail (bytes read) at 64, "consumer sleeping" at 128
_WRAP = 0xFFFFFFFF  # length word meaning "the rest of the lap is empty, continue at 0"


class Ring:
    """Single-producer single-consumer byte ring in anonymous shared memory (inherited by fork).

    Records are a 4-byte length then the record, 8-byte aligned; one that does not fit before
    the end of the buffer starts at 0 after a wrap word. The producer publishes ``head`` after
    writing the record and the consumer publishes ``tail`` after reading: on x86 (stores are
    not reordered with stores, loads not with loads) and in CPython (no reordering of the
    buffer writes) that ordering is enough; on a weakly ordered CPU a real ring needs
    barriers, which Python cannot issue.
    """

    def __init__(self, capacity: int, notify: bool = False) -> None:
        self.capacity = capacity
        self.buf = mmap.mmap(-1, _META + capacity)  # MAP_SHARED | MAP_ANONYMOUS
        self.efd = os.eventfd(0, os.EFD_NONBLOCK) if notify else None
        self.head = self.tail = self.tail_seen = 0  # each side keeps its own copy after fork

    def write_chunk(self, conn: int, direction: int, offset: int, ts: float, data: bytes) -> bool:
        buf, cap = self.buf, self.capacity
        n = len(data)
        need = (4 + CHUNK_HEADER_SIZE + n + 7) & ~7
        head = self.head
        pos = head % cap
        wrap = cap - pos if need > cap - pos else 0
        if head + wrap + need - self.tail_seen > cap:
            self.tail_seen = _U64.unpack_from(buf, 64)[0]  # look at the consumer only when it seems full
            if head + wrap + need - self.tail_seen > cap:
                return False
        if wrap:
            _U32.pack_into(buf, _META + pos, _WRAP)
            head += wrap
            pos = 0
        at = _META + pos
        _SLOT.pack_into(buf, at, CHUNK_HEADER_SIZE + n, b"ST", VERSION, 1, direction, conn, offset, ts)
        buf[at + 36 : at + 36 + n] = data
        self.head = head = head + need
        _U64.pack_into(buf, 0, head)  # publish
        if self.efd is not None and buf[128]:
            buf[128] = 0
            os.eventfd_write(self.efd, 1)
        return True

    def drain(self) -> list[bytes]:
        buf, cap = self.buf, self.capacity
        head = _U64.unpack_from(buf, 0)[0]
        tail = self.tail
        out = []
        while tail < head:
            pos = tail % cap
            length = _U32.unpack_from(buf, _META + pos)[0]
            if length == _WRAP:
                tail += cap - pos
                continue
            out.append(buf[_META + pos + 4 : _META + pos + 4 + length])
            tail += (4 + length + 7) & ~7
        if tail != self.tail:
            self.tail = tail
            _U64.pack_into(buf, 64, tail)
        return out

    def wait(self, timeout: float) -> None:
        """Sleep until the producer writes (ring-notify) or ``timeout`` passes. The flag is set,
        then the ring re-checked, so a record published in between is not slept over; a
        wake-up lost to store-load reordering costs at most ``timeout``."""
        if self.efd is None:
            time.sleep(timeout)
            return
        self.buf[128] = 1
        if _U64.unpack_from(self.buf, 0)[0] != self.tail:
            self.buf[128] = 0
            return
        select.select([self.efd], [], [], timeout)
        self.buf[128] = 0
        try:
            os.eventfd_read(self.efd)
        except BlockingIOError:
            pass


# -- channels: what the producer calls per record, what the consumer reads -------------------


class Channel:
    def __init__(self, kind: str, sndbuf: int | None = None, ring_bytes: int = WMEM_MAX) -> None:
        self.kind = kind
        self.ring: Ring | None = None
        self.rx = self.tx = None
        if kind.startswith("ring"):
            self.ring = Ring(ring_bytes, notify=kind == "ring-notify")
            return
        if kind == "dgram-bound":
            self.rx = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self.rx.bind(f"\0siptap-bench-{os.getpid()}-{id(self)}")
            self.tx = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self.tx.connect(self.rx.getsockname())
        else:
            self.rx, self.tx = socket.socketpair(socket.AF_UNIX, SOCKET_KINDS[kind])
        if sndbuf:
            self.tx.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
        self.tx.setblocking(False)

    @property
    def sndbuf(self) -> int | None:
        return None if self.tx is None else self.tx.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)

    def sender(self) -> Any:
        """The per-record call the relay would make: returns False for a drop, never waits."""
        if self.ring is not None:
            return self.ring.write_chunk
        send = self.tx.send  # type: ignore[union-attr]

        def send_chunk(conn: int, direction: int, offset: int, ts: float, data: bytes) -> bool:
            try:
                send(chunk_header(conn, direction, offset, ts) + data)
            except BlockingIOError:
                return False
            return True

        return send_chunk

    def send_end(self, conn: int, count: int) -> None:
        send = self.sender()
        while not send(conn, END, count, time.time(), b""):
            time.sleep(0.001)


def produce(channel: Channel, conn: int, n: int, pace: float, group: int, results: Any, trio_mode: str = "") -> None:
    """A relay worker: n records, ``group`` at a time, a ``pace`` seconds' sleep after each group."""
    if trio_mode:
        results.put(_produce_trio(channel, conn, n, trio_mode))
        return
    send = channel.sender()
    now, sleep = time.time, time.sleep
    drops = 0
    start = time.process_time()
    for seq in range(n):
        if not send(conn, FROM_ACCEPTED, seq, now(), PAYLOADS[seq & 63]):
            drops += 1
        if pace and seq % group == group - 1:
            sleep(pace)
    cpu = time.process_time() - start
    idle = 0.0
    if pace:  # the same loop without the record: what the pacing itself costs
        start = time.process_time()
        for _ in range(n // group):
            sleep(pace)
        idle = time.process_time() - start
    channel.send_end(conn, n)
    results.put({"conn": conn, "cpu": cpu, "idle_cpu": idle, "drops": drops, "sent": n})


def _produce_trio(channel: Channel, conn: int, n: int, mode: str) -> dict[str, Any]:
    import trio

    async def main() -> dict[str, Any]:
        tx = channel.tx
        assert tx is not None
        drops = 0
        start = time.process_time()
        if mode == "nowait":  # what a pump can do: a plain non-blocking send, no await
            send = tx.send
            for seq in range(n):
                try:
                    send(chunk_header(conn, FROM_ACCEPTED, seq, time.time()) + PAYLOADS[seq & 63])
                except BlockingIOError:
                    drops += 1
        else:  # trio's socket send: a checkpoint per record, and it waits while the channel is full
            tsock = trio.socket.from_stdlib_socket(tx)
            for seq in range(n):
                await tsock.send(chunk_header(conn, FROM_ACCEPTED, seq, time.time()) + PAYLOADS[seq & 63])
        return {"conn": conn, "cpu": time.process_time() - start, "idle_cpu": 0.0, "drops": drops, "sent": n}

    result = trio.run(main)
    channel.send_end(conn, n)
    return result


def consume(channels: list[Channel], producers: int, batch: bool, results: Any, ready: Any) -> None:
    """The mirror process: read records, check per-producer order, stop at every END."""
    last: dict[int, int] = {}
    received: dict[int, int] = {}
    disorder = 0
    ended = 0
    unpack = CHUNK_HEADER.unpack_from
    socks = [c.rx for c in channels if c.rx is not None]
    rings = [c.ring for c in channels if c.ring is not None]
    for sock in socks:
        sock.setblocking(not batch)  # type: ignore[union-attr]
    wakeups = 0
    ready.put(os.getpid())
    start = time.process_time()

    def handle(record: bytes) -> None:
        nonlocal disorder, ended
        _, _, _, direction, conn, offset, _ = unpack(record)
        if direction == END:
            ended += 1
            return
        if offset <= last.get(conn, -1):
            disorder += 1
        last[conn] = offset
        received[conn] = received.get(conn, 0) + 1

    while ended < producers:
        wakeups += 1
        if rings:
            for ring in rings:
                for record in ring.drain():
                    handle(record)
            if ended < producers and not any(_U64.unpack_from(r.buf, 0)[0] != r.tail for r in rings):
                if batch or len(rings) > 1:
                    time.sleep(0.01)
                else:
                    rings[0].wait(0.01)
        elif batch:
            time.sleep(0.01)
            for sock in socks:
                while True:
                    try:
                        handle(sock.recv(65536))  # type: ignore[union-attr]
                    except BlockingIOError:
                        break
        else:
            readable = socks if len(socks) == 1 else select.select(socks, [], [])[0]
            for sock in readable:
                handle(sock.recv(65536))  # type: ignore[union-attr]
    results.put({"consumer_cpu": time.process_time() - start, "received": received, "disorder": disorder,
                 "wakeups": wakeups})


def run_case(kind: str, *, n: int, pace: float = 0.0, group: int = 1, producers: int = 1, batch: bool = False,
             trio_mode: str = "") -> dict[str, Any]:
    channels = [Channel(kind, sndbuf=WMEM_MAX) for _ in range(producers)]
    results, ready = CTX.SimpleQueue(), CTX.SimpleQueue()
    consumer = CTX.Process(target=consume, args=(channels, producers, batch, results, ready))
    consumer.start()
    ready.get()
    workers = [CTX.Process(target=produce, args=(channels[i], i, n, pace, group, results, trio_mode)) for i in range(producers)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    consumer.join()
    reports = [results.get() for _ in range(producers + 1)]
    consumer_report = next(r for r in reports if "consumer_cpu" in r)
    sent = [r for r in reports if "sent" in r]
    received = consumer_report["received"]
    delivered = sum(received.values())
    return {
        "kind": kind, "producers": producers, "batch": batch, "pace": pace, "group": group, "trio": trio_mode,
        "sender_us": statistics.fmean((r["cpu"] - r["idle_cpu"]) / r["sent"] * 1e6 for r in sent),
        "drops": sum(r["drops"] for r in sent),
        "lost": sum(r["sent"] - r["drops"] - received.get(r["conn"], 0) for r in sent),
        "disorder": consumer_report["disorder"],
        "consumer_us": consumer_report["consumer_cpu"] / max(1, delivered) * 1e6,
        "wakeups": consumer_report["wakeups"],
    }


def stopped_consumer(kind: str, sndbuf: int | None, attempts: int = 2000) -> dict[str, Any]:
    """SIGSTOP the consumer, fill the channel, time the refused sends, SIGCONT, check delivery."""
    channel = Channel(kind, sndbuf=sndbuf)
    results, ready = CTX.SimpleQueue(), CTX.SimpleQueue()
    consumer = CTX.Process(target=consume, args=([channel], 1, False, results, ready))
    consumer.start()
    pid = ready.get()
    os.kill(pid, signal.SIGSTOP)
    send = channel.sender()
    fit = fit_bytes = 0
    while send(0, FROM_ACCEPTED, fit, time.time(), PAYLOADS[fit & 63]):
        fit_bytes += CHUNK_HEADER_SIZE + len(PAYLOADS[fit & 63])
        fit += 1
        if fit > 10_000_000:
            raise RuntimeError("the channel never filled")
    refused_ns = []
    accepted_later = 0
    cpu = time.process_time()
    for i in range(attempts):
        t0 = time.perf_counter_ns()
        ok = send(0, FROM_ACCEPTED, fit + i, time.time(), PAYLOADS[i & 63])
        refused_ns.append(time.perf_counter_ns() - t0)
        accepted_later += ok
    refused_cpu = (time.process_time() - cpu) / attempts
    os.kill(pid, signal.SIGCONT)
    channel.send_end(0, fit + attempts)
    consumer.join()
    report = results.get()
    return {
        "kind": kind, "sndbuf_requested": sndbuf, "sndbuf": channel.sndbuf,
        "capacity_bytes": channel.ring.capacity if channel.ring is not None else None,
        "fit_records": fit, "fit_bytes": fit_bytes,
        "accepted_while_stopped_after_full": accepted_later,
        "refused_median_us": statistics.median(refused_ns) / 1e3, "refused_max_us": max(refused_ns) / 1e3,
        "refused_cpu_us": refused_cpu * 1e6,
        "delivered": sum(report["received"].values()), "disorder": report["disorder"],
    }


def median_of(rows: list[dict[str, Any]], key: str) -> float:
    return statistics.median(row[key] for row in rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--load", type=int, default=100_000)
    parser.add_argument("--paced", type=int, default=3000)
    parser.add_argument("--pace", type=float, default=0.0005)
    parser.add_argument("--json", help="write every raw figure here")
    args = parser.parse_args()
    kinds = ["seqpacket", "dgram", "ring"]
    raw: dict[str, Any] = {"wmem_max": WMEM_MAX, "max_dgram_qlen": DGRAM_QLEN, "mean_record": MEAN_RECORD,
                           "args": vars(args), "loadavg_start": open("/proc/loadavg").read().split()[:3]}  # noqa: SIM115
    print(f"records: {CHUNK_HEADER_SIZE}-byte header + 300..1500 bytes (mean {MEAN_RECORD:.0f}); "
          f"wmem_max {WMEM_MAX}, max_dgram_qlen {DGRAM_QLEN}; repeats {args.repeat}", flush=True)

    def matrix(name: str, cases: dict[str, dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
        rows: dict[str, list[dict[str, Any]]] = {label: [] for label in cases}
        for _ in range(args.repeat):  # candidates interleaved within each repeat
            for label, case in cases.items():
                rows[label].append(run_case(**case))
        first = next(iter(cases))
        print(f"\n## {name}\n\n| case | sender µs/record | × {first} | consumer µs/record | drops | lost | disorder |")
        print("|---|---|---|---|---|---|---|")
        for label, runs in rows.items():
            ratio = statistics.median(r["sender_us"] / f["sender_us"] for r, f in zip(runs, rows[first], strict=True))
            print(f"| {label} | {median_of(runs, 'sender_us'):.2f} | {ratio:.2f} | {median_of(runs, 'consumer_us'):.2f} "
                  f"| {median_of(runs, 'drops'):.0f} | {max(r['lost'] for r in runs)} | {max(r['disorder'] for r in runs)} |",
                  flush=True)
        raw[name] = rows
        return rows

    load = args.load
    matrix("load, 1 producer, groups of 100 every 1 ms", {
        k: {"kind": k, "n": load, "pace": 0.001, "group": 100} for k in kinds})
    matrix("load, 1 producer, back to back", {k: {"kind": k, "n": load} for k in kinds})
    matrix("paced, consumer woken per record", {
        **{k: {"kind": k, "n": args.paced, "pace": args.pace} for k in ["seqpacket", "dgram", "ring-notify"]}})
    matrix("paced, consumer batching every 10 ms", {
        k: {"kind": k, "n": args.paced, "pace": args.pace, "batch": True} for k in kinds})
    matrix("load, 2 producers into 1 consumer, groups of 100 every 1 ms", {
        k: {"kind": k, "n": load // 2, "pace": 0.001, "group": 100, "producers": 2} for k in kinds})
    matrix("back to back from inside trio.run", {
        "seqpacket nowait": {"kind": "seqpacket", "n": load, "trio_mode": "nowait"},
        "seqpacket await": {"kind": "seqpacket", "n": load, "trio_mode": "await"},
        "dgram nowait": {"kind": "dgram", "n": load, "trio_mode": "nowait"},
    })

    print("\n## stopped consumer (SIGSTOP): capacity and refused sends\n")
    print("| channel | SO_SNDBUF asked -> got | records fit | bytes fit | refused send median / max µs "
          "| refused CPU µs | delivered after SIGCONT | disorder |")
    print("|---|---|---|---|---|---|---|---|")
    stops = []
    for kind, sndbuf in [("seqpacket", None), ("seqpacket", WMEM_MAX), ("dgram", None), ("dgram", WMEM_MAX),
                         ("dgram-bound", WMEM_MAX), ("ring", None)]:
        row = stopped_consumer(kind, sndbuf)
        stops.append(row)
        asked = "default" if sndbuf is None else str(sndbuf)
        got = row["sndbuf"] if row["sndbuf"] is not None else f"ring {row['capacity_bytes']}"
        print(f"| {kind} | {asked} -> {got} | {row['fit_records']} | {row['fit_bytes']} | "
              f"{row['refused_median_us']:.1f} / {row['refused_max_us']:.0f} | {row['refused_cpu_us']:.2f} | "
              f"{row['delivered']} | {row['disorder']} |", flush=True)
    raw["stopped"] = stops
    raw["loadavg_end"] = open("/proc/loadavg").read().split()[:3]  # noqa: SIM115
    if args.json:
        with open(args.json, "w") as out:
            json.dump(raw, out, indent=1)


if __name__ == "__main__":
    sys.exit(main())

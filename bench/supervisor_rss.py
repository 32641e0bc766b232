"""Session 8: the supervisor's RSS while it forwards a child's log lines, without SIPp.

The supervisor's only per-message work is :func:`siptap.child_process.run_child`'s stdout
forwarding into :class:`siptap.log.QueueWriter` (the mirror's ``sip`` lines, ~7,000/s at
1,000 calls/s). This runs that very path in this process: ``run_child`` starts a real child
(this script, ``--child``) that writes JSON lines shaped like the mirror's ``sip`` lines at
``--rate`` lines/s through its own QueueWriter (one write per 50 ms, as the mirror does), and
this process forwards them into a QueueWriter writing to ``--sink`` (default /dev/null). Every
``--interval`` s it samples its own memory: VmRSS/RssAnon, glibc's ``mallinfo2`` (heap bytes,
in use, free, summed over every arena) and ``malloc_info`` (each arena's heap), the
collector's tracked objects, and with ``--trace`` tracemalloc's traced total and the top
sites grown since the first sample. ``--stall-every S`` SIGSTOPs this process for
``--stall-for`` seconds every S seconds, as a loaded box does: the lines then come in a burst.

    .venv/bin/python bench/supervisor_rss.py --duration 600 [--rate 7000] [--trace] [--trim-every 60]
    .venv/bin/python bench/supervisor_rss.py --stall-every 60 --as-supervisor   # the allocator as `siptap run` sets it up
    MALLOC_ARENA_MAX=1 .venv/bin/python bench/supervisor_rss.py ...      # glibc's arenas capped
    PYTHONPATH=/work/base-x/proxy .venv/bin/python bench/supervisor_rss.py ...   # another checkout

Prints one line per sample; ``--json FILE`` writes every sample. The child (niced) paces
itself with a 10 ms sleep per batch: it is a load generator, not a measurement.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import re
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import trio


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]


_libc = ctypes.CDLL("libc.so.6")
_libc.mallinfo2.restype = _MallInfo2
_libc.malloc_trim.argtypes = [ctypes.c_size_t]
_libc.open_memstream.restype = ctypes.c_void_p
_libc.open_memstream.argtypes = [ctypes.POINTER(ctypes.c_char_p), ctypes.POINTER(ctypes.c_size_t)]
_libc.fclose.argtypes = [ctypes.c_void_p]
_libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
_libc.free.argtypes = [ctypes.c_void_p]


def status_kib() -> dict[str, int]:
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "RssAnon", "VmData"):
                out[key] = int(value.split()[0])
    return out


def arenas() -> dict[str, int]:
    """glibc's malloc_info over every arena: heaps' system bytes, free bytes (fast + rest), mmapped."""
    buf, size = ctypes.c_char_p(), ctypes.c_size_t()
    stream = _libc.open_memstream(ctypes.byref(buf), ctypes.byref(size))
    _libc.malloc_info(0, stream)
    _libc.fclose(stream)
    xml = ctypes.string_at(buf, size.value).decode()
    _libc.free(ctypes.cast(buf, ctypes.c_void_p))
    # The totals after the last </heap>: <total type="fast" count= size=>, <total type="rest" ...>,
    # <total type="mmap" ...>, <system type="current" size=>.
    tail = xml[xml.rfind("</heap>"):]
    fields = {f"{kind}_{attr}": int(value) for kind, attr, value in
              re.findall(r'<(?:total|system) type="(\w+)" (?:count="\d+" )?(size)="(\d+)"', tail)}
    heaps = [int(v) for v in re.findall(r'<system type="current" size="(\d+)"/>', xml[:xml.rfind("</heap>")])]
    return {"arenas": xml.count("<heap nr="), "per_arena": heaps, "system": fields.get("current_size", 0),
            "free": fields.get("fast_size", 0) + fields.get("rest_size", 0), "mmap": fields.get("mmap_size", 0)}


# -- the child: a stand-in for the mirror's stdout ------------------------------------------------

def child(rate: int, control_fd: int) -> None:
    import socket

    from siptap.log import QueueWriter

    parent_pid = os.getppid()
    writer = QueueWriter(sys.stdout, maxsize=100000)
    socket.socket(fileno=control_fd).send(b"ready\n")
    # The mirror's seven messages per call, with its `sip` line's fields; sizes 250-330 bytes.
    kinds = [("INVITE", None), (None, 100), (None, 180), (None, 200), ("ACK", None), ("BYE", None), (None, 200)]
    n = 0
    start = time.monotonic()
    while True:
        due = int((time.monotonic() - start) * rate)
        while n < due:
            method, status = kinds[n % 7]
            call = n // 7
            what = f'"method": "{method}"' if method else f'"status": {status}, "reason": "OK"'
            writer.msg(f'{{"conn": "c{call % 3000}-1f{n % 97:x}", "route": "soak", "direction": "customer->core", '
                       f'{what}, "call_id": "{call}-{os.getpid()}@127.0.0.1", "cseq": "1 {method or "INVITE"}", '
                       f'"from_tag": "{call:x}", "to_tag": "{n:x}", "length": {300 + n % 400}, "event": "sip", '
                       f'"process": "mirror", "level": "info", "timestamp": "2026-12-03T13:00:00.{n % 1000000:06d}Z"}}')
            n += 1
        if os.getppid() != parent_pid:  # the measuring process is gone: so is the point
            return
        time.sleep(0.01)  # pacing the generator (not a measurement)


# -- the parent: the supervisor's forwarding path, measured -------------------------------------

async def parent(args: argparse.Namespace) -> list[dict[str, object]]:
    from siptap.child_process import Slot, run_child
    from siptap.log import QueueWriter, get_logger

    sink = open(args.sink, "w")  # noqa: SIM115 - closed at the end
    writer = QueueWriter(sink)
    forwarded = [0]
    msg = writer.msg

    def emit(text: str) -> None:
        forwarded[0] += text.count("\n") + 1
        msg(text)

    samples: list[dict[str, object]] = []
    trims = [0, 0.0]  # malloc_trim calls, their CPU seconds
    base_snapshot: list[tracemalloc.Snapshot] = []
    t0 = trio.current_time()

    def sample() -> dict[str, object]:
        info = _libc.mallinfo2()
        s: dict[str, object] = {"t": round(trio.current_time() - t0, 1), "lines": forwarded[0], **status_kib(),
                                # mallinfo2 sums every arena (glibc >= 2.33): heap bytes, in use, free.
                                "heap": info.arena, "heap_in_use": info.uordblks, "heap_free": info.fordblks,
                                "mmapped": info.hblkhd, **{f"all_{k}": v for k, v in arenas().items()},
                                "gc_objects": len(gc.get_objects()), "dropped": writer.dropped,
                                "cpu": round(time.process_time(), 2), "trims": trims[0], "trim_cpu": round(trims[1], 4)}
        if args.trace:
            s["traced"] = tracemalloc.get_traced_memory()[0]
            snap = tracemalloc.take_snapshot().filter_traces([tracemalloc.Filter(False, tracemalloc.__file__)])
            if not base_snapshot:
                base_snapshot.append(snap)
            else:
                s["grown"] = [f"{st.size_diff:+} B {st.count_diff:+} {st.traceback[-1].filename}:{st.traceback[-1].lineno}"
                              for st in snap.compare_to(base_snapshot[0], "lineno")[:6]]
        return s

    async def sampler() -> None:
        next_at = trio.current_time() + args.warmup
        await trio.sleep_until(next_at)
        if args.trace:
            tracemalloc.start(4)
        last_stall = trio.current_time()
        while trio.current_time() - t0 < args.duration:
            if args.stall_every and trio.current_time() - last_stall >= args.stall_every:
                # The whole process (trio thread and writer thread) off the CPU for a while, as on
                # a loaded box: the child's lines pile up and come in a burst of full pipe reads.
                subprocess.Popen(["sh", "-c", f"kill -STOP {os.getpid()}; sleep {args.stall_for}; "
                                              f"kill -CONT {os.getpid()}"])
                await trio.sleep(args.stall_for + 1)
                last_stall = trio.current_time()
            s = sample()
            samples.append(s)
            print(" ".join(f"{k}={v}" for k, v in s.items() if k != "grown"), flush=True)
            for g in s.get("grown", []):  # type: ignore[attr-defined]
                print("   ", g)
            next_at += args.interval
            if next_at - t0 > args.duration:
                break
            await trio.sleep_until(next_at)
        if slot.process is not None and slot.process.returncode is None:
            slot.process.kill()  # run_child then reaps it and returns
        nursery.cancel_scope.cancel()  # the trimmer

    async def trimmer() -> None:
        # A task of its own, on its own period: the samples see the heap between trims too.
        while True:
            await trio.sleep(args.trim_every)
            started = time.process_time()
            _libc.malloc_trim(0)
            trims[0] += 1
            trims[1] += time.process_time() - started

    slot = Slot(0, delay=1.0)
    argv = ["nice", "-n", "10", sys.executable, __file__, "--child", "--rate", str(args.rate)]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(sampler)
        if args.trim_every:
            nursery.start_soon(trimmer)
        await run_child(slot, argv, name="child", log=get_logger(), emit=emit, ready_timeout=30, metrics_dir=None,
                        on_ready=lambda process: None, fields={})
    writer.close()
    sink.close()
    return samples


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--control-fd", type=int, help=argparse.SUPPRESS)
    p.add_argument("--rate", type=int, default=7000, help="lines/s the child writes (7,000 = the mirror at 1,000 calls/s)")
    p.add_argument("--duration", type=float, default=600.0)
    p.add_argument("--warmup", type=float, default=10.0, help="first sample (and tracemalloc's start) after this")
    p.add_argument("--interval", type=float, default=10.0)
    p.add_argument("--sink", default="/dev/null", help="where this process's QueueWriter writes")
    p.add_argument("--trace", action="store_true", help="tracemalloc from the first sample (changes the figures)")
    p.add_argument("--trim-every", type=float, default=0.0, help="malloc_trim(0) every S seconds (0: never)")
    p.add_argument("--mmap-threshold", type=int, default=0,
                   help="mallopt(M_MMAP_THRESHOLD, N) in this process at start (0: glibc's dynamic default)")
    p.add_argument("--stall-every", type=float, default=0.0,
                   help="SIGSTOP this process for --stall-for s every S s (0: never): a burst after each")
    p.add_argument("--stall-for", type=float, default=2.0)
    p.add_argument("--as-supervisor", action="store_true",
                   help="set up the allocator as this checkout's `siptap run` does for its supervisor process")
    p.add_argument("--json", type=Path, help="write every sample here")
    args = p.parse_args()
    if args.child:
        child(args.rate, args.control_fd)
        return
    if args.mmap_threshold:
        _libc.mallopt(-3, args.mmap_threshold)  # M_MMAP_THRESHOLD
    if args.as_supervisor:
        try:
            from siptap.allocator import map_large_allocations  # absent before session 8
        except ImportError:
            print("this checkout sets nothing for the supervisor process", flush=True)
        else:
            print(f"siptap.allocator: mmap threshold {map_large_allocations()}", flush=True)
    samples = trio.run(parent, args)
    if args.json:
        args.json.write_text(json.dumps({"argv": sys.argv, "env_arena_max": os.environ.get("MALLOC_ARENA_MAX"),
                                         "samples": samples}, indent=1))


if __name__ == "__main__":
    main()

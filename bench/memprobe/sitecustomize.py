"""Memory probe for bench/flood_memory.py, loaded into siptap's relay worker through
``PYTHONPATH=bench/memprobe`` (Python imports ``sitecustomize`` at start-up). Inert unless
``SIPTAP_MEMPROBE`` names an output folder and this process is a relay worker (or, with
``SIPTAP_MEMPROBE_MIRROR=1``, the mirror process).

SIGUSR1 appends one JSON report to ``SIPTAP_MEMPROBE/report.jsonl``: RSS, glibc's heap figures
(``mallinfo2`` for the main arena; ``malloc_info`` XML, all arenas, kept beside it), the
collector's counts, the number of tracked objects and, with ``SIPTAP_MEMPROBE_TRACE=1``,
tracemalloc (started at the first report) with its traced total and the top allocation sites
grown since then.
SIGUSR2 calls ``malloc_trim(0)`` and then reports, so one run shows what trimming gives back.
The handlers run on the main thread between bytecodes (trio does not claim these signals).
"""

from __future__ import annotations

import ctypes
import gc
import json
import os
import signal
import sys
import time
import tracemalloc

_OUT = os.environ.get("SIPTAP_MEMPROBE")


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]


def _status() -> dict[str, int]:
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "RssAnon", "RssFile", "VmData"):
                out[key] = int(value.split()[0])
    return out


def _pymalloc_stats(path: str) -> dict[str, int]:
    """Python's small-object allocator (``sys._debugmallocstats``, written to stderr, so
    stderr goes to ``path`` meanwhile): arenas held, bytes in live blocks, free in pools.
    Empty under tracemalloc, whose hooks hide pymalloc from that report."""
    sys.stderr.flush()
    saved = os.dup(2)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.dup2(fd, 2)
        sys._debugmallocstats()
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(fd)
    wanted = {"# arenas allocated current": "arenas_current", "# arenas highwater mark": "arenas_highwater",
              "# arenas reclaimed": "arenas_reclaimed", "# bytes in allocated blocks": "allocated",
              "# bytes in available blocks": "available", "# bytes lost to pool headers": "pool_headers",
              "# bytes lost to quantization": "quantization", "Total": "total"}
    out: dict[str, int] = {}
    with open(path) as f:
        for line in f:
            key, sep, value = line.partition("=")
            key = key.strip()
            if sep and key in wanted and wanted[key] not in out:  # the first "Total": the arenas'
                out[wanted[key]] = int(value.strip().replace(",", ""))
    return out


def _install() -> None:
    assert _OUT is not None
    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = _MallInfo2
    libc.fopen.restype = ctypes.c_void_p
    libc.fopen.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
    libc.fclose.argtypes = [ctypes.c_void_p]
    libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
    trace = os.environ.get("SIPTAP_MEMPROBE_TRACE") == "1"
    state: dict[str, object] = {"n": 0}

    def report(label: str) -> None:
        n = state["n"] = int(state["n"]) + 1  # type: ignore[call-overload]
        info = libc.mallinfo2()
        xml_path = os.path.join(_OUT, f"malloc_info-{os.getpid()}-{n}.xml")
        fp = libc.fopen(xml_path.encode(), b"w")
        libc.malloc_info(0, fp)
        libc.fclose(fp)
        entry: dict[str, object] = {
            "pid": os.getpid(), "n": n, "label": label, "time": time.time(), **_status(),
            "mallinfo2": {name: getattr(info, name) for name, _ in _MallInfo2._fields_},
            "malloc_info": xml_path, "gc_count": gc.get_count(), "gc_objects": len(gc.get_objects()),
            "gc_frozen": gc.get_freeze_count(),
        }
        entry["pymalloc"] = _pymalloc_stats(os.path.join(_OUT, f"pymalloc-{os.getpid()}-{n}.txt"))
        if "trim" in state:
            entry["malloc_trim"] = state.pop("trim")
        if trace and not tracemalloc.is_tracing():
            # Started at the first report, not at start-up (tracing the imports takes a minute
            # on a loaded machine): "grown" is then what was allocated after the baseline and
            # is still alive, which is the question.
            tracemalloc.start(int(os.environ.get("SIPTAP_MEMPROBE_FRAMES", "8")))
        if trace:
            current, peak = tracemalloc.get_traced_memory()
            entry["traced"] = {"current": current, "peak": peak}
            snapshot = tracemalloc.take_snapshot().filter_traces(
                [tracemalloc.Filter(False, tracemalloc.__file__)])
            base = state.get("base")
            if base is None:
                state["base"] = snapshot
            else:
                stats = snapshot.compare_to(base, "traceback")  # type: ignore[arg-type]
                entry["grown"] = [
                    {"size_diff": s.size_diff, "count_diff": s.count_diff,
                     "where": [f"{fr.filename}:{fr.lineno}" for fr in s.traceback][-4:]}
                    for s in stats[:int(os.environ.get("SIPTAP_MEMPROBE_TOP", "15"))]
                ]
        with open(os.path.join(_OUT, "report.jsonl"), "a") as f:
            f.write(json.dumps(entry) + "\n")

    def on_usr1(signum: int, frame: object) -> None:
        report("report")

    def on_usr2(signum: int, frame: object) -> None:
        started = time.perf_counter()
        released = libc.malloc_trim(0)
        state["trim"] = {"seconds": time.perf_counter() - started, "released": released}
        report("after malloc_trim(0)")

    signal.signal(signal.SIGUSR1, on_usr1)
    signal.signal(signal.SIGUSR2, on_usr2)


if _OUT and ("--worker" in sys.argv
             or (os.environ.get("SIPTAP_MEMPROBE_MIRROR") == "1" and sys.argv[1:2] == ["mirror"])):
    # The mirror process too when asked (bench/idle_memory.py): its per-connection state counts
    # in S4's PSS as well.
    _install()

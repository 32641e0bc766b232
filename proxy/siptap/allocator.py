"""The supervisor process's large blocks from mmap, so a burst of log lines leaves no heap behind.

The supervisor's only per-message work is forwarding its children's stdout
(:func:`siptap.child_process.run_child`): one pipe read (up to 64 KiB) becomes one string on
the log writer's queue, freed by the writer thread once written. glibc serves blocks that size
from its heap (under the mmap threshold: 128 KiB, raised automatically up to 32 MiB as larger
blocks are freed), and the heap only shrinks from its top. Measured (bench/supervisor_rss.py,
bench/results/2026-12-03-s8-suprss.md): nothing Python-level grows (tracked objects and
tracemalloc's total flat) and the bytes in use stay flat, but each time the supervisor is off
the CPU for a moment (a loaded box) the lines pile up and come back as a burst of full reads
alive at once; the heap grows to hold them, and a smaller block allocated meanwhile keeps it
from shrinking once they are freed. A 2-second stall at 7,000 lines/s left +4.4 MiB of RSS
for good; a 15-minute soak at 1,000 calls/s grew +3.3 MiB, in steps.

A fixed threshold (:data:`MMAP_THRESHOLD`) sends every block that large to a mapping of its
own, returned to the system when freed, so a burst never enters the heap: RSS flat through
the same soak and through a stall a minute for 16 minutes. Cost: ~0.5 µs per forwarded line
(the page faults of fresh mappings), a third of the forwarding itself. Neither a single arena
(``MALLOC_ARENA_MAX=1``: the cross-thread frees are not the cause) nor ``malloc_trim`` every
10 s bounds it: once a burst has spread free chunks through the heap, the ongoing reads land in
them and touch their pages again within seconds of each trim. Set for the supervisor process
only: the mirror and the workers level off, and their hot paths would pay the page faults.
Without glibc (musl) nothing is set.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from typing import Any

# Half a pipe read: the reads of a burst are full ones (64 KiB, the pipe's capacity), and so
# are the writer's batches of them. Smaller reads (a quiet child) stay on the heap, where
# blocks that small are cheap to reuse.
MMAP_THRESHOLD = 32 * 1024
_M_MMAP_THRESHOLD = -3  # glibc's malloc.h


def libc_function(name: str, argtypes: list[type], restype: type) -> Any | None:
    """The C library's function ``name`` through ctypes, typed, or None where there is no such
    library or function (musl lacks glibc's allocator controls; not Linux)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    function = getattr(libc, name, None)
    if function is not None:
        function.argtypes = argtypes
        function.restype = restype
    return function


def map_large_allocations(threshold: int = MMAP_THRESHOLD) -> int | None:
    """``mallopt(M_MMAP_THRESHOLD, threshold)`` for this process: the threshold set, or None
    where there is no glibc ``mallopt`` or it refused (musl's is a stub that returns 0)."""
    mallopt = libc_function("mallopt", [ctypes.c_int, ctypes.c_int], ctypes.c_int)
    if mallopt is None:
        return None
    return threshold if mallopt(_M_MMAP_THRESHOLD, threshold) == 1 else None

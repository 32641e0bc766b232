"""Giving a connection flood's heap back to the system once the flood has subsided.

Measured (bench/flood_memory.py, bench/results/2026-12-02-memory-after-flood.md): after 300
connections against a worker limited to 128 descriptors, its RSS stayed ~7.7 MiB above the
idle baseline, flat across repeated floods. Nothing Python-level is kept (tracked objects and
pymalloc's live bytes are back where they were); glibc's main heap holds ~6 MiB of *free*
chunks scattered below live ones (OpenSSL's per-connection buffers, freed out of order), which
it cannot give back by moving the top of the heap. ``malloc_trim(0)`` releases the free pages
inside the heap as well (madvise), ~5.4 MiB of the 7.7, in ~1.5 ms on a loaded 2-core VM.

So a worker trims after each flood: when the number of its live sessions has fallen to a
quarter of the peak since the last trim and at least :data:`FLOOD` below it, and once more
when a quarter of that is left. Steady traffic, however busy, never trims (no drop from a
peak); a flood costs at most two calls, for at least :data:`FLOOD` closed sessions. Not on the
per-chunk path: the call comes at a session's end.
Without glibc (musl) there is no ``malloc_trim`` and this does nothing.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable

from siptap.allocator import libc_function

# A drop of this many live sessions from the peak counts as a flood subsiding: ~100 KiB of
# heap per concurrent proxied connection at its peak (two TLS legs), so ~3 MiB and more.
FLOOD = 32


def glibc_malloc_trim() -> Callable[[], object] | None:
    """``malloc_trim(0)`` from the C library, or None where there is none (musl, not Linux)."""
    trim = libc_function("malloc_trim", [ctypes.c_size_t], ctypes.c_int)
    return None if trim is None else lambda: trim(0)


class HeapTrimmer:
    """Counts the process's live sessions and trims the heap when a flood has subsided."""

    __slots__ = ("_trim", "active", "flood", "peak", "tail", "trims")

    def __init__(self, trim: Callable[[], object] | None, *, flood: int = FLOOD) -> None:
        self._trim = trim
        self.flood = flood
        self.active = 0
        self.peak = 0  # the most live sessions since the last trim
        # After a flood's trim, one more once another three quarters have gone: the sessions
        # still closing after the first trim free heap too (measured: ~2 MiB of the 5.4).
        self.tail = False
        self.trims = 0

    def opened(self) -> None:
        self.active += 1
        if self.active > self.peak:
            self.peak = self.active

    def closed(self) -> None:
        self.active -= 1
        if self.active * 4 > self.peak:
            return
        if self.peak - self.active >= self.flood:
            self.tail = True
        elif self.tail:
            self.tail = False
        else:
            return
        # The next trim needs a new drop, measured from what is live now.
        self.peak = self.active
        if self._trim is not None:
            self._trim()
            self.trims += 1


# One per process: a worker's sessions of every route share one heap.
HEAP = HeapTrimmer(glibc_malloc_trim())

"""glibc's ``malloc_trim``: free heap pages given back to the system.

Two users. A relay worker trims after a connection flood (:mod:`siptap.relay.heap`). The
supervisor trims every :data:`HEAP_TRIM_INTERVAL` seconds (:mod:`siptap.supervisor`): its
only per-message work is forwarding its children's stdout (one pipe read, up to 64 KiB,
becomes one string on the log writer's queue, freed by the writer thread once written), and
glibc serves those blocks from its heap. Measured (bench/supervisor_rss.py,
bench/results/2026-12-03-s8-suprss.md): nothing Python-level grows (tracked objects and
tracemalloc's total flat) and the bytes in use stay flat, but each time the supervisor is
off the CPU for a moment (a loaded box) the lines pile up and come back as a burst of full
reads alive at once; the heap grows to hold them, and once they are freed a smaller live
block above them keeps it from shrinking. A 2-second stall at 7,000 lines/s left +4.4 MiB
of RSS for good; a 15-minute soak at 1,000 calls/s grew +3.3 MiB in 14 minutes, in steps.
``malloc_trim(0)`` also releases the free pages inside the heap (madvise): the RSS is back
at its baseline after each burst, for ~0.15 ms a call. A fixed mmap threshold
(``mallopt``) bounds it as well, but costs ~0.5 µs per forwarded line (the page faults of a
fresh mapping for every read), a third more than the forwarding itself.
Without glibc (musl) there is no ``malloc_trim`` and nothing is trimmed.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Callable

# Long enough to cost nothing (one ~0.15 ms call), short enough that a burst's pages are
# back within seconds: a soak sampling every 10 s sees at most one sample of it.
HEAP_TRIM_INTERVAL = 10.0


def glibc_malloc_trim() -> Callable[[], object] | None:
    """``malloc_trim(0)`` from the C library, or None where there is none (musl, not Linux)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    trim = getattr(libc, "malloc_trim", None)
    if trim is None:
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return lambda: trim(0)

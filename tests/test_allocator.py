"""The supervisor's forwarded log buffers come from mmap, not glibc's heap (siptap/allocator.py;
the measurement behind it: bench/results/2026-12-03-s8-suprss.md).

Each case runs in a fresh interpreter: the setting is process-wide, and pytest's own allocator
must stay as every other test expects it."""

from __future__ import annotations

import json
import platform
import subprocess
import sys

import pytest

from siptap.allocator import MMAP_THRESHOLD

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt and mallinfo2 are glibc's")

# A backlog of forwarded reads alive at once, as after a stall: 100 strings of a full pipe
# read (64 KiB), built as run_child builds them (bytes decoded), after a larger block was
# freed (which raises glibc's automatic threshold). Prints how many blocks and bytes went to
# mmap and how far the heap grew meanwhile.
BACKLOG = """
import ctypes, json, sys
from siptap.allocator import map_large_allocations

class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                               "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
threshold = map_large_allocations() if sys.argv[1] == "set" else None
big = bytes(1 << 20)  # a 1 MiB block allocated and freed
del big
before = libc.mallinfo2()
backlog = [bytes([65 + i % 26]) * 65536 for i in range(100)]
backlog = [chunk.decode("utf-8", "replace") for chunk in backlog]
after = libc.mallinfo2()
print(json.dumps({"threshold": threshold, "mmapped_blocks": after.hblks - before.hblks,
                  "mmapped_bytes": after.hblkhd - before.hblkhd, "heap_growth": after.arena - before.arena}))
"""


def backlog(mode: str) -> dict[str, int]:
    result = subprocess.run([sys.executable, "-c", BACKLOG, mode], capture_output=True, text=True, timeout=60,
                            check=True)
    return json.loads(result.stdout)  # type: ignore[no-any-return]  # the script's one JSON line


def test_without_it_a_burst_of_forwarded_reads_lands_on_the_heap() -> None:
    # What the supervisor did before: the heap grows by the whole backlog (and, once a smaller
    # live block sits above it, keeps that size after the backlog is freed).
    seen = backlog("default")
    assert seen["threshold"] is None
    assert seen["mmapped_blocks"] == 0
    assert seen["heap_growth"] >= 100 * 65536


def test_the_supervisor_setting_maps_each_forwarded_read_on_its_own() -> None:
    seen = backlog("set")
    assert seen["threshold"] == MMAP_THRESHOLD
    # Each 64 KiB string is its own mapping, unmapped when freed: nothing of it stays in the heap.
    assert seen["mmapped_blocks"] >= 100
    assert seen["mmapped_bytes"] >= 100 * 65536
    assert seen["heap_growth"] < 1 << 20

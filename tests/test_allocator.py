"""malloc_trim gives back what a burst of forwarded log lines left in glibc's heap
(siptap/allocator.py; the measurement behind it: bench/results/2026-12-03-s8-suprss.md).

Run in a fresh interpreter: pytest's own heap is in no known state."""

from __future__ import annotations

import json
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's")

# What the supervisor's heap goes through: a backlog of forwarded reads alive at once (100
# strings of a full pipe read, 64 KiB), a block allocated after them that is still alive
# (it keeps the heap's top where it is), the backlog written and freed. Prints RssAnon (KiB)
# after the free and after the trim.
BURST = """
import json
from siptap.allocator import glibc_malloc_trim

def rss_anon():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("RssAnon:"))

trim = glibc_malloc_trim()
backlog = [chr(65 + i % 26) * 65536 for i in range(100)]
above = bytes(100_000)  # heap, not mmap: under glibc's 128 KiB threshold; no free chunk below fits it
del backlog
freed = rss_anon()
trim()
print(json.dumps({"freed": freed, "trimmed": rss_anon()}))
"""


def test_a_burst_left_in_the_heap_is_given_back_by_a_trim() -> None:
    result = subprocess.run([sys.executable, "-c", BURST], capture_output=True, text=True, timeout=60, check=True)
    seen = json.loads(result.stdout)
    # Freed but kept: the pages stay resident below the live block. Trimmed: most of the
    # 6.4 MiB backlog is back with the system.
    assert seen["freed"] - seen["trimmed"] >= 4 * 1024, seen

"""CPU of each siptap process (supervisor, mirror, relay workers) over a window, from /proc.

Run it beside a benchmark that starts ``siptap run`` (e.g. ``bench/run.py --middles
siptap-sinks-on --scenarios S3``): it waits for the mirror process to appear, skips
``SKIP`` seconds (the chain's start and warm-up), then samples utime+stime of every process
whose command line names siptap over ``WINDOW`` seconds and prints each one's share. Divide by
the messages relayed in the window (S3: 700 per second) for µs per message per process.

    python3 bench/process_cpu.py SKIP WINDOW [MATCH]

``MATCH`` (default ``/tmp/siptap-bench``, the folder ``run.py`` puts the configs in) must occur in
a process's command line: other siptap processes on the machine (a test suite's) are not counted.
"""

from __future__ import annotations

import os
import sys
import time

MATCH = sys.argv[3].encode() if len(sys.argv) > 3 else b"/tmp/siptap-bench"


def snapshot() -> dict[str, tuple[str, float]]:
    """pid -> (role, CPU seconds) for every live process running siptap."""
    out: dict[str, tuple[str, float]] = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
            if b"siptap" not in argv or not any(MATCH in arg for arg in argv):
                continue
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue  # gone meanwhile
        role = "mirror" if b"mirror" in argv else ("worker" if b"--worker" in argv else "supervisor")
        out[pid] = (role, (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"))
    return out


def main() -> None:
    skip, window = float(sys.argv[1]), float(sys.argv[2])
    while not any(role == "mirror" for role, _ in snapshot().values()):
        time.sleep(0.5)
    time.sleep(skip)
    before, started = snapshot(), time.monotonic()
    time.sleep(window)
    after, elapsed = snapshot(), time.monotonic() - started
    for pid, (role, cpu) in sorted(after.items(), key=lambda item: item[1][0]):
        if pid in before:
            print(f"{role:10s} pid {pid}: {cpu - before[pid][1]:.2f} s CPU in {elapsed:.1f} s")


if __name__ == "__main__":
    main()

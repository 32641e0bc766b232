"""CPU of each siptap process (supervisor, mirror, relay workers) over a window, from /proc;
with ``--peers``, also of the chain's other programs (SIPp, stunnel, Kamailio, SSLsplit).

Run it beside a benchmark that starts ``siptap run`` (e.g. ``bench/run.py --middles
siptap-sinks-on --scenarios S3``): it waits for the mirror process to appear (with ``--peers``:
for SIPp, so that middles without a mirror work too), skips ``SKIP`` seconds (the chain's start
and warm-up), then samples utime+stime of every process whose command line names siptap over
``WINDOW`` seconds and prints each one's share. Divide by the messages relayed in the window
(S3: 700 per second) for µs per message per process.

``--peers`` answers "how much of the 2-core machine is left for the middle at this rate": the
chain's fixed parts (two SIPp, the customer and core stunnels) run on the same cores
(bench/RESULTS.md, session 8: the S1 budget).

    python3 bench/process_cpu.py SKIP WINDOW [MATCH] [--peers]

``MATCH`` (default ``/tmp/siptap-bench``, the folder ``run.py`` puts the configs in) must occur in
a siptap process's command line: other siptap processes on the machine (a test suite's) are not
counted. Peers are matched by program name (any on the machine: run nothing else like them).
"""

from __future__ import annotations

import os
import sys
import time

PEERS = ("sipp", "stunnel4", "stunnel", "kamailio", "sslsplit")


def snapshot(match: bytes, peers: bool) -> dict[str, tuple[str, float]]:
    """pid -> (role, CPU seconds) for every live process running siptap (and the peers)."""
    out: dict[str, tuple[str, float]] = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
            with open(f"/proc/{pid}/comm") as f:
                comm = f.read().strip()
            if peers and comm in PEERS:
                role = comm
            elif b"siptap" in argv and any(match in arg for arg in argv):
                role = "mirror" if b"mirror" in argv else ("worker" if b"--worker" in argv else "supervisor")
            else:
                continue
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue  # gone meanwhile
        out[pid] = (role, (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"))
    return out


def main() -> None:
    peers = "--peers" in sys.argv
    args = [arg for arg in sys.argv[1:] if arg != "--peers"]
    skip, window = float(args[0]), float(args[1])
    match = args[2].encode() if len(args) > 2 else b"/tmp/siptap-bench"
    started_by = "sipp" if peers else "mirror"
    while not any(role == started_by for role, _ in snapshot(match, peers).values()):
        time.sleep(0.5)
    time.sleep(skip)
    before, started = snapshot(match, peers), time.monotonic()
    time.sleep(window)
    after, elapsed = snapshot(match, peers), time.monotonic() - started
    totals: dict[str, float] = {}
    for pid, (role, cpu) in sorted(after.items(), key=lambda item: item[1][0]):
        if pid in before:
            print(f"{role:10s} pid {pid}: {cpu - before[pid][1]:.2f} s CPU in {elapsed:.1f} s")
            totals[role] = totals.get(role, 0.0) + cpu - before[pid][1]
    if peers:
        for role, cpu in sorted(totals.items()):
            print(f"{role:10s} all: {cpu:.2f} s = {cpu / elapsed * 100:.1f} % of a core")
        print(f"everything: {sum(totals.values()) / elapsed * 100:.1f} % of a core (the machine has "
              f"{os.cpu_count()}); load average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()

"""Where S4's memory per idle proxied connection goes (issue 16, session 7).

The same chain and idle client as ``run.py`` S4 (``chain.chain``, ``chain.open_idle_connections``),
but reported per process of the middle and, for siptap's relay worker, split by allocator
through the ``memprobe`` sitecustomize (SIGUSR1 report): glibc's heap (``mallinfo2``
uordblks: OpenSSL's C objects, and Python objects over 512 bytes), pymalloc's blocks (Python's
small objects), tracemalloc's traced total (every Python allocation, ``--trace``), the
collector's object count. Steps of ``--step`` connections up to ``--max``, so the slope is per
connection, not per first connection (lazy caches, arena growth).

    .venv/bin/python bench/idle_memory.py --middle siptap-sinks-on [--step 500 --max 1000] [--trace]
    PYTHONPATH=/work/base-x/proxy .venv/bin/python bench/idle_memory.py ...   # another checkout

Prints one JSON line per step and a table; ``--json FILE`` keeps everything.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench import chain as c

PROBE = Path(__file__).resolve().parent / "memprobe"


def roles(pid: int) -> dict[int, str]:
    out = {}
    for member in c.process_tree(pid):
        try:
            argv = Path(f"/proc/{member}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        # Whole arguments: the worker's own command line has "--mirror-channel".
        out[member] = "mirror" if b"mirror" in argv else ("worker" if b"--worker" in argv else "main")
    return out


def rollup(pid: int) -> dict[str, int]:
    text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    out = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key in ("Pss", "Anonymous", "Rss"):
            out[key] = int(value.split()[0])
    return out


async def probe_report(out: Path, pid: int) -> dict:
    path = out / "report.jsonl"
    before = path.read_text().count("\n") if path.exists() else 0
    os.kill(pid, signal.SIGUSR1)
    with trio.fail_after(300):  # tracemalloc snapshots of 1000s of connections take a while
        while not path.exists() or path.read_text().count("\n") <= before:
            await trio.sleep(0.2)
    return json.loads(path.read_text().splitlines()[-1])


async def sample(out: Path | None, mid_pid: int) -> dict:
    await c.settle_pss(mid_pid)
    result: dict = {"processes": {}}
    for pid, role in roles(mid_pid).items():
        entry: dict = {"role": role, **rollup(pid)}
        if out is not None and role in ("worker", "mirror"):
            report = await probe_report(out, pid)
            entry["uordblks_kib"] = report["mallinfo2"]["uordblks"] / 1024
            entry["arena_kib"] = report["mallinfo2"]["arena"] / 1024
            entry["hblkhd_kib"] = report["mallinfo2"]["hblkhd"] / 1024
            entry["pymalloc_allocated_kib"] = report.get("pymalloc", {}).get("allocated", 0) / 1024
            entry["gc_objects"] = report["gc_objects"]
            if "traced" in report:
                entry["traced_kib"] = report["traced"]["current"] / 1024
                entry["grown"] = report.get("grown", [])
        result["processes"][f"{role}-{pid}"] = entry
    return result


async def main(args: argparse.Namespace) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="siptap-idle-"))
    pki = c.make_pki(tmp)
    out: Path | None = None
    if args.middle.startswith("siptap"):
        out = tmp / "probe"
        out.mkdir()
        os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PROBE), os.environ.get("PYTHONPATH")]))
        os.environ["SIPTAP_MEMPROBE"] = str(out)
        os.environ["SIPTAP_MEMPROBE_MIRROR"] = "1"
        if args.trace:
            os.environ["SIPTAP_MEMPROBE_TRACE"] = "1"
    steps = []
    async with c.chain(tmp, pki, args.middle, legs="customer", siptap_log_level="info") as ch:
        mid = ch.middle
        warm = await c.open_idle_connections(mid.port, pki, 10)
        await c.wait_until(lambda: c.tcp_established(remote_port=ch.core_port) >= 10, 30, "warm-up upstream")
        await c.close_connections(warm)
        await c.wait_until(lambda: c.tcp_established(local_port=mid.port) == 0
                           and c.tcp_established(remote_port=ch.core_port) == 0, 30, "warm-up closed")
        steps.append({"connections": 0, **await sample(out, mid.pid)})
        held: list = []
        try:
            while len(held) < args.max:
                held += await c.open_idle_connections(mid.port, pki, args.step)
                n = len(held)
                await c.wait_until(lambda n=n: c.tcp_established(local_port=mid.port) >= n, 60, "customer legs")
                await c.wait_until(lambda n=n: c.tcp_established(remote_port=ch.core_port) >= n, 120, "core legs")
                steps.append({"connections": n, "time": time.time(), **await sample(out, mid.pid)})
                print(json.dumps(steps[-1], default=str)[:2000], flush=True)
        finally:
            await c.close_connections(held)
    report(steps)
    if args.json:
        Path(args.json).write_text(json.dumps({"middle": args.middle, "argv": sys.argv, "steps": steps}, indent=1))


def report(steps: list[dict]) -> None:
    first = steps[0]
    for step in steps[1:]:
        n = step["connections"] - first["connections"]
        print(f"\n== {n} connections: KiB per connection (delta from 0)")
        for name, entry in step["processes"].items():
            base = first["processes"].get(name)
            if base is None:
                continue
            parts = [f"{key} {(entry[key] - base[key]) / n:.2f}" for key in
                     ("Pss", "Anonymous", "uordblks_kib", "arena_kib", "hblkhd_kib", "pymalloc_allocated_kib",
                      "traced_kib") if key in entry and key in base]
            if "gc_objects" in entry:
                parts.append(f"gc objects {(entry['gc_objects'] - base['gc_objects']) / n:.1f}")
            print(f"  {name}: " + ", ".join(parts))
            for g in entry.get("grown", [])[:60]:
                print(f"    {g['size_diff'] / n:8.0f} B/conn {g['count_diff'] / n:6.2f} blocks/conn  {g['where'][-1]}")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--middle", default="siptap-sinks-on")
    p.add_argument("--step", type=int, default=500)
    p.add_argument("--max", type=int, default=1000)
    p.add_argument("--trace", action="store_true")
    p.add_argument("--json")
    trio.run(main, p.parse_args())

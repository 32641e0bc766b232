"""Issue 16, session 7: the relay pump's per-chunk bookkeeping, before and after, in one process.

Before (85804f0): two ``time.perf_counter()``, a prometheus-client Histogram child's
``observe``, a Counter child's ``inc`` and ``trio.current_time()`` per chunk. After: two
``perf_counter()`` and :meth:`siptap.metrics.DirectionTally.relayed` (plain numbers), and no
trio clock read without an idle timeout. Timed inside ``trio.run`` (current_time needs a
run), interleaved rounds, best and median of each. ``--multiprocess`` runs the same in a child
process with ``PROMETHEUS_MULTIPROC_DIR`` set (a worker under the supervisor: the "before"
then writes the mmap per chunk).

    python bench/chunk_metrics_timeit.py [--rounds 7] [--chunks 200000] [--multiprocess]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "proxy"))


def measure(rounds: int, chunks: int) -> dict[str, list[float]]:
    import trio
    from prometheus_client import CollectorRegistry, Counter, Histogram

    from siptap.metrics import LATENCY_BUCKETS, RelayCounts

    registry = CollectorRegistry()
    byte_counter = Counter("b", "b", ["route", "direction"], registry=registry).labels("lab", "customer->core")
    latency = Histogram("l", "l", ["route", "direction"], buckets=LATENCY_BUCKETS,
                        registry=registry).labels("lab", "customer->core")
    tally = RelayCounts().for_direction("lab", "customer->core")
    size = 930
    perf_counter, current_time = time.perf_counter, trio.current_time

    def before() -> None:
        for _ in range(chunks):
            arrived = perf_counter()
            latency.observe(perf_counter() - arrived)
            byte_counter.inc(size)
            current_time()

    def after() -> None:
        track_idle = False
        for _ in range(chunks):
            arrived = perf_counter()
            tally.relayed(size, perf_counter() - arrived)
            if track_idle:
                current_time()

    def bare() -> None:  # the loop and the two clock reads both versions keep
        for _ in range(chunks):
            arrived = perf_counter()
            perf_counter() - arrived

    results: dict[str, list[float]] = {"bare": [], "before": [], "after": []}

    async def main() -> None:
        for _ in range(rounds):
            for name, fn in (("bare", bare), ("before", before), ("after", after)):
                start = time.process_time()
                fn()
                results[name].append((time.process_time() - start) / chunks * 1e6)

    trio.run(main)
    return results


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--chunks", type=int, default=200_000)
    p.add_argument("--multiprocess", action="store_true")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.multiprocess and not args.child:
        with tempfile.TemporaryDirectory() as directory:
            env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": directory}
            subprocess.run([sys.executable, __file__, "--child", "--rounds", str(args.rounds),
                            "--chunks", str(args.chunks)], env=env, check=True)
        return
    results = measure(args.rounds, args.chunks)
    mode = "multiprocess (mmap)" if args.child else "single process"
    print(f"{mode}: µs per chunk, {args.rounds} interleaved rounds of {args.chunks} chunks")
    for name, values in results.items():
        print(f"  {name:6s} median {statistics.median(values):.3f}  best {min(values):.3f}  "
              f"all {' '.join(f'{v:.3f}' for v in values)}")
    extra = {name: statistics.median(results[name]) - statistics.median(results["bare"]) for name in ("before", "after")}
    print(f"  bookkeeping over the bare loop (medians): before {extra['before']:.3f}, after {extra['after']:.3f}")


if __name__ == "__main__":
    main()

"""Issue 13 item 6: what a relay worker's memory does after a connection flood.

`siptap run` (supervisor, mirror, one worker) in front of the lab core; the worker's
RLIMIT_NOFILE is lowered to ``--nofile`` (prlimit on its pid) and ``--connections`` customers
connect at once, each completing a mutual-TLS handshake, one OPTIONS transaction and a
close; most wait in the accept queue while the worker is out of descriptors. After each flood
the script waits until the worker's descriptor count is back to its baseline (every
connection closed: a condition, not a sleep), then asks the worker for a memory report
(``bench/memprobe/sitecustomize.py``, loaded through PYTHONPATH: SIGUSR1 = report, SIGUSR2 =
``malloc_trim(0)`` then report). ``--trace`` adds tracemalloc from the baseline report on
(slower; the RSS figures of a traced run are not the untraced ones).

    .venv/bin/python bench/flood_memory.py [--connections 300] [--nofile 128] [--rounds 3] [--trace]

Prints one line per report and writes them (JSON lines) and glibc's malloc_info XML per report
into ``--out`` (a temporary folder by default).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import sys
import tempfile
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))
from chain import make_pki, process_tree, raise_nofile

from siptap.tools.lab.core import LabCore, core_context
from siptap.tools.lab.customer import CustomerSession, customer_context
from tests.relay.harness import SiptapProcess, write_config

PROBE = Path(__file__).resolve().parent / "memprobe"


def worker_pid(root: int) -> int:
    for pid in process_tree(root):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"--worker" in argv:
            return pid
    raise RuntimeError("no relay worker under the supervisor")


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


async def wait_for(predicate, what: str, timeout: float = 120.0) -> None:  # type: ignore[no-untyped-def]  # a bench helper
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.05)  # polling /proc: there is no event to wait on from outside
    _ = what


class Probe:
    def __init__(self, out: Path, pid: int) -> None:
        self.file = out / "report.jsonl"
        self.pid = pid
        self.reports: list[dict] = []

    def _lines(self) -> int:
        return len(self.file.read_text().splitlines()) if self.file.exists() else 0

    async def report(self, label: str, *, trim: bool = False) -> dict:
        before = self._lines()
        os.kill(self.pid, signal.SIGUSR2 if trim else signal.SIGUSR1)
        await wait_for(lambda: self._lines() > before, "a memory report", timeout=60)
        entry = json.loads(self.file.read_text().splitlines()[-1])
        entry["label"] = f"{label}{' + malloc_trim(0)' if trim else ''}"
        self.reports.append(entry)
        mi = entry["mallinfo2"]
        traced = entry.get("traced", {}).get("current")
        print(f"{entry['label']:<34} RSS {entry['VmRSS'] / 1024:6.1f} MiB  anon {entry['RssAnon'] / 1024:6.1f}  "
              f"heap(main arena) {mi['arena'] / 2**20:6.1f} MiB in use {mi['uordblks'] / 2**20:6.1f} free "
              f"{mi['fordblks'] / 2**20:6.1f} top-pad {mi['keepcost'] / 2**20:5.2f} mmap {mi['hblkhd'] / 2**20:5.1f}  "
              f"pymalloc {entry['pymalloc'].get('total', 0) / 2**20:5.1f} MiB (live "
              f"{entry['pymalloc'].get('allocated', 0) / 2**20:4.1f}, arenas "
              f"{entry['pymalloc'].get('arenas_current', 0)})  gc objects {entry['gc_objects']}"
              + (f"  traced {traced / 2**20:.1f} MiB" if traced else ""),
              flush=True)
        if "malloc_trim" in entry:
            print(f"    malloc_trim(0) took {entry['malloc_trim']['seconds'] * 1e3:.2f} ms "
                  f"(returned {entry['malloc_trim']['released']})")
        for grown in entry.get("grown", [])[:8]:
            print(f"    {grown['size_diff'] / 1024:+9.1f} KiB {grown['count_diff']:+6d}  {' <- '.join(grown['where'][::-1][:3])}")
        return entry


async def customer(pki: Path, port: int, results: dict[str, int]) -> None:
    try:
        with trio.fail_after(120):
            session = await CustomerSession.connect("127.0.0.1", port, customer_context(pki))
            try:
                ok = (await session.options()).status_code == 200
            finally:
                await session.aclose()
        results["ok" if ok else "failed"] += 1
    except Exception as exc:  # a bench counts failures, whatever they are
        results["failed"] += 1
        results.setdefault(type(exc).__name__, 0)
        results[type(exc).__name__] += 1


async def main(args: argparse.Namespace) -> None:
    raise_nofile(4096)  # the flooding customers need a descriptor each
    tmp = Path(tempfile.mkdtemp(prefix="siptap-flood-"))
    out = Path(args.out) if args.out else tmp / "probe"
    out.mkdir(parents=True, exist_ok=True)
    pki = make_pki(tmp).dir
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PROBE), os.environ.get("PYTHONPATH")]))
    os.environ["SIPTAP_MEMPROBE"] = str(out)
    if args.trace:
        os.environ["SIPTAP_MEMPROBE_TRACE"] = "1"
    print(f"output in {out}", flush=True)
    async with trio.open_nursery() as nursery:
        core = LabCore(core_context(pki))
        core_port = await nursery.start(core.serve)
        config = write_config(tmp, pki, cores=[core_port], log=f'level = "{args.log_level}"')
        config.write_text(config.read_text().replace('level = "debug"\n', "", 1))
        siptap = SiptapProcess(config)
        await siptap.start(nursery)
        port = int((await siptap.wait_for("listener_up", leg="customer", timeout=300))[0]["port"])
        assert siptap.process is not None
        pid = worker_pid(siptap.process.pid)
        probe = Probe(out, pid)
        for _ in range(args.warmup):
            await customer(pki, port, {"ok": 0, "failed": 0})
        idle_fds = fd_count(pid)
        await wait_for(lambda: fd_count(pid) <= idle_fds, "warm-up closed")
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (args.nofile, args.nofile))
        await probe.report("baseline (after warm-up)")
        seen = len(siptap.events)
        for round_ in range(1, args.rounds + 1):
            results = {"ok": 0, "failed": 0}
            async with trio.open_nursery() as flood:
                for _ in range(args.connections):
                    flood.start_soon(customer, pki, port, results)
            await wait_for(lambda: fd_count(pid) <= idle_fds, "every flood connection closed")
            print(f"flood {round_}: {results}; worker stderr so far {len(siptap.stderr)} bytes", flush=True)
            why: dict[str, int] = {}
            for event in siptap.events[seen:]:
                if event.get("event") in ("handshake_failed", "no_upstream", "upstream_failed", "connection_refused"):
                    key = f"{event['event']}:{event.get('reason', '')}"
                    why[key] = why.get(key, 0) + 1
            seen = len(siptap.events)
            print(f"    worker log: {why}", flush=True)
            await probe.report(f"after flood {round_}")
            if round_ == args.trim_after:
                await probe.report(f"after flood {round_}", trim=True)
        await probe.report("end", trim=True)
        await siptap.stop()
        nursery.cancel_scope.cancel()
    (out / "summary.json").write_text(json.dumps(probe.reports, indent=1))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=300)
    parser.add_argument("--nofile", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--trim-after", type=int, default=0, help="also trim (and report) after this flood")
    parser.add_argument("--trace", action="store_true", help="tracemalloc in the worker")
    parser.add_argument("--log-level", default="info")
    parser.add_argument("--out")
    trio.run(main, parser.parse_args())

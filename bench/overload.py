"""Mirror overload under trunk load (issue 16, "Mirror overload"): SIGSTOP, then SIGKILL, the
mirror process while SIPp drives the S1 trunk through siptap, and see what the relay does.

    .venv/bin/python bench/overload.py                      # S1 load (-r 20000 -l 100), 10 s windows
    .venv/bin/python bench/overload.py --rate 800 --limit 2000 --run-id half

The chain is bench/run.py's (sipp UAC -> stunnel -> siptap, all sinks -> stunnel -> sipp UAS, one
TCP/TLS connection). After the first successful call and ``--warmup`` seconds, four consecutive
windows of ``--window`` seconds each, between SIPp's per-second statistics rows:

1. ``before``: undisturbed;
2. ``stopped``: the mirror process is SIGSTOPped at the window's first row and SIGCONTinued at its
   last: the relay must go on relaying (the target: calls/s >= 0.9x ``before``, 0 failed calls),
   counting what it could not hand over;
3. ``after``: the mirror drains its channel backlog and reports the gap;
4. ``killed``: the mirror is SIGKILLed at the window's first row; the supervisor restarts it.

Reported per window: calls/s, failed calls, the sinks' datagrams per call, and from siptap's log
the relay's ``mirror_channel_dropped`` records/bytes, the mirror's ``gap`` events and the
supervisor's ``mirror_died``/``mirror_restarted``. Writes OUT/overload-<date>[-<run-id>].md and .json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import signal
import sys
import tempfile
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import chain as c

KIND = "siptap-sinks-on"
MESSAGES_PER_CALL = 7


def mirror_pid(supervisor: int) -> int | None:
    """The mirror child of the supervisor, by its command line (``siptap mirror ...``)."""
    for pid in c.process_tree(supervisor):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if b"mirror" in argv:
            return pid
    return None


def log_events(log: Path) -> list[dict[str, Any]]:
    """siptap's JSON log lines (the supervisor forwards its children's lines to the same file)."""
    events = []
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            try:
                events.append(json.loads(line))
            except ValueError:
                continue
    return events


def summarise_log(events: list[dict[str, Any]]) -> dict[str, Any]:
    dropped = [e for e in events if e.get("event") == "mirror_channel_dropped"]
    gaps = [e for e in events if e.get("event") == "gap"]
    return {
        "channel_dropped_lines": len(dropped),
        "channel_dropped_records": max((e.get("records_total", 0) for e in dropped), default=0),
        "channel_dropped_bytes": max((e.get("bytes_total", 0) for e in dropped), default=0),
        "gap_events": len(gaps),
        "gap_missing_bytes": sum(e.get("missing", 0) or 0 for e in gaps),
        "gap_causes": sorted({str(e.get("cause")) for e in gaps}),
        "mirror_died": sum(1 for e in events if e.get("event") == "mirror_died"),
        "mirror_restarted": sum(1 for e in events if e.get("event") == "mirror_restarted"),
    }


async def window(uac: c.SippUac, mid: c.Middle, seconds: float, *, at_start=None, at_end=None) -> dict[str, Any]:
    """One window between two statistics rows; ``at_start``/``at_end`` run right after the first
    row and right after the last one was seen."""
    start = await uac.next_row()
    sinks_start = mid.sinks()
    if at_start is not None:
        at_start()
    while True:
        end = await uac.next_row(timeout=30)
        if end.time - start.time >= seconds - 0.05:
            break
    if at_end is not None:
        at_end()
    w = c.Window(start, end, sinks_start, mid.sinks())
    calls = w.successful
    sinks = w.sink_delta()
    return {
        "seconds": round(w.seconds, 3),
        "calls": calls,
        "calls_per_s": calls / w.seconds if w.seconds else None,
        "failed": w.failed,
        "datagrams": sinks,
        "datagrams_per_call": {k: (v / calls if calls else None) for k, v in sinks.items()},
    }


async def run(args) -> dict[str, Any]:
    c.raise_nofile()
    tmp = Path(tempfile.mkdtemp(prefix="siptap-bench-"))
    print(f"work folder {tmp}", flush=True)
    try:
        pki = c.make_pki(tmp)
        async with c.chain(tmp, pki, KIND) as ch:
            mid = ch.middle
            assert mid.pid is not None and mid.peer is not None
            uac = c.SippUac(tmp, "sipp-uac-overload", target_port=ch.customer_port, transport="t1",
                            rate=args.rate, limit=args.limit)
            windows: dict[str, Any] = {}
            pids: dict[str, Any] = {}
            try:
                await uac.start()
                # Warm-up exactly as run.py's measure(): the first successful call, then a fixed wait.
                first = await c.measure(uac, mid, warmup=args.warmup, duration=1)
                del first
                pids["mirror_before"] = mirror = mirror_pid(mid.pid)
                if mirror is None:
                    raise RuntimeError(f"no mirror process under {mid.pid}")
                windows["before"] = await window(uac, mid, args.window)
                print("before", windows["before"], flush=True)
                windows["stopped"] = await window(uac, mid, args.window,
                                                  at_start=lambda: os.kill(mirror, signal.SIGSTOP),
                                                  at_end=lambda: os.kill(mirror, signal.SIGCONT))
                print("stopped", windows["stopped"], flush=True)
                windows["after"] = await window(uac, mid, args.window)
                print("after", windows["after"], flush=True)
                windows["killed"] = await window(uac, mid, args.window,
                                                 at_start=lambda: os.kill(mirror, signal.SIGKILL))
                print("killed", windows["killed"], flush=True)
                pids["mirror_after_kill"] = mirror_pid(mid.pid)
            finally:
                await uac.stop()
            log = summarise_log(log_events(mid.peer.log))
        return {"windows": windows, "pids": pids, "log": log}
    finally:
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def render(result: dict[str, Any], args, commit: str) -> str:
    w = result["windows"]
    before = w["before"]["calls_per_s"] or 0
    out = [f"# Mirror overload under trunk load ({dt.date.today()})", "",
           f"`bench/overload.py --rate {args.rate} --limit {args.limit} --window {args.window}`, commit {commit}, "
           f"{platform.node()}, load average at the end {os.getloadavg()[0]:.2f}.", "",
           "| window | calls/s | × before | failed | HEP datagrams/call | JSON-lines datagrams/call |",
           "|---|---|---|---|---|---|"]
    for name in ("before", "stopped", "after", "killed"):
        if name not in w:
            continue
        row = w[name]
        per = row["datagrams_per_call"]
        ratio = (row["calls_per_s"] / before) if before and row["calls_per_s"] is not None else None
        out.append(f"| {name} | {row['calls_per_s']:.1f} | {ratio:.2f}× | {row['failed']} | "
                   f"{(per.get('hep') or 0):.2f} | {(per.get('jsonl') or 0):.2f} |")
    log = result["log"]
    out += ["", f"siptap's log: relay `mirror_channel_dropped` lines {log['channel_dropped_lines']}, "
            f"records dropped {log['channel_dropped_records']:,}, bytes {log['channel_dropped_bytes']:,}; "
            f"mirror `gap` events {log['gap_events']} (missing bytes {log['gap_missing_bytes']:,}, causes "
            f"{', '.join(log['gap_causes']) or '-'}); `mirror_died` {log['mirror_died']}, "
            f"`mirror_restarted` {log['mirror_restarted']}; mirror pid {result['pids'].get('mirror_before')} → "
            f"{result['pids'].get('mirror_after_kill')} after the SIGKILL.", ""]
    stopped = w.get("stopped", {})
    ok = (before and stopped.get("calls_per_s") is not None and stopped["calls_per_s"] >= 0.9 * before
          and all(row["failed"] == 0 for row in w.values()))
    out.append(f"Target (calls/s while stopped ≥ 0.9× before, 0 failed calls in every window): "
               f"{'met' if ok else 'NOT met'}.")
    return "\n".join(out) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rate", type=int, default=20000, help="SIPp -r (S1: the -l limit paces it)")
    p.add_argument("--limit", type=int, default=100, help="SIPp -l")
    p.add_argument("--window", type=float, default=10.0)
    p.add_argument("--warmup", type=float, default=5.0)
    p.add_argument("--out", default=str(Path(__file__).parent / "results"))
    p.add_argument("--run-id", default="")
    p.add_argument("--keep", action="store_true")
    args = p.parse_args()
    result = trio.run(run, args)
    commit = os.popen("git rev-parse --short HEAD").read().strip()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"overload-{dt.date.today()}" + (f"-{args.run_id}" if args.run_id else "")
    (out / f"{stem}.json").write_text(json.dumps({"args": vars(args), "commit": commit, **result}, indent=2))
    text = render(result, args, commit)
    (out / f"{stem}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()

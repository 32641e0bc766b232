"""siptap soak (issue 8, "Soak"): the full chain with middle = siptap-sinks-on for --duration
seconds, a steady trunk plus connection churn at the same time, siptap's RSS and fd count
sampled every --interval seconds. See bench/README.md ("Soak").

    .venv/bin/python bench/soak.py                        # 30 minutes: 50 calls/s trunk + 5 calls/s churn
    .venv/bin/python bench/soak.py --duration 60 --warmup 20 --run-id check   # harness check

    sipp UAC trunk (-t t1, one TCP connection) --+
                                                 +-> stunnel customer -> siptap (all sinks) -> stunnel core -> sipp UAS
    sipp UAC churn (-t tn, one connection/call) -+

Both UACs connect to the same customer stunnel (one TLS connection per TCP connection at every
hop, so the churn UAC costs full handshakes on both siptap legs per call); the UAS (-t t1) accepts
every connection the core stunnel opens. Each UAC is given -m = rate x duration calls, so it stops
by itself; the run ends on both SIPp processes exiting (a real event). The only sleep is the
sampling interval.

Writes OUT/soak-<date>[-<run-id>].md (summary, pass/fail, the curve every minute) and .json (every
sample). The lab PKI, logs, pcap and key files live in a temporary folder (removed unless --keep).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import chain as c

MESSAGES_PER_CALL = 7  # INVITE, 100, 180, 200, ACK, BYE, 200; mirror legs = customer: each mirrored once
KIND = "siptap-sinks-on"


class TypedUdpCounter(c.UdpCounter):
    """chain.UdpCounter that also counts JSON-lines datagrams by their ``"type"`` (sip, connection
    events, ...), so SIP messages can be checked against 7 per call exactly."""

    def __init__(self, magic: bytes = b"") -> None:
        self.types: dict[str, int] = {}
        super().__init__(magic)

    def classify(self, view: memoryview, size: int) -> None:
        types = self.types
        if size >= 6 and view[:4] == b"HEP3":
            name = self._hep_type(view, size)
        elif view[:9] == b'{"type":"':
            end = bytes(view[9:min(size, 64)]).find(b'"')
            name = bytes(view[9:9 + end]).decode("ascii", "replace") if end >= 0 else "?"
        else:
            return
        types[name] = types.get(name, 0) + 1

    @staticmethod
    def _hep_type(view: memoryview, size: int) -> str:
        """HEP3 protocol type chunk (vendor 0, type 0x000b): 1 = sip, 0x64 = log (key material)."""
        offset = 6
        while offset + 6 <= size:
            vendor = int.from_bytes(view[offset:offset + 2], "big")
            kind = int.from_bytes(view[offset + 2:offset + 4], "big")
            length = int.from_bytes(view[offset + 4:offset + 6], "big")
            if length < 6:
                break
            if vendor == 0 and kind == 0x000B and offset + 6 < size:
                proto = view[offset + 6]
                return {1: "sip", 0x64: "log"}.get(proto, f"proto-{proto}")
            offset += length
        return "?"

    def snapshot(self) -> dict[str, Any]:
        snap: dict[str, Any] = super().snapshot()
        if self.types:
            snap["types"] = dict(self.types)
        return snap


# chain.middle() creates its sinks through the module global; use the typed counter for both.
c.UdpCounter = TypedUdpCounter  # type: ignore[misc]


def process_role(pid: int) -> str:
    """supervisor, mirror or worker, from siptap's command line (as bench/process_cpu.py)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
    except OSError:
        return "gone"
    if b"mirror" in argv:
        return "mirror"
    return "worker" if b"--worker" in argv else "supervisor"


def rss_by_role(pids: list[int]) -> dict[str, int]:
    """VmRSS summed by process role: which process a growth is in."""
    out: dict[str, int] = {}
    for pid in pids:
        role = process_role(pid)
        out[role] = out.get(role, 0) + proc_status_kib(pid)
    return out


def proc_status_kib(pid: int, key: str = "VmRSS") -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def fd_count(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


def last_stats(uac: c.SippUac) -> dict[str, int]:
    """Cumulative counters from the UAC's latest complete -trace_stat row."""
    rows = uac._rows()
    if len(rows) < 2:
        return {"successful": 0, "failed": 0, "created": 0, "current": 0}
    values = dict(zip(rows[0], rows[-1]))

    def get(name: str) -> int:
        try:
            return int(values[name])
        except (KeyError, ValueError):
            return 0

    return {"successful": get("SuccessfulCall(C)"), "failed": get("FailedCall(C)"),
            "created": get("TotalCallCreated"), "current": get("CurrentCall")}


def slope_per_min(points: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of (seconds, value) in value units per minute."""
    if len(points) < 2:
        return None
    n = len(points)
    mx = sum(p[0] for p in points) / n
    my = sum(p[1] for p in points) / n
    sxx = sum((p[0] - mx) ** 2 for p in points)
    if not sxx:
        return None
    return sum((p[0] - mx) * (p[1] - my) for p in points) / sxx * 60.0


def _git(*argv: str) -> str:
    try:
        return subprocess.run(["git", *argv], capture_output=True, text=True, cwd=c.ROOT, timeout=10,
                              check=False).stdout.strip()
    except Exception:
        return ""


async def soak(args, tmp: Path, pki: c.Pki) -> dict[str, Any]:
    trunk_calls = int(args.trunk_rate * args.duration)
    churn_calls = int(args.churn_rate * args.duration)
    samples: list[dict[str, Any]] = []
    async with c.chain(tmp, pki, KIND, legs=args.legs, siptap_log_level=args.siptap_log_level) as ch:
        mid = ch.middle
        hep, jsonl = mid.counters["hep"], mid.counters["jsonl"]
        trunk = c.SippUac(tmp, "sipp-uac-trunk", target_port=ch.customer_port, transport="t1",
                          rate=args.trunk_rate, limit=args.trunk_limit)
        churn = c.SippUac(tmp, "sipp-uac-churn", target_port=ch.customer_port, transport="tn",
                          rate=args.churn_rate, limit=args.churn_limit)
        trunk.argv += ["-m", str(trunk_calls)]
        churn.argv += ["-m", str(churn_calls)]
        uacs = {"trunk": trunk, "churn": churn}
        done = trio.Event()
        exits: dict[str, int] = {}
        t0 = time.monotonic()
        started_at = dt.datetime.now().isoformat(timespec="seconds")

        def sample() -> dict[str, Any]:
            pids = c.process_tree(mid.pid)
            stats = {name: last_stats(uac) for name, uac in uacs.items()}
            sinks = mid.sinks()
            return {
                "t_s": round(time.monotonic() - t0, 2),
                "pids": len(pids),
                "rss_kib": sum(proc_status_kib(p) for p in pids),
                "rss_by_role_kib": rss_by_role(pids),
                "fds": sum(fd_count(p) for p in pids),
                "pss_kib": c.pss_kib(mid.pid),
                "cpu_s": round(c.cpu_seconds(mid.pid), 2),
                "customer_conns": c.tcp_established(local_port=mid.port),
                "core_conns": c.tcp_established(remote_port=ch.core_port),
                "trunk": stats["trunk"], "churn": stats["churn"],
                "successful": stats["trunk"]["successful"] + stats["churn"]["successful"],
                "failed": stats["trunk"]["failed"] + stats["churn"]["failed"],
                "hep": sinks["hep"]["matching"], "hep_sip": sinks["hep"].get("types", {}).get("sip", 0),
                "jsonl": sinks["jsonl"]["matching"],
                "jsonl_sip": sinks["jsonl"].get("types", {}).get("sip", 0),
                "sink_drops": {k: v["sink_drops"] for k, v in sinks.items()},
            }

        async def run_uac(name: str, uac: c.SippUac) -> None:
            await uac.start()
            exits[name] = await uac.process.wait()
            print(f"{name} UAC exited {exits[name]} at {time.monotonic() - t0:.0f} s", flush=True)
            if len(exits) == len(uacs):
                done.set()

        samples.append(sample())
        try:
            async with trio.open_nursery() as nursery:
                for name, uac in uacs.items():
                    nursery.start_soon(run_uac, name, uac)
                while not done.is_set():
                    with trio.move_on_after(args.interval):  # the sampling interval (ends early on both exits)
                        await done.wait()
                    s = sample()
                    samples.append(s)
                    print(f"t={s['t_s']:7.1f}s ok={s['successful']} failed={s['failed']} rss={s['rss_kib']} KiB "
                          f"fds={s['fds']} conns={s['customer_conns']}/{s['core_conns']} hep_sip={s['hep_sip']} "
                          f"jsonl_sip={s['jsonl_sip']}", flush=True)
        finally:
            for uac in uacs.values():
                await uac.stop()
        final_stats = {name: last_stats(uac) for name, uac in uacs.items()}
        successful = sum(s["successful"] for s in final_stats.values())
        expected_sip = successful * MESSAGES_PER_CALL
        # Mirror datagrams still in flight after SIPp's last BYE/200: wait for the counts (a real
        # condition, bounded); on timeout the shortfall is reported as loss.
        drained = True
        try:
            await c.wait_until(lambda: hep.types.get("sip", 0) >= expected_sip and jsonl.types.get("sip", 0) >= expected_sip,
                               args.drain_timeout, "mirror sinks to reach 7 x successful calls")
        except TimeoutError:
            drained = False
        # Connections close: wait until siptap holds no customer/core connection (bounded).
        with_conns_closed = True
        try:
            await c.wait_until(lambda: c.tcp_established(local_port=mid.port) == 0
                               and c.tcp_established(remote_port=ch.core_port) == 0, 30, "connections to close")
        except TimeoutError:
            with_conns_closed = False
        after = sample()
        after["phase"] = "after both UACs exited and connections closed"
        sinks = mid.sinks()
        files = {}
        workdir = tmp / KIND
        for name in ("keys.log", "srtp.log", "pcap", f"{KIND}.log"):
            path = workdir / name
            if path.is_dir():
                files[name] = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
            elif path.exists():
                files[name] = path.stat().st_size
        return {
            "started_at": started_at, "samples": samples, "after": after, "exits": exits,
            "final_stats": final_stats, "expected_calls": {"trunk": trunk_calls, "churn": churn_calls},
            "sinks_final": sinks, "expected_sip_datagrams": expected_sip, "drained": drained,
            "connections_closed": with_conns_closed, "files_bytes": files, "notes": mid.notes,
            "uac_errors": {name: uac.describe()[-3000:] for name, uac in uacs.items() if exits.get(name)},
        }


def analyse(args, run: dict[str, Any]) -> dict[str, Any]:
    samples = run["samples"]
    steady = [s for s in samples if s["t_s"] >= args.warmup]
    base = steady[0] if steady else samples[-1]
    # "end" for RSS/fd = the last sample taken while both UACs were still running (the final
    # sample is taken at exit, when load has stopped); the post-exit figure is reported too.
    running = [s for s in steady if s["trunk"]["current"] or s["churn"]["current"]] or steady or samples
    end_running = running[-1]
    rss_points = [(s["t_s"], s["rss_kib"]) for s in running]
    fd_points = [(s["t_s"], s["fds"]) for s in running]
    rss_slope = slope_per_min(rss_points)
    fd_slope = slope_per_min(fd_points)
    half = running[len(running) // 2:]
    rss_slope_2nd = slope_per_min([(s["t_s"], s["rss_kib"]) for s in half])
    fs = run["final_stats"]
    successful = sum(v["successful"] for v in fs.values())
    failed = sum(v["failed"] for v in fs.values())
    expected_calls = sum(run["expected_calls"].values())
    sinks = run["sinks_final"]
    expected = run["expected_sip_datagrams"]
    hep = sinks["hep"].get("types", {}).get("sip", 0)
    jsonl_sip = sinks["jsonl"].get("types", {}).get("sip", 0)
    drops = {k: v["sink_drops"] for k, v in sinks.items()}
    rss_growth = end_running["rss_kib"] - base["rss_kib"]
    fd_growth = end_running["fds"] - base["fds"]
    rss_max = max(s["rss_kib"] for s in running)
    fd_max = max(s["fds"] for s in running)
    minutes = max((end_running["t_s"] - base["t_s"]) / 60.0, 1e-9)
    # Flat: growth over the steady window within 5 % of the start (2 MiB floor for short runs) and a
    # second-half slope under 1 % of the start RSS per 10 minutes; fds back within 8 of the start
    # (a few churn connections may be in flight at any sample) and no upward trend.
    rss_flat = (rss_growth <= max(0.05 * base["rss_kib"], 2048)
                and (rss_slope_2nd is None or rss_slope_2nd <= 0.001 * base["rss_kib"]))
    fd_flat = fd_growth <= 8 and (fd_slope is None or fd_slope * minutes <= 8)
    criteria = [
        ("zero failed calls", failed == 0 and successful == expected_calls and not any(run["exits"].values()),
         f"{successful:,} successful of {expected_calls:,} scheduled, {failed} failed; SIPp exit codes {run['exits']}"),
        ("RSS flat", rss_flat,
         f"{base['rss_kib'] / 1024:.1f} MiB at {base['t_s']:.0f} s -> {end_running['rss_kib'] / 1024:.1f} MiB at "
         f"{end_running['t_s']:.0f} s ({rss_growth:+,} KiB), max {rss_max / 1024:.1f} MiB; slope "
         f"{rss_slope if rss_slope is not None else float('nan'):+.1f} KiB/min (2nd half "
         f"{rss_slope_2nd if rss_slope_2nd is not None else float('nan'):+.1f} KiB/min)"),
        ("fd count flat", fd_flat,
         f"{base['fds']} -> {end_running['fds']} ({fd_growth:+}), max {fd_max}; after exit {run['after']['fds']}"),
        ("no mirror loss (collector up)", hep == expected and jsonl_sip == expected and not any(drops.values()),
         f"expected {expected:,} (7 x {successful:,}); HEP sip {hep:,}, JSON-lines sip {jsonl_sip:,}; "
         f"sink kernel drops {drops}"),
    ]
    return {
        "successful": successful, "failed": failed, "expected_calls": expected_calls,
        "base": base, "end_running": end_running, "rss_slope_kib_per_min": rss_slope,
        "rss_slope_2nd_half_kib_per_min": rss_slope_2nd, "fd_slope_per_min": fd_slope,
        "rss_max_kib": rss_max, "fd_max": fd_max, "hep": hep, "jsonl_sip": jsonl_sip,
        "jsonl_types": sinks["jsonl"].get("types", {}),
        "hep_types": sinks["hep"].get("types", {}), "sink_drops": drops,
        "criteria": [{"name": n, "pass": bool(p), "detail": d} for n, p, d in criteria],
        "pass": all(p for _, p, _ in criteria),
    }


def render(meta: dict[str, Any], run: dict[str, Any], a: dict[str, Any]) -> str:
    fs = run["final_stats"]
    out = [f"# siptap soak — {meta['date']}", ""]
    out += [
        f"`{meta['command']}`", "",
        f"siptap commit `{meta['git_commit']}`" + (
            " — **the working tree had uncommitted changes in proxy/ (another engineer's work in progress) when "
            "this ran; the code measured is that tree, not exactly the commit**: "
            + ", ".join(f"`{p}`" for p in meta["dirty_files"]) if meta["dirty_files"] else " (clean tree)") + ".",
        f"Machine: {meta['cpus']} CPUs, {meta['platform']}, python {meta['python']}.", "",
        f"Chain: SIPp UAC ×2 → stunnel customer (TLS 1.2, kRSA) → **siptap** (`{KIND}`: HEP/UDP and JSON-lines/UDP "
        f"to counting sinks, key log, pcap, SRTP keys; legs = {meta['legs']}; log level {meta['siptap_log_level']} to "
        "a file) → stunnel core (mutual TLS) → SIPp UAS. "
        f"Trunk: `-t t1 -r {meta['trunk_rate']} -l {meta['trunk_limit']} -m {run['expected_calls']['trunk']}` "
        f"(one TCP/TLS connection). Churn: `-t tn -r {meta['churn_rate']} -l {meta['churn_limit']} "
        f"-m {run['expected_calls']['churn']}` (one new TCP connection, hence one new TLS connection on both siptap "
        f"legs, per call), both at once into the same customer stunnel, for {meta['duration']:.0f} s. "
        f"siptap sampled every {meta['interval']:.0f} s (VmRSS and /proc/PID/fd entries summed over its processes); "
        f"start = first sample after the {meta['warmup']:.0f} s warm-up, end = last sample with calls in flight.", "",
        "## Summary", "",
        "| figure | value |", "|---|---|",
        f"| duration (first UAC start → both exited) | {run['samples'][-1]['t_s']:.0f} s |",
        f"| trunk calls: successful / failed | {fs['trunk']['successful']:,} / {fs['trunk']['failed']:,} |",
        f"| churn calls (= connections): successful / failed | {fs['churn']['successful']:,} / {fs['churn']['failed']:,} |",
        f"| mirror SIP datagrams expected (7 × successful calls) | {run['expected_sip_datagrams']:,} |",
        f"| HEP sink received: sip / all HEP3 by protocol type | {a['hep']:,} / "
        + ", ".join(f"{k} {v:,}" for k, v in sorted(a["hep_types"].items())) + " |",
        f"| JSON-lines sink received: sip / all types | {a['jsonl_sip']:,} / "
        + ", ".join(f"{k} {v:,}" for k, v in sorted(a["jsonl_types"].items())) + " |",
        f"| sink kernel drops (HEP, JSON lines) | {a['sink_drops'].get('hep')}, {a['sink_drops'].get('jsonl')} |",
        f"| RSS start → end (max) | {a['base']['rss_kib'] / 1024:.1f} → {a['end_running']['rss_kib'] / 1024:.1f} MiB "
        f"({a['rss_max_kib'] / 1024:.1f}) |",
        f"| RSS slope (least squares, steady samples) | {_num(a['rss_slope_kib_per_min'])} KiB/min "
        f"(second half {_num(a['rss_slope_2nd_half_kib_per_min'])}) |",
        f"| RSS by process, start → end | {_by_role(a['base'], a['end_running'])} |",
        f"| open fds start → end (max) | {a['base']['fds']} → {a['end_running']['fds']} ({a['fd_max']}) |",
        f"| after both UACs exited | RSS {run['after']['rss_kib'] / 1024:.1f} MiB, {run['after']['fds']} fds, "
        f"{run['after']['customer_conns']}/{run['after']['core_conns']} customer/core connections |",
        f"| siptap CPU over the run | {run['after']['cpu_s']:.0f} s "
        f"({run['after']['cpu_s'] / max(run['samples'][-1]['t_s'], 1) * 100:.0f} % of one core) |",
        "",
        "## Criteria", "", "| criterion | verdict | measured |", "|---|---|---|",
    ]
    for crit in a["criteria"]:
        out.append(f"| {crit['name']} | {'PASS' if crit['pass'] else '**FAIL**'} | {crit['detail']} |")
    out += ["", "Flat means: RSS growth start → end ≤ 5 % of the start (2 MiB floor) and a second-half slope "
            "≤ 0.1 % of the start RSS per minute; fds end ≤ start + 8 (churn connections in flight at a sample "
            "count) with no upward trend. Mirror loss: HEP datagrams and JSON-lines `sip` records must equal "
            "7 × successful calls exactly (legs = customer: each of INVITE, 100, 180, 200, ACK, BYE, 200 mirrored "
            "once), counted after both SIPps exited, once the sinks reached that count (bounded wait) and siptap's connections had "
            "closed; the other types are per-connection "
            "records (HEP protocol type 0x64 `log` = key material; JSON-lines connection events).", ""]
    out += ["## Curve (one sample per minute)", "",
            "| t (s) | calls ok | failed | RSS MiB | PSS MiB | fds | customer/core conns | siptap CPU s | HEP sip | JSON sip |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    last_min = -1
    rows = run["samples"]
    for i, s in enumerate(rows):
        minute = int(s["t_s"] // 60)
        if minute != last_min or i == len(rows) - 1:
            last_min = minute
            out.append(f"| {s['t_s']:.0f} | {s['successful']:,} | {s['failed']} | {s['rss_kib'] / 1024:.1f} | "
                       f"{s['pss_kib'] / 1024:.1f} | {s['fds']} | {s['customer_conns']}/{s['core_conns']} | "
                       f"{s['cpu_s']:.0f} | {s['hep_sip']:,} | {s['jsonl_sip']:,} |")
    out += ["", f"Files written by siptap during the run (bytes): {run['files_bytes']}.", "",
            "Every sample (every "
            f"{meta['interval']:.0f} s): the `.json` file next to this one.", ""]
    if run.get("uac_errors"):
        out += ["## SIPp errors", ""] + [f"```\n{name}: {text}\n```" for name, text in run["uac_errors"].items()]
    return "\n".join(out)


def _by_role(base: dict[str, Any], end: dict[str, Any]) -> str:
    """Each role's RSS at the start and the end (samples of older runs have no breakdown)."""
    start, stop = base.get("rss_by_role_kib"), end.get("rss_by_role_kib")
    if not start or not stop:
        return "not sampled"
    return ", ".join(f"{role} {start.get(role, 0) / 1024:.1f} → {stop.get(role, 0) / 1024:.1f} MiB "
                     f"({stop.get(role, 0) - start.get(role, 0):+,} KiB)" for role in sorted(stop))


def _num(value):
    return "–" if value is None else f"{value:+.1f}"


async def main(args) -> int:
    if args.render:
        doc = json.loads(Path(args.render).read_text())
        Path(args.render).with_suffix(".md").write_text(render(doc["meta"], doc["run"], doc["analysis"]))
        return 0
    nofile = c.raise_nofile()
    tmp = Path(tempfile.mkdtemp(prefix="siptap-soak-"))
    pki = c.make_pki(tmp)
    now = dt.datetime.now()
    status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                            text=True, cwd=c.ROOT, timeout=10, check=False).stdout
    dirty = [line[3:] for line in status.splitlines() if line.strip()]
    meta = {
        "date": now.strftime("%Y-%m-%d %H:%M"), "cpus": len(os.sched_getaffinity(0)),
        "platform": platform.platform(), "python": platform.python_version(),
        "git_commit": _git("rev-parse", "HEAD"), "dirty_files": dirty,
        "command": " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
        "duration": args.duration, "warmup": args.warmup, "interval": args.interval,
        "trunk_rate": args.trunk_rate, "trunk_limit": args.trunk_limit, "churn_rate": args.churn_rate,
        "churn_limit": args.churn_limit, "legs": args.legs, "siptap_log_level": args.siptap_log_level,
        "rlimit_nofile": nofile, "messages_per_call": MESSAGES_PER_CALL, "workdir": str(tmp),
    }
    print(f"work folder {tmp}; commit {meta['git_commit']}; dirty {dirty}", flush=True)
    run = await soak(args, tmp, pki)
    analysis = analyse(args, run)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / (f"soak-{now.strftime('%Y-%m-%d')}" + (f"-{args.run_id}" if args.run_id else ""))
    doc = {"meta": meta, "run": run, "analysis": analysis}
    stem.with_suffix(".json").write_text(json.dumps(doc, indent=1, sort_keys=True, default=str) + "\n")
    stem.with_suffix(".md").write_text(render(meta, run, analysis))
    for crit in analysis["criteria"]:
        print(f"{'PASS' if crit['pass'] else 'FAIL'} {crit['name']}: {crit['detail']}", flush=True)
    print(f"wrote {stem}.md and {stem}.json", flush=True)
    if not args.keep:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0 if analysis["pass"] else 1


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=float, default=1800.0, help="seconds of load (each UAC gets -m rate x duration)")
    p.add_argument("--warmup", type=float, default=60.0, help="RSS/fd 'start' = first sample at or after this")
    p.add_argument("--interval", type=float, default=10.0, help="sampling interval, seconds")
    p.add_argument("--trunk-rate", type=int, default=50, help="trunk UAC calls/s (-t t1)")
    p.add_argument("--trunk-limit", type=int, default=1000, help="trunk UAC concurrent calls (-l)")
    p.add_argument("--churn-rate", type=int, default=5, help="churn UAC calls/s = new connections/s (-t tn)")
    p.add_argument("--churn-limit", type=int, default=200, help="churn UAC concurrent calls (-l)")
    p.add_argument("--legs", default="customer", choices=("customer",),
                   help="siptap mirror legs (7 datagrams per call assumes customer)")
    p.add_argument("--siptap-log-level", default="info")
    p.add_argument("--drain-timeout", type=float, default=20.0, help="max wait for the sinks after SIPp exits")
    p.add_argument("--out", default=str(c.ROOT / "bench" / "results"))
    p.add_argument("--run-id", default="", help="file name suffix")
    p.add_argument("--render", metavar="JSON", help="only re-render the .md next to a soak .json")
    p.add_argument("--keep", action="store_true", help="keep the temporary folder (logs, pcap, PKI)")
    return p.parse_args(argv)


if __name__ == "__main__":
    sys.exit(trio.run(main, parse_args()))

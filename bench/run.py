"""siptap benchmark against the C peers, in one run (issue 7). See bench/README.md.

    .venv/bin/python bench/run.py                       # every middle, S1-S4, 20 s windows
    .venv/bin/python bench/run.py --middles none,stunnel-pair,siptap-sinks-on --scenarios S3 --duration 3

Topology and helpers: bench/chain.py. Writes OUT/<date>-<host>.md (tables, ratios vs the stunnel
pair and Kamailio, the issue's targets) and the raw OUT/<date>-<host>.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import chain as c
from tests.integration.capture import LoopbackCapture

MESSAGES_PER_CALL = 7  # INVITE, 100, 180, 200, ACK, BYE, 200: each crosses the middle once
SCENARIO_NAMES = ("S1", "S2", "S3", "S4")
PAIR, KAM, ON, OFF, TWO = "stunnel-pair", "kamailio", "siptap-sinks-on", "siptap-sinks-off", "siptap-2-workers"
FLOOR = "trio-floor"


# ------------------------------------------------------------------------------------------------
# Scenarios: each starts a fresh chain with the middle and returns a JSON-able dict


def _window_common(window: c.Window, mid: c.Middle) -> dict[str, Any]:
    calls = window.successful
    out: dict[str, Any] = {
        "window_s": round(window.seconds, 3),
        "successful_calls": calls,
        "failed_calls": window.failed,
        "calls_per_s": calls / window.seconds if window.seconds else None,
        "middle_cpu_s": window.cpu,
        "middle_processes": len(c.process_tree(mid.pid)) if mid.pid else 0,
    }
    if window.cpu is not None and calls:
        out["cpu_ms_per_call"] = window.cpu / calls * 1e3
        out["cpu_us_per_msg"] = window.cpu / (calls * MESSAGES_PER_CALL) * 1e6
        out["cpu_util_pct"] = window.cpu / window.seconds * 100
    sinks = window.sink_delta()
    if sinks:
        out["mirror_datagrams"] = sinks
        out["mirror_datagrams_per_call"] = {k: (v / calls if calls else None) for k, v in sinks.items()}
        out["mirror_sink_kernel_drops"] = window.sink_delta("sink_drops")
    return out


async def _sipp_window(args, tmp: Path, pki: c.Pki, kind: str, *, name: str, transport: str, rate: int,
                       limit: int, capture: bool = False) -> dict[str, Any]:
    async with c.chain(tmp, pki, kind, legs=args.legs, siptap_log_level=args.siptap_log_level) as ch:
        mid = ch.middle
        cap = LoopbackCapture(tmp / f"{name}-uac.pcap", [ch.customer_port]) if capture else None
        uac = c.SippUac(tmp, f"sipp-uac-{name}", target_port=ch.customer_port, transport=transport, rate=rate,
                        limit=limit, cpu_probe=mid.cpu)
        try:
            await uac.start()
            window = await c.measure(uac, mid, warmup=args.warmup, duration=args.duration)
        finally:
            await uac.stop()
            if cap is not None:
                cap.stop()
        result = _window_common(window, mid)
        result["sipp"] = {"transport": transport, "rate": rate, "limit": limit}
        result["notes"] = mid.notes
        if capture:
            latencies = c.invite_latencies_ms(tmp / f"{name}-uac.pcap", window.start.time, window.end.time)
            result["latency_samples"] = len(latencies)
            result["invite_200_ms"] = {
                "p50": c.percentile(latencies, 50), "p99": c.percentile(latencies, 99),
                "max": max(latencies) if latencies else None,
            }
        return result


async def scenario_s1(args, tmp, pki, kind):
    return await _sipp_window(args, tmp, pki, kind, name="S1", transport="t1", rate=args.s1_rate, limit=args.s1_limit)


async def scenario_s2(args, tmp, pki, kind):
    result = await _sipp_window(args, tmp, pki, kind, name="S2", transport="tn", rate=args.s2_rate,
                                limit=args.s2_limit)
    result["connections_per_s"] = result["calls_per_s"]  # one TCP (and TLS at every hop) connection per call
    if "cpu_ms_per_call" in result:
        result["cpu_ms_per_connection"] = result["cpu_ms_per_call"]
    return result


async def scenario_s3(args, tmp, pki, kind):
    return await _sipp_window(args, tmp, pki, kind, name="S3", transport="t1", rate=args.s3_rate, limit=10000,
                              capture=True)


async def scenario_s4(args, tmp, pki, kind):
    if kind == "none":
        return {"skipped": "no middle process to measure"}
    n = args.idle
    async with c.chain(tmp, pki, kind, legs=args.legs, siptap_log_level=args.siptap_log_level) as ch:
        mid = ch.middle
        relays = not mid.multiplexes_upstream

        def upstream() -> int:
            return c.tcp_established(remote_port=ch.core_port)

        def downstream() -> int:
            return c.tcp_established(local_port=mid.port)

        # Warm-up: a few connections opened and closed, so lazily loaded code/caches are in "before".
        warm = await c.open_idle_connections(mid.port, pki, 10)
        if relays:
            await c.wait_until(lambda: upstream() >= 10, 30, "10 warm-up upstream connections")
        await c.close_connections(warm)
        await c.wait_until(lambda: downstream() == 0 and (not relays or upstream() == 0), 30,
                           "warm-up connections to close")
        before = await c.settle_pss(mid.pid)
        anon_before = c.pss_kib(mid.pid, "Anonymous")
        started = time.monotonic()
        streams = await c.open_idle_connections(mid.port, pki, n, concurrency=args.idle_concurrency)
        try:
            await c.wait_until(lambda: downstream() >= n, 60, f"{n} customer connections at the middle")
            if relays:
                await c.wait_until(lambda: upstream() >= n, 120, f"{n} upstream connections to the core")
            ready_s = time.monotonic() - started
            after = await c.settle_pss(mid.pid)
            anon_after = c.pss_kib(mid.pid, "Anonymous")
            result = {
                "anon_kib_per_connection": (anon_after - anon_before) / n,
                "connections": n, "downstream_established": downstream(), "upstream_established": upstream(),
                "open_s": round(ready_s, 2), "pss_before_kib": before, "pss_after_kib": after,
                "kib_per_connection": (after - before) / n, "middle_processes": len(c.process_tree(mid.pid)),
                "notes": mid.notes + ([] if relays else [
                    "no upstream connection per customer connection (SIP proxy): the figure is customer legs only"]),
            }
        finally:
            await c.close_connections(streams)
        return result


SCENARIOS = {"S1": scenario_s1, "S2": scenario_s2, "S3": scenario_s3, "S4": scenario_s4}


# ------------------------------------------------------------------------------------------------
# Report


def _get(results, kind, scenario, key):
    value = results["rows"].get(kind, {}).get(scenario, {})
    for part in key.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def _ratio(a, b):
    return a / b if isinstance(a, (int, float)) and isinstance(b, (int, float)) and b else None


def _f(value, digits=1, suffix=""):
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:,.{digits}f}{suffix}"
    return f"{value:,}{suffix}"


def _x(value):
    return "–" if value is None else f"{value:.2f}×"


def _status(results, kind, scenario):
    row = results["rows"].get(kind, {}).get(scenario)
    if row is None:
        return "not run"
    if "error" in row:
        return "ERROR: " + row["error"].splitlines()[0][:160]
    if "skipped" in row:
        return "skipped: " + row["skipped"][:160]
    return None


def render_markdown(results: dict[str, Any]) -> str:
    meta = results["meta"]
    kinds = meta["middles"]
    out = [f"# siptap benchmark — {meta['date']} on {meta['host']}", ""]
    out += [
        f"`{meta['command']}`", "",
        f"Machine: {meta['cpus']} CPUs, {meta['platform']}; python {meta['python']}; siptap commit "
        f"`{meta['git_commit']}`{' (working tree modified)' if meta['git_dirty'] else ''}.",
        f"Windows: {meta['duration']} s after {meta['warmup']} s warm-up; every (middle, scenario) pair starts the "
        "whole chain fresh (SIPp UAS, core stunnel, middle, customer stunnel) with the same lab PKI.",
        f"Ceiling: `openssl speed -seconds 3 rsa2048` = **{_f(results.get('rsa2048_sign_per_s'), 0)} RSA-2048 "
        "private (sign) ops/s**.", "",
        "**This run validates the harness on code that is still changing; the official figures will be "
        "re-measured on the final code.** Absolute numbers on this noisy 2-core machine vary between runs "
        "(up to ~1.5×); compare ratios within one run. Middle CPU = utime+stime of every process of the "
        "middle (threads and children included) from /proc, sampled every 20 ms; each end of "
        "the window takes the sample nearest to the time of SIPp's statistics row that opens/closes it.", "",
    ]

    def rows_for(scenario, render_row, header):
        lines = [header, "|" + "---|" * (header.count("|") - 1)]
        for kind in kinds:
            status = _status(results, kind, scenario)
            if status:
                lines.append(f"| {kind} | {status} |" + " |" * (header.count("|") - 3))
            else:
                lines.append(render_row(kind))
        return lines

    g = lambda k, s, key: _get(results, k, s, key)  # noqa: E731

    if "S1" in meta["scenarios"]:
        out += ["## S1 trunk — one TCP/TLS connection, calls as fast as the chain goes", "",
                f"SIPp `-t t1 -r {meta['s1_rate']} -l {meta['s1_limit']}`; calls/s = successful calls in the window "
                "/ window length. Target: siptap-sinks-on ≥ 2× kamailio.", ""]
        out += rows_for("S1", lambda k: (
            f"| {k} | {_f(g(k,'S1','calls_per_s'))} | {_f(g(k,'S1','failed_calls'))} | "
            f"{_f(g(k,'S1','cpu_ms_per_call'), 3)} | {_f(g(k,'S1','cpu_util_pct'), 0, '%')} | "
            f"{_x(_ratio(g(k,'S1','calls_per_s'), g(PAIR,'S1','calls_per_s')))} | "
            f"{_x(_ratio(g(k,'S1','calls_per_s'), g(KAM,'S1','calls_per_s')))} |"),
            "| middle | calls/s | failed | middle CPU ms/call | middle CPU | calls/s × stunnel-pair | calls/s × kamailio |")
        out.append("")
    if "S2" in meta["scenarios"]:
        out += ["## S2 churn — one TCP connection (so one TLS connection at every hop) per call", "",
                f"SIPp `-t tn -r {meta['s2_rate']} -l {meta['s2_limit']}`. New proxied connections/s = successful "
                "calls/s; CPU per connection = middle CPU in the window / calls (handshakes on both legs plus the "
                "call's 7 messages). Targets: siptap conns/s ≥ 0.9× stunnel-pair, CPU/conn ≤ 1.2× stunnel-pair; "
                "2 workers ≥ 1.7× one worker (siptap-sinks-on).", ""]
        out += rows_for("S2", lambda k: (
            f"| {k} | {_f(g(k,'S2','connections_per_s'))} | {_f(g(k,'S2','failed_calls'))} | "
            f"{_f(g(k,'S2','cpu_ms_per_connection'), 2)} | {_f(g(k,'S2','cpu_util_pct'), 0, '%')} | "
            f"{_x(_ratio(g(k,'S2','connections_per_s'), g(PAIR,'S2','connections_per_s')))} | "
            f"{_x(_ratio(g(k,'S2','cpu_ms_per_connection'), g(PAIR,'S2','cpu_ms_per_connection')))} | "
            f"{_x(_ratio(g(k,'S2','connections_per_s'), g(KAM,'S2','connections_per_s')))} | "
            f"{_x(_ratio(g(k,'S2','cpu_ms_per_connection'), g(KAM,'S2','cpu_ms_per_connection')))} |"),
            "| middle | conns/s | failed | CPU ms/conn | middle CPU | conns/s × pair | CPU/conn × pair | "
            "conns/s × kamailio | CPU/conn × kamailio |")
        out.append("")
    if "S3" in meta["scenarios"]:
        base50, base99 = g("none", "S3", "invite_200_ms.p50"), g("none", "S3", "invite_200_ms.p99")
        out += ["## S3 latency — 100 calls/s on one connection", "",
                f"SIPp `-t t1 -r {meta['s3_rate']}`. INVITE→200 at the UAC from a loopback capture of SIPp ↔ customer "
                "stunnel (first byte of the INVITE to first byte of the 200, µs timestamps; SIPp's own rtd has only "
                "ms resolution). Added = minus the `none` row. CPU µs/msg = middle CPU / (7 × successful calls): "
                "each call's INVITE, 100, 180, 200, ACK, BYE, 200 crosses the middle once (3 toward the core, 4 "
                "toward the customer). Kamailio answers the INVITE with its own 100 and absorbs the UAS's, so it "
                "handles 8 messages per call for the same 7 at the UAC. Targets: siptap-sinks-on CPU/msg ≤ 1.0× "
                "stunnel-pair, added p99 ≤ 1.0 ms, sinks on/off ≤ 1.3×.", ""]
        out += rows_for("S3", lambda k: (
            f"| {k} | {_f(g(k,'S3','successful_calls'))} | {_f(g(k,'S3','failed_calls'))} | "
            f"{_f(g(k,'S3','invite_200_ms.p50'), 3)} | {_f(g(k,'S3','invite_200_ms.p99'), 3)} | "
            f"{_f(_sub(g(k,'S3','invite_200_ms.p50'), base50), 3)} | {_f(_sub(g(k,'S3','invite_200_ms.p99'), base99), 3)} | "
            f"{_f(g(k,'S3','cpu_us_per_msg'))} | "
            f"{_x(_ratio(g(k,'S3','cpu_us_per_msg'), g(PAIR,'S3','cpu_us_per_msg')))} | "
            f"{_x(_ratio(g(k,'S3','cpu_us_per_msg'), g(KAM,'S3','cpu_us_per_msg')))} |"),
            "| middle | calls | failed | p50 ms | p99 ms | added p50 ms | added p99 ms | CPU µs/msg | × pair | × kamailio |")
        out.append("")
    if "S4" in meta["scenarios"]:
        out += ["## S4 idle — idle mutual-TLS connections through the middle", "",
                f"A Python client opens {meta['idle']} TLS 1.2 connections (customer cert, kRSA suites) straight to the "
                "middle and leaves them silent; once the middle holds them all (and, for connection relays, as many "
                "ESTABLISHED upstream sockets toward the core stunnel) and its PSS is stable: "
                "(PSS after − PSS before) / connections, PSS summed over all the middle's processes from "
                "/proc/PID/smaps_rollup. Target: siptap ≤ 64 KiB per connection (both legs). *anon KiB/conn*: the same "
                "from the Anonymous line (private heap and stacks), steadier than PSS, which moves by a few KiB per "
                "connection when other processes map or unmap the same libraries during the run.", ""]
        out += rows_for("S4", lambda k: (
            f"| {k} | {_f(g(k,'S4','connections'))} | {_f(g(k,'S4','upstream_established'))} | "
            f"{_f(_div(g(k,'S4','pss_before_kib'), 1024), 1)} | {_f(_div(g(k,'S4','pss_after_kib'), 1024), 1)} | "
            f"{_f(g(k,'S4','kib_per_connection'))} | {_f(g(k,'S4','anon_kib_per_connection'))} | "
            f"{_x(_ratio(g(k,'S4','kib_per_connection'), g(PAIR,'S4','kib_per_connection')))} | "
            f"{_x(_ratio(g(k,'S4','kib_per_connection'), g(KAM,'S4','kib_per_connection')))} |"),
            "| middle | connections | upstream sockets | PSS before MiB | PSS after MiB | KiB/conn | anon KiB/conn | × pair | × kamailio |")
        out.append("")

    out += ["## Targets (issue 7)", "", "| target | measured | verdict |", "|---|---|---|"]
    for label, value, limit, higher_is_better, fmt in targets(results):
        if value is None:
            verdict = "not measured"
        else:
            verdict = "met" if (value >= limit if higher_is_better else value <= limit) else "NOT met"
        out.append(f"| {label} | {fmt(value) if value is not None else '–'} | {verdict} |")
    out.append("")
    floor, pair = _get(results, FLOOR, "S3", "cpu_us_per_msg"), _get(results, PAIR, "S3", "cpu_us_per_msg")
    on, off = _get(results, ON, "S3", "cpu_us_per_msg"), _get(results, OFF, "S3", "cpu_us_per_msg")
    if all(isinstance(v, (int, float)) for v in (floor, pair, on, off)):
        out += ["Where siptap's S3 CPU per message goes, from this run: the TLS shell alone (`trio-floor`: "
                f"siptap's OpenSSLStream and two bare pumps) {floor:.0f} µs = {floor / pair:.2f}× the stunnel pair's "
                f"{pair:.0f} µs; siptap's observation (framing, header view, log line, metrics) adds "
                f"{off - floor:.0f} µs (sinks off {off:.0f}); the mirror sinks add {on - off:.0f} µs (sinks on "
                f"{on:.0f}). No change above the shell can take siptap below the `trio-floor` row.", ""]

    out += ["## Middles", ""]
    for kind in kinds:
        notes = set()
        for scenario in meta["scenarios"]:
            row = results["rows"].get(kind, {}).get(scenario, {})
            notes.update(row.get("notes", []))
        status = [f"{s}: {_status(results, kind, s)}" for s in meta["scenarios"] if _status(results, kind, s)]
        out.append(f"- **{kind}**: " + "; ".join(sorted(notes) + status))
    mirror = [(k, s, _get(results, k, s, "mirror_datagrams_per_call"), _get(results, k, s, "mirror_sink_kernel_drops"))
              for k in kinds for s in ("S1", "S2", "S3")]
    mirror = [m for m in mirror if m[2]]
    if mirror:
        out += ["", "Mirror datagrams received by the counting UDP sinks per successful call in the window "
                "(siptap legs=customer: 7 expected, plus connection events in JSON lines; Kamailio siptrace: "
                "received + sent), and datagrams the kernel dropped at the sink socket: " + "; ".join(
                    f"{k} {s}: " + ", ".join(f"{n} {v:.1f}" for n, v in d.items() if v is not None)
                    + (f" (sink drops {drops})" if drops and any(drops.values()) else "") for k, s, d, drops in mirror)]
    out += ["", "Raw figures: the `.json` file next to this one. How to run and what each figure means: "
            "bench/README.md.", ""]
    return "\n".join(out)


def _sub(a, b):
    return a - b if isinstance(a, (int, float)) and isinstance(b, (int, float)) else None


def _div(a, b):
    return a / b if isinstance(a, (int, float)) else None


def targets(results):
    g = lambda k, s, key: _get(results, k, s, key)  # noqa: E731
    x = lambda v: f"{v:.2f}×"  # noqa: E731
    ms = lambda v: f"{v:.3f} ms"  # noqa: E731
    kib = lambda v: f"{v:.1f} KiB"  # noqa: E731
    return [
        ("S3 CPU µs/msg, sinks on ≤ 1.0× stunnel pair",
         _ratio(g(ON, "S3", "cpu_us_per_msg"), g(PAIR, "S3", "cpu_us_per_msg")), 1.0, False, x),
        ("S1 calls/s, sinks on ≥ 2× Kamailio", _ratio(g(ON, "S1", "calls_per_s"), g(KAM, "S1", "calls_per_s")), 2.0, True, x),
        ("S2 conns/s, sinks on ≥ 0.9× stunnel pair",
         _ratio(g(ON, "S2", "connections_per_s"), g(PAIR, "S2", "connections_per_s")), 0.9, True, x),
        ("S2 CPU/conn, sinks on ≤ 1.2× stunnel pair",
         _ratio(g(ON, "S2", "cpu_ms_per_connection"), g(PAIR, "S2", "cpu_ms_per_connection")), 1.2, False, x),
        ("S3 added p99, sinks on ≤ 1.0 ms",
         _sub(g(ON, "S3", "invite_200_ms.p99"), g("none", "S3", "invite_200_ms.p99")), 1.0, False, ms),
        ("S4 KiB per idle connection, sinks on ≤ 64", g(ON, "S4", "kib_per_connection"), 64.0, False, kib),
        ("S3 CPU/msg sinks on / sinks off ≤ 1.3×",
         _ratio(g(ON, "S3", "cpu_us_per_msg"), g(OFF, "S3", "cpu_us_per_msg")), 1.3, False, x),
        ("S2 conns/s, 2 workers ≥ 1.7× one worker (both sinks on)",
         _ratio(g(TWO, "S2", "connections_per_s"), g(ON, "S2", "connections_per_s")), 1.7, True, x),
    ]


# ------------------------------------------------------------------------------------------------


def _git(*argv: str) -> str:
    try:
        return subprocess.run(["git", *argv], capture_output=True, text=True, cwd=c.ROOT, timeout=10).stdout.strip()
    except Exception:
        return ""


async def main(args) -> Path:
    nofile = c.raise_nofile()
    tmp = Path(tempfile.mkdtemp(prefix="siptap-bench-"))
    pki = c.make_pki(tmp)
    now = dt.datetime.now()
    host = args.run_id or socket.gethostname().split(".")[0]
    results: dict[str, Any] = {
        "meta": {
            "date": now.strftime("%Y-%m-%d %H:%M"), "host": host, "cpus": len(__import__("os").sched_getaffinity(0)),
            "platform": platform.platform(), "python": platform.python_version(),
            "git_commit": _git("rev-parse", "--short", "HEAD"), "git_dirty": bool(_git("status", "--porcelain", "proxy")),
            "command": " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
            "middles": args.middles, "scenarios": args.scenarios, "duration": args.duration, "warmup": args.warmup,
            "s1_rate": args.s1_rate, "s1_limit": args.s1_limit, "s2_rate": args.s2_rate, "s2_limit": args.s2_limit,
            "s3_rate": args.s3_rate, "idle": args.idle, "legs": args.legs, "siptap_log_level": args.siptap_log_level,
            "rlimit_nofile": nofile, "messages_per_call": MESSAGES_PER_CALL, "workdir": str(tmp),
        },
        "rows": {},
    }
    print(f"work folder {tmp}", flush=True)
    results["rsa2048_sign_per_s"] = c.openssl_speed_rsa2048(3)
    print(f"openssl speed rsa2048: {results['rsa2048_sign_per_s']} sign/s", flush=True)
    for kind in args.middles:
        for scenario in args.scenarios:
            started = time.monotonic()
            try:
                row = await SCENARIOS[scenario](args, tmp / kind / scenario, pki, kind)
            except c.Unsupported as exc:
                row = {"skipped": str(exc)}
            except Exception as exc:
                row = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()[-4000:]}
            row["elapsed_s"] = round(time.monotonic() - started, 1)
            results["rows"].setdefault(kind, {})[scenario] = row
            brief = {k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items()
                     if k not in ("notes", "traceback", "sipp")}
            print(f"{kind} {scenario}: {brief}", flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"{now.strftime('%Y-%m-%d')}-{host}"
    stem.with_suffix(".json").write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    stem.with_suffix(".md").write_text(render_markdown(results))
    print(f"wrote {stem}.md and {stem}.json", flush=True)
    if not args.keep:
        shutil.rmtree(tmp, ignore_errors=True)
    return stem


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--middles", default=",".join(c.MIDDLES), help=f"comma list of {', '.join(c.MIDDLES)}")
    p.add_argument("--scenarios", default="S1,S2,S3,S4")
    p.add_argument("--duration", type=float, default=20.0, help="measurement window per scenario, seconds")
    p.add_argument("--warmup", type=float, default=2.0, help="seconds after the first successful call")
    p.add_argument("--out", default=str(c.ROOT / "bench" / "results"))
    p.add_argument("--run-id", default="", help="file name suffix instead of the short host name")
    p.add_argument("--s1-rate", type=int, default=20000, help="S1 SIPp -r (the -l limit is what paces it)")
    p.add_argument("--s1-limit", type=int, default=100, help="S1 concurrent calls (-l)")
    p.add_argument("--s2-rate", type=int, default=20000)
    p.add_argument("--s2-limit", type=int, default=20, help="S2 concurrent calls = concurrent connections")
    p.add_argument("--s3-rate", type=int, default=100)
    p.add_argument("--idle", type=int, default=1000, help="S4 idle connections")
    p.add_argument("--idle-concurrency", type=int, default=16, help="S4 handshakes in flight while opening")
    p.add_argument("--legs", default="customer", choices=("customer", "core", "both"), help="siptap mirror legs")
    p.add_argument("--siptap-log-level", default="info")
    p.add_argument("--keep", action="store_true", help="keep the temporary work folder (logs, captures, PKI)")
    args = p.parse_args(argv)
    args.middles = [m.strip() for m in args.middles.split(",") if m.strip()]
    args.scenarios = [s.strip().upper() for s in args.scenarios.split(",") if s.strip()]
    for m in args.middles:
        if m not in c.MIDDLES:
            p.error(f"unknown middle {m!r}")
    for s in args.scenarios:
        if s not in SCENARIO_NAMES:
            p.error(f"unknown scenario {s!r}")
    return args


if __name__ == "__main__":
    trio.run(main, parse_args())

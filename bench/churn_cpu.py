"""Quick, by-hand: siptap's CPU per new proxied connection (S2-like churn, no peers).

Runs `siptap run` as a process in front of the lab core, opens one mutual-TLS connection
per call (TLS 1.2, kRSA suites offered last as an E-SBC does, customer certificate), runs
INVITE/100/180/200/ACK/BYE/200 through it and closes it, ``--concurrency`` callers at once,
and reads siptap's utime+stime from /proc over the measured connections (after a warm-up):
in total and per process (supervisor, mirror, relay workers), as bench/process_cpu.py does
beside run.py.
Faster to iterate with than bench/run.py S2, and with ``--py-spy FILE`` it records a
profile of siptap over the measured window.

Usage: python bench/churn_cpu.py [--connections 1000] [--sinks on|off] [--concurrency 4]
"""

from __future__ import annotations

import argparse
import functools
import subprocess
import sys
import tempfile
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.chain import CLK_TCK, cpu_seconds, lab_sink_sockets, process_tree, start_lab_siptap
from siptap.tools.lab.customer import CustomerSession, customer_context
from siptap.tools.pki import init_lab_pki


def cpu_by_role(pid: int) -> dict[str, float]:
    """CPU seconds (utime+stime) of each role in ``pid``'s tree: supervisor, mirror, worker
    (the workers summed), told apart by their command lines as bench/process_cpu.py does."""
    out: dict[str, float] = {}
    for member in process_tree(pid):
        try:
            argv = Path(f"/proc/{member}/cmdline").read_bytes().split(b"\0")
            fields = Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # gone meanwhile
        role = "mirror" if b"mirror" in argv else ("worker" if b"--worker" in argv else "supervisor")
        out[role] = out.get(role, 0.0) + (int(fields[11]) + int(fields[12])) / CLK_TCK
    return out


async def main(connections: int, warmup: int, sinks: bool, concurrency: int, log_level: str,
               py_spy: str | None, py_spy_format: str, perf: str | None = None) -> None:
    tmp = Path(tempfile.mkdtemp())
    init_lab_pki(tmp / "pki")
    pki = tmp / "pki"
    sink_sockets, top = await lab_sink_sockets(tmp) if sinks else ([], "")

    received = [0] * len(sink_sockets)

    async def drain(index: int, sock: trio.socket.SocketType) -> None:
        while True:
            await sock.recv(65536)
            received[index] += 1

    context = customer_context(pki)

    async with trio.open_nursery() as nursery:
        for index, s in enumerate(sink_sockets):
            nursery.start_soon(drain, index, s)
        core, siptap, port = await start_lab_siptap(nursery, tmp, pki, top, log_level)
        pid = siptap.process.pid

        async def calls(count: int) -> None:
            remaining = [count]

            async def caller() -> None:
                while remaining[0] > 0:
                    remaining[0] -= 1
                    session = await CustomerSession.connect("127.0.0.1", port, context)
                    codes = await session.call()
                    assert codes[-1] == "200", codes
                    await session.aclose()

            async with trio.open_nursery() as callers:
                for _ in range(concurrency):
                    callers.start_soon(caller)

        await calls(warmup)
        core.received.clear()
        core.peers.clear()
        spy = None
        if py_spy:
            # --nonblocking: py-spy's default mode stops the process with ptrace per sample, and
            # that corrupts pipe writes (2026-12-03: a plain QueueWriter writing JSON lines into a
            # pipe lost bytes mid-line, ~90 lines in 150,000, only while py-spy sampled it in its
            # default mode; never with SIGSTOP/SIGCONT storms or unsampled): the harness then
            # reads spliced log lines. --subprocesses: the supervisor's children do the work.
            spy = subprocess.Popen([str(Path(sys.executable).parent / "py-spy"), "record", "-r", "200", "--nonblocking",
                                    "--subprocesses", "-o", py_spy,
                                    "--format", py_spy_format, "--pid", str(pid)],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            await trio.sleep(1)  # let py-spy attach (bench tool, not a test)
        if perf:
            spy = subprocess.Popen(["perf", "record", "-F", "999", "-g", "-o", perf, "-p", str(pid)],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            await trio.sleep(1)
        start_cpu, start_roles = cpu_seconds(pid), cpu_by_role(pid)
        start = trio.current_time()
        await calls(connections)
        elapsed = trio.current_time() - start
        cpu = cpu_seconds(pid) - start_cpu
        roles = {role: seconds - start_roles.get(role, 0.0) for role, seconds in cpu_by_role(pid).items()}
        if spy is not None:
            spy.send_signal(2)
            spy.wait()
        await siptap.stop()
        nursery.cancel_scope.cancel()
    print(f"sinks={'on' if sinks else 'off'} log={log_level} connections={connections} wall={elapsed:.2f}s "
          f"siptap_cpu={cpu:.2f}s cpu_per_connection={cpu / connections * 1e3:.2f}ms "
          f"rate={connections / elapsed:.0f} conn/s")
    print("per process, ms per connection: " + ", ".join(
        f"{role} {roles[role] / connections * 1e3:.2f}" for role in sorted(roles)))
    if sinks:
        total = connections + warmup
        print(f"datagrams per connection (warm-up included): hep {received[0] / total:.3f}, "
              f"jsonl {received[1] / total:.3f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--sinks", choices=("on", "off"), default="on")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--log-level", default="info")
    parser.add_argument("--py-spy", default=None, help="record a py-spy profile of siptap into this file")
    parser.add_argument("--py-spy-format", default="speedscope")
    parser.add_argument("--perf", default=None, help="record `perf record -g` of siptap into this file")
    args = parser.parse_args()
    trio.run(functools.partial(main, args.connections, args.warmup, args.sinks == "on", args.concurrency,
                               args.log_level, args.py_spy, args.py_spy_format, args.perf))

"""Quick, by-hand: siptap's CPU per relayed SIP message (both directions counted).

Runs `siptap run` as a process in front of the lab core, pushes OPTIONS transactions through
one TLS connection with a window of requests in flight, and reads siptap's utime+stime from
/proc. Usage: python bench/relay_cpu.py [--messages 20000] [--sinks on|off] [--window 50]
[--rate R]. With ``--rate`` the transactions are paced one at a time (R per second, so 2R
relayed messages/s), as S3 of bench/run.py paces calls: every message then costs a full
wake-up of siptap, which is what a lab trunk at moderate load looks like; without it the
window keeps siptap busy and messages coalesce.
"""

from __future__ import annotations

import argparse
import functools
import sys
import tempfile
import uuid
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.chain import cpu_seconds, lab_sink_sockets, start_lab_siptap
from siptap.tools.lab.customer import CustomerSession, customer_context
from siptap.tools.lab.sip import request
from siptap.tools.pki import init_lab_pki


async def main(messages: int, sinks: bool, window: int, log_level: str, rate: float = 0.0) -> None:
    tmp = Path(tempfile.mkdtemp())
    init_lab_pki(tmp / "pki")
    pki = tmp / "pki"
    sink_sockets, top = await lab_sink_sockets(tmp) if sinks else ([], "")

    async def drain(sock: trio.socket.SocketType) -> None:
        while True:
            await sock.recv(65536)

    async with trio.open_nursery() as nursery:
        for s in sink_sockets:
            nursery.start_soon(drain, s)
        core, siptap, port = await start_lab_siptap(nursery, tmp, pki, top, log_level)
        session = await CustomerSession.connect("127.0.0.1", port, customer_context(pki))
        await session.options()  # warm-up
        pid = siptap.process.pid
        transactions = messages // 2
        start_cpu = cpu_seconds(pid)
        start = trio.current_time()
        sent = 0
        received = 0
        batch = []
        while rate and received < transactions:
            await trio.sleep_until(start + received / rate)
            await session.stream.send_all(
                request("OPTIONS", call_id=f"{uuid.uuid4()}@b", cseq=1, from_tag="t", branch=f"z9hG4bK{received}"))
            await session.next_message()
            received += 1
        while received < transactions:
            while sent < transactions and sent - received < window:
                batch.append(request("OPTIONS", call_id=f"{uuid.uuid4()}@b", cseq=1, from_tag="t", branch=f"z9hG4bK{sent}"))
                sent += 1
            if batch:
                await session.stream.send_all(b"".join(batch))
                batch.clear()
            await session.next_message()
            received += 1
        elapsed = trio.current_time() - start
        cpu = cpu_seconds(pid) - start_cpu
        await session.aclose()
        await siptap.stop()
        nursery.cancel_scope.cancel()
    total = transactions * 2
    print(f"sinks={'on' if sinks else 'off'} log={log_level} messages={total} wall={elapsed:.2f}s "
          f"siptap_cpu={cpu:.2f}s cpu_per_message={cpu / total * 1e6:.1f}us rate={total / elapsed:.0f} msg/s")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=20000)
    parser.add_argument("--sinks", choices=("on", "off"), default="on")
    parser.add_argument("--window", type=int, default=50)
    parser.add_argument("--log-level", default="info")
    parser.add_argument("--rate", type=float, default=0.0, help="paced transactions/s, one at a time (0: windowed)")
    args = parser.parse_args()
    trio.run(functools.partial(main, args.messages, args.sinks == "on", args.window, args.log_level, args.rate))

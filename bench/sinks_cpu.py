"""CPU per SIP message of each mirror sink, and of the fan-out in front of them (issue 16).

What the mirror process will do per message once the relay only relays: take a `SipEvent`
(fields read in one scan, ``sansio.sip_fields``, as the observer builds it) and hand it to
every sink through the fan-out. This script pushes a realistic stream through exactly that
code, in one process, with real outputs:

- the stream: trunk calls as bench/run.py's SIPp scenarios send them (INVITE with SDP, 100,
  180, 200 with SDP, ACK, BYE, 200), here with an SDES ``a=crypto`` line in each SDP (an
  encrypted trunk: the SRTP key sink has work), spread over ``--conns`` customer-leg
  connections, each opened by a handshake (``KeyEvent``) and ended by a close;
- the sinks as bench/chain.py's ``siptap-sinks-on`` configures them: HEP over UDP and JSON
  lines over UDP (to sockets this script drains outside the timed sections), the key log,
  pcap and SRTP keys files (in a temporary folder: page-cache appends);
- per sink: ``encode`` (the pure part, where a sink has one separable: HEP packet, JSON line,
  file text) and ``deliver`` (the sink's ``handle_batch_nowait`` on batches of ``--batch``
  events: encoding, writes, accounting), each as CPU µs (``time.process_time``, so system
  calls count and preemption by other processes does not) divided by the number of SIP
  messages in the stream: what the sink adds to one relayed message, its rarer events
  (handshakes, keys, closes) included;
- the fan-out: ``publish`` alone (every event to every sink's queue), and end to end
  (``Fanout.run`` in trio, ``batch_interval`` 0, ``--batch`` events published then awaited
  until every sink handled them): publish + dispatcher + all sinks; minus the sum of the
  sinks' ``deliver``, that is the dispatch's own cost.

Every figure is the median over ``--repeat`` rounds, the measurements interleaved within a
round, so all see the same machine load. ``--profile FILE`` writes a cProfile of one more
end-to-end round and prints its top functions. Works on any checkout with the same sink
API: ``PYTHONPATH=/tmp/base/proxy python bench/sinks_cpu.py`` measures another version.

    python bench/sinks_cpu.py [--calls 1000] [--conns 8] [--batch 20] [--repeat 7] [--json FILE] [--profile FILE]
"""

from __future__ import annotations

import argparse
import cProfile
import json
import logging
import pstats
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import structlog
import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.sip_fields_timeit import CONTACT, SDP, message
from siptap.addresses import Endpoint
from siptap.config.mirror import HepSinkSettings, JsonlSinkSettings, PcapSettings
from siptap.mirror.events import ConnectionClosed, KeyEvent, LegInfo, MirrorEvent, SipEvent, SrtpKeyEvent
from siptap.mirror.fanout import Fanout
from siptap.mirror.hep import HepSink
from siptap.mirror.jsonl import JsonlSink
from siptap.mirror.keylog import KeylogSink
from siptap.mirror.link import LinkSink
from siptap.mirror.pcap import PcapSink
from siptap.mirror.sink import Sink
from siptap.mirror.srtp import SrtpKeysSink
from siptap.sansio.handshake import HandshakeFacts
from siptap.sansio.sdp_crypto import parse_sdp_crypto
from siptap.sansio.sip_fields import read_fields
from siptap.sansio.sip_message import parse_message

CRYPTO = "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz|2^20|1:4\r\n"
SDES = SDP + CRYPTO


def call(n: int) -> list[tuple[bool, bytes]]:
    """One call's seven messages (from_client, bytes), with its own Call-ID and tags."""
    msgs = [
        (True, message("INVITE sip:bench@192.0.2.20:5061 SIP/2.0", "1 INVITE",
                       extra=CONTACT + "Max-Forwards: 70\r\nUser-Agent: siptap-bench\r\nSubject: siptap benchmark\r\n",
                       body=SDES)),
        (False, message("SIP/2.0 100 Trying", "1 INVITE")),
        (False, message("SIP/2.0 180 Ringing", "1 INVITE", ";tag=4711U1", CONTACT)),
        (False, message("SIP/2.0 200 OK", "1 INVITE", ";tag=4711U1", CONTACT, SDES)),
        (True, message("ACK sip:bench@192.0.2.20:5061 SIP/2.0", "1 ACK", ";tag=4711U1", CONTACT + "Max-Forwards: 70\r\n")),
        (True, message("BYE sip:bench@192.0.2.20:5061 SIP/2.0", "2 BYE", ";tag=4711U1", CONTACT + "Max-Forwards: 70\r\n")),
        (False, message("SIP/2.0 200 OK", "2 BYE", ";tag=4711U1")),
    ]
    tag = f"{n}-4711".encode()
    return [(fc, data.replace(b"1-4711", tag)) for fc, data in msgs]


def handshake(random: str) -> HandshakeFacts:
    return HandshakeFacts(
        leg="customer", role="server", version="TLSv1.2", cipher="AES256-GCM-SHA384", key_exchange="RSA",
        extended_master_secret=True, session_reused=False, sni="sbc.example.com", client_random=random,
        master_secret="cd" * 48, keylog_lines=(f"CLIENT_RANDOM {random} {'cd' * 48}",), peer_chain=(),
    )


def fields(data: bytes) -> object:
    """The event's view as the mirror process builds it: one scan, the full view as fallback."""
    header_end = data.index(b"\r\n\r\n") + 4
    return read_fields(data, header_end) or parse_message(data, header_end)


def stream(calls: int, conns: int, t0: float = 1_764_680_000.0) -> tuple[list[MirrorEvent], int]:
    """The event stream (fresh LegInfo objects: per-connection caches start empty) and its
    SIP message count. Calls take turns over the connections, a message every 0.5 ms."""
    legs = [LegInfo(f"3fa2c1-{i}", "lab", "customer", ("192.0.2.10", 40000 + i), ("192.0.2.1", 5061))
            for i in range(conns)]
    events: list[MirrorEvent] = [KeyEvent(t0, leg, handshake(f"{i:064x}")) for i, leg in enumerate(legs)]
    ts, sip = t0 + 0.01, 0
    for n in range(calls):
        leg = legs[n % conns]
        for from_client, data in call(n):
            view = fields(data)
            events.append(SipEvent(ts, leg, from_client, data, view))  # type: ignore[arg-type]  # SipFields reads as the view
            sip += 1
            if b"a=crypto:" in data:
                for key in parse_sdp_crypto(data[data.index(b"\r\n\r\n") + 4:]):
                    events.append(SrtpKeyEvent(ts, leg, from_client, getattr(view, "call_id", None),
                                               "INVITE" if from_client else "200", key))
            ts += 0.0005
    events += [ConnectionClosed(ts, leg, ts - t0, 1, 1, calls * 7 // conns, "client closed") for leg in legs]
    return events, sip


class Outputs:
    """The sinks' destinations: two drained UDP readers and a temporary folder."""

    def __init__(self) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="sinks-cpu-"))
        self.readers = []
        for _ in range(2):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
            sock.bind(("127.0.0.1", 0))
            sock.setblocking(False)
            self.readers.append(sock)
        self.round = 0

    def port(self, i: int) -> int:
        return int(self.readers[i].getsockname()[1])

    def drain(self) -> int:
        got = 0
        for sock in self.readers:
            while True:
                try:
                    sock.recv(70000)
                except BlockingIOError:
                    break
                got += 1
        return got

    def sinks(self) -> list[Sink]:
        """Fresh sinks, as bench/chain.py's siptap-sinks-on configures them (new files per round)."""
        self.round += 1
        folder = self.tmp / f"r{self.round}"
        return [
            HepSink(HepSinkSettings(Endpoint("127.0.0.1", self.port(0))), name="hep"),
            JsonlSink(JsonlSinkSettings(transport="udp", address=Endpoint("127.0.0.1", self.port(1))), name="jsonl"),
            KeylogSink(folder / "keys.log"),
            PcapSink(PcapSettings(folder / "pcap")),
            SrtpKeysSink(folder / "srtp.log"),
        ]


def cpu() -> float:
    return time.process_time()


def encoder_of(sink: Sink) -> Callable[[MirrorEvent], object] | None:
    """The pure part of a sink's work per event, where it has one separable."""
    if isinstance(sink, LinkSink):
        return sink.encode_unit
    render = getattr(sink, "render", None)
    return render if callable(render) else None


def time_encode(sink: Sink, events: Sequence[MirrorEvent]) -> float | None:
    encode = encoder_of(sink)
    if encode is None:
        return None
    mine = [e for e in events if sink.accepts(e)]
    start = cpu()
    for event in mine:
        encode(event)
    return cpu() - start


async def time_deliver(sink: Sink, events: Sequence[MirrorEvent], batch: int, outputs: Outputs) -> float:
    mine = [e for e in events if sink.accepts(e)]
    total = 0.0
    async with trio.open_nursery() as nursery:
        if isinstance(sink, LinkSink):
            nursery.start_soon(sink.link.run)
            await sink.link.wait_connected()
        for i in range(0, len(mine), batch):
            chunk = mine[i : i + batch]
            start = cpu()
            done = sink.handle_batch_nowait(chunk)
            total += cpu() - start
            assert done == len(chunk), f"{sink.name}: a send would have waited"
            outputs.drain()
        nursery.cancel_scope.cancel()
    await sink.aclose()
    assert sink.dropped == 0, (sink.name, sink.drop_reasons)
    return total


def time_publish(outputs: Outputs, events: Sequence[MirrorEvent]) -> float:
    """Only ``publish``: events into every sink's queue (nothing delivers them)."""
    fanout = Fanout(outputs.sinks(), legs="customer", queue_size=len(events) + 1)
    start = cpu()
    for event in events:
        fanout.publish(event)
    return cpu() - start


class NullSink(Sink):
    """Takes every event and does nothing with it: the fan-out's own cost, with five of them."""

    @property
    def delivers_nowait(self) -> bool:
        return True

    def handle_batch_nowait(self, batch: list[MirrorEvent]) -> int:
        self.sent += len(batch)
        return len(batch)


async def time_fanout(outputs: Outputs, events: Sequence[MirrorEvent], batch: int,
                      profile: cProfile.Profile | None = None, null: bool = False) -> float:
    """publish + dispatcher + every sink, ``batch`` events at a time, awaited until handled."""
    sinks = [NullSink(f"null{i}") for i in range(5)] if null else outputs.sinks()
    fanout = Fanout(sinks, legs="customer", queue_size=len(events) + 1)
    expected = [0] * len(sinks)
    total = 0.0
    async with trio.open_nursery() as nursery:
        await nursery.start(fanout.run)
        for sink in sinks:
            if isinstance(sink, LinkSink):
                await sink.link.wait_connected()
        for i in range(0, len(events), batch):
            chunk = events[i : i + batch]
            for k, sink in enumerate(sinks):
                expected[k] += sum(1 for e in chunk if sink.accepts(e))
            if profile is not None:
                profile.enable()
            start = cpu()
            for event in chunk:
                fanout.publish(event)
            for k, sink in enumerate(sinks):
                await sink.wait_handled(expected[k])
            total += cpu() - start
            if profile is not None:
                profile.disable()
            outputs.drain()
        await fanout.aclose()
    for sink in sinks:
        assert sink.dropped == 0, (sink.name, sink.drop_reasons)
    return total


async def main(args: argparse.Namespace) -> dict[str, object]:
    outputs = Outputs()
    sample, sip = stream(args.calls, args.conns)
    names = [s.name for s in outputs.sinks()]
    rows: dict[str, list[float]] = {}

    def note(key: str, seconds: float | None) -> None:
        if seconds is not None:
            rows.setdefault(key, []).append(seconds / sip * 1e6)

    for _ in range(args.repeat):
        for k, name in enumerate(names):
            events, _ = stream(args.calls, args.conns)
            note(f"{name} encode", time_encode(outputs.sinks()[k], events))
            events, _ = stream(args.calls, args.conns)
            note(f"{name} deliver", await time_deliver(outputs.sinks()[k], events, args.batch, outputs))
        events, _ = stream(args.calls, args.conns)
        note("fan-out publish only", time_publish(outputs, events))
        events, _ = stream(args.calls, args.conns)
        note("fan-out end to end", await time_fanout(outputs, events, args.batch))
        events, _ = stream(args.calls, args.conns)
        note("fan-out end to end, 5 null sinks", await time_fanout(outputs, events, args.batch, null=True))
    medians = {key: statistics.median(v) for key, v in rows.items()}
    sinks_sum = sum(medians[f"{n} deliver"] for n in names)
    medians["sum of sinks' deliver"] = sinks_sum
    medians["fan-out dispatch (end to end - sum of deliver)"] = medians["fan-out end to end"] - sinks_sum

    print(f"{len(sample)} events, {sip} SIP messages ({args.calls} calls over {args.conns} connections), "
          f"batches of {args.batch}, median of {args.repeat} rounds; CPU µs per SIP message")
    print("| what | µs/message | min | max |\n|---|---|---|---|")
    for key, value in medians.items():
        spread = rows.get(key)
        lo, hi = (f"{min(spread):.2f}", f"{max(spread):.2f}") if spread else ("", "")
        print(f"| {key} | {value:.2f} | {lo} | {hi} |")

    if args.profile:
        profile = cProfile.Profile()
        events, _ = stream(args.calls, args.conns)
        await time_fanout(outputs, events, args.batch, profile)
        profile.dump_stats(args.profile)
        stats = pstats.Stats(profile)
        stats.sort_stats("tottime").print_stats(25)
    return {"calls": args.calls, "conns": args.conns, "batch": args.batch, "sip_messages": sip,
            "events": len(sample), "repeat": args.repeat, "us_per_message": rows, "median": medians}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--conns", type=int, default=8)
    parser.add_argument("--batch", type=int, default=20, help="events per delivered batch (~10 ms at S1 rates)")
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument("--profile", type=Path, help="cProfile of one more end-to-end round")
    arguments = parser.parse_args()
    # The sinks log a line per link and file; the figures are the output here.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    result = trio.run(main, arguments)
    if arguments.json:
        arguments.json.write_text(json.dumps(result, indent=1) + "\n")

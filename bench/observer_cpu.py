"""CPU per SIP message of the mirror's observation: Observer.handle on chunk records against
today's relay-side DirectionObserver.feed on the same bytes (issue 16 item 4).

Both do framing + SIP fields + the ``sip`` log line (structlog configured as ``siptap run``
does, JSON to /dev/null through the writer thread, rendered by ``log.event_writer``) + the
per-message counter (today: a prometheus-client child's ``inc()`` per message; the Observer:
plain integers) + SRTP keys. Sinks are excluded: publish is a function that returns True.

The stream: ``--connections`` trunks, each carrying ``--calls`` calls of the bench's SIPp
call (INVITE/ACK/BYE one way, 100/180/200/200 the other, SDP without a=crypto as SIPp sends),
one message per chunk (one TLS record each), the connections' chunks interleaved. Before
timing, both paths are run once with list-collecting publish and log and their SipEvents
and log lines are checked equal. Then ``--rounds`` interleaved rounds (A, B, A, B, ...),
each handling the whole stream with fresh state; CPU = ``time.process_time()`` (the log
writer thread included), per message; medians over the rounds and the median of per-round
ratios.

    .venv/bin/python bench/observer_cpu.py [--connections 20] [--calls 50] [--rounds 11] [--json FILE]

The relay-side DirectionObserver left the code base when the relay stopped observing; to
compare against it, hand the bench the old module (``--baseline``), e.g.
``git show e2a26c2:proxy/siptap/relay/observe.py > /tmp/observe.py``. Without it only the
Observer is timed.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "proxy"))

from bench.sip_fields_timeit import CALL
from siptap import log as siptap_log
from siptap.config import LogSettings
from siptap.metrics import Metrics, SipMessageCounts, message_kind
from siptap.mirror.events import LegInfo, SipEvent
from siptap.mirror.observer import Observer
from siptap.mirror.render import sip_summary
from siptap.sansio.chunk_records import FROM_ACCEPTED, FROM_DIALLED, Chunk, ConnectionOpened, LegAddresses

ORDER = [(FROM_ACCEPTED, CALL[0]), (FROM_DIALLED, CALL[1]), (FROM_DIALLED, CALL[2]), (FROM_DIALLED, CALL[3]),
         (FROM_ACCEPTED, CALL[4]), (FROM_ACCEPTED, CALL[5]), (FROM_DIALLED, CALL[6])]


def opened(conn: int) -> ConnectionOpened:
    return ConnectionOpened(conn, 0.0, f"bench-{conn}", "lab", (
        LegAddresses("customer", ("192.0.2.10", 40000 + conn), ("192.0.2.1", 5061)),
        LegAddresses("core", ("192.0.2.1", 45000 + conn), ("198.51.100.7", 5061))))


def stream(connections: int, calls: int) -> list[Chunk]:
    """Chunk records, the connections interleaved message by message."""
    offsets = {(c, d): 0 for c in range(connections) for d in (FROM_ACCEPTED, FROM_DIALLED)}
    out = []
    ts = 1.0
    for _ in range(calls):
        for direction, data in ORDER:
            for conn in range(connections):
                key = (conn, direction)
                out.append(Chunk(conn, direction, offsets[key], ts, data))
                offsets[key] += len(data)
                ts += 1e-4
    return out


def yes(_event: object) -> bool:
    return True


def read_by_sinks(event: object) -> bool:
    """A publish that reads each SipEvent's fields once, as the JSON-lines sink's summary does
    (HEP reads the Call-ID of the same fields): the lazy view pays its lookups here."""
    if isinstance(event, SipEvent) and event.view is not None:
        sip_summary(event.view)
    return True


def run_observer(chunks: list[Chunk], connections: int, log: Any, publish: Any = yes) -> float:
    observer = Observer(publish=publish, log=log, counts=SipMessageCounts())
    for conn in range(connections):
        observer.handle(1, opened(conn))
    handle = observer.handle
    start = time.process_time()
    for record in chunks:
        handle(1, record)
    return time.process_time() - start


DirectionObserver: Any = None  # the baseline's class, loaded by main() from --baseline


def load_baseline(path: Path) -> Any:
    """The old relay/observe.py as a module of its own (it imports today's siptap.log,
    siptap.mirror.events and siptap.sansio, whose names it uses are unchanged)."""
    spec = importlib.util.spec_from_file_location("baseline_observe", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.DirectionObserver


def _count_message(metrics: Metrics, route: str, direction: str, view: Any) -> None:
    """What the relay's session counted per message (a prometheus-client child's inc())."""
    kind = message_kind(view.is_request, view.method, view.status_code) if view is not None else "unparsed"
    metrics.child(metrics.sip_messages, route, direction, kind).inc()


def run_relay_observers(chunks: list[Chunk], connections: int, log: Any, publish: Any = yes) -> float:
    metrics = Metrics()
    observers = {}
    for conn in range(connections):
        record = opened(conn)
        bound = log.bind(conn=record.conn_id, route="lab", peer=f"192.0.2.10:{40000 + conn}")
        customer = LegInfo(record.conn_id, "lab", "customer", record.legs[0].client, record.legs[0].server)
        for direction, name, from_client in ((FROM_ACCEPTED, "customer->core", True),
                                             (FROM_DIALLED, "core->customer", False)):
            observers[(conn, direction)] = DirectionObserver(
                direction=name, legs=[(customer, from_client)], publish=publish, log=bound, max_message_size=65536,
                count_message=functools.partial(_count_message, metrics, "lab", name))
    start = time.process_time()
    for record in chunks:
        observers[(record.conn, record.direction)].feed(record.data)
    return time.process_time() - start


def check_same_output(chunks: list[Chunk], connections: int) -> None:
    """Both paths publish the same SipEvents (bytes, leg, direction) and log the same lines."""
    from tests.relay.memory import RecordingLog

    outputs = []
    if DirectionObserver is None:
        return
    for run in (run_observer, run_relay_observers):
        events: list[Any] = []
        log = RecordingLog()
        run(chunks, connections, log, events.append)
        sips = [(e.leg, e.from_client, e.data) for e in events if isinstance(e, SipEvent)]
        outputs.append((sips, [line for line in log.events if line["event"] == "sip"]))
    assert outputs[0] == outputs[1], "the Observer and DirectionObserver disagree"
    assert len(outputs[0][0]) == len(chunks)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=20)
    parser.add_argument("--calls", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=11)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--baseline", type=Path, help="an old relay/observe.py to compare with")
    args = parser.parse_args()
    global DirectionObserver
    if args.baseline is not None:
        DirectionObserver = load_baseline(args.baseline)

    chunks = stream(args.connections, args.calls)
    check_same_output(chunks, args.connections)
    with open(os.devnull, "w") as devnull:
        writer = siptap_log.configure(LogSettings(queue_size=10**7), devnull)
        log = siptap_log.get_logger().bind()
        paths = [("observer", run_observer, yes), ("relay", run_relay_observers, yes),
                 ("observer+sink reads", run_observer, read_by_sinks),
                 ("relay+sink reads", run_relay_observers, read_by_sinks)]
        if DirectionObserver is None:
            paths = [path for path in paths if path[1] is run_observer]
        results: dict[str, list[float]] = {name: [] for name, _, _ in paths}
        for _ in range(args.rounds):
            for name, run, publish in paths:
                results[name].append(run(chunks, args.connections, log, publish) / len(chunks) * 1e6)
        writer.close()
    load_after = os.getloadavg()
    summary: dict[str, Any] = {
        "messages_per_round": len(chunks),
        "us_per_message": {name: {"median": statistics.median(v), "best": min(v)} for name, v in results.items()},
        "ratio_median": {} if "relay" not in results else {
            "observation": statistics.median(
                a / b for a, b in zip(results["observer"], results["relay"], strict=True)),
            "with sink reads": statistics.median(
                a / b for a, b in zip(results["observer+sink reads"], results["relay+sink reads"], strict=True)),
        },
        "rounds": results,
        "loadavg_after": load_after,
    }
    print(f"{len(chunks)} messages per round, {args.rounds} rounds, load average after {load_after[0]:.1f}")
    for name, figures in summary["us_per_message"].items():
        print(f"  {name:20s} median {figures['median']:6.2f} us/message   best {figures['best']:6.2f}")
    for name, ratio in summary["ratio_median"].items():
        print(f"  Observer / DirectionObserver, {name}: {ratio:.2f} (median of per-round ratios)")
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1) + "\n")


if __name__ == "__main__":
    main()

"""Fan-out: publish is synchronous and never blocks, full queues drop and count, the leg
filter, crash restart, and the bounded drain at shutdown."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import structlog.testing
import trio
import trio.testing

from siptap.config.mirror import PcapSettings
from siptap.mirror.events import ConnectionClosed, KeyEvent, MirrorEvent, SipEvent, SrtpKeyEvent
from siptap.mirror.fanout import Fanout
from siptap.mirror.hep import HepSink
from siptap.mirror.jsonl import JsonlSink
from siptap.mirror.keylog import KeylogSink
from siptap.mirror.pcap import PcapSink
from siptap.mirror.sink import DropReporter, Sink
from siptap.mirror.srtp import SrtpKeysSink

from .helpers import CORE, CUSTOMER, TS, Recorder, closed, dialog_events, facts, key_event, sip_event
from .test_golden import HEP_VARIANTS, JSONL_VARIANTS, golden_events


def test_publish_without_running_sinks_never_blocks_and_counts_drops() -> None:
    # Not even inside trio: publish is a plain function call.
    gate = trio.Event()
    sink = Recorder(gate=gate)
    fanout = Fanout([sink], queue_size=2)
    events = dialog_events()
    results = [fanout.publish(e) for e in events[:5]]
    assert results == [True, True, False, False, False]
    stats = fanout.stats()["rec"]
    assert stats["queued"] == 2
    assert stats["dropped"] == 3
    assert stats["drop_reasons"] == {"queue full": 3}
    assert stats["sent"] == 0


def test_publish_swallows_garbage() -> None:
    fanout = Fanout([Recorder()])
    assert fanout.publish("not an event") is False  # type: ignore[arg-type]  # the point: garbage in


async def test_full_queue_drops_only_for_the_slow_sink() -> None:
    gate = trio.Event()
    slow, fast = Recorder("slow", gate=gate), Recorder("fast")
    fanout = Fanout([slow, fast], queue_size=3)
    events = dialog_events()
    async with trio.open_nursery() as nursery:
        await nursery.start(fanout.run)
        for i, event in enumerate(events):
            fanout.publish(event)
            await fast.wait_handled(i + 1)
            if i == 0:  # the slow sink has taken the first event in hand before more arrive
                await trio.testing.wait_all_tasks_blocked()
        assert fast.events == events
        # slow: one in hand, three queued, the other three dropped.
        assert fanout.stats()["slow"]["dropped"] == 3
        gate.set()
        await slow.wait_handled(4)
        await fanout.aclose()
    assert [e.data for e in slow.events] == [e.data for e in events[:4]]
    assert fanout.totals()["sent"] == 11
    assert fanout.totals()["dropped"] == 3


async def test_legs_filter_and_all_legs_sink() -> None:
    normal = Recorder("normal")
    keylog = Recorder("keylog", all_legs=True)
    fanout = Fanout([normal, keylog], legs="customer")
    events = [sip_event(b"OPTIONS sip:x SIP/2.0\r\nCall-ID: 1\r\n\r\n", leg=CORE), key_event(CORE),
              key_event(CUSTOMER), closed(CORE)]
    async with trio.open_nursery() as nursery:
        await nursery.start(fanout.run)
        for event in events:
            fanout.publish(event)
        await keylog.wait_handled(4)
        await normal.wait_handled(1)
        await fanout.aclose()
    assert normal.events == [events[2]]
    assert keylog.events == events


@pytest.mark.parametrize("legs,expected", [("core", {"core"}), ("both", {"customer", "core"})])
async def test_legs_choices(legs: str, expected: set[str]) -> None:
    sink = Recorder()
    fanout = Fanout([sink], legs=legs)
    for leg in (CUSTOMER, CORE):
        fanout.publish(key_event(leg))
    async with trio.open_nursery() as nursery:
        await nursery.start(fanout.run)
        await fanout.aclose()
    assert {e.leg.leg for e in sink.events} == expected


async def test_a_legs_own_decision_overrides_the_legs_setting() -> None:
    """The observer decides per connection (a route's mirror_legs): a core leg marked mirrored
    reaches the sinks under legs="customer", a customer leg marked unmirrored does not (an
    all_legs sink, the key log's kind, takes both)."""
    normal = Recorder("normal")
    keylog = Recorder("keylog", all_legs=True)
    fanout = Fanout([normal, keylog], legs="customer")
    core, customer = replace(CORE, mirrored=True), replace(CUSTOMER, mirrored=False)
    events = [sip_event(b"OPTIONS sip:x SIP/2.0\r\nCall-ID: 1\r\n\r\n", leg=core), key_event(core),
              sip_event(b"OPTIONS sip:x SIP/2.0\r\nCall-ID: 2\r\n\r\n", leg=customer), key_event(customer)]
    async with trio.open_nursery() as nursery:
        await nursery.start(fanout.run)
        for event in events:
            fanout.publish(event)
        await keylog.wait_handled(4)
        await normal.wait_handled(2)
        await fanout.aclose()
    assert normal.events == events[:2]
    assert keylog.events == events


def test_bad_legs_value() -> None:
    with pytest.raises(ValueError):
        Fanout([], legs="all")


async def test_crashing_sink_is_restarted_and_counted() -> None:
    sink = Recorder(crash_first=2)
    other = Recorder("other")
    fanout = Fanout([sink, other], restart_backoff=(0.001, 0.002))
    events = dialog_events()
    async with trio.open_nursery() as nursery:
        await nursery.start(fanout.run)
        for event in events:
            fanout.publish(event)
        await sink.wait_handled(len(events))
        await other.wait_handled(len(events))
        await fanout.aclose()
    stats = fanout.stats()
    assert stats["rec"]["restarts"] == 2
    assert stats["rec"]["errors"] == 2
    assert stats["rec"]["dropped"] == 2
    assert stats["rec"]["drop_reasons"] == {"sink crashed": 2}
    assert stats["rec"]["sent"] == len(events) - 2
    assert sink.events == events[2:]
    assert other.events == events  # the other sink never noticed


async def test_aclose_drains_queued_events() -> None:
    sink = Recorder()
    fanout = Fanout([sink])
    events = dialog_events()
    for event in events:  # queued before the sinks even run
        fanout.publish(event)
    async with trio.open_nursery() as nursery:
        await nursery.start(fanout.run)
        await fanout.aclose()
    assert sink.events == events
    assert fanout.publish(events[0]) is False  # closed: counted, not raised
    assert fanout.stats()["rec"]["drop_reasons"] == {"mirror shut down": 1}


async def test_aclose_is_bounded_and_counts_leftovers() -> None:
    gate = trio.Event()  # never set: a stuck sink
    sink = Recorder(gate=gate)
    fanout = Fanout([sink], drain_timeout=0.05)
    for event in dialog_events():
        fanout.publish(event)
    async with trio.open_nursery() as nursery:
        await nursery.start(fanout.run)
        await fanout.aclose()
    stats = fanout.stats()["rec"]
    # One was in the sink's hands (cancelled), six still queued.
    assert stats["dropped"] == 7
    assert stats["queued"] == 0
    assert stats["sent"] == 0


def test_drop_reporter_rate_limits() -> None:
    now = [0.0]
    reporter = DropReporter("s", interval=10, clock=lambda: now[0])
    with structlog.testing.capture_logs() as logs:
        for _ in range(5):
            reporter.note("queue full")
        now[0] = 9.0
        reporter.note("queue full")
        now[0] = 10.5
        reporter.note("peer down", total=7)
        reporter.flush()  # nothing pending: no line
    assert [(e["event"], e["dropped"]) for e in logs] == [("mirror_events_dropped", 1), ("mirror_events_dropped", 6)]
    assert logs[1]["reasons"] == {"queue full": 5, "peer down": 1}
    assert logs[1]["total_dropped"] == 7


class BatchRecorder(Recorder):
    def __init__(self) -> None:
        super().__init__()
        self.batches: list[int] = []

    async def handle_batch(self, batch: list[MirrorEvent]) -> None:
        self.batches.append(len(batch))
        await super().handle_batch(batch)


async def test_batch_interval_gathers_events_published_one_by_one(autojump_clock: trio.abc.Clock) -> None:
    """Events published 1 ms apart reach a sink with a 10 ms batch interval in one batch;
    with no interval each one is its own wake-up."""
    for interval, expected in ((0.01, [5]), (0.0, [1, 1, 1, 1, 1])):
        sink = BatchRecorder()
        fanout = Fanout([sink], batch_interval=interval)
        events = dialog_events()[:5]
        async with trio.open_nursery() as nursery:
            await nursery.start(fanout.run)
            for event in events:
                fanout.publish(event)
                await trio.sleep(0.001)
            await sink.wait_handled(len(events))
            await fanout.aclose()
        assert sink.events == events
        assert sink.batches == expected


class DirectRecorder(Recorder):
    """A sink that delivers without waiting (like a file or a datagram socket), until told
    that its "socket buffer" is full for the next ``full_after`` events."""

    def __init__(self, name: str = "direct", *, full_after: int | None = None, crash_on: int | None = None) -> None:
        super().__init__(name)
        self.full_after = full_after
        self.crash_on = crash_on  # index (in arrival order) of an event whose direct delivery raises
        self.by_task: list[MirrorEvent] = []
        self.direct_batches: list[int] = []
        self._seen = 0

    @property
    def delivers_nowait(self) -> bool:
        return True

    def handle_batch_nowait(self, batch: list[MirrorEvent]) -> int:
        self.direct_batches.append(len(batch))
        for i, event in enumerate(batch):
            if self.crash_on == self._seen:
                self.crash_on = None
                self._seen += 1
                self.leave_unfinished(batch[i:])
                raise RuntimeError("sink bug")
            if self.full_after is not None:
                if self.full_after == 0:
                    self.full_after = None
                    return i
                self.full_after -= 1
            self._seen += 1
            self.events.append(event)
            self.sent_one()
        return len(batch)

    async def handle(self, event: MirrorEvent) -> None:
        self._seen += 1
        self.by_task.append(event)
        await super().handle(event)


async def test_direct_sinks_share_one_dispatch_per_batch(autojump_clock: trio.abc.Clock) -> None:
    """Two direct sinks and a task sink: events published 1 ms apart reach each direct sink
    in one synchronous batch (no task of their own involved), the task sink as before."""
    a, b, slow = DirectRecorder("a"), DirectRecorder("b"), BatchRecorder()
    fanout = Fanout([a, b, slow], batch_interval=0.01)
    events = dialog_events()
    async with trio.open_nursery() as nursery:
        await nursery.start(fanout.run)
        for event in events:
            assert fanout.publish(event) is True
            await trio.sleep(0.001)
        await a.wait_handled(len(events))
        await b.wait_handled(len(events))
        await slow.wait_handled(len(events))
        await fanout.aclose()
    assert a.events == b.events == slow.events == events
    assert a.direct_batches == b.direct_batches == [len(events)]
    assert a.by_task == b.by_task == []
    assert slow.batches == [len(events)]


async def test_direct_sink_that_would_wait_moves_to_its_task_in_order(autojump_clock: trio.abc.Clock) -> None:
    """A full "socket buffer" after two events: the rest of the batch and what follows go
    through the sink's own task, in order; once it caught up, delivery is direct again."""
    sink = DirectRecorder(full_after=2)
    fanout = Fanout([sink], batch_interval=0.01)
    first, second = dialog_events(call_id="one"), dialog_events(call_id="two")
    async with trio.open_nursery() as nursery:
        await nursery.start(fanout.run)
        for event in first:
            fanout.publish(event)
        await sink.wait_handled(len(first))
        for event in second:
            fanout.publish(event)
        await sink.wait_handled(len(first) + len(second))
        await fanout.aclose()
    assert sink.events == first + second
    assert sink.by_task == first[2:]
    assert sink.direct_batches == [len(first), len(second)]
    assert fanout.stats()["direct"]["sent"] == len(first) + len(second)


async def test_direct_sink_crash_costs_the_event_at_hand_only(autojump_clock: trio.abc.Clock) -> None:
    sink = DirectRecorder(crash_on=3)
    fanout = Fanout([sink], batch_interval=0.01)
    events = dialog_events()
    with structlog.testing.capture_logs() as logs:
        async with trio.open_nursery() as nursery:
            await nursery.start(fanout.run)
            for event in events:
                fanout.publish(event)
            await sink.wait_handled(len(events))
            await fanout.aclose()
    assert sink.events == events[:3] + events[4:]
    assert sink.by_task == events[4:]
    stats = fanout.stats()["direct"]
    assert (stats["sent"], stats["dropped"], stats["errors"]) == (len(events) - 1, 1, 1)
    assert stats["drop_reasons"] == {"sink crashed": 1}
    assert [e["event"] for e in logs if e["log_level"] == "error"] == ["mirror_sink_crashed"]
    # The crash is logged first, then the drop it cost; the task takes over without a restart.
    told = [e for e in logs if e["event"] in ("mirror_sink_crashed", "mirror_events_dropped")]
    assert [e["event"] for e in told] == ["mirror_sink_crashed", "mirror_events_dropped"]
    assert (told[0]["restart_in"], told[0]["restarts"], stats["restarts"]) == (0, 0, 0)
    assert stats["last_error"] == "crashed: RuntimeError: sink bug"


async def test_aclose_delivers_what_direct_sinks_have_queued(autojump_clock: trio.abc.Clock) -> None:
    """At once: the dispatcher stops gathering rather than finishing its batch interval."""
    sink = DirectRecorder()
    fanout = Fanout([sink], batch_interval=30.0, drain_timeout=5.0)
    events = dialog_events()
    async with trio.open_nursery() as nursery:
        await nursery.start(fanout.run)
        for event in events:
            fanout.publish(event)
        await trio.sleep(1.0)  # (virtual time) the dispatcher is gathering
        assert sink.events == []
        started = trio.current_time()
        await fanout.aclose()
        assert trio.current_time() == started  # neither the 30 s interval nor the 5 s drain bound
    assert sink.events == events
    assert fanout.publish(events[0]) is False
    assert fanout.stats()["direct"]["drop_reasons"] == {"mirror shut down": 1}


def test_direct_queue_is_bounded_without_a_running_fanout() -> None:
    sink = DirectRecorder()
    fanout = Fanout([sink], queue_size=2)
    assert [fanout.publish(e) for e in dialog_events()[:4]] == [True, True, False, False]
    assert fanout.stats()["direct"]["queued"] == 2
    assert fanout.stats()["direct"]["drop_reasons"] == {"queue full": 2}


async def test_long_dispatch_lets_the_relay_run(monkeypatch: pytest.MonkeyPatch, autojump_clock: trio.abc.Clock) -> None:
    """Delivering to the direct sinks yields to other tasks once it has taken DISPATCH_SLICE
    (here: at once), between batches, not only when everything is delivered."""
    import siptap.mirror.fanout as fanout_module

    yields: list[list[int]] = []
    sinks = [DirectRecorder("a"), DirectRecorder("b"), DirectRecorder("c")]

    async def counting_yield() -> None:
        yields.append([len(s.events) for s in sinks])
        await trio.lowlevel.checkpoint()

    monkeypatch.setattr(fanout_module, "DISPATCH_SLICE", 0.0)
    monkeypatch.setattr(fanout_module, "_let_others_run", counting_yield)
    fanout = Fanout(sinks, batch_interval=0.01)
    events = dialog_events()
    async with trio.open_nursery() as nursery:
        await nursery.start(fanout.run)
        for event in events:
            fanout.publish(event)
        for sink in sinks:
            await sink.wait_handled(len(events))
        await fanout.aclose()
    assert all(s.events == events for s in sinks)
    assert yields == [[7, 0, 0], [7, 7, 0], [7, 7, 7]]  # after each sink's batch


async def test_a_producer_faster_than_the_first_sink_starves_no_later_sink(
        monkeypatch: pytest.MonkeyPatch, autojump_clock: trio.abc.Clock) -> None:
    """One batch per sink per round: a publisher that refills the first sink's deque every
    time the dispatcher yields must not keep the later sinks waiting until it stops (seen at
    trunk rates: the pcap and JSON-lines sinks got nothing, bench/results/...-overload.md)."""
    import siptap.mirror.fanout as fanout_module
    from siptap.mirror.sink import MAX_BATCH

    monkeypatch.setattr(fanout_module, "DISPATCH_SLICE", 0.0)  # yield after every batch
    sinks = [DirectRecorder("a"), DirectRecorder("b"), DirectRecorder("c")]
    fanout = Fanout(sinks, queue_size=100_000)
    event = dialog_events()[0]
    async with trio.open_nursery() as nursery:
        await nursery.start(fanout.run)
        for _ in range(20):
            for _ in range(MAX_BATCH + 44):  # more than one batch each time
                fanout.publish(event)
            await trio.lowlevel.checkpoint()
        during = [len(s.events) for s in sinks]
        await fanout.aclose()
    assert min(during) > 0, during
    assert max(during) - min(during) <= MAX_BATCH  # at most one round apart
    assert all(len(s.events) == 20 * (MAX_BATCH + 44) for s in sinks)


async def test_deliver_from_caller_delivers_only_when_asked_in_order() -> None:
    """The mirror process's mode: publish queues without waking the dispatcher; the record
    loop calls deliver_queued, which empties every direct sink's queue, in order, at once."""
    from siptap.mirror.sink import MAX_BATCH

    sinks = [DirectRecorder("a"), DirectRecorder("b")]
    fanout = Fanout(sinks, batch_interval=0.01)
    fanout.deliver_from_caller()
    events = dialog_events() * (MAX_BATCH // 3)  # several batches
    async with trio.open_nursery() as nursery:
        await nursery.start(fanout.run)
        for event in events:
            assert fanout.publish(event) is True
        await trio.testing.wait_all_tasks_blocked()
        assert [len(s.events) for s in sinks] == [0, 0]  # nobody woke up to deliver
        fanout.deliver_queued()
        assert all(s.events == events for s in sinks)
        assert all(sum(s.direct_batches) == len(events) and max(s.direct_batches) <= MAX_BATCH for s in sinks)
        fanout.publish(events[0])  # left for aclose's last pass
        await fanout.aclose()
    assert all(s.events == events + events[:1] for s in sinks)


def test_sinks_that_answer_for_an_event_type_answer_as_accepts_does(tmp_path: Path) -> None:
    """publish skips a sink's accepts() for a type it answered for once (accepts_kind):
    every sink siptap has must then say for each event what accepts() says."""
    sinks: list[Sink] = [HepSink(settings) for settings in HEP_VARIANTS.values()]
    sinks += [JsonlSink(settings) for settings in JSONL_VARIANTS.values()]
    sinks += [KeylogSink(tmp_path / "keys.log"), SrtpKeysSink(tmp_path / "srtp.log"), PcapSink(PcapSettings(tmp_path))]
    events = [*golden_events(), KeyEvent(TS, CUSTOMER, replace(facts(), keylog_lines=()))]
    assert {type(e) for e in events} == {SipEvent, KeyEvent, SrtpKeyEvent, ConnectionClosed}
    answered = 0
    for sink in sinks:
        for event in events:
            whole = sink.accepts_kind(type(event))
            if whole is not None:
                answered += 1
                assert whole == sink.accepts(event), (sink.name, event)
        assert sink.accepts_kind(str) is None  # not an event: asked (and refused) per event
    assert answered > len(events) * len(sinks) * 3 // 4  # most answers are for the whole type


class KindSink(Recorder):
    """Takes every SIP message without being asked, no close, and is asked about the rest."""

    def __init__(self) -> None:
        super().__init__("kind")
        self.asked: list[MirrorEvent] = []

    def accepts_kind(self, kind: type) -> bool | None:
        return {SipEvent: True, ConnectionClosed: False}.get(kind)

    def accepts(self, event: MirrorEvent) -> bool:
        self.asked.append(event)
        return not isinstance(event, ConnectionClosed)


async def test_publish_asks_a_sink_per_event_only_where_it_did_not_answer_for_the_type() -> None:
    sink, plain = KindSink(), Recorder("plain")
    fanout = Fanout([sink, plain], legs="customer")
    sips, keys, close = dialog_events(), [key_event(CUSTOMER), key_event(CORE)], closed()
    async with trio.open_nursery() as nursery:
        await nursery.start(fanout.run)
        for event in [*sips, *keys, close]:
            fanout.publish(event)
        await fanout.aclose()
    assert sink.asked == keys[:1]  # the core leg's key is not mirrored: not even asked
    assert sink.events == [*sips, keys[0]]
    assert plain.events == [*sips, keys[0], close]

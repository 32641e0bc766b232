"""The fan-out: one synchronous, non-blocking ``publish`` in front of many slow sinks.

Theory of operation: the relay calls :meth:`Fanout.publish` on its hot path, right after it
forwarded the bytes the event describes. ``publish`` must never block or raise, so each
sink gets its own bounded queue; when a sink's queue is full the event is dropped *for that
sink*, counted, and reported by a rate-limited warning. One slow or dead output therefore
never delays the relay nor starves the other outputs.

Two ways to a sink. A sink that can usually deliver without waiting (files, datagram
sockets: :attr:`Sink.delivers_nowait`) is served *directly*: its events go to a plain deque,
and one dispatcher task, woken by the first event and then waiting ``batch_interval`` for
more, hands every such sink its batch synchronously. At trunk rates that is one task switch
per batch for all of them instead of two per sink, which was most of what mirroring cost. A
sink whose delivery must wait (a stream socket; a datagram socket whose buffer is full; the
rest of a batch after a sink error) is served by its own task from a trio memory channel;
the dispatcher moves a direct sink there, queue and all, the moment it would have to wait,
and the sink's task gives it back (``on_idle``) once it has caught up. Order is kept per
sink: events only ever move from the deque to the channel, and only while the channel is
empty of new arrivals.

:meth:`Fanout.run` runs one supervisor task per sink: it runs the sink's task and, if the
sink crashes, logs it, counts a restart and starts it again after a back-off (0.5 s doubling
to 30 s), on the same queue: a mirror bug costs events, never the proxy. A crash in a
direct delivery costs the event at hand and moves the sink to its task, under that
supervisor. :meth:`Fanout.aclose` drains at shutdown: it closes the queues so each sink
finishes what is queued, waits at most ``drain_timeout`` seconds, then cancels and counts
what was left as dropped.

Leg filter: an event reaches the sinks only if its leg is mirrored. The observer decides
that per connection when it opens (``LegInfo.mirrored``: the route's own ``mirror_legs``,
else [mirror] ``legs``, which may widen or narrow it); ``legs`` ("customer", "core" or "both")
decides for a leg that carries no decision (tests and bench build such events). The observer
applies the same choice to SIP itself (it builds no SIP events for an unmirrored leg), but
publishes key events and closes for both legs: a sink marked ``all_legs`` (the NSS key-log
file) receives those whatever the legs, so a raw capture of either leg can be decrypted.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Sequence
from typing import Any, Unpack

import structlog
import trio

from siptap.config.mirror import MirrorSettings
from siptap.mirror.events import MirrorEvent
from siptap.mirror.link import LinkOptions
from siptap.mirror.sink import MAX_BATCH, Sink, routes_for

# One logger for the whole mirror: sink crashes, drop warnings and start-up lines all carry
# event names of their own, so a collector filters on those rather than on the logger.
log = structlog.get_logger("siptap.mirror")

# Longest the dispatcher delivers before it lets other tasks (the relay's pumps) run: a
# message that arrives while the mirror writes a large batch waits at most about this long
# (plus the one batch in hand: the clock is read between batches, not between events).
# 0.2 ms: a fiftieth of the default 10 ms batch_interval, so the relay is never held up for
# long, yet long enough that a slice holds many events and the extra checkpoints stay rare.
# A module attribute, not a constant folded into the loop: test_long_dispatch_lets_the_relay_run
# sets it to 0 to force a yield after every batch.
DISPATCH_SLICE = 0.0002


# A function of its own so the yield point has a name in traces and profiles, and so that
# its two jobs (fairness, cancellation) are explained once.
async def _let_others_run() -> None:
    """The relay's tasks may be waiting for the CPU: a checkpoint lets them run first."""
    # A plain checkpoint puts the dispatcher at the back of trio's run queue: every task
    # that became runnable meanwhile (a pump whose socket got data) runs before it resumes.
    # It is also a cancellation point, which is how a hard stop reaches a long dispatch.
    await trio.lowlevel.checkpoint()


# The ``legs`` setting as the set of leg names publish tests membership in: one frozenset
# lookup per event instead of comparing strings per sink. Keys are the only accepted values
# (the config loader offers the same choices; Fanout checks again for direct callers).
LEG_SETS = {
    "customer": frozenset({"customer"}),
    "core": frozenset({"core"}),
    "both": frozenset({"customer", "core"}),
}


class _Slot:
    """A sink and its queues: ``direct`` (served by the dispatcher) while ``is_direct``,
    else the channel to the sink's own task."""

    # Slotted: publish reads these attributes for every sink on every event.
    __slots__ = ("can_be_direct", "direct", "is_direct", "receive", "send", "sink")

    def __init__(self, sink: Sink, queue_size: int) -> None:
        self.sink = sink
        # Fixed for the slot's life (a property of the sink's kind), unlike is_direct, which
        # flips each time the sink moves to its task and back.
        self.can_be_direct = sink.delivers_nowait
        # A direct sink's channel has room for a full queue plus the batch in hand when it
        # moves over to its task. That move happens only while the channel is empty (a
        # direct sink's events never go to the channel, see publish), so it always fits:
        # at most MAX_BATCH from the batch in hand plus at most queue_size from the deque.
        capacity = queue_size + MAX_BATCH if self.can_be_direct else queue_size
        self.send, self.receive = trio.open_memory_channel[MirrorEvent](capacity)
        # A deque, not a channel: the dispatcher pops whole batches synchronously, and an
        # append on the hot path is the cheapest queue there is. Its bound (queue_size) is
        # enforced by publish.
        self.direct: deque[MirrorEvent] = deque()
        self.is_direct = self.can_be_direct
        # Only direct-capable sinks get the callback: a stream sink's delivery has to wait,
        # the dispatcher never waits, so a stream sink must stay with its own task.
        if self.can_be_direct:
            sink.on_idle = self._task_caught_up

    def _task_caught_up(self) -> None:
        # Called by the sink's task when its channel and backlog are both empty, right
        # before it waits: nothing of this sink is queued anywhere, so new events may go to
        # the deque again without overtaking older ones. The task stays parked on the empty
        # channel until the dispatcher moves the sink over again.
        self.is_direct = True


class Fanout:
    """Hands each event to every sink that wants it, without ever waiting (see the module
    docstring); runs, restarts and drains the sinks."""

    def __init__(
        self,
        sinks: Sequence[Sink],
        *,
        legs: str = "customer",
        queue_size: int = 10000,
        drain_timeout: float = 2.0,
        warn_interval: float = 10.0,
        restart_backoff: tuple[float, float] = (0.5, 30.0),
        batch_interval: float = 0.0,
    ) -> None:
        # Checked here, not only in the config: tests and bench build fan-outs directly, and
        # a typo would otherwise silently mirror nothing.
        if legs not in LEG_SETS:
            raise ValueError(f"legs must be one of {', '.join(LEG_SETS)}, not {legs!r}")
        # sink(name), stats() and the metrics labels are keyed by name: two sinks of one
        # name would merge their counts (build_sinks suffixes repeats for this reason).
        names = [s.name for s in sinks]
        if len(set(names)) != len(names):
            raise ValueError(f"sink names must be unique: {names}")
        self.legs = LEG_SETS[legs]
        # Per sink, not shared: one stuck collector fills only its own queue, so the others
        # keep every event (test_full_queue_drops_only_for_the_slow_sink). The memory bound
        # is queue_size events per sink (plus MAX_BATCH in hand), whatever the traffic.
        self.queue_size = queue_size
        self.drain_timeout = drain_timeout
        self.warn_interval = warn_interval
        # (first delay, cap): see _supervise for why a crashing sink must back off.
        self.restart_backoff = restart_backoff
        # 0 by default, i.e. deliver as soon as the dispatcher runs: what unit tests want.
        # The config's default (10 ms) is what makes one wake-up serve many events in use.
        self.batch_interval = batch_interval
        # Slots keep the sinks' order: the dispatcher serves them in it, and stats() lists
        # them in it, as given (build_sinks: HEP, JSON lines, then the files).
        self._slots = [_Slot(sink, queue_size) for sink in sinks]
        # The fan-out owns the warning cadence so that every sink of one mirror reports its
        # drops at the same interval, whatever each sink was built with.
        for sink in sinks:
            sink.reporter.interval = warn_interval
        # Set once by aclose(); publish reads it to refuse new events for direct sinks
        # (the channels refuse them by being closed).
        self._closing = False
        # run()'s outer scope, kept for aclose()'s hard stop after drain_timeout.
        self._cancel: trio.CancelScope | None = None
        # Set when run() has counted the leftovers: aclose() waits on it so its caller sees
        # final counts.
        self._finished = trio.Event()
        # Whether run() was entered: aclose() must wait for tasks only if there are any, and
        # run() refuses a second start.
        self._running = False
        self._wake = trio.Event()  # set by the first direct event since the last dispatch
        # Whether _wake is already set for the next dispatch: publish tests this flag
        # rather than calling Event.set per event (set on a set event is not free).
        self._armed = False
        # Set after the dispatcher's last pass: aclose() must not close the channels before,
        # or that pass could not hand a sink's rest to its task.
        self._dispatcher_done = trio.Event()
        # The dispatcher's batch_interval wait while it runs, so aclose() can cut it short.
        self._gathering: trio.CancelScope | None = None
        # Set by deliver_from_caller(): publish no longer wakes the dispatcher.
        self._caller_delivers = False
        self._routes: dict[type, tuple[list[tuple[_Slot, bool]], ...]] = {}  # publish's, by event type

    @classmethod
    def from_settings(cls, settings: MirrorSettings, **sink_options: Unpack[LinkOptions]) -> Fanout:
        # sink_options reach only the socket sinks (reconnect back-off and the like);
        # app.py and the mirror process pass none, so the sinks' own defaults apply.
        # Imported here, not at the top: the fan-out itself works with any Sink (tests use
        # their own), and importing it must not import every concrete output with it.
        from siptap.mirror.sink_factory import build_sinks

        # The settings' knobs map one to one; restart_backoff is not a setting and keeps
        # the constructor's default.
        return cls(
            build_sinks(settings, **sink_options),
            legs=settings.legs,
            queue_size=settings.queue_size,
            drain_timeout=settings.drain_timeout,
            warn_interval=settings.warn_interval,
            batch_interval=settings.batch_interval,
        )

    # A fresh list: a caller cannot add or remove sinks behind the slots' back.
    @property
    def sinks(self) -> list[Sink]:
        return [slot.sink for slot in self._slots]

    def sink(self, name: str) -> Sink:
        # A linear search: a mirror has a handful of sinks, and this is for tests and stats,
        # never the hot path.
        for slot in self._slots:
            if slot.sink.name == name:
                return slot.sink
        raise KeyError(name)

    # -- hot path ------------------------------------------------------------------------

    def publish(self, event: MirrorEvent) -> bool:
        """Queue ``event`` for every sink that wants it. Synchronous, never blocks, never
        raises. Returns False when at least one interested sink had to drop it (queue full
        or shutting down), so the relay can count "mirrored vs observed"."""
        # True only if every interested sink queued it: the relay's "mirrored vs observed"
        # count wants to know about any loss, not which sink lost it (the sinks count that).
        complete = True
        # Two try levels: the inner one isolates one sink's failure from the others, the
        # outer one catches what is wrong with the event itself (test_publish_swallows_garbage
        # passes objects that are not events at all).
        try:
            # Once per event, not per sink. The connection's own decision first: a route's
            # mirror_legs may name a leg that ``legs`` does not (tests/relay/test_routing.py,
            # test_a_routes_mirror_legs_reach_the_sinks_and_follow_a_reload).
            leg = event.leg
            mirrored_leg = leg.mirrored if leg.mirrored is not None else leg.leg in self.legs
            routes = self._routes.get(type(event))
            if routes is None:  # worked out once per type: a fan-out sees four
                slots, (mirrored, other) = self._slots, routes_for([s.sink for s in self._slots], type(event))
                routes = self._routes[type(event)] = ([(slots[i], a) for i, a in mirrored], [(slots[i], a) for i, a in other])
            for slot, ask in routes[0] if mirrored_leg else routes[1]:
                sink = slot.sink
                try:
                    # Asked before queueing: an event a sink does not carry costs it no
                    # queue slot, no wake-up, and cannot push out one it does carry.
                    if ask and not sink.accepts(event):
                        continue
                    if slot.is_direct:
                        # The deque is never closed, so shutdown and the bound are checked
                        # here; the channel below does both itself (ClosedResourceError,
                        # WouldBlock), with the same reasons counted.
                        if self._closing:
                            sink.drop("mirror shut down")
                            complete = False
                        elif len(slot.direct) >= self.queue_size:
                            sink.drop("queue full")
                            complete = False
                        else:
                            slot.direct.append(event)
                            # Only the first event since the last pass wakes the
                            # dispatcher; the others ride along in its batch.
                            if not self._armed and not self._caller_delivers:
                                self._armed = True
                                self._wake.set()
                        continue
                    # Not direct (a stream sink, or a direct one its task is catching up
                    # for): the channel, behind whatever the dispatcher moved there first.
                    slot.send.send_nowait(event)
                except trio.WouldBlock:
                    # The sink's task is queue_size events behind: this sink loses the
                    # event, the others still get it; the relay never waits for a sink.
                    sink.drop("queue full")
                    complete = False
                except (trio.ClosedResourceError, trio.BrokenResourceError):
                    sink.drop("mirror shut down")
                    complete = False
                except Exception:  # a sink's accepts() bug must not reach the relay
                    sink.drop("sink rejected the event")
                    complete = False
        except Exception:  # not even an event: still never the relay's problem
            # Logged, not counted against a sink: no sink was at fault, and which ones
            # would have wanted it is unknowable without a readable leg.
            log.exception("mirror_publish_failed", event_type=type(event).__name__)
            return False
        return complete

    # -- tasks ---------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run every sink until cancelled or until :meth:`aclose` drained them."""
        # One run per fan-out: two would start two supervisors per sink on the same channel
        # and two dispatchers on the same deques, and the order per sink would be lost.
        if self._running:
            raise RuntimeError("Fanout.run is already running")
        self._running = True
        try:
            with trio.CancelScope() as cancel:
                self._cancel = cancel  # aclose()'s hard stop when the drain runs out of time
                # Two nurseries: the inner one ends by itself once every sink drained; the
                # drop reporter, which would loop forever, lives in the outer one and is
                # cancelled then.
                async with trio.open_nursery() as nursery:
                    # Created here, entered by the reporter task: run() keeps the handle to
                    # cancel it once the supervisors' nursery has ended.
                    reporter = trio.CancelScope()
                    async with trio.open_nursery() as supervisors:
                        for slot in self._slots:
                            supervisors.start_soon(self._supervise, slot, name=f"mirror sink {slot.sink.name}")
                        # The dispatcher runs in the supervisors' nursery so that nursery
                        # ends only after its last pass too. Without direct sinks there is no
                        # last pass to wait for: aclose() must not wait for a task never started.
                        if any(slot.can_be_direct for slot in self._slots):
                            supervisors.start_soon(self._dispatch_loop, name="mirror dispatcher")
                        else:
                            self._dispatcher_done.set()
                        nursery.start_soon(self._report_drops, reporter)
                        if self._slots:
                            log.info("mirror_started", sinks=[s.sink.name for s in self._slots],
                                     legs=sorted(self.legs), queue_size=self.queue_size)
                        # Started once every task is scheduled: what a caller publishes right
                        # after nursery.start(fanout.run) is served without a further step.
                        task_status.started()
                    # The supervisors' nursery ends only when every sink's run returned, i.e.
                    # its channel was closed and drained: aclose() did that. The drop
                    # reporter would run forever; its last flush happens below.
                    reporter.cancel()
        finally:
            # However it ended (drained, timed out, cancelled from outside), every event
            # still queued is counted once, and pending drop warnings are written out.
            self._count_leftovers()
            for slot in self._slots:
                slot.sink.reporter.flush(slot.sink.dropped)
            self._finished.set()

    async def _dispatch_loop(self) -> None:
        """The direct sinks' one task: wait for an event, gather for ``batch_interval``,
        deliver everything queued; after :meth:`aclose`, one last pass."""
        try:
            # _closing ends the loop; the last pass is the finally below, so it also runs
            # when the loop is cancelled instead (aclose()'s hard stop).
            while not self._closing:
                await self._wake.wait()
                # No gathering once closing: aclose() woke this pass to flush, not to wait.
                if self.batch_interval > 0 and not self._closing:
                    # The gathering wait: what makes one wake-up serve a whole batch of
                    # every direct sink. A cancel scope rather than trio.sleep so aclose()
                    # can end it early and flush at once instead of after the interval.
                    with trio.move_on_after(self.batch_interval) as self._gathering:  # aclose ends it early
                        await trio.sleep_forever()
                    self._gathering = None
                # Re-arm before delivering, not after: an event published while this pass
                # yields (below) must wake the next pass, since the loop over the slots may
                # already be past its sink. The cost is at most one empty pass.
                self._wake = trio.Event()
                self._armed = False
                # perf_counter, not trio's clock: the slice bounds real time the relay
                # waits, and trio's clock may be virtual (autojump in tests).
                slice_end = time.perf_counter() + DISPATCH_SLICE
                # Round by round, one batch per sink per round: with "each sink to its end" a
                # producer that refills the first sink's deque while the dispatcher yields
                # starves every later sink (at trunk rates the pcap and JSON-lines sinks got
                # nothing: bench/results/2026-12-02-overload.md). A batch still stays whole.
                more = True
                while more:
                    more = False
                    for slot in self._slots:
                        # The sink moved to its task (it would have to wait, or it crashed):
                        # then the task owns the rest.
                        if slot.direct and slot.is_direct:
                            self._deliver_direct(slot)
                            more = more or bool(slot.direct and slot.is_direct)
                            # Checked per batch: a batch is one synchronous deliver_nowait call,
                            # with no point inside it to yield at, so a slice may overrun by one.
                            if time.perf_counter() > slice_end:
                                await _let_others_run()
                                slice_end = time.perf_counter() + DISPATCH_SLICE
        finally:
            # The last pass, synchronous and without yielding: at shutdown (or when
            # cancelled) whatever is queued for a direct sink is written now or handed to
            # its task, whose channel aclose() keeps open until _dispatcher_done is set.
            for slot in self._slots:
                while slot.direct and slot.is_direct:
                    self._deliver_direct(slot)
            self._dispatcher_done.set()

    def deliver_from_caller(self) -> None:
        """From now on the caller delivers the direct sinks' events (:meth:`deliver_queued`)
        and publish never wakes the dispatcher; its last pass at :meth:`aclose` remains.

        For the mirror process, whose record loop is the only publisher: delivering right
        after each slice of records costs no wake-up of its own, and the loop reads no more
        records than the sinks have taken. A mirror that falls behind then leaves records in
        the channel, where the relay counts the drop and the observer reports the gap and
        resynchronises, instead of observing messages only for every sink to drop them
        ("queue full") on a queue it can never catch up with.
        """
        self._caller_delivers = True

    def deliver_queued(self) -> None:
        """Deliver everything queued for the direct sinks now, one batch per sink per round,
        synchronously (see :meth:`deliver_from_caller`)."""
        more = True
        while more:
            more = False
            for slot in self._slots:
                if slot.direct and slot.is_direct:
                    self._deliver_direct(slot)
                    more = more or bool(slot.direct and slot.is_direct)

    def _deliver_direct(self, slot: _Slot) -> None:
        """One batch (at most MAX_BATCH) of a direct sink's queue, synchronously."""
        queue, sink = slot.direct, slot.sink
        # At most MAX_BATCH, as a sink's task takes: a sink sees the same batch sizes
        # whichever path serves it, and _Slot's channel capacity counts on that bound when
        # the rest moves over.
        if len(queue) <= MAX_BATCH:  # the usual case: all of it, in C
            batch = list(queue)
            queue.clear()
        else:
            batch = [queue.popleft() for _ in range(MAX_BATCH)]
        try:
            done = sink.deliver_nowait(batch)
        # Exception only: deliver_nowait never awaits, so no Cancelled comes from it, and
        # anything else it raises is the sink's bug, handled below.
        except Exception as exc:
            # A bug in the sink. It costs the event at hand (settle_crash counts it); the
            # rest of the batch and the deque go to the sink's own task, whose supervisor
            # restarts it, with back-off, if it crashes again. Logged before the drop is
            # counted, as always (the drop reporter may log right after).
            sink.record_crash(exc, restart_in=0, restarting=False)
            self._to_task(slot, sink.settle_crash(batch))
            return
        # done == len(batch) is the usual case: the deque keeps the sink, and the loop in
        # _dispatch_loop takes the next batch.
        if done < len(batch):
            # It would have to wait (a full socket buffer): its task waits instead, so
            # this pass goes on to the other sinks.
            self._to_task(slot, batch[done:])

    def _to_task(self, slot: _Slot, first: list[MirrorEvent]) -> None:
        """Hand a direct sink's undelivered events, in order, to its own task."""
        # From here on publish sends this sink's events to the channel, behind these: the
        # order is kept because the channel is empty now (see _Slot) and nothing is
        # appended to the deque until the task reports idle again.
        slot.is_direct = False
        # The sink's task may be parked in receive() on this very channel: the sends below
        # wake it, and it delivers these in order before anything published after them.
        # The batch's rest goes first: it is older than anything still in the deque.
        pending = first + list(slot.direct)
        slot.direct.clear()
        for i, event in enumerate(pending):
            try:
                slot.send.send_nowait(event)
            except trio.WouldBlock:  # cannot happen: the channel has room for it all
                slot.sink.drop("queue full", len(pending) - i)
                break
            except (trio.ClosedResourceError, trio.BrokenResourceError):
                # Only possible if aclose() closed the channel already; it waits for the
                # dispatcher's last pass first, so in practice only after its deadline.
                slot.sink.drop("mirror shut down", len(pending) - i)
                break

    async def _supervise(self, slot: _Slot) -> None:
        # Every sink gets a supervisor, direct ones too: a direct sink's task sits parked on
        # its empty channel until the dispatcher moves the sink over, and then it must run.
        sink = slot.sink
        delay, cap = self.restart_backoff
        while True:
            try:
                # The same channel on every restart: what was queued survives a crash, and
                # the crashed batch's rest (the sink's backlog) goes first.
                await sink.run(slot.receive, self.batch_interval)
                # A normal return only happens after aclose() closed the channel and the
                # sink took everything: the supervisor's job is done, no restart.
                return  # queue closed and drained
            except Exception as exc:
                # Exception, not BaseException: trio.Cancelled (aclose()'s hard stop) and
                # KeyboardInterrupt must end the supervisor, not be restarted as a crash.
                sink.record_crash(exc, restart_in=delay, restarting=True)
            # A sink that crashes on every event must not spin: the back-off bounds the
            # log lines and the CPU a persistent bug costs.
            await trio.sleep(delay)
            # Never reset: a sink that crashes now and then restarts more slowly each time,
            # up to the cap, which bounds how long its queue waits after any one crash
            # (events published meanwhile queue up to queue_size, then drop as "queue full").
            delay = min(delay * 2, cap)

    async def _report_drops(self, scope: trio.CancelScope) -> None:
        # One task for every sink's warnings. A reporter logs at the drop itself only when its
        # interval has passed; drops noted within the interval wait for a flush, and without
        # this task a sink that stopped dropping would never report its last ones
        # (test_drop_reporter_rate_limits). The scope is run()'s, cancelled after the drain.
        with scope:
            while True:
                await trio.sleep(self.warn_interval)
                for slot in self._slots:
                    slot.sink.reporter.flush(slot.sink.dropped)

    def _count_leftovers(self) -> None:
        # Runs after the sinks stopped (run()'s finally) or without them (aclose() before
        # run): either way nothing consumes the queues any more, so what is in them is lost.
        for slot in self._slots:
            # Queued or taken in a batch, not reached: the backlog, the deque, the channel.
            left = len(slot.sink.take_backlog()) + len(slot.direct)
            slot.direct.clear()
            # Drained one by one, not read from statistics(): the channel must end up empty,
            # so that a second call (aclose() then run()'s finally) cannot count them twice.
            while True:
                try:
                    slot.receive.receive_nowait()
                except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                    # Empty (open or closed), or the receive side closed by the sink's task:
                    # either way nothing more can be taken.
                    break
                left += 1
            # Counted as drops with their own reason, so "sent + dropped" still adds up to
            # what the sink accepted, and the log says the loss was at shutdown.
            if left:
                slot.sink.drop("not flushed at shutdown", left)

    async def aclose(self, timeout: float | None = None) -> None:
        """Stop accepting events, let the sinks flush their queues for at most ``timeout``
        seconds (default: ``drain_timeout``), then stop them. Events still queued are
        counted as dropped. Safe to call whether or not :meth:`run` is running."""
        # One deadline for the whole drain (the dispatcher's last pass and the sinks' queues),
        # read from trio's clock so tests with a fake clock drain in virtual time.
        deadline = trio.current_time() + (self.drain_timeout if timeout is None else timeout)
        # A second aclose() skips the closing steps but still waits for the drain below.
        if not self._closing:
            self._closing = True
            # Wake the dispatcher (and cut its gathering wait short) for its last pass now.
            # Its loop then sees _closing and leaves for the finally, the last pass; events
            # still in a deque are delivered there, not dropped.
            self._wake.set()
            if self._gathering is not None:
                self._gathering.cancel()
            if self._running:  # the dispatcher's last pass may still hand events to sink tasks
                with trio.move_on_at(deadline):
                    await self._dispatcher_done.wait()
            # Closing the send side lets each sink task take what is queued, then see
            # EndOfChannel and return: that is the drain. From here publish's send_nowait
            # raises ClosedResourceError, counted as "mirror shut down".
            for slot in self._slots:
                slot.send.close()
        # Never ran: nothing will drain the queues, so count them now
        # (test_publish_without_running_sinks_never_blocks_and_counts_drops).
        if not self._running:
            self._count_leftovers()
            return
        # The drain proper: each sink task empties its channel and returns, run() counts and
        # sets _finished. Bounded, because a collector that is down would hold it forever.
        with trio.move_on_at(deadline):
            await self._finished.wait()
        if not self._finished.is_set():
            # Out of time: cancel the sinks (each counts the event at hand as "cancelled
            # at shutdown"); run()'s finally counts the rest and sets _finished. Shielded,
            # so a caller being cancelled still returns only once the counts are final.
            if self._cancel is not None:
                self._cancel.cancel()
            with trio.CancelScope(shield=True):
                await self._finished.wait()

    # -- observability -------------------------------------------------------------------

    def stats(self) -> dict[str, dict[str, Any]]:
        """Per sink: ``queued`` (waiting now), ``sent``, ``dropped``, ``errors``,
        ``restarts``, plus ``drop_reasons`` and ``last_error`` for humans. (The rows mix
        ints, a dict and a string; metrics and the demo read them by key.)"""
        # Read by the metrics scrape, the demo and the mirror process while sinks run:
        # nothing here may wait, and the figures are a snapshot, not a consistent cut.
        out: dict[str, dict[str, Any]] = {}
        for slot in self._slots:
            sink = slot.sink
            # Queued counts all three places an event waits: the channel, the backlog of a
            # crashed batch, and the direct deque. A failing statistics() must not fail a
            # metrics scrape: the row is still worth having with queued 0.
            try:
                queued = slot.send.statistics().current_buffer_used + len(sink.backlog) + len(slot.direct)
            except Exception:  # pragma: no cover - statistics never fails today
                queued = 0
            out[sink.name] = {
                "queued": queued,
                **sink.counters(),
                "drop_reasons": dict(sink.drop_reasons),
                "last_error": sink.last_error,
            }
        return out

    def totals(self) -> dict[str, int]:
        # The numeric columns of stats() summed over sinks, for the one-line shutdown logs
        # (app.py's mirror_stopped, the mirror process's); drop_reasons and last_error do not sum.
        keys = ("queued", "sent", "dropped", "errors", "restarts")
        totals = dict.fromkeys(keys, 0)
        for row in self.stats().values():
            for key in keys:
                totals[key] += row[key]
        return totals

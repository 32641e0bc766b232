"""What every sink shares: the base class, its counters, and the drop accounting.

A sink is one output (a HEP collector, a JSON-lines socket, a file). The fan-out gives each
sink its own bounded queue and runs :meth:`Sink.run` in a supervised task; the sink takes
events off the queue and delivers them. Delivery never blocks the relay (it happens in the
sink's task, or synchronously in the fan-out's dispatcher for sinks that never wait) and
never loses an event silently: each event handed to a sink ends up counted exactly once, as
``sent`` or as ``dropped`` with a reason (queue full, collector down, write failed, too
large...); the only exception is bookkeeping a sink consumes without output of its own (the
pcap sink's connection closes, which become FIN frames of their flow). ``errors`` counts
failures (a refused connect, a failed write, a sink crash), which usually also cost events.

Cost: a sink wakes up for one event and takes everything else already queued (a batch), so
under load the per-wake-up and per-write costs are shared by many events; at low rates a
batch is one event. The machinery for socket outputs is in :mod:`siptap.mirror.link`, for
file outputs in :mod:`siptap.mirror.files`.
"""

from __future__ import annotations

import errno
import math
import time
from collections.abc import Callable, Sequence

import structlog
import trio

from siptap.mirror.events import MirrorEvent

log = structlog.get_logger("siptap.mirror")

# Most events one sink takes off its queue per wake-up (see Sink.run).
MAX_BATCH = 256


class DropReporter:
    """Rate-limited "events dropped" warnings: the first drop is reported at once, later ones
    at most once per ``interval`` seconds with the count since the previous line; ``flush``
    (called periodically by the fan-out) reports what is still pending."""

    __slots__ = ("_clock", "_last", "interval", "pending", "reasons", "sink")

    def __init__(self, sink: str, interval: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.sink = sink
        self.interval = interval
        self.pending = 0
        self.reasons: dict[str, int] = {}
        self._last = -math.inf
        self._clock = clock

    def note(self, reason: str, count: int = 1, total: int | None = None) -> None:
        self.pending += count
        self.reasons[reason] = self.reasons.get(reason, 0) + count
        if self._clock() - self._last >= self.interval:
            self.flush(total)

    def flush(self, total: int | None = None) -> None:
        if not self.pending:
            return
        self._last = self._clock()
        log.warning(
            "mirror_events_dropped",
            sink=self.sink,
            dropped=self.pending,
            reasons=dict(self.reasons),
            total_dropped=total,
            next_report_in=self.interval,
        )
        self.pending = 0
        self.reasons.clear()


class Sink:
    """Base class of the outputs. Subclasses implement :meth:`handle` (and usually
    :meth:`accepts` and :meth:`aclose`); they call :meth:`sent_one` and :meth:`drop`.

    What the fan-out relies on is public: :meth:`accepts`, :meth:`accepts_kind`, :attr:`delivers_nowait`,
    :meth:`deliver_nowait` and :meth:`settle_crash`, :meth:`run`, :meth:`record_crash`,
    :meth:`take_backlog`, the counters and :attr:`on_idle`; it never touches a sink's
    private state."""

    # True: this sink gets every leg's events whatever ``mirror.legs`` says (the key log).
    all_legs: bool = False

    def __init__(self, name: str) -> None:
        self.name = name
        self.sent = 0
        self.dropped = 0
        self.errors = 0
        self.restarts = 0
        self.drop_reasons: dict[str, int] = {}
        self.last_error: str | None = None
        self.reporter = DropReporter(name)
        self._handled = 0
        # Set at the next progress, for wait_handled; made only when someone waits (the
        # mirror's own sinks deliver batch after batch with nobody waiting).
        self._progress: trio.Event | None = None
        # Events taken off the queue in a batch but not dealt with when the batch ended
        # early (a crash or shutdown): handled first after a restart, or counted as "not
        # flushed at shutdown" by the fan-out. ``_unfinished`` is how ``handle_batch``
        # reports them (see there and :meth:`leave_unfinished`).
        self.backlog: list[MirrorEvent] = []
        self._unfinished: list[MirrorEvent] = []
        # Called by :meth:`run` when its queue is empty, just before it waits: the fan-out
        # then delivers to this sink directly again (see :attr:`delivers_nowait`).
        self.on_idle: Callable[[], None] | None = None

    # -- what subclasses implement -----------------------------------------------------

    def accepts(self, event: MirrorEvent) -> bool:
        """Whether this sink wants the event at all (checked before queueing)."""
        return True

    def accepts_kind(self, kind: type) -> bool | None:
        """Whether this sink wants every event of type ``kind`` (True), none (False), or
        decides event by event (None, the default: :meth:`accepts` is asked each time).
        The fan-out asks once per type and then skips the call per event; an answer other
        than None must be what :meth:`accepts` says of every event of that type
        (tests/mirror/test_fanout.py checks the sinks siptap has)."""
        return None

    async def handle(self, event: MirrorEvent) -> None:
        raise NotImplementedError

    async def handle_batch(self, batch: list[MirrorEvent]) -> None:
        """Deal with every event of ``batch`` (what was queued when the sink woke up), in
        order: each one counted as sent or dropped (or deliberately ignored). The default
        calls :meth:`handle` per event; sinks override it to encode everything first and
        write with few system calls. If it raises, it must first call
        :meth:`leave_unfinished` with the events not dealt with, the one at hand first
        (that one is counted lost; the others go back to :attr:`backlog`)."""
        for i, event in enumerate(batch):
            try:
                await self.handle(event)
            except BaseException:
                self.leave_unfinished(batch[i:])
                raise

    def leave_unfinished(self, events: list[MirrorEvent]) -> None:
        """Say, just before raising out of :meth:`handle_batch` or
        :meth:`handle_batch_nowait`, which events of the batch were not dealt with: the
        one at hand first (it is counted lost), then the ones after it (delivered later).
        Without it the whole batch is taken as unfinished: its first event counted lost,
        the others delivered again."""
        self._unfinished = events

    @property
    def delivers_nowait(self) -> bool:
        """Whether :meth:`handle_batch_nowait` can usually deliver without waiting. Such
        sinks are served by the fan-out's one dispatcher task instead of waking their own
        task per batch (a task switch costs more than encoding and sending a few events)."""
        return False

    def handle_batch_nowait(self, batch: list[MirrorEvent]) -> int:
        """Deal with events of ``batch`` in order without waiting, as :meth:`handle_batch`
        would; return how many were dealt with. The rest (from the first one that would
        have to wait, e.g. a full socket buffer) go to the sink's own task. Raising follows
        :meth:`handle_batch`'s rule (:meth:`leave_unfinished`)."""
        return 0

    def handle_each_nowait(self, batch: list[MirrorEvent], handle_one: Callable[[MirrorEvent], None]) -> int:
        """:meth:`handle_batch_nowait` for sinks whose every delivery is synchronous:
        ``handle_one`` per event, in order."""
        for i, event in enumerate(batch):
            try:
                handle_one(event)
            except BaseException:
                self.leave_unfinished(batch[i:])
                raise
        return len(batch)

    async def aclose(self) -> None:
        """Release sockets and files; called when :meth:`run` ends for any reason."""

    # -- accounting ----------------------------------------------------------------------

    def sent_one(self) -> None:
        self.sent += 1

    def drop(self, reason: str, count: int = 1) -> None:
        self.dropped += count
        self.drop_reasons[reason] = self.drop_reasons.get(reason, 0) + count
        self.reporter.note(reason, count, self.dropped)

    def error(self, what: str, exc: BaseException | str, **fields: object) -> None:
        """Count and log a failure. Callers rate-limit the log themselves where it could
        repeat per event (a link logs each state change once, a file each failed open)."""
        text = exc if isinstance(exc, str) else describe_error(exc)
        self.note_error(f"{what}: {text}")
        log.warning("mirror_sink_error", sink=self.name, what=what, error=text, **fields)

    def note_error(self, text: str) -> None:
        """Count a failure and keep ``text`` as :attr:`last_error`, without logging: for
        helpers that log once per outage themselves (a :class:`~siptap.mirror.link.Link`)."""
        self.errors += 1
        self.last_error = text

    def record_crash(self, exc: Exception, *, restart_in: float, restarting: bool) -> None:
        """Count and log a crash of this sink's delivery (a bug: an exception its code did
        not expect). ``restarting``: the fan-out restarts the sink's task after
        ``restart_in`` seconds (it counts as a restart); else the sink's task just takes
        over. Call it from the ``except`` block: the log line carries the traceback."""
        self.errors += 1
        if restarting:
            self.restarts += 1
        self.last_error = f"crashed: {type(exc).__name__}: {exc}"
        log.exception("mirror_sink_crashed", sink=self.name, restart_in=restart_in, restarts=self.restarts)

    def counters(self) -> dict[str, int]:
        return {"sent": self.sent, "dropped": self.dropped, "errors": self.errors, "restarts": self.restarts}

    # -- the task ------------------------------------------------------------------------

    async def run(self, receive: trio.MemoryReceiveChannel[MirrorEvent], batch_interval: float = 0.0) -> None:
        """Deliver events until the channel is closed and empty. Wakes up for one event,
        waits ``batch_interval`` seconds for more, then takes everything queued (at most
        ``MAX_BATCH``) and hands the lot to :meth:`handle_batch`. The wait is what makes
        mirroring cheap at trunk rates, where messages arrive one by one: without it every
        message costs every sink a task switch and a system call; with 10 ms, a sink wakes
        at most 100 times a second and writes everything of those 10 ms at once, for 10 ms
        of mirror delay nobody downstream can notice. An exception escaping it costs the
        event at hand (counted) and propagates to the supervisor, which restarts the sink;
        the rest of the batch is kept in :attr:`backlog` and handled first after the restart."""
        try:
            while True:
                if self.backlog:
                    batch, self.backlog = self.backlog, []
                else:
                    try:
                        batch = [receive.receive_nowait()]
                    except trio.WouldBlock:
                        if self.on_idle is not None:
                            self.on_idle()
                        try:
                            batch = [await receive.receive()]
                        except trio.EndOfChannel:
                            return
                    except trio.EndOfChannel:
                        return
                    if batch_interval > 0:
                        await trio.sleep(batch_interval)
                try:
                    while len(batch) < MAX_BATCH:
                        batch.append(receive.receive_nowait())
                except (trio.WouldBlock, trio.EndOfChannel):
                    pass
                await self._deliver(batch)
        finally:
            with trio.CancelScope(shield=True):
                with trio.move_on_after(2):
                    await self.aclose()

    async def _deliver(self, batch: list[MirrorEvent]) -> None:
        self._unfinished = batch  # in case handle_batch raises without saying
        try:
            await self.handle_batch(batch)
        except BaseException as exc:
            reason = "cancelled at shutdown" if isinstance(exc, trio.Cancelled) else "sink crashed"
            self.backlog[:0] = self._settle(batch, reason)  # in front of anything already there
            raise
        self._note_handled(len(batch))

    def deliver_nowait(self, batch: list[MirrorEvent]) -> int:
        """The fan-out dispatcher's way in: :meth:`handle_batch_nowait` with the accounting
        :meth:`run` does for a batch. Returns how many events were dealt with; the rest
        (from the first that would have to wait) are the caller's to hand to the sink's
        task. If it raises, the batch is not accounted for yet: the caller then calls
        :meth:`settle_crash` with it."""
        self._unfinished = batch  # in case handle_batch_nowait raises without saying
        done = self.handle_batch_nowait(batch)
        if done:
            self._note_handled(done)
        return done

    def settle_crash(self, batch: list[MirrorEvent]) -> list[MirrorEvent]:
        """After :meth:`deliver_nowait` raised on ``batch``: the event at hand is counted
        lost ("sink crashed"); returns the events after it, in order, still to deliver."""
        return self._settle(batch, "sink crashed")

    def _settle(self, batch: list[MirrorEvent], reason: str) -> list[MirrorEvent]:
        """Account for a batch whose delivery raised: those dealt with before, and the
        event at hand (the first of ``_unfinished``), lost for ``reason``, count as
        handled; returns the events after it."""
        rest = self._unfinished
        if rest:
            self.drop(reason)
        self._note_handled(len(batch) - len(rest) + (1 if rest else 0))
        return rest[1:]

    def take_backlog(self) -> list[MirrorEvent]:
        """The events of :attr:`backlog`, in order, leaving it empty: for the fan-out, to
        count them as not flushed at shutdown."""
        events, self.backlog = self.backlog, []
        return events

    def _note_handled(self, count: int = 1) -> None:
        self._handled += count
        if self._progress is not None:
            self._progress.set()
            self._progress = None

    async def wait_handled(self, count: int) -> None:
        """Wait until ``count`` events in total have been taken off the queue and dealt
        with (sent or dropped): for tests and for draining."""
        while self._handled < count:
            if self._progress is None:
                self._progress = trio.Event()
            await self._progress.wait()

    @property
    def handled(self) -> int:
        return self._handled


def routes_for(sinks: Sequence[Sink], kind: type) -> tuple[list[tuple[int, bool]], list[tuple[int, bool]]]:
    """Which of ``sinks`` (indices, in order) an event of type ``kind`` is for, on a mirrored
    leg and on any other (only the sinks that take every leg: the key log), each with
    whether that sink's :meth:`Sink.accepts` must still be asked per event. A sink that
    answers for the whole type (:meth:`Sink.accepts_kind`) then costs the fan-out no call per
    event, and one that takes none of the type is not visited at all."""
    mirrored = []
    for i, sink in enumerate(sinks):
        try:
            whole = sink.accepts_kind(kind)
        except Exception:  # a sink's bug: then it is asked per event, as if it had not answered
            whole = None
        if whole is not False:
            mirrored.append((i, whole is None))
    return mirrored, [(i, ask) for i, ask in mirrored if sinks[i].all_legs]


def describe_error(exc: BaseException) -> str:
    """An exception for a log line: ``ENOSPC: No space left on device (path)`` for an OSError
    with an errno, else ``Type: message``."""
    if isinstance(exc, OSError) and exc.errno is not None:
        name = errno.errorcode.get(exc.errno, str(exc.errno))
        return f"{name}: {exc.strerror or exc}" + (f" ({exc.filename})" if exc.filename else "")
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__



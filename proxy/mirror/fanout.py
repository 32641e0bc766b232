"""The fan-out: one synchronous, non-blocking ``publish`` in front of many slow sinks.

Theory of operation: the relay calls :meth:`Fanout.publish` on its hot path, right after it
forwarded the bytes the event describes. ``publish`` must never block or raise, so each
sink gets its own bounded trio memory channel and the event is put there with
``send_nowait``; when a sink's queue is full the event is dropped *for that sink*, counted,
and reported by a rate-limited warning. One slow or dead output therefore never delays the
relay nor starves the other outputs.

:meth:`Fanout.run` runs one supervisor task per sink: it runs the sink and, if the sink
crashes, logs it, counts a restart and starts it again after a back-off (0.5 s doubling to
30 s), on the same queue: a mirror bug costs events, never the proxy. :meth:`Fanout.aclose`
drains at shutdown: it closes the queues so each sink finishes what is queued, waits at
most ``drain_timeout`` seconds, then cancels and counts what was left as dropped.

Leg filter: ``legs`` ("customer", "core" or "both") selects whose events reach the sinks.
The relay applies the same choice to SIP itself (it need not even build events for an
unmirrored leg), but publishes key events and closes for both legs: a sink marked
``all_legs`` (the NSS key-log file) receives those whatever ``legs`` says, so a raw capture
of either leg can be decrypted.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import structlog
import trio

from proxy.mirror.base import Sink
from proxy.mirror.events import MirrorEvent
from proxy.mirror.settings import MirrorSettings

log = structlog.get_logger("siptap.mirror")

LEG_SETS = {
    "customer": frozenset({"customer"}),
    "core": frozenset({"core"}),
    "both": frozenset({"customer", "core"}),
}


class _Slot:
    """A sink and its queue."""

    __slots__ = ("sink", "send", "receive")

    def __init__(self, sink: Sink, queue_size: int) -> None:
        self.sink = sink
        self.send, self.receive = trio.open_memory_channel[MirrorEvent](queue_size)


class Fanout:
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
        if legs not in LEG_SETS:
            raise ValueError(f"legs must be one of {', '.join(LEG_SETS)}, not {legs!r}")
        names = [s.name for s in sinks]
        if len(set(names)) != len(names):
            raise ValueError(f"sink names must be unique: {names}")
        self.legs = LEG_SETS[legs]
        self.queue_size = queue_size
        self.drain_timeout = drain_timeout
        self.warn_interval = warn_interval
        self.restart_backoff = restart_backoff
        self.batch_interval = batch_interval
        self._slots = [_Slot(sink, queue_size) for sink in sinks]
        for sink in sinks:
            sink.reporter.interval = warn_interval
        self._closing = False
        self._cancel: trio.CancelScope | None = None
        self._finished = trio.Event()
        self._running = False

    @classmethod
    def from_settings(cls, settings: MirrorSettings, **sink_options: Any) -> Fanout:
        return cls(
            build_sinks(settings, **sink_options),
            legs=settings.legs,
            queue_size=settings.queue_size,
            drain_timeout=settings.drain_timeout,
            warn_interval=settings.warn_interval,
            batch_interval=settings.batch_interval,
        )

    @property
    def sinks(self) -> list[Sink]:
        return [slot.sink for slot in self._slots]

    def sink(self, name: str) -> Sink:
        for slot in self._slots:
            if slot.sink.name == name:
                return slot.sink
        raise KeyError(name)

    # -- hot path ------------------------------------------------------------------------

    def publish(self, event: MirrorEvent) -> bool:
        """Queue ``event`` for every sink that wants it. Synchronous, never blocks, never
        raises. Returns False when at least one interested sink had to drop it (queue full
        or shutting down), so the relay can count "mirrored vs observed"."""
        complete = True
        try:
            mirrored_leg = event.leg.leg in self.legs
            for slot in self._slots:
                sink = slot.sink
                if not (mirrored_leg or sink.all_legs):
                    continue
                try:
                    if not sink.accepts(event):
                        continue
                    slot.send.send_nowait(event)
                except trio.WouldBlock:
                    sink.drop("queue full")
                    complete = False
                except (trio.ClosedResourceError, trio.BrokenResourceError):
                    sink.drop("mirror shut down")
                    complete = False
                except Exception:  # a sink's accepts() bug must not reach the relay
                    sink.drop("sink rejected the event")
                    complete = False
        except Exception:  # not even an event: still never the relay's problem
            log.exception("mirror_publish_failed", event_type=type(event).__name__)
            return False
        return complete

    # -- tasks ---------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run every sink until cancelled or until :meth:`aclose` drained them."""
        if self._running:
            raise RuntimeError("Fanout.run is already running")
        self._running = True
        try:
            with trio.CancelScope() as cancel:
                self._cancel = cancel
                async with trio.open_nursery() as nursery:
                    reporter = trio.CancelScope()
                    async with trio.open_nursery() as supervisors:
                        for slot in self._slots:
                            supervisors.start_soon(self._supervise, slot, name=f"mirror sink {slot.sink.name}")
                        nursery.start_soon(self._report_drops, reporter)
                        if self._slots:
                            log.info("mirror_started", sinks=[s.sink.name for s in self._slots],
                                     legs=sorted(self.legs), queue_size=self.queue_size)
                        task_status.started()
                    reporter.cancel()  # every sink finished: aclose() drained them
        finally:
            self._count_leftovers()
            for slot in self._slots:
                slot.sink.reporter.flush(slot.sink.dropped)
            self._finished.set()

    async def _supervise(self, slot: _Slot) -> None:
        sink = slot.sink
        delay, cap = self.restart_backoff
        while True:
            try:
                await sink.run(slot.receive, self.batch_interval)
                return  # queue closed and drained
            except Exception as exc:
                sink.errors += 1
                sink.restarts += 1
                sink.last_error = f"crashed: {type(exc).__name__}: {exc}"
                log.exception("mirror_sink_crashed", sink=sink.name, restart_in=delay, restarts=sink.restarts)
            await trio.sleep(delay)
            delay = min(delay * 2, cap)

    async def _report_drops(self, scope: trio.CancelScope) -> None:
        with scope:
            while True:
                await trio.sleep(self.warn_interval)
                for slot in self._slots:
                    slot.sink.reporter.flush(slot.sink.dropped)

    def _count_leftovers(self) -> None:
        for slot in self._slots:
            left = len(slot.sink.backlog)  # taken off the queue in a batch, not reached
            slot.sink.backlog.clear()
            while True:
                try:
                    slot.receive.receive_nowait()
                except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                    break
                left += 1
            if left:
                slot.sink.drop("not flushed at shutdown", left)

    async def aclose(self, timeout: float | None = None) -> None:
        """Stop accepting events, let the sinks flush their queues for at most ``timeout``
        seconds (default: ``drain_timeout``), then stop them. Events still queued are
        counted as dropped. Safe to call whether or not :meth:`run` is running."""
        if not self._closing:
            self._closing = True
            for slot in self._slots:
                slot.send.close()
        if not self._running:
            self._count_leftovers()
            return
        with trio.move_on_after(self.drain_timeout if timeout is None else timeout):
            await self._finished.wait()
        if not self._finished.is_set():
            if self._cancel is not None:
                self._cancel.cancel()
            with trio.CancelScope(shield=True):
                await self._finished.wait()

    # -- observability -------------------------------------------------------------------

    def stats(self) -> dict[str, dict[str, Any]]:
        """Per sink: ``queued`` (waiting now), ``sent``, ``dropped``, ``errors``,
        ``restarts``, plus ``drop_reasons`` and ``last_error`` for humans."""
        out: dict[str, dict[str, Any]] = {}
        for slot in self._slots:
            sink = slot.sink
            try:
                queued = slot.send.statistics().current_buffer_used + len(sink.backlog)
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
        keys = ("queued", "sent", "dropped", "errors", "restarts")
        totals = dict.fromkeys(keys, 0)
        for row in self.stats().values():
            for key in keys:
                totals[key] += row[key]
        return totals


def build_sinks(settings: MirrorSettings, **options: Any) -> list[Sink]:
    """The sinks the settings ask for, named for logs and stats (``hep:udp:127.0.0.1:9060``,
    ``jsonl:unix:/path``, ``keylog``, ``pcap``, ``srtp_keys``; a numeric suffix keeps two
    identical outputs apart). ``options`` (e.g. ``backoff_initial``) go to the socket sinks.
    Nothing is opened or connected here: that happens in :meth:`Fanout.run`."""
    from proxy.mirror.hep import HepSink
    from proxy.mirror.jsonl import JsonlSink
    from proxy.mirror.keylog import KeylogSink
    from proxy.mirror.pcap import PcapSink
    from proxy.mirror.srtp import SrtpKeysSink

    sinks: list[Sink] = []
    used: set[str] = set()

    def unique(name: str) -> str:
        candidate, n = name, 1
        while candidate in used:
            n += 1
            candidate = f"{name}#{n}"
        used.add(candidate)
        return candidate

    for hep in settings.hep:
        sink = HepSink(hep, **options)
        sink.name = unique(sink.name)
        sinks.append(sink)
    for jsonl in settings.jsonl:
        sink = JsonlSink(jsonl, **options)
        sink.name = unique(sink.name)
        sinks.append(sink)
    if settings.keylog is not None:
        sinks.append(KeylogSink(settings.keylog.path, name=unique("keylog")))
    if settings.pcap is not None:
        sinks.append(PcapSink(settings.pcap, name=unique("pcap")))
    if settings.srtp_keys is not None:
        sinks.append(SrtpKeysSink(settings.srtp_keys.path, name=unique("srtp_keys")))
    for sink in sinks:
        sink.reporter.sink = sink.name
    return sinks

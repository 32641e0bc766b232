"""What every sink shares: counters, the drop accounting, and a self-healing socket link.

A sink is one output (a HEP collector, a JSON-lines socket, a file). The fan-out gives each
sink its own bounded queue and runs :meth:`Sink.run` in a supervised task; the sink takes
events off the queue and delivers them. Delivery never blocks the relay (it happens in the
sink's task) and never loses an event silently: each event handed to a sink ends up counted
exactly once, as ``sent`` or as ``dropped`` with a reason (queue full, collector down, write
failed, too large...); the only exception is bookkeeping a sink consumes without output of
its own (the pcap sink's connection closes, which become FIN frames of their flow). ``errors`` counts failures (a refused connect, a failed write, a sink
crash), which usually also cost events.

:class:`Link` is the client side of a socket to a peer that may come and go: TCP, UDP, Unix
stream or Unix datagram. Theory of operation: a keeper task connects with exponential
back-off (0.5 s doubling to 30 s by default) and, for stream sockets, reads until EOF to
notice the peer leaving; :meth:`Link.send` delivers one unit (a HEP packet, a JSON line or
datagram) if connected, with a timeout, and otherwise reports why it could not. A peer that
is down at start-up (collector not running, Unix socket path with no reader) is the normal
"not connected" state, not an error to raise. A stream send that fails or times out
half-way leaves a partial record on the wire, so the link drops that connection and
reconnects; a datagram send that fails only loses that datagram.

Cost: a sink wakes up for one event and takes everything else already queued (a batch);
:class:`LinkSink` encodes the batch, then sends each datagram with one non-blocking system
call (falling back to trio's waiting send with its timeout only when the socket buffer is
full), or joins a stream batch into one write with one timeout. Under load the per-wake-up
and per-write costs are shared by many events; at low rates a batch is one event.
"""

from __future__ import annotations

import errno
import math
import os
import socket
import time
from collections.abc import Callable
from typing import Any

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
    :meth:`accepts` and :meth:`aclose`); they call :meth:`sent_one` and :meth:`drop`."""

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
        self._progress = trio.Event()
        # Events taken off the queue in a batch but not dealt with when the batch ended
        # early (a crash or shutdown): handled first after a restart, or counted as "not
        # flushed at shutdown" by the fan-out. ``_unfinished`` is how ``handle_batch``
        # reports them (see there).
        self.backlog: list[MirrorEvent] = []
        self._unfinished: list[MirrorEvent] = []
        # Called by :meth:`run` when its queue is empty, just before it waits: the fan-out
        # then delivers to this sink directly again (see :attr:`delivers_nowait`).
        self.on_idle: Callable[[], None] | None = None

    # -- what subclasses implement -----------------------------------------------------

    def accepts(self, event: MirrorEvent) -> bool:
        """Whether this sink wants the event at all (checked before queueing)."""
        return True

    async def handle(self, event: MirrorEvent) -> None:
        raise NotImplementedError

    async def handle_batch(self, batch: list[MirrorEvent]) -> None:
        """Deal with every event of ``batch`` (what was queued when the sink woke up), in
        order: each one counted as sent or dropped (or deliberately ignored). The default
        calls :meth:`handle` per event; sinks override it to encode everything first and
        write with few system calls. If it raises, it must first set ``self._unfinished``
        to the events not dealt with, the one at hand first (that one is counted lost; the
        others go back to :attr:`backlog`)."""
        for i, event in enumerate(batch):
            try:
                await self.handle(event)
            except BaseException:
                self._unfinished = batch[i:]
                raise

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
        :meth:`handle_batch`'s rule about ``_unfinished``."""
        return 0

    def _each_now(self, batch: list[MirrorEvent], handle_one: Callable[[MirrorEvent], None]) -> int:
        """:meth:`handle_batch_nowait` for sinks whose every delivery is synchronous."""
        for i, event in enumerate(batch):
            try:
                handle_one(event)
            except BaseException:
                self._unfinished = batch[i:]
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

    def error(self, what: str, exc: BaseException | str, **fields: Any) -> None:
        """Count and log a failure. Callers rate-limit the log themselves where it could
        repeat per event (a link logs each state change once, a file each failed open)."""
        self.errors += 1
        text = exc if isinstance(exc, str) else _describe(exc)
        self.last_error = f"{what}: {text}"
        log.warning("mirror_sink_error", sink=self.name, what=what, error=text, **fields)

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
            rest = self._unfinished
            self.backlog[:0] = rest[1:]
            if rest:
                self.drop("cancelled at shutdown" if isinstance(exc, trio.Cancelled) else "sink crashed")
            self._note_handled(len(batch) - len(rest) + (1 if rest else 0))
            raise
        self._note_handled(len(batch))

    def _note_handled(self, count: int = 1) -> None:
        self._handled += count
        self._progress.set()
        self._progress = trio.Event()

    async def wait_handled(self, count: int) -> None:
        """Wait until ``count`` events in total have been taken off the queue and dealt
        with (sent or dropped): for tests and for draining."""
        while self._handled < count:
            await self._progress.wait()

    @property
    def handled(self) -> int:
        return self._handled


def _describe(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.errno is not None:
        name = errno.errorcode.get(exc.errno, str(exc.errno))
        return f"{name}: {exc.strerror or exc}" + (f" ({exc.filename})" if exc.filename else "")
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


# -- socket link ------------------------------------------------------------------------

STREAM_KINDS = ("tcp", "unix")
LINK_KINDS = ("tcp", "udp", "unix", "unix-dgram")


class Link:
    """Client side of a socket to a peer that may be absent; see the module docstring.

    ``target`` is ``(host, port)`` for tcp/udp, a filesystem path for the Unix kinds.
    """

    def __init__(
        self,
        sink: Sink,
        kind: str,
        target: tuple[str, int] | str | os.PathLike[str],
        *,
        backoff_initial: float = 0.5,
        backoff_max: float = 30.0,
        connect_timeout: float = 5.0,
        send_timeout: float = 1.0,
    ) -> None:
        if kind not in LINK_KINDS:
            raise ValueError(f"unknown link kind {kind!r}")
        self.sink = sink
        self.kind = kind
        self.target = target if isinstance(target, tuple) else os.fspath(target)
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.connect_timeout = connect_timeout
        self.send_timeout = send_timeout
        self.stream = kind in STREAM_KINDS
        self._sock: trio.socket.SocketType | None = None
        self._raw: socket.socket | None = None  # the same socket, for non-blocking sends
        self.partial = 0  # octets of the current batch written so far (send_stream)
        self._connected = trio.Event()
        self._lost = trio.Event()
        self._down_reason = "not connected yet"
        self._logged_down = False
        self.connects = 0

    def __str__(self) -> str:
        if isinstance(self.target, tuple):
            host, port = self.target
            return f"{self.kind}:[{host}]:{port}" if ":" in host else f"{self.kind}:{host}:{port}"
        return f"{self.kind}:{self.target}"

    @property
    def connected(self) -> bool:
        return self._sock is not None

    async def wait_connected(self) -> None:
        await self._connected.wait()

    async def run(self) -> None:
        """Keep the link up until cancelled. The back-off grows on each failed connect and
        on each connection lost within ``backoff_max`` seconds of being made (a peer that
        accepts and hangs up, or a UDP collector whose port answers ICMP unreachable); it
        resets once a connection lived longer than that."""
        backoff = self.backoff_initial
        try:
            while True:
                try:
                    with trio.fail_after(self.connect_timeout):
                        sock = await self._open()
                except (OSError, trio.TooSlowError) as exc:
                    reason = "connect timed out" if isinstance(exc, trio.TooSlowError) else _describe(exc)
                    self._down(reason, error=exc)
                    await trio.sleep(backoff)
                    backoff = min(backoff * 2, self.backoff_max)
                    continue
                up_since = trio.current_time()
                try:
                    self._up(sock)
                    if self.stream:
                        await self._watch_eof(sock)
                    else:
                        await self._lost.wait()
                finally:
                    self._sock = self._raw = None
                    if self._connected.is_set():
                        self._connected = trio.Event()
                    sock.close()
                if trio.current_time() - up_since < self.backoff_max:
                    await trio.sleep(backoff)
                    backoff = min(backoff * 2, self.backoff_max)
                else:
                    backoff = self.backoff_initial
        finally:
            self._sock = self._raw = None

    async def _open(self) -> trio.socket.SocketType:
        if self.kind in ("unix", "unix-dgram"):
            family, addr = socket.AF_UNIX, self.target
        else:
            host, port = self.target  # type: ignore[misc]
            infos = await trio.socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            family, addr = infos[0][0], infos[0][4]
        sock = trio.socket.from_stdlib_socket(
            socket.socket(family, socket.SOCK_STREAM if self.stream else socket.SOCK_DGRAM)
        )
        try:
            if self.kind == "tcp":
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            await sock.connect(addr)
        except BaseException:
            sock.close()
            raise
        return sock

    async def _watch_eof(self, sock: trio.socket.SocketType) -> None:
        """Collectors never talk back: anything read is discarded, EOF or an error means the
        peer is gone. Also returns when a failed send marked the link lost."""
        async with trio.open_nursery() as nursery:

            async def read() -> None:
                try:
                    while await sock.recv(4096):
                        pass
                    self._down("peer closed the connection")
                except OSError as exc:
                    self._down(_describe(exc), error=exc)
                nursery.cancel_scope.cancel()

            async def lost() -> None:
                await self._lost.wait()
                nursery.cancel_scope.cancel()

            nursery.start_soon(read)
            nursery.start_soon(lost)

    def _up(self, sock: trio.socket.SocketType) -> None:
        self._sock = sock
        self._raw = _stdlib_socket(sock)
        self._lost = trio.Event()
        self.connects += 1
        self._connected.set()
        log.info("mirror_link_up", sink=self.sink.name, link=str(self), after=self._down_reason)
        self._logged_down = False

    def _down(self, reason: str, error: BaseException | None = None) -> None:
        """Record why the link is down; count an error and log once per outage."""
        self._down_reason = reason
        if error is not None:
            self.sink.errors += 1
            self.sink.last_error = f"{self}: {reason}"
        if not self._logged_down:
            self._logged_down = True
            log.warning("mirror_link_down", sink=self.sink.name, link=str(self), reason=reason,
                        retry="with back-off", hint="events are dropped and counted until it is back")
        if self._sock is not None:  # stop sending now; the keeper closes the socket
            self._sock = self._raw = None
            self._lost.set()

    async def send(self, data: bytes) -> str | None:
        """Deliver one unit; None on success, else the reason it was not delivered (the
        caller counts the drop)."""
        sock = self._sock
        if sock is None:
            return "peer down"
        try:
            with trio.fail_after(self.send_timeout):
                if self.stream:
                    view = memoryview(data)
                    while view:
                        sent = await sock.send(view)
                        view = view[sent:]
                else:
                    await sock.send(data)
        except trio.TooSlowError:
            return self._timed_out()
        except OSError as exc:
            return self._send_failed(exc)
        return None

    def send_datagram_nowait(self, data: bytes) -> str | bool | None:
        """One datagram without waiting: None when sent, a reason when it failed (as
        :meth:`send`), or False when the socket buffer is full (the caller falls back to
        :meth:`send`, which waits up to ``send_timeout``). A datagram send never waits on
        a peer, so this is what almost always happens: one system call, no trio
        machinery, no timeout scope."""
        raw = self._raw
        if raw is None:
            return "peer down"
        try:
            raw.send(data)
        except BlockingIOError:
            return False
        except OSError as exc:
            return self._send_failed(exc)
        return None

    async def send_stream(self, data: bytes) -> str | None:
        """Write ``data`` (a batch of whole records) to a stream link: one non-blocking
        send, and only if the kernel did not take it all, trio's waiting sends, with one
        ``send_timeout`` for the rest of the batch. ``self.partial`` tells how much was
        written, also when this fails or is cancelled half-way."""
        self.partial = 0
        raw, sock = self._raw, self._sock
        if raw is None or sock is None:
            return "peer down"
        try:
            try:
                self.partial = raw.send(data)
            except BlockingIOError:
                pass
            if self.partial < len(data):
                view = memoryview(data)
                with trio.fail_after(self.send_timeout):
                    while self.partial < len(data):
                        self.partial += await sock.send(view[self.partial:])
        except trio.TooSlowError:
            return self._timed_out()
        except OSError as exc:
            return self._send_failed(exc)
        return None

    def _timed_out(self) -> str:
        if self.stream:  # a partial record may be on the wire: start a fresh connection
            self._down("send timed out: reader too slow", error=TimeoutError("send timeout"))
        return "send timed out"

    def _send_failed(self, exc: OSError) -> str:
        reason = _describe(exc)
        if exc.errno == errno.EMSGSIZE:
            return "too large for one datagram"
        # Stream: the connection is unusable. Unix datagram: the reader's socket went away
        # and may come back as a new file: reconnect by path. UDP: ICMP port unreachable
        # for an earlier datagram, i.e. nobody listens: treat it as down and probe again
        # after the back-off rather than send into the void.
        self._down(reason, error=exc)
        return f"send failed ({errno.errorcode.get(exc.errno or 0, 'error')})"


def _stdlib_socket(sock: trio.socket.SocketType) -> socket.socket:
    """The standard-library socket under a trio socket (non-blocking, same descriptor)."""
    raw = getattr(sock, "_sock", None)
    if isinstance(raw, socket.socket):
        return raw
    return socket.socket(fileno=os.dup(sock.fileno()))  # pragma: no cover - trio always has _sock


class LinkSink(Sink):
    """A sink that writes each event as one unit (HEP packet, JSON line) to a :class:`Link`.
    Subclasses implement :meth:`encode_unit`; a batch is encoded first, then sent: over
    datagram links one non-blocking ``send`` per unit, over stream links the whole batch
    joined in one write with one timeout."""

    link: Link

    def encode_unit(self, event: MirrorEvent) -> bytes | None:
        """The bytes for one event, or None when the event is already dealt with (an
        encoding failure counted as a drop) or not carried by this output."""
        raise NotImplementedError

    async def handle(self, event: MirrorEvent) -> None:
        await self.handle_batch([event])

    @property
    def delivers_nowait(self) -> bool:
        return not self.link.stream  # a datagram send never waits for the peer

    def handle_batch_nowait(self, batch: list[MirrorEvent]) -> int:
        if self.link.stream:
            return 0
        return self._datagrams_nowait(batch)[0]

    def _datagrams_nowait(self, batch: list[MirrorEvent]) -> tuple[int, bytes | None]:
        """Send each event's datagram until one would have to wait for room in the socket
        buffer: (its index, its encoded bytes); (len(batch), None) when all went."""
        link = self.link
        encode = self.encode_unit
        for i, event in enumerate(batch):
            try:
                data = encode(event)
                if data is None:
                    continue
                reason = link.send_datagram_nowait(data)
            except BaseException:
                self._unfinished = batch[i:]
                raise
            if reason is False:
                return i, data
            if reason is None:
                self.sent += 1
            else:
                self.drop(reason)  # type: ignore[arg-type]
        return len(batch), None

    async def handle_batch(self, batch: list[MirrorEvent]) -> None:
        if self.link.stream:
            await self._stream_batch(batch)
            return
        start = 0
        while start < len(batch):
            done, blocked = self._datagrams_nowait(batch[start:] if start else batch)
            start += done
            if blocked is None:
                return
            try:  # socket buffer full: wait for room, as long as allowed
                reason = await self.link.send(blocked)
            except BaseException:
                self._unfinished = batch[start:]
                raise
            if reason is None:
                self.sent += 1
            else:
                self.drop(reason)
            start += 1

    async def _stream_batch(self, batch: list[MirrorEvent]) -> None:
        units: list[bytes] = []
        pending: list[MirrorEvent] = []  # the events in ``units``, same order
        for i, event in enumerate(batch):
            try:
                data = self.encode_unit(event)
            except BaseException:
                # The encoded ones are dealt with (dropped), like the one at hand; the rest
                # go back to the backlog.
                self._unfinished = [event, *batch[i + 1 :]]
                if pending:
                    self.drop("sink crashed", len(pending))
                raise
            if data is not None:
                units.append(data)
                pending.append(event)
        if not units:
            return
        link = self.link
        try:
            reason = await link.send_stream(units[0] if len(units) == 1 else b"".join(units))
        except BaseException:
            # Cancelled half-way (shutdown): the records fully written count as sent, the
            # one being written is the event at hand, the rest are not flushed.
            done = _whole_records(units, link.partial)
            self.sent += done
            self._unfinished = pending[done:]
            raise
        if reason is None:
            self.sent += len(units)
            return
        # Records written in full before the failure were delivered; the one cut short
        # gets the reason; the link is down for the others.
        done = _whole_records(units, link.partial)
        self.sent += done
        if done < len(units):
            self.drop(reason)
            if len(units) - done - 1:
                self.drop("peer down", len(units) - done - 1)


def _whole_records(units: list[bytes], written: int) -> int:
    count = 0
    for unit in units:
        written -= len(unit)
        if written < 0:
            break
        count += 1
    return count

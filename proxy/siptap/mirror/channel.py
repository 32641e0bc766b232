"""The mirror's end of the channel: a listening Unix SOCK_SEQPACKET socket, one connection
per relay worker, every datagram decoded and handed to the observation engine.

Theory of operation
-------------------
Each relay worker connects once (:class:`siptap.relay.tap.MirrorTap`) and is given a channel
number, counted from 1 and never reused in this process: a restarted worker reconnects and
gets a new number, so the handler can key its per-connection state by (channel, conn) and
never confuse a dead worker's connection 7 with its successor's. One task reads each
channel: it waits until the socket is readable, then ``recv``s until ``EAGAIN`` (a batch:
one wake-up for everything queued), decoding each datagram with
:func:`siptap.sansio.chunk_records.decode` and calling ``handler.handle(channel, record)``.

Failure is contained per datagram. A datagram that does not decode is skipped: the first
one of a channel is logged with its reason (``mirror_record_invalid``), later ones only
counted (in ``mirror_channel_closed``), so a buggy or hostile peer cannot flood the log. A
handler that raises costs that record, not the process (``mirror_handler_failed``, once
per channel with the traceback). EOF (the worker exited or died) ends the channel:
``handler.channel_lost(channel)``, after every record it sent was handled.

Who may connect: the socket file is created 0600, in the directory the supervisor created
0700 for it. Anyone who could connect could write into the mirror's outputs.

Stopping (:meth:`ChannelReceiver.stop`): no new channel is accepted, each reader drains
what its worker had already queued (bounded by ``drain_timeout``) and ends; the handler is
not closed here (its owner does that, then flushes the fan-out).
"""

from __future__ import annotations

import errno
import os
import socket
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import trio

from siptap.log import LogWriter, get_logger
from siptap.sansio.chunk_records import Record, RecordError, decode

__all__ = ["ChannelReceiver", "RecordHandler"]

# Larger than any record: a chunk is one relay receive (64 KiB) plus its 32-byte header; a
# lifecycle record's strings are at most 64 KiB each. A datagram longer than the buffer is
# detected (MSG_TRUNC) and skipped as invalid, never misread as a shorter record.
MAX_DATAGRAM = 256 * 1024
# Records handled per batch before the reader lets other tasks run: under a sustained flood
# "until EAGAIN" might never come, and the fan-out's sinks share this trio loop.
BATCH_LIMIT = 1024
# A batch this small means a quiet channel: the next wake-up waits a batch interval first.
SMALL_BATCH = 32
# What a wait for records aims to gather (see ChannelReceiver._pause), at most.
TARGET_BATCH = 64
# With a ``deliver`` callback, the sinks are given what the handler published after this many
# records: a slice small enough that a flood of 64 KiB chunks (hundreds of messages each)
# never overflows a sink's queue (``queue_size``) between two deliveries.
DELIVER_EVERY = 16
BACKLOG = 512  # every worker (up to 256) connects at start-up, at once


class RecordHandler(Protocol):
    """The observation engine (``siptap.mirror.observer.Observer``): records in, mirror
    events and log lines out. Called on the receiver's trio thread, synchronously."""

    def handle(self, channel: int, record: Record) -> None: ...
    def channel_lost(self, channel: int) -> None: ...
    def close(self) -> None: ...


class ChannelReceiver:
    """Listens at ``path`` and feeds every channel's records to ``handler``."""

    def __init__(self, path: str | os.PathLike[str], handler: RecordHandler, *, log: LogWriter | None = None,
                 drain_timeout: float = 2.0, batch_interval: float = 0.0,
                 deliver: Callable[[], None] | None = None, target_batch: int = TARGET_BATCH) -> None:
        self.path = Path(path)
        self.handler = handler
        # The mirror process passes Fanout.deliver_queued: the sinks get each slice of records'
        # events before more records are read, so the mirror reads no faster than its sinks
        # write, and what it cannot take stays in the channel, where the relay counts the
        # drop (Fanout.deliver_from_caller says why that is the right place to lose it).
        self._deliver = deliver
        self.log = log if log is not None else get_logger("siptap")
        self.drain_timeout = drain_timeout
        # Woken by a record while the channel is quiet, wait this long before reading, so
        # that one wake-up serves the records of that interval (``[mirror] batch_interval``).
        self.batch_interval = batch_interval
        # The records a wait aims to gather (_pause); the mirror process sizes it to the
        # channel's capacity (process.py).
        self.target_batch = target_batch
        self.channels = 0  # accepted so far (the last channel number)
        self.open_channels = 0
        self.records = 0  # handled, all channels
        self.invalid = 0  # datagrams skipped, all channels
        self._stopping = trio.Event()
        self._waits: set[trio.CancelScope] = set()  # each reader's wait for its next batch
        self._buffer = bytearray(MAX_DATAGRAM)
        self._view = memoryview(self._buffer)

    # -- listening -------------------------------------------------------------------------------

    def listen(self) -> socket.socket:
        """Bind the listening socket (replacing a stale one a dead mirror left behind)."""
        try:
            mode = self.path.lstat().st_mode
        except FileNotFoundError:
            pass
        else:
            if not stat.S_ISSOCK(mode):
                raise OSError(errno.EEXIST, f"{self.path} exists and is not a socket")
            self.path.unlink()  # a dead mirror's: connect() to it is refused anyway
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        try:
            sock.bind(str(self.path))
            os.chmod(self.path, 0o600)  # the 0700 directory is the real fence; this is a second one
            sock.listen(BACKLOG)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        return sock

    async def serve(self, *, task_status: trio.TaskStatus[Path] = trio.TASK_STATUS_IGNORED) -> None:
        """Accept channels until :meth:`stop`, then wait for every reader to drain."""
        listener = self.listen()
        self.log.info("mirror_channel_listening", path=str(self.path))
        async with trio.open_nursery() as readers:
            try:
                task_status.started(self.path)
                with trio.CancelScope() as accepting:
                    readers.start_soon(self._cancel_on_stop, accepting)
                    while True:
                        await trio.lowlevel.wait_readable(listener)
                        try:
                            conn, _ = listener.accept()
                        except (BlockingIOError, ConnectionAbortedError):
                            continue
                        conn.setblocking(False)
                        self.channels += 1
                        readers.start_soon(self._read, conn, self.channels)
            finally:
                # No new worker from here on; the readers drain on their own (see _read).
                trio.lowlevel.notify_closing(listener)
                listener.close()
                try:
                    self.path.unlink()
                except FileNotFoundError:
                    pass

    async def _cancel_on_stop(self, scope: trio.CancelScope) -> None:
        await self._stopping.wait()
        scope.cancel()

    def stop(self) -> None:
        """Stop accepting; every channel drains what is queued and ends."""
        self._stopping.set()
        for scope in self._waits:
            scope.cancel()

    # -- one channel ------------------------------------------------------------------------------

    async def _read(self, sock: socket.socket, channel: int) -> None:
        self.open_channels += 1
        self.log.info("mirror_channel_open", channel=channel)
        stats = _ChannelStats()
        try:
            with trio.CancelScope() as waiting:
                self._waits.add(waiting)
                if self._stopping.is_set():
                    waiting.cancel()
                while not await self._batch(sock, channel, stats):
                    await trio.lowlevel.wait_readable(sock)
                    # At lab rates a record arrives alone: reading it at once would cost a
                    # whole trio wake-up (epoll, scheduling, the loop) per SIP message, more
                    # than observing it, and would find every cache cold. Waiting first lets
                    # the records of that time share one wake-up and warm caches. Only after a
                    # small batch: under load the channel never empties and waiting would only
                    # fill it (a full channel is a drop, in the relay).
                    if self.batch_interval and stats.last_batch < SMALL_BATCH:
                        await trio.sleep(self._pause(stats))
                stats.eof = True
            self._waits.discard(waiting)
            if not stats.eof:
                # Stopping: what the worker had already sent is still owed to the sinks.
                stats.drained = False
                with trio.move_on_after(self.drain_timeout):
                    while not stats.drained:
                        if await self._batch(sock, channel, stats):
                            stats.eof = True
                            break
        finally:
            self.open_channels -= 1
            trio.lowlevel.notify_closing(sock)
            sock.close()
        if stats.eof:
            self.handler.channel_lost(channel)
            if self._deliver is not None:
                self._deliver()  # the connections it closed
        self.log.info("mirror_channel_closed", channel=channel, records=stats.records, invalid=stats.invalid,
                      handler_errors=stats.handler_errors, reason="worker closed" if stats.eof else "mirror stopping")

    def _pause(self, stats: _ChannelStats) -> float:
        """How long to let records gather: about ``target_batch`` of them at the rate the last
        batch arrived at, never longer than ``batch_interval``.

        A fixed wait fits one rate only. At 700 SIP messages a second (S3) 10 ms gathers 7 and
        the mirror spent ~205 us a message; 100 ms gathers 70 and it spent ~115
        (bench/results/2026-12-02-batching.md): the per-wake-up cost and the cold caches are
        shared by more messages. Waiting for a count rather than a time keeps what sits in
        the channel near ``target_batch`` records at any rate, well inside its capacity.
        """
        # The last batch's records arrived between the start of the batch before it and its own.
        elapsed = stats.batch_started - stats.previous_started
        rate = stats.last_batch / elapsed if elapsed > 0 else 0.0
        return self.batch_interval if rate <= 0 else min(self.batch_interval, self.target_batch / rate)

    async def _batch(self, sock: socket.socket, channel: int, stats: _ChannelStats) -> bool:
        """Handle what is queued (up to BATCH_LIMIT records); True at EOF."""
        stats.drained = False
        stats.last_batch = 0
        # The records read now arrived since the last batch started: _pause's rate.
        stats.previous_started, stats.batch_started = stats.batch_started, trio.current_time()
        try:
            return await self._records(sock, channel, stats)
        finally:
            # Whatever ended the batch (drained, EOF, the limit, a cancel at shutdown), what
            # its records published reaches the sinks before this task waits again.
            if self._deliver is not None and stats.undelivered:
                stats.undelivered = 0
                self._deliver()

    async def _records(self, sock: socket.socket, channel: int, stats: _ChannelStats) -> bool:
        buffer, view, handle, deliver = self._buffer, self._view, self.handler.handle, self._deliver
        for _ in range(BATCH_LIMIT):
            try:
                # MSG_TRUNC: the datagram's real length, even when it did not fit the buffer.
                size = sock.recv_into(buffer, 0, socket.MSG_TRUNC)
            except BlockingIOError:
                stats.drained = True
                return False
            except OSError as exc:  # ECONNRESET: the worker is gone, as good as EOF
                self.log.info("mirror_channel_error", channel=channel, reason=exc.strerror or str(exc))
                return True
            stats.last_batch += 1
            if size == 0:
                return True  # EOF (the tap never sends an empty record)
            try:
                if size > len(buffer):
                    raise RecordError(f"datagram of {size} bytes, longer than any record ({len(buffer)})")
                record = decode(bytes(view[:size]))
            except RecordError as exc:
                stats.invalid += 1
                self.invalid += 1
                if stats.invalid == 1:
                    self.log.warning("mirror_record_invalid", channel=channel, reason=str(exc),
                                     detail="skipped; later invalid records of this channel are only counted")
                continue
            stats.records += 1
            self.records += 1
            try:
                handle(channel, record)
            except Exception:
                stats.handler_errors += 1
                if stats.handler_errors == 1:
                    self.log.exception("mirror_handler_failed", channel=channel, record=type(record).__name__,
                                       detail="record skipped; later failures of this channel are only counted")
            if deliver is not None:
                stats.undelivered += 1
                if stats.undelivered >= DELIVER_EVERY:
                    stats.undelivered = 0
                    deliver()
        await trio.lowlevel.checkpoint()
        return False


class _ChannelStats:
    __slots__ = (
        "batch_started",
        "drained",
        "eof",
        "handler_errors",
        "invalid",
        "last_batch",
        "previous_started",
        "records",
        "undelivered",
    )

    def __init__(self) -> None:
        self.records = self.invalid = self.handler_errors = 0
        self.last_batch = 0  # records read by the last _batch()
        self.undelivered = 0  # records handled since the last deliver()
        self.batch_started = 0.0  # trio time the last _batch() began
        self.previous_started = 0.0  # and the one before it
        self.eof = False
        self.drained = False

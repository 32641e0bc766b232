"""The relay's end of the mirror channel: one non-blocking send per record, never a wait.

Theory of operation
-------------------
The relay only relays (issue 16). Right after a pump forwarded a chunk it calls
:meth:`MirrorTap.chunk`, a plain synchronous method: one ``struct`` pack of the 32-byte
header (:mod:`siptap.sansio.chunk_records`), one concatenation and one ``send`` on a
non-blocking Unix ``SOCK_SEQPACKET`` socket connected to the mirror process. No ``await``:
an await is a checkpoint (4x the CPU, bench/results/2026-12-02-channel.md, table 5), and
trio's own ``send`` would wait for room, which is exactly what the relay must never do.

The kernel does the rest. Each ``send`` is one datagram (framing), it wakes the mirror
(no polling), it is refused at once when the socket's send buffer is full (back-pressure
without waiting: ``EAGAIN``), and it fails with ``EPIPE`` when the mirror is gone (peer
death). The buffer is the channel's capacity: ``[mirror] channel_buffer`` asks for it with
``SO_SNDBUF``, which the kernel caps at ``net.core.wmem_max`` (and doubles, for its own
accounting; a ~930-byte SIP chunk is charged ~1,970 bytes, so 4 MiB holds ~4,200 chunks).

Drops. A refused record is dropped and counted: per connection (chunks and bytes per
direction, other records) in a dict that holds a connection only while it owes the mirror a
:class:`~siptap.sansio.chunk_records.Dropped` marker, and in totals for the metric and the
rate-limited ``mirror_channel_dropped`` line. Before that connection's next record goes
through, the marker goes first: the mirror must learn of the hole before it sees bytes from
the far side of it, or its framing would splice two halves of different messages. A marker
that does not fit is simply retried (its counts grow) before the next record. A connection
that owes nothing costs one dict lookup per record.

Mirror down. Connecting is not the relay's job: :meth:`MirrorTap.run`, a trio task off the
data path, connects (non-blocking ``connect`` on the Unix socket), watches the connection
for the mirror's end (EOF: the mirror never writes, so "readable" can only mean it closed),
and retries every second while the mirror is down, logging ``mirror_channel_down`` and
``mirror_channel_up`` once per change. While down, every record is a counted drop and every
connection that tried to send owes a marker, so the restarted mirror hears of each gap.
What the dead mirror had accepted but not yet read is lost without a count here: the new
mirror sees it as a jump in a chunk's ``offset`` (or meets a connection it never saw open).

Everything here runs on the relay's one trio thread: the data path and :meth:`run` never
race, so no lock.
"""

from __future__ import annotations

import errno
import os
import socket
import time

import trio

from siptap.log import LogWriter, get_logger
from siptap.sansio.chunk_records import CHUNK_HEADER, FROM_ACCEPTED, KIND_CHUNK, MAGIC, VERSION, Dropped, encode

__all__ = ["DEFAULT_BUFFER", "MirrorTap"]

DEFAULT_BUFFER = 4 * 1024 * 1024
RETRY_INTERVAL = 1.0  # between connection attempts while the mirror is down
WARN_INTERVAL = 10.0  # at most one mirror_channel_dropped line per this many seconds

# A send refused for lack of room: drop the record, keep the connection. EMSGSIZE is one
# datagram larger than the whole send buffer: that record can never fit, the next may.
_FULL = frozenset({errno.EAGAIN, errno.EWOULDBLOCK, errno.ENOBUFS, errno.EMSGSIZE})

_pack_header = CHUNK_HEADER.pack


class MirrorTap:
    """Sends every record of one relay worker to the mirror process at ``path``.

    The data path is :meth:`chunk`, :meth:`record` and :meth:`forget` (synchronous, never
    waiting, never raising); :meth:`run` keeps the channel connected. ``buffer_size`` is the
    SO_SNDBUF asked for (the kernel caps it: see the module's docstring)."""

    def __init__(self, path: str | os.PathLike[str], *, buffer_size: int = DEFAULT_BUFFER,
                 log: LogWriter | None = None, retry_interval: float = RETRY_INTERVAL,
                 warn_interval: float = WARN_INTERVAL) -> None:
        self.path = os.fspath(path)
        self.buffer_size = buffer_size
        self.log = log if log is not None else get_logger("siptap")
        self.retry_interval = retry_interval
        self.warn_interval = warn_interval
        # The connected socket, or None while the mirror is down: the data path's only test.
        self._sock: socket.socket | None = None
        # conn -> [chunks from accepted, bytes from accepted, chunks from dialled, bytes from
        # dialled, other records] dropped since its last marker; only connections owing one.
        self._owed: dict[int, list[int]] = {}
        self.dropped_records = 0  # every record refused (chunks and lifecycle records)
        self.dropped_bytes = 0  # relayed bytes whose chunks were refused
        self._lost = trio.Event()  # the data path saw the mirror go (EPIPE): run() reconnects
        self._dropping = trio.Event()  # a drop since the last report: run() logs it
        self._down_reason: str | None = None

    # -- the data path -------------------------------------------------------------------------

    def chunk(self, conn: int, direction: int, offset: int, data: bytes) -> None:
        """Bytes just relayed on ``conn`` in ``direction`` (chunk_records.FROM_ACCEPTED or
        FROM_DIALLED), ``offset`` being data[0]'s position in that direction's stream."""
        sock = self._sock
        if sock is not None and (conn not in self._owed or self._settle(sock, conn)):
            try:
                sock.send(_pack_header(MAGIC, VERSION, KIND_CHUNK, direction, conn, offset, time.time()) + data)
                return
            except OSError as exc:
                self._refused(exc)
        counts = self._owed.get(conn)
        if counts is None:
            counts = self._owed[conn] = [0, 0, 0, 0, 0]
        # Index 0/1 for the accepted side's chunks and bytes, 2/3 for the dialled side's.
        side = 0 if direction == FROM_ACCEPTED else 2
        counts[side] += 1
        counts[side + 1] += len(data)
        self.dropped_records += 1
        self.dropped_bytes += len(data)
        self._dropping.set()

    def record(self, conn: int, encoded: bytes) -> None:
        """A lifecycle record of ``conn`` (opened, handshake, keys, closed), already
        ``chunk_records.encode``-d; dropped and counted like a chunk when it does not fit."""
        sock = self._sock
        if sock is not None and (conn not in self._owed or self._settle(sock, conn)):
            try:
                sock.send(encoded)
                return
            except OSError as exc:
                self._refused(exc)
        counts = self._owed.get(conn)
        if counts is None:
            counts = self._owed[conn] = [0, 0, 0, 0, 0]
        counts[4] += 1
        self.dropped_records += 1
        self._dropping.set()

    def forget(self, conn: int) -> None:
        """``conn`` has ended: whatever it still owed the mirror can no longer be told in
        order (its close record was among the drops). The totals keep the count."""
        self._owed.pop(conn, None)

    def _settle(self, sock: socket.socket, conn: int) -> bool:
        """Send ``conn``'s Dropped marker; True once it went (the record may follow)."""
        counts = self._owed[conn]
        try:
            sock.send(encode(Dropped(conn, time.time(), *counts)))
        except OSError as exc:
            self._refused(exc)
            return False
        del self._owed[conn]
        return True

    def _refused(self, exc: OSError) -> None:
        """A failed send: the channel is full (drop, nothing else), or the mirror is gone."""
        if exc.errno in _FULL:
            return
        # EPIPE/ECONNRESET: the mirror died; anything else is as fatal to this socket. The
        # socket itself is closed by run(), which may be waiting on it right now.
        self._sock = None
        self._down_reason = os.strerror(exc.errno) if exc.errno else str(exc)
        self._lost.set()

    # -- figures -------------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._sock is not None

    @property
    def owing(self) -> int:
        """Connections that owe the mirror a Dropped marker."""
        return len(self._owed)

    def dropped_totals(self) -> dict[str, int]:
        """For ``siptap_mirror_channel_dropped_total{kind}``: records and relayed bytes dropped."""
        return {"records": self.dropped_records, "bytes": self.dropped_bytes}

    # -- connection management, off the data path ------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Keep the channel connected until cancelled; started (``nursery.start``) after the
        first attempt, so a mirror that is already listening is connected before traffic."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._report_drops)
            down_logged = False
            started = False
            while True:
                try:
                    sock = self._connect()
                except OSError as exc:
                    if not down_logged:
                        self.log.warning("mirror_channel_down", path=self.path, reason=exc.strerror or str(exc),
                                         detail="records are dropped and counted until the mirror listens")
                        down_logged = True
                    if not started:
                        task_status.started()
                        started = True
                    await trio.sleep(self.retry_interval)
                    continue
                self._lost = trio.Event()
                self._sock = sock
                self.log.info("mirror_channel_up", path=self.path,
                              buffer=sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF))
                if not started:
                    task_status.started()
                    started = True
                try:
                    reason = await self._watch(sock)
                finally:
                    self._sock = None
                    trio.lowlevel.notify_closing(sock)
                    sock.close()
                self.log.warning("mirror_channel_down", path=self.path, reason=reason,
                                 detail="records are dropped and counted until the mirror listens again")
                down_logged = True

    def _connect(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        try:
            sock.setblocking(False)
            # Before connecting: the buffer is the channel's capacity (capped at wmem_max).
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self.buffer_size)
            # Non-blocking, so it never waits: on a Unix socket connect either completes at
            # once or fails; EAGAIN (the mirror's accept backlog is full) is not a connect in
            # progress as on TCP, just one more failed attempt, retried like a refusal.
            sock.connect(self.path)
        except BaseException:
            sock.close()
            raise
        return sock

    async def _watch(self, sock: socket.socket) -> str:
        """Wait until the mirror is gone: its EOF, or a send that failed on the data path."""
        async with trio.open_nursery() as nursery:
            reason: list[str] = []

            async def eof() -> None:
                # The mirror sends nothing, so readable means EOF or an error: it has gone.
                await trio.lowlevel.wait_readable(sock)
                reason.append("the mirror closed the channel")
                nursery.cancel_scope.cancel()

            async def refused() -> None:
                await self._lost.wait()
                reason.append(self._down_reason or "send failed")
                nursery.cancel_scope.cancel()

            nursery.start_soon(eof)
            nursery.start_soon(refused)
        return reason[0]

    async def _report_drops(self) -> None:
        """``mirror_channel_dropped`` at the first drop, then at most once per warn_interval,
        with the counts since the last line: the data path only sets an Event."""
        reported_records = reported_bytes = 0
        while True:
            await self._dropping.wait()
            self._dropping = trio.Event()
            self.log.warning("mirror_channel_dropped", records=self.dropped_records - reported_records,
                             bytes=self.dropped_bytes - reported_bytes, records_total=self.dropped_records,
                             bytes_total=self.dropped_bytes, connected=self.connected, owing=len(self._owed))
            reported_records, reported_bytes = self.dropped_records, self.dropped_bytes
            await trio.sleep(self.warn_interval)

    def close(self) -> None:
        """Close the channel at the worker's end (after :meth:`run` was cancelled): the
        mirror sees EOF after the last record it was sent."""
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()


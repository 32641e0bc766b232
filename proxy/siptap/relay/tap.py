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
``SO_SNDBUF``, which the kernel caps at ``net.core.wmem_max`` unless siptap is privileged
(:func:`set_send_buffer`) and doubles for its own accounting (a ~930-byte SIP chunk is charged
~1,970 bytes, so 4 MiB holds ~4,200 chunks).

Drops. A refused chunk is dropped and counted: per connection (chunks and bytes per
direction) in a dict that holds a connection only while it owes the mirror a
:class:`~siptap.sansio.chunk_records.Dropped` marker, and in totals for the metric and the
rate-limited ``mirror_channel_dropped`` line. Before that connection's next record goes
through, the marker goes first: the mirror must learn of the hole before it sees bytes from
the far side of it, or its framing would splice two halves of different messages. A marker
that does not fit is simply retried (its counts grow) before the next record. A connection
that owes nothing costs one dict lookup per record.

Lifecycle records are never dropped, only held: they are few and small, and each is kept
anyway for a replay (below), so a refused one stays owed and goes, in order, before that
connection's next record (a trailing closed record after the marker, which must precede the
connection's end). Losing one would lose what the mirror exists for: a keys record is the key
log line, a closed record the ``connection_observed`` summary. A connection that ends owing
(its closed record refused by a full channel) has no next record to carry what it owes: the
:meth:`MirrorTap.run` task's flusher sends it as soon as there is room, off the data path, and
the same flusher pushes every owed marker and replay after a reconnect instead of waiting for
each connection's next record (an idle trunk may send none for minutes). Ended connections
wait for at most :data:`MAX_ENDED_OWING` of them; beyond that (a mirror down for long on a
busy box) the oldest are given up and counted as ``abandoned``, so memory stays bounded.

Mirror down. Connecting is not the relay's job: :meth:`MirrorTap.run`, a trio task off the
data path, connects (non-blocking ``connect`` on the Unix socket), watches the connection
for the mirror's end (EOF: the mirror never writes, so "readable" can only mean it closed),
and retries every second while the mirror is down, logging ``mirror_channel_down`` and
``mirror_channel_up`` once per change. While down, every record is a counted drop and every
connection that tried to send owes a marker, so the restarted mirror hears of each gap.
What the dead mirror had accepted but not yet read is lost without a count here: the new
mirror sees it as a jump in a chunk's ``offset``.

A new mirror knows nothing of the connections already open: a trunk that lives for days
would stay unobserved after one mirror restart. So the tap keeps each live connection's
lifecycle records (opened, handshakes, keys: a few KiB, encoded once) until :meth:`forget`,
and after every (re)connect it replays them, before that connection's next record, through
the same owed-marker path as a drop: the new mirror learns the connection, its legs and keys,
then meets its next chunk at an offset past zero, reports the bytes it never saw as a gap and
frames again from the next message.

Everything here runs on the relay's one trio thread: the data path and :meth:`run` never
race, so no lock.
"""

from __future__ import annotations

import errno
import os
import socket
import time
from collections.abc import Sequence

import trio

from siptap.log import LogWriter, get_logger
from siptap.sansio.chunk_records import (
    CHUNK_HEADER,
    FROM_ACCEPTED,
    KIND_CHUNK,
    KIND_CLOSED,
    MAGIC,
    VERSION,
    Dropped,
    encode,
    without_chain,
)

__all__ = ["DEFAULT_BUFFER", "MAX_ENDED_OWING", "MirrorTap", "set_send_buffer"]

# 4 MiB asked; an unprivileged siptap is often capped to 208 KiB by net.core.wmem_max (README,
# [mirror] channel_buffer): with the default cap the channel holds ~110 SIP-sized records,
# a few milliseconds of a busy trunk, which is why the README says to raise the cap.
DEFAULT_BUFFER = 4 * 1024 * 1024
# One connect attempt a second costs nothing while the mirror is down, and the
# supervisor's restart back-off starts at 0.5 s, so a restarted mirror is found
# within about a second of listening. Every record in that second is a counted drop.
RETRY_INTERVAL = 1.0  # between connection attempts while the mirror is down
# A full channel drops thousands of records a second: one line per drop would
# flood the very log the operator reads to find out why; ten seconds of counts in one
# line is README's "at most every 10 s".
WARN_INTERVAL = 10.0  # at most one mirror_channel_dropped line per this many seconds

# Ended connections whose last records still wait for room or for a mirror: each holds its
# encoded lifecycle records (a few KiB with certificates), so 4,096 is at most some 20 MiB
# while a mirror is down; beyond it the oldest are given up (counted: abandoned).
MAX_ENDED_OWING = 4096
# How often the flusher tries again while something is owed and the channel is connected but
# full: 20 ms is well under the mirror's batch interval, and the loop stops once nothing is owed.
FLUSH_INTERVAL = 0.02

# Linux's SO_SNDBUFFORCE (asm-generic/socket.h; the socket module does not name it): SO_SNDBUF
# without the net.core.wmem_max cap, for a process with CAP_NET_ADMIN (root).
SO_SNDBUFFORCE = 32


def set_send_buffer(sock: socket.socket, size: int) -> None:
    """Ask for a send buffer of ``size`` bytes: past ``net.core.wmem_max`` when privileged.

    SO_SNDBUF is silently capped at ``wmem_max`` (208 KiB on many systems: a few milliseconds of
    a busy trunk), which made ``[mirror] channel_buffer`` a wish unless the operator also
    raised a sysctl. A process with CAP_NET_ADMIN (siptap run as root, as labs often do) gets
    what the config says; any other falls back to the capped request, as before."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_SNDBUFFORCE, size)
    except OSError:  # EPERM without the capability; any other refusal: the plain request too
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size)


# A send refused for lack of room: drop the record, keep the connection. EMSGSIZE is one
# datagram larger than the whole send buffer: that record can never fit, the next may.
_FULL = frozenset({errno.EAGAIN, errno.EWOULDBLOCK, errno.ENOBUFS, errno.EMSGSIZE})

# Bound once at import: the data path calls it per chunk, and a module global is one
# lookup where CHUNK_HEADER.pack would be two.
_pack_header = CHUNK_HEADER.pack


class MirrorTap:
    """Sends every record of one relay worker to the mirror process at ``path``.

    The data path is :meth:`chunk`, :meth:`record` and :meth:`forget` (synchronous, never
    waiting, never raising); :meth:`run` keeps the channel connected. ``buffer_size`` is the
    SO_SNDBUF asked for (the kernel caps it: see the module's docstring)."""

    def __init__(self, path: str | os.PathLike[str], *, buffer_size: int = DEFAULT_BUFFER,
                 log: LogWriter | None = None, retry_interval: float = RETRY_INTERVAL,
                 warn_interval: float = WARN_INTERVAL) -> None:
        # A path, not a socket: the tap (re)connects by name, so a restarted mirror that
        # binds the same path (the supervisor gives it the same --channel) is found again.
        self.path = os.fspath(path)
        # Applied to every socket it connects (_connect), before connect.
        self.buffer_size = buffer_size
        self.log = log if log is not None else get_logger("siptap")
        # Parameters for the tests (test_tap.py: a fast retry, a long warn interval); production
        # uses the defaults.
        self.retry_interval = retry_interval
        self.warn_interval = warn_interval
        # The connected socket, or None while the mirror is down: the data path's only test.
        self._sock: socket.socket | None = None
        # conn -> [chunks from accepted, bytes from accepted, chunks from dialled, bytes from
        # dialled, other records (always 0: lifecycle records are held, not dropped)] dropped
        # since its last marker, then [5]: how many of its lifecycle records a new mirror has
        # been sent again (-1: no replay owed), [6]: the index in _announced of its first
        # held (refused) lifecycle record not yet sent (-1: none); only connections owing a
        # marker, a replay or held records.
        self._owed: dict[int, list[int]] = {}
        # Connections that ended (forget) while owing, oldest first: the flusher sends what they
        # owe; their _owed and _announced entries stay until it has. A dict as an ordered set.
        self._ended_owing: dict[int, None] = {}
        # Ended connections given up at MAX_ENDED_OWING: what they owed never reached a mirror.
        self.abandoned = 0
        # Set when something is owed that no data-path record may come to carry (a drop, an
        # ended connection, a reconnect): wakes the flusher.
        self._owing_changed = trio.Event()
        # conn -> its lifecycle records so far (encoded), for a replay to the next mirror; from
        # its first record until forget().
        self._announced: dict[int, list[bytes]] = {}
        # Totals only grow: the metric is a counter, and the mirror_channel_dropped line gives
        # differences from them.
        self.dropped_records = 0  # every record refused (chunks and lifecycle records)
        self.dropped_bytes = 0  # relayed bytes whose chunks were refused
        self._lost = trio.Event()  # the data path saw the mirror go (EPIPE): run() reconnects
        self._dropping = trio.Event()  # a drop since the last report: run() logs it
        # Why the data path gave the socket up (strerror of its failed send): _watch reads it
        # for the mirror_channel_down line, since the data path itself never logs.
        self._down_reason: str | None = None

    # -- the data path -------------------------------------------------------------------------

    def chunk(self, conn: int, direction: int, offset: int, data: bytes) -> None:
        """Bytes just relayed on ``conn`` in ``direction`` (chunk_records.FROM_ACCEPTED or
        FROM_DIALLED), ``offset`` being data[0]'s position in that direction's stream."""
        # One attribute read into a local: the test and the send below use the same socket
        # even if it is taken away (EPIPE) in between; None means the mirror is down.
        sock = self._sock
        # Short-circuit order matters: a connection that owes nothing pays one dict test; one
        # that owes a marker sends it first (_settle), and only if it went does the chunk
        # follow, so the mirror never sees bytes from beyond a hole before the hole itself.
        if sock is not None and (conn not in self._owed or self._settle(sock, conn)):
            try:
                # Header and bytes in one send: on SOCK_SEQPACKET a send is one record, delivered
                # whole or refused whole (no partial writes to resume, unlike a stream socket).
                # time.time(), wall clock: the mirror's pcap and HEP timestamps are absolute times.
                # Non-blocking, so a full buffer raises EAGAIN at once instead of waiting for room.
                sock.send(_pack_header(MAGIC, VERSION, KIND_CHUNK, direction, conn, offset, time.time()) + data)
                return
            except OSError as exc:
                # Then counted as a drop below, like a record sent while the mirror was down.
                self._refused(exc)
        # From here the record is dropped: it is counted for this connection's marker (its
        # first drop adds the connection to _owed) and in the totals.
        counts = self._owed.get(conn)
        if counts is None:
            counts = self._owed[conn] = [0, 0, 0, 0, 0, -1, -1]
        # Index 0/1 for the accepted side's chunks and bytes, 2/3 for the dialled side's.
        side = 0 if direction == FROM_ACCEPTED else 2
        counts[side] += 1
        counts[side + 1] += len(data)
        self.dropped_records += 1
        # Relayed payload bytes only: the headers of records never sent are not the operator's
        # concern, the missing stretch of SIP is.
        self.dropped_bytes += len(data)
        # The data path only sets Events (no-ops when already set): the log line is written by
        # _report_drops, off the data path, at most every warn_interval, and the flusher sends
        # the marker as soon as there is room, even if this connection never sends again.
        self._dropping.set()
        self._owing_changed.set()

    def record(self, conn: int, encoded: bytes) -> None:
        """A lifecycle record of ``conn`` (opened, handshake, keys, closed), already
        ``chunk_records.encode``-d; held (sent before the connection's next record, or by the
        flusher) when it does not fit, never dropped."""
        # Kept for a replay to the next mirror whether or not it goes through now: the replay
        # must tell the whole connection. The closed record too (forget() follows at once).
        announced = self._announced.get(conn)
        if announced is None:
            announced = self._announced[conn] = [encoded]
        else:
            announced.append(encoded)
        # Same shape as chunk(), kept inline rather than shared: chunk() runs per relayed chunk,
        # and a shared helper would be one more call on that path.
        sock = self._sock
        if sock is not None and (conn not in self._owed or self._settle(sock, conn)):
            try:
                # Lifecycle records go the same way as chunks, in the same order with them: the mirror
                # must see a connection's opened record before its first chunk, and its closed record
                # after its last.
                sock.send(encoded)
            except OSError as exc:
                self._refused(exc)
            else:
                # Sent whole: a replay to a later mirror needs no peer chain (the handshake_done
                # line was rendered), so a handshake record is kept without it
                # (chunk_records.without_chain): idle connections would otherwise hold their
                # certificates' DER here for hours. A held record stays whole until it is sent.
                announced[-1] = without_chain(encoded)
                return
        counts = self._owed.get(conn)
        if counts is None:
            counts = self._owed[conn] = [0, 0, 0, 0, 0, -1, -1]
        # Held, not dropped: it is in _announced already (appended above). The first held
        # record marks where _settle resumes; later ones follow it there (every record of an
        # owing connection comes through here until _settle succeeds, so the held records are
        # exactly _announced's tail from that index). A pending replay covers it already.
        if counts[5] < 0 and counts[6] < 0:
            counts[6] = len(self._announced[conn]) - 1
        self._owing_changed.set()

    def forget(self, conn: int) -> None:
        """``conn`` has ended (called right after its closed record, and again, harmlessly,
        on the session's way out): its state goes, unless it still owes the mirror a marker,
        held records or a replay, which the flusher then sends when it can."""
        if conn in self._owed:
            # Already waiting (the session's second call): nothing changes.
            if conn in self._ended_owing:
                return
            self._ended_owing[conn] = None
            # Bounded: with the mirror down for long on a busy box, every ending connection
            # owes; the oldest is given up rather than memory growing without limit.
            if len(self._ended_owing) > MAX_ENDED_OWING:
                oldest = next(iter(self._ended_owing))
                del self._ended_owing[oldest]
                self._owed.pop(oldest, None)
                self._announced.pop(oldest, None)
                self.abandoned += 1
            self._owing_changed.set()
            return
        # Owing nothing: without this pop every connection's records would stay for the life
        # of the worker, a slow leak on a busy box.
        self._announced.pop(conn, None)

    def _settle(self, sock: socket.socket, conn: int) -> bool:
        """Send ``conn``'s Dropped marker; True once it went (the record may follow)."""
        # The marker carries what was dropped since the last marker went (or since the first
        # drop), per direction: the mirror reports them as one gap and skips ahead.
        counts = self._owed[conn]
        # A new mirror first hears the connection itself, or the marker (and the chunk) would
        # be about a connection it does not know. counts[5] counts the replayed records, so a
        # replay the channel refused half-way resumes where it stopped, without duplicates.
        records = self._announced.get(conn, ())
        if counts[5] >= 0:
            if not self._send_records(sock, records, counts, 5, len(records)):
                return False
            # No marker after a replay, whatever was dropped meanwhile: this mirror never saw
            # the stream, so a marker could only place the hole wrongly (it counts bytes, not
            # where they were). The next chunk's offset places it exactly: the mirror reports
            # everything before it as one gap ("joined mid-stream"). The drops stay counted
            # in the totals (metric, mirror_channel_dropped).
            self._settled(conn)
            return True
        # Held lifecycle records first (they do not touch the byte streams, so their place
        # relative to the dropped chunks does not matter to framing), except a trailing closed
        # record: the mirror ends the connection on it, so it must come after the marker.
        # counts[6] advances per record sent, so a refusal half-way resumes without duplicates.
        if counts[6] >= 0:
            end = len(records)
            if records[end - 1][3] == KIND_CLOSED:  # the fourth byte is the record kind
                end -= 1
            if not self._send_records(sock, records, counts, 6, end):
                return False
        # A marker only for a hole in the streams; zeroed once sent, so that a refused closed
        # record after it does not send it twice (and later drops start a new one).
        if counts[0] or counts[2]:
            try:
                sock.send(encode(Dropped(conn, time.time(), *counts[:5])))
            except OSError as exc:
                self._refused(exc)
                # The marker did not fit (or the mirror is gone): the caller drops its chunk too and
                # adds it to these counts; the marker is tried again before the next record.
                return False
            counts[0] = counts[1] = counts[2] = counts[3] = 0
        # Only once the marker is in the channel: a refused marker leaves the counts in place,
        # and the chunk that was to follow is dropped and added to them, so the next marker
        # tells the whole hole. tests/relay/test_tap.py,
        # test_full_channel_drops_count_and_a_marker_precedes_the_next_record, pins this.
        if counts[6] >= 0 and not self._send_records(sock, records, counts, 6, len(records)):
            return False
        self._settled(conn)
        return True

    def _send_records(self, sock: socket.socket, records: Sequence[bytes], counts: list[int], slot: int,
                      end: int) -> bool:
        """Send ``records[counts[slot]:end]``, advancing ``counts[slot]`` per record that went,
        so that a refusal half-way resumes there without duplicates; False at a refusal."""
        try:
            while counts[slot] < end:
                sock.send(records[counts[slot]])
                counts[slot] += 1
        except OSError as exc:
            self._refused(exc)
            return False
        return True

    def _settled(self, conn: int) -> None:
        """``conn`` owes nothing any more; an ended one is forgotten for good."""
        del self._owed[conn]
        if conn in self._ended_owing:
            del self._ended_owing[conn]
            self._announced.pop(conn, None)

    def _refused(self, exc: OSError) -> None:
        """A failed send: the channel is full (drop, nothing else), or the mirror is gone."""
        # Full: the socket stays. The next record may fit as soon as the mirror reads.
        if exc.errno in _FULL:
            return
        # EPIPE/ECONNRESET: the mirror died; anything else is as fatal to this socket. The
        # socket itself is closed by run(), which may be waiting on it right now.
        # From this line every record is a counted drop (the data path tests _sock), and every
        # connection that sends meanwhile will owe the next mirror a marker.
        self._sock = None
        self._down_reason = os.strerror(exc.errno) if exc.errno else str(exc)
        # Wakes run()'s _watch, which logs mirror_channel_down and starts reconnecting; the
        # data path itself never closes or reconnects.
        self._lost.set()

    # -- figures -------------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        # True only while a socket is connected; a full channel is still connected. Read by the
        # mirror_channel_dropped line and by tests.
        return self._sock is not None

    @property
    def owing(self) -> int:
        """Connections that owe the mirror a Dropped marker or a replay of their records."""
        # Shown in the mirror_channel_dropped line: how many connections will reach the mirror
        # with a gap marker first.
        return len(self._owed)

    def dropped_totals(self) -> dict[str, int]:
        """For ``siptap_mirror_channel_dropped_total{kind}``: records and relayed bytes dropped."""
        # A snapshot, read by the app for its mirror_channel_closed line at exit: the tap
        # itself touches no prometheus object.
        return {"records": self.dropped_records, "bytes": self.dropped_bytes}

    # -- connection management, off the data path ------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Keep the channel connected until cancelled; started (``nursery.start``) after the
        first attempt, so a mirror that is already listening is connected before traffic."""
        async with trio.open_nursery() as nursery:
            # The drop reporter lives as long as run(): drops happen whether the channel is up
            # (full) or down (no mirror), so it must not be tied to one connection.
            nursery.start_soon(self._report_drops)
            # And the flusher: what is owed goes out as soon as there is room.
            nursery.start_soon(self._flush_owed)
            # Log a state change once: a mirror down for an hour must not log 3,600 lines. Also
            # set after a lost connection, so the first failed reconnect is not logged again.
            down_logged = False
            # started: task_status.started() was called; it may be called only once, and it is
            # called after the first attempt whatever its outcome (the app does not wait for a
            # mirror that is down).
            started = False
            # Until cancelled (the app's shutdown): each pass is one connection, from the connect
            # to the mirror's end.
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
                    # Sleeping here, off the data path: records meanwhile are counted drops, the relay
                    # does not notice that the mirror is down.
                    await trio.sleep(self.retry_interval)
                    continue
                # A new Event per connection: trio Events cannot be cleared, and the old one is set
                # if the last connection ended with a failed send.
                self._lost = trio.Event()
                # This mirror knows none of the live connections: each replays its lifecycle
                # records before its next record (_settle). Marked before the data path can
                # send on the new socket (the line below), and from the start (0) even if an
                # earlier replay to a dead mirror had got half-way.
                for conn in self._announced:
                    owed = self._owed.get(conn)
                    if owed is None:
                        self._owed[conn] = [0, 0, 0, 0, 0, 0, -1]
                    else:
                        owed[5] = 0
                # The data path starts sending on this line: the Event above was made first, so a
                # refusal on the new socket sets the Event that _watch is about to wait on.
                self._sock = sock
                # The flusher replays at once, not at each connection's next record.
                self._owing_changed.set()
                self.log.info("mirror_channel_up", path=self.path,
                              # The buffer logged is what the kernel granted (doubled, and capped by wmem_max), not
                              # what was asked: an operator sees at once whether the cap applies.
                              buffer=sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF))
                if not started:
                    # After the first connect either way: the app's nursery.start returns, and the worker
                    # goes on to bind its listeners (and then says "ready").
                    task_status.started()
                    started = True
                try:
                    reason = await self._watch(sock)
                finally:
                    # Taken from the data path before the close: a send on the closed socket would
                    # fail with EBADF, which _refused would take for a second loss of the mirror.
                    self._sock = None
                    # trio's rule for closing a descriptor it may be waiting on: notify first, so no task
                    # is left parked on a descriptor number the kernel may hand out again.
                    trio.lowlevel.notify_closing(sock)
                    sock.close()
                self.log.warning("mirror_channel_down", path=self.path, reason=reason,
                                 detail="records are dropped and counted until the mirror listens again")
                # No sleep before the next attempt: it costs one syscall, and if the mirror is not
                # back yet (the supervisor waits at least 0.5 s) that failed attempt sleeps above.
                down_logged = True

    def _connect(self) -> socket.socket:
        # SOCK_SEQPACKET: connection-oriented (the mirror's end shows as EOF, EPIPE here) and
        # record-preserving (one send, one record), with ordered delivery; the channel bench
        # (bench/results/2026-12-02-channel.md) chose it over a shared-memory ring.
        # CLOEXEC: no program this process might exec inherits the channel.
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        try:
            # The data path's sends must never wait: a full buffer must raise EAGAIN, not block
            # the relay's only thread. Set on the socket itself, so plain socket.send obeys it.
            sock.setblocking(False)
            # Before connecting: the buffer is the channel's capacity.
            set_send_buffer(sock, self.buffer_size)
            # Non-blocking, so it never waits: on a Unix socket connect either completes at
            # once or fails; EAGAIN (the mirror's accept backlog is full) is not a connect in
            # progress as on TCP, just one more failed attempt, retried like a refusal.
            sock.connect(self.path)
        # Every failed attempt closes its socket: while the mirror is down this runs every
        # second, and a leaked descriptor per attempt would exhaust the worker's fd limit.
        except BaseException:
            sock.close()
            raise
        return sock

    async def _watch(self, sock: socket.socket) -> str:
        """Wait until the mirror is gone: its EOF, or a send that failed on the data path."""
        async with trio.open_nursery() as nursery:
            # A list the tasks append to: the first reason wins, since the first task to finish
            # cancels the other before it can append.
            reason: list[str] = []

            async def eof() -> None:
                # The mirror sends nothing, so readable means EOF or an error: it has gone.
                # wait_readable on the plain socket the data path sends on: learning that it became
                # readable (EOF) needs no trio socket object, and no recv (there is nothing to read).
                await trio.lowlevel.wait_readable(sock)
                # The mirror's end shows as EOF whether it exited cleanly, crashed or was SIGKILLed:
                # the kernel closes its sockets either way (test_a_killed_mirror_is_counted_as_drops...).
                reason.append("the mirror closed the channel")
                nursery.cancel_scope.cancel()

            # A send on the data path saw EPIPE/ECONNRESET before the EOF was noticed here.
            async def refused() -> None:
                await self._lost.wait()
                reason.append(self._down_reason or "send failed")
                nursery.cancel_scope.cancel()

            # Both watched at once: EOF comes first when the mirror exits cleanly or is killed
            # while idle; a failed send comes first when it dies while the relay is sending.
            nursery.start_soon(eof)
            nursery.start_soon(refused)
        return reason[0]

    async def _flush_owed(self) -> None:
        """Send what connections owe (markers, held records, replays) without waiting for their
        next record: the only way for a connection that has ended, and the prompt way after a
        reconnect or a burst of drops. Off the data path; never blocks it."""
        while True:
            await self._owing_changed.wait()
            self._owing_changed = trio.Event()
            while self._owed:
                sock = self._sock
                if sock is None:
                    # Down: the reconnect sets _owing_changed; nothing can go until then.
                    break
                # Oldest first (dict order: first owed, first tried); stop at the first refusal,
                # the channel is full (or gone) for the others too.
                for conn in list(self._owed):
                    if conn in self._owed and not self._settle(sock, conn):
                        break
                if self._owed:
                    # Full: room comes as the mirror reads. A short sleep rather than
                    # wait_writable: a SEQPACKET socket can poll writable while one large record
                    # still does not fit, which would spin.
                    await trio.sleep(FLUSH_INTERVAL)

    async def _report_drops(self) -> None:
        """``mirror_channel_dropped`` at the first drop, then at most once per warn_interval,
        with the counts since the last line: the data path only sets an Event."""
        # The totals at the last line: each line gives the counts since the previous one and
        # the totals, so a reader need not difference lines.
        reported_records = reported_bytes = 0
        while True:
            await self._dropping.wait()
            # Replaced before the log line: a drop during the sleep below sets the new Event, so
            # the next line comes right after the sleep, not at the drop after that.
            self._dropping = trio.Event()
            self.log.warning("mirror_channel_dropped", records=self.dropped_records - reported_records,
                             bytes=self.dropped_bytes - reported_bytes, records_total=self.dropped_records,
                             # connected tells the two causes apart: True, the mirror is slow (channel full);
                             # False, it is gone (see mirror_channel_down).
                             bytes_total=self.dropped_bytes, connected=self.connected, owing=len(self._owed),
                             # Ended connections whose held records never reached a mirror (MAX_ENDED_OWING).
                             abandoned=self.abandoned)
            reported_records, reported_bytes = self.dropped_records, self.dropped_bytes
            # The rate limit: the first drop is reported at once (the operator needs to know
            # now), and later ones wait until this sleep ends.
            await trio.sleep(self.warn_interval)

    def close(self) -> None:
        """Close the channel at the worker's end (after :meth:`run` was cancelled): the
        mirror sees EOF after the last record it was sent."""
        # The app calls this once every session has handed over its closed record, then
        # cancels run(), whose finally closes the same socket again: a no-op for a closed
        # Python socket. The mirror reads what is queued, then sees EOF: channel_lost.
        sock, self._sock = self._sock, None
        # None: the mirror was down at the end; nothing to close.
        if sock is not None:
            sock.close()


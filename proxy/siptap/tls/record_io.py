"""Moves TLS records between an OpenSSL connection's memory BIOs and a trio transport.

:class:`RecordIO` is the choke point of :class:`~siptap.tls.stream.OpenSSLStream` (after
trio/_ssl.py's ``_retry``): every OpenSSL call the stream makes runs in :meth:`RecordIO.retry`
(handshake) or :meth:`RecordIO.retry_records` (read, write), and those two loops, with
:meth:`~RecordIO.flush` and the fill behind them, are the only code that touches the
transport. The stream keeps the TLS state (handshake, close_notify, trio's Stream API);
RecordIO keeps the byte-moving state (outbox, the two direction locks, the fill count, EOF).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import trio
from OpenSSL import SSL

from siptap.sansio.tls_hello import ClientHelloSniffer
from siptap.tls import descriptor_io
from siptap.tls.records import RecordLayer
from siptap.tls.stream_locks import FifoMutex

# The three rules this module keeps (they moved here from the stream's docstring with the
# code that keeps them):
# * after each OpenSSL call, new outgoing bytes are moved synchronously (no await in
#   between) from the BIO into the outbox, so records keep the order in which OpenSSL
#   produced them even when two tasks (the relay's two pumps) use the stream at once;
#   whoever holds the send lock sends the whole outbox, and a caller returns only once its
#   own bytes were handed to the transport (flush);
# * when OpenSSL wants input, one task reads the transport into the incoming BIO (the
#   receive lock); a task that waited for that lock while another task did the read just
#   retries, since the other task's bytes may be what it needed (the fill count, _fill);
# * errors flush first, so the peer gets OpenSSL's alert rather than a bare EOF (retry,
#   retry_records).
# What breaks without each: bad_record_mac at the peer; a relay that hangs with the answer
# it waits for already in the BIO; handshake failures that the peer's log shows as "EOF".
# tests/tls/test_stream.py::test_large_transfer_both_ways_concurrently runs both pumps
# through one stream at once, the shape the first two rules exist for.

T = TypeVar("T")
A = TypeVar("A")

_RECEIVE_SIZE = descriptor_io.READ_SIZE  # one transport read: several records when the peer is fast
_CLOSE_NOTIFY_TIMEOUT = 2.0  # how long an alert or close_notify may take to leave before we give up on it
# (An alert is a few dozen bytes: a peer that still reads takes it within a round trip, so
# the bound only ever bites on a peer that stopped reading, and then it caps how long a
# teardown holds the relay's task.)
_RECORD_SIZE = 16384  # one TLS record's plaintext at most: no bigger buffer is useful per recv
# (It also sizes PortableRecords' per-read allocation, which pyOpenSSL makes at the size asked.)


class RecordIO:
    """One TLS connection's byte mover: OpenSSL's BIOs on one side, the transport on the other."""

    # Slots: one per leg of every proxied connection, kept for as long as the
    # connection idles (hours on a trunk); no instance dict per leg.
    __slots__ = (
        "_fill_count", "_outbox", "_read_error", "_recv_lock", "_send_lock", "_socket_drained",
        "conn", "records", "sniffer", "socket", "transport_eof", "transport_stream", "yielded",
    )

    def __init__(self, conn: SSL.Connection, records: RecordLayer, transport_stream: trio.abc.Stream,
                 sniffer: ClientHelloSniffer | None) -> None:
        self.conn = conn
        self.records = records
        self.transport_stream = transport_stream
        # The server leg's ClientHello sniffer, fed from _fill because that is where the
        # client's raw bytes pass; the stream sets it to None once the handshake succeeded,
        # so an idle connection does not keep the client's hello.
        self.sniffer = sniffer
        # A trio SocketStream is driven through its file descriptor (see _fill).
        # Exactly SocketStream, not a subclass: a subclass may override send_all/receive_some,
        # and going around them to the descriptor would skip what it added.
        self.socket = transport_stream.socket if type(transport_stream) is trio.SocketStream else None
        self._outbox: list[bytes] = []
        # FifoMutex, not trio.Lock: free in the common uncontended case (no scheduling
        # point), a few slots instead of ~0.4 KiB per lock (see siptap.tls.stream_locks).
        self._send_lock = FifoMutex()
        self._recv_lock = FifoMutex()
        self._fill_count = 0  # transport reads so far; see _fill
        self._read_error: SSL.Error | None = None  # met while draining; raised by the next read
        # Public because it crosses the module line: only the transport read down here
        # knows whether it waited, and only OpenSSLStream.receive_some, which resets it per
        # call, knows whether it still owes its caller a checkpoint.
        self.yielded = False  # did this receive_some reach a scheduling point? see OpenSSLStream.receive_some
        self.transport_eof = False  # latched: the transport said EOF once, it will not say more
        self._socket_drained = False  # the last read left the socket empty: wait before the next

    def renew_bios(self) -> None:
        """Fresh BIOs once the handshake is done (see :meth:`FastRecords.renew_bios`)."""
        self.records.renew_bios(eof=self.transport_eof)

    # -- the transport: a trio SocketStream through its descriptor (siptap.tls.descriptor_io),
    #    any other Stream through its methods ---------------------------------------------

    async def _transport_send(self, data: bytes) -> None:
        # Called only by flush, under _send_lock: one writer at a time, so two outboxes
        # can never interleave on the wire even when a write has to wait for room.
        if self.socket is None:
            await self.transport_stream.send_all(data)
        else:
            await descriptor_io.write_all(self.socket, data)

    # -- moving bytes between OpenSSL's BIOs and the transport --------------------------------

    async def flush(self) -> None:
        # OpenSSL writes whole records into the outgoing BIO: take them synchronously, so
        # records keep OpenSSL's order even when the two pumps use this stream at once.
        # Why that is enough: a TLS record carries a sequence number (in its MAC or AEAD
        # nonce), so records must reach the peer in the order OpenSSL made them, or the peer
        # fails with bad_record_mac. Order is decided here, at the take, and the take runs
        # in the same synchronous step as the OpenSSL call that produced the records (no
        # await between them in retry/retry_records/encrypt), so no other task's records
        # can slip in between; after that the outbox is FIFO and one task drains it.
        output = self.records.take_output()
        if output:
            self._outbox.append(output)
        if not self._outbox:
            return
        await self._send_lock.acquire()  # no scheduling point when uncontended (the common case)
        try:
            # Whoever holds the lock sends everything queued, including what the other task
            # appended while we were awaiting the transport (hence the loop). So when a waiter
            # gets the lock and finds the outbox empty, its bytes already went out in order:
            # "returned from flush" always means "my records were handed to the transport".
            outbox = self._outbox
            while outbox:
                # Everything queued goes in one transport write: a send_all's batch of
                # records (see encrypt) plus whatever the other pump queued meanwhile.
                # The list is emptied before the await, so what is appended during the
                # write is a new round of this loop, never sent twice or dropped.
                data = outbox[0] if len(outbox) == 1 else b"".join(outbox)
                outbox.clear()
                await self._transport_send(data)
        finally:
            self._send_lock.release()

    async def flush_quietly(self) -> None:
        """Best effort, used on the error path: the alert matters, a dead peer does not."""
        # Bounded, because the error path often runs against a peer that stopped reading:
        # an alert stuck behind a full socket buffer must not hold the caller for ever.
        try:
            with trio.move_on_after(_CLOSE_NOTIFY_TIMEOUT):
                await self.flush()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    async def _fill(self) -> None:
        # Both pumps can want input at once (a receive waiting for data, a send whose TLS 1.3
        # post-handshake message needs the peer's answer). One reads the transport; the other
        # waits on the lock, and when it gets it, sees the count moved: new bytes went into the
        # BIO meanwhile, which may be all it needed, so it returns to retry its OpenSSL call
        # instead of blocking on a second read that might never be answered.
        # Without that check, the waiter would read again although its record may already
        # sit in the BIO: a relay whose peer sent one message and now waits for the answer
        # would hang. The count is read before the lock, since what matters is "did a read
        # complete after I found the BIO short", not "after I got the lock".
        count = self._fill_count
        await self._recv_lock.acquire()
        try:
            if count != self._fill_count:
                return
            # After EOF the transport has nothing more to say; asking again would block on a
            # socket that will only ever report EOF (or raise on a closed descriptor).
            # The transport read is inline, not a helper coroutine: an idle pump sits here, and
            # each coroutine of its await chain is ~0.24 KiB per leg of every idle connection.
            sock = self.socket
            if self.transport_eof:
                data = b""
            elif sock is None:
                received = await self.transport_stream.receive_some(_RECEIVE_SIZE)
                self.yielded = True  # a Stream's receive_some is always a checkpoint
                # A Stream may return a bytearray (trio's memory streams do); the record layer
                # and the ClientHello sniffer take bytes.
                data = received if type(received) is bytes else bytes(received)
            else:
                # Under _recv_lock: one reader at a time, so _socket_drained describes the
                # last read of this socket, whoever's task made it.
                data, waited = await descriptor_io.read(sock, wait_first=self._socket_drained)
                if waited:
                    self.yielded = True
                # b"" (EOF) counts as drained too; EOF is latched below and never read again.
                self._socket_drained = len(data) < _RECEIVE_SIZE
            sniffer = self.sniffer
            if sniffer is not None and not sniffer.done:
                # During the handshake the server leg keeps a copy of what the client sent,
                # for failure reasons OpenSSL cannot give (what the client offered).
                sniffer.feed(data)
            if data:
                # Appended, never replaced: the BIO may still hold the start of a record
                # that this read completes.
                self.records.give_input(data)
            else:
                # EOF: tell OpenSSL, so its next read fails with "unexpected EOF" or returns the
                # close_notify it already has, instead of "want read" for ever.
                self.transport_eof = True
                self.conn.bio_shutdown()
            # Counted also at EOF: a waiting task must retry its OpenSSL call, which now
            # reports the end, rather than read a transport that has ended.
            self._fill_count += 1
        finally:
            self._recv_lock.release()

    async def retry(self, fn: Callable[..., T], *args: object) -> T:
        """``fn`` (handshake, shutdown) until it stops raising WantReadError."""
        # The loop every OpenSSL call runs in (trio's _retry, minus WantWrite: memory BIOs
        # never fill). Order matters: call, then flush whatever the call produced (also when
        # it wants input: a handshake step writes its flight and then waits for the answer,
        # which will not come before the flight is sent), then read if asked, then call again.
        while True:
            want_read = False
            try:
                result = fn(*args)
            except SSL.WantReadError:
                want_read = True
            except SSL.Error:
                # A failed call usually left an alert in the outgoing BIO: send it before
                # raising, so the peer learns why instead of seeing the connection drop.
                await self.flush_quietly()
                raise
            # Also on success: the handshake's last call (the server's Finished) produces
            # the flight that completes it for the peer, and returns without wanting more.
            await self.flush()
            if not want_read:
                return result
            await self._fill()

    async def retry_records(self, fn: Callable[[A], T | None], arg: A) -> T:
        """The data-path twin of :meth:`retry`: ``fn`` says "want read" by returning None."""
        # A separate loop so the data path raises no exception for "want read" (see
        # siptap.tls.records); the order of call, flush, fill is the same as in retry.
        # ``fn`` is read_buffered or encrypt: each does as many OpenSSL calls as it can
        # without new input, synchronously, so one pass of this loop is one transport
        # operation's worth of records, whatever the number of records.
        while True:
            try:
                result = fn(arg)
            except SSL.Error:
                # Quietly: the SSL.Error is what the caller must see, not a transport error
                # met while sending the alert that goes with it.
                await self.flush_quietly()
                raise
            # Flush before returning, also after a read: a TLS 1.3 KeyUpdate asks for ours,
            # and a read's output left in the BIO would wait for the next send, which on a
            # one-way stream may never come. With nothing to send this is one cheap check.
            await self.flush()
            if result is not None:
                return result
            # "Want read" is reached with everything OpenSSL produced already sent (the
            # flush above): waiting for the peer with our own request still queued would
            # deadlock a handshake step or a TLS 1.3 exchange.
            await self._fill()

    # -- the data path's OpenSSL calls, one transport operation's worth at a time ------------

    def read_buffered(self, size: int) -> bytes | None:
        """All the plaintext OpenSSL can give without new input (up to ``size``), or None.

        Called by retry_records like a single read. One transport read often delivers
        several records (a peer that writes a burst, or messages that queued while we were
        busy); returning them one per receive_some would cost a checkpoint (a scheduler
        pass) and, in the relay, one forwarded write per record instead of one per burst.
        """
        error = self._read_error
        if error is not None:
            # The previous call returned plaintext and kept this for now: raise it where the
            # caller's handling of a failed read is (close_notify, EOF, broken).
            self._read_error = None
            raise error
        records = self.records
        # Never more than ``size`` in total: what does not fit stays inside OpenSSL (or the
        # BIO) for the next call, which test_receive_stops_at_max_bytes_and_keeps_the_rest pins.
        first = records.read(min(size, _RECORD_SIZE))
        if first is None or len(first) >= size or not records.may_have_plaintext():
            return first  # "want read", full, or nothing more buffered: the common single record
        chunks = [first]
        total = len(first)
        while total < size:
            try:
                more = records.read(min(size - total, _RECORD_SIZE))
            except SSL.Error as exc:
                # A failure after plaintext (typically the peer's close_notify, sent in the
                # same TCP segment as its last message): hand out the plaintext first, as a
                # one-record-per-call loop would have, and raise this on the next call. Any
                # alert OpenSSL wrote stays in the outgoing BIO for retry_records' flush.
                self._read_error = exc
                # Pinned by test_close_notify_behind_data_comes_after_the_data and
                # test_eof_without_close_notify_behind_data (tests/tls/test_stream_batching.py).
                break
            if more is None:  # the rest is an incomplete record: the transport must bring it
                break
            chunks.append(more)
            total += len(more)
            if not records.may_have_plaintext():
                break
        return b"".join(chunks)

    def encrypt(self, data: memoryview) -> int | None:
        """Encrypt as much of ``data`` as OpenSSL takes without new input, into the outbox.

        How many bytes were taken, or None for none ("want read"); retry_records then
        flushes once, so a burst leaves in one transport write rather than one per record.
        """
        records = self.records
        outbox = self._outbox
        taken = 0
        total = len(data)
        while taken < total:
            # Partial writes are on: each call encrypts at most one record. The caller
            # retries with data[taken:], which ACCEPT_MOVING_WRITE_BUFFER allows.
            written = records.write(data[taken:])
            if written is None:
                break  # TLS 1.3 may want the peer's answer first: flush, fill, come back
            taken += written
            # Take each record out of the BIO as it is made: a memory BIO never shrinks, so
            # letting a batch accumulate there would keep a batch-sized buffer per idle leg.
            # Synchronous, like flush's take: records stay in OpenSSL's order in the outbox.
            output = records.take_output()
            if output:
                outbox.append(output)
        # Progress is returned even when it is partial: retry_records flushes what was made
        # before anything waits, and send_all comes back with the rest. None only when not
        # one byte was taken, which is what sends retry_records to the transport for input.
        # test_send_all_leaves_in_one_transport_write and test_a_large_send_is_written_in_
        # batches (tests/tls/test_stream_batching.py) count the writes this makes.
        return taken or None

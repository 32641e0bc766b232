"""A trio Stream that speaks TLS through pyOpenSSL over memory BIOs.

Theory of operation (after trio/_ssl.py). OpenSSL never touches the socket: bytes from the
transport are written into the connection's incoming BIO, and whatever OpenSSL wants to send
appears in its outgoing BIO. Every OpenSSL call goes through :meth:`_retry` (handshake,
shutdown) or its data-path twin :meth:`_retry_records` (read, write), the only code that
moves bytes between the BIOs and the transport:

* after each call, new outgoing bytes are moved synchronously (no await in between) from the
  BIO into ``_outbox``, so records keep the order in which OpenSSL produced them even when two
  tasks (the relay's two pumps) use the stream at once; whoever holds ``_send_lock`` sends the
  whole outbox, and a caller returns only once its own bytes were handed to the transport;
* when OpenSSL wants input, one task reads the transport into the incoming BIO (``_recv_lock``); a task
  that waited for that lock while another task did the read just retries, since the other
  task's bytes may be what it needed (``_fill_count``);
* errors flush first, so the peer gets OpenSSL's alert rather than a bare EOF.

One transport operation per burst, not per record: a receive_some returns every record that
the transport already delivered (up to ``max_bytes``), and a send_all encrypts its data
(64 KiB at a time) before one transport write. On a relay whose peer writes faster than one
message per wake-up, a burst then costs one read, one checkpoint and one forwarded write,
where a record at a time cost a checkpoint and a write per record.

The data path calls OpenSSL through the record layer of :mod:`siptap.tls.records` (the cffi
fast path, or pyOpenSSL's public API with ``portable_records=True``) and drives a trio
SocketStream through its non-blocking descriptor (:mod:`siptap.tls.descriptor_io`): both save
per-message costs that dominated a relayed SIP message. Partial writes are enabled: an
SSL_write takes at most one 16 KiB record, so the send path loops, and retries "want read"
with the rest of the same buffer. With memory BIOs
WantWriteError does not occur. Renegotiation is disabled by the contexts, so after the
handshake a send never needs a read, and a read produces output only for TLS 1.3
post-handshake messages (session tickets, key updates).

Cancellation: as with trio.SSLStream, a send_all or handshake cancelled while its records are
half written to the transport leaves the stream broken (the peer would see a truncated
record), so whoever cancels one should close it rather than use it again.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Callable
from typing import TypeVar

import trio
from OpenSSL import SSL

from siptap.errors import HandshakeFailed
from siptap.sansio.handshake import FailureReason, HandshakeFacts
from siptap.sansio.tls_hello import ClientHelloSniffer
from siptap.tls import descriptor_io
from siptap.tls.facts import CertificateCache, ContextData, HandshakeObserver, classify_failure, collect_facts
from siptap.tls.records import RecordLayer, records_for
from siptap.tls.stream_locks import DirectionGuard, FifoMutex

T = TypeVar("T")
A = TypeVar("A")

_RECEIVE_SIZE = descriptor_io.READ_SIZE  # one transport read: several records when the peer is fast
_CLOSE_NOTIFY_TIMEOUT = 2.0  # how long an alert or close_notify may take to leave before we give up on it
_RECORD_SIZE = 16384  # one TLS record's plaintext at most: no bigger buffer is useful per recv
_SEND_BATCH = 65536  # plaintext encrypted per transport write: four full records, or a burst of SIP


class OpenSSLStream(trio.abc.Stream):
    """TLS over any trio transport stream; ``facts`` holds the handshake's record once done,
    until the owner calls :meth:`discard_facts`.

    ``observer`` is the handshake's scratchpad (the client's hello, the first verification
    failure): it is there until the handshake succeeds, and stays after a failure.
    ``close_notify_received`` and ``eof_without_close_notify`` tell the relay how the peer ended.
    """

    def __init__(
        self,
        transport_stream: trio.abc.Stream,
        context: SSL.Context,
        *,
        server_side: bool,
        leg: str,
        server_hostname: str | None = None,
        check_hostname: bool = False,
        send_sni: bool = True,
        portable_records: bool = False,
    ) -> None:
        self.transport_stream = transport_stream
        observer = HandshakeObserver(leg=leg, role="server" if server_side else "client")
        self.observer: HandshakeObserver | None = observer
        # No socket: pyOpenSSL then gives the connection a pair of memory BIOs, and every byte
        # goes through _flush/_fill below. The observer rides as app data so the context's
        # callbacks (verify, key log) can find this connection's scratchpad.
        conn = SSL.Connection(context, None)
        conn.set_app_data(observer)
        if server_side:
            conn.set_accept_state()
            observer.sniffer = ClientHelloSniffer()
        else:
            conn.set_connect_state()
            if server_hostname and send_sni and not _is_ip(server_hostname):
                conn.set_tlsext_host_name(server_hostname.encode("idna"))
            if check_hostname and server_hostname:
                observer.expected_hostname = server_hostname
        self._conn = conn
        data = context.get_app_data()  # see siptap.tls.contexts: the context's cache and limits
        self._certificates: CertificateCache | None = None
        if isinstance(data, ContextData):
            self._certificates = data.certificates
            observer.version_limit = data.version_limit
        self._records: RecordLayer = records_for(conn, portable=portable_records)
        # A trio SocketStream is driven through its file descriptor (see _transport_receive).
        # Exactly SocketStream, not a subclass: a subclass may override send_all/receive_some,
        # and going around them to the descriptor would skip what it added.
        self._socket = transport_stream.socket if type(transport_stream) is trio.SocketStream else None
        self._outbox: list[bytes] = []
        self._send_lock = FifoMutex()
        self._recv_lock = FifoMutex()
        # A trio.Lock (not FifoMutex) for the handshake: it is held across the whole handshake,
        # which both pumps may start at once (send_all and receive_some handshake implicitly).
        # Dropped once the handshake succeeded, to save its memory on idle connections.
        self._handshake_lock: trio.Lock | None = trio.Lock()
        self._fill_count = 0  # transport reads so far; see _fill
        self._read_error: SSL.Error | None = None  # met while draining; raised by the next read
        self._yielded = False  # did this receive_some reach a scheduling point? see receive_some
        self._transport_eof = False  # latched: the transport said EOF once, it will not say more
        self._socket_drained = False  # the last read left the socket empty: wait before the next
        self._send_guard = DirectionGuard("sending on this TLS stream")
        self._recv_guard = DirectionGuard("receiving on this TLS stream")
        self._handshake_done = False
        self._handshake_error: HandshakeFailed | None = None
        self._closed = False
        self._sent_close_notify = False
        self.facts: HandshakeFacts | None = None
        self.close_notify_received = False
        self.eof_without_close_notify = False

    # -- the transport: a trio SocketStream through its descriptor (siptap.tls.descriptor_io),
    #    any other Stream through its methods ---------------------------------------------

    async def _transport_receive(self) -> bytes:
        # Called only by _fill, under _recv_lock: one reader at a time, so _socket_drained
        # describes the last read of this socket, whoever's task made it.
        sock = self._socket
        if sock is None:
            data = await self.transport_stream.receive_some(_RECEIVE_SIZE)
            self._yielded = True  # a Stream's receive_some is always a checkpoint
            # A Stream may return a bytearray (trio's memory streams do); the record layer and
            # the ClientHello sniffer take bytes.
            return data if type(data) is bytes else bytes(data)
        data, waited = await descriptor_io.read(sock, wait_first=self._socket_drained)
        if waited:
            self._yielded = True
        # b"" (EOF) counts as drained too; _fill latches EOF and never reads again.
        self._socket_drained = len(data) < _RECEIVE_SIZE
        return data

    async def _transport_send(self, data: bytes) -> None:
        # Called only by _flush, under _send_lock: one writer at a time, so two outboxes
        # can never interleave on the wire even when a write has to wait for room.
        if self._socket is None:
            await self.transport_stream.send_all(data)
        else:
            await descriptor_io.write_all(self._socket, data)

    # -- moving bytes between OpenSSL's BIOs and the transport --------------------------------

    async def _flush(self) -> None:
        # OpenSSL writes whole records into the outgoing BIO: take them synchronously, so
        # records keep OpenSSL's order even when the two pumps use this stream at once.
        # Why that is enough: a TLS record carries a sequence number (in its MAC or AEAD
        # nonce), so records must reach the peer in the order OpenSSL made them, or the peer
        # fails with bad_record_mac. Order is decided here, at the take, and the take runs
        # in the same synchronous step as the OpenSSL call that produced the records (no
        # await between them in _retry/_retry_records/_encrypt), so no other task's records
        # can slip in between; after that the outbox is FIFO and one task drains it.
        output = self._records.take_output()
        if output:
            self._outbox.append(output)
        if not self._outbox:
            return
        await self._send_lock.acquire()  # no scheduling point when uncontended (the common case)
        try:
            # Whoever holds the lock sends everything queued, including what the other task
            # appended while we were awaiting the transport (hence the loop). So when a waiter
            # gets the lock and finds the outbox empty, its bytes already went out in order:
            # "returned from _flush" always means "my records were handed to the transport".
            outbox = self._outbox
            while outbox:
                # Everything queued goes in one transport write: a send_all's batch of
                # records (see _encrypt) plus whatever the other pump queued meanwhile.
                # The list is emptied before the await, so what is appended during the
                # write is a new round of this loop, never sent twice or dropped.
                data = outbox[0] if len(outbox) == 1 else b"".join(outbox)
                outbox.clear()
                await self._transport_send(data)
        finally:
            self._send_lock.release()

    async def _flush_quietly(self) -> None:
        """Best effort, used on the error path: the alert matters, a dead peer does not."""
        # Bounded, because the error path often runs against a peer that stopped reading:
        # an alert stuck behind a full socket buffer must not hold the caller for ever.
        try:
            with trio.move_on_after(_CLOSE_NOTIFY_TIMEOUT):
                await self._flush()
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
            data = b"" if self._transport_eof else await self._transport_receive()
            observer = self.observer
            if observer is not None and observer.sniffer is not None and not observer.sniffer.done:
                # During the handshake the server leg keeps a copy of what the client sent,
                # for failure reasons OpenSSL cannot give (what the client offered).
                observer.sniffer.feed(data)
            if data:
                # Appended, never replaced: the BIO may still hold the start of a record
                # that this read completes.
                self._records.give_input(data)
            else:
                # EOF: tell OpenSSL, so its next read fails with "unexpected EOF" or returns the
                # close_notify it already has, instead of "want read" for ever.
                self._transport_eof = True
                self._conn.bio_shutdown()
            # Counted also at EOF: a waiting task must retry its OpenSSL call, which now
            # reports the end, rather than read a transport that has ended.
            self._fill_count += 1
        finally:
            self._recv_lock.release()

    async def _retry(self, fn: Callable[..., T], *args: object) -> T:
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
                await self._flush_quietly()
                raise
            # Also on success: the handshake's last call (the server's Finished) produces
            # the flight that completes it for the peer, and returns without wanting more.
            await self._flush()
            if not want_read:
                return result
            await self._fill()

    async def _retry_records(self, fn: Callable[[A], T | None], arg: A) -> T:
        """The data-path twin of :meth:`_retry`: ``fn`` says "want read" by returning None."""
        # A separate loop so the data path raises no exception for "want read" (see
        # siptap.tls.records); the order of call, flush, fill is the same as in _retry.
        # ``fn`` is _read_buffered or _encrypt: each does as many OpenSSL calls as it can
        # without new input, synchronously, so one pass of this loop is one transport
        # operation's worth of records, whatever the number of records.
        while True:
            try:
                result = fn(arg)
            except SSL.Error:
                # Quietly: the SSL.Error is what the caller must see, not a transport error
                # met while sending the alert that goes with it.
                await self._flush_quietly()
                raise
            # Flush before returning, also after a read: a TLS 1.3 KeyUpdate asks for ours,
            # and a read's output left in the BIO would wait for the next send, which on a
            # one-way stream may never come. With nothing to send this is one cheap check.
            await self._flush()
            if result is not None:
                return result
            # "Want read" is reached with everything OpenSSL produced already sent (the
            # flush above): waiting for the peer with our own request still queued would
            # deadlock a handshake step or a TLS 1.3 exchange.
            await self._fill()

    # -- the data path's OpenSSL calls, one transport operation's worth at a time ------------

    def _read_buffered(self, size: int) -> bytes | None:
        """All the plaintext OpenSSL can give without new input (up to ``size``), or None.

        Called by _retry_records like a single read. One transport read often delivers
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
        records = self._records
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
                # alert OpenSSL wrote stays in the outgoing BIO for _retry_records' flush.
                self._read_error = exc
                break
            if more is None:  # the rest is an incomplete record: the transport must bring it
                break
            chunks.append(more)
            total += len(more)
            if not records.may_have_plaintext():
                break
        return b"".join(chunks)

    def _encrypt(self, data: memoryview) -> int | None:
        """Encrypt as much of ``data`` as OpenSSL takes without new input, into the outbox.

        How many bytes were taken, or None for none ("want read"); _retry_records then
        flushes once, so a burst leaves in one transport write rather than one per record.
        """
        records = self._records
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
            # Synchronous, like _flush's take: records stay in OpenSSL's order in the outbox.
            output = records.take_output()
            if output:
                outbox.append(output)
        return taken or None

    # -- handshake ---------------------------------------------------------------------------

    async def do_handshake(self, timeout: float | None = None) -> HandshakeFacts:
        """Complete the handshake or raise HandshakeFailed with a classified reason."""
        self._check_open()
        lock = self._handshake_lock
        if lock is None:  # done: what the lock would have done is a checkpoint
            await trio.lowlevel.checkpoint()
        else:
            await self._handshake_under(lock, timeout)
        if self.facts is None:
            raise RuntimeError("the handshake's facts were discarded")
        return self.facts

    async def _handshake_under(self, lock: trio.Lock, timeout: float | None) -> None:
        # The lock is passed in, not read from self: the winner sets self._handshake_lock
        # to None on success while other tasks may still be queued on this very lock.
        async with lock:
            # A task that queued behind a failed handshake gets the same failure: OpenSSL's
            # connection is unusable after it, and a retry would fail with a worse reason.
            if self._handshake_error is not None:
                raise self._handshake_error
            if not self._handshake_done:
                # The timeout is taken inside the lock: a second task that waited for the lock
                # does not start a clock of its own, it finds the outcome (done or the error).
                with trio.move_on_after(timeout if timeout is not None else float("inf")) as scope:
                    await self._handshake_once()
                if scope.cancelled_caught:
                    # A timeout is final too (the peer is half way through a handshake we
                    # abandoned); the state string says how far it got, for the log.
                    state = self._conn.get_state_string().decode("ascii", "replace")
                    self._handshake_error = HandshakeFailed(
                        FailureReason.TIMEOUT.value, f"handshake not complete after {timeout:g} s (state: {state})"
                    )
                    raise self._handshake_error

    def discard_facts(self) -> None:
        """Drop the handshake's record once its owner has logged and published it.

        A proxied connection can idle for hours and nothing after the handshake reads its
        facts (peer chain summaries, key-log lines, the client's offer): a few KiB per leg."""
        self.facts = None

    async def _handshake_once(self) -> None:
        observer = self.observer
        assert observer is not None
        try:
            await self._retry(self._conn.do_handshake)
        except SSL.Error as exc:
            failure = classify_failure(exc, observer)
            if failure.reason == FailureReason.PEER_CLOSED.value:
                # Where it stopped tells "refused our offer silently" from "went away".
                state = self._conn.get_state_string().decode("ascii", "replace")
                failure = HandshakeFailed(failure.reason, f"{failure.detail} (TLS state: {state})")
            # Remembered: a task that waited on the handshake lock raises the same outcome
            # instead of driving a failed connection again (OpenSSL would give a different,
            # less useful error the second time).
            self._handshake_error = failure
            raise self._handshake_error from None
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            # Our own aclose() during the handshake is not the peer's doing: report it as
            # closed (and record no failure, so nobody logs a handshake error for it).
            if self._closed:
                raise trio.ClosedResourceError("TLS stream was closed during the handshake") from None
            self._handshake_error = HandshakeFailed(
                FailureReason.PEER_CLOSED.value, f"transport failed during the handshake: {exc}"
            )
            raise self._handshake_error from None
        # Done first, before anything that could fail below: a failure after OpenSSL
        # completed the handshake must not make the data path handshake again.
        self._handshake_done = True
        self.facts = collect_facts(self._conn, observer, self._certificates)
        # The observer's work is done: no callback that writes to it runs after the handshake
        # (renegotiation is off; TLS 1.3 tickets and key updates neither verify nor log keys).
        self._conn.set_app_data(None)
        self.observer = None
        self._handshake_lock = None  # a task waiting on it holds its own reference
        # The handshake's BIO buffers (certificate flights) would otherwise stay allocated for
        # the life of the connection; see FastRecords.renew_bios. Safe here: no await since the
        # handshake's last flush, so no other task is between an OpenSSL call and its flush.
        self._records.renew_bios(eof=self._transport_eof)

    async def _ensure_handshake(self) -> None:
        """Implicit handshake for send/receive: a failure is a broken stream, as trio expects."""
        if not self._handshake_done:
            try:
                await self.do_handshake()
            except HandshakeFailed as exc:
                raise trio.BrokenResourceError(f"TLS handshake failed: {exc}") from exc

    # -- trio.abc.Stream ---------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise trio.ClosedResourceError("TLS stream is closed")

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        with self._send_guard:
            self._check_open()
            await self._ensure_handshake()
            if self._sent_close_notify:
                raise trio.ClosedResourceError("send_eof() was called; cannot send more")
            if not data:
                await trio.lowlevel.checkpoint()
                return
            # A view, so batches and retries slice without copying the caller's bytes.
            view = memoryview(data)
            total = len(view)
            offset = 0
            try:
                # Batches of _SEND_BATCH: a SIP burst (at most the relay's 64 KiB receive)
                # is one batch, one transport write; a bulk send is encrypted as it is
                # written instead of all at once into memory. A batch cut mid-record is
                # harmless: record boundaries carry no meaning in a byte stream.
                while offset < total:
                    offset += await self._retry_records(self._encrypt, view[offset:offset + _SEND_BATCH])
            except SSL.Error as exc:
                # Not retryable: OpenSSL's connection is in an error state, and part of the
                # data may have left. trio's Stream contract says broken, so broken it is.
                raise trio.BrokenResourceError(f"TLS send failed: {exc}") from exc
            finally:
                # Release now, not at garbage collection: a bytearray with a live export
                # cannot be resized, and the relay's callers may reuse their buffers.
                view.release()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        # One coroutine, not a wrapper around another: every idle pump sits in here, and each
        # frame of its await chain is a few hundred bytes per connection.
        # A cancelled caller must fail before OpenSSL hands out plaintext, not after: bytes
        # taken from OpenSSL and then dropped by a Cancelled are gone from the stream. So the
        # cancellation point comes first and the closing checkpoint below is shielded, the
        # order trio's SSLStream uses (checkpoint_if_cancelled / cancel_shielded_checkpoint).
        await trio.lowlevel.checkpoint_if_cancelled()
        self._yielded = False
        with self._recv_guard:
            self._check_open()
            await self._ensure_handshake()
            size = max_bytes if max_bytes is not None else _RECEIVE_SIZE
            if size < 1:
                raise ValueError("max_bytes must be >= 1")
            # No "read the transport first when the BIO is empty" shortcut: OpenSSL's record
            # layer may hold bytes it already took from the BIO, which only recv() can tell.
            # When the BIO is empty that first OpenSSL call is a cheap "want read", and the
            # transport read that follows comes before any checkpoint (see _fill).
            try:
                data = await self._retry_records(self._read_buffered, size)
            except SSL.ZeroReturnError:
                # The peer's close_notify: a clean end of its direction.
                self.close_notify_received = True
                data = b""
            # The transport ended without close_notify. OpenSSL reports that as a SysCallError
            # (1.1 style) or an SSL.Error "unexpected eof while reading" (3.x); either is an
            # orderly EOF for the relay if and only if we saw the transport end. Anything else
            # is a broken stream.
            except SSL.SysCallError as exc:
                if not self._transport_eof:
                    raise trio.BrokenResourceError(f"TLS receive failed: {exc}") from exc
                self.eof_without_close_notify = True
                data = b""
            except SSL.Error as exc:
                if not (self._transport_eof and "unexpected eof" in str(exc).lower()):
                    raise trio.BrokenResourceError(f"TLS receive failed: {exc}") from exc
                self.eof_without_close_notify = True
                data = b""
        if not self._yielded:
            # Served from bytes already buffered (or EOF already seen): still a scheduling
            # point, as trio streams promise, so a busy relay cannot starve other tasks.
            # Shielded: ``data`` is already out of OpenSSL, and a Cancelled raised here would
            # lose it (the cancellation point was at the top).
            await trio.lowlevel.cancel_shielded_checkpoint()
        return data

    async def send_eof(self) -> None:
        """Send close_notify: TLS's 'I am done sending'. The peer may still send to us."""
        with self._send_guard:
            self._check_open()
            await self._ensure_handshake()
            if self._sent_close_notify:
                await trio.lowlevel.checkpoint()
                return
            # Set before the await below: a second send_eof, or a send_all racing in after
            # the guard is released, must not put data or a second alert after close_notify.
            self._sent_close_notify = True
            # SSL_shutdown writes close_notify into the outgoing BIO and returns without waiting
            # for the peer's: that is TLS's half-close, and not waiting is what lets the other
            # direction carry on. Hence no _retry: "want read" does not apply here.
            try:
                self._conn.shutdown()
            except SSL.Error as exc:
                raise trio.BrokenResourceError(f"TLS shutdown failed: {exc}") from exc
            # Not quietly: the relay half-closes with this, and a close_notify that could not
            # leave must surface as a broken stream so the other direction is torn down too.
            await self._flush()

    async def wait_send_all_might_not_block(self) -> None:
        with self._send_guard:
            self._check_open()
            await self.transport_stream.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        """Send close_notify if we can within a short bound, then close the transport."""
        if self._closed:
            await trio.lowlevel.checkpoint()
            return
        self._closed = True  # first: a task still in send_all/receive_some fails from here on
        # The transport is closed in ``finally``: a cancelled or failed close_notify must
        # still free the descriptor, and trio's close wakes any task parked in
        # wait_readable/wait_writable on it with ClosedResourceError.
        try:
            # close_notify only after a completed handshake (before it, there is nothing to
            # close cleanly), and bounded: closing must not wait on a peer that stopped reading.
            if self._handshake_done and not self._sent_close_notify:
                self._sent_close_notify = True
                try:
                    self._conn.shutdown()
                except SSL.Error:
                    pass  # an OpenSSL already in error has nothing clean to say; just close
                await self._flush_quietly()
        finally:
            await self.transport_stream.aclose()

    @property
    def peer_closed(self) -> bool:
        return self.close_notify_received or self.eof_without_close_notify


@functools.lru_cache(maxsize=64)  # configured server names: a handful; a miss raises inside
def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name.strip("[]"))
    except ValueError:
        return False
    return True

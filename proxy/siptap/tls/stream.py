"""A trio Stream that speaks TLS through pyOpenSSL over memory BIOs.

:class:`OpenSSLStream` is a ``trio.abc.Stream`` (it passes trio's conformance suite,
``trio.testing.check_two_way_stream``, over memory streams, and over TCP sockets once a
subclass adds the checkpoint a fast socket send_all skips: see :mod:`siptap.tls.descriptor_io`)
with what the relay needs on top: an explicit :meth:`~OpenSSLStream.do_handshake` that raises
HandshakeFailed with a classified reason, the handshake's facts, and how the peer ended.

Cancellation: as with trio.SSLStream, a send_all or handshake cancelled while its records are
half written to the transport leaves the stream broken (the peer would see a truncated
record), so whoever cancels one should close it rather than use it again.
"""

from __future__ import annotations

import functools
import ipaddress

import trio
from cryptography import x509
from OpenSSL import SSL

from siptap.errors import HandshakeFailed
from siptap.sansio.handshake import FailureReason, HandshakeFacts, RawHandshake
from siptap.sansio.tls_hello import ClientHelloSniffer
from siptap.tls import descriptor_io
from siptap.tls.facts import (
    CertificateCache,
    ContextData,
    HandshakeObserver,
    certificate_summary,
    classify_failure,
    collect_handshake,
)
from siptap.tls.record_io import RecordIO
from siptap.tls.records import records_for
from siptap.tls.stream_locks import DirectionGuard

# Theory of operation (after trio/_ssl.py, which keeps its own in a comment like this one).
#
# OpenSSL never touches the socket: bytes from the transport are written into the
# connection's incoming BIO, and whatever OpenSSL wants to send appears in its outgoing BIO.
# Moving those bytes is the job of siptap.tls.record_io: every OpenSSL call this module
# makes runs inside RecordIO.retry (the handshake) or RecordIO.retry_records (read,
# write), which flush what the call produced and read the transport when OpenSSL asks, with
# the ordering and locking rules written there. This module keeps the TLS state around the
# byte mover: who may handshake and what a failed one leaves behind, what close_notify has been
# sent or received, and the guarantees trio's Stream API makes to its callers.
#
# One transport operation per burst, not per record: a receive_some returns every record
# that the transport already delivered (up to max_bytes), and a send_all encrypts its data
# (64 KiB at a time) before one transport write. On a relay whose peer writes faster than
# one message per wake-up, a burst then costs one read, one checkpoint and one forwarded
# write, where a record at a time cost a checkpoint and a write per record
# (tests/tls/test_stream_batching.py pins both halves).
#
# The data path calls OpenSSL through the record layer of siptap.tls.records (the cffi fast
# path, or pyOpenSSL's public API with portable_records=True) and drives a trio SocketStream
# through its non-blocking descriptor (siptap.tls.descriptor_io): both save per-message
# costs that dominated a relayed SIP message. Partial writes are enabled: an SSL_write takes
# at most one 16 KiB record, so the send path loops, and retries "want read" with the rest of
# the same buffer. With memory BIOs WantWriteError does not occur. Renegotiation is disabled
# by the contexts, so after the handshake a send never needs a read, and a read produces
# output only for TLS 1.3 post-handshake messages (session tickets, key updates).
#
# The states a stream goes through, and why each flag is separate:
# * handshake: _handshake_lock (held by whichever task drives it; both pumps may try at
#   once), then either _handshake_done with its record (handshake) and no observer, or _handshake_error,
#   which every later caller gets. The record can be discarded while done stays true, which is
#   why "done" is not "handshake is not None".
# * sending: _sent_close_notify is set by send_eof or aclose, before the alert leaves, so
#   nothing can be written after it; the receiving direction stays usable (TLS half-close,
#   which the relay uses to let the other direction finish).
# * receiving: close_notify_received or eof_without_close_notify, whichever came first,
#   tells the relay how the peer ended: close_notify is passed on as a half-close, a bare EOF (a
#   truncation, or a crashed peer) tears both legs down (relay/session.py).
# * closed: _closed is set first thing in aclose, so any later call fails as closed, and a
#   handshake the close interrupted is reported as closed rather than as the peer's failure.

_RECEIVE_SIZE = descriptor_io.READ_SIZE  # one transport read: several records when the peer is fast
_SEND_BATCH = 65536  # plaintext encrypted per transport write: four full records, or a burst of SIP
# Also the bound on what one send_all holds as ciphertext while a slow peer's socket has no
# room: a larger batch would make every stalled leg keep more memory, a smaller one would
# split the relay's biggest bursts (its receives are 64 KiB too) into several writes.


class OpenSSLStream(trio.abc.Stream):
    """TLS over any trio transport stream; ``handshake`` holds the handshake's record once
    done, raw (the peer chain as DER), until the owner calls :meth:`discard_facts`; ``facts``
    is that record summarised, on demand.

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
        # Public, as on trio.SSLStream: the relay reads the TCP addresses of the dialled leg
        # from it (relay/session.py), for the opened record and the pcap sink.
        self.transport_stream = transport_stream
        # One observer per connection: the context's callbacks are shared by every
        # connection made from it, so per-connection facts (the first verify error, the key
        # log lines, the expected hostname) need a home that the callback can find from the
        # SSL object alone: app data, below.
        observer = HandshakeObserver(leg=leg, role="server" if server_side else "client")
        self.server_side = server_side
        self.observer: HandshakeObserver | None = observer
        # No socket: pyOpenSSL then gives the connection a pair of memory BIOs, and every byte
        # goes through RecordIO's flush/fill. The observer rides as app data so the context's
        # callbacks (verify, key log) can find this connection's scratchpad.
        conn = SSL.Connection(context, None)
        conn.set_app_data(observer)
        # The role must be set before the first OpenSSL call: a socketless Connection has no
        # accept() or connect() to imply it, and do_handshake without it fails with
        # "connection type not set" (checked on this pyOpenSSL).
        if server_side:
            conn.set_accept_state()
            # Only the server side sees a ClientHello; a client knows its own offer. The
            # sniffer reads the raw bytes because pyOpenSSL offers no way to read what a
            # refused client offered (its suites, versions) once the handshake has failed.
            observer.sniffer = ClientHelloSniffer()
        else:
            conn.set_connect_state()
            # No SNI for an IP literal: RFC 6066 allows only host names there. send_sni is
            # the route's switch to leave SNI out altogether (ClientTlsSettings.send_sni).
            # idna: a non-ASCII name goes on the wire as its A-label form.
            if server_hostname and send_sni and not _is_ip(server_hostname):
                conn.set_tlsext_host_name(server_hostname.encode("idna"))
            # Checked in the context's verify callback (siptap.tls.contexts), not by
            # OpenSSL's own host check, so a mismatch becomes a policy failure with the
            # certificate's subject in it rather than a bare "certificate verify failed".
            if check_hostname and server_hostname:
                observer.expected_hostname = server_hostname
        self._conn = conn
        # The certificate cache lives on the context, so a reload (new context) starts a new
        # cache and connections of one context share it; the version limit rides along so a
        # tls13_only_client reason can name what limits this leg. A context not built by
        # siptap.tls.contexts has neither: the facts are then computed uncached.
        data = context.get_app_data()  # see siptap.tls.contexts: the context's cache and limits
        self._certificates: CertificateCache | None = None
        if isinstance(data, ContextData):
            self._certificates = data.certificates
            observer.version_limit = data.version_limit
            if data.request_ocsp and not server_side:
                conn.request_ocsp()  # status_request: the server may staple its OCSP response
        self._record_io = RecordIO(conn, records_for(conn, portable=portable_records), transport_stream,
                                observer.sniffer)
        # A trio.Lock (not FifoMutex) for the handshake: it is held across the whole handshake,
        # which both pumps may start at once (send_all and receive_some handshake implicitly).
        # Dropped once the handshake succeeded, to save its memory on idle connections.
        self._handshake_lock: trio.Lock | None = trio.Lock()
        # Guards for trio's Stream contract (one task per direction), kept apart from
        # RecordIO's locks: those serialise the two directions' transport I/O inside a call
        # that is allowed; these reject a call that is not (two concurrent send_all calls).
        self._send_guard = DirectionGuard("sending on this TLS stream")
        self._recv_guard = DirectionGuard("receiving on this TLS stream")
        self._handshake_done = False
        self._handshake_error: HandshakeFailed | None = None
        self._closed = False
        self._sent_close_notify = False
        self.handshake: RawHandshake | None = None
        # The server's stapled OCSP response (client side, when the context asked for one),
        # for siptap.tls.ocsp_check; kept apart from the facts, which the mirror publishes.
        self.ocsp_staple: bytes | None = None
        self.close_notify_received = False
        self.eof_without_close_notify = False

    # -- handshake ---------------------------------------------------------------------------

    async def do_handshake(self, timeout: float | None = None) -> HandshakeFacts:
        """Complete the handshake or raise HandshakeFailed with a classified reason; the
        facts with the peer chain summarised (the tools' and tests' view)."""
        await self.complete_handshake(timeout)
        facts = self.facts
        assert facts is not None  # complete_handshake returned a record, so it is there
        return facts

    async def complete_handshake(self, timeout: float | None = None) -> RawHandshake:
        """As :meth:`do_handshake`, the record raw: what the relay hands over, no certificate
        parsed or summarised (that is the mirror's work, issue 16 item 6)."""
        self._check_open()
        lock = self._handshake_lock
        if lock is None:  # done: what the lock would have done is a checkpoint
            await trio.lowlevel.checkpoint()
        else:
            await self._handshake_under(lock, timeout)
        # A RuntimeError, not HandshakeFailed: the handshake succeeded, and asking for facts
        # after discard_facts is the caller's mistake (test_handshake_records_are_let_go).
        if self.handshake is None:
            raise RuntimeError("the handshake's facts were discarded")
        return self.handshake

    @property
    def facts(self) -> HandshakeFacts | None:
        """The handshake's record with the peer chain summarised (through the context's
        certificate cache when it has one), made on each call: the routing table's and the
        tools' view; None before the handshake and once discarded."""
        record = self.handshake
        if record is None:
            return None
        cache = self._certificates
        if cache is not None:
            return record.facts(cache.summary)
        return record.facts(lambda der: certificate_summary(x509.load_der_x509_certificate(der)))

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
                # cancelled_caught is true only for this scope's own deadline: an outer
                # cancellation passes through as Cancelled and records no error, which leaves
                # the stream half way through a handshake; its owner is cancelling and will
                # close it (see "Cancellation" in the module docstring).
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
        self.handshake = None

    async def _handshake_once(self) -> None:
        observer = self.observer
        # Holds: we are under the handshake lock with neither done nor an error recorded,
        # and the observer is dropped only on the success that sets done.
        assert observer is not None
        try:
            await self._record_io.retry(self._conn.do_handshake)
        except SSL.Error as exc:
            # The observer is what turns OpenSSL's text into a reason: the exception alone
            # says "certificate verify failed" for an unknown CA, an expired certificate and
            # a refused allow-list alike; the callback recorded which (see classify_failure).
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
        self.handshake = collect_handshake(self._conn, observer)
        self.ocsp_staple = observer.ocsp_staple
        # The observer's work is done: no callback that writes to it runs after the handshake
        # (renegotiation is off; TLS 1.3 tickets and key updates neither verify nor log keys).
        self._conn.set_app_data(None)
        self.observer = None
        self._record_io.sniffer = None  # the observer's: let it go with the client's hello
        self._handshake_lock = None  # a task waiting on it holds its own reference
        # The handshake's BIO buffers (certificate flights) would otherwise stay allocated for
        # the life of the connection; see FastRecords.renew_bios. Safe here: no await since the
        # handshake's last flush, so no other task is between an OpenSSL call and its flush.
        self._record_io.renew_bios()

    def verified_chain(self) -> list[x509.Certificate]:
        """The peer's verified chain, leaf first, up to the trusted CA: what an OCSP check asks
        about. A resumed session has no verified chain (nothing was verified this time): then
        only the peer's certificate, which the session keeps; empty without a peer certificate."""
        chain = self._conn.get_verified_chain(as_cryptography=True)
        if chain:
            return list(chain)
        peer = self._conn.get_peer_certificate(as_cryptography=True)
        return [peer] if peer is not None else []

    async def _ensure_handshake(self) -> None:
        """Implicit handshake for send/receive: a failure is a broken stream, as trio expects."""
        # The relay always calls do_handshake itself, to log the classified reason; this is
        # for generic Stream users (trio's conformance suite sends and receives straight
        # away), for whom a Stream method may raise only trio's resource errors.
        if not self._handshake_done:
            try:
                await self.complete_handshake()
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
            # Nothing to send is still a checkpoint (trio's contract), and must not reach
            # OpenSSL: an SSL_write of 0 bytes fails, and pyOpenSSL reports it as
            # SysCallError "Unexpected EOF", which would break a healthy stream.
            if not data:
                await trio.lowlevel.checkpoint()
                return
            # A view, so batches and retries slice without copying the caller's bytes.
            view = memoryview(data)
            total = len(view)
            offset = 0
            record_io = self._record_io
            try:
                # Batches of _SEND_BATCH: a SIP burst (at most the relay's 64 KiB receive)
                # is one batch, one transport write; a bulk send is encrypted as it is
                # written instead of all at once into memory. A batch cut mid-record is
                # harmless: record boundaries carry no meaning in a byte stream.
                while offset < total:
                    offset += await record_io.retry_records(record_io.encrypt, view[offset:offset + _SEND_BATCH])
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
        record_io = self._record_io
        record_io.yielded = False
        with self._recv_guard:
            self._check_open()
            await self._ensure_handshake()
            size = max_bytes if max_bytes is not None else _RECEIVE_SIZE
            if size < 1:
                raise ValueError("max_bytes must be >= 1")
            # No "read the transport first when the BIO is empty" shortcut: OpenSSL's record
            # layer may hold bytes it already took from the BIO, which only recv() can tell.
            # When the BIO is empty that first OpenSSL call is a cheap "want read", and the
            # transport read that follows comes before any checkpoint (see RecordIO._fill).
            try:
                if self.eof_without_close_notify:
                    # Asked again after a bare EOF: OpenSSL is in an error state by now and would
                    # raise, but trio's Stream contract wants b"" again after end of stream.
                    data = b""
                else:
                    data = await record_io.retry_records(record_io.read_buffered, size)
            except SSL.ZeroReturnError:
                # The peer's close_notify: a clean end of its direction. OpenSSL answers every
                # later read the same way, so a repeated receive_some keeps returning b"", as
                # trio's Stream contract asks after end of stream.
                self.close_notify_received = True
                data = b""
            # The transport ended without close_notify. OpenSSL reports that as a SysCallError
            # (1.1 style) or an SSL.Error "unexpected eof while reading" (3.x); either is an
            # orderly EOF for the relay if and only if we saw the transport end. Anything else
            # is a broken stream.
            except SSL.SysCallError as exc:
                if not record_io.transport_eof:
                    raise trio.BrokenResourceError(f"TLS receive failed: {exc}") from exc
                self.eof_without_close_notify = True
                data = b""
            except SSL.Error as exc:
                if not (record_io.transport_eof and "unexpected eof" in str(exc).lower()):
                    raise trio.BrokenResourceError(f"TLS receive failed: {exc}") from exc
                self.eof_without_close_notify = True
                data = b""
            # OpenSSL is in an error state after the bare EOF, so a repeated receive_some
            # answers b"" from the flag above without asking it (test_stream.py pins both).
        if not record_io.yielded:
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
            # direction carry on. Hence no RecordIO.retry: "want read" does not apply here.
            try:
                self._conn.shutdown()
            except SSL.Error as exc:
                raise trio.BrokenResourceError(f"TLS shutdown failed: {exc}") from exc
            # Not quietly: the relay half-closes with this, and a close_notify that could not
            # leave must surface as a broken stream so the other direction is torn down too.
            await self._record_io.flush()

    async def wait_send_all_might_not_block(self) -> None:
        # Only the transport can make a send wait: OpenSSL writes into a memory BIO that grows.
        # The send guard makes this conflict with send_all, as trio's semantics ask. Unlike
        # trio.SSLStream it does not take RecordIO's send lock inside: if a receive's flush
        # (a TLS 1.3 post-handshake reply) is waiting for room on the same socket, two tasks
        # wait for it to be writable, which trio refuses with BusyResourceError. Nothing in
        # siptap calls this method, so that gap is left open.
        with self._send_guard:
            self._check_open()
            await self.transport_stream.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        """Send close_notify if we can within a short bound, then close the transport."""
        # Idempotent, as trio's AsyncResource contract asks: a second aclose (an owner's
        # cleanup after an earlier close) is a checkpoint, not an error.
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
                # Quietly, unlike send_eof: the caller is closing anyway, and a peer that is
                # already gone must not turn a close into an exception.
                await self._record_io.flush_quietly()
        finally:
            await self.transport_stream.aclose()

    @property
    def peer_closed(self) -> bool:
        return self.close_notify_received or self.eof_without_close_notify


@functools.lru_cache(maxsize=64)  # configured server names: a handful; a miss raises inside
def _is_ip(name: str) -> bool:
    # Brackets stripped: an IPv6 literal may be written URL-style ("[2001:db8::1]") in a
    # server name, and it must not go out as SNI either way.
    try:
        ipaddress.ip_address(name.strip("[]"))
    except ValueError:
        return False
    return True

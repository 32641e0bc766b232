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

The data path calls OpenSSL through the cffi bindings pyOpenSSL uses (:class:`_Records`) and
a trio SocketStream through its non-blocking descriptor: both save per-message costs that
dominated a relayed SIP message (see the classes' docstrings). Partial writes are enabled:
a write takes at most one 16 KiB record, so send_all loops and retries "want read" with the
same buffer. With memory BIOs WantWriteError does not
occur. Renegotiation is disabled by the contexts, so after the handshake a send never needs
a read, and a read produces output only for TLS 1.3 post-handshake messages.
"""

from __future__ import annotations

import errno
import functools
import ipaddress
import os
from collections.abc import Callable
from typing import Any, TypeVar

import trio
from OpenSSL import SSL

try:
    from OpenSSL._util import ffi as _ffi
    from OpenSSL._util import lib as _lib
except ImportError:  # pragma: no cover - a pyOpenSSL without the private bindings
    _ffi = _lib = None

from siptap.errors import HandshakeFailed
from siptap.sansio.handshake import FailureReason, HandshakeFacts
from siptap.sansio.tls_hello import ClientHelloSniffer
from siptap.tls.facts import CertificateCache, HandshakeObserver, classify_failure, collect_facts

T = TypeVar("T")

_RECEIVE_SIZE = 65536
_BIO_READ_SIZE = 65536
_CLOSE_NOTIFY_TIMEOUT = 2.0
_RECORD_SIZE = 16384  # one TLS record's plaintext at most: no bigger buffer is useful per recv


_SHARED: list[Any] = []


def _shared_buffer() -> Any:
    """One read buffer for every stream of the process: each call copies what it read out
    before returning, and trio runs one task at a time, so no two calls use it at once. A
    buffer per stream would cost 64 KiB per leg of every idle connection."""
    if not _SHARED:
        _SHARED.append(_ffi.new("char[]", _BIO_READ_SIZE))
    return _SHARED[0]


class _Records:
    """The four OpenSSL calls of the data path, without pyOpenSSL's per-call overhead.

    pyOpenSSL allocates a fresh buffer per read and turns every "want more input" into a
    raised WantReadError; on a relay that reads one record per SIP message that is a
    large share of the per-message cost. This calls the same OpenSSL functions through
    the cffi bindings pyOpenSSL itself uses, reports "want read" as ``None``, and hands
    every other failure to pyOpenSSL's own ``_raise_ssl_error``, so errors are exactly the
    exceptions pyOpenSSL raises. :class:`_PortableRecords` is the public-API fallback.
    """

    __slots__ = ("_buf", "_conn", "_from", "_into", "_raise", "_ssl")

    def __init__(self, conn: SSL.Connection) -> None:
        self._conn = conn
        self._ssl = conn._ssl
        self._into = conn._into_ssl
        self._from = conn._from_ssl
        self._raise = conn._raise_ssl_error
        self._buf = _shared_buffer()

    def read(self, size: int) -> bytes | None:
        """Plaintext (at most ``size`` bytes), or None when OpenSSL needs more input."""
        result = _lib.SSL_read(self._ssl, self._buf, min(size, _BIO_READ_SIZE))
        if result > 0:
            return _ffi.buffer(self._buf, result)[:]
        if _lib.SSL_get_error(self._ssl, result) == _lib.SSL_ERROR_WANT_READ:
            return None
        self._raise(self._ssl, result)
        raise SSL.Error("SSL_read failed without an error")  # pragma: no cover

    def write(self, data: memoryview) -> int | None:
        """Bytes of ``data`` taken (one record at most), or None when OpenSSL needs input."""
        with _ffi.from_buffer(data) as buf:
            result = _lib.SSL_write(self._ssl, buf, len(data))
        if result > 0:
            return result
        if _lib.SSL_get_error(self._ssl, result) == _lib.SSL_ERROR_WANT_READ:
            return None
        self._raise(self._ssl, result)
        raise SSL.Error("SSL_write failed without an error")  # pragma: no cover

    def take_output(self) -> bytes:
        """Everything OpenSSL wrote to the outgoing BIO (whole records), or b""."""
        pending = _lib.BIO_get_mem_data(self._from, _ffi.NULL)
        if pending <= 0:
            return b""
        chunks = []
        while pending > 0:
            n = _lib.BIO_read(self._from, self._buf, min(pending, _BIO_READ_SIZE))
            if n <= 0:
                break
            chunks.append(_ffi.buffer(self._buf, n)[:])
            pending -= n
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def give_input(self, data: bytes) -> None:
        self._conn.bio_write(data)

    def renew_bios(self, *, eof: bool) -> None:
        """Give the connection a fresh, empty pair of memory BIOs.

        A BIO_s_mem never shrinks: after the handshake each of the two holds a buffer the
        size of the largest flight it carried (certificates, CA names), about 13 KiB per
        proxied connection over both legs, kept for as long as the connection idles. Input
        not yet read by OpenSSL moves to the new incoming BIO (a client's first record can
        arrive with its Finished), and so does the end of input. SSL_set_bio frees the old
        pair; pyOpenSSL's own references are updated, since bio_write and bio_shutdown use them.
        """
        into = _lib.BIO_new(_lib.BIO_s_mem())
        out = _lib.BIO_new(_lib.BIO_s_mem())
        if into == _ffi.NULL or out == _ffi.NULL:  # pragma: no cover - out of memory: keep the old pair
            for bio in (into, out):
                if bio != _ffi.NULL:
                    _lib.BIO_free(bio)
            return
        for old, new in ((self._into, into), (self._from, out)):
            pending = _lib.BIO_get_mem_data(old, _ffi.NULL)
            while pending > 0:
                n = _lib.BIO_read(old, self._buf, min(pending, _BIO_READ_SIZE))
                if n <= 0:  # pragma: no cover - a memory BIO hands out what it reports
                    break
                _lib.BIO_write(new, self._buf, n)
                pending -= n
        if eof:
            _lib.BIO_set_mem_eof_return(into, 0)
        _lib.SSL_set_bio(self._ssl, into, out)
        self._conn._into_ssl = self._into = into
        self._conn._from_ssl = self._from = out


class _PortableRecords:
    """The same four operations through pyOpenSSL's public API only."""

    __slots__ = ("_conn",)

    def __init__(self, conn: SSL.Connection) -> None:
        self._conn = conn

    def read(self, size: int) -> bytes | None:
        try:
            return self._conn.recv(size)
        except SSL.WantReadError:
            return None

    def write(self, data: memoryview) -> int | None:
        try:
            return self._conn.send(data)
        except SSL.WantReadError:
            return None

    def take_output(self) -> bytes:
        chunks = []
        while True:
            try:
                chunks.append(self._conn.bio_read(_BIO_READ_SIZE))
            except SSL.WantReadError:
                break
        return b"".join(chunks)

    def give_input(self, data: bytes) -> None:
        self._conn.bio_write(data)

    def renew_bios(self, *, eof: bool) -> None:
        """Not possible through the public API: the BIOs keep their handshake-sized buffers."""


def _records(conn: SSL.Connection) -> _Records | _PortableRecords:
    if _lib is None:
        return _PortableRecords(conn)
    try:
        return _Records(conn)
    except AttributeError:  # pragma: no cover - private names moved
        return _PortableRecords(conn)


class _Guard:
    """Raises BusyResourceError when two tasks use one direction of the stream at once."""

    __slots__ = ("_held", "_what")

    def __init__(self, what: str) -> None:
        self._held = False
        self._what = what

    def __enter__(self) -> None:
        if self._held:
            raise trio.BusyResourceError(f"another task is already {self._what}")
        self._held = True

    def __exit__(self, *exc: object) -> None:
        self._held = False


class _Mutex:
    """A FIFO lock for the tasks of one trio run, taken without a scheduling point when free.

    trio.Lock costs about 0.4 KiB (the lock, its ParkingLot and the lot's OrderedDict), and a
    proxied connection has two streams with two locks each that are contended only when both
    pumps use one stream at the same moment. This one is two slots; its ParkingLot is made on
    the first contention. As in trio.Lock, release hands the lock straight to the first waiter.
    """

    __slots__ = ("_held", "_waiters")

    def __init__(self) -> None:
        self._held = False
        self._waiters: trio.lowlevel.ParkingLot | None = None

    async def acquire(self) -> None:
        if not self._held:
            self._held = True
            return
        if self._waiters is None:
            self._waiters = trio.lowlevel.ParkingLot()
        await self._waiters.park()  # woken by release() as the new holder

    def release(self) -> None:
        if self._waiters:
            self._waiters.unpark()
        else:
            self._held = False


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
    ) -> None:
        self.transport_stream = transport_stream
        observer = HandshakeObserver(leg=leg, role="server" if server_side else "client")
        self.observer: HandshakeObserver | None = observer
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
        certificates = context.get_app_data()  # see siptap.tls.contexts: the context's cache
        self._certificates = certificates if isinstance(certificates, CertificateCache) else None
        self._records = _records(conn)
        # A trio SocketStream is driven through its file descriptor (see _transport_receive).
        self._socket = transport_stream.socket if type(transport_stream) is trio.SocketStream else None
        self._outbox: list[bytes] = []
        self._send_lock = _Mutex()
        self._recv_lock = _Mutex()
        self._handshake_lock: trio.Lock | None = trio.Lock()  # dropped once the handshake succeeded
        self._fill_count = 0
        self._yielded = False
        self._transport_eof = False
        self._send_guard = _Guard("sending on this TLS stream")
        self._recv_guard = _Guard("receiving on this TLS stream")
        self._handshake_done = False
        self._handshake_error: HandshakeFailed | None = None
        self._closed = False
        self._sent_close_notify = False
        self.facts: HandshakeFacts | None = None
        self.close_notify_received = False
        self.eof_without_close_notify = False

    # -- the transport -----------------------------------------------------------------------
    #
    # For a trio SocketStream, reads and writes go straight to the non-blocking descriptor
    # and wait (wait_readable / wait_writable) only when it would block. trio's own socket
    # methods add a scheduling point after every call that did not wait; on a relay that
    # is a full pass of the event loop per forwarded message for nothing, since the pump's
    # next receive waits anyway. Fairness is kept by receive_some: a receive that did not
    # wait still ends in a checkpoint. Any other transport goes through its Stream methods.

    async def _transport_receive(self) -> bytes:
        sock = self._socket
        if sock is None:
            data = await self.transport_stream.receive_some(_RECEIVE_SIZE)
            self._yielded = True
            return data
        while True:
            fd = sock.fileno()
            if fd < 0:
                raise trio.ClosedResourceError("the socket was closed")
            try:
                return os.read(fd, _RECEIVE_SIZE)
            except BlockingIOError:
                pass
            except OSError as exc:
                raise _transport_error(exc) from exc
            await trio.lowlevel.wait_readable(sock)
            self._yielded = True

    async def _transport_send(self, data: bytes) -> None:
        sock = self._socket
        if sock is None:
            await self.transport_stream.send_all(data)
            return
        view = memoryview(data)
        try:
            while view:
                fd = sock.fileno()
                if fd < 0:
                    raise trio.ClosedResourceError("the socket was closed")
                try:
                    view = view[os.write(fd, view):]
                except BlockingIOError:
                    await trio.lowlevel.wait_writable(sock)
                except OSError as exc:
                    raise _transport_error(exc) from exc
        finally:
            view.release()

    # -- moving bytes between OpenSSL's BIOs and the transport --------------------------------

    async def _flush(self) -> None:
        # OpenSSL writes whole records into the outgoing BIO: take them synchronously, so
        # records keep OpenSSL's order even when the two pumps use this stream at once.
        output = self._records.take_output()
        if output:
            self._outbox.append(output)
        if not self._outbox:
            return
        await self._send_lock.acquire()  # no scheduling point when uncontended (the common case)
        try:
            outbox = self._outbox
            while outbox:
                data = outbox[0] if len(outbox) == 1 else b"".join(outbox)
                outbox.clear()
                await self._transport_send(data)
        finally:
            self._send_lock.release()

    async def _flush_quietly(self) -> None:
        """Best effort, used on the error path: the alert matters, a dead peer does not."""
        try:
            with trio.move_on_after(_CLOSE_NOTIFY_TIMEOUT):
                await self._flush()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    async def _fill(self) -> None:
        count = self._fill_count
        await self._recv_lock.acquire()
        try:
            if count != self._fill_count:
                return
            data = b"" if self._transport_eof else await self._transport_receive()
            observer = self.observer
            if observer is not None and observer.sniffer is not None and not observer.sniffer.done:
                observer.sniffer.feed(data)
            if data:
                self._records.give_input(data)
            else:
                self._transport_eof = True
                self._conn.bio_shutdown()
            self._fill_count += 1
        finally:
            self._recv_lock.release()

    async def _retry(self, fn: Callable[..., T], *args: object) -> T:
        """``fn`` (handshake, shutdown) until it stops raising WantReadError."""
        while True:
            want_read = False
            try:
                result = fn(*args)
            except SSL.WantReadError:
                want_read = True
            except SSL.Error:
                await self._flush_quietly()
                raise
            await self._flush()
            if not want_read:
                return result
            await self._fill()

    async def _retry_records(self, fn: Callable[[Any], T | None], arg: Any) -> T:
        """The data-path twin of :meth:`_retry`: ``fn`` says "want read" by returning None."""
        while True:
            try:
                result = fn(arg)
            except SSL.Error:
                await self._flush_quietly()
                raise
            await self._flush()
            if result is not None:
                return result
            await self._fill()

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
        async with lock:
            if self._handshake_error is not None:
                raise self._handshake_error
            if not self._handshake_done:
                with trio.move_on_after(timeout if timeout is not None else float("inf")) as scope:
                    await self._handshake_once()
                if scope.cancelled_caught:
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
            self._handshake_error = failure
            raise self._handshake_error from None
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            if self._closed:
                raise trio.ClosedResourceError("TLS stream was closed during the handshake") from None
            self._handshake_error = HandshakeFailed(
                FailureReason.PEER_CLOSED.value, f"transport failed during the handshake: {exc or type(exc).__name__}"
            )
            raise self._handshake_error from None
        self._handshake_done = True
        self.facts = collect_facts(self._conn, observer, self._certificates)
        # The observer's work is done: no callback that writes to it runs after the handshake
        # (renegotiation is off; TLS 1.3 tickets and key updates neither verify nor log keys).
        self._conn.set_app_data(None)
        self.observer = None
        self._handshake_lock = None  # a task waiting on it holds its own reference
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
            view = memoryview(data)
            total = len(view)
            offset = 0
            try:
                while offset < total:
                    offset += await self._retry_records(self._records.write, view[offset:])
            except SSL.Error as exc:
                raise trio.BrokenResourceError(f"TLS send failed: {exc}") from exc
            finally:
                view.release()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        # One coroutine, not a wrapper around another: every idle pump sits in here, and each
        # frame of its await chain is a few hundred bytes per connection.
        self._yielded = False
        with self._recv_guard:
            self._check_open()
            await self._ensure_handshake()
            size = max_bytes if max_bytes is not None else _RECEIVE_SIZE
            if size < 1:
                raise ValueError("max_bytes must be >= 1")
            # No "read the transport first when the BIO is empty" shortcut: OpenSSL's record
            # layer may hold bytes it already took from the BIO, which only recv() can tell.
            try:
                data = await self._retry_records(self._records.read, min(size, _RECORD_SIZE))
            except SSL.ZeroReturnError:
                self.close_notify_received = True
                data = b""
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
            # Served from bytes already buffered (or EOF already seen): still a checkpoint, as
            # trio streams promise, so a busy relay cannot starve other tasks.
            await trio.lowlevel.checkpoint()
        return data

    async def send_eof(self) -> None:
        """Send close_notify: TLS's 'I am done sending'. The peer may still send to us."""
        with self._send_guard:
            self._check_open()
            await self._ensure_handshake()
            if self._sent_close_notify:
                await trio.lowlevel.checkpoint()
                return
            self._sent_close_notify = True
            try:
                self._conn.shutdown()
            except SSL.Error as exc:
                raise trio.BrokenResourceError(f"TLS shutdown failed: {exc}") from exc
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
        self._closed = True
        try:
            if self._handshake_done and not self._sent_close_notify:
                self._sent_close_notify = True
                try:
                    self._conn.shutdown()
                except SSL.Error:
                    pass
                await self._flush_quietly()
        finally:
            await self.transport_stream.aclose()

    @property
    def peer_closed(self) -> bool:
        return self.close_notify_received or self.eof_without_close_notify


def _transport_error(exc: OSError) -> trio.BrokenResourceError | trio.ClosedResourceError:
    if exc.errno == errno.EBADF:
        return trio.ClosedResourceError("the socket was closed")
    return trio.BrokenResourceError(f"socket connection broken: {exc}")


@functools.lru_cache(maxsize=64)  # configured server names: a handful; a miss raises inside
def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name.strip("[]"))
    except ValueError:
        return False
    return True

"""The record layer under :class:`~siptap.tls.stream.OpenSSLStream`: four OpenSSL operations.

The stream needs exactly these from an ``SSL.Connection`` built on memory BIOs: read
plaintext, write plaintext, take the ciphertext OpenSSL produced, give it the ciphertext the
transport delivered (plus a question, "could a read return plaintext now?", which lets the
stream drain every buffered record without a failing read at the end, and, once, fresh BIOs
after the handshake). Two adapters provide
them behind one protocol, :class:`RecordLayer`:

* :class:`FastRecords` calls OpenSSL through the cffi bindings pyOpenSSL itself uses. It is
  what production runs: per relayed SIP message it saves a buffer allocation and a raised
  and caught WantReadError, a large share of the relay's per-message cost.
* :class:`PortableRecords` goes through pyOpenSSL's public API only. It is the fallback for
  a pyOpenSSL whose private names moved, and what ``OpenSSLStream(portable_records=True)``
  selects, so the tests can run the stream on it deliberately.

Both report "OpenSSL needs more input" as ``None`` rather than an exception, and raise every
other failure as the exception pyOpenSSL itself would raise, so the stream above cannot tell
them apart except by speed and by :meth:`RecordLayer.renew_bios`.
"""

from __future__ import annotations

from typing import Protocol

from OpenSSL import SSL

# pyOpenSSL's cffi handles: ``lib`` is the OpenSSL library, ``ffi`` the foreign-function
# interface it was compiled with. They are private and unstubbed (both are typed Any), which is
# why everything that touches them is kept to this module and to :mod:`siptap.tls.facts`.
try:
    from OpenSSL._util import ffi as _ffi
    from OpenSSL._util import lib as _lib
except ImportError:  # pragma: no cover - a pyOpenSSL without the private bindings
    _ffi = _lib = None

__all__ = ["FastRecords", "PortableRecords", "RecordLayer", "records_for"]

#: Largest read from OpenSSL or from a BIO in one call: a TLS record's plaintext is at most
#: 16 KiB, and a flight of handshake records a few KiB, so one call normally drains everything.
BIO_READ_SIZE = 65536


class RecordLayer(Protocol):
    """What :class:`~siptap.tls.stream.OpenSSLStream` asks of OpenSSL after construction."""

    def read(self, size: int) -> bytes | None:
        """Plaintext (at most ``size`` bytes), b"" never; None when OpenSSL needs more input."""
        ...

    def write(self, data: memoryview) -> int | None:
        """Bytes of ``data`` taken (one record at most); None when OpenSSL needs more input."""
        ...

    def take_output(self) -> bytes:
        """Everything OpenSSL wrote to the outgoing BIO (whole records), or b""."""
        ...

    def give_input(self, data: bytes) -> None:
        """Append transport bytes to the incoming BIO."""
        ...

    def may_have_plaintext(self) -> bool:
        """False only when a read cannot return plaintext without new transport bytes."""
        ...

    def renew_bios(self, *, eof: bool) -> None:
        """Swap in empty BIOs, keeping what they still hold (see :meth:`FastRecords.renew_bios`)."""
        ...


_SHARED: list[object] = []  # the cffi char[] buffer, made on first use (cffi objects are unstubbed)


def _shared_buffer() -> object:
    """One read buffer for every stream of the process: each call copies what it read out
    before returning, and trio runs one task at a time, so no two calls use it at once. A
    buffer per stream would cost 64 KiB per leg of every idle connection."""
    if not _SHARED:
        _SHARED.append(_ffi.new("char[]", BIO_READ_SIZE))
    return _SHARED[0]


class FastRecords:
    """The four OpenSSL calls of the data path, without pyOpenSSL's per-call overhead.

    pyOpenSSL allocates a fresh buffer per read and turns every "want more input" into a
    raised WantReadError; on a relay that reads one record per SIP message that is a
    large share of the per-message cost. This calls the same OpenSSL functions through
    the cffi bindings pyOpenSSL itself uses, reports "want read" as ``None``, and hands
    every other failure to pyOpenSSL's own ``_raise_ssl_error``, so errors are exactly the
    exceptions pyOpenSSL raises.

    Why reaching into the ``Connection`` is safe here:

    * ``conn._ssl`` is the ``SSL*`` pyOpenSSL created and frees with the Connection; we keep
      the Connection alive (``_conn``) for as long as we hold the pointer.
    * ``conn._into_ssl`` / ``_from_ssl`` are the memory BIOs pyOpenSSL made for a Connection
      built without a socket. The SSL object owns them (SSL_free frees them), so we never free
      them ourselves, and after :meth:`renew_bios` we write the new pointers back into the
      Connection, whose ``bio_write`` and ``bio_shutdown`` use those attributes.
    * ``conn._raise_ssl_error`` is the translation pyOpenSSL's own ``recv``/``send`` use: it
      first re-raises an exception a Python callback (the verify callback) stored, then maps
      ``SSL_get_error`` to WantReadError, ZeroReturnError, SysCallError or Error. We call it
      right after the failing SSL_read/SSL_write, with nothing in between but SSL_get_error
      (which only reads state), so the error queue and ``errno`` it inspects are the call's.
    * The shared buffer: see :func:`_shared_buffer`. ``[:]`` on an ``ffi.buffer`` copies into
      a new ``bytes`` before any other stream can run.

    If any of these names is missing the constructor raises AttributeError and
    :func:`records_for` falls back to :class:`PortableRecords`.
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
        # One SSL_read returns the plaintext of at most one record (several only with
        # read_ahead, which is off): OpenSSLStream._read_buffered loops to drain a burst.
        result: int = _lib.SSL_read(self._ssl, self._buf, min(size, BIO_READ_SIZE))
        if result > 0:
            data: bytes = _ffi.buffer(self._buf, result)[:]  # a copy: the buffer is shared
            return data
        # The common non-error outcome on a relay: the record is not complete yet. Checked
        # here, before pyOpenSSL's translation, so it costs no exception.
        # SSL_get_error must come right after the failing call: it reads the thread's error
        # queue and errno, which the next OpenSSL call (any connection's) would overwrite.
        # No Python code that could call OpenSSL runs in between: no await, no callback.
        if _lib.SSL_get_error(self._ssl, result) == _lib.SSL_ERROR_WANT_READ:
            return None
        self._raise(self._ssl, result)  # raises ZeroReturnError (close_notify), SysCallError, ...
        raise SSL.Error("SSL_read failed without an error")  # pragma: no cover

    def write(self, data: memoryview) -> int | None:
        # from_buffer lends OpenSSL a pointer into ``data`` without copying; the ``with``
        # ends the loan before we return. pyOpenSSL's contexts set ENABLE_PARTIAL_WRITE (so a
        # write takes at most one record and returns its size) and ACCEPT_MOVING_WRITE_BUFFER
        # (so a retry after "want read" may pass the rest of the data from a new view).
        with _ffi.from_buffer(data) as buf:
            result: int = _lib.SSL_write(self._ssl, buf, len(data))
        if result > 0:
            return result
        if _lib.SSL_get_error(self._ssl, result) == _lib.SSL_ERROR_WANT_READ:
            return None
        self._raise(self._ssl, result)
        raise SSL.Error("SSL_write failed without an error")  # pragma: no cover

    def take_output(self) -> bytes:
        # BIO_get_mem_data with a NULL pointer only reports how much is pending: checking
        # first makes the usual case (nothing to send after a read) one cheap call.
        # Reading the BIO empty matters beyond sending: a BIO_s_mem keeps its buffer as big
        # as the most it ever held, so the stream takes output after every record it
        # encrypts, and the BIO never holds more than one record (see OpenSSLStream._encrypt).
        pending: int = _lib.BIO_get_mem_data(self._from, _ffi.NULL)
        if pending <= 0:
            return b""
        chunks: list[bytes] = []
        while pending > 0:
            # Through the shared buffer, copied out at once: no other stream can run between
            # BIO_read and the copy (no await), so sharing it is safe.
            n: int = _lib.BIO_read(self._from, self._buf, min(pending, BIO_READ_SIZE))
            if n <= 0:
                break  # cannot happen for a memory BIO that reported ``pending``; never loop
            chunks.append(_ffi.buffer(self._buf, n)[:])
            pending -= n
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def give_input(self, data: bytes) -> None:
        # pyOpenSSL's bio_write is already a thin call (no allocation, no exception on
        # success); going around it would buy nothing.
        self._conn.bio_write(data)

    def may_have_plaintext(self) -> bool:
        # The stream asks this after every successful read, to drain all records that one
        # transport read delivered without paying a failing SSL_read (+ SSL_get_error) at the
        # end of each message. Two places can hold plaintext not yet returned:
        # * SSL_pending: the rest of the current record, when the last read asked for less;
        # * the incoming BIO: records OpenSSL has not touched yet. The contexts leave
        #   read_ahead off, so OpenSSL takes from the BIO one record header, then that one
        #   record, and never holds a second record in its own buffer where neither count
        #   would see it. What it may hold there is the header of an incomplete record, and
        #   then no read can return plaintext anyway: "False" is exact, "True" is a maybe.
        # With read_ahead on, this would miss records and a receive would wait for the
        # transport while plaintext sat decryptable (OpenSSL's SSL_has_pending covers that
        # case, but cryptography's bindings do not export it).
        return bool(_lib.SSL_pending(self._ssl) > 0 or _lib.BIO_get_mem_data(self._into, _ffi.NULL) > 0)

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
        # Carry over whatever the old BIOs still hold, in order: unread input (a record that
        # came in the same read as the peer's Finished) and unsent output (none in practice:
        # the handshake loop flushed, but losing a record here would break the stream).
        for old, new in ((self._into, into), (self._from, out)):
            pending: int = _lib.BIO_get_mem_data(old, _ffi.NULL)
            while pending > 0:
                n: int = _lib.BIO_read(old, self._buf, min(pending, BIO_READ_SIZE))
                if n <= 0:  # pragma: no cover - a memory BIO hands out what it reports
                    break
                _lib.BIO_write(new, self._buf, n)
                pending -= n
        if eof:
            # The transport already ended: the new incoming BIO must say EOF (return 0) once
            # drained, as bio_shutdown made the old one say, or a read would wait forever.
            _lib.BIO_set_mem_eof_return(into, 0)
        # SSL_set_bio takes ownership of the new pair and frees the old one (two distinct
        # BIOs, so each is freed once). From here the old pointers dangle: replace ours and
        # pyOpenSSL's in the same synchronous step, before anything can call bio_write.
        _lib.SSL_set_bio(self._ssl, into, out)
        self._conn._into_ssl = self._into = into
        self._conn._from_ssl = self._from = out


class PortableRecords:
    """The same four operations through pyOpenSSL's public API only."""

    __slots__ = ("_conn",)

    def __init__(self, conn: SSL.Connection) -> None:
        self._conn = conn

    def read(self, size: int) -> bytes | None:
        # pyOpenSSL raises WantReadError for "need more input": the one exception this layer
        # turns into None, so that the stream above sees the same protocol as FastRecords.
        # Every other exception (ZeroReturnError, SysCallError, Error) passes through as is.
        try:
            return self._conn.recv(size)
        except SSL.WantReadError:
            return None

    def write(self, data: memoryview) -> int | None:
        # send() accepts a memoryview (pyOpenSSL takes any buffer) and, with the partial-write
        # mode pyOpenSSL sets on every Context, returns after one record, like FastRecords.write.
        try:
            return self._conn.send(data)
        except SSL.WantReadError:
            return None

    def take_output(self) -> bytes:
        # bio_read raises WantReadError once the outgoing BIO is empty: that ends the loop.
        chunks = []
        while True:
            try:
                chunks.append(self._conn.bio_read(BIO_READ_SIZE))
            except SSL.WantReadError:
                break
        return b"".join(chunks)

    def give_input(self, data: bytes) -> None:
        self._conn.bio_write(data)

    def may_have_plaintext(self) -> bool:
        # The public API can tell the rest of a record (pending()) but not what waits in the
        # incoming BIO, so this always says "maybe": the drain then ends with one read that
        # raises WantReadError, the cost the fast layer avoids.
        return True

    def renew_bios(self, *, eof: bool) -> None:
        """Not possible through the public API: the BIOs keep their handshake-sized buffers."""


def records_for(conn: SSL.Connection, *, portable: bool = False) -> RecordLayer:
    """The record layer for ``conn``: the fast path unless ``portable`` is asked for or the
    private bindings it needs are missing."""
    if portable or _lib is None:
        return PortableRecords(conn)
    try:
        return FastRecords(conn)
    except AttributeError:  # pragma: no cover - private names moved
        return PortableRecords(conn)

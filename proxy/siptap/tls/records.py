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
# why everything that touches them is kept to this module, :mod:`siptap.tls.facts` and one
# call in :mod:`siptap.tls.contexts` (the client's group list).
try:
    from OpenSSL._util import ffi as _ffi
    from OpenSSL._util import lib as _lib
except ImportError:  # pragma: no cover - a pyOpenSSL without the private bindings
    # Resolved once, at import: records_for then decides per connection with one ``is None``,
    # and a pyOpenSSL that dropped these names still runs the proxy (on PortableRecords)
    # instead of failing to import the module every TLS leg needs.
    _ffi = _lib = None

__all__ = ["FastRecords", "PortableRecords", "RecordLayer", "records_for"]

#: Largest read from OpenSSL or from a BIO in one call: a TLS record's plaintext is at most
#: 16 KiB, and a flight of handshake records a few KiB, so one call normally drains everything.
BIO_READ_SIZE = 65536


class RecordLayer(Protocol):
    """What :class:`~siptap.tls.stream.OpenSSLStream` asks of OpenSSL after construction."""

    # A Protocol, not a base class: the two adapters share no code, both keep __slots__ (no
    # instance dict on an object every leg of every connection carries), and mypy --strict
    # checks each against these signatures, so an adapter that drifts fails the type gate
    # rather than a relay. The stream calls through this type only: that is what lets
    # tests/tls/test_stream_batching.py and test_stream_transports.py run every case on both.

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


# A list filled on first use rather than a global made at import: importing this module
# then allocates nothing, and a process that never runs the fast path (portable records, or
# no private bindings, when _ffi is None and could not make it) never pays for the buffer.
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
        # Every private name is read here, once: a pyOpenSSL that renamed one fails now, with
        # AttributeError, before a byte has moved, and records_for falls back to the public
        # API. Read on first use instead, the same rename would break a stream half way
        # through its handshake. Keeping them in slots also saves, per record, the lookup
        # through the Connection (and, for _raise, making a bound method).
        self._conn = conn
        self._ssl = conn._ssl
        self._into = conn._into_ssl
        self._from = conn._from_ssl
        self._raise = conn._raise_ssl_error
        self._buf = _shared_buffer()

    def read(self, size: int) -> bytes | None:
        # One SSL_read returns the plaintext of at most one record (several only with
        # read_ahead, which is off): RecordIO.read_buffered loops to drain a burst.
        # The min() is memory safety, not tuning: the shared buffer is BIO_READ_SIZE bytes
        # and SSL_read writes as much as it is told it may, so a larger ``size`` would let
        # OpenSSL write past the buffer's end. The stream asks for 16 KiB at most today; this
        # holds whatever a future caller asks.
        result: int = _lib.SSL_read(self._ssl, self._buf, min(size, BIO_READ_SIZE))
        # > 0 is plaintext; 0 is never "no data" here: close_notify and EOF come back as
        # errors, so the protocol's b"" (end of stream) is decided by the stream, not by us.
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
        # Not reached (result <= 0 always has an error for _raise_ssl_error to raise). Kept so
        # that a translation that ever returned fails loudly: falling through would return
        # None, which the stream takes for "want read", waiting on a transport with nothing
        # more to bring.
        raise SSL.Error("SSL_read failed without an error")  # pragma: no cover

    def write(self, data: memoryview) -> int | None:
        # from_buffer lends OpenSSL a pointer into ``data`` without copying; the ``with``
        # ends the loan before we return. pyOpenSSL's contexts set ENABLE_PARTIAL_WRITE (so a
        # write takes at most one record and returns its size) and ACCEPT_MOVING_WRITE_BUFFER
        # (so a retry after "want read" may pass the rest of the data from a new view).
        # Never called with empty data (send_all returns before, encrypt loops while data
        # remains), and that matters: an SSL_write of 0 bytes returns 0, which pyOpenSSL
        # translates to SysCallError(-1, "Unexpected EOF") (measured on this pyOpenSSL), a
        # misleading "peer went away" for a caller that only had nothing to send.
        with _ffi.from_buffer(data) as buf:
            result: int = _lib.SSL_write(self._ssl, buf, len(data))
        if result > 0:
            return result
        # After the handshake, with renegotiation off, "want read" is rare on a write; it is
        # still reported as None so the stream's retry loop, not this layer, goes for input.
        if _lib.SSL_get_error(self._ssl, result) == _lib.SSL_ERROR_WANT_READ:
            return None
        self._raise(self._ssl, result)
        raise SSL.Error("SSL_write failed without an error")  # pragma: no cover - as in read

    def take_output(self) -> bytes:
        # BIO_get_mem_data with a NULL pointer only reports how much is pending: checking
        # first makes the usual case (nothing to send after a read) one cheap call.
        # Reading the BIO empty matters beyond sending: a BIO_s_mem keeps its buffer as big
        # as the most it ever held, so the stream takes output after every record it
        # encrypts, and the BIO never holds more than one record (see RecordIO.encrypt).
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
        # One chunk (anything up to 64 KiB: every relayed message, every handshake flight) is
        # returned as it is; a join would copy it once more for nothing.
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
        # BIO_s_mem, the type pyOpenSSL gives a Connection built without a socket. A new one
        # answers an empty read with -1 and "retry" (its eof_return is -1): that is what makes
        # SSL_read on a drained BIO report WANT_READ instead of EOF; see the ``eof`` branch.
        into = _lib.BIO_new(_lib.BIO_s_mem())
        out = _lib.BIO_new(_lib.BIO_s_mem())
        # Only an optimisation is lost when this fails: the old pair still works, just bigger.
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
                # Unchecked: a memory BIO refuses a write only when it cannot grow (out of
                # memory), and the SSL object is still on the old pair, so nothing can run
                # between this copy and the swap. test_record_arriving_with_the_finished_
                # survives_the_fresh_bios (tests/tls/test_stream.py) pins that input survives.
                _lib.BIO_write(new, self._buf, n)
                pending -= n
        if eof:
            # The transport already ended: the new incoming BIO must say EOF (return 0) once
            # drained, as bio_shutdown made the old one say (pyOpenSSL's bio_shutdown is this
            # same BIO_set_mem_eof_return(bio, 0)), or a read would wait forever.
            _lib.BIO_set_mem_eof_return(into, 0)
        # SSL_set_bio takes ownership of the new pair and frees the old one (two distinct
        # BIOs, so each is freed once). From here the old pointers dangle: replace ours and
        # pyOpenSSL's in the same synchronous step, before anything can call bio_write.
        _lib.SSL_set_bio(self._ssl, into, out)
        # pyOpenSSL's bio_write (our give_input) and bio_shutdown read conn._into_ssl on every
        # call; left pointing at the freed BIO they would write into freed memory: a crash
        # or a silently corrupt stream, never a Python exception.
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
        # recv allocates a ``size``-byte buffer per call: the stream asks for one record's
        # worth (16 KiB at most), not the 64 KiB a transport read can bring, so that per-call
        # allocation stays one record's size. This per-read allocation and the exception
        # below are the costs FastRecords exists to avoid.
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
        # There is no public "how much is pending" to ask first, so every take, including
        # the usual empty one after a read, pays one raised exception (plus a 64 KiB
        # allocation per bio_read): the fast path's BIO_get_mem_data check avoids both.
        chunks = []
        while True:
            try:
                chunks.append(self._conn.bio_read(BIO_READ_SIZE))
            except SSL.WantReadError:
                break
        return b"".join(chunks)

    def give_input(self, data: bytes) -> None:
        # A memory BIO takes everything it is given (it grows), so there is no partial
        # write to loop on; pyOpenSSL raises if BIO_write ever fails.
        self._conn.bio_write(data)

    def may_have_plaintext(self) -> bool:
        # The public API can tell the rest of a record (pending()) but not what waits in the
        # incoming BIO, so this always says "maybe": the drain then ends with one read that
        # raises WantReadError, the cost the fast layer avoids.
        return True

    def renew_bios(self, *, eof: bool) -> None:
        """Not possible through the public API: the BIOs keep their handshake-sized buffers."""
        # A no-op rather than an error: the renewal only saves memory (about 13 KiB per idle
        # proxied connection), and a fallback that must keep the proxy running cannot fail
        # the handshake over an optimisation.


def records_for(conn: SSL.Connection, *, portable: bool = False) -> RecordLayer:
    """The record layer for ``conn``: the fast path unless ``portable`` is asked for or the
    private bindings it needs are missing."""
    # A silent fallback: a pyOpenSSL upgrade that moved the private names should cost speed
    # (about a raised exception and an allocation per record), not the service. ``portable``
    # is how the tests select the fallback on purpose, so it is run, not just present:
    # test_stream_batching.py and test_stream_transports.py take both values.
    if portable or _lib is None:
        return PortableRecords(conn)
    try:
        return FastRecords(conn)
    except AttributeError:  # pragma: no cover - private names moved
        return PortableRecords(conn)

"""Reads and writes on a trio socket's non-blocking descriptor, for :mod:`siptap.tls.record_io`.

OpenSSLStream drives a trio SocketStream through its descriptor rather than through the
SocketStream's methods, and waits (wait_readable / wait_writable) only when the kernel says
EAGAIN. trio's own socket methods add a scheduling point after every call that did not wait;
on a relay that is a full pass of the event loop per forwarded message for nothing, since the
pump's next receive waits anyway. Fairness is kept by the stream's receive_some: a receive
that did not wait still ends in a checkpoint. The price is one departure from trio's Stream
contract: a send_all over a socket that the kernel takes at once is not a checkpoint
(tests/tls/test_stream_transports.py pins it; the conformance suite there adds the
checkpoint in a subclass).

What a relayed message costs in system calls when each message is its own wake-up (lab
rates; bench/results/2026-12-02-tls-shell.md): epoll_ctl + epoll_wait (the wait), one read,
one write; four, the floor under trio. The epoll_ctl is trio's, not ours: trio arms every
wait with EPOLLONESHOT (trio/_core/_io_epoll.py explains why: no stale registrations, no
lost wake-ups with several waiters), so each wait_readable re-arms the descriptor with
EPOLL_CTL_MOD, and trio has no public way to keep an interest registered across waits.
Watching a descriptor set of our own in a second epoll instance would still cost trio's
re-arm of that instance per wake-up, plus a second epoll_wait.

Both functions are called by :class:`~siptap.tls.record_io.RecordIO` with its lock for
their direction held (``_recv_lock`` / ``_send_lock``), so one task at a time reads, and one
writes, each socket.
"""

from __future__ import annotations

import errno
import os

import trio

#: One read: several TLS records at once when the peer is fast.
READ_SIZE = 65536


async def read(sock: trio.socket.SocketType, *, wait_first: bool) -> tuple[bytes, bool]:
    """The next bytes from ``sock`` (b"" at EOF), and whether this waited (a checkpoint).

    ``wait_first``: the caller's last read emptied the socket (it returned less than
    READ_SIZE), so go straight to wait_readable. Read first or wait first? If the next
    receive comes soon after such a read (the relay's pump: forward, then receive again), a
    read attempt almost always fails with EAGAIN: a wasted system call, and a raised
    BlockingIOError, per message at moderate rates, where each message is its own wake-up.
    Waiting first is safe: epoll armed on a descriptor that is already readable (or at EOF,
    or in error) reports it at the next epoll_wait, so bytes that arrived meanwhile are not
    missed, only picked up one scheduler pass later, a pass the receive would have ended in
    anyway. After a full read more is probably queued: read first.
    """
    waited = False
    while True:
        # trio's socket close() sets the descriptor to -1 (and wakes waiters with
        # ClosedResourceError); reading or waiting on a stale number could hit a descriptor
        # the process has since reused for another connection. Checked before the wait and
        # again after it.
        if wait_first:
            if sock.fileno() < 0:
                raise trio.ClosedResourceError("the socket was closed")
            await trio.lowlevel.wait_readable(sock)
            waited = True
        fd = sock.fileno()
        if fd < 0:
            raise trio.ClosedResourceError("the socket was closed")
        try:
            return os.read(fd, READ_SIZE), waited
        except BlockingIOError:
            wait_first = True  # read-first found nothing, or (rarely) woken without data
        except OSError as exc:
            raise transport_error(exc) from exc


async def write_all(sock: trio.socket.SocketType, data: bytes) -> None:
    """All of ``data`` to ``sock``, waiting for room only when the kernel has none.

    Write first, wait only on EAGAIN (the mirror image of :func:`read`, without its "wait
    first": a socket's send buffer is almost never full, so the write nearly always succeeds
    at once, and waiting first would cost a wait per message).
    """
    # os.write may take only part (a full socket buffer): slice the view, no copies.
    view = memoryview(data)
    try:
        while view:
            # Looked up on every pass: the socket may have been closed (fd -1) while we
            # waited, and writing to a stale number could hit a reused descriptor.
            fd = sock.fileno()
            if fd < 0:
                raise trio.ClosedResourceError("the socket was closed")
            try:
                view = view[os.write(fd, view):]
            except BlockingIOError:
                # The peer is not reading: wait for room. This is where a slow peer holds
                # up send_all, and where a cancellation can leave half a record on the wire
                # (the stream is then broken; see "Cancellation" in siptap.tls.stream).
                await trio.lowlevel.wait_writable(sock)
            except OSError as exc:
                # EPIPE/ECONNRESET: broken; EBADF: closed under us (see transport_error).
                raise transport_error(exc) from exc
    finally:
        view.release()  # the slices were views of it; release so ``data`` is not pinned


def transport_error(exc: OSError) -> trio.BrokenResourceError | trio.ClosedResourceError:
    """trio's exception for a failed read or write: closed (EBADF) or broken (the rest)."""
    if exc.errno == errno.EBADF:
        return trio.ClosedResourceError("the socket was closed")
    return trio.BrokenResourceError(f"socket connection broken: {exc}")

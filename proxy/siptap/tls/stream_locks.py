"""Two small concurrency guards for :class:`~siptap.tls.stream.OpenSSLStream`.

A TLS stream is shared by the relay's two pumps (one receives from it, the other sends to
it), and a proxied connection has two of them, for hours. trio's own tools for this
(ConflictDetector, Lock) are private or cost about half a KiB each; these cost a few slots.
"""

from __future__ import annotations

import trio


class DirectionGuard:
    """Raises BusyResourceError when two tasks use one direction of the stream at once.

    trio's Stream contract (what trio's ConflictDetector enforces for its own streams, which is
    private to trio): two concurrent send_all calls could interleave their records, two
    concurrent receive_some calls could each get half a message. One task per direction is
    allowed, which is exactly the relay's shape: one pump receives, the other sends.
    """

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


class FifoMutex:
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
        # No checkpoint on the free path, on purpose: RecordIO.flush takes this lock
        # after every batch of OpenSSL calls, and a scheduling pass there would cost a loop
        # iteration per message. The callers' own awaits (the transport) provide the
        # checkpoints trio expects.
        if not self._held:
            self._held = True
            return
        if self._waiters is None:
            self._waiters = trio.lowlevel.ParkingLot()
        # Woken by release() already as the holder: _held never drops to False in between,
        # so no task arriving meanwhile can barge in (FIFO, as trio.Lock). A waiter cancelled
        # while parked leaves the lot without ever holding the lock; once unparked it is
        # rescheduled with the lock and a later cancellation cannot undo that hand-over.
        await self._waiters.park()

    def release(self) -> None:
        if self._waiters:  # a ParkingLot is truthy while someone is parked in it
            self._waiters.unpark()
        else:
            self._held = False

"""The relay's feed straight into an observer in the same process.

In production the relay's records cross a channel to the mirror process
(:mod:`siptap.mirror.channel`), which hands them to its :class:`~siptap.mirror.observer.Observer`.
Here the same records reach the same observer by a direct call, in the relay's own wake-up:
for the demo (one process, the call flow shown as it happens) and for tests that want the
whole chain in memory. It has the :class:`siptap.relay.feed.MirrorFeed` methods (a structural
protocol: the mirror does not import the relay).
"""

from __future__ import annotations

import time

from siptap.mirror.observer import Observer
from siptap.sansio import chunk_records

# The channel number an in-process feed uses: there is only one "worker".
LOCAL_CHANNEL = 0


class LocalFeed:
    """Records in, straight to ``observer`` (lifecycle records go through the real codec, so
    what the observer sees is what a channel would deliver)."""

    __slots__ = ("_observer",)

    def __init__(self, observer: Observer) -> None:
        self._observer = observer

    def chunk(self, conn: int, direction: int, offset: int, data: bytes) -> None:
        self._observer.handle(LOCAL_CHANNEL, chunk_records.Chunk(conn, direction, offset, time.time(), data))

    def record(self, conn: int, encoded: bytes) -> None:
        self._observer.handle(LOCAL_CHANNEL, chunk_records.decode(encoded))

    def forget(self, conn: int) -> None:
        pass  # the observer lets a connection go at its closed record

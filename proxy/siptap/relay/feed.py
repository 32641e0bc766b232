"""What the relay hands the observation side: raw records, in O(1), never waiting.

The relay only relays (issue 16). Per received chunk a pump forwards the bytes, then calls
:meth:`MirrorFeed.chunk` with the bytes, the connection's number, the direction and where the
chunk sits in that direction's stream; per leg it hands over the lifecycle records (opened,
handshake facts, closed) already encoded by :mod:`siptap.sansio.chunk_records`. Framing, SIP
fields, ``sip`` log lines, metrics per message and every sink run on the other side of this
interface: in the mirror process (:class:`siptap.relay.tap.MirrorTap` sends each record as one
datagram) or, for the demo and in-process use, an observer the app wires in directly.

A feed must never block and never raise for the mirror's sake: when it cannot take a record
it drops it and counts it, and tells the mirror before that connection's next record.
"""

from __future__ import annotations

from typing import Protocol


class MirrorFeed(Protocol):
    """The relay's only view of the mirror."""

    def chunk(self, conn: int, direction: int, offset: int, data: bytes) -> None:
        """Bytes relayed in ``direction`` (``chunk_records.FROM_ACCEPTED``/``FROM_DIALLED``);
        ``offset`` is the position of ``data[0]`` in that direction's byte stream."""

    def record(self, conn: int, encoded: bytes) -> None:
        """A lifecycle record of connection ``conn``, encoded (``chunk_records.encode``)."""

    def forget(self, conn: int) -> None:
        """Connection ``conn`` has ended (its closed record was handed over): drop its state."""


class NullFeed:
    """Observation switched off: every record is let go. Costs one method call per chunk."""

    __slots__ = ()

    def chunk(self, conn: int, direction: int, offset: int, data: bytes) -> None:
        pass

    def record(self, conn: int, encoded: bytes) -> None:
        pass

    def forget(self, conn: int) -> None:
        pass

"""Cleartext capture sink: relayed SIP as synthetic TCP in rotated pcap/pcapng files.

Theory of operation: every mirrored leg of a proxied connection (key: connection id + leg)
becomes one synthetic TCP flow (:class:`siptap.sansio.pcap.TcpFlow`) with the leg's real
addresses and ports. On the flow's first message in a file the SYN, SYN-ACK, ACK frames are
written, then each complete SIP message as the payload of one ``segment()`` call (split only
if it exceeds one IP packet); a ``ConnectionClosed`` writes FIN/ACK both ways and forgets
the flow. One message per segment, never one per TLS read: sngrep drops a message whose
first segment is short, and tshark/sngrep then see exactly the messages siptap framed.
Sequence numbers continue across segments, so Wireshark and sngrep open the file as SIP
over TCP without any key (tshark: ``-d tcp.port==<server port>,sip`` for ports it would
otherwise take for TLS, such as 5061).

A pcap stream cannot be shared by processes (each file has one header, and each flow's
sequence numbers live in one process): with ``workers`` > 1 each worker writes its own
series, its prefix extended with ``-w<I>`` by :func:`siptap.app.worker_config`
(``siptap-w2-...``; ``keep`` then counts per worker), and ``siptap export`` merges the series
by time. ``mergecap -w all.pcap captures/siptap-w*-*.pcap`` does the same for Wireshark.

Files are ``<prefix>-YYYYmmdd-HHMMSS-N.pcap`` (or ``.pcapng``) in ``directory``, named by
the UTC time of their first event and a counter, created 0600 (the folder 0700 if missing)
with ``O_EXCL`` so nothing is overwritten. A file is rotated before a write that would take
it past ``rotate_bytes``, or when its first event is ``rotate_seconds`` older than the
event at hand (event time: deterministic and the same clock as the packets). After a
rotation the flows still open keep their sequence numbers, and each re-emits its handshake
(built from its current sequence numbers) before its next frame, so every file stands
alone and stays consistent. ``keep`` > 0 deletes the oldest of this sink's files beyond
that many.

Writes are synchronous ``os.write`` calls on whole records: page-cache appends, cheaper
than a thread hop. The records of a batch (what was queued when the sink woke up) are
collected and written with one call at the end of the batch (and before a rotation), so a
live Wireshark sees them at once and a busy sink makes one system call per batch, not per
message. A failure (disk full, folder gone...) is logged, counted, the events of that
write dropped, and the file abandoned: a half-written record would corrupt the rest, so
the next attempt (after a back-off) starts a new file, where open flows restart with a
handshake.
"""

from __future__ import annotations

import os
import re
import struct
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import trio

from siptap.config.mirror import PcapSettings
from siptap.mirror.events import ConnectionClosed, KeyEvent, MirrorEvent, SipEvent, SrtpKeyEvent
from siptap.mirror.files import close_quietly, create_private, write_all
from siptap.mirror.sink import Sink, log
from siptap.sansio import pcap
from siptap.sansio.hep import split_timestamp

_PCAP_RECORD = struct.Struct("<IIII")
# An Enhanced Packet Block around a frame (pcap.pcapng_enhanced_packet, interface 0): type,
# total length, interface, timestamp high and low, captured and original length; the frame
# padded to 4 octets; the total length again. _EPB_TAILS[pad](total): the padding and trailer.
_EPB_HEAD = struct.Struct("<IIIIIII")
_EPB_OVERHEAD = _EPB_HEAD.size + 4
_EPB_TAILS = [struct.Struct(f"<{pad}xI").pack for pad in range(4)]


@dataclass(slots=True)
class _Flow:
    tcp: pcap.TcpFlow
    file_serial: int  # the file its handshake was written to; -1 = none yet


class PcapSink(Sink):
    """Relayed SIP as synthetic TCP flows in rotated capture files (see the module docstring)."""

    def __init__(
        self, settings: PcapSettings, *, name: str = "pcap", retry_initial: float = 1.0, retry_max: float = 30.0
    ) -> None:
        super().__init__(name)
        self.settings = settings
        self.directory = Path(settings.directory)
        self.ext = settings.format
        self.retry_initial = retry_initial
        self.retry_max = retry_max
        self._flows: dict[tuple[str, str], _Flow] = {}
        self._fd: int | None = None
        self._serial = 0  # counts files opened by this sink
        self._name_counter = 0
        self.path: Path | None = None
        self._bytes = 0
        self._opened_at = 0.0  # event time of the file's first event
        self._retry_at = -float("inf")
        self._delay = retry_initial
        self._failing = False
        self.files: list[Path] = []  # this sink's files, oldest first
        self._pattern = re.compile(
            re.escape(settings.prefix) + r"-(\d{8}-\d{6})-(\d+)\." + re.escape(self.ext) + r"$"
        )
        self._header = self._file_header()
        self._pcapng = self.ext == "pcapng"
        # Records not yet written (to the open file), and how many SIP events they carry.
        self._pending: list[bytes] = []
        self._pending_events = 0

    def accepts(self, event: MirrorEvent) -> bool:
        return isinstance(event, (SipEvent, ConnectionClosed))

    def accepts_kind(self, kind: type) -> bool | None:
        return kind is SipEvent or kind is ConnectionClosed or (False if kind in (KeyEvent, SrtpKeyEvent) else None)

    # -- files ---------------------------------------------------------------------------

    def _file_header(self) -> bytes:
        if self.ext == "pcapng":
            return pcap.pcapng_section_header(b"siptap") + pcap.pcapng_interface_description(name=b"siptap")
        return pcap.pcap_global_header()

    def _open(self, ts: float) -> None:
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        stamp = datetime.fromtimestamp(ts, UTC).strftime("%Y%m%d-%H%M%S")
        while True:
            self._name_counter += 1
            path = self.directory / f"{self.settings.prefix}-{stamp}-{self._name_counter}.{self.ext}"
            try:
                fd = create_private(path)
            except FileExistsError:
                continue
            break
        try:
            header = self._header
            write_all(fd, header)
        except OSError:
            os.close(fd)
            raise
        self._fd, self.path = fd, path
        self._serial += 1
        self._bytes = len(header)
        self._opened_at = ts
        self.files.append(path)
        log.info("mirror_pcap_file", sink=self.name, path=str(path))
        self._prune()

    def _close_file(self) -> None:
        if self._fd is not None:
            close_quietly(self._fd)
            self._fd = None

    def _prune(self) -> None:
        keep = self.settings.keep
        if not keep:
            return
        try:
            named = [(m, p) for p in self.directory.iterdir() if (m := self._pattern.match(p.name))]
            # Oldest first by the name's UTC stamp, then its counter.
            existing = [p for m, p in sorted(named, key=lambda mp: (mp[0].group(1), int(mp[0].group(2))))]
        except OSError as exc:
            self.error("list capture folder", exc)
            return
        current = self.path
        old = [p for p in existing if p != current]
        for path in old[: max(0, len(existing) - keep)]:
            try:
                path.unlink()
            except FileNotFoundError:
                pass
            except OSError as exc:
                self.error("delete old capture", exc, path=str(path))
        self.files = [p for p in self.files if p.exists()]

    def _needs_rotation(self, ts: float, size: int) -> bool:
        if self._fd is None:
            return False
        limit = self.settings.rotate_bytes
        if limit and self._bytes > len(self._header) and self._bytes + size > limit:
            return True
        seconds = self.settings.rotate_seconds
        return bool(seconds) and ts - self._opened_at >= seconds

    def _append(self, ts: float, frames: list[bytes]) -> None:
        """Queue the records of ``frames`` for the open file (written by :meth:`_flush`)."""
        sec, usec = split_timestamp(ts)
        pending = self._pending
        if self.ext == "pcapng":
            for frame in frames:
                record = pcap.pcapng_enhanced_packet(sec, usec, frame)
                pending.append(record)
                self._bytes += len(record)
        else:
            for frame in frames:
                pending.append(_PCAP_RECORD.pack(sec, usec, len(frame), len(frame)))
                pending.append(frame)
                self._bytes += 16 + len(frame)

    def _flush(self) -> None:
        """Write the queued records with one call; count their events sent, or dropped if
        the write failed (the file is then abandoned, see :meth:`_failed`)."""
        if not self._pending:
            return
        blob = b"".join(self._pending)
        events = self._pending_events
        self._pending.clear()
        self._pending_events = 0
        assert self._fd is not None
        try:
            write_all(self._fd, blob)
        except OSError as exc:
            self._failed(exc)
            if events:
                self.drop("write failed", events)
            return
        if events:
            if self._failing:
                log.info("mirror_file_recovered", sink=self.name, path=str(self.path))
                self._failing = False
                self._delay = self.retry_initial
            self.sent += events

    def _estimate(self, payload: int) -> int:
        """Octets a message of ``payload`` octets adds, handshake included (upper bound):
        Ethernet + IPv6 + TCP with options, pcapng record overhead with padding."""
        segments = 1 + payload // pcap.MAX_SEGMENT
        return payload + 140 * (segments + 3)

    async def handle(self, event: MirrorEvent) -> None:
        await self.handle_batch([event])

    async def handle_batch(self, batch: list[MirrorEvent]) -> None:
        self.handle_batch_nowait(batch)

    @property
    def delivers_nowait(self) -> bool:
        return True  # page-cache appends: never waits for a peer

    def handle_batch_nowait(self, batch: list[MirrorEvent]) -> int:
        try:
            return self.handle_each_nowait(batch, self._one)
        finally:
            self._flush()  # what was framed, also when a frame failed half-way

    def _one(self, event: MirrorEvent) -> None:
        leg = event.leg
        key = (leg.conn_id, leg.leg)
        flow = self._flows.get(key)
        if type(event) is SipEvent and flow is not None and flow.file_serial == self._serial and self._fd is not None:
            # The usual message: a flow already in the open file, one segment. What the
            # general path below writes, with the payload as its own piece of the batch's
            # write instead of copied into a frame and then into a record.
            ts, data = event.ts, event.data
            size = len(data)
            limit, seconds = self.settings.rotate_bytes, self.settings.rotate_seconds
            if (0 < size < pcap.MAX_SEGMENT
                    # _needs_rotation(ts, _estimate(size)), inlined (below MAX_SEGMENT: 4 x 140)
                    and not (limit and self._bytes > len(self._header) and self._bytes + size + 560 > limit)
                    and not (seconds and ts - self._opened_at >= seconds)):
                try:
                    headers = flow.tcp.segment_headers(event.from_client, data)
                except ValueError as exc:
                    self._failed(exc)
                    self.drop("not encodable as a frame")
                    return
                sec, usec = divmod(round(ts * 1_000_000), 1_000_000)  # split_timestamp, inlined
                length = len(headers) + size
                if self._pcapng:
                    self._pending += (_EPB_HEAD.pack(pcap.PCAPNG_BLOCK_EPB, length + _EPB_OVERHEAD + (-length & 3), 0,
                                                     (us := sec * 1_000_000 + usec) >> 32, us & 0xFFFFFFFF, length,
                                                     length),
                                      headers, data, _EPB_TAILS[-length & 3](length + _EPB_OVERHEAD + (-length & 3)))
                    self._bytes += length + _EPB_OVERHEAD + (-length & 3)
                else:
                    self._pending += (_PCAP_RECORD.pack(sec, usec, length, length), headers, data)
                    self._bytes += 16 + length
                self._pending_events += 1
                return
        self._general(event, key, flow)

    def _general(self, event: MirrorEvent, key: tuple[str, str], flow: _Flow | None) -> None:
        """:meth:`_one` for every event: closes, a flow's first message in a file, rotations,
        split messages, failures. (tests/mirror/test_pcap.py holds the fast path to it.)"""
        leg = event.leg
        if type(event) is not SipEvent:  # a ConnectionClosed (accepts() lets nothing else in)
            self._flows.pop(key, None)
            if flow is None or flow.file_serial != self._serial or self._fd is None:
                # Never written, or its handshake is in an earlier file: a lone FIN in this
                # file would only confuse readers. The flow just ends.
                return
            self._append(event.ts, flow.tcp.fin(True) + flow.tcp.fin(False))
            return
        ts, data = event.ts, event.data
        if self._fd is None:
            if self._waiting_to_retry():
                self.drop("capture file unavailable")
                return
        elif self._needs_rotation(ts, self._estimate(len(data))):
            self._flush()  # what is queued belongs to the file being closed
            if self._waiting_to_retry():  # that write failed
                self.drop("capture file unavailable")
                return
            self._close_file()
        if flow is None:
            flow = self._flows[key] = _Flow(pcap.TcpFlow(leg.client, leg.server), -1)
        try:
            if self._fd is None:
                self._open(ts)
            if flow.file_serial != self._serial:
                # Built from the flow's current sequence numbers, so a flow that spans a
                # rotation (or a failed file) starts cleanly in this file.
                frames = flow.tcp.handshake()
                frames += flow.tcp.segment(event.from_client, data)
                flow.file_serial = self._serial
            else:
                frames = flow.tcp.segment(event.from_client, data)
        except (OSError, ValueError) as exc:
            self._failed(exc)
            self.drop("write failed" if isinstance(exc, OSError) else "not encodable as a frame")
            return
        if self.ext == "pcap" and len(frames) == 1:  # the usual record, without the general loop
            frame = frames[0]
            sec, usec = divmod(round(ts * 1_000_000), 1_000_000)  # split_timestamp, inlined
            self._pending += (_PCAP_RECORD.pack(sec, usec, len(frame), len(frame)), frame)
            self._bytes += 16 + len(frame)
        else:
            self._append(ts, frames)
        self._pending_events += 1

    def _waiting_to_retry(self) -> bool:
        """No file open since a failure, and its back-off not over yet."""
        return self._fd is None and trio.current_time() < self._retry_at

    def _failed(self, exc: BaseException) -> None:
        if isinstance(exc, ValueError):  # e.g. mixed address families: this event only
            self.error("frame", exc)
            return
        self._close_file()
        if self._failing:  # logged once per outage; the drop reporter covers the rest
            self.errors += 1
        else:
            self.error("write capture", exc, path=str(self.path or self.directory))
        self._failing = True
        self._retry_at = trio.current_time() + self._delay
        self._delay = min(self._delay * 2, self.retry_max)

    async def aclose(self) -> None:
        self._close_file()

"""Reading the cleartext pcap sink's captures back: its files, oldest first, and every SIP message in them.

Each direction of each TCP flow is reassembled and framed again, so a message is found
whole whatever segments carried it; per-worker series are merged by time as mergecap does.
"""

from __future__ import annotations

import heapq
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from siptap.sansio import pcap
from siptap.sansio.pcap_reader import PcapFormatError, decode_tcp, read_capture
from siptap.sansio.sip_framer import SipFramer, SipMessage
from siptap.sansio.sip_message import SipMessageView, SipParseError, parse_message
from siptap.tools.export.addresses import Address, hostport, normalize_host
from siptap.tools.export.errors import ExportError

Flow = tuple[Address, Address, int]  # TCP client, server, generation (reuses of the address pair)
_TCP_SYN, _TCP_ACK, _TCP_FIN, _TCP_RST = pcap.TCP_SYN, pcap.TCP_ACK, pcap.TCP_FIN, pcap.TCP_RST
_HALF = 1 << 31


_STAMPED = r"-(\d{8}-\d{6})-(\d+)\.(pcapng|pcap)$"
_WORKER = re.compile(r"-w(\d+)" + _STAMPED)


def capture_files(location: Path, prefix: str | None = None) -> list[Path]:
    """The pcap sink's files in ``location`` (a folder; or one capture file), oldest first by
    the UTC stamp and counter in their names. ``prefix`` None accepts any prefix; the
    per-worker series (``<prefix>-w<I>-...``) are included."""
    if location.is_file():
        return [location]
    pattern = re.compile((re.escape(prefix) + r"(?:-w\d+)?" if prefix else r".+") + _STAMPED)
    try:
        entries = list(location.iterdir())
    except FileNotFoundError:
        raise ExportError(f"{location}: capture folder not found",
                          "is [mirror.pcap] enabled? or give --captures DIR") from None
    except OSError as exc:
        raise ExportError(f"{location}: cannot list the capture folder: {exc.strerror or exc}") from None
    named = [(m, p) for p in entries if p.is_file() and (m := pattern.match(p.name))]
    named.sort(key=lambda mp: (mp[0].group(1), int(mp[0].group(2)), mp[1].name))
    return [p for _, p in named]


@dataclass(slots=True)
class Message:
    """One SIP message read back from the cleartext capture."""

    ts_us: int  # time of the frame holding its first byte
    client: Address  # the flow's TCP client and server
    server: Address
    generation: int  # counts reuses of the same address pair (a SYN after a FIN)
    from_client: bool
    data: bytes
    view: SipMessageView
    frame_ts: list[int]  # timestamps of the frames that carried it
    position: tuple[int, int]  # (file index, packet index) of its first frame
    file: Path

    @property
    def call_id(self) -> str | None:
        return self.view.call_id

    @property
    def flow(self) -> Flow:
        return (self.client, self.server, self.generation)

    @property
    def src(self) -> Address:
        return self.client if self.from_client else self.server

    @property
    def dst(self) -> Address:
        return self.server if self.from_client else self.client

    def label(self) -> str:
        view = self.view
        if view.is_request:
            return f"{view.method} {view.request_uri}"
        return f"{view.status_code} {view.reason or ''}".rstrip()


@dataclass(slots=True)
class _Direction:
    framer: SipFramer = field(default_factory=lambda: SipFramer(max_message_size=1 << 24, max_header_size=1 << 20))
    next_seq: int | None = None
    received: int = 0  # stream octets fed to the framer
    consumed: int = 0  # stream octets the framer has reported
    # Segments not yet wholly reported: (start offset, end offset, time, position).
    segments: list[tuple[int, int, int, tuple[int, int]]] = field(default_factory=list)


@dataclass(slots=True)
class CaptureScan:
    messages: list[Message] = field(default_factory=list)
    fins: dict[Flow, tuple[int, tuple[int, int]]] = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    first_us: int | None = None
    last_us: int | None = None
    # Rank of each message/FIN position in the merged capture (see _merge_workers).
    order: dict[tuple[int, int], int] = field(default_factory=dict)


def read_messages(files: Iterable[Path]) -> CaptureScan:
    """Every SIP message in the capture files, in capture order, with its flow and time.

    Each direction of each TCP flow is reassembled by sequence number (retransmitted
    octets are trimmed, a gap restarts framing) and framed with :class:`SipFramer`, so a
    message split over several segments is one message. A flow's client is the sender of
    its SYN; a flow first seen without one (e.g. a capture cut mid-connection) takes the
    higher port as the client's.
    """
    scan = CaptureScan()
    orientation: dict[frozenset[Address], tuple[Address, Address]] = {}
    generation: dict[tuple[Address, Address], int] = {}
    closed: dict[tuple[Address, Address], set[bool]] = {}
    files_read: dict[int, Path] = {}
    for file_index, path in enumerate(files):
        files_read[file_index] = path
        try:
            capture = read_capture(path.read_bytes(), tolerate_truncation=True)
        except OSError as exc:
            raise ExportError(f"{path}: cannot read: {exc.strerror or exc}") from None
        except PcapFormatError as exc:
            scan.warnings.append(f"{path}: skipped, not a readable capture: {exc}")
            continue
        scan.files.append(path)
        if capture.truncated:
            scan.warnings.append(f"{path}: ends early ({capture.truncated}); read what precedes it")
        directions: dict[tuple[Address, Address, int, bool], _Direction] = {}
        for packet_index, packet in enumerate(capture.packets):
            segment = decode_tcp(packet.data, packet.linktype)
            if segment is None:
                continue
            src = (normalize_host(segment.src[0]), segment.src[1])
            dst = (normalize_host(segment.dst[0]), segment.dst[1])
            pair = frozenset((src, dst))
            syn = segment.flags & _TCP_SYN and not segment.flags & _TCP_ACK
            if syn:
                orientation[pair] = (src, dst)
            elif pair not in orientation:
                orientation[pair] = (src, dst) if src[1] >= dst[1] else (dst, src)
            client, server = orientation[pair]
            key = (client, server)
            if syn and key in closed and closed.pop(key) >= {True, False}:  # the last connection closed: a new one
                generation[key] = generation.get(key, 0) + 1
            gen = generation.setdefault(key, 0)
            from_client = src == client
            scan.first_us = packet.ts_us if scan.first_us is None else min(scan.first_us, packet.ts_us)
            scan.last_us = packet.ts_us if scan.last_us is None else max(scan.last_us, packet.ts_us)
            state = directions.setdefault((client, server, gen, from_client), _Direction())
            if segment.flags & (_TCP_SYN | _TCP_FIN | _TCP_RST):
                if segment.flags & _TCP_SYN:
                    state.next_seq = (segment.seq + 1) & 0xFFFFFFFF
                    continue
                ended = closed.setdefault(key, set())
                ended.add(from_client)
                if segment.flags & _TCP_RST:
                    ended.update((True, False))
                if ended >= {True, False}:
                    scan.fins.setdefault((client, server, gen), (packet.ts_us, (file_index, packet_index)))
            payload = segment.payload
            if not payload:
                continue
            if state.next_seq is not None:
                behind = (state.next_seq - segment.seq) & 0xFFFFFFFF
                if behind and behind < _HALF:  # a retransmission: keep only new octets
                    if behind >= len(payload):
                        continue
                    payload = payload[behind:]
                elif behind:  # octets are missing: what was buffered can never complete
                    state = directions[(client, server, gen, from_client)] = _Direction()
                    scan.warnings.append(f"{path}: gap in {hostport(src)} -> {hostport(dst)} before packet "
                                         f"{packet_index + 1}; framing restarted")
            state.next_seq = (segment.seq + len(segment.payload)) & 0xFFFFFFFF
            state.segments.append((state.received, state.received + len(payload), packet.ts_us,
                                   (file_index, packet_index)))
            state.received += len(payload)
            for event in state.framer.feed(payload):
                start, end = state.consumed, state.consumed + len(event.data)
                state.consumed = end
                carrying = [(ts, pos) for s_start, s_end, ts, pos in state.segments if s_start < end and s_end > start]
                while state.segments and state.segments[0][1] <= end:
                    state.segments.pop(0)
                if not isinstance(event, SipMessage) or not carrying:
                    continue
                try:
                    view = parse_message(event.data, event.header_end)
                except SipParseError:
                    continue
                first_ts, first_pos = carrying[0]
                scan.messages.append(Message(
                    ts_us=first_ts, client=client, server=server, generation=gen, from_client=from_client,
                    data=event.data, view=view, frame_ts=[ts for ts, _ in carrying],
                    position=first_pos, file=path,
                ))
    _merge_workers(scan, files_read)
    scan.messages.sort(key=lambda m: scan.order[m.position])
    return scan


def _merge_workers(scan: CaptureScan, files: dict[int, Path]) -> None:
    """``scan.order``: the rank of every message's and FIN's position in the merged capture.

    One worker's files are one stream: its packets keep their order (file, then packet).
    Several workers' streams (``-w<I>`` series) are merged by time, as mergecap does; within a
    stream the order is never changed, even if the clock stepped back."""
    points = [(m.position, m.ts_us) for m in scan.messages] + [(pos, ts) for ts, pos in scan.fins.values()]
    streams: dict[int | None, list[tuple[tuple[int, int], int]]] = {}
    for point in points:
        match = _WORKER.search(files[point[0][0]].name)
        streams.setdefault(int(match.group(1)) if match else None, []).append(point)
    for stream in streams.values():
        stream.sort()
    merged = heapq.merge(*streams.values(), key=lambda point: point[1])
    scan.order = {position: rank for rank, (position, _ts) in enumerate(merged)}

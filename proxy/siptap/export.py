"""`siptap export`: an escalation bundle for a vendor, holding the selected calls and nothing else.

Inputs are what siptap already wrote: the cleartext pcap sink's files
(``<prefix>-YYYYmmdd-HHMMSS-N.pcap[ng]``; with ``workers`` > 1 one series per worker,
``<prefix>-w<I>-YYYYmmdd-HHMMSS-N.pcap[ng]``, merged by time), the NSS key log, the SRTP keys file and,
optionally, siptap's JSON log (stdout of ``siptap run``, saved by the operator). Paths come
from the config's ``[mirror]`` section unless given on the command line.

Selection: a message is selected when its Call-ID is one of ``--call-id`` (exact,
case-sensitive, as RFC 3261 compares Call-IDs) and its capture time lies in
``[--since, --until]`` (each optional; at least one of Call-ID and window is required). With
only a window, every call with a message in the window is selected, with the messages
inside the window.

The bundle folder (written to a temporary sibling, then renamed; 0700, files 0600: it holds
keys) and ``<folder>.tar.gz`` of it:

``calls.pcapng``
    The selected messages as synthetic Ethernet/IP/TCP, one segment per message as the
    sink wrote them: each message's exact bytes, original addresses and timestamps, but the
    TCP headers re-encoded with :class:`siptap.sansio.pcap.TcpFlow` (a fresh SYN/SYN-ACK/ACK
    before each connection's first kept message, contiguous sequence numbers, the original
    FIN exchange if it is inside the window) so the segments left out leave no gaps:
    tshark shows no TCP analysis warnings. The ``keys.log`` text rides along as a Decryption
    Secrets Block: harmless for cleartext, and it decrypts a raw capture of the same
    connections opened together with it.
``keys.log``
    The key-log entries (``#`` comment plus NSS lines) of the proxied connections that
    carried a selected message: the connection is found by matching the comment's
    ``client=``/``server=`` to the addresses of the flow in the capture; every leg of that
    connection id is included (the calls crossed both). When several entries match the
    same address pair (port reuse), the JSON log's ``handshake_done`` times pick the one
    preceding the flow; without a log all of them are included, with a warning.
``srtp-keys.log``
    The SRTP key lines whose ``call-id=`` is a selected call and whose time is in the window.
``summary.txt`` / ``summary.json``
    Per call its flow (time, leg, direction with addresses, method or status, CSeq) and the
    TLS facts of its connections: from the key-log comments (version, cipher) and, with
    ``--log``, from ``handshake_done`` (key exchange, SNI, resumption, peer certificate;
    never secrets) and ``connection_closed`` (who closed, why, duration; never the counts,
    which would describe other calls).

Nothing of an unselected call is copied: messages are filtered one by one, key entries by
connection, SRTP lines by Call-ID, log facts by connection with an allow-list of fields.
One caveat is inherent: the keys of a TLS connection decrypt *all* of it, so a vendor who
also holds a raw capture of that connection can read the other calls it carried
(``--no-keys`` leaves the keys out).
"""

from __future__ import annotations

import argparse
import heapq
import ipaddress
import json
import os
import re
import shutil
import sys
import tarfile
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from siptap import __version__
from siptap.errors import SiptapError
from siptap.sansio import pcap
from siptap.sansio.pcap_reader import PcapFormatError, decode_tcp, read_capture
from siptap.sansio.sip_framer import SipFramer, SipMessage
from siptap.sansio.sip_message import SipMessageView, SipParseError, parse_message

__all__ = [
    "BUNDLE_FILES",
    "ExportError",
    "KeyEntry",
    "Message",
    "Selection",
    "add_parser",
    "build_bundle",
    "capture_files",
    "parse_keylog",
    "parse_time",
    "read_messages",
    "run_from_args",
    "select_srtp_lines",
]

Address = tuple[str, int]
BUNDLE_FILES = ("calls.pcapng", "keys.log", "srtp-keys.log", "summary.txt", "summary.json")
_TCP_SYN, _TCP_ACK, _TCP_FIN, _TCP_RST = pcap.TCP_SYN, pcap.TCP_ACK, pcap.TCP_FIN, pcap.TCP_RST
_HALF = 1 << 31


class ExportError(SiptapError):
    """An export that cannot be made: no captures, an unknown Call-ID, a bundle in the way."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint


# -- addresses and times ---------------------------------------------------------------------


def normalize_host(host: str) -> str:
    """Canonical text of an address; IPv4-mapped IPv6 as IPv4 (as the pcap sink writes it)."""
    try:
        addr = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return host
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return str(addr.ipv4_mapped)
    return str(addr)


def parse_hostport(text: str) -> Address | None:
    """``1.2.3.4:5061`` or ``[::1]:5061``, normalized; None if malformed."""
    match = re.fullmatch(r"\[([^\]]+)\]:(\d+)|([^:\s]+):(\d+)", text.strip())
    if not match:
        return None
    host = match.group(1) or match.group(3)
    port = int(match.group(2) or match.group(4))
    return (normalize_host(host), port)


def hostport(address: Address) -> str:
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_time(text: str) -> int:
    """An ISO 8601 time (``2024-05-01T10:00:00Z``, with an offset, or naive = UTC) or epoch
    seconds, as integer microseconds since the epoch."""
    value = text.strip()
    try:
        return round(float(value) * 1_000_000)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(value.replace("z", "Z"))
    except ValueError:
        raise ExportError(f"not an ISO 8601 time: {text!r}",
                          "e.g. 2024-05-01T10:00:00Z, 2024-05-01 12:00:00+02:00 (no zone = UTC), or epoch seconds") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return round(moment.timestamp() * 1_000_000)


def iso(ts_us: int) -> str:
    return datetime.fromtimestamp(ts_us // 1_000_000, UTC).strftime("%Y-%m-%dT%H:%M:%S") + \
        f".{ts_us % 1_000_000:06d}Z"


# -- reading the captures ----------------------------------------------------------------------

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
    def flow(self) -> tuple[Address, Address, int]:
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
    fins: dict[tuple[Address, Address, int], tuple[int, tuple[int, int]]] = field(default_factory=dict)
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


# -- key log, SRTP keys, JSON log ----------------------------------------------------------------

_COMMENT = re.compile(r"#\s*conn=(?P<conn>\S+)\s+leg=(?P<leg>\S+)(?:\s+route=(?P<route>\S+))?"
                      r"\s+client=(?P<client>\S+)\s+server=(?P<server>\S+)(?:\s+(?P<version>\S+))?(?:\s+(?P<cipher>\S+))?")


@dataclass(slots=True)
class KeyEntry:
    """One handshake of the key log: its comment and the NSS lines that follow it."""

    index: int
    conn: str
    leg: str
    route: str | None
    client: Address | None
    server: Address | None
    version: str | None
    cipher: str | None
    comment: str
    lines: list[str] = field(default_factory=list)

    def text(self) -> str:
        return "\n".join([self.comment, *self.lines]) + "\n"

    def facts(self) -> dict[str, object]:
        return {"conn": self.conn, "leg": self.leg, "route": self.route,
                "client": hostport(self.client) if self.client else None,
                "server": hostport(self.server) if self.server else None,
                "version": self.version, "cipher": self.cipher, "keylog_lines": len(self.lines)}


def parse_keylog(text: str) -> list[KeyEntry]:
    """Key-log entries as the key-log sink writes them; lines before any siptap comment (or
    after an unrecognized comment) belong to no connection and are never exported."""
    entries: list[KeyEntry] = []
    current: KeyEntry | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        if line.startswith("#"):
            match = _COMMENT.match(line)
            if match is None:
                current = None
                continue
            current = KeyEntry(
                index=len(entries), conn=match["conn"], leg=match["leg"], route=match["route"],
                client=parse_hostport(match["client"]), server=parse_hostport(match["server"]),
                version=match["version"], cipher=match["cipher"], comment=line,
            )
            entries.append(current)
        elif current is not None:
            current.lines.append(line)
    return entries


def _srtp_token(text: str) -> str:
    """How the SRTP keys sink writes a Call-ID (siptap.mirror.srtp._token)."""
    return "".join("_" if ch.isspace() or ch in "\"'" else ch for ch in text) or "-"


def select_srtp_lines(text: str, call_ids: set[str], since_us: int | None, until_us: int | None) -> list[str]:
    """The SRTP key lines of ``call_ids`` whose leading time lies in the window."""
    tokens = {_srtp_token(c) for c in call_ids}
    out = []
    for line in text.splitlines():
        fields = line.split(" ")
        call = next((f[len("call-id="):] for f in fields[1:4] if f.startswith("call-id=")), None)
        if call is None or call not in tokens:
            continue
        if since_us is not None or until_us is not None:
            try:
                ts = parse_time(fields[0])
            except ExportError:
                continue
            if (since_us is not None and ts < since_us) or (until_us is not None and ts > until_us):
                continue
        out.append(line)
    return out


# handshake_done fields copied into the summary: facts about the connection, never secrets.
_HANDSHAKE_FIELDS = ("timestamp", "conn", "route", "leg", "role", "client", "server", "upstream", "version", "cipher",
                     "key_exchange", "extended_master_secret", "session_reused", "sni", "client_random",
                     "peer_certificate", "peer_chain_length")
_CLOSED_FIELDS = ("timestamp", "closed_by", "reason", "duration")


@dataclass(slots=True)
class LogFacts:
    handshakes: list[dict[str, object]] = field(default_factory=list)  # handshake_done, allow-listed
    closed: dict[str, dict[str, object]] = field(default_factory=dict)  # conn -> connection_closed


def parse_json_log(text: str) -> LogFacts:
    facts = LogFacts()
    for line in text.splitlines():
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if not isinstance(event, dict) or not isinstance(event.get("conn"), str):
            continue
        if event.get("event") == "handshake_done":
            facts.handshakes.append({k: event[k] for k in _HANDSHAKE_FIELDS if k in event})
        elif event.get("event") == "connection_closed":
            facts.closed[event["conn"]] = {k: event[k] for k in _CLOSED_FIELDS if k in event}
    return facts


# -- selection and the bundle ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Selection:
    call_ids: frozenset[str] = frozenset()  # empty: any call
    since_us: int | None = None
    until_us: int | None = None

    def in_window(self, ts_us: int) -> bool:
        return (self.since_us is None or ts_us >= self.since_us) and (self.until_us is None or ts_us <= self.until_us)

    def wants(self, message: Message) -> bool:
        if message.call_id is None:
            return False
        if self.call_ids and message.call_id not in self.call_ids:
            return False
        return self.in_window(message.ts_us)

    def describe(self) -> dict[str, object]:
        return {"call_ids": sorted(self.call_ids) or None,
                "since": iso(self.since_us) if self.since_us is not None else None,
                "until": iso(self.until_us) if self.until_us is not None else None}


@dataclass(slots=True)
class Sources:
    captures: Path
    prefix: str | None
    keylog: Path | None
    srtp: Path | None
    log: Path | None


@dataclass(slots=True)
class Bundle:
    files: dict[str, bytes]
    summary: dict[str, object]
    warnings: list[str]


def _read_text(path: Path | None, what: str, warnings: list[str]) -> str:
    if path is None:
        warnings.append(f"no {what} configured: its part of the bundle is empty")
        return ""
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        warnings.append(f"{path}: {what} not found: its part of the bundle is empty")
        return ""
    except OSError as exc:
        raise ExportError(f"{path}: cannot read the {what}: {exc.strerror or exc}") from None


def build_bundle(sources: Sources, selection: Selection, *, keys: bool = True) -> Bundle:
    """Read the sources and return the bundle's files (name -> bytes) and its summary."""
    files = capture_files(sources.captures, sources.prefix)
    if not files:
        shape = f"{sources.prefix or '<prefix>'}-YYYYmmdd-HHMMSS-N.pcap[ng]"
        raise ExportError(f"no captures found in {sources.captures} (looked for {shape})",
                          "is [mirror.pcap] enabled in the config? or give --captures DIR")
    scan = read_messages(files)
    warnings = list(scan.warnings)
    if not scan.messages:
        raise ExportError(f"no SIP messages in the {len(scan.files)} capture file(s) of {sources.captures}")
    _check_found(scan, selection)
    chosen = [m for m in scan.messages if selection.wants(m)]
    if not chosen:
        raise ExportError(
            f"no selected message between {_bound(selection.since_us)} and {_bound(selection.until_us)}",
            f"the captures cover {iso(scan.first_us or 0)} .. {iso(scan.last_us or 0)}")
    call_ids = sorted({m.call_id for m in chosen if m.call_id is not None}, key=lambda c: _first_ts(chosen, c))
    flows = sorted({m.flow for m in chosen}, key=lambda f: min(scan.order[m.position] for m in chosen if m.flow == f))

    # Key log: the entries of the connections that carried the chosen messages.
    entries = parse_keylog(_read_text(sources.keylog, "key log", warnings))
    log_facts = parse_json_log(_read_text(sources.log, "JSON log", warnings)) if sources.log else LogFacts()
    conns: dict[tuple[Address, Address, int], list[str]] = {}
    for flow in flows:
        client, server, _gen = flow
        matches = [e for e in entries if e.client == client and e.server == server]
        first = min(m.ts_us for m in chosen if m.flow == flow)
        picked = _pick_entry(matches, first, log_facts)
        if len(picked) > 1:
            warnings.append(f"{len(picked)} key-log entries match {hostport(client)} -> {hostport(server)} "
                            f"(address reuse) and no --log time decides: all are included")
        if not picked:
            warnings.append(f"no key-log entry for {hostport(client)} -> {hostport(server)}")
        conns[flow] = sorted({e.conn for e in picked})
    conn_ids = sorted({c for cs in conns.values() for c in cs}, key=lambda c: min(e.index for e in entries if e.conn == c))
    kept_entries = [e for e in entries if e.conn in set(conn_ids)]
    keys_text = "".join(e.text() for e in kept_entries) if keys else ""

    srtp_text = _read_text(sources.srtp, "SRTP keys file", warnings)
    srtp_lines = select_srtp_lines(srtp_text, set(call_ids), selection.since_us, selection.until_us)

    pcapng = _encode_pcapng(chosen, scan, selection, keys_text.encode())
    summary = _summary(sources, selection, scan, chosen, call_ids, conns, kept_entries, log_facts,
                       srtp_lines, keys=keys)
    return Bundle(
        files={
            "calls.pcapng": pcapng,
            "keys.log": keys_text.encode(),
            "srtp-keys.log": "".join(line + "\n" for line in srtp_lines).encode(),
            "summary.txt": _summary_text(summary).encode(),
            "summary.json": (json.dumps(summary, indent=2) + "\n").encode(),
        },
        summary=summary,
        warnings=warnings,
    )


def _bound(ts_us: int | None) -> str:
    return iso(ts_us) if ts_us is not None else "-"


def _first_ts(messages: list[Message], call_id: str) -> int:
    return min(m.ts_us for m in messages if m.call_id == call_id)


def _check_found(scan: CaptureScan, selection: Selection) -> None:
    known = {m.call_id for m in scan.messages if m.call_id is not None}
    missing = sorted(selection.call_ids - known)
    if not missing:
        return
    # A few that exist, the most recent first: what an operator most likely meant.
    recent: list[str] = []
    for m in reversed(scan.messages):
        if m.call_id is not None and m.call_id not in recent:
            recent.append(m.call_id)
    shown = ", ".join(recent[:5]) + (f" (and {len(recent) - 5} more)" if len(recent) > 5 else "")
    which = ", ".join(missing)
    raise ExportError(f"Call-ID not found in {len(scan.files)} capture file(s): {which}; some that exist: {shown}",
                      "Call-IDs are compared exactly (case-sensitive)")


def _pick_entry(matches: list[KeyEntry], first_us: int, log: LogFacts) -> list[KeyEntry]:
    if len(matches) <= 1:
        return matches
    # The JSON log dates each handshake: take the last one before the flow's first kept message.
    dated: list[tuple[int, KeyEntry]] = []
    for entry in matches:
        for hs in log.handshakes:
            if hs.get("conn") == entry.conn and hs.get("leg") == entry.leg and isinstance(hs.get("timestamp"), str):
                try:
                    dated.append((parse_time(str(hs["timestamp"])), entry))
                except ExportError:
                    pass
                break
    before = [(ts, e) for ts, e in dated if ts <= first_us]
    if before:
        return [max(before, key=lambda te: te[0])[1]]
    return matches


def _encode_pcapng(chosen: list[Message], scan: CaptureScan, selection: Selection, keys: bytes) -> bytes:
    """SHB, IDB, DSB (if keys), then the chosen messages re-encoded flow by flow, in their
    original order, each flow's FIN exchange where it was if it lies in the window."""
    out = [pcap.pcapng_section_header(f"siptap {__version__} export".encode()),
           pcap.pcapng_interface_description(name=b"siptap-export")]
    if keys:
        out.append(pcap.pcapng_decryption_secrets(keys))
    order = scan.order
    items: list[tuple[int, int, object]] = [(order[m.position], 0, m) for m in chosen]
    kept_flows = {m.flow for m in chosen}
    for flow, (ts_us, position) in scan.fins.items():
        if flow in kept_flows and selection.in_window(ts_us):
            items.append((order[position], 1, (flow, ts_us)))
    items.sort(key=lambda item: (item[0], item[1]))
    tcp: dict[tuple[Address, Address, int], pcap.TcpFlow] = {}

    def record(ts_us: int, frame: bytes) -> None:
        out.append(pcap.pcapng_enhanced_packet(ts_us // 1_000_000, ts_us % 1_000_000, frame))

    for _pos, kind, item in items:
        if kind == 1:
            flow, ts_us = item  # type: ignore[misc]
            if flow in tcp:
                for frame in tcp[flow].fin(True) + tcp[flow].fin(False):
                    record(ts_us, frame)
            continue
        assert isinstance(item, Message)
        message = item
        tcp_flow = tcp.get(message.flow)
        if tcp_flow is None:
            tcp_flow = tcp[message.flow] = pcap.TcpFlow(message.client, message.server)
            for frame in tcp_flow.handshake():
                record(message.ts_us, frame)
        frames = tcp_flow.segment(message.from_client, message.data)
        stamps = message.frame_ts if len(message.frame_ts) == len(frames) else [message.ts_us] * len(frames)
        for ts_us, frame in zip(stamps, frames):
            record(ts_us, frame)
    return b"".join(out)


def _summary(sources: Sources, selection: Selection, scan: CaptureScan, chosen: list[Message], call_ids: list[str],
             conns: dict[tuple[Address, Address, int], list[str]], entries: list[KeyEntry], log: LogFacts,
             srtp_lines: list[str], *, keys: bool) -> dict[str, object]:
    by_conn: dict[str, dict[str, object]] = {}
    for entry in entries:
        conn = by_conn.setdefault(entry.conn, {"conn": entry.conn, "route": entry.route, "legs": []})
        leg: dict[str, object] = {k: v for k, v in entry.facts().items() if k not in ("conn", "route")}
        handshake = next((h for h in log.handshakes if h.get("conn") == entry.conn and h.get("leg") == entry.leg), None)
        if handshake is not None:
            leg["handshake_done"] = handshake
        conn["legs"].append(leg)  # type: ignore[union-attr]
        if entry.conn in log.closed:
            conn["connection_closed"] = log.closed[entry.conn]
    # Connections known only from the log (no key-log entry): by address.
    for flow, ids in conns.items():
        if ids:
            continue
        client, server, _gen = flow
        for hs in log.handshakes:
            if parse_hostport(str(hs.get("client", ""))) == client and parse_hostport(str(hs.get("server", ""))) == server:
                conn_id = str(hs["conn"])
                conn = by_conn.setdefault(conn_id, {"conn": conn_id, "route": hs.get("route"), "legs": []})
                conn["legs"].append({"leg": hs.get("leg"), "client": hs.get("client"), "server": hs.get("server"),  # type: ignore[union-attr]
                                     "version": hs.get("version"), "cipher": hs.get("cipher"), "handshake_done": hs})
                ids.append(conn_id)
    calls = []
    for call_id in call_ids:
        messages = [m for m in chosen if m.call_id == call_id]
        call_conns = sorted({c for m in messages for c in conns.get(m.flow, [])})
        calls.append({
            "call_id": call_id,
            "first": iso(messages[0].ts_us),
            "last": iso(messages[-1].ts_us),
            "messages": len(messages),
            "connections": call_conns,
            "flow": [_flow_row(m, entries) for m in messages],
        })
    return {
        "siptap_export": 1,
        "created": iso(round(datetime.now(UTC).timestamp() * 1_000_000)),
        "siptap_version": __version__,
        "selection": selection.describe(),
        "sources": {
            "captures": [str(p) for p in scan.files],
            "keylog": str(sources.keylog) if sources.keylog else None,
            "srtp_keys": str(sources.srtp) if sources.srtp else None,
            "log": str(sources.log) if sources.log else None,
        },
        "files": {
            "calls.pcapng": {"messages": len(chosen), "note": "TCP headers re-encoded: sequence numbers made "
                             "contiguous over the kept messages; payloads, addresses and times are the originals"},
            "keys.log": {"connections": len({e.conn for e in entries}) if keys else 0,
                         "lines": sum(len(e.lines) for e in entries) if keys else 0,
                         "note": None if keys else "left out (--no-keys)"},
            "srtp-keys.log": {"lines": len(srtp_lines)},
        },
        "calls": calls,
        "connections": list(by_conn.values()),
    }


def _flow_row(message: Message, entries: list[KeyEntry]) -> dict[str, object]:
    view = message.view
    leg = next((e.leg for e in entries if e.client == message.client and e.server == message.server), None)
    return {
        "time": iso(message.ts_us),
        "leg": leg,
        "direction": "client->server" if message.from_client else "server->client",
        "src": hostport(message.src),
        "dst": hostport(message.dst),
        "method": view.method,
        "status": view.status_code,
        "reason": view.reason,
        "label": message.label(),
        "cseq": f"{view.cseq_number} {view.cseq_method}" if view.cseq_number is not None else None,
    }


def _summary_text(summary: dict[str, object]) -> str:
    sel = summary["selection"]
    assert isinstance(sel, dict)
    lines = [f"siptap export bundle (siptap {summary['siptap_version']}, created {summary['created']})", ""]
    lines.append("selection: " + "; ".join(
        f"{k}={', '.join(v) if isinstance(v, list) else v}" for k, v in sel.items() if v is not None))
    sources = summary["sources"]
    assert isinstance(sources, dict)
    lines.append(f"captures: {len(sources['captures'])} file(s); key log: {sources['keylog'] or '-'}; "
                 f"SRTP keys: {sources['srtp_keys'] or '-'}; JSON log: {sources['log'] or '-'}")
    files = summary["files"]
    assert isinstance(files, dict)
    lines.append(f"calls.pcapng: {files['calls.pcapng']['messages']} SIP messages ({files['calls.pcapng']['note']})")
    keys = files["keys.log"]
    lines.append(f"keys.log: {keys['lines']} NSS lines of {keys['connections']} connection(s)"
                 + (f" ({keys['note']})" if keys["note"] else "") + "; also embedded in calls.pcapng")
    lines.append(f"srtp-keys.log: {files['srtp-keys.log']['lines']} line(s)")
    lines.append("open: tshark -r calls.pcapng -d tcp.port==<server port>,sip -Y sip   (or Wireshark, sngrep -I)")
    for call in summary["calls"]:  # type: ignore[union-attr]
        lines += ["", f"call {call['call_id']}", f"  {call['first']} .. {call['last']}, {call['messages']} messages, "
                  f"connection(s) {', '.join(call['connections']) or '-'}"]
        for row in call["flow"]:
            arrow = f"{row['src']} -> {row['dst']}"
            lines.append(f"  {row['time']}  {row['leg'] or '-':8} {arrow:45} {row['label'][:60]:60}  CSeq {row['cseq'] or '-'}")
    lines += ["", "TLS connections involved"]
    for conn in summary["connections"]:  # type: ignore[union-attr]
        lines.append(f"  conn {conn['conn']} route {conn.get('route') or '-'}")
        for leg in conn["legs"]:
            lines.append(f"    {leg.get('leg')}: {leg.get('client')} -> {leg.get('server')}  {leg.get('version') or '-'}  "
                         f"{leg.get('cipher') or '-'}")
            hs = leg.get("handshake_done")
            if isinstance(hs, dict):
                extra = [f"{k}={hs[k]}" for k in ("key_exchange", "extended_master_secret", "session_reused", "sni",
                                                    "upstream") if hs.get(k) is not None]
                lines.append(f"      handshake {hs.get('timestamp', '-')}: {' '.join(extra)}")
                peer = hs.get("peer_certificate")
                if isinstance(peer, dict):
                    shown = {k: peer[k] for k in ("subject", "issuer", "not_after", "sha256") if k in peer}
                    lines.append(f"      peer certificate: {json.dumps(shown) if shown else json.dumps(peer)}")
        closed = conn.get("connection_closed")
        if isinstance(closed, dict):
            lines.append(f"    closed {closed.get('timestamp', '-')} by {closed.get('closed_by')}: {closed.get('reason')}"
                         f" after {closed.get('duration')} s")
    if not summary["connections"]:
        lines.append("  (none found in the key log or the JSON log)")
    return "\n".join(lines) + "\n"


# -- writing ---------------------------------------------------------------------------------------


def write_bundle(bundle: Bundle, out: Path, *, force: bool = False) -> Path:
    """Write the folder and ``<out>.tar.gz``; returns the archive's path."""
    out = out.resolve() if not out.is_absolute() else out
    archive = out.with_name(out.name + ".tar.gz")
    if out.exists() or out.is_symlink():
        if not force:
            raise ExportError(f"{out} already exists", "choose another --out, or add --force to replace it")
        if not out.is_dir() or out.is_symlink() or any(p.name not in BUNDLE_FILES for p in out.iterdir()):
            raise ExportError(f"{out} is not a siptap bundle folder: not replacing it, even with --force")
    if archive.exists() and not force:
        raise ExportError(f"{archive} already exists", "choose another --out, or add --force to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))  # 0700
    try:
        for name, data in bundle.files.items():
            fd = os.open(staging / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
        tmp_archive = staging.with_name(staging.name + ".tar.gz")
        fd = os.open(tmp_archive, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "wb") as fh, tarfile.open(fileobj=fh, mode="w:gz") as tar:
            tar.add(staging, arcname=out.name)
        if out.exists():
            shutil.rmtree(out)
        os.replace(staging, out)
        os.replace(tmp_archive, archive)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        staging.with_name(staging.name + ".tar.gz").unlink(missing_ok=True)
        raise
    return archive


# -- command line ---------------------------------------------------------------------------------


def add_parser(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = subparsers.add_parser(
        "export", parents=[common],
        help="escalation bundle for a vendor: the selected calls' cleartext pcapng, their key-log and SRTP lines, a summary",
        description="Select calls by Call-ID and/or time window from siptap's captures (cleartext pcap sink, key log, "
        "SRTP keys, optionally the JSON log) and write one bundle folder plus a .tar.gz of it: calls.pcapng (just those "
        "calls' SIP messages, key log embedded), keys.log (only the connections that carried them), srtp-keys.log "
        "(only those calls), summary.txt/summary.json (call flow, TLS facts). Nothing from other calls is copied.",
        epilog="Paths default to the config's [mirror] section; --captures/--keylog/--srtp override it. Times are ISO "
        "8601 (no zone = UTC) or epoch seconds. Note: TLS keys decrypt the whole connection, including other calls it "
        "carried, for whoever also holds a raw capture of it (--no-keys leaves them out). "
        "exit status: 0 bundle written, 1 nothing to export or a file problem",
    )
    p.add_argument("--call-id", action="append", default=[], metavar="ID", help="a Call-ID to export; repeat for several")
    p.add_argument("--since", metavar="TIME", help="only messages at or after TIME")
    p.add_argument("--until", metavar="TIME", help="only messages at or before TIME")
    p.add_argument("--config", "-c", type=Path, default=None,
                   help="config whose [mirror] section names the files (default: config.toml)")
    p.add_argument("--captures", type=Path, metavar="DIR", help="pcap sink folder (or one capture file)")
    p.add_argument("--keylog", type=Path, metavar="FILE", help="NSS key-log file")
    p.add_argument("--srtp", type=Path, metavar="FILE", help="SRTP keys file")
    p.add_argument("--log", type=Path, metavar="FILE", help="siptap's JSON log (stdout of `siptap run`), for TLS facts")
    p.add_argument("--no-keys", dest="keys", action="store_false", help="leave TLS keys out (keys.log empty, no DSB)")
    p.add_argument("--out", "-o", type=Path, required=True, metavar="DIR", help="bundle folder to create")
    p.add_argument("--force", action="store_true", help="replace an existing bundle folder and archive")


def sources_from_args(args: argparse.Namespace) -> Sources:
    config_path: Path | None = args.config
    need_config = config_path is not None or args.captures is None or args.keylog is None or args.srtp is None
    mirror = None
    if need_config:
        from siptap.config import load_config

        path = config_path or Path("config.toml")
        if config_path is None and not path.exists():
            if args.captures is None:
                raise ExportError(f"{path} not found, and no --captures given",
                                  "give --config FILE, or --captures DIR [--keylog FILE --srtp FILE]")
        else:
            mirror = load_config(path).mirror
    captures = args.captures or (mirror.pcap.directory if mirror and mirror.pcap else None)
    if captures is None:
        raise ExportError("no capture folder: the config has no [mirror.pcap] section", "give --captures DIR")
    prefix = None if args.captures else (mirror.pcap.prefix if mirror and mirror.pcap else None)
    keylog = args.keylog or (mirror.keylog.path if mirror and mirror.keylog else None)
    srtp = args.srtp or (mirror.srtp_keys.path if mirror and mirror.srtp_keys else None)
    if args.log is not None and not args.log.is_file():
        raise ExportError(f"{args.log}: JSON log not found")
    return Sources(captures=captures, prefix=prefix, keylog=keylog, srtp=srtp, log=args.log)


def run_from_args(args: argparse.Namespace) -> int:
    if not args.call_id and args.since is None and args.until is None:
        raise ExportError("nothing selected", "give --call-id ID (repeatable) and/or --since/--until TIME")
    since = parse_time(args.since) if args.since is not None else None
    until = parse_time(args.until) if args.until is not None else None
    if since is not None and until is not None and since > until:
        raise ExportError(f"--since {args.since} is after --until {args.until}")
    selection = Selection(frozenset(c.strip() for c in args.call_id if c.strip()), since, until)
    sources = sources_from_args(args)
    out: Path = args.out
    if (out.exists() or out.with_name(out.name + ".tar.gz").exists()) and not args.force:
        # Before reading anything: the cheap refusal first.
        raise ExportError(f"{out if out.exists() else out.with_name(out.name + '.tar.gz')} already exists",
                          "choose another --out, or add --force to replace it")
    bundle = build_bundle(sources, selection, keys=args.keys)
    write_bundle(bundle, out, force=args.force)
    for warning in bundle.warnings:
        print(f"siptap: warning: {warning}", file=sys.stderr)
    files = bundle.summary["files"]
    assert isinstance(files, dict)
    calls = bundle.summary["calls"]
    assert isinstance(calls, list)
    print(f"wrote {out}/ and {out}.tar.gz: {len(calls)} call(s), {files['calls.pcapng']['messages']} SIP messages, "
          f"{files['keys.log']['lines']} key-log lines of {files['keys.log']['connections']} connection(s), "
          f"{files['srtp-keys.log']['lines']} SRTP key line(s)")
    return 0

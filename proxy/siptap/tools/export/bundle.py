"""The bundle in memory: read the sources, keep the selected calls, and make every file of the bundle."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from siptap.tools.calls.grouping import Call, group_calls
from siptap.tools.export.addresses import hostport
from siptap.tools.export.captures import CaptureScan, Flow, Message, capture_files, read_messages
from siptap.tools.export.errors import ExportError
from siptap.tools.export.json_log import LogFacts, parse_json_log
from siptap.tools.export.keylog import KeyEntry, flow_entries, parse_keylog
from siptap.tools.export.legs import flow_legs
from siptap.tools.export.pcapng import encode_pcapng
from siptap.tools.export.selection import Selection, Sources, check_found
from siptap.tools.export.srtp_keys import select_srtp_lines
from siptap.tools.export.summary import Summary, build_summary, summary_text
from siptap.tools.export.times import iso
from siptap.tools.ladder.model import build_ladders
from siptap.tools.ladder.svg import ladders_html

# Every name a bundle folder may hold (keys.log only with keys): what --force may replace.
BUNDLE_FILES = ("calls.pcapng", "keys.log", "srtp-keys.log", "summary.txt", "summary.json", "ladder.html")


@dataclass(slots=True)
class Bundle:
    files: dict[str, bytes]
    summary: Summary
    warnings: list[str]
    # With keys: the calls outside the selection that the same keys decrypt in a raw capture of
    # those connections. For the operator's eyes (printed, counted in the summary), never copied.
    also_decrypted: list[Call] = field(default_factory=list)


def read_source_text(path: Path | None, what: str, warnings: list[str],
                     consequence: str = "its part of the bundle is empty") -> str:
    """A text input, or "" with a warning (what, then ``consequence``) when it is not configured or not there."""
    if path is None:
        warnings.append(f"no {what} configured: {consequence}")
        return ""
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        warnings.append(f"{path}: {what} not found: {consequence}")
        return ""
    except OSError as exc:
        raise ExportError(f"{path}: cannot read the {what}: {exc.strerror or exc}") from None


def read_scan(sources: Sources) -> CaptureScan:
    """Every SIP message of the pcap sink's files; refuses no files and files without SIP."""
    files = capture_files(sources.captures, sources.prefix)
    if not files:
        shape = f"{sources.prefix or '<prefix>'}-YYYYmmdd-HHMMSS-N.pcap[ng]"
        raise ExportError(f"no captures found in {sources.captures} (looked for {shape})",
                          "is [mirror.pcap] enabled in the config? or give --captures DIR")
    scan = read_messages(files)
    if not scan.messages:
        raise ExportError(f"no SIP messages in the {len(scan.files)} capture file(s) of {sources.captures}")
    return scan


def build_bundle(sources: Sources, selection: Selection, *, keys: bool = False, scan: CaptureScan | None = None) -> Bundle:
    """Read the sources (the captures unless ``scan`` is given) and return the bundle's files
    (name -> bytes) and its summary. ``keys``: add ``keys.log`` (and the pcapng's secrets block)."""
    scan = scan if scan is not None else read_scan(sources)
    warnings = list(scan.warnings)
    check_found(scan, selection)
    chosen = [m for m in scan.messages if selection.wants(m)]
    if not chosen:
        raise ExportError(
            f"no selected message between {_bound(selection.since_us)} and {_bound(selection.until_us)}",
            f"the captures cover {iso(scan.first_us or 0)} .. {iso(scan.last_us or 0)}")
    call_ids = sorted({m.call_id for m in chosen if m.call_id is not None}, key=lambda c: _first_ts(chosen, c))

    # Key log: the entries of the connections that carried the chosen messages.
    entries = parse_keylog(read_source_text(sources.keylog, "key log", warnings))
    log_facts = parse_json_log(read_source_text(sources.log, "JSON log", warnings)) if sources.log else LogFacts()
    by_flow = flow_entries(chosen, entries, log_facts)
    flows = sorted(by_flow, key=lambda f: min(scan.order[m.position] for m in chosen if m.flow == f))
    conns: dict[Flow, list[str]] = {}
    for flow in flows:
        client, server, _gen = flow
        picked = by_flow[flow]
        if len(picked) > 1:
            warnings.append(f"{len(picked)} key-log entries match {hostport(client)} -> {hostport(server)} "
                            f"(address reuse) and no --log time decides: all are included")
        if not picked:
            warnings.append(f"no key-log entry for {hostport(client)} -> {hostport(server)}")
        conns[flow] = sorted({e.conn for e in picked})
    conn_ids = sorted({c for cs in conns.values() for c in cs}, key=lambda c: min(e.index for e in entries if e.conn == c))
    kept_entries = [e for e in entries if e.conn in set(conn_ids)]
    keys_text = "".join(e.text() for e in kept_entries) if keys else ""
    also = _also_decrypted(scan, entries, log_facts, set(conn_ids), set(call_ids)) if keys and keys_text else []

    srtp_text = read_source_text(sources.srtp, "SRTP keys file", warnings)
    srtp_lines = select_srtp_lines(srtp_text, set(call_ids), selection.since_us, selection.until_us)

    pcapng = encode_pcapng(chosen, scan, selection, keys_text.encode())
    summary = build_summary(sources, selection, scan, chosen, call_ids, conns, kept_entries, log_facts,
                            srtp_lines, keys=keys, also_decrypted=also)
    ladders = build_ladders(chosen, flow_legs(by_flow, entries, log_facts))
    files = {"calls.pcapng": pcapng}
    if keys:
        files["keys.log"] = keys_text.encode()
    files |= {
        "srtp-keys.log": "".join(line + "\n" for line in srtp_lines).encode(),
        "summary.txt": summary_text(summary, ladders).encode(),
        "summary.json": (json.dumps(summary, indent=2) + "\n").encode(),
        "ladder.html": ladders_html(ladders, title=f"siptap export: {len(ladders)} call(s)",
                                    notes=[f"selection: {selection.describe()['asked'] or _window(selection)}"]).encode(),
    }
    return Bundle(files=files, summary=summary, warnings=warnings, also_decrypted=also)


def _also_decrypted(scan: CaptureScan, entries: list[KeyEntry], log: LogFacts, conn_ids: set[str],
                    selected: set[str]) -> list[Call]:
    """The other calls on the connections whose keys the bundle carries: a TLS key decrypts a
    whole connection, so whoever also holds a raw capture of it can read these too."""
    exposed = {flow for flow, picked in flow_entries(scan.messages, entries, log).items()
               if any(e.conn in conn_ids for e in picked)}
    return [c for c in group_calls(m for m in scan.messages if m.flow in exposed) if c.call_id not in selected]


def _window(selection: Selection) -> str:
    return f"messages between {_bound(selection.since_us)} and {_bound(selection.until_us)}"


def _bound(ts_us: int | None) -> str:
    return iso(ts_us) if ts_us is not None else "-"


def _first_ts(messages: list[Message], call_id: str) -> int:
    return min(m.ts_us for m in messages if m.call_id == call_id)

"""The bundle in memory: read the sources, keep the selected calls, and make every file of the bundle."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from siptap.tools.export.addresses import hostport
from siptap.tools.export.captures import Flow, Message, capture_files, read_messages
from siptap.tools.export.errors import ExportError
from siptap.tools.export.json_log import LogFacts, parse_json_log
from siptap.tools.export.keylog import parse_keylog, pick_entry
from siptap.tools.export.pcapng import encode_pcapng
from siptap.tools.export.selection import Selection, Sources, check_found
from siptap.tools.export.srtp_keys import select_srtp_lines
from siptap.tools.export.summary import Summary, build_summary, summary_text
from siptap.tools.export.times import iso

BUNDLE_FILES = ("calls.pcapng", "keys.log", "srtp-keys.log", "summary.txt", "summary.json")


@dataclass(slots=True)
class Bundle:
    files: dict[str, bytes]
    summary: Summary
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
    check_found(scan, selection)
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
    conns: dict[Flow, list[str]] = {}
    for flow in flows:
        client, server, _gen = flow
        matches = [e for e in entries if e.client == client and e.server == server]
        first = min(m.ts_us for m in chosen if m.flow == flow)
        picked = pick_entry(matches, first, log_facts)
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

    pcapng = encode_pcapng(chosen, scan, selection, keys_text.encode())
    summary = build_summary(sources, selection, scan, chosen, call_ids, conns, kept_entries, log_facts,
                       srtp_lines, keys=keys)
    return Bundle(
        files={
            "calls.pcapng": pcapng,
            "keys.log": keys_text.encode(),
            "srtp-keys.log": "".join(line + "\n" for line in srtp_lines).encode(),
            "summary.txt": summary_text(summary).encode(),
            "summary.json": (json.dumps(summary, indent=2) + "\n").encode(),
        },
        summary=summary,
        warnings=warnings,
    )


def _bound(ts_us: int | None) -> str:
    return iso(ts_us) if ts_us is not None else "-"


def _first_ts(messages: list[Message], call_id: str) -> int:
    return min(m.ts_us for m in messages if m.call_id == call_id)

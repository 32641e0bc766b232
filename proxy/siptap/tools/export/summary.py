"""``summary.json`` and ``summary.txt``: per call its flow, per connection its TLS facts.

The JSON shape is spelled out as TypedDicts; :func:`summary_text` renders the same record.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import NotRequired, TypedDict

from siptap import __version__
from siptap.tools.export.addresses import hostport, parse_hostport
from siptap.tools.export.captures import CaptureScan, Flow, Message
from siptap.tools.export.json_log import LogFacts
from siptap.tools.export.keylog import KeyEntry
from siptap.tools.export.selection import Selection, Sources
from siptap.tools.export.times import iso


class FlowRow(TypedDict):
    """One message of a call's flow."""

    time: str
    leg: str | None  # from the key-log entry of its connection; None without one
    direction: str  # "client->server" or "server->client"
    src: str
    dst: str
    method: str | None
    status: int | None
    reason: str | None
    label: str  # "INVITE sip:..." or "200 OK"
    cseq: str | None


class CallSummary(TypedDict):
    call_id: str
    first: str
    last: str
    messages: int
    connections: list[str]
    flow: list[FlowRow]


class ConnectionSummary(TypedDict):
    """One proxied connection: its legs (key-log facts and, with --log, ``handshake_done``)."""

    conn: str
    route: object  # str or None; from the JSON log, whatever it held
    legs: list[dict[str, object]]
    connection_closed: NotRequired[dict[str, object]]


class SourcesSummary(TypedDict):
    captures: list[str]
    keylog: str | None
    srtp_keys: str | None
    log: str | None


class PcapngFile(TypedDict):
    messages: int
    note: str


class KeysFile(TypedDict):
    connections: int
    lines: int
    note: str | None


class SrtpKeysFile(TypedDict):
    lines: int


# The bundle's file names are not identifiers: the functional form.
FilesSummary = TypedDict("FilesSummary", {"calls.pcapng": PcapngFile, "keys.log": KeysFile,
                                          "srtp-keys.log": SrtpKeysFile})


class Summary(TypedDict):
    """``summary.json``, key for key (the order of the keys here is the order in the file)."""

    siptap_export: int  # the format's version
    created: str
    siptap_version: str
    selection: dict[str, object]
    sources: SourcesSummary
    files: FilesSummary
    calls: list[CallSummary]
    connections: list[ConnectionSummary]

def build_summary(sources: Sources, selection: Selection, scan: CaptureScan, chosen: list[Message], call_ids: list[str],
             conns: dict[Flow, list[str]], entries: list[KeyEntry], log: LogFacts,
             srtp_lines: list[str], *, keys: bool) -> Summary:
    by_conn: dict[str, ConnectionSummary] = {}
    for entry in entries:
        conn = by_conn.setdefault(entry.conn, {"conn": entry.conn, "route": entry.route, "legs": []})
        leg: dict[str, object] = {k: v for k, v in entry.facts().items() if k not in ("conn", "route")}
        handshake = next((h for h in log.handshakes if h.get("conn") == entry.conn and h.get("leg") == entry.leg), None)
        if handshake is not None:
            leg["handshake_done"] = handshake
        conn["legs"].append(leg)
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
                conn["legs"].append({"leg": hs.get("leg"), "client": hs.get("client"), "server": hs.get("server"),
                                     "version": hs.get("version"), "cipher": hs.get("cipher"), "handshake_done": hs})
                ids.append(conn_id)
    calls: list[CallSummary] = []
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


def _flow_row(message: Message, entries: list[KeyEntry]) -> FlowRow:
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


def summary_text(summary: Summary) -> str:
    sel = summary["selection"]
    lines = [f"siptap export bundle (siptap {summary['siptap_version']}, created {summary['created']})", ""]
    lines.append("selection: " + "; ".join(
        f"{k}={', '.join(v) if isinstance(v, list) else v}" for k, v in sel.items() if v is not None))
    sources = summary["sources"]
    lines.append(f"captures: {len(sources['captures'])} file(s); key log: {sources['keylog'] or '-'}; "
                 f"SRTP keys: {sources['srtp_keys'] or '-'}; JSON log: {sources['log'] or '-'}")
    files = summary["files"]
    lines.append(f"calls.pcapng: {files['calls.pcapng']['messages']} SIP messages ({files['calls.pcapng']['note']})")
    keys = files["keys.log"]
    lines.append(f"keys.log: {keys['lines']} NSS lines of {keys['connections']} connection(s)"
                 + (f" ({keys['note']})" if keys["note"] else "") + "; also embedded in calls.pcapng")
    lines.append(f"srtp-keys.log: {files['srtp-keys.log']['lines']} line(s)")
    lines.append("open: tshark -r calls.pcapng -d tcp.port==<server port>,sip -Y sip   (or Wireshark, sngrep -I)")
    for call in summary["calls"]:
        lines += ["", f"call {call['call_id']}", f"  {call['first']} .. {call['last']}, {call['messages']} messages, "
                  f"connection(s) {', '.join(call['connections']) or '-'}"]
        for row in call["flow"]:
            arrow = f"{row['src']} -> {row['dst']}"
            lines.append(f"  {row['time']}  {row['leg'] or '-':8} {arrow:45} {row['label'][:60]:60}  CSeq {row['cseq'] or '-'}")
    lines += ["", "TLS connections involved"]
    for conn in summary["connections"]:
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

"""``summary.json`` and ``summary.txt``: per call its flow, per connection its TLS facts.

The JSON shape is spelled out as TypedDicts; :func:`summary_text` renders the same record.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import NotRequired, TypedDict

from siptap import __version__
from siptap.tools.calls.grouping import Call
from siptap.tools.calls.table import duration
from siptap.tools.export.addresses import hostport, parse_hostport
from siptap.tools.export.captures import CaptureScan, Flow, Message
from siptap.tools.export.json_log import LogFacts
from siptap.tools.export.keylog import KeyEntry
from siptap.tools.export.selection import Selection, Sources
from siptap.tools.export.times import iso
from siptap.tools.ladder.model import Ladder
from siptap.tools.ladder.text import ladder_lines


class FlowRow(TypedDict):
    """One message of a call's flow."""

    time: str
    offset: float  # seconds since the call's first message
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
    sip_ports: list[int]  # the server ports of its flows: each needs `-d tcp.port==PORT,sip`
    open: str  # the tshark command that shows it as SIP


class AlsoDecrypted(TypedDict):
    """Calls outside the bundle that its keys decrypt in a raw capture: no Call-IDs, no parties."""

    calls: int
    first: str | None
    last: str | None
    which: list[str]  # per call: start, first request, final status, messages


class KeysFile(TypedDict):
    connections: int
    lines: int
    note: str | None
    also_decrypts: NotRequired[AlsoDecrypted]


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
             srtp_lines: list[str], *, keys: bool, also_decrypted: Sequence[Call] = ()) -> Summary:
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
        start = messages[0].ts_us
        calls.append({
            "call_id": call_id,
            "first": iso(messages[0].ts_us),
            "last": iso(messages[-1].ts_us),
            "messages": len(messages),
            "connections": call_conns,
            "flow": [_flow_row(m, entries, start) for m in messages],
        })
    ports = sorted({m.server[1] for m in chosen})
    keys_file: KeysFile = {
        "connections": len({e.conn for e in entries}) if keys else 0,
        "lines": sum(len(e.lines) for e in entries) if keys else 0,
        "note": None if keys else "not included: calls.pcapng holds the cleartext; --with-keys adds the key lines "
        "of these connections",
    }
    if keys:
        keys_file["also_decrypts"] = {
            "calls": len(also_decrypted),
            "first": iso(min(c.start_us for c in also_decrypted)) if also_decrypted else None,
            "last": iso(max(c.end_us for c in also_decrypted)) if also_decrypted else None,
            "which": [f"{iso(c.start_us)} {c.method or '-'} -> {c.status or 'no final response'}, "
                      f"{c.messages} messages" for c in also_decrypted],
        }
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
                             "contiguous over the kept messages; payloads, addresses and times are the originals",
                             "sip_ports": ports,
                             "open": "tshark -r calls.pcapng " + "".join(f"-d tcp.port=={p},sip " for p in ports)
                             + "-Y sip"},
            "keys.log": keys_file,
            "srtp-keys.log": {"lines": len(srtp_lines)},
        },
        "calls": calls,
        "connections": list(by_conn.values()),
    }


def _flow_row(message: Message, entries: list[KeyEntry], start_us: int) -> FlowRow:
    view = message.view
    leg = next((e.leg for e in entries if e.client == message.client and e.server == message.server), None)
    return {
        "time": iso(message.ts_us),
        "offset": (message.ts_us - start_us) / 1_000_000,
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


def summary_text(summary: Summary, ladders: Sequence[Ladder] = ()) -> str:
    """The summary for a person: per call its ladder (from ``ladders``: the JSON record has the
    flow, the ladder adds the pairing of the two legs' copies and the SDP markers)."""
    sel = summary["selection"]
    lines = [f"siptap export bundle (siptap {summary['siptap_version']}, created {summary['created']})", ""]
    lines.append("selection: " + ("; ".join(
        f"{k}={', '.join(map(str, v)) if isinstance(v, list) else v}" for k, v in sel.items() if v is not None) or "-"))
    sources = summary["sources"]
    lines.append(f"captures: {len(sources['captures'])} file(s); key log: {sources['keylog'] or '-'}; "
                 f"SRTP keys: {sources['srtp_keys'] or '-'}; JSON log: {sources['log'] or '-'}")
    files = summary["files"]
    pcapng = files["calls.pcapng"]
    lines.append(f"calls.pcapng: {pcapng['messages']} SIP messages, cleartext ({pcapng['note']})")
    lines.append(f"  open it: {pcapng['open']}   (or Wireshark with the same decode-as, or sngrep -I calls.pcapng)")
    lines += _keys_lines(files["keys.log"])
    lines.append(f"srtp-keys.log: {files['srtp-keys.log']['lines']} line(s)")
    lines.append("times: each call's start in UTC, then seconds since that start (+s) and since the message before (Δ)")
    lines.append("ladders: E-SBC | siptap | core; a message siptap relayed shows twice (received, then relayed); "
                 "=== and ✗: a response >= 400; ladder.html draws the same")
    for call in summary["calls"]:
        rows = call["flow"]
        span = rows[-1]["offset"] if rows else 0.0
        lines += ["", f"call {call['call_id']}",
                  f"  started {call['first']}, {call['messages']} messages over {duration(round(span * 1_000_000))}, "
                  f"connection(s) {', '.join(call['connections']) or '-'}"]
        ladder = next((ladder for ladder in ladders if ladder.call_id == call["call_id"]), None)
        if ladder is not None:
            lines += ["  " + line if line else "" for line in ladder_lines(ladder)]
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
                lines += certificate_lines(hs.get("peer_certificate"), hs.get("peer_chain_length"))
        closed = conn.get("connection_closed")
        if isinstance(closed, dict):
            lines.append(f"    closed {closed.get('timestamp', '-')} by {closed.get('closed_by')}: {closed.get('reason')}"
                         f" after {closed.get('duration')} s")
    if not summary["connections"]:
        lines.append("  (none found in the key log or the JSON log)")
    return "\n".join(lines) + "\n"


def _keys_lines(keys: KeysFile) -> list[str]:
    if keys["note"]:
        return [f"keys.log: {keys['note']}"]
    lines = [f"keys.log: {keys['lines']} NSS lines of {keys['connections']} connection(s); also embedded in calls.pcapng"]
    also = keys.get("also_decrypts")
    if also and also["calls"]:
        lines.append(f"  caution: these keys decrypt their whole connections. In a raw capture of them they also "
                     f"decrypt {also['calls']} other call(s), {also['first']} .. {also['last']} (not in this bundle; "
                     f"the export listed their Call-IDs to whoever ran it):")
        lines += [f"    {which}" for which in also["which"]]
    elif also is not None:
        lines.append("  these connections carried no other call in the captures")
    return lines


def certificate_lines(peer: object, chain_length: object = None) -> list[str]:
    """A peer certificate summary (``handshake_done``'s ``peer_certificate``) as a person reads it."""
    if not isinstance(peer, dict):
        return ["      peer certificate: none presented"] if peer is None else []
    sans = peer.get("sans")
    names = ", ".join(map(str, sans)) if isinstance(sans, list) and sans else "-"
    chain = f" (chain of {chain_length})" if isinstance(chain_length, int) else ""
    return [f"      peer certificate{chain}: {peer.get('subject', '-')}",
            f"        issuer:    {peer.get('issuer', '-')}",
            f"        SANs:      {names}",
            f"        notAfter:  {peer.get('not_after', '-')}   (notBefore {peer.get('not_before', '-')})",
            f"        SHA-256:   {peer.get('sha256', '-')}"]

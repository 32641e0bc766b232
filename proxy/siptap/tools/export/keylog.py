"""The NSS key log as the key-log sink writes it: one entry per handshake, found by its addresses.

Each entry is a siptap ``#`` comment (conn, leg, route, client, server, version, cipher) and
the NSS lines under it. When several entries share an address pair (port reuse), the JSON
log's ``handshake_done`` times pick the one that preceded the flow.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from siptap.tools.export.addresses import Address, hostport, parse_hostport
from siptap.tools.export.captures import Flow, Message
from siptap.tools.export.errors import ExportError
from siptap.tools.export.json_log import LogFacts
from siptap.tools.export.times import parse_time

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


def pick_entry(matches: list[KeyEntry], first_us: int, log: LogFacts) -> list[KeyEntry]:
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


def flow_entries(messages: Iterable[Message], entries: list[KeyEntry], log: LogFacts) -> dict[Flow, list[KeyEntry]]:
    """The key-log entries of each flow the messages travelled on: those of its address pair,
    and, when the pair was reused, the one :func:`pick_entry` dates to before the flow's first
    message. An empty list: no entry for that flow."""
    first: dict[Flow, int] = {}
    for message in messages:
        flow = message.flow
        first[flow] = min(first.get(flow, message.ts_us), message.ts_us)
    out: dict[Flow, list[KeyEntry]] = {}
    for flow, first_us in first.items():
        client, server, _generation = flow
        matches = [e for e in entries if e.client == client and e.server == server]
        out[flow] = pick_entry(matches, first_us, log)
    return out

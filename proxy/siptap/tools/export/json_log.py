"""siptap's JSON log (stdout of `siptap run`): the TLS facts of each connection, through an allow-list.

Only ``handshake_done`` and ``connection_closed`` are read, and of them only the fields below:
facts about the connection, never secrets nor counts that would describe other calls.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

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

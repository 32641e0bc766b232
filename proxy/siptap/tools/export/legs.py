"""Which leg of which siptap connection each captured flow is, and its TLS facts: the key log and JSON log as the ladder reads them.

Pure: key-log entries (already matched to flows by :func:`siptap.tools.export.keylog.flow_entries`)
and the JSON log's facts in, a :class:`siptap.tools.ladder.model.FlowLeg` per flow out.

siptap's side of a flow: the ``role`` of the leg's ``handshake_done`` (``server`` on the accepted
leg) when the JSON log is given; else the key log's order (the accepted leg's handshake ends
before siptap dials, so its entry comes first); else by the leg's name (a forward route accepts
the customer leg). A flow the key log does not name but a ``handshake_done`` does (by its
addresses) is placed from that record; one named by neither is left to the ladder's pairing rule.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from siptap.tools.export.addresses import parse_hostport
from siptap.tools.export.json_log import LogFacts
from siptap.tools.export.keylog import KeyEntry
from siptap.tools.ladder.model import Flow, FlowLeg, LegTls


def flow_legs(by_flow: Mapping[Flow, Sequence[KeyEntry]], entries: Sequence[KeyEntry], log: LogFacts) -> dict[Flow, FlowLeg]:
    """A :class:`FlowLeg` for each flow of ``by_flow`` that the key log or the JSON log names."""
    first_leg: dict[str, str] = {}
    legs_of: dict[str, set[str]] = {}
    for entry in entries:
        first_leg.setdefault(entry.conn, entry.leg)
        legs_of.setdefault(entry.conn, set()).add(entry.leg)
    out: dict[Flow, FlowLeg] = {}
    for flow, picked in by_flow.items():
        client, server, _generation = flow
        if picked:
            entry = picked[-1]
            hs = _handshake(log, entry.conn, entry.leg)
            role = hs.get("role") if hs else None
            if role in ("server", "client"):
                siptap_server = role == "server"
            elif len(legs_of[entry.conn]) > 1:
                siptap_server = first_leg[entry.conn] == entry.leg
            else:
                siptap_server = entry.leg == "customer"
            out[flow] = FlowLeg(entry.leg, siptap_server, entry.conn,
                                _tls(entry.leg, entry.conn, hs, entry.version, entry.cipher))
            continue
        for hs in log.handshakes:
            if parse_hostport(str(hs.get("client", ""))) == client and parse_hostport(str(hs.get("server", ""))) == server:
                leg, conn = str(hs.get("leg") or "customer"), str(hs.get("conn"))
                role = hs.get("role")
                siptap_server = role == "server" if role in ("server", "client") else leg == "customer"
                out[flow] = FlowLeg(leg, siptap_server, conn, _tls(leg, conn, hs, None, None))
                break
    return out


def _handshake(log: LogFacts, conn: str, leg: str) -> dict[str, object] | None:
    return next((h for h in log.handshakes if h.get("conn") == conn and h.get("leg") == leg), None)


def _text(value: object) -> str | None:
    return str(value) if isinstance(value, (str, int)) and value != "" else None


def _tls(leg: str, conn: str, hs: Mapping[str, object] | None, version: str | None, cipher: str | None) -> LegTls:
    hs = hs or {}
    peer = hs.get("peer_certificate")
    peer = peer if isinstance(peer, dict) else {}
    not_after = _text(peer.get("not_after"))
    if not_after and not_after.endswith("+00:00"):
        not_after = not_after[:-6] + "Z"
    version = version or _text(hs.get("version"))
    cipher = cipher or _text(hs.get("cipher"))
    return LegTls(leg=leg, conn=conn, version=version, cipher=cipher,
                  key_exchange=_text(hs.get("key_exchange")) or key_exchange_of(version, cipher),
                  peer_subject=_text(peer.get("subject")), peer_not_after=not_after)


def key_exchange_of(version: str | None, cipher: str | None) -> str | None:
    """The key exchange an OpenSSL suite name implies, for a leg the JSON log does not describe:
    the key log's comment names the suite (``AES256-GCM-SHA384``: RSA, decryptable with the
    server key; ``ECDHE-RSA-...``: ECDHE). TLS 1.3 always uses (EC)DHE; its group is in the log only."""
    if not cipher:
        return None
    if version == "TLSv1.3" or cipher.startswith("TLS_"):
        return "(EC)DHE"
    prefix = cipher.split("-", 1)[0]
    if prefix in ("ECDHE", "DHE", "PSK", "SRP", "ECDH", "DH"):
        return prefix
    return "RSA"

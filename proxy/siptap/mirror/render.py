"""Mirror events as JSON and text: what the JSON-lines sink writes, what HEP log packets
carry (a handshake's facts, an SDES key) and the timestamps the SRTP key file shows.

Pure functions of an event: no I/O, no clock. Two ways to the same characters:
:func:`event_to_dict` + :func:`to_json`, the obvious one, for every event; and the lean
ones for the events that come with every call, :func:`sip_event_json` (SIP messages) and
:func:`srtp_event_json` (SDES keys): they splice a leg's fixed members, rendered once per
connection (kept in the leg's ``cache``), with the date formatted once per second
(:func:`iso_utc`) and the rest filled into one string template, no dict per event.
tests/mirror/test_fast_paths.py holds the lean ones to the obvious ones, and
tests/mirror/test_golden.py the sinks' whole output to recorded bytes.

Object shapes (all share ``type``, ``ts`` ISO 8601 UTC, ``epoch`` float seconds,
``conn_id``, ``route``, ``leg``, ``client`` and ``server`` as ``{"ip", "port"}``):

- ``sip``: ``src``, ``dst``, ``direction`` (``client->server`` or ``server->client`` on that
  leg), ``size``, ``sip`` (summary: request, method, request_uri, status, reason, call_id,
  cseq, cseq_method, from_tag, to_tag, via_branch, content_type, body_length; null when the
  start line did not parse), ``payload`` (text; undecodable bytes as ``\\xNN`` escapes, and
  then the exact bytes in ``payload_b64``) unless payloads are turned off.
- ``tls_keys``: ``tls`` = :meth:`HandshakeFacts.as_dict` with secrets (NSS key-log lines,
  master secret), so a consumer can tie key material to a connection's 5-tuple.
- ``srtp_key``: ``src``, ``dst``, ``direction``, ``call_id``, ``sip`` (the method or status
  whose SDP carried it), ``srtp`` (suite, tag, inline key||salt base64 as in SDP, master
  key and salt in base64 and hex, lifetime, mki, media, port, address, session_params).
- ``connection_closed``: duration, byte counts, messages observed, reason.
"""

from __future__ import annotations

import base64
import json
import math
from datetime import UTC, datetime
from typing import Any

from siptap.mirror.events import (
    Address,
    ConnectionClosed,
    KeyEvent,
    LegInfo,
    MirrorEvent,
    SipEvent,
    SrtpKeyEvent,
)
from siptap.sansio.sdp_crypto import SdesKey
from siptap.sansio.sip_fields import SipFields
from siptap.sansio.sip_message import SipMessageView

# A JSON object as json.dumps takes it: the values are str, int, float, bool, None, lists
# and nested objects, which the type system cannot spell without a recursive alias that
# every reader would then have to narrow; Any is the honest type here.
JsonObject = dict[str, Any]


def iso_utc_reference(ts: float) -> str:
    """What :func:`iso_utc` returns, the slow obvious way (kept for tests)."""
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


class _FormattedSecond:
    """The last whole second :func:`iso_utc` formatted, and its text."""

    __slots__ = ("second", "text")

    def __init__(self) -> None:
        self.second: float | None = None
        self.text = ""


_last_second = _FormattedSecond()


def iso_utc(ts: float) -> str:
    """``2023-11-14T22:13:20.250000Z``: as :func:`iso_utc_reference`, but the date and time
    of day are formatted once per second. The microseconds are rounded exactly as
    ``datetime.fromtimestamp`` rounds them (CPython's ``_PyTime_DoubleToDenominator``:
    ``modf``, scale, round half to even, carry)."""
    frac, whole = math.modf(ts)
    usec = round(frac * 1e6)
    if usec >= 1_000_000:
        usec -= 1_000_000
        whole += 1.0
    elif usec < 0:
        usec += 1_000_000
        whole -= 1.0
    cache = _last_second
    if cache.second != whole:
        cache.text = datetime.fromtimestamp(int(whole), UTC).replace(tzinfo=None).isoformat()
        cache.second = whole
    return f"{cache.text}.{usec:06d}Z"


def _addr(address: Address) -> JsonObject:
    return {"ip": address[0], "port": address[1]}


def _common(kind: str, ts: float, leg: LegInfo) -> JsonObject:
    return {
        "type": kind,
        "ts": iso_utc(ts),
        "epoch": round(ts, 6),
        "conn_id": leg.conn_id,
        "route": leg.route,
        "leg": leg.leg,
        "client": _addr(leg.client),
        "server": _addr(leg.server),
    }


def _direction(leg: LegInfo, from_client: bool) -> JsonObject:
    src, dst = (leg.client, leg.server) if from_client else (leg.server, leg.client)
    return {
        "src": _addr(src),
        "dst": _addr(dst),
        "direction": "client->server" if from_client else "server->client",
    }


def srtp_key_dict(key: SdesKey) -> JsonObject:
    return {
        "suite": key.suite,
        "tag": key.tag,
        "inline": key.key_params_b64,
        "master_key_b64": base64.b64encode(key.master_key).decode("ascii"),
        "master_salt_b64": base64.b64encode(key.master_salt).decode("ascii"),
        "master_key_hex": key.master_key_hex,
        "master_salt_hex": key.master_salt_hex,
        "key_salt_hex": key.master_key_hex + key.master_salt_hex,
        "lifetime": key.lifetime,
        "mki": key.mki,
        "media": key.media,
        "port": key.port,
        "address": key.connection_address,
        "session_params": list(key.session_params),
    }


def sip_summary(view: SipMessageView | SipFields) -> JsonObject:
    return {
        "request": view.is_request,
        "method": view.method,
        "request_uri": view.request_uri,
        "status": view.status_code,
        "reason": view.reason,
        "call_id": view.call_id,
        "cseq": view.cseq_number,
        "cseq_method": view.cseq_method,
        "from_tag": view.from_tag,
        "to_tag": view.to_tag,
        "via_branch": view.via_branch,
        "content_type": view.content_type,
        "body_length": view.body_length,
    }


def event_to_dict(event: MirrorEvent, *, payload: bool = True) -> JsonObject:
    """The JSON-friendly form of an event (see the module docstring for the shapes)."""
    if isinstance(event, SipEvent):
        out = _common("sip", event.ts, event.leg)
        out.update(_direction(event.leg, event.from_client))
        out["size"] = len(event.data)
        view = event.view
        out["sip"] = None if view is None else sip_summary(view)
        if payload:
            try:
                out["payload"] = event.data.decode("utf-8")
            except UnicodeDecodeError:
                out["payload"] = event.data.decode("utf-8", "backslashreplace")
                out["payload_b64"] = base64.b64encode(event.data).decode("ascii")
        return out
    if isinstance(event, KeyEvent):
        out = _common("tls_keys", event.ts, event.leg)
        out["tls"] = event.facts.as_dict(secrets=True)
        return out
    if isinstance(event, SrtpKeyEvent):
        out = _common("srtp_key", event.ts, event.leg)
        out.update(_direction(event.leg, event.from_client))
        out["call_id"] = event.call_id
        out["sip"] = event.method_or_status
        out["srtp"] = srtp_key_dict(event.key)
        return out
    if isinstance(event, ConnectionClosed):
        out = _common("connection_closed", event.ts, event.leg)
        out.update(
            duration=round(event.duration, 6),
            bytes_from_client=event.bytes_from_client,
            bytes_from_server=event.bytes_from_server,
            messages_observed=event.messages_observed,
            reason=event.reason,
        )
        return out
    raise TypeError(f"not a mirror event: {type(event).__name__}")


# What json.dumps(obj, separators=(",", ":"), ensure_ascii=False, default=str) builds per
# call; an encoder keeps no state between calls, so one is reused.
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, default=str)


def to_json(obj: object) -> str:
    """Compact JSON on one line. ``ensure_ascii=False`` keeps SIP text readable; JSON
    escapes control characters (newlines included) inside strings, so the line is whole."""
    return _ENCODER.encode(obj)


# What _ENCODER.encode does for a str (ensure_ascii=False): the lean renderers below call it
# directly and fill the rest of an object into a template.
_json_str = json.encoder.encode_basestring


def _leg_fragments(leg: LegInfo) -> tuple[str, str]:
    """The JSON members fixed for a leg (``conn_id`` .. ``server``, then ``src``, ``dst``,
    ``direction``), for each direction, rendered once per leg and kept in the leg's cache."""
    entry = leg.cache.get("jsonl")
    if not isinstance(entry, tuple):  # not yet (only this function writes the entry)
        fragments = []
        for from_client in (True, False):
            members = _common("sip", 0.0, leg)
            del members["type"], members["ts"], members["epoch"]
            members.update(_direction(leg, from_client))
            fragments.append(to_json(members)[1:-1])
        entry = leg.cache["jsonl"] = (fragments[0], fragments[1])
    return entry


def _number(value: object) -> str:
    if type(value) is float and math.isfinite(value):
        return float.__repr__(value)
    return to_json(value)


def _text(value: str | None) -> str:
    """A JSON string, or null: what the encoder writes for a ``str | None`` member."""
    return "null" if value is None else _json_str(value)


def sip_summary_json(view: SipMessageView | SipFields) -> str:
    """``to_json(sip_summary(view))``, the same characters, from one f-string: no dict, no
    encoder walk, no call per member but the string escaping (a third of the time).
    ``view`` may be anything with the view's attribute names, such as
    :class:`siptap.sansio.sip_fields.SipFields`. Each member is what the JSON encoder writes
    for it: a ``str | None`` escaped or null, an ``int | None`` as ``int.__repr__`` or null."""
    v = view
    s = _json_str
    return (
        f'{{"request":{"true" if v.is_request else "false"}'
        f',"method":{"null" if (x := v.method) is None else s(x)}'
        f',"request_uri":{"null" if (x := v.request_uri) is None else s(x)}'
        f',"status":{"null" if (n := v.status_code) is None else int.__repr__(n)}'
        f',"reason":{"null" if (x := v.reason) is None else s(x)}'
        f',"call_id":{"null" if (x := v.call_id) is None else s(x)}'
        f',"cseq":{"null" if (n := v.cseq_number) is None else int.__repr__(n)}'
        f',"cseq_method":{"null" if (x := v.cseq_method) is None else s(x)}'
        f',"from_tag":{"null" if (x := v.from_tag) is None else s(x)}'
        f',"to_tag":{"null" if (x := v.to_tag) is None else s(x)}'
        f',"via_branch":{"null" if (x := v.via_branch) is None else s(x)}'
        f',"content_type":{"null" if (x := v.content_type) is None else s(x)}'
        f',"body_length":{int.__repr__(v.body_length)}}}'
    )


def _stamp(ts: float) -> str:
    """The ``"ts":...,"epoch":...`` members every event starts with."""
    return f'"ts":"{iso_utc(ts)}","epoch":{_number(round(ts, 6))}'


def sip_event_json(event: SipEvent, *, payload: bool = True) -> str:
    """``to_json(event_to_dict(event, payload=payload))`` for a SIP event, the same
    characters, from the leg's pre-rendered members and the summary's template: no
    per-event dicts, no datetime object per event, one format per line."""
    data = event.data
    view = event.view
    head = (f'{{"type":"sip",{_stamp(event.ts)},{_leg_fragments(event.leg)[0 if event.from_client else 1]}'
            f',"size":{len(data)},"sip":{"null" if view is None else sip_summary_json(view)}')
    if not payload:
        return head + "}"
    try:
        return f'{head},"payload":{_json_str(data.decode("utf-8"))}}}'
    except UnicodeDecodeError:
        return (f'{head},"payload":{_json_str(data.decode("utf-8", "backslashreplace"))}'
                f',"payload_b64":"{base64.b64encode(data).decode("ascii")}"}}')


# srtp_key_dict's members in its order (the base64 and hex members need no escaping).
_SRTP = ('{"suite":%s,"tag":%s,"inline":%s,"master_key_b64":"%s","master_salt_b64":"%s","master_key_hex":"%s",'
         '"master_salt_hex":"%s","key_salt_hex":"%s%s","lifetime":%s,"mki":%s,"media":%s,"port":%s,"address":%s,'
         '"session_params":[%s]}')


def srtp_key_json(key: SdesKey) -> str:
    """``to_json(srtp_key_dict(key))``, the same characters, from one template."""
    key_hex, salt_hex = key.master_key_hex, key.master_salt_hex
    return _SRTP % (
        _json_str(key.suite), int.__repr__(key.tag), _json_str(key.key_params_b64),
        base64.b64encode(key.master_key).decode("ascii"), base64.b64encode(key.master_salt).decode("ascii"),
        key_hex, salt_hex, key_hex, salt_hex, _text(key.lifetime), _text(key.mki), _json_str(key.media),
        int.__repr__(key.port), _text(key.connection_address), ",".join(map(_json_str, key.session_params)),
    )


class _RecentTexts:
    """The texts of the last ``size`` events rendered, by identity: a bounded memo (events
    are immutable, so the same object has the same text; each entry holds its event, so an
    id is never reused while it is in here)."""

    __slots__ = ("size", "texts")

    def __init__(self, size: int) -> None:
        self.size = size
        self.texts: dict[int, tuple[object, str]] = {}

    def get(self, event: object) -> str | None:
        entry = self.texts.get(id(event))
        return entry[1] if entry is not None and entry[0] is event else None

    def put(self, event: object, text: str) -> None:
        texts = self.texts
        if len(texts) >= self.size:
            del texts[next(iter(texts))]  # the oldest
        texts[id(event)] = (event, text)


# Both HEP and JSON lines render each SDES key event, one sink's batch after the other's
# (the dispatcher hands each sink up to 256 events at a time: sink.MAX_BATCH): a memo that
# holds a batch's worth lets the second reuse the first's text. Bounded, so it never grows.
_srtp_texts = _RecentTexts(256)


def srtp_event_json(event: SrtpKeyEvent) -> str:
    """``to_json(event_to_dict(event))`` for an SDES key event, the same characters,
    rendered once for the sinks that carry it (HEP as a log packet, JSON lines)."""
    text = _srtp_texts.get(event)
    if text is None:
        leg = event.leg
        text = (f'{{"type":"srtp_key",{_stamp(event.ts)},{_leg_fragments(leg)[0 if event.from_client else 1]}'
                f',"call_id":{_text(event.call_id)},"sip":{_json_str(event.method_or_status)}'
                f',"srtp":{srtp_key_json(event.key)}}}')
        _srtp_texts.put(event, text)
    return text

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
import binascii
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
    """The last whole second :func:`iso_utc` formatted: its ISO text, and its integer
    digits as the ``epoch`` member writes them (:func:`_stamp`)."""

    __slots__ = ("epoch", "second", "text")

    def __init__(self) -> None:
        self.second: float | None = None
        self.text = ""
        self.epoch = ""


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
        _new_second(cache, whole)
    return f"{cache.text}.{usec:06d}Z"


def _new_second(cache: _FormattedSecond, whole: float) -> None:
    cache.text = datetime.fromtimestamp(int(whole), UTC).replace(tzinfo=None).isoformat()
    cache.epoch = str(int(whole))
    cache.second = whole


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
_b64 = binascii.b2a_base64


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
    if type(view) is SipFields:  # what the mirror process reads: one unpacking, no attribute reads
        (request, method, request_uri, status, reason, call_id, cseq, cseq_method, from_tag, to_tag, via_branch,
         content_type, body_length) = view
    else:
        request, method, request_uri, status = view.is_request, view.method, view.request_uri, view.status_code
        reason, call_id, cseq, cseq_method = view.reason, view.call_id, view.cseq_number, view.cseq_method
        from_tag, to_tag, via_branch = view.from_tag, view.to_tag, view.via_branch
        content_type, body_length = view.content_type, view.body_length
    s = _json_str
    return (
        f'{{"request":{"true" if request else "false"}'
        f',"method":{"null" if method is None else s(method)}'
        f',"request_uri":{"null" if request_uri is None else s(request_uri)}'
        f',"status":{"null" if status is None else int.__repr__(status)}'
        f',"reason":{"null" if reason is None else s(reason)}'
        f',"call_id":{"null" if call_id is None else s(call_id)}'
        f',"cseq":{"null" if cseq is None else int.__repr__(cseq)}'
        f',"cseq_method":{"null" if cseq_method is None else s(cseq_method)}'
        f',"from_tag":{"null" if from_tag is None else s(from_tag)}'
        f',"to_tag":{"null" if to_tag is None else s(to_tag)}'
        f',"via_branch":{"null" if via_branch is None else s(via_branch)}'
        f',"content_type":{"null" if content_type is None else s(content_type)}'
        f',"body_length":{int.__repr__(body_length)}}}'
    )


# Where _stamp's one rounding serves both members (see there): 2**13 <= ts < 2**33, i.e.
# 1970-01-01T02:16:32Z to the year 2242; anything else (tests' odd clocks) takes the two
# roundings the members are defined by.
_STAMP_LOW = 8192.0
_STAMP_HIGH = 8589934592.0


def _stamp(ts: float) -> str:
    """The ``"ts":...,"epoch":...`` members every event starts with: ``iso_utc(ts)`` and
    ``_number(round(ts, 6))``, the same characters, from one rounding and the second's
    cached texts, without the two float-to-decimal conversions (each costs as much as the
    rest of the line's stamp).

    Why they agree, for ``2**13 <= ts < 2**33``: both members round ``ts`` to whole
    microseconds, half to even, from its exact binary value: ``round(ts, 6)`` by its
    definition (correctly rounded); :func:`iso_utc` from ``modf``'s fraction times 1e6,
    whose one rounding error (at most 2**-34, as the product is below 2**20) is smaller
    than the smallest distance from a non-tie to a half (a multiple of 2**-33, as ts's
    own resolution is at least 2**-39), and a tie (k * 15625 / 2**33, k < 2**39) is
    computed exactly. And ``repr`` of that rounded float is the decimal itself, trailing
    zeros dropped: below 2**33 a float's spacing is under 1e-6, so no other decimal of at
    most six places reads back as the same float, and a shorter one would have fewer places.
    tests/mirror/test_fast_paths.py holds it to the definition over ties and edges."""
    # Not for an int (a test's clock): round() keeps it an int, written without ".0".
    if type(ts) is not float or not _STAMP_LOW <= ts < _STAMP_HIGH:  # also NaN
        return f'"ts":"{iso_utc(ts)}","epoch":{_number(round(ts, 6))}'
    frac, whole = math.modf(ts)
    usec = round(frac * 1e6)
    if usec >= 1_000_000:
        usec -= 1_000_000
        whole += 1.0
    cache = _last_second
    if cache.second != whole:
        _new_second(cache, whole)
    digits = f"{usec:06d}"
    return f'"ts":"{cache.text}.{digits}Z","epoch":{cache.epoch}.{digits.rstrip("0") or "0"}'


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


def srtp_key_json(key: SdesKey) -> str:
    """``to_json(srtp_key_dict(key))``, the same characters, from one f-string (the base64
    and hex members need no escaping; ``%d`` is ``int.__repr__``)."""
    s = _json_str
    key_hex, salt_hex = key.master_key.hex(), key.master_salt.hex()
    lifetime, mki, address, params = key.lifetime, key.mki, key.connection_address, key.session_params
    return (
        f'{{"suite":{s(key.suite)},"tag":{key.tag:d},"inline":{s(key.key_params_b64)}'
        # base64.b64encode without its Python wrapper: the same characters
        f',"master_key_b64":"{_b64(key.master_key, newline=False).decode("ascii")}"'
        f',"master_salt_b64":"{_b64(key.master_salt, newline=False).decode("ascii")}"'
        f',"master_key_hex":"{key_hex}","master_salt_hex":"{salt_hex}","key_salt_hex":"{key_hex}{salt_hex}"'
        f',"lifetime":{"null" if lifetime is None else s(lifetime)},"mki":{"null" if mki is None else s(mki)}'
        f',"media":{s(key.media)},"port":{key.port:d},"address":{"null" if address is None else s(address)}'
        f',"session_params":[{",".join(map(s, params)) if params else ""}]}}'
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

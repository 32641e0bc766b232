"""A read-only header view over one framed SIP message (RFC 3261 sections 7 and 20), sans-IO.

Theory of operation
-------------------
The mirror needs a handful of facts per message to correlate and label it: request or
response, Call-ID, CSeq, the dialog tags, the top Via branch, the body type. ``parse_message``
extracts them from the exact bytes the framer reported and never changes those bytes.

Parsing is deliberately forgiving: the message is already on its way to the peer, so a view
that raised on a sloppy header would only lose observations. Only a start line that is not SIP
raises ``SipParseError``. Header bytes are decoded as UTF-8 with replacement, names are
case-insensitive, folded lines are unfolded and compact forms map to their full names. A
field that is absent or malformed is ``None``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field

__all__ = ["SipMessageView", "SipParseError", "body_of", "parse_message", "split_values"]


class SipParseError(ValueError):
    """The bytes do not begin with a SIP request or status line."""


# RFC 3261 7.3.3 plus the later IANA registrations of single-letter names.
COMPACT_FORMS: dict[str, str] = {
    "a": "accept-contact",
    "b": "referred-by",
    "c": "content-type",
    "d": "request-disposition",
    "e": "content-encoding",
    "f": "from",
    "i": "call-id",
    "j": "reject-contact",
    "k": "supported",
    "l": "content-length",
    "m": "contact",
    "o": "event",
    "r": "refer-to",
    "s": "subject",
    "t": "to",
    "u": "allow-events",
    "v": "via",
    "x": "session-expires",
    "y": "identity",
}

_TOKEN = r"[A-Za-z0-9\-.!%*_+`'~]+"
_REQUEST_LINE = re.compile(rf"({_TOKEN}) +([^\x00-\x20\x7f]+) +(?i:SIP/2\.0) *")
_STATUS_LINE = re.compile(r"(?i:SIP/2\.0) +([0-9]{3})(?: (.*))?", re.DOTALL)
_CSEQ = re.compile(rf"\s*([0-9]{{1,10}})\s+({_TOKEN})\s*")
_LINE_BREAK = re.compile(r"\r?\n")


@dataclass(frozen=True, slots=True)
class SipMessageView:
    """What the mirror needs to know about one message, decoded once."""

    is_request: bool
    method: str | None
    request_uri: str | None
    status_code: int | None
    reason: str | None
    call_id: str | None
    cseq_number: int | None
    cseq_method: str | None
    from_tag: str | None
    to_tag: str | None
    via_branch: str | None
    content_type: str | None
    body_length: int
    # (lower-case full name, value) in message order; kept for header() and for rare headers.
    headers: tuple[tuple[str, str], ...] = field(default=(), repr=False)

    def header(self, name: str) -> list[str]:
        """Every value of a header, one per header line, whichever form (full/compact) it used.

        Values holding several comma-separated entries (Via, Contact) are not split here:
        commas may sit inside quotes or URIs; see ``split_values``.
        """
        key = _canonical(name)
        return [value for hname, value in self.headers if hname == key]


def parse_message(data: bytes, header_end: int | None = None) -> SipMessageView:
    """Build the view of one framed message.

    ``header_end`` is the framer's index of the first body byte; without it the first
    CRLFCRLF is looked for, and a message without one is taken to be all headers.
    """
    if header_end is None:
        end = data.find(b"\r\n\r\n")
        header_end = len(data) if end < 0 else end + 4
    text = data[:header_end].decode("utf-8", errors="replace")
    lines = _LINE_BREAK.split(text)
    start_line = lines[0].rstrip("\r\n")
    headers = tuple(_unfold(lines[1:]))

    request = _REQUEST_LINE.fullmatch(start_line)
    status = None if request else _STATUS_LINE.fullmatch(start_line)
    if request is None and status is None:
        raise SipParseError(f"not a SIP start line: {start_line[:80]!r}")

    def first(name: str) -> str | None:
        for hname, value in headers:
            if hname == name:
                return value
        return None

    cseq_number = cseq_method = None
    cseq = first("cseq")
    if cseq is not None and (match := _CSEQ.fullmatch(cseq)):
        cseq_number, cseq_method = int(match.group(1)), match.group(2)

    via = first("via")
    top_via = split_values(via)[0] if via else None
    from_value, to_value = first("from"), first("to")
    call_id = first("call-id")
    content_type = first("content-type")

    return SipMessageView(
        is_request=request is not None,
        method=request.group(1) if request else None,
        request_uri=request.group(2) if request else None,
        status_code=int(status.group(1)) if status else None,
        reason=(status.group(2) or "") if status else None,
        call_id=call_id or None,
        cseq_number=cseq_number,
        cseq_method=cseq_method,
        from_tag=_header_param(from_value, "tag") if from_value is not None else None,
        to_tag=_header_param(to_value, "tag") if to_value is not None else None,
        via_branch=_header_param(top_via, "branch") if top_via is not None else None,
        content_type=content_type or None,
        body_length=max(0, len(data) - header_end),
        headers=headers,
    )


def body_of(data: bytes, header_end: int) -> bytes:
    """The body bytes, untouched: SDP and other bodies may be any encoding."""
    return data[header_end:]


def split_values(value: str) -> list[str]:
    """Split a header value at commas that separate entries, not at commas in quotes or <URI>.

    ``Via: SIP/2.0/TLS a;branch=1, SIP/2.0/TLS b;branch=2`` holds two Vias; the first is the top.
    """
    parts: list[str] = []
    start = 0
    for i in _top_level(value, ","):
        parts.append(value[start:i].strip())
        start = i + 1
    parts.append(value[start:].strip())
    return [part for part in parts if part] or [""]


def _top_level(value: str, sep: str) -> Iterator[int]:
    """Indexes of ``sep`` outside quoted strings and ``<...>`` (where URIs keep their own
    ``;`` and ``,``). Most header values have neither, so they take the str.find path."""
    if '"' not in value and "<" not in value:
        i = value.find(sep)
        while i >= 0:
            yield i
            i = value.find(sep, i + 1)
        return
    quoted = angle = False
    i = 0
    n = len(value)
    while i < n:
        ch = value[i]
        if quoted:
            if ch == "\\":
                i += 1
            elif ch == '"':
                quoted = False
        elif ch == '"':
            quoted = True
        elif angle:
            angle = ch != ">"
        elif ch == "<":
            angle = True
        elif ch == sep:
            yield i
        i += 1


def _canonical(name: str) -> str:
    key = name.strip().lower()
    return COMPACT_FORMS.get(key, key)


def _unfold(lines: list[str]) -> list[tuple[str, str]]:
    """(canonical name, value) pairs; continuation lines (leading SP/HT) join the previous one."""
    headers: list[tuple[str, str]] = []
    for line in lines:
        if not line:
            continue
        if line[0] in " \t":
            if headers:
                name, value = headers[-1]
                headers[-1] = (name, f"{value} {line.strip()}".strip())
            continue
        name, colon, value = line.partition(":")
        if colon and name.strip():
            headers.append((_canonical(name), value.strip()))
    return headers


def _header_param(value: str, wanted: str) -> str | None:
    """A header parameter (``;tag=``, ``;branch=``) of a name-addr, addr-spec or Via value.

    Parameters of the header follow the URI: anything inside a quoted display name or inside
    ``<...>`` belongs to the display name or the URI and is skipped. In the addr-spec form
    (no angle brackets) RFC 3261 20.10 makes every ``;`` parameter a header parameter.
    """
    params_at = next(_top_level(value, ";"), -1)
    if params_at < 0:
        return None
    for param in _split_params(value[params_at + 1 :]):
        name, eq, raw = param.partition("=")
        if name.strip().lower() != wanted:
            continue
        raw = raw.strip()
        if len(raw) >= 2 and raw[0] == raw[-1] == '"':
            raw = raw[1:-1].replace('\\"', '"').replace("\\\\", "\\")
        if not eq or not raw:
            return None
        return raw
    return None


def _split_params(text: str) -> list[str]:
    """Split ``a=1 ; b="x;y"`` at semicolons outside quoted strings."""
    params: list[str] = []
    start = 0
    for i in _top_level(text, ";"):
        params.append(text[start:i])
        start = i + 1
    params.append(text[start:])
    return params

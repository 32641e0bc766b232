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


_FIELDS = ("is_request", "method", "request_uri", "status_code", "reason", "call_id", "cseq_number",
           "cseq_method", "from_tag", "to_tag", "via_branch", "content_type", "body_length")


class SipMessageView:
    """What the mirror needs to know about one message, decoded on demand.

    The start line is parsed at once (it decides whether this is SIP at all); each header
    field is looked up the first time it is read. The relay reads three of them per message
    (Call-ID, CSeq, and the start line), so it should not pay for unfolding every header.
    Lookups take a fast path when the header block is plain (every line a ``name: value``
    or a continuation, CRLF line ends, no whitespace other than SP/HTAB): a regular
    expression finds the first header of that name, which is exactly what the full parse
    would find; anything else goes through the full parse (:attr:`headers`), the reference.
    """

    __slots__ = (
        "_headers",
        "_plain",
        "_text",
        "_values",
        "body_length",
        "is_request",
        "method",
        "reason",
        "request_uri",
        "status_code",
    )

    def __init__(self, *, is_request: bool, method: str | None, request_uri: str | None,
                 status_code: int | None, reason: str | None, body_length: int, text: str) -> None:
        self.is_request = is_request
        self.method = method
        self.request_uri = request_uri
        self.status_code = status_code
        self.reason = reason
        self.body_length = body_length
        self._text = text  # the header block, start line included, decoded
        self._plain: bool | None = None
        self._headers: tuple[tuple[str, str], ...] | None = None
        self._values: dict[str, str | None] = {}

    @property
    def headers(self) -> tuple[tuple[str, str], ...]:
        """(lower-case full name, value) in message order: the full parse."""
        if self._headers is None:
            self._headers = tuple(_unfold(_LINE_BREAK.split(self._text)[1:]))
        return self._headers

    def header(self, name: str) -> list[str]:
        """Every value of a header, one per header line, whichever form (full/compact) it used.

        Values holding several comma-separated entries (Via, Contact) are not split here:
        commas may sit inside quotes or URIs; see ``split_values``.
        """
        key = _canonical(name)
        return [value for hname, value in self.headers if hname == key]

    def first(self, name: str) -> str | None:
        """The value of the first header called ``name`` (a canonical full name), or None."""
        values = self._values
        if name in values:
            return values[name]
        if self._plain is None:
            self._plain = _is_plain(self._text)
        pattern = _FIRST_HEADER.get(name) if self._plain else None
        if pattern is not None:
            match = pattern.search(self._text)
            value = joined(match.group(1)) if match is not None else None
        else:
            value = next((v for hname, v in self.headers if hname == name), None)
        values[name] = value
        return value

    @property
    def call_id(self) -> str | None:
        return self.first("call-id") or None

    @property
    def cseq_number(self) -> int | None:
        return self._cseq()[0]

    @property
    def cseq_method(self) -> str | None:
        return self._cseq()[1]

    def _cseq(self) -> tuple[int | None, str | None]:
        cseq = self.first("cseq")
        if cseq is not None and (match := _CSEQ.fullmatch(cseq)):
            return int(match.group(1)), match.group(2)
        return None, None

    @property
    def from_tag(self) -> str | None:
        value = self.first("from")
        return _header_param(value, "tag") if value is not None else None

    @property
    def to_tag(self) -> str | None:
        value = self.first("to")
        return _header_param(value, "tag") if value is not None else None

    @property
    def via_branch(self) -> str | None:
        via = self.first("via")
        top_via = split_values(via)[0] if via else None
        return _header_param(top_via, "branch") if top_via is not None else None

    @property
    def content_type(self) -> str | None:
        return self.first("content-type") or None

    def _key(self) -> tuple[object, ...]:
        return (*(getattr(self, name) for name in _FIELDS), self.headers)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SipMessageView):
            return NotImplemented
        return self._key() == other._key()

    __hash__ = None  # type: ignore[assignment]  # unhashable on purpose (it has __eq__); typeshed types __hash__ as a method

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in _FIELDS)
        return f"SipMessageView({fields})"


def _full_names(name: str) -> str:
    compact = [short for short, full in COMPACT_FORMS.items() if full == name]
    return "|".join([re.escape(name), *compact])


# For the fields the relay and the mirror read: the first header line of that name and its
# continuation lines. Only used on plain header blocks (see _is_plain).
_FIRST_HEADER = {
    name: re.compile(rf"\r\n(?:{_full_names(name)})[ \t]*:([^\r\n]*(?:\r\n[ \t][^\r\n]*)*)", re.IGNORECASE | re.ASCII)
    for name in ("call-id", "cseq", "via", "from", "to", "content-type")
}
# Whitespace str.strip() removes besides SP/HTAB/CR/LF (bare CR or LF: see _is_plain).
_ODD = re.compile(r"[\x0b\x0c\x1c-\x1f\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]")
_ODD_ASCII = re.compile(r"[\x0b\x0c\x1c-\x1f]")
# After the start line: header lines (a name that does not start with whitespace, a colon)
# or continuation lines, each ending in CRLF, then the empty line.
_PLAIN_BLOCK = re.compile(r"\r\n(?:(?:[^ \t\r\n:][^\r\n:]*:|[ \t])[^\r\n]*\r\n)*\r\n")


def _is_plain(text: str) -> bool:
    start = text.find("\r\n")
    if start < 0 or (_ODD_ASCII if text.isascii() else _ODD).search(text) is not None:
        return False
    lines = text.count("\r\n")
    if text.count("\r") != lines or text.count("\n") != lines:
        return False  # a bare CR or LF: the full parse splits lines at a bare LF
    return _PLAIN_BLOCK.fullmatch(text, start) is not None


def joined(raw: str) -> str:
    """A header value with its continuation lines, as :func:`_unfold` joins them (shared with
    :mod:`siptap.sansio.sip_fields`, whose one-pass answers must equal this view's)."""
    if "\r\n" not in raw:
        return raw.strip()
    lines = raw.split("\r\n")
    value = lines[0].strip()
    for line in lines[1:]:
        value = f"{value} {line.strip()}".strip()
    return value


def parse_message(data: bytes, header_end: int | None = None) -> SipMessageView:
    """Build the view of one framed message.

    ``header_end`` is the framer's index of the first body byte; without it the first
    CRLFCRLF is looked for, and a message without one is taken to be all headers.
    """
    if header_end is None:
        end = data.find(b"\r\n\r\n")
        header_end = len(data) if end < 0 else end + 4
    text = data[:header_end].decode("utf-8", errors="replace")
    match = _LINE_BREAK.search(text)
    start_line = (text[: match.start()] if match else text).rstrip("\r\n")

    request = _REQUEST_LINE.fullmatch(start_line)
    status = None if request else _STATUS_LINE.fullmatch(start_line)
    if request is None and status is None:
        raise SipParseError(f"not a SIP start line: {start_line[:80]!r}")
    return SipMessageView(
        is_request=request is not None,
        method=request.group(1) if request else None,
        request_uri=request.group(2) if request else None,
        status_code=int(status.group(1)) if status else None,
        reason=(status.group(2) or "") if status else None,
        body_length=max(0, len(data) - header_end),
        text=text,
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
    for i in top_level(value, ","):
        parts.append(value[start:i].strip())
        start = i + 1
    parts.append(value[start:].strip())
    return [part for part in parts if part] or [""]


def top_level(value: str, sep: str) -> Iterator[int]:
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
    params_at = next(top_level(value, ";"), -1)
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
    for i in top_level(text, ";"):
        params.append(text[start:i])
        start = i + 1
    params.append(text[start:])
    return params

"""The few SIP fields the mirror reads per message, in one scan of the header block, sans-IO.

Theory of operation
-------------------
Per message the mirror reads the start line, Call-ID, CSeq, the From and To tags, the top
Via branch, Content-Type and the body length (``relay/observe.py``'s log line and metrics,
``mirror/jsonl.py``'s summary, ``mirror/hep.py``'s correlation id, the SRTP key records).
:class:`~siptap.sansio.sip_message.SipMessageView` is the reference for all of them; it looks
each header up with its own search. :func:`read_fields` takes them all at once, for the
message shapes real traffic has, and answers ``None`` for anything else so that the caller
falls back to the view:

1. the header block must be ASCII (one ``bytes.isascii``), then it is decoded once;
2. it must be *plain* exactly as the view means it (``sip_message._is_plain``): CRLF line
   ends only, no odd whitespace, every line a ``name:`` line or a continuation; string
   counts and substring tests check the block, the loop below each line. On a plain block
   the view's lookup is "the first line of that name (full or compact form), with its
   continuation lines";
3. one loop over the header lines (``split`` + ``partition``) checks each line and keeps the
   wanted headers; the first of each name wins, as in the view. A line's name is looked up
   as spelled (``_SPELLED``, a bounded table of the spellings seen), not stripped and
   lowered per line;
4. the start line, CSeq, the From/To tags and the top Via branch are read by memoised pure
   functions of their raw text (bounded tables, ``_Memo``): a call's messages repeat
   those values (the From line in all seven, a transaction's Via in each of its messages,
   ``SIP/2.0 200 OK`` everywhere), so the regexes and the parameter scan run once per
   distinct value. Being functions of the string alone, the tables cannot mix connections
   up; an evicted value is simply read again.

So whenever this module answers, its answer is the view's (the property tests in
tests/sansio/test_sip_fields.py hold it to that, also over the fuzz corpus and the SIPp
scenarios); folded lines are answered too (joined as the view joins them), repeated headers
take the first like the view, and non-ASCII, bare CR/LF or odd whitespace fall back.

The same pass reads Content-Length (:func:`read_head`): the framer's fast path
(``sip_framer._complete_messages``) calls it where it used to call
``content_length.simple_content_length``, and the ``SipMessage`` it reports carries the fields,
so the mirror reads a message's header block once for framing and fields together. Whenever
``read_head`` answers, its Content-Length is ``simple_content_length``'s (declining where that
declines: repeated, folded or non-numeric) and its fields are ``read_fields``'s
(tests/sansio/test_framer_fast_path.py).

The result is a ``NamedTuple`` with the view's attribute names: readers of those attributes
take either.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import NamedTuple, TypeVar

from siptap.sansio.sip_message import joined, top_level

__all__ = ["SipFields", "read_fields", "read_head"]


class SipFields(NamedTuple):
    """The mirror's per-message fields, named as on ``SipMessageView``."""

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


# The view's grammar (sip_message.py), repeated here so that this module stays one scan; the
# property tests fail if the two drift apart.
_TOKEN = r"[A-Za-z0-9\-.!%*_+`'~]+"
_REQUEST_LINE = re.compile(rf"({_TOKEN}) +([^\x00-\x20\x7f]+) +(?i:SIP/2\.0) *")
_STATUS_LINE = re.compile(r"(?i:SIP/2\.0) +([0-9]{3})(?: (.*))?", re.DOTALL)
_CSEQ = re.compile(rf"\s*([0-9]{{1,10}})\s+({_TOKEN})\s*")
# content_length._SIMPLE_VALUE on the value alone (the line's end is the split's).
_LENGTH = re.compile(r"[ \t]*([0-9]{1,18})[ \t]*")
# "Plain" as the view means it (sip_message._is_plain): CRLF line ends only, the first empty
# line the block's end, every header line a name line (a non-blank name, then ":") or a
# continuation (SP/HTAB first), and none of the whitespace str.strip() removes that SP, HTAB,
# CR and LF are not (\x0b \x0c \x1c-\x1f). read_fields tests it with C-speed string methods
# and its own loop over the lines; one validating regex over the block cost more.

# Up to the first ";" outside quoted strings (backslash escapes inside) and <...>: what the
# view's character loop (sip_message.top_level) finds, in one regex match (the alternatives begin with
# different characters, so the possessive quantifiers change no answer, only the time a value
# without ";" takes to fail).
_TO_PARAMS = re.compile(r'(?:[^"<;]++|"(?:[^"\\]|\\.)*+"|<[^>]*+>)*+;', re.DOTALL)  # possessive: no backtracking

# Full and compact names of the wanted headers (RFC 3261 7.3.3), longest first within an
# alternation so that "c" does not shadow "cseq" or "call-id".
_CANONICAL = {
    "call-id": "call-id", "i": "call-id",
    "cseq": "cseq",
    "via": "via", "v": "via",
    "from": "from", "f": "from",
    "to": "to", "t": "to",
    "content-type": "content-type", "c": "content-type",
    "content-length": "content-length", "l": "content-length",
}


def read_fields(data: bytes, header_end: int) -> SipFields | None:
    """The fields of one framed message (``header_end``: index of the first body byte, as the
    framer reports it), or None when the caller should ask ``parse_message`` instead: the header
    block is not plain ASCII, or the start line is not SIP (the view then raises)."""
    read = _read(data, 0, header_end)
    return None if read is None else _new(SipFields, (*read[0], max(0, len(data) - header_end)))


def read_head(data: bytes, start: int, header_end: int) -> tuple[SipFields, int] | None:
    """The framer's reading of a message's header block ``data[start:header_end]`` before it
    knows where the body ends: its fields and its Content-Length, or None when either is not
    plain (the framer then reads Content-Length by ``content_length.simple_content_length``
    and the mirror the fields by :func:`read_fields` or the view). Whenever it answers, the
    Content-Length is ``simple_content_length``'s and the fields are those ``read_fields``
    reads from the framed message (whose body length is that Content-Length): the one pass
    serves both (tests/sansio/test_framer_fast_path.py)."""
    read = _read(data, start, header_end)
    if read is None or read[1] is None:
        return None
    return _new(SipFields, (*read[0], read[1])), read[1]


def _read(data: bytes, at: int, header_end: int) -> tuple[tuple[object, ...], int | None] | None:
    """The fields but body_length, and the Content-Length when it is plain (one header, a
    number on an unfolded line, or none: 0), of the message at ``at``; None: not plain."""
    block = data[at:header_end]
    if not block.isascii():
        return None
    text = block.decode("ascii")
    start = text.find("\r\n")
    # Plain as the view means it (see above): every CR and LF in a CRLF pair (three C-speed
    # counts), the first empty line the block's end, none of the odd whitespace. What is left per line (a name line has a ":") is checked in the loop below,
    # which reads the fields in the same pass: one pattern match per line cost more than the
    # whole loop (bench/sip_fields_timeit.py).
    if (start < 0 or not text.endswith("\r\n\r\n") or text.find("\r\n\r\n", start) != len(text) - 4
            or not text.count("\r") == text.count("\n") == text.count("\r\n")
            # The odd whitespace by six C-speed substring tests (memchr), not a regex:
            # the regex scan was a third of this function's time (4.5 of ~14 us a message). Over
            # the whole block, start line too, as the view's own plainness test looks.
            or "\x0b" in text or "\x0c" in text or "\x1c" in text or "\x1d" in text or "\x1e" in text
            or "\x1f" in text):
        return None
    # The start line's reading (request or status, and their parts): a few distinct lines
    # make most of a trunk's traffic ("SIP/2.0 200 OK"), so it is memoised (see _Memo).
    head = _STARTS[text[:start]]
    if head is None:
        return None

    found: dict[str, str] = {}
    # The header lines, without the start line and the final empty line. The view takes the
    # first line of each name (full or compact form, any case, blanks before the colon) with
    # its continuation lines; so does this loop. `current` is the value being extended by
    # continuation lines ("": the last name line was not a wanted one, or a repeat).
    current: str | None = ""
    spelled = _SPELLED
    for line in text[start + 2 : -4].split("\r\n") if len(text) > start + 4 else ():
        first = line[0]
        if first == " " or first == "\t":
            if current:
                found[current] += "\r\n" + line
            continue
        name, colon, value = line.partition(":")
        if not colon or not name:
            return None  # neither a name line nor a continuation: not plain
        # The name as spelled on the wire, looked up as it is: one dict probe per line
        # instead of strip, lower and a probe (_learn fills the table on a miss).
        current = spelled.get(name)  # None: a spelling not seen yet
        if current is None:
            current = _learn(name)
        if current:
            if current in found:
                # A repeat: the first wins, its continuations are not ours. A repeated
                # Content-Length is the reference's to judge (do they agree?).
                if current == "content-length":
                    found["content-length"] = "\r\n"  # never a plain number: not plain
                current = ""
            else:
                found[current] = value

    # The values of one call repeat in each of its messages (the From line in all seven, the
    # top Via in a transaction's), so their parameters are read once per distinct value
    # (see _Memo) rather than once per message. A dict subscript, not a cached function: a
    # call per value cost more than the probe on a hit, and an lru_cache miss (link, evict)
    # more than the reading it saves (bench/results/2026-12-03-s8-obslean.md).
    raw = found.get("call-id")
    call_id = joined(raw) if raw is not None else None
    raw = found.get("cseq")
    cseq = _NO_CSEQ if raw is None else _CSEQS[raw]
    tags = _TAGS
    raw = found.get("from")
    from_tag = None if raw is None else tags[raw]
    raw = found.get("to")
    to_tag = None if raw is None else tags[raw]
    raw = found.get("via")
    via_branch = None if raw is None else _BRANCHES[raw]
    raw = found.get("content-type")
    content_type = joined(raw) if raw is not None else None
    # Content-Length as content_length.simple_content_length reads it: digits alone on an
    # unfolded line (a continuation or a repeat adds a CRLF, which fails the pattern).
    raw = found.get("content-length")
    length = 0 if raw is None else _LENGTHS[raw]
    return (*head, call_id or None, *cseq, from_tag, to_tag, via_branch, content_type or None), length


# tuple.__new__ rather than SipFields(...): the NamedTuple's own __new__ is a Python
# function with thirteen parameters, a measurable share of a message's reading.
_new = tuple.__new__
_NO_CSEQ: tuple[int | None, str | None] = (None, None)
_T = TypeVar("_T")

# Spelled header name (exactly as before the colon, blanks included) -> the wanted header's
# canonical name, or "" for a header not read here. A peer chooses its names, so the table
# is bounded: when full it starts again (the names a trunk uses come back within a message).
_SPELLED: dict[str, str] = {}
_SPELLED_LIMIT = 512
_SPELLED_NAME_MAX = 64  # real header names are far shorter


def _learn(name: str) -> str:
    """``_SPELLED``'s miss path: the view's reading of a name (blanks before the colon
    dropped, any case, compact forms), remembered for the next line spelled the same."""
    canonical = _CANONICAL.get(name.rstrip(" \t").lower(), "")
    if len(name) > _SPELLED_NAME_MAX:
        return canonical  # a peer's odd, long name: read, not kept (bounds the table's bytes)
    if len(_SPELLED) >= _SPELLED_LIMIT:
        _SPELLED.clear()
    _SPELLED[name] = canonical
    return canonical


# The memoised readings: raw text (a start line; a header value with its continuation
# lines) -> what the functions below read from it. Each is a pure function of that one
# string, so a remembered answer is the computed one whoever asks: nothing per connection
# can be confused. Each is bounded, sized for the calls being set up at once on a busy
# trunk (each brings about one request line, two tag values, three Vias); a full table
# starts again (a dict, no recency links: a miss then costs a probe and an insert), and a
# value no longer there is simply read again.
# The longest raw text a table keeps. A peer chooses its values and a message may be up to
# max_sip_message (64 KiB by default): without this, a stream of messages with long unique
# values would pin limit x 64 KiB per table (hundreds of MiB in the mirror). Real start lines,
# tags and Vias are well under it; a longer one is read each time.
_MEMO_KEY_MAX = 512


class _Memo(dict[str, _T]):
    """One table of memoised readings: ``table[raw]`` is ``read(raw)``, read at the first
    subscript (``__missing__``) and kept until the table, at ``limit``, is emptied."""

    __slots__ = ("limit", "read")

    def __init__(self, read: Callable[[str], _T], limit: int) -> None:
        super().__init__()
        self.read = read
        self.limit = limit

    def __missing__(self, key: str) -> _T:
        value = self.read(key)
        if len(key) > _MEMO_KEY_MAX:
            return value  # read, not kept: see _MEMO_KEY_MAX
        if len(self) >= self.limit:
            self.clear()
        self[key] = value
        return value


def _start(line: str) -> tuple[bool, str | None, str | None, int | None, str | None] | None:
    """(is_request, method, request_uri, status_code, reason), or None: not a SIP start line."""
    request = _REQUEST_LINE.fullmatch(line)
    if request is not None:
        return True, request.group(1), request.group(2), None, None
    status = _STATUS_LINE.fullmatch(line)
    if status is not None:
        return False, None, None, int(status.group(1)), status.group(2) or ""
    return None


def _cseq(raw: str) -> tuple[int | None, str | None]:
    """CSeq's number and method, (None, None) when it is not ``number method``."""
    cseq = _CSEQ.fullmatch(joined(raw))
    return (int(cseq.group(1)), cseq.group(2)) if cseq is not None else _NO_CSEQ


def _length(raw: str) -> int | None:
    """A plain Content-Length value (``simple_content_length``'s pattern), else None."""
    value = _LENGTH.fullmatch(raw)
    return int(value.group(1)) if value is not None else None


def _tag(raw: str) -> str | None:
    """The ``tag`` parameter of a From or To value."""
    return _param(joined(raw), "tag")


def _via_branch(raw: str) -> str | None:
    """The ``branch`` parameter of a Via value's first entry."""
    via = joined(raw)
    return _param(_top_via(via), "branch") if via else None


def _top_via(via: str) -> str:
    """The first entry of a Via value (``split_values(via)[0]`` in the view)."""
    if "," not in via:
        return via  # already stripped
    return next((entry for part in _pieces(via, ",") if (entry := part.strip())), "")


def _pieces(value: str, sep: str) -> list[str]:
    parts: list[str] = []
    begin = 0
    for at in top_level(value, sep):
        parts.append(value[begin:at])
        begin = at + 1
    parts.append(value[begin:])
    return parts


def _param(value: str, wanted: str) -> str | None:
    """A header parameter (``;tag=``, ``;branch=``) outside quoted strings and ``<URI>``; None
    when absent or empty (the view's ``_header_param``)."""
    if '"' in value or "<" in value:
        match = _TO_PARAMS.match(value)
        if match is None:
            return None
        at = match.end() - 1
    else:
        at = value.find(";")
        if at < 0:
            return None
    rest = value[at + 1 :]
    params = rest.split(";") if '"' not in rest and "<" not in rest else _pieces(rest, ";")
    for param in params:
        name, eq, raw = param.partition("=")
        if name.strip().lower() != wanted:
            continue
        raw = raw.strip()
        if len(raw) >= 2 and raw[0] == raw[-1] == '"':
            raw = raw[1:-1].replace('\\"', '"').replace("\\\\", "\\")
        return raw if eq and raw else None
    return None


# The tables (_Memo, above), read by _read. Sizes: a table holds the values of the calls
# being set up at once on a busy trunk, several times over.
_STARTS: _Memo[tuple[bool, str | None, str | None, int | None, str | None] | None] = _Memo(_start, 1024)
_CSEQS: _Memo[tuple[int | None, str | None]] = _Memo(_cseq, 1024)
_TAGS: _Memo[str | None] = _Memo(_tag, 4096)
_BRANCHES: _Memo[str | None] = _Memo(_via_branch, 2048)
_LENGTHS: _Memo[int | None] = _Memo(_length, 1024)

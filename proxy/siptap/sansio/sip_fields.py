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
   wanted headers; the first of each name wins, as in the view.

So whenever this module answers, its answer is the view's (the property tests in
tests/sansio/test_sip_fields.py hold it to that, also over the fuzz corpus and the SIPp
scenarios); folded lines are answered too (joined as the view joins them), repeated headers
take the first like the view, and non-ASCII, bare CR/LF or odd whitespace fall back.

The result is a ``NamedTuple`` with the view's attribute names: readers of those attributes
take either.
"""

from __future__ import annotations

import re
from typing import NamedTuple

from siptap.sansio.sip_message import joined, top_level

__all__ = ["SipFields", "read_fields"]


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
}


def read_fields(data: bytes, header_end: int) -> SipFields | None:
    """The fields of one framed message (``header_end``: index of the first body byte, as the
    framer reports it), or None when the caller should ask ``parse_message`` instead: the header
    block is not plain ASCII, or the start line is not SIP (the view then raises)."""
    block = data[:header_end]
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
    start_line = text[:start]
    request = _REQUEST_LINE.fullmatch(start_line)
    status = None if request is not None else _STATUS_LINE.fullmatch(start_line)
    if request is None and status is None:
        return None

    found: dict[str, str] = {}
    # The header lines, without the start line and the final empty line. The view takes the
    # first line of each name (full or compact form, any case, blanks before the colon) with
    # its continuation lines; so does this loop. `current` is the value being extended by
    # continuation lines (None: the last name line was not a wanted one, or a repeat).
    current: str | None = None
    for line in text[start + 2 : -4].split("\r\n") if len(text) > start + 4 else ():
        first = line[0]
        if first == " " or first == "\t":
            if current is not None:
                found[current] += "\r\n" + line
            continue
        name, colon, value = line.partition(":")
        if not colon or not name:
            return None  # neither a name line nor a continuation: not plain
        current = _CANONICAL.get(name.rstrip(" \t").lower())
        if current is not None:
            if current in found:
                current = None  # a repeat: the first wins, its continuations are not ours
            else:
                found[current] = value

    call_id = joined(found["call-id"]) if "call-id" in found else None
    cseq_number: int | None = None
    cseq_method: str | None = None
    if "cseq" in found and (cseq := _CSEQ.fullmatch(joined(found["cseq"]))) is not None:
        cseq_number, cseq_method = int(cseq.group(1)), cseq.group(2)
    via_branch = None
    if "via" in found and (via := joined(found["via"])):
        via_branch = _param(_top_via(via), "branch")
    content_type = joined(found["content-type"]) if "content-type" in found else None
    return SipFields(
        request is not None,
        request.group(1) if request is not None else None,
        request.group(2) if request is not None else None,
        int(status.group(1)) if status is not None else None,
        (status.group(2) or "") if status is not None else None,
        call_id or None,
        cseq_number,
        cseq_method,
        _param(joined(found["from"]), "tag") if "from" in found else None,
        _param(joined(found["to"]), "tag") if "to" in found else None,
        via_branch,
        content_type or None,
        max(0, len(data) - header_end),
    )


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

"""Where a SIP message's body ends on a stream: its Content-Length, read two ways.

On TCP and TLS, Content-Length is the only thing that delimits a body (RFC 3261 18.3): the
body may hold CRLFCRLF or any byte. :class:`~siptap.sansio.sip_framer.SipFramer` asks here
once per message. :func:`content_length` is the reference reading (folding, compact form,
repeats); :func:`simple_content_length` is the framer's fast path, which answers only the
plain case and otherwise says "ask the reference". tests/sansio/test_framer_fast_path.py
pins that whenever the shortcut answers, its answer is the reference's.
"""

from __future__ import annotations

import re

__all__ = ["content_length", "simple_content_length"]

# The plain value: optional blanks, at most 18 digits (an int() of that size is cheap and is
# far beyond any max_message_size), blanks, the line's CRLF. The lookahead refuses a line
# that continues folded on the next one (SP/HTAB after CRLF): its value is not just these digits.
_SIMPLE_VALUE = re.compile(rb"[ \t]*([0-9]{1,18})[ \t]*\r\n(?![ \t])")
_DIGITS = re.compile(rb"[0-9]+")


def simple_content_length(data: bytes, start: int, header_end: int) -> int | None:
    """Content-Length of the header block ``data[start:header_end]`` (``start`` at the start
    line's CRLF) when it is the simple case: absent (0), or one header with a plain number on
    an unfolded line. None means "not simple": :func:`content_length`, the reference,
    decides. Simple also means no byte that the reference's ``bytes.strip()`` or line split
    would treat differently from this search (VT, FF, a bare CR or LF), so a line start is
    exactly a position after CRLF; the scans are str-method speed (no per-line Python)."""
    # One slice copy of the header block: the counts and the lower() below then run on it
    # alone, never on the body that follows in the same chunk.
    block = data[start:header_end]
    # VT and FF are whitespace to bytes.strip() but not to this search: leave them to the reference.
    if b"\x0b" in block or b"\x0c" in block:
        return None
    # Every CR and every LF belongs to a CRLF: then "\r\n" + name finds exactly the lines
    # whose header name is name (a bare LF would start a line the reference splits differently).
    lines = block.count(b"\r\n")
    if block.count(b"\r") != lines or block.count(b"\n") != lines:
        return None
    # Header names are case-insensitive (RFC 3261 7.3.1). Lowering the whole block once is a
    # C loop; lowering per line would be the per-line Python this function exists to avoid.
    lower = block.lower()
    # "\r\nl" also matches every header whose name starts with "l" (Location, ...): the colon
    # test below keeps only the compact Content-Length "l:" and the long form.
    value_at = -1
    for name in (b"\r\ncontent-length", b"\r\nl"):
        at = lower.find(name)
        while at >= 0:
            colon = at + len(name)
            while lower[colon] in b" \t":  # the block ends in CRLFCRLF: never out of range
                colon += 1
            if lower[colon] == 0x3A:  # ":" - this line is a Content-Length header
                if value_at >= 0:
                    return None  # repeated: the reference checks that they agree
                value_at = colon + 1
            at = lower.find(name, at + 1)
    if value_at < 0:
        # No Content-Length at all: mandatory on streams (RFC 3261 20.14), but the reference
        # frames such a message with an empty body too, so 0 is its answer as well.
        return 0
    # The value must be a plain number ending its line, not folded onto the next one (the
    # negative lookahead): anything else, including an empty value, goes to the reference.
    # ``value_at`` was found in ``lower`` but indexes ``block`` alike: bytes.lower() maps
    # each byte to one byte, so the two have the same offsets.
    value = _SIMPLE_VALUE.match(block, value_at)
    return int(value.group(1)) if value is not None else None


def content_length(buf: bytearray, header_end: int) -> tuple[int, str | None]:
    """Content-Length from the header block; (0, None) when absent, (0, reason) when invalid.

    Header names are case-insensitive, ``l`` is the compact form, whitespace around the colon
    and folded continuation lines are tolerated. Repeated headers must agree.
    """
    # Split on CRLF only, as the framer found the block's end by CRLFCRLF: a bare LF inside
    # a line stays part of it (and simple_content_length declines such blocks, so both agree).
    lines = bytes(buf[:header_end]).split(b"\r\n")
    values: list[bytes] = []
    current: bytearray | None = None  # value of a Content-Length header being unfolded
    for line in lines[1:]:  # lines[0] is the start line
        # RFC 3261 7.3.1: a line starting with SP/HTAB continues the previous header's value.
        if line[:1] in (b" ", b"\t"):
            if current is not None:
                current += b" " + line.strip()
            continue
        # Any other line ends the header being unfolded: its value is complete now.
        if current is not None:
            values.append(bytes(current))
            current = None
        name, colon, value = line.partition(b":")
        # strip() around the name tolerates "Content-Length :" (RFC 3261 allows LWS before
        # the colon); a line without a colon is not a header and is passed over, not refused:
        # the framer only observes, and the peer's SIP stack is the one to reject it.
        if colon and name.strip().lower() in (b"content-length", b"l"):
            current = bytearray(value.strip())
    # The last header line may itself be a Content-Length (the blank line ends it).
    if current is not None:
        values.append(bytes(current))
    if not values:
        return 0, None
    numbers: set[int] = set()
    for value in values:
        value = value.strip()
        # Digits only: a sign, a unit or a folded "5 6" would let two parsers disagree on
        # where the body ends, so anything else is refused (the reason says why) and the framer
        # skips the message, resynchronising after it.
        if not _DIGITS.fullmatch(value):
            return 0, f"invalid Content-Length: {value.decode('latin-1')!r}"
        # Leading zeros are legal (*DIGIT) and must not count toward the length check below.
        digits = value.lstrip(b"0") or b"0"
        if len(digits) > 18:  # beyond any limit; avoids int() on a huge digit string
            return 0, f"Content-Length of {len(digits)} digits exceeds any max_message_size"
        numbers.add(int(digits))
    # Two Content-Length headers that disagree make the body boundary ambiguous: a classic
    # request-smuggling shape. Never guess: the framer skips the message and resynchronises
    # (the relay still relays).
    if len(numbers) > 1:
        shown = ", ".join(str(n) for n in sorted(numbers))
        return 0, f"invalid Content-Length: conflicting values {shown}"
    return numbers.pop(), None

"""Where SIP starts again after bytes that are not: the framer's resynchronisation rules.

:class:`~siptap.sansio.sip_framer.SipFramer` never stops observing a stream. After garbage, an
oversized header block, or a Content-Length it cannot trust, it skips to the next *plausible*
start line (:func:`next_line_start`) and then checks the header block that follows it
(:func:`header_block_is_plausible`) before framing a message there again: a line that merely
looks like a start line (a ``SIP/2.0 200 OK`` inside a sipfrag body being skipped) is refused
by the lines after it. :func:`embedded_start` catches a Content-Length larger than the body,
so that the "body" holds the next message; :func:`swallowed_start` a header block whose blank
line is missing (or damaged), so that it runs on into the next message's start line.

Pure functions over a buffer, no framer state: each answer depends only on the bytes passed,
never on where a chunk ended, which is what keeps the framer's events split-invariant.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from siptap.sansio.sip_start_line import NO, START_LINE, classify_line

__all__ = ["LINE_START_NEXT", "MAYBE_EMBEDDED", "embedded_start", "header_block_is_plausible", "next_line_start", "swallowed_start"]

_CR = 0x0D

# A header line (RFC 3261 7.3.1): a token, optional blanks, a colon. Header names are tokens,
# so a start line ("INVITE sip:x SIP/2.0", "SIP/2.0 200 OK") is never one: its first blank
# comes before any colon (SIP/2.0 has none). This is what tells a real header block from a
# body's text or the next message's start line.
_HEADER_LINE = re.compile(rb"[A-Za-z0-9\-.!%*_+`'~]+[ \t]*:")
# Every start line holds the version; a body without it (every SDP body) needs no line scan.
# In capitals only, as every SIP stack writes it: a find is several times cheaper than a
# case-blind regex search, and this runs for every body the mirror frames.
_VERSION = b"SIP/2.0"
# Bodies that may legitimately carry a SIP message or fragment (message/sipfrag in a NOTIFY
# for REFER, message/sip, multipart wrapping either): their Content-Length is trusted.
_SIP_CARRYING_TYPE = re.compile(rb"(?im)^(?:content-type|c)[ \t]*:[ \t]*(?:message|multipart)/")

# next_line_start's answer when the buffer ends right after an LF: the next byte (not yet
# here) begins a line, which the caller must test as a candidate when it arrives.
LINE_START_NEXT = -2


def next_line_start(buf: bytearray, pos: int, max_header: int) -> int:
    """The first line start after ``pos`` at which a plausible start line begins.

    Line starts are found by LF alone (garbage need not use CRLF). A line starting with CR is
    blank and so garbage, not a keepalive. "Plausible" is :func:`classify_line` not saying NO:
    a line still arriving may yet be refused, and the framer then skips on from it. Returns
    the index, :data:`LINE_START_NEXT` when the buffer ends with an LF, or -1 when no line
    start follows ``pos`` in the buffer.
    """
    n = len(buf)
    while True:
        lf = buf.find(b"\n", pos)
        if lf < 0:
            return -1
        start = lf + 1
        if start == n:
            return LINE_START_NEXT
        if buf[start] != _CR and classify_line(buf, start, max_header) != NO:
            return start
        pos = start


def header_block_is_plausible(buf: bytearray, start: int, header_end: int) -> bool:
    """Is every line after the start line at ``start`` a header line or a continuation?

    Asked only of a message found by resync: the start line alone is weak evidence (a body
    line or a fragment may look like one), a header block of well-formed lines is strong.
    ``header_end`` indexes just past the block's CRLFCRLF. An empty block is plausible.
    """
    first = buf.find(b"\r\n", start, header_end)
    lines = bytes(buf[first + 2 : header_end - 4]).split(b"\r\n") if first + 4 < header_end else []
    for index, line in enumerate(lines):
        # Folding (a line starting with SP/HTAB) continues the header above it, so it cannot
        # be the first; anything else must name a header.
        if line[:1] in (b" ", b"\t") and index > 0:
            continue
        if not _HEADER_LINE.match(line):
            return False
    return True


def embedded_start(buf: bytes | bytearray, start: int, header_end: int, end: int) -> int:
    """Where, inside the body ``buf[header_end:end]`` of the message at ``start``, the next
    message begins, because its Content-Length claimed more than its body: -1 if nowhere.

    Evidence required: at a line start in the body, a complete start line followed by at least
    one complete line, every complete line up to the body's end (or a blank line) being a
    header line or a continuation. Bodies declared ``message/*`` or ``multipart/*`` may carry
    SIP legitimately and are trusted. A start line cut by the body's end is not evidence: the
    message is then framed as its Content-Length says and resync happens after it.
    """
    # The cheap refusal first: nearly every body (SDP) holds no "SIP/2.0" at all.
    if buf.find(_VERSION, header_end, end) < 0:
        return -1
    if _SIP_CARRYING_TYPE.search(buf, start, header_end) is not None:
        return -1
    for line, line_end in _start_lines(buf, header_end, end):
        if _headers_follow(buf, line_end + 2, end):
            return line
    return -1


def _start_lines(buf: bytes | bytearray, pos: int, end: int) -> Iterator[tuple[int, int]]:
    """Each complete start line in ``buf[pos:end]`` at a line start (``pos``, or after an LF:
    a bare LF starts a line, as for resync), with the index of its CRLF, whose version is in
    capitals (MAYBE_EMBEDDED, within the line and its CR)."""
    while pos < end:
        line_end = buf.find(b"\r\n", pos, end)
        if line_end < 0:
            return
        # The grammar takes the version in any case, but the framer's fast path looks only for
        # it in capitals (MAYBE_EMBEDDED) before it trusts a message whole: a "SiP/2.0 200 OK"
        # line in a body that also holds a capital "SIP/2.0" (a Via) was found here and not
        # there, so framing depended on how the stream was cut (a fuzz find, 2026-12-03:
        # tests/fuzz/corpus/sip_framer/regress-mixed-case-version-in-body).
        if START_LINE.fullmatch(buf, pos, line_end) and MAYBE_EMBEDDED.search(buf, pos, line_end + 1):
            yield pos, line_end
        pos = buf.find(b"\n", pos, end) + 1  # found: at the latest, the LF of line_end


def _headers_follow(buf: bytes | bytearray, pos: int, end: int) -> bool:
    """Do complete header lines follow from ``pos`` (at least one, all well-formed)?"""
    headers = 0
    while pos < end:
        line_end = buf.find(b"\r\n", pos, end)
        if line_end < 0 or line_end == pos:
            break  # a line cut by the body's end, or the blank line ending the block
        if not (_HEADER_LINE.match(buf, pos, line_end) or (headers and buf[pos] in b" \t")):
            return False
        headers += 1
        pos = line_end + 2
    return headers > 0


# What a start line inside a header block must contain: a request line ends with the version,
# a status line begins with it. A Via header's "SIP/2.0/TLS" is neither, so an ordinary block
# is cleared by two C-speed finds (the check runs for every message the mirror frames; the
# version in capitals only, as for _VERSION).
_REQUEST_END = b" SIP/2.0\r\n"
_STATUS_START = b"\nSIP/2.0 "
# Every start line that swallowed_start or embedded_start can find holds this (its version
# then SP or CR): the framer's fast path searches a message's header block and body for it
# once and leaves the few messages that hold it to the state machine and these functions.
MAYBE_EMBEDDED = re.compile(rb"SIP/2\.0[ \r]")


def swallowed_start(buf: bytes | bytearray, start: int, header_end: int) -> int:
    """Where, inside the header block of the message at ``start``, the next message's start
    line begins (a line that is a start line and not a header line): -1 if nowhere.

    A header block never holds a start line; one that does lost its blank line (a broken
    peer, or bytes damaged on the way) and ran on into the next message, whose header block's
    end it then took for its own.
    """
    first = buf.find(b"\r\n", start, header_end)
    if buf.find(_REQUEST_END, first, header_end) < 0 and buf.find(_STATUS_START, first, header_end) < 0:
        return -1
    for line, line_end in _start_lines(buf, first + 2, header_end):
        if not _HEADER_LINE.match(buf, line, line_end):
            return line
    return -1

"""Is this the start of a SIP message? The start-line grammar the framer resyncs on.

:class:`~siptap.sansio.sip_framer.SipFramer` frames only what begins with a request line
(``INVITE sip:bob SIP/2.0``) or a status line (``SIP/2.0 200 OK``), RFC 3261 7.1 and 7.2.
It asks two questions here: is a complete line a start line (:data:`START_LINE`), and can an
incomplete one still become one (:func:`classify_line` with the prefix grammar). The second
is what lets the framer reject TLS records or binary garbage after a few bytes instead of
buffering them up to the header limit. Pure functions over a buffer: no framer state.
"""

from __future__ import annotations

import re

__all__ = ["MAYBE", "NO", "START_LINE", "YES", "classify_line", "looks_like_tls"]

# RFC 3261 25.1: token = 1*(alphanum / "-" / "." / "!" / "%" / "*" / "_" / "+" / "`" / "'" / "~")
_TOKEN = rb"[A-Za-z0-9\-.!%*_+`'~]"
_URI = rb"[^\x00-\x20\x7f]"  # no SP, no CTL
_REASON = rb"[^\x00-\x08\x0a-\x1f\x7f]"  # reason phrase: anything but CTL (HTAB allowed)
_VERSION = rb"(?i:SIP/2\.0)"
# Every prefix of "SIP/2.0", nested optionals: a status line cut after "SI" must still wait.
_VERSION_PREFIX = rb"(?i:S(?:I(?:P(?:/(?:2(?:\.(?:0)?)?)?)?)?)?)"

# Complete start lines (CRLF excluded). Runs of SP are tolerated: leniency costs nothing here.
# Public because the framer's fast path calls START_LINE.fullmatch itself: once per message on
# the relay's wake-up, where a wrapper function's call would be a measurable share.
START_LINE = re.compile(
    rb"(?:" + _TOKEN + rb"+ +" + _URI + rb"+ +" + _VERSION + rb" *)"
    rb"|(?:" + _VERSION + rb" +[0-9]{3}(?: " + _REASON + rb"*)?)"
)
# What an incomplete start line may look like so far: every prefix of a line matched by
# START_LINE matches this, so waiting for more bytes never rejects a valid message.
_START_LINE_PREFIX = re.compile(
    rb"(?:" + _TOKEN + rb"+(?: +(?:" + _URI + rb"+(?: +(?:" + _VERSION_PREFIX + rb" *)?)?)?)?)"
    rb"|(?:" + _VERSION_PREFIX + rb")"
    rb"|(?:" + _VERSION + rb" +(?:[0-9]{1,3}(?: " + _REASON + rb"*)?)?)"
)

_CR = 0x0D

# The three answers of classify_line(). Plain ints rather than an enum: the check runs per
# message on the relay's wake-up, and an int comparison is the cheapest thing Python has.
YES, NO, MAYBE = 1, 0, -1


def classify_line(buf: bytearray, start: int, max_header: int, crlf_from: int = 0, *,
                  check_prefix: bool = True) -> int:
    """Is the line at ``start`` a start line (YES), never one (NO), or unknown yet (MAYBE)?

    Only the first ``max_header`` bytes of the message are looked at, so the answer does
    not depend on how much of an over-long line happens to be buffered. ``crlf_from`` is
    where an earlier search for the line's CRLF left off.
    """
    limit = start + max_header
    crlf = buf.find(b"\r\n", max(start, crlf_from), limit)
    if crlf >= 0:
        # A whole line: the full grammar answers for good.
        return YES if START_LINE.fullmatch(buf, start, crlf) else NO
    if not check_prefix:
        return MAYBE
    # An incomplete line: _START_LINE_PREFIX accepts every prefix of a valid start line, so
    # NO here is final (no continuation can make it valid) and MAYBE means "wait".
    end = min(len(buf), limit)
    if end > start and buf[end - 1] == _CR:
        end -= 1  # may be the first half of the line's CRLF
    if end == start:
        return MAYBE
    return MAYBE if _START_LINE_PREFIX.fullmatch(buf, start, end) else NO


def looks_like_tls(buf: bytearray) -> bool:
    """A TLS record header (content type 20..23, version 3.x) where SIP was expected.

    Worth its own reason: it means a peer speaks TLS to a cleartext port, or a leg is mis-wired.
    """
    # Two bytes suffice: no start line begins with a byte in 0x14..0x17 (all CTLs), so this
    # never relabels real SIP; it only names the garbage once the grammar has refused it.
    return len(buf) >= 2 and 0x14 <= buf[0] <= 0x17 and buf[1] == 0x03

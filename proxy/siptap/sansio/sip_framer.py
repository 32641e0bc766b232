"""SIP-over-stream framing (RFC 3261 section 18.3, RFC 5626 section 3.5.1), sans-IO.

Theory of operation
-------------------
One ``SipFramer`` watches one direction of a TCP/TLS connection. The relay has already
forwarded every chunk before it calls ``feed()``: the framer only *observes*, and nothing it
decides changes what goes on the wire. Bytes go in, events come out, and every input byte
comes back out in exactly one event's ``data`` (in order), whether it framed as SIP or not.

The buffer is a state machine over the bytes not yet reported:

``_IDLE``      at a line start between messages. A CR here begins an RFC 5626 keepalive:
               CRLFCRLF is a ping, a CRLF not followed by CRLF is a pong. Anything else
               begins a start line.
``_LINE``      reading the start line. While it is incomplete it is checked against what a
               request or status line may begin with (again each time it doubles), so TLS
               records or binary garbage are rejected at once instead of being buffered up to
               the header limit.
``_HEADERS``   the start line is plausible; looking for the CRLFCRLF that ends the header
               block. The search resumes where it stopped (as h11's receive buffer does), so
               a header block fed one byte at a time costs linear, not quadratic, time.
``_BODY``      the header block is parsed; waiting for Content-Length body bytes. Only
               Content-Length decides where the body ends: bodies may hold CRLFCRLF or any byte.
``_SKIP``      the bytes at the front are not SIP. They are reported as ``Unframeable`` and
               skipped to the next line start at which a plausible start line begins. Skipped
               bytes are reported as soon as they are known to be garbage, so resync holds no
               more than one candidate line. Blank lines inside garbage are garbage, not
               keepalives.
``_GAVE_UP``   a limit or an invalid Content-Length made framing unsafe or unbounded. The
               buffer is reported and dropped, and every later chunk is reported as-is.

Bytes missing from the stream (the mirror lost a chunk: :meth:`SipFramer.gap`) enter
``_SKIP`` with reason ``"gap"``: what was buffered is reported, and resync starts at the first
byte after the hole as if it began a line, because a lost chunk usually ended at a message
boundary. The price is that a fragment which happens to read as a start line (the tail
``"ITE sip:bob SIP/2.0"`` of an INVITE) is framed as a message; its header block and
Content-Length are the real message's, so framing is back on the real boundaries after it.

Every decision is taken only from bytes that are already buffered and never from where a chunk
ended, and the limits are applied to fixed windows (the first ``max_header_size`` bytes of a
message): so a valid stream frames into the same events however it is split. Between feeds the
buffer holds at most one incomplete message, i.e. ``max_header_size + max_message_size`` bytes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal, TypeAlias

__all__ = [
    "Event",
    "KeepAlive",
    "SipFramer",
    "SipMessage",
    "Unframeable",
]


@dataclass(frozen=True, slots=True)
class SipMessage:
    """One complete message, exactly as it crossed the wire, so mirrors can replay it verbatim.

    ``header_end`` indexes the first body byte (just past CRLFCRLF). A message without a
    Content-Length header (mandatory on streams, RFC 3261 20.14) is framed with an empty body.
    """

    data: bytes
    header_end: int
    body_length: int


@dataclass(frozen=True, slots=True)
class KeepAlive:
    """An RFC 5626 keepalive: reported rather than dropped so a mirror can show trunk liveness."""

    data: bytes
    kind: Literal["ping", "pong"]


@dataclass(frozen=True, slots=True)
class Unframeable:
    """Bytes that could not be framed as SIP, kept raw so that nothing observed is lost."""

    data: bytes
    reason: str


Event: TypeAlias = SipMessage | KeepAlive | Unframeable

# RFC 3261 25.1: token = 1*(alphanum / "-" / "." / "!" / "%" / "*" / "_" / "+" / "`" / "'" / "~")
_TOKEN = rb"[A-Za-z0-9\-.!%*_+`'~]"
_URI = rb"[^\x00-\x20\x7f]"  # no SP, no CTL
_REASON = rb"[^\x00-\x08\x0a-\x1f\x7f]"  # reason phrase: anything but CTL (HTAB allowed)
_VERSION = rb"(?i:SIP/2\.0)"
_VERSION_PREFIX = rb"(?i:S(?:I(?:P(?:/(?:2(?:\.(?:0)?)?)?)?)?)?)"

# Complete start lines (CRLF excluded). Runs of SP are tolerated: leniency costs nothing here.
_START_LINE = re.compile(
    rb"(?:" + _TOKEN + rb"+ +" + _URI + rb"+ +" + _VERSION + rb" *)"
    rb"|(?:" + _VERSION + rb" +[0-9]{3}(?: " + _REASON + rb"*)?)"
)
# What an incomplete start line may look like so far: every prefix of a line matched by
# _START_LINE matches this, so waiting for more bytes never rejects a valid message.
_START_LINE_PREFIX = re.compile(
    rb"(?:" + _TOKEN + rb"+(?: +(?:" + _URI + rb"+(?: +(?:" + _VERSION_PREFIX + rb" *)?)?)?)?)"
    rb"|(?:" + _VERSION_PREFIX + rb")"
    rb"|(?:" + _VERSION + rb" +(?:[0-9]{1,3}(?: " + _REASON + rb"*)?)?)"
)
_DIGITS = re.compile(rb"[0-9]+")

_CR = 0x0D
_LF = 0x0A

_IDLE = "idle"
_LINE = "line"
_HEADERS = "headers"
_BODY = "body"
_SKIP = "skip"
_GAVE_UP = "gave up"

# The three answers of _classify_line(). Plain ints rather than an enum: the check runs per
# message on the relay's wake-up, and an int comparison is the cheapest thing Python has.
_YES, _NO, _MAYBE = 1, 0, -1

_NOT_SIP = "not a SIP start line"
_TLS = "TLS record where cleartext SIP was expected"
_TRUNCATED = "truncated at end of stream"
_NOT_OBSERVING = "not observing"
_GAP = "gap"


class SipFramer:
    """Frames one direction of a SIP stream into events; never holds more than one message."""

    def __init__(self, *, max_message_size: int = 65536, max_header_size: int = 16384) -> None:
        if max_message_size < 0 or max_header_size < 4:
            raise ValueError("max_message_size must be >= 0 and max_header_size >= 4")
        self._max_message = max_message_size
        self._max_header = max_header_size
        # The bytes not yet reported, always starting at the front of the current message (or
        # garbage run): a bytearray so that del buf[:n] after each event is cheap in CPython
        # (it moves the start pointer instead of copying the tail).
        self._buf = bytearray()
        self._state = _IDLE
        self._scan_from = 0  # where the CRLF / CRLFCRLF search resumes
        self._checked = 0  # start-line bytes that passed the last prefix check
        self._header_end = 0  # _BODY: where the body starts in _buf
        self._body_length = 0  # _BODY: its Content-Length
        self._skip_reason = _NOT_SIP  # _SKIP: the reason every skipped run is reported with
        # _SKIP: the previous chunk ended right after a garbage line's LF, so the next byte is a
        # line start that may begin a message; remembered because the LF itself was reported.
        self._skip_at_line_start = False
        # Since the last gap() no message has been framed: a start line rejected now is still
        # the hole's debris, reported with reason "gap", not as a stream that is not SIP.
        self._after_gap = False
        self._closed = False

    @property
    def observing(self) -> bool:
        """False once a limit was hit: the stream can no longer be framed with bounded memory."""
        return self._state != _GAVE_UP

    @property
    def buffered(self) -> int:
        """Bytes held back waiting for the rest of a message (for metrics and memory checks)."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[Event]:
        """Take the next chunk of the stream; return the events it completed, in stream order."""
        if self._closed:
            raise RuntimeError("SipFramer.feed() after close()")
        if not data:
            return []
        if self._state == _GAVE_UP:
            # Nothing is buffered once framing gave up: each chunk goes straight back out, so a
            # long-lived connection that stopped being SIP costs one event per chunk and no memory.
            return [Unframeable(bytes(data), _NOT_OBSERVING)]
        events: list[Event] = []
        if self._state == _IDLE and not self._buf:
            # The common case on a relay: the chunk starts at a message boundary (TLS records
            # usually carry whole messages). Frame what is complete straight from the chunk and
            # buffer only a trailing partial message: copying every chunk into the bytearray
            # first would cost a copy per message for nothing.
            data = bytes(data)  # a memoryview or bytearray from the caller must not change under us
            taken = self._complete_messages(data, events)
            if taken:
                self._after_gap = False
            if taken == len(data):
                return events
            data = data[taken:]
        # Whatever the fast path could not decide goes through the state machine, which starts
        # from exactly the state the fast path left (_IDLE at a message boundary): the split
        # between the two paths never changes the events.
        self._buf += data
        self._process(events)
        return events

    def close(self) -> list[Event]:
        """End of stream: whatever is still buffered can never complete, so report it raw."""
        if self._closed:
            return []
        self._closed = True
        events: list[Event] = []
        buf = self._buf
        if self._state == _LINE and self._classify_line(0) == _NO:
            # _line() re-checks a growing line only when it doubles, so the newest bytes may
            # never have been looked at: decide now, and resync as feed() would have.
            self._enter_skip(_TLS if _looks_like_tls(buf) else _NOT_SIP)
            self._process(events)
        if self._state == _IDLE and buf[:2] == b"\r\n":
            # A trailing CRLF that was waiting to see whether it begins a ping.
            events.append(KeepAlive(bytes(buf[:2]), "pong"))
            del buf[:2]
        if buf:
            events.append(Unframeable(bytes(buf), _TRUNCATED))
        buf.clear()
        return events

    def gap(self) -> list[Event]:
        """Bytes are missing between the last ``feed`` and the next: resynchronise.

        Whatever was buffered (a partial message, a partial keepalive) can never complete
        correctly now: it is reported as ``Unframeable(reason="gap")``. The next bytes are
        taken as a possible line start; until a plausible start line shows up they are
        reported as ``Unframeable(reason="gap")`` too, one event per run, as any resync is.
        A framer that gave up stays given up (its limits were hit; a gap does not undo that).
        """
        if self._closed:
            raise RuntimeError("SipFramer.gap() after close()")
        if self._state == _GAVE_UP:
            return []
        events: list[Event] = []
        if self._buf:
            events.append(Unframeable(bytes(self._buf), _GAP))
            self._buf.clear()
        self._enter_skip(_GAP)
        self._after_gap = True
        # After the hole the first byte may begin a message (a whole chunk was lost, the usual
        # case): _skip() tests it as a candidate before looking for the next LF.
        self._skip_at_line_start = True
        return events

    # -- the fast path ----------------------------------------------------------------------

    def _complete_messages(self, data: bytes, events: list[Event]) -> int:
        """Frame the plain, complete messages at the front of ``data`` without buffering.

        Takes only what the state machine would frame the same way: a valid start line, the
        header end within the limit, one unambiguous Content-Length, the whole body present.
        At anything else (a keepalive, garbage, an incomplete message, a folded or repeated
        Content-Length) it stops and returns how far it got; the state machine goes on from
        there. A chunk holding exactly one message is reported without a copy.
        """
        pos = 0
        n = len(data)
        max_header = self._max_header
        while pos < n:
            if data[pos] == _CR:
                return pos  # a keepalive (or a stray CR): _idle() decides those byte by byte
            # Searches stop at the header limit, exactly where the state machine's do, so a
            # message the slow path would refuse is never accepted here.
            limit = pos + max_header
            crlf = data.find(b"\r\n", pos, limit)
            if crlf < 0 or not _START_LINE.fullmatch(data, pos, crlf):
                return pos
            # Searching from the start line's CRLF (not past it) finds a header block that is
            # empty: "INVITE ... SIP/2.0\r\n\r\n" ends at that very CRLF.
            end = data.find(b"\r\n\r\n", crlf, limit)
            if end < 0:
                return pos
            header_end = end + 4
            length = _simple_content_length(data, crlf, header_end)
            if length is None or length > self._max_message:
                # Not simple, or over the limit: the reference parser must decide, and report.
                return pos
            total = header_end + length
            if total > n:
                return pos  # body incomplete: buffer from the message start, not from here
            # Slicing copies; a chunk that is exactly one message (the usual case) is reused.
            message = data if pos == 0 and total == n else data[pos:total]
            events.append(SipMessage(message, header_end - pos, length))
            pos = total
        return pos

    # -- the state machine ------------------------------------------------------------------

    def _process(self, events: list[Event]) -> None:
        """Advance through the states until the buffer cannot decide anything more."""
        buf = self._buf
        # Each handler either consumes bytes / changes state and returns True (loop again), or
        # returns False: it needs more input to decide. Nothing is decided on a chunk boundary.
        while buf:
            state = self._state
            if state == _IDLE:
                if not self._idle(events):
                    return
            elif state == _LINE:
                if not self._line(events):
                    return
            elif state == _HEADERS:
                if not self._headers(events):
                    return
            elif state == _BODY:
                # Only Content-Length says where the body ends; waiting here holds at most
                # max_header_size + max_message_size bytes, the bound the docstring promises.
                total = self._header_end + self._body_length
                if len(buf) < total:
                    return
                events.append(SipMessage(bytes(buf[:total]), self._header_end, self._body_length))
                del buf[:total]
                self._state = _IDLE
                self._after_gap = False
            elif state == _SKIP:
                self._skip(events)
            else:  # _GAVE_UP: _give_up() already emptied the buffer
                return

    def _idle(self, events: list[Event]) -> bool:
        """Between messages: keepalives are decided only once the next byte is known."""
        buf = self._buf
        if buf[0] != _CR:
            self._state = _LINE
            self._scan_from = 0
            self._checked = 0
            return True
        # Each "return False" below waits for one more byte instead of guessing from where the
        # chunk ended: CRLF then CRLF is one ping, CRLF then anything else is a pong followed
        # by that thing. Deciding early would make the events depend on the split.
        n = len(buf)
        if n < 2:
            return False
        if buf[1] != _LF:
            self._enter_skip(_NOT_SIP)  # a bare CR between messages: not SIP, not a keepalive
            return True
        if n < 3:
            return False
        if buf[2] == _CR:
            if n < 4:
                return False
            if buf[3] == _LF:
                events.append(KeepAlive(bytes(buf[:4]), "ping"))
                del buf[:4]
                return True
        events.append(KeepAlive(bytes(buf[:2]), "pong"))
        del buf[:2]
        return True

    def _line(self, events: list[Event]) -> bool:
        """Accept or reject the start line, waiting only while it could still be SIP.

        An incomplete line is re-checked only each time it has doubled in length: the prefix
        check rescans from the line start, and a line fed one byte at a time must not cost
        quadratic time. Rejection may come a little later; the verdict is the same, because a
        prefix that cannot begin a start line never becomes one by growing.
        """
        buf = self._buf
        limit = self._max_header
        # First the cheap question: has the CRLF arrived? (A resumed find, no regex.)
        verdict = self._classify_line(0, self._scan_from, check_prefix=False)
        if verdict == _MAYBE:
            # Resume the CRLF search one byte back: the last buffered byte may be the CR.
            self._scan_from = max(0, min(len(buf), limit) - 1)
            # The prefix regex rescans the whole line, so run it only at the limit or when the
            # line has doubled since the last check: amortised linear in the line length.
            if len(buf) >= limit or len(buf) >= 2 * self._checked:
                self._checked = len(buf)
                verdict = self._classify_line(0, self._scan_from)
        if verdict == _YES:
            self._state = _HEADERS
            # The start line's own CRLF may be the first half of CRLFCRLF.
            self._scan_from = 0
            return True
        if verdict == _NO:
            self._enter_skip(_TLS if _looks_like_tls(buf) else _NOT_SIP)
            return True
        if len(buf) >= limit:
            self._give_up(events, f"header block exceeds {limit} bytes without end")
            return True
        return False

    def _headers(self, events: list[Event]) -> bool:
        """Find the end of the header block within the first max_header_size bytes."""
        buf = self._buf
        # The search window ends at max_header_size from the message start, whatever is
        # buffered: a header end found at byte limit+1 of a larger chunk would be accepted on
        # one split and refused on another.
        end = buf.find(b"\r\n\r\n", self._scan_from, self._max_header)
        if end < 0:
            if len(buf) >= self._max_header:
                self._give_up(events, f"header block exceeds {self._max_header} bytes without end")
                return True
            # Resume 3 bytes back: up to "\r\n\r" of the terminator may already be buffered.
            self._scan_from = max(0, len(buf) - 3)
            return False
        header_end = end + 4
        length, error = _content_length(buf, header_end)
        if error is not None:
            self._give_up(events, error)
            return True
        if length > self._max_message:
            limit = self._max_message
            self._give_up(events, f"Content-Length {length} exceeds max_message_size {limit}")
            return True
        self._header_end = header_end
        self._body_length = length
        self._state = _BODY
        return True

    def _enter_skip(self, reason: str) -> None:
        """Start reporting garbage; the reason is fixed for the whole run of it."""
        self._state = _SKIP
        self._skip_reason = _GAP if self._after_gap else reason
        self._skip_at_line_start = False  # the line at the front is the one found bad

    def _skip(self, events: list[Event]) -> None:
        """Report garbage up to the next line start that begins a plausible start line.

        The candidate must begin at a byte after an LF and must not begin with CR: blank lines
        inside garbage stay garbage. Without a candidate the whole buffer is reported now, so
        resync never accumulates garbage.
        """
        buf = self._buf
        pos = 0
        n = len(buf)
        # A candidate is only a *plausible* start line (_classify_line != _NO): a line still
        # arriving may turn out not to be SIP, and then _line() sends it back here. That keeps
        # resync from holding garbage while it waits to be sure.
        if self._skip_at_line_start:
            # The last chunk ended with the LF of a garbage line: this chunk starts a line.
            self._skip_at_line_start = False
            if buf[0] != _CR and self._classify_line(0) != _NO:
                self._state = _IDLE
                return
        while True:
            lf = buf.find(b"\n", pos)
            if lf < 0:
                cut, resume = n, _SKIP  # still mid-line
                break
            start = lf + 1
            if start == n:
                cut, resume = n, _SKIP
                self._skip_at_line_start = True  # decide on the next chunk's first byte
                break
            if buf[start] != _CR and self._classify_line(start) != _NO:
                cut, resume = start, _IDLE
                break
            pos = start
        events.append(Unframeable(bytes(buf[:cut]), self._skip_reason))
        del buf[:cut]
        self._state = resume

    def _classify_line(self, start: int, crlf_from: int = 0, *, check_prefix: bool = True) -> int:
        """Is the line at ``start`` a start line (_YES), never one (_NO), or unknown yet (_MAYBE)?

        Only the first max_header_size bytes of the message are looked at, so the answer does
        not depend on how much of an over-long line happens to be buffered. ``crlf_from`` is
        where an earlier search for the line's CRLF left off.
        """
        buf = self._buf
        limit = start + self._max_header
        crlf = buf.find(b"\r\n", max(start, crlf_from), limit)
        if crlf >= 0:
            # A whole line: the full grammar answers for good.
            return _YES if _START_LINE.fullmatch(buf, start, crlf) else _NO
        if not check_prefix:
            return _MAYBE
        # An incomplete line: _START_LINE_PREFIX accepts every prefix of a valid start line, so
        # _NO here is final (no continuation can make it valid) and _MAYBE means "wait".
        end = min(len(buf), limit)
        if end > start and buf[end - 1] == _CR:
            end -= 1  # may be the first half of the line's CRLF
        if end == start:
            return _MAYBE
        return _MAYBE if _START_LINE_PREFIX.fullmatch(buf, start, end) else _NO

    def _give_up(self, events: list[Event], reason: str) -> None:
        """Stop observing: report everything buffered and hold nothing from now on."""
        # Giving up is what keeps memory bounded when a peer sends a header block or body that
        # never ends: the alternative, buffering until it does, is unbounded by construction.
        events.append(Unframeable(bytes(self._buf), reason))
        self._buf.clear()
        self._state = _GAVE_UP


def _looks_like_tls(buf: bytearray) -> bool:
    """A TLS record header (content type 20..23, version 3.x) where SIP was expected.

    Worth its own reason: it means a peer speaks TLS to a cleartext port, or a leg is mis-wired.
    """
    return len(buf) >= 2 and 0x14 <= buf[0] <= 0x17 and buf[1] == 0x03


_SIMPLE_VALUE = re.compile(rb"[ \t]*([0-9]{1,18})[ \t]*\r\n(?![ \t])")


def _simple_content_length(data: bytes, start: int, header_end: int) -> int | None:
    """Content-Length of the header block ``data[start:header_end]`` (``start`` at the start
    line's CRLF) when it is the simple case: absent (0), or one header with a plain number on
    an unfolded line. None means "not simple": :func:`_content_length`, the reference,
    decides. Simple also means no byte that the reference's ``bytes.strip()`` or line split
    would treat differently from this search (VT, FF, a bare CR or LF), so a line start is
    exactly a position after CRLF; the scans are str-method speed (no per-line Python)."""
    block = data[start:header_end]
    # VT and FF are whitespace to bytes.strip() but not to this search: leave them to the reference.
    if b"\x0b" in block or b"\x0c" in block:
        return None
    # Every CR and every LF belongs to a CRLF: then "\r\n" + name finds exactly the lines
    # whose header name is name (a bare LF would start a line the reference splits differently).
    lines = block.count(b"\r\n")
    if block.count(b"\r") != lines or block.count(b"\n") != lines:
        return None
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
        return 0
    # The value must be a plain number ending its line, not folded onto the next one (the
    # negative lookahead): anything else, including an empty value, goes to the reference.
    value = _SIMPLE_VALUE.match(block, value_at)
    return int(value.group(1)) if value is not None else None


def _content_length(buf: bytearray, header_end: int) -> tuple[int, str | None]:
    """Content-Length from the header block; (0, None) when absent, (0, reason) when invalid.

    Header names are case-insensitive, ``l`` is the compact form, whitespace around the colon
    and folded continuation lines are tolerated. Repeated headers must agree.
    """
    lines = bytes(buf[:header_end]).split(b"\r\n")
    values: list[bytes] = []
    current: bytearray | None = None  # value of a Content-Length header being unfolded
    for line in lines[1:]:  # lines[0] is the start line
        # RFC 3261 7.3.1: a line starting with SP/HTAB continues the previous header's value.
        if line[:1] in (b" ", b"\t"):
            if current is not None:
                current += b" " + line.strip()
            continue
        if current is not None:
            values.append(bytes(current))
            current = None
        name, colon, value = line.partition(b":")
        if colon and name.strip().lower() in (b"content-length", b"l"):
            current = bytearray(value.strip())
    if current is not None:
        values.append(bytes(current))
    if not values:
        return 0, None
    numbers: set[int] = set()
    for value in values:
        value = value.strip()
        if not _DIGITS.fullmatch(value):
            return 0, f"invalid Content-Length: {value.decode('latin-1')!r}"
        digits = value.lstrip(b"0") or b"0"
        if len(digits) > 18:  # beyond any limit; avoids int() on a huge digit string
            return 0, f"Content-Length of {len(digits)} digits exceeds any max_message_size"
        numbers.add(int(digits))
    # Two Content-Length headers that disagree make the body boundary ambiguous: a classic
    # request-smuggling shape. Never guess; stop observing instead (the relay still relays).
    if len(numbers) > 1:
        shown = ", ".join(str(n) for n in sorted(numbers))
        return 0, f"invalid Content-Length: conflicting values {shown}"
    return numbers.pop(), None

"""SIP-over-stream framing (RFC 3261 section 18.3, RFC 5626 section 3.5.1), sans-IO.

Theory of operation
-------------------
One ``SipFramer`` watches one direction of a TCP/TLS connection. The relay has already
forwarded every chunk before it calls ``feed()``: the framer only *observes*, and nothing it
decides changes what goes on the wire. Bytes go in, events come out, and every input byte
comes back out in exactly one event's ``data`` (in order), whether it framed as SIP or not.

The buffer is a state machine over the bytes not yet reported. Its five states are described
where they are defined (``_IDLE`` to ``_SKIP``, below the event classes): each with what it
waits for and why it may wait. The start-line grammar is :mod:`siptap.sansio.sip_start_line`,
the Content-Length readings :mod:`siptap.sansio.content_length` (the fast path's with the
mirror's fields in one pass: :func:`siptap.sansio.sip_fields.read_head`).

The framer never gives up while the connection lives. What it cannot frame (garbage, a header
block over the limit, a bad or lying Content-Length) is reported as ``Unframeable`` as it is
read, never held, and skipped to the next start line, whose header block must then be made of
header lines (:mod:`siptap.sansio.sip_resync`).

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

from dataclasses import dataclass, field
from typing import Literal, TypeAlias

from siptap.sansio.content_length import content_length, simple_content_length
from siptap.sansio.sip_fields import SipFields, read_head
from siptap.sansio.sip_resync import (
    LINE_START_NEXT,
    MAYBE_EMBEDDED,
    embedded_start,
    header_block_is_plausible,
    next_line_start,
    swallowed_start,
)
from siptap.sansio.sip_start_line import MAYBE, NO, START_LINE, YES, classify_line, looks_like_tls

__all__ = [
    "Event",
    "KeepAlive",
    "SipFramer",
    "SipMessage",
    "Unframeable",
]


# The events are frozen: one event goes to several consumers (every mirrored leg's SipEvent,
# the log line, the SRTP scan), and none may change what another sees. Slotted: a busy trunk
# makes one per message, and slots make them smaller and quicker to build.
@dataclass(frozen=True, slots=True)
class SipMessage:
    """One complete message, exactly as it crossed the wire, so mirrors can replay it verbatim.

    ``header_end`` indexes the first body byte (just past CRLFCRLF). A message without a
    Content-Length header (mandatory on streams, RFC 3261 20.14) is framed with an empty body.
    """

    data: bytes
    # Consumers parse only data[:header_end] and look for SDP only past it, so neither has to
    # find CRLFCRLF again (sip_fields.read_fields, the a=crypto scan in mirror/observed.py).
    header_end: int
    body_length: int
    # The fast path's reading of the header block (sip_fields.read_head), read with the
    # Content-Length; None when the state machine framed it. Not part of the event's value.
    fields: SipFields | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class KeepAlive:
    """An RFC 5626 keepalive: reported rather than dropped so a mirror can show trunk liveness."""

    # The raw bytes (CRLFCRLF or CRLF), so that joining every event's data gives back the
    # stream exactly: test_every_input_byte_is_reported_exactly_once relies on it.
    data: bytes
    kind: Literal["ping", "pong"]


@dataclass(frozen=True, slots=True)
class Unframeable:
    """Bytes that could not be framed as SIP, kept raw so that nothing observed is lost."""

    data: bytes
    # One of the module's reason strings (below), or a message naming the limit hit or the
    # Content-Length refused; every later event of the same skipped region repeats it.
    reason: str


Event: TypeAlias = SipMessage | KeepAlive | Unframeable

# Byte values, compared against buf[i] (an int): indexing a bytearray yields ints, and an
# int compare is cheaper than slicing out a one-byte bytes object to compare with b"\r".
_CR = 0x0D
_LF = 0x0A

# The states. Plain strings: the code relies only on == between them (no ordering, no
# methods), and a string reads as itself in a debugger or a failing assertion.
#
# At a line start between messages. A CR here begins an RFC 5626 keepalive: CRLFCRLF is a
# ping, a CRLF not followed by CRLF is a pong. Anything else begins a start line. A lone CRLF
# cannot be reported until the next byte is known (a ping's second half may be in the next
# chunk): test_crlf_at_chunk_end_waits_for_the_next_byte pins that wait.
_IDLE = "idle"
# Reading the start line. While it is incomplete it is checked against what a request or
# status line may begin with (again each time it doubles), so TLS records or binary garbage
# are rejected at once instead of being buffered up to the header limit
# (test_tls_bytes_are_unframeable_at_once).
_LINE = "line"
# The start line is plausible; looking for the CRLFCRLF that ends the header block. The
# search resumes where it stopped (as h11's receive buffer does), so a header block fed one
# byte at a time costs linear, not quadratic, time (test_byte_at_a_time_yields_identical_events
# feeds the whole test call that way).
_HEADERS = "headers"
# The header block is parsed; waiting for Content-Length body bytes. Only Content-Length
# decides where the body ends: bodies may hold CRLFCRLF or any byte
# (test_body_containing_crlfcrlf_is_framed_by_content_length).
_BODY = "body"
# The bytes at the front are not SIP. They are reported as Unframeable and skipped to the
# next line start at which a plausible start line begins. Skipped bytes are reported as soon
# as they are known to be garbage, so resync holds no more than one candidate line
# (test_resync_holds_at_most_a_candidate_line). Blank lines inside garbage are garbage, not
# keepalives: otherwise where a chunk ended would decide whether they were a pong.
# A limit hit or a Content-Length refused lands here too, with its own reason; the message
# found after any skip must prove itself by its header block (_resyncing).
_SKIP = "skip"

# Unframeable reasons. Consumers match on them (mirror/observed.py counts "gap" bytes as part
# of a gap already reported, and reports a skipped region per run of one reason), so they are
# part of the interface: changing a string changes what the mirror counts and logs.
_NOT_SIP = "not a SIP start line"
_TLS = "TLS record where cleartext SIP was expected"
_TRUNCATED = "truncated at end of stream"
_GAP = "gap"


class SipFramer:
    """Frames one direction of a SIP stream into events; never holds more than one message."""

    def __init__(self, *, max_message_size: int = 65536, max_header_size: int = 16384) -> None:
        # A header block is at least CRLFCRLF: a smaller header limit could never frame
        # anything, and every chunk would be given up on; refuse it at construction instead.
        if max_message_size < 0 or max_header_size < 4:
            raise ValueError("max_message_size must be >= 0 and max_header_size >= 4")
        # Two limits, because they bound different things: the header block is searched
        # (CPU per byte), the body only counted. Together they bound the buffer.
        self._max_message = max_message_size
        self._max_header = max_header_size
        # The bytes not yet reported, always starting at the front of the current message (or
        # garbage run): a bytearray so that del buf[:n] after each event is cheap in CPython
        # (it moves the start pointer instead of copying the tail).
        self._buf = bytearray()
        # A new connection starts at a message boundary: nothing can precede its first line.
        self._state = _IDLE
        # The resumption points. Without them every feed would rescan the buffer from its
        # front, and a message trickled in byte by byte (a slow link, a hostile peer) would
        # cost the observer time quadratic in its size.
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
        # Since the last skip no message has been framed: the candidate's header block must be
        # made of header lines before it is believed (sip_resync.header_block_is_plausible).
        self._resyncing = False
        # feed() or gap() after close() raise: a caller that keeps feeding a closed direction
        # has lost track of the connection, and silently framing on would hide that bug.
        self._closed = False

    @property
    def buffered(self) -> int:
        """Bytes held back waiting for the rest of a message (for metrics and memory checks)."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[Event]:
        """Take the next chunk of the stream; return the events it completed, in stream order."""
        if self._closed:  # raised, not ignored: see _closed in __init__
            raise RuntimeError("SipFramer.feed() after close()")
        # An empty chunk completes nothing and changes no state (and skips the bytes() copy).
        if not data:
            return []
        events: list[Event] = []
        if self._state == _IDLE and not self._buf and not self._resyncing:
            # The common case on a relay: the chunk starts at a message boundary (TLS records
            # usually carry whole messages). Frame what is complete straight from the chunk and
            # buffer only a trailing partial message: copying every chunk into the bytearray
            # first would cost a copy per message for nothing.
            data = bytes(data)  # a memoryview or bytearray from the caller must not change under us
            taken = self._complete_messages(data, events)
            # A framed message is proof that resync after a gap succeeded: from here a
            # rejected line is a peer's garbage again, not the hole's debris.
            if taken:
                self._after_gap = False
            # Everything framed: the buffer stays empty and the state _IDLE for the next chunk.
            if taken == len(data):
                return events
            data = data[taken:]  # the undecided tail (partial message, keepalive, garbage)
        # Whatever the fast path could not decide goes through the state machine, which starts
        # from exactly the state the fast path left (_IDLE at a message boundary): the split
        # between the two paths never changes the events.
        self._buf += data
        self._process(events)
        return events

    def close(self) -> list[Event]:
        """End of stream: whatever is still buffered can never complete, so report it raw."""
        # Idempotent, unlike feed(): a second close() has nothing left to report, so callers
        # need not track whether a direction was closed already.
        if self._closed:
            return []
        self._closed = True
        events: list[Event] = []
        buf = self._buf
        if self._state == _BODY:
            # A body cut short by the end of the stream may still hold whole messages that its
            # Content-Length swallowed: frame them rather than report them as truncated.
            self._check_body(buf, len(buf), events)
            self._process(events)
        if self._state == _LINE and classify_line(buf, 0, self._max_header) == NO:
            # _line() re-checks a growing line only when it doubles, so the newest bytes may
            # never have been looked at: decide now, and resync as feed() would have.
            self._reject_line()
            self._process(events)
        # Only in _IDLE is a CRLF at the front an undecided keepalive; in any other state it
        # belongs to a line, a header block, a body or garbage.
        if self._state == _IDLE and buf[:2] == b"\r\n":
            # A trailing CRLF that was waiting to see whether it begins a ping. With the stream
            # over, no second CRLF can come: it was a pong (test_close_after_a_trailing_crlf_is_a_pong).
            events.append(KeepAlive(bytes(buf[:2]), "pong"))
            del buf[:2]
        # Anything left is a message (or garbage run) the peer never finished: the connection
        # closed mid-message. Reported rather than dropped: every byte comes back once.
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
        """
        if self._closed:
            raise RuntimeError("SipFramer.gap() after close()")
        events: list[Event] = []
        # The buffered bytes belong to a message whose rest is in the hole: framing them with
        # what comes after would splice two messages into one.
        if self._buf:
            # Reason "gap", not "truncated": the consumer counts these bytes as part of the
            # gap it already reported, not as a peer's fault.
            events.append(Unframeable(bytes(self._buf), _GAP))
            self._buf.clear()
        # _enter_skip reads _after_gap, so the reason of this first run is set explicitly; the
        # flag then carries "gap" over to every line rejected until a message is framed.
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
        # Locals, not attributes: this loop runs per message on every chunk the mirror sees,
        # and a local load is cheaper than self._max_header each time round.
        pos = 0
        n = len(data)
        max_header = self._max_header
        while pos < n:
            # data[pos] is an int: compared with the byte value, as the state machine does.
            if data[pos] == _CR:
                return pos  # a keepalive (or a stray CR): _idle() decides those byte by byte
            # Searches stop at the header limit, exactly where the state machine's do, so a
            # message the slow path would refuse is never accepted here.
            # The window is measured from this message's start, not the chunk's: the second
            # message of a chunk gets the same max_header bytes as the first.
            limit = pos + max_header
            crlf = data.find(b"\r\n", pos, limit)
            # No CRLF yet, or not a start line: the state machine decides (waiting for the line,
            # or resync). The fast path never reports garbage itself.
            if crlf < 0 or not START_LINE.fullmatch(data, pos, crlf):
                return pos
            # Searching from the start line's CRLF (not past it) finds a header block that is
            # empty: "INVITE ... SIP/2.0\r\n\r\n" ends at that very CRLF.
            end = data.find(b"\r\n\r\n", crlf, limit)
            # No header end in the window: incomplete, or over the limit. The state machine
            # tells those apart (wait, or skip) from the bytes it buffers.
            if end < 0:
                return pos
            header_end = end + 4
            # One pass reads Content-Length and the fields the mirror wants (read_head), carried
            # by the event; a block it declines goes to simple_content_length, started at the
            # start line's CRLF so that it finds each header as "\r\n" + name, the first included.
            head = read_head(data, pos, header_end)
            fields, length = head if head is not None else (None, simple_content_length(data, crlf, header_end))
            if length is None or length > self._max_message:
                # Not simple, or over the limit: the reference parser must decide, and report.
                return pos
            # total is an index into data, as header_end is (both absolute, not from pos).
            total = header_end + length
            if total > n:
                return pos  # body incomplete: buffer from the message start, not from here
            # A header block (lost blank line) or body (lying Content-Length) that may hold the
            # next message's start line: the state machine decides (sip_resync). One regex
            # search for the version not followed by "/" (Via's SIP/2.0/TLS) per message.
            if MAYBE_EMBEDDED.search(data, crlf, total) is not None:
                return pos
            # Slicing copies; a chunk that is exactly one message (the usual case) is reused.
            message = data if pos == 0 and total == n else data[pos:total]
            # header_end is relative to the message, not the chunk: consumers index
            # message.data with it.
            events.append(SipMessage(message, header_end - pos, length, fields))
            pos = total
        return pos

    # -- the state machine ------------------------------------------------------------------

    def _process(self, events: list[Event]) -> None:
        """Advance through the states until the buffer cannot decide anything more."""
        # One local for the loop: handlers mutate the same bytearray in place (del, +=),
        # never rebind self._buf, so this name stays valid throughout.
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
                if self._check_body(buf, total, events):
                    continue
                # bytes() copies: the event must not alias the buffer that del mutates next.
                events.append(SipMessage(bytes(buf[:total]), self._header_end, self._body_length))
                del buf[:total]
                self._state = _IDLE
                # A message framed: resync (after a gap or garbage) is over (see feed()).
                self._after_gap = self._resyncing = False
            else:  # _SKIP
                # _skip always makes progress (it reports bytes, or leaves _SKIP at a
                # candidate line), so it needs no "wait" answer.
                self._skip(events)

    def _check_body(self, buf: bytearray, end: int, events: list[Event]) -> bool:
        """_BODY: does the body so far (``buf[:end]``) hold the next message? Then its
        Content-Length lied: report the message up to there and resync at it."""
        if not self._body_length:
            return False
        at = embedded_start(buf, 0, self._header_end, end)
        if at >= 0:
            self._resync_at(at, f"Content-Length {self._body_length} runs into the next message", events)
        return at >= 0

    def _resync_at(self, at: int, reason: str, events: list[Event]) -> None:
        """A message's start line was found at ``at`` inside the message being read: report
        what precedes it and frame from there. Found by resync, the bytes before it belong to
        the region being skipped (its reason); the message found still has to pass the header
        check (_resyncing)."""
        events.append(Unframeable(bytes(self._buf[:at]), self._skip_reason if self._resyncing else reason))
        del self._buf[:at]
        self._state = _IDLE
        self._resyncing = True

    def _idle(self, events: list[Event]) -> bool:
        """Between messages: keepalives are decided only once the next byte is known."""
        buf = self._buf
        if buf[0] != _CR:
            # A new line starts: the resumption points of the previous message are stale and
            # would make the searches skip this line's bytes.
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
        # A CR not followed by LF cannot begin a keepalive nor a start line (the grammar has
        # no CR): it is garbage, and resync decides where SIP starts again.
        if buf[1] != _LF:
            self._enter_skip(_NOT_SIP)  # a bare CR between messages: not SIP, not a keepalive
            return True
        if n < 3:
            return False
        # CRLF CR: a ping if LF follows. Anything else after the second CR is a pong, and the
        # CR stays buffered for the next round, where it is a bare CR and so garbage
        # (test_pong_then_stray_cr_is_garbage).
        if buf[2] == _CR:
            if n < 4:
                return False
            if buf[3] == _LF:
                # One ping event for all four bytes: RFC 5626 3.5.1's double CRLF is a single
                # keepalive, to be answered by a single CRLF (the pong).
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
        # The line counts toward the header limit: it is part of the first max_header bytes
        # of the message, the same window the fast path and _headers() use.
        limit = self._max_header
        # First the cheap question: has the CRLF arrived? (A resumed find, no regex.)
        verdict = classify_line(buf, 0, limit, self._scan_from, check_prefix=False)
        if verdict == MAYBE:
            # Resume the CRLF search one byte back: the last buffered byte may be the CR.
            self._scan_from = max(0, min(len(buf), limit) - 1)
            # The prefix regex rescans the whole line, so run it only at the limit or when the
            # line has doubled since the last check: amortised linear in the line length.
            # At the limit the check runs whatever the doubling says, so that the choice between
            # resync (garbage) and give-up (too long) is the grammar's, not the schedule's:
            # the doubling points depend on how the bytes were split.
            if len(buf) >= limit or len(buf) >= 2 * self._checked:
                self._checked = len(buf)
                verdict = classify_line(buf, 0, limit, self._scan_from)
        if verdict == YES:
            self._state = _HEADERS
            # The start line's own CRLF may be the first half of CRLFCRLF.
            # (test_start_line_without_headers: a start line, then the empty line at once.)
            self._scan_from = 0
            return True
        # A refused line goes to resync, not to give-up: garbage before a message (a peer's
        # stray bytes, a TLS record on a cleartext leg) must not end observation for good.
        if verdict == NO:
            self._reject_line()
            return True
        # Still plausible and already max_header_size long: waiting longer would be unbounded,
        # and the same limit in _headers() covers the rest of the block. Checked at len(buf),
        # but classify_line looked only at the first max_header bytes, so the verdict is the
        # same however much was buffered
        # (test_long_start_line_byte_at_a_time_is_skipped_at_the_header_limit).
        if len(buf) >= limit:
            self._enter_skip(f"header block exceeds {limit} bytes without end")
            return True
        return False

    def _headers(self, events: list[Event]) -> bool:
        """Find the end of the header block within the first max_header_size bytes."""
        buf = self._buf
        # The search window ends at max_header_size from the message start, whatever is
        # buffered: a header end found at byte limit+1 of a larger chunk would be accepted on
        # one split and refused on another.
        end = buf.find(b"\r\n\r\n", self._scan_from, self._max_header)
        # Not found within the window: either wait for more bytes, or (the window is full)
        # never: a header block that long is refused on any split.
        if end < 0:
            if len(buf) >= self._max_header:
                # Skipped, not held: _skip reports the block as it streams past and frames
                # again at the next start line, so a 10 MB header costs one region, no memory.
                self._enter_skip(f"header block exceeds {self._max_header} bytes without end")
                return True
            # Resume 3 bytes back: up to "\r\n\r" of the terminator may already be buffered.
            self._scan_from = max(0, len(buf) - 3)
            return False
        header_end = end + 4
        # The block ran on into the next message (its blank line is missing): report it up to
        # that start line and frame from there (test_a_missing_blank_line_costs_one_message).
        at = swallowed_start(buf, 0, header_end)
        if at >= 0:
            self._resync_at(at, "header block runs into the next start line", events)
            return True
        # Found by resync: a start line alone is weak evidence (a body line being skipped may
        # look like one); a block of header lines is strong. Refused, the candidate and its
        # block go on being skipped, in the same region (the reason stays).
        if self._resyncing and not header_block_is_plausible(buf, 0, header_end):
            self._state = _SKIP
            self._skip_at_line_start = False
            return True
        # The reference reading, not the fast one: the state machine is what decides every
        # case the fast path declined, so it must accept folding, repeats and compact forms.
        length, error = content_length(buf, header_end)
        # An invalid Content-Length: the body boundary is unknown, so the header block is
        # reported and what follows is skipped up to the next start line, which must then pass
        # the header check (test_invalid_content_length_is_skipped_and_framing_resumes).
        if error is not None:
            self._skip_after_headers(events, header_end, error)
            return True
        # Decided now, before any body byte is buffered: waiting for an over-long body first
        # would hold it all. The length is not trusted to skip by either (it may be a lie):
        # resync finds the next message (test_oversized_content_length_is_skipped).
        if length > self._max_message:
            limit = self._max_message
            self._skip_after_headers(events, header_end, f"Content-Length {length} exceeds max_message_size {limit}")
            return True
        # Remembered for _BODY rather than re-read: the header block may be large, and the
        # body may arrive over many feeds.
        self._header_end = header_end
        self._body_length = length
        self._state = _BODY
        return True

    def _reject_line(self) -> None:
        """The line at the front is not a start line: skip it. A candidate found by resync
        that fails continues the region being skipped, under that region's reason."""
        if self._resyncing:
            self._state = _SKIP
            self._skip_at_line_start = False
        else:
            self._enter_skip(_TLS if looks_like_tls(self._buf) else _NOT_SIP)

    def _enter_skip(self, reason: str) -> None:
        """Start reporting garbage; the reason is fixed for the whole run of it."""
        self._state = _SKIP
        # After a gap every rejected line is still the hole's doing: reporting it as "not SIP"
        # would raise an alarm about the peer for bytes the mirror lost
        # (test_a_start_line_rejected_late_after_a_gap_is_still_the_gap).
        self._skip_reason = _GAP if self._after_gap else reason
        self._skip_at_line_start = False  # the line at the front is the one found bad

    def _skip(self, events: list[Event]) -> None:
        """Report garbage up to the next line start that begins a plausible start line.

        The candidate must begin at a byte after an LF and must not begin with CR: blank lines
        inside garbage stay garbage. Without a candidate the whole buffer is reported now, so
        resync never accumulates garbage. A candidate leaves _SKIP with _resyncing set: its
        header block decides whether it really is a message (_headers).
        """
        buf = self._buf
        # A candidate is only a *plausible* start line (classify_line != NO): a line still
        # arriving may turn out not to be SIP, and then _line() sends it back here. That keeps
        # resync from holding garbage while it waits to be sure.
        if self._skip_at_line_start:
            # The last chunk ended with the LF of a garbage line: this chunk starts a line.
            self._skip_at_line_start = False
            if buf[0] != _CR and classify_line(buf, 0, self._max_header) != NO:
                self._state = _IDLE
                self._resyncing = True
                return
        start = next_line_start(buf, 0, self._max_header)
        if start >= 0:
            cut, self._state, self._resyncing = start, _IDLE, True
        else:
            # No candidate: the rest is garbage whatever follows, reported now rather than
            # held. After a final LF the next chunk's first byte begins a line: decide then.
            cut = len(buf)
            self._skip_at_line_start = start == LINE_START_NEXT
        # One event per call, however many garbage lines it covers: the consumer counts and
        # reports regions, and an event per line would multiply its work on a binary stream.
        events.append(Unframeable(bytes(buf[:cut]), self._skip_reason))
        del buf[:cut]

    def _skip_after_headers(self, events: list[Event], header_end: int, reason: str) -> None:
        """The Content-Length cannot be trusted: report the header block, skip the body."""
        events.append(Unframeable(bytes(self._buf[:header_end]), reason))
        del self._buf[:header_end]
        self._enter_skip(reason)
        # The byte after CRLFCRLF begins a line: with an empty body it is the next message.
        self._skip_at_line_start = True

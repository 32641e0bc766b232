"""One proxied connection, end to end: accept-side handshake, dial, relay, close.

Theory of operation. The accepted leg's TLS handshake runs first (with a timeout); only an
authenticated peer makes siptap dial the other side (upstreams in order). Then two pumps run
in one nursery, one per direction. A pump's whole job per chunk is: receive, forward, then
hand the chunk to the plan's :class:`~siptap.relay.feed.MirrorFeed` in O(1). The relay only
relays: framing, SIP fields, the ``sip`` and ``handshake_done`` log lines and every sink run
on the other side of the feed (the mirror process), from the raw records the session hands
over: one per chunk, and per leg an opened record and its handshake's facts, and at the end a
closed record (:mod:`siptap.sansio.chunk_records`).

Ending: a clean EOF (close_notify) on one side is passed on as close_notify to the other
(half-close), and the other direction gets ``half_close_timeout`` to finish. A broken side
(reset, EOF without close_notify, TLS error) cancels the nursery at once so the other side is
closed promptly. Both streams are then closed (close_notify best effort, bounded), and one
``connection_closed`` event says who closed, why, and how many bytes went through (the
mirror's ``connection_observed`` says how many SIP messages they held).

A forward route accepts the customer and dials the core; a reverse route accepts the core
and dials the customer. The code is the same; only the leg names and contexts differ.

Two layers. :func:`relay_session` is the session's logic after the accepted handshake: it
takes the handshaken accepted stream and a :data:`Dial` function, and knows nothing of
sockets or OpenSSL, so tests run it over trio's memory streams. :func:`run_session` is the
production wiring around it: it wraps the accepted TCP socket in an
:class:`~siptap.tls.stream.OpenSSLStream`, runs the handshake, and dials the upstreams over
TCP and TLS (:func:`dial_upstream`).
"""

from __future__ import annotations

import functools
import itertools
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import trio

from siptap.config import Upstream
from siptap.errors import HandshakeFailed, UpstreamError
from siptap.log import LogWriter
from siptap.relay.feed import MirrorFeed
from siptap.relay.heap import HEAP
from siptap.relay.plan import SessionPlan
from siptap.relay.upstream import connect_first
from siptap.sansio import chunk_records
from siptap.sansio.chunk_records import FROM_ACCEPTED, FROM_DIALLED, LegAddresses
from siptap.sansio.handshake import HandshakeFacts, RawHandshake
from siptap.tls.stream import OpenSSLStream

# (host, port) only: an IPv6 sockaddr's flow info and scope id are dropped (_addr), as
# neither the log lines nor the records carry them.
Address = tuple[str, int]

# The most one receive may return. A TLS record holds at most 16 KiB of plaintext, so a
# burst of several records is taken, forwarded and handed over as one chunk: one
# send_all and one feed record instead of four.
_RECEIVE_SIZE = 65536
# A stalled close_notify must not hold a connection's socket (and its task) for longer.
_CLOSE_TIMEOUT = 5
# Random per process, not the pid: pids repeat across hosts, restarts and containers
# (pid 1), while logs of several workers and hosts are merged (README "Scaling").
# Six hex digits make a collision among a handful of processes unlikely, not impossible.
_PROCESS_TAG = secrets.token_hex(3)
# Per process, from 1: the number a connection's records carry (an int packs into the
# 32-byte chunk header; the string id travels once, in its opened record).
_counter = itertools.count(1)


def new_connection_id() -> tuple[int, str]:
    """The connection's number in this process (what its records carry) and its id, unique
    across siptap instances feeding one collector: a per-process tag plus that number."""
    # next() on a count is atomic under the GIL, and every session runs on the one trio
    # thread anyway: no two connections get the same number.
    number = next(_counter)
    return number, f"{_PROCESS_TAG}-{number}"


class HandshakenStream(Protocol):
    """One leg after its TLS handshake, as the session uses it: a trio stream that can
    half-close, says whether its peer ended without close_notify, and holds the handshake's
    record until the session has logged and published it. :class:`OpenSSLStream` in
    production; the relay's tests wrap a memory stream."""

    # A Protocol, not OpenSSLStream itself: the session's logic runs over memory streams in
    # tests/relay/test_session_memory.py, with no sockets and no OpenSSL.
    # The handshake's record, raw (OpenSSLStream: the peer chain as DER, summarised by the
    # mirror) or already summarised (the memory tests' streams): both say what to hand over.
    @property
    def handshake(self) -> RawHandshake | HandshakeFacts | None: ...

    @property
    def eof_without_close_notify(self) -> bool: ...

    # Called once the facts are handed over: a connection may live for days, and its
    # handshake record (certificate summaries, key lines) must not live with it.
    def discard_facts(self) -> None: ...
    async def receive_some(self, max_bytes: int | None = None) -> bytes: ...
    async def send_all(self, data: bytes | bytearray | memoryview) -> None: ...
    # TLS's half-close: close_notify goes out, and the peer may still send to us.
    async def send_eof(self) -> None: ...
    async def aclose(self) -> None: ...


@dataclass(frozen=True, slots=True)
class DialledLeg:
    """The other leg, connected and handshaken: what a :data:`Dial` function returns."""

    stream: HandshakenStream
    upstream: Upstream  # the one that answered
    # Both ends of the dialled TCP connection: the opened record carries them, for the
    # pcap sink's addresses and HEP's source and destination.
    local: Address
    remote: Address


# Connect to the first upstream that answers and complete its handshake; raise UpstreamError
# (every attempt, and why it failed) when none does.
# A function, not a list of upstreams: the memory tests hand in a dial that returns a
# memory stream, or raises UpstreamError to test the no_upstream path.
Dial = Callable[[], Awaitable[DialledLeg]]


# Mutable and shared by both pumps and the watchdog: whoever sees the end first records
# it, and the connection_closed line reports that first cause.
@dataclass(slots=True)
class _Ending:
    closed_by: str | None = None
    reason: str | None = None

    def set(self, closed_by: str, reason: str) -> None:
        # The first cause wins: once a pump saw why the connection ends, the cancellations
        # and errors that ending causes on the other side are consequences, not reasons.
        if self.closed_by is None:
            self.closed_by, self.reason = closed_by, reason


async def run_session(tcp: trio.SocketStream, plan: SessionPlan, log: LogWriter) -> None:
    """Serve one accepted TCP connection. Never raises for peer behaviour; logs instead."""
    # Counted for the heap trimmer: the end of a flood gives its free heap back (relay/heap.py).
    HEAP.opened()
    try:
        await _serve(tcp, plan, log)
    finally:
        HEAP.closed()


async def _serve(tcp: trio.SocketStream, plan: SessionPlan, log: LogWriter) -> None:
    # Numbered before the handshake: a failed handshake's log lines carry the id too, so
    # they can be told apart from other attempts by the same peer.
    conn, conn_id = new_connection_id()
    # monotonic: the duration in connection_closed must not jump with a clock step (NTP).
    started = time.monotonic()
    # Read now, once: every line of this connection names the peer, even those written
    # after it is gone (peer_address copes with a reset before this point).
    peer = peer_address(tcp.socket)
    # Which of the route's listen addresses the peer reached: a route may listen on several.
    local = _addr(tcp.socket.getsockname())
    # Bound once: every line of this connection carries its id, route and peer without each
    # call naming them.
    log = log.bind(conn=conn_id, route=plan.route, peer=f"{peer[0]}:{peer[1]}")
    # Logged before the handshake: a client that connects and stalls still leaves a line,
    # and the handshake_failed line that follows refers back to it by conn id.
    log.info("connection_accepted", leg=plan.accepted_leg, local=f"{local[0]}:{local[1]}")
    # The server context chosen at accept time (the plan's): a reload between accept and
    # handshake does not change what this client is offered.
    accepted = OpenSSLStream(tcp, plan.server_context, server_side=True, leg=plan.accepted_leg)

    try:
        # The facts stay on the stream (relay_session logs them, then discards them there):
        # no reference here outlives the handshake's logging.
        # Bounded: a client that connects and says nothing (a port scanner, a stuck E-SBC)
        # must not hold a socket and a task for ever; it ends as reason "timeout".
        await accepted.complete_handshake(plan.limits.handshake_timeout)
        if plan.router is not None:  # who the customer is picks the route (relay/routing.py)
            if (chosen := plan.router(accepted.facts, log)) is None:  # logged and counted by the router
                return await _close_early(accepted, log, started, "refused: no_route")
            plan, log = chosen, log.bind(route=chosen.route)
        # The chosen route's OCSP policy, before anything is dialled: a responder may take a round
        # trip (bounded by ocsp_timeout), and a refusal is a handshake failure like any other.
        if plan.accepted_ocsp is not None:
            await plan.accepted_ocsp.enforce(accepted, log)
    # tls/ maps OpenSSL's failure to a stable reason (README "Failed handshakes"): that
    # reason, not OpenSSL's text, is the metric label and the log field operators alert on.
    except HandshakeFailed as exc:
        # Failed handshakes are counted here by reason (the README's table); successes in
        # relay_session, which every handshaken connection reaches.
        if plan.metrics is not None:
            plan.metrics.handshake(plan.route, plan.accepted_leg, exc.reason)
        # The client's offer (versions, suites) is what an operator needs for ecdhe_only_client
        # and its kin: it says what to change on the E-SBC or in key_exchange.
        hello = accepted.observer.client_hello if accepted.observer is not None else None
        log.warning("handshake_failed", leg=plan.accepted_leg, reason=exc.reason, detail=exc.detail,
                    client_offer=hello.summary() if hello else None)
        # No records reach the feed for a connection that never got past its handshake: the
        # mirror has nothing to frame, and the log line above is the whole story.
        await _close_early(accepted, log, started, f"handshake_failed: {exc.reason}")
        return
    except (trio.ClosedResourceError, trio.Cancelled):
        # Shutdown (the drain deadline, a second SIGTERM) while the peer was still shaking
        # hands: close its socket and say so, then let the cancellation go on.
        await _close_early(accepted, log, started, "shutdown during handshake")
        # Re-raised, not swallowed: a cancellation works only if Cancelled reaches the scope
        # that was cancelled (the app's drain); a ClosedResourceError is the same shutdown.
        raise
    # A partial, not a closure over locals: relay_session calls it once, later, and it
    # binds only the plan and the bound log.
    try:
        await relay_session(accepted, functools.partial(dial_upstream, plan, log), plan, log,
                            conn=conn, conn_id=conn_id, peer=peer, local=local, started=started)
    finally:
        # relay_session forgets the connection after its closed record on every path it
        # returns by; this covers the one it does not (a bug raising out of it): the feed
        # (a tap's owed marker and replay records) must not keep it for the worker's life.
        plan.feed.forget(conn)


async def dial_upstream(plan: SessionPlan, log: LogWriter) -> DialledLeg:
    """Production :data:`Dial`: TCP then TLS to each of the plan's upstreams in order."""
    # Upstreams in config order, first answer wins (failover order, README [[route.core]]);
    # each failed attempt is counted through on_failure as it happens.
    stream, upstream = await connect_first(
        plan.upstreams, plan.client_context, plan.client_settings,
        connect_timeout=plan.limits.connect_timeout, handshake_timeout=plan.limits.handshake_timeout,
        log=log, leg=plan.dialled_leg, on_failure=_failure_counter(plan), ocsp=plan.dialled_ocsp,
    )
    # The addresses of the TCP connection under the TLS: the opened record and the pcap
    # sink need the real 4-tuple of the dialled leg.
    transport = stream.transport_stream
    assert isinstance(transport, trio.SocketStream)  # connect_first dials TCP
    sock = transport.socket
    return DialledLeg(stream, upstream, local=_addr(sock.getsockname()), remote=_addr(sock.getpeername()))


async def relay_session(accepted: HandshakenStream, dial: Dial, plan: SessionPlan, log: LogWriter, *,
                        conn: int, conn_id: str, peer: Address, local: Address, started: float) -> None:
    """One connection after its accepted handshake: hand its leg and handshake to the feed,
    dial the other leg, relay until either side ends, then hand over and log how it ended.

    ``log`` is already bound to the connection (``conn``, ``route``, ``peer``); ``conn`` is
    the connection's number in its records; ``started`` is the :func:`time.monotonic` of the
    accept. Never raises for peer behaviour."""
    # A local: read several times below, and the plan is frozen anyway.
    feed = plan.feed
    # run_session's successful handshake left the facts on the stream; the memory tests'
    # streams carry facts of their own.
    assert accepted.handshake is not None
    if plan.metrics is not None:
        # Counted here rather than in run_session: every connection whose accepted handshake
        # succeeded passes here, in production and in the memory tests alike.
        plan.metrics.handshake(plan.route, plan.accepted_leg)
    # Handed over before the dial: the mirror learns of the accepted leg (and its key
    # material, for the key log) even when no upstream answers, and its records come
    # before any chunk (test_the_relay_hands_over_raw_records_in_order).
    _hand_over_leg(feed, conn, conn_id, plan, LegAddresses(plan.accepted_leg, peer, local), accepted.handshake)

    try:
        # The accepted peer waits meanwhile: what it sends stays unread (in the socket, or in
        # the TLS stream's buffer), so nothing it sends before the other leg is up is lost.
        leg = await dial()
    except UpstreamError as exc:
        # An error, not a warning: no upstream means the customer's calls fail, and the line
        # lists every address tried. tests/relay/test_session_memory.py,
        # test_core_unreachable_is_logged_and_closes_the_customer, pins it.
        log.error("no_upstream", leg=plan.dialled_leg, detail=str(exc), attempts=[a for a, _ in exc.attempts])
        await _close_early(accepted, log, started, "no_upstream")
        # After the close, so the mirror's record of the connection ends as the log's does; no
        # bytes were relayed, the counts are zero.
        _hand_over_close(feed, conn, started, 0, 0, "siptap", "no_upstream")
        return
    # A shutdown while dialling: the accepted side is closed (shielded, in _close_early),
    # the mirror gets its closed record, and the Cancelled goes on up.
    except trio.Cancelled:
        reason = f"shutdown while dialling the {plan.dialled_leg}"
        await _close_early(accepted, log, started, reason)
        _hand_over_close(feed, conn, started, 0, 0, "siptap", reason)
        raise
    dialled = leg.stream
    assert dialled.handshake is not None
    if plan.metrics is not None:
        # The dialled leg's success: its failures were counted per attempt by connect_first
        # (through _failure_counter), so a failover shows as failures plus one success.
        plan.metrics.handshake(plan.route, plan.dialled_leg)
    # Second leg, same order: opened, then handshake. The upstream that answered goes with
    # it, so the mirror can tell a failover from the first choice.
    _hand_over_leg(feed, conn, conn_id, plan, LegAddresses(plan.dialled_leg, leg.local, leg.remote), dialled.handshake,
                   upstream=str(leg.upstream.address))
    # Handed over: nothing here needs the facts again, and the connection may idle for hours
    # (a few KiB per leg: peer chain summaries, key-log lines, the client's offer).
    del leg
    accepted.discard_facts()
    dialled.discard_facts()

    relay = _Relay(plan, conn, accepted, dialled)
    # Returns once both pumps and the watchdog are done and both streams are closed; never
    # raises for the peers' behaviour (a Cancelled from outside still goes on up).
    await relay.run()
    if plan.metrics is not None:
        # Multiprocess mode: this connection's bytes and latencies reach the shared files now,
        # before its connection_closed line, not only at the next once-a-second copy.
        plan.metrics.sync_relay()
    # Measured once, after both streams are closed: the close belongs to the connection's
    # lifetime as the log reports it.
    duration = time.monotonic() - started
    # The record needs strings; the log line below keeps the raw values, where None shows
    # that no cause was recorded.
    closed_by, reason = relay.ending.closed_by or "siptap", relay.ending.reason or "closed"
    # The closed record goes before forget() (inside): the feed must still know what the
    # connection owes (a tap's gap marker goes first) when its last record is sent.
    _hand_over_close(feed, conn, started, relay.bytes_up, relay.bytes_down, closed_by, reason)
    log.info(
        "connection_closed", closed_by=relay.ending.closed_by, reason=relay.ending.reason,
        duration=round(duration, 3),
        # Named by leg, not "up"/"down": the same code serves forward and reverse routes, and
        # "customer_to_core" reads the same whichever side accepted.
        **{f"bytes_{plan.accepted_leg}_to_{plan.dialled_leg}": relay.bytes_up,
           f"bytes_{plan.dialled_leg}_to_{plan.accepted_leg}": relay.bytes_down},
    )


def _hand_over_leg(feed: MirrorFeed, conn: int, conn_id: str, plan: SessionPlan, leg: LegAddresses,
                   handshake: RawHandshake | HandshakeFacts, upstream: str | None = None) -> None:
    """A leg is up: its addresses, then its handshake's facts, raw: the peer chain as DER (the
    mirror summarises and renders them; issue 16 item 6).

    Secrets always travel: the key log and HEP key packets are the product; whether the
    *log* shows them is the mirror's decision (``log.key_material``)."""
    # One timestamp for both records: they describe the same instant, the leg coming up.
    # Wall clock, as the mirror's outputs use.
    now = time.time()
    # Encoded here, once: the feed only moves bytes (one datagram for the tap), and
    # encoding is cheap next to the handshake that just ended.
    feed.record(conn, chunk_records.encode(chunk_records.ConnectionOpened(conn, now, conn_id, plan.route, (leg,))))
    data, chain = handshake.handover()
    # The dialled leg only: which upstream answered (a failover shows here).
    if upstream is not None:
        data["upstream"] = upstream
    feed.record(conn, chunk_records.encode(chunk_records.HandshakeDone(conn, now, leg.leg, data, chain)))


# The connection's last record, on every path that handed over an opened one: after a
# relay, after no_upstream, after a shutdown while dialling.
def _hand_over_close(feed: MirrorFeed, conn: int, started: float, bytes_up: int, bytes_down: int,
                     closed_by: str, reason: str) -> None:
    # The close's own time; the duration comes from the monotonic clock, like the log line's.
    now = time.time()
    feed.record(conn, chunk_records.encode(chunk_records.ConnectionClosed(
        conn, now, time.monotonic() - started, bytes_up, bytes_down, closed_by, reason)))
    # Right after the closed record: the feed may drop per-connection state (a tap's owed
    # marker), as no record of this connection follows.
    feed.forget(conn)


async def _close_early(accepted: HandshakenStream, log: LogWriter, started: float, reason: str) -> None:
    """Before the relay runs: close the accepted side (close_notify if it got that far), even
    when we are being cancelled (shutdown), and say so."""
    # Shielded: when the caller is being cancelled, an unshielded aclose would be cancelled at
    # its first checkpoint and could leave the socket open; bounded, so a peer that does not
    # read cannot hold the shutdown.
    with trio.CancelScope(shield=True), trio.move_on_after(_CLOSE_TIMEOUT):
        await accepted.aclose()
    # The same event name as a relayed connection's end: one query finds every end, early
    # or late, with its reason.
    log.info("connection_closed", closed_by="siptap", reason=reason, duration=round(time.monotonic() - started, 3))


def _failure_counter(plan: SessionPlan) -> Callable[[str], None] | None:
    # None without metrics: connect_first then skips the callback, and no closure is built.
    metrics = plan.metrics
    if metrics is None:
        return None

    def failed(reason: str) -> None:
        # Every failed attempt is a failover (the next upstream is tried) and a failed
        # handshake-or-connect of the dialled leg, with connect_first's reason.
        metrics.child(metrics.failovers, plan.route, plan.dialled_leg).inc()
        metrics.handshake(plan.route, plan.dialled_leg, reason)

    return failed


class _Relay:
    """The two pumps of one connection and how it ended; counts what crossed each way."""

    # Slotted, no per-connection closures or dicts: one of these lives as long as the connection.
    __slots__ = (
        "_tallies",
        "accepted",
        "bytes_down",
        "bytes_up",
        "conn",
        "dialled",
        "ending",
        "last_activity",
        "plan",
        "scope",
    )
    scope: trio.CancelScope  # the pumps' nursery: cancelling it ends the connection

    def __init__(self, plan: SessionPlan, conn: int, accepted: HandshakenStream, dialled: HandshakenStream) -> None:
        self.plan, self.conn = plan, conn
        self.accepted, self.dialled = accepted, dialled
        self.ending = _Ending()
        # Byte counts double as stream offsets: the next chunk's offset in its direction is the
        # count so far, which is what lets the mirror detect a hole (a jump in offsets).
        self.bytes_up = 0  # accepted -> dialled
        self.bytes_down = 0
        # trio's clock, not time.monotonic(): the idle watchdog sleeps on trio's clock, and
        # tests run it on an autojump clock (test_idle_timeout_closes_both_legs). A connection
        # that never sends is idle from the moment it was relayed.
        self.last_activity = trio.current_time()
        # Directions named as the operator reads them ("customer->core"), per route; the same
        # strings label both the bytes counter and the latency histogram.
        a, d = plan.accepted_leg, plan.dialled_leg
        m = plan.metrics
        # Indexed by ``up`` (False, True). Looked up once per connection: per chunk the pump
        # adds to plain numbers (metrics.RelayCounts), no label lookup and no lock.
        self._tallies = tuple(m.relay_counts.for_direction(plan.route, direction) if m else None
                              for direction in (f"{d}->{a}", f"{a}->{d}"))

    async def run(self) -> None:
        try:
            async with trio.open_nursery() as nursery:
                # Stored before any pump runs: _broken, the half-close deadline and the watchdog all
                # act on this one scope, which covers both directions.
                self.scope = nursery.cancel_scope
                nursery.start_soon(self._pump, self.accepted, self.dialled, True)
                if self.plan.limits.idle_timeout > 0:
                    # Only with an idle timeout: trunks are idle for hours by default (idle_timeout = 0),
                    # and a watchdog task per connection would be memory for nothing.
                    nursery.start_soon(self._idle_watchdog)
                # The other direction runs in this task, inside the nursery's cancel scope like
                # its children: a task (about 1 KiB) fewer per idle connection.
                await self._pump(self.dialled, self.accepted, False)
        finally:
            # The streams are closed even when this task is being cancelled (the app's drain
            # deadline, a second SIGTERM): shielded, or the first checkpoint of aclose would
            # re-raise the cancellation and leave both sockets to the garbage collector. Each
            # leg on its own bound: a close that stalls or fails on one leg must not leave the
            # other leg's socket open.
            with trio.CancelScope(shield=True):
                # Accepted leg first: the customer (forward route) learns of the end first; the order
                # matters little, each close being bounded on its own.
                for stream in (self.accepted, self.dialled):
                    with trio.move_on_after(_CLOSE_TIMEOUT):
                        await stream.aclose()
            # Reached with no ending recorded only when the pumps were cancelled from outside
            # the connection (the app's drain deadline or abort): that is a shutdown.
            self.ending.set("siptap", "shutdown")

    async def _pump(self, src: HandshakenStream, dst: HandshakenStream, up: bool) -> None:
        # Leg names for the ending's reasons: "customer closed...", whichever way the route runs.
        src_leg = self.plan.accepted_leg if up else self.plan.dialled_leg
        dst_leg = self.plan.dialled_leg if up else self.plan.accepted_leg
        # Indexed by a bool (False 0, True 1): no branch per chunk to pick this direction's metrics.
        tally = self._tallies[up]
        # Bound once: the loop below runs per chunk for the life of a trunk.
        hand_over, conn, perf_counter = self.plan.feed.chunk, self.conn, time.perf_counter
        # last_activity is read by the idle watchdog alone: without an idle timeout (the
        # default) the pump reads no trio clock per chunk.
        track_idle = self.plan.limits.idle_timeout > 0
        direction = FROM_ACCEPTED if up else FROM_DIALLED
        # One pass per chunk. Nothing here waits for anything but the two peers: the hand-over
        # is synchronous and never blocks (relay/feed.py's contract).
        while True:
            try:
                # The pump's only wait for its peer. Cancelled here (the other side broke, idle,
                # shutdown), it loses no bytes: OpenSSLStream checks for cancellation before taking
                # plaintext out of OpenSSL.
                data = await src.receive_some(_RECEIVE_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                # A reset or a TLS error on the receiving side: the peer it came from broke.
                return self._broken(src_leg, exc)
            # b"": the peer ended its sending side, cleanly (close_notify) or not (a bare TCP FIN);
            # which, is decided below.
            if not data:
                break
            # perf_counter for the latency histogram: it measures the forward (send_all) alone,
            # and needs resolution, not wall time.
            arrived = perf_counter()
            # Forward first, hand over after: observation never delays a chunk or decides
            # what is relayed.
            try:
                await dst.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                # The other leg could not take the bytes: that peer broke, and these bytes are lost with
                # the connection; the relay never buffers beyond one chunk.
                return self._broken(dst_leg, exc)
            if tally is not None:
                # After the send: the metric counts bytes that were relayed, not merely received.
                tally.relayed(len(data), perf_counter() - arrived)
            if track_idle:
                # A timestamp, not a timer reset: the watchdog reads it when its deadline comes.
                self.last_activity = trio.current_time()
            # The chunk's offset in its direction's stream lets the mirror see any hole.
            if up:
                hand_over(conn, direction, self.bytes_up, data)
                # Advanced after the hand-over: the offset handed over is the first byte of this chunk.
                self.bytes_up += len(data)
            else:
                # Same for the other direction; an if rather than a shared index so the counters stay
                # plain slotted ints that connection_closed reads by name.
                hand_over(conn, direction, self.bytes_down, data)
                self.bytes_down += len(data)
        # tests/relay/test_session_memory.py, test_tcp_close_without_close_notify_closes_both_legs_at_once.
        if src.eof_without_close_notify:
            # A TCP FIN without close_notify may be a truncation (or a crashed peer): passing
            # it on as close_notify would vouch for a clean end that did not happen, so both
            # legs are torn down instead of half-closed.
            self.ending.set(src_leg, f"{src_leg} closed TCP without TLS close_notify")
            self.scope.cancel()
            return
        # Recorded now, though the other direction may still run: the clean close by this
        # side is why the connection ends, whatever happens to the other side afterwards.
        self.ending.set(src_leg, f"{src_leg} sent close_notify")
        try:
            # close_notify to the other peer: it may still answer (a final response, a BYE's
            # 200 OK), so its direction keeps running. tests/relay/test_session_memory.py,
            # test_half_close_lets_the_other_direction_finish.
            await dst.send_eof()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            # The other peer is gone too: nothing left to half-close, tear down.
            self.scope.cancel()
            return
        # Half-closed: give the other direction a bounded time to finish, then close. min():
        # when both sides half-close, the second must not extend the first one's deadline.
        # tests/relay/test_session_memory.py, test_half_close_gives_the_other_direction_a_bounded_time.
        self.scope.deadline = min(self.scope.deadline, trio.current_time() + self.plan.limits.half_close_timeout)

    # The first broken side wins the ending (see _Ending); cancelling the scope stops the
    # other pump at its next checkpoint, so the surviving peer's socket is closed at once
    # rather than when it next sends.
    def _broken(self, leg: str, exc: BaseException) -> None:
        self.ending.set(leg, f"{leg} connection broken: {_cause(exc)}")
        self.scope.cancel()

    async def _idle_watchdog(self) -> None:
        # Read once: the plan is frozen, and run() starts this task only when idle > 0.
        idle = self.plan.limits.idle_timeout
        while True:
            # Sleep until the connection would be idle long enough if nothing moved since the
            # last look; traffic in the meantime moved last_activity on, so look again.
            await trio.sleep_until(self.last_activity + idle)
            if trio.current_time() - self.last_activity >= idle:
                # siptap closed it, not either peer: the reason names the limit that applied.
                # tests/relay/test_session_memory.py, test_idle_timeout_closes_both_legs.
                self.ending.set("siptap", f"idle for {idle:g} s")
                self.scope.cancel()
                # Once: the ending is set and the scope cancelled; this task ends with the others.
                return


def _cause(exc: BaseException) -> str:
    # The stream raises trio's BrokenResourceError from the OSError or SSL error it met:
    # the underlying cause (ECONNRESET, the alert) is what the operator needs, added
    # unless the message already holds it.
    cause = exc.__cause__
    return f"{exc} ({cause})" if cause is not None and str(cause) not in str(exc) else str(exc)


def peer_address(sock: trio.socket.SocketType) -> Address:
    """The peer's address, or ("unknown", 0) for a connection reset before we got to it
    (Linux still hands it to accept(), and getpeername() then fails with ENOTCONN)."""
    try:
        return _addr(sock.getpeername())
    except OSError:
        # A placeholder the log and the records accept: the connection's handshake then fails
        # at once (the socket is dead), with this as its peer.
        return ("unknown", 0)


def _addr(sockaddr: tuple[Any, ...]) -> Address:
    # sockaddr[:2] for both families: IPv4 (host, port), IPv6 (host, port, flowinfo,
    # scope_id). str/int: the record and log fields are typed, whatever the family.
    return (str(sockaddr[0]), int(sockaddr[1]))

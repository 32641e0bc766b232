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
from dataclasses import dataclass, field
from typing import Any, Protocol

import trio
from OpenSSL import SSL

from siptap.config import ClientTlsSettings, Limits, LogSettings, Upstream
from siptap.errors import HandshakeFailed, UpstreamError
from siptap.log import LogWriter
from siptap.metrics import Metrics
from siptap.relay.feed import MirrorFeed, NullFeed
from siptap.relay.upstream import connect_first
from siptap.sansio import chunk_records
from siptap.sansio.chunk_records import FROM_ACCEPTED, FROM_DIALLED, LegAddresses
from siptap.sansio.handshake import HandshakeFacts
from siptap.tls.stream import OpenSSLStream

Address = tuple[str, int]

_RECEIVE_SIZE = 65536
# A stalled close_notify must not hold a connection's socket (and its task) for longer.
_CLOSE_TIMEOUT = 5
_PROCESS_TAG = secrets.token_hex(3)
_counter = itertools.count(1)


def new_connection_id() -> tuple[int, str]:
    """The connection's number in this process (what its records carry) and its id, unique
    across siptap instances feeding one collector: a per-process tag plus that number."""
    number = next(_counter)
    return number, f"{_PROCESS_TAG}-{number}"


@dataclass(frozen=True, slots=True)
class SessionPlan:
    """Everything a session needs, captured at accept time (reload swaps the plan, not this)."""

    route: str
    accepted_leg: str  # "customer" (forward route) or "core" (reverse route)
    dialled_leg: str
    server_context: SSL.Context
    client_context: SSL.Context
    client_settings: ClientTlsSettings
    upstreams: tuple[Upstream, ...]
    limits: Limits
    log_settings: LogSettings
    feed: MirrorFeed = field(default_factory=NullFeed)
    metrics: Metrics | None = None


class HandshakenStream(Protocol):
    """One leg after its TLS handshake, as the session uses it: a trio stream that can
    half-close, says whether its peer ended without close_notify, and holds the handshake's
    record until the session has logged and published it. :class:`OpenSSLStream` in
    production; the relay's tests wrap a memory stream."""

    facts: HandshakeFacts | None

    @property
    def eof_without_close_notify(self) -> bool: ...

    def discard_facts(self) -> None: ...
    async def receive_some(self, max_bytes: int | None = None) -> bytes: ...
    async def send_all(self, data: bytes | bytearray | memoryview) -> None: ...
    async def send_eof(self) -> None: ...
    async def aclose(self) -> None: ...


@dataclass(frozen=True, slots=True)
class DialledLeg:
    """The other leg, connected and handshaken: what a :data:`Dial` function returns."""

    stream: HandshakenStream
    upstream: Upstream  # the one that answered
    local: Address
    remote: Address


# Connect to the first upstream that answers and complete its handshake; raise UpstreamError
# (every attempt, and why it failed) when none does.
Dial = Callable[[], Awaitable[DialledLeg]]


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
    conn, conn_id = new_connection_id()
    started = time.monotonic()
    peer = peer_address(tcp.socket)
    local = _addr(tcp.socket.getsockname())
    log = log.bind(conn=conn_id, route=plan.route, peer=f"{peer[0]}:{peer[1]}")
    log.info("connection_accepted", leg=plan.accepted_leg, local=f"{local[0]}:{local[1]}")
    accepted = OpenSSLStream(tcp, plan.server_context, server_side=True, leg=plan.accepted_leg)

    try:
        # The facts stay on the stream (relay_session logs them, then discards them there):
        # no reference here outlives the handshake's logging.
        await accepted.do_handshake(plan.limits.handshake_timeout)
    except HandshakeFailed as exc:
        if plan.metrics is not None:
            plan.metrics.child(plan.metrics.handshakes, plan.route, plan.accepted_leg, "failed", exc.reason).inc()
        hello = accepted.observer.client_hello if accepted.observer is not None else None
        log.warning("handshake_failed", leg=plan.accepted_leg, reason=exc.reason, detail=exc.detail,
                    client_offer=hello.summary() if hello else None)
        await _close_early(accepted, log, started, f"handshake_failed: {exc.reason}")
        return
    except (trio.ClosedResourceError, trio.Cancelled):
        # Shutdown (the drain deadline, a second SIGTERM) while the peer was still shaking
        # hands: close its socket and say so, then let the cancellation go on.
        await _close_early(accepted, log, started, "shutdown during handshake")
        raise
    await relay_session(accepted, functools.partial(dial_upstream, plan, log), plan, log,
                        conn=conn, conn_id=conn_id, peer=peer, local=local, started=started)


async def dial_upstream(plan: SessionPlan, log: LogWriter) -> DialledLeg:
    """Production :data:`Dial`: TCP then TLS to each of the plan's upstreams in order."""
    stream, upstream = await connect_first(
        plan.upstreams, plan.client_context, plan.client_settings,
        connect_timeout=plan.limits.connect_timeout, handshake_timeout=plan.limits.handshake_timeout,
        log=log, leg=plan.dialled_leg, on_failure=_failure_counter(plan),
    )
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
    feed = plan.feed
    assert accepted.facts is not None
    if plan.metrics is not None:
        plan.metrics.child(plan.metrics.handshakes, plan.route, plan.accepted_leg, "ok", "").inc()
    _hand_over_leg(feed, conn, conn_id, plan, LegAddresses(plan.accepted_leg, peer, local), accepted.facts)

    try:
        leg = await dial()
    except UpstreamError as exc:
        log.error("no_upstream", leg=plan.dialled_leg, detail=str(exc), attempts=[a for a, _ in exc.attempts])
        await _close_early(accepted, log, started, "no_upstream")
        _hand_over_close(feed, conn, started, 0, 0, "siptap", "no_upstream")
        return
    except trio.Cancelled:
        reason = f"shutdown while dialling the {plan.dialled_leg}"
        await _close_early(accepted, log, started, reason)
        _hand_over_close(feed, conn, started, 0, 0, "siptap", reason)
        raise
    dialled = leg.stream
    assert dialled.facts is not None
    if plan.metrics is not None:
        plan.metrics.child(plan.metrics.handshakes, plan.route, plan.dialled_leg, "ok", "").inc()
    _hand_over_leg(feed, conn, conn_id, plan, LegAddresses(plan.dialled_leg, leg.local, leg.remote), dialled.facts,
                   upstream=str(leg.upstream.address))
    # Handed over: nothing here needs the facts again, and the connection may idle for hours
    # (a few KiB per leg: peer chain summaries, key-log lines, the client's offer).
    del leg
    accepted.discard_facts()
    dialled.discard_facts()

    relay = _Relay(plan, conn, accepted, dialled)
    await relay.run()
    duration = time.monotonic() - started
    closed_by, reason = relay.ending.closed_by or "siptap", relay.ending.reason or "closed"
    _hand_over_close(feed, conn, started, relay.bytes_up, relay.bytes_down, closed_by, reason)
    log.info(
        "connection_closed", closed_by=relay.ending.closed_by, reason=relay.ending.reason,
        duration=round(duration, 3),
        **{f"bytes_{plan.accepted_leg}_to_{plan.dialled_leg}": relay.bytes_up,
           f"bytes_{plan.dialled_leg}_to_{plan.accepted_leg}": relay.bytes_down},
    )


def _hand_over_leg(feed: MirrorFeed, conn: int, conn_id: str, plan: SessionPlan, leg: LegAddresses,
                   facts: HandshakeFacts, upstream: str | None = None) -> None:
    """A leg is up: its addresses, then its handshake's facts, raw (the mirror renders them).

    Secrets always travel: the key log and HEP key packets are the product; whether the
    *log* shows them is the mirror's decision (``log.key_material``)."""
    now = time.time()
    feed.record(conn, chunk_records.encode(chunk_records.ConnectionOpened(conn, now, conn_id, plan.route, (leg,))))
    data = facts.as_dict(secrets=True)
    if upstream is not None:
        data["upstream"] = upstream
    feed.record(conn, chunk_records.encode(chunk_records.HandshakeDone(conn, now, leg.leg, data)))


def _hand_over_close(feed: MirrorFeed, conn: int, started: float, bytes_up: int, bytes_down: int,
                     closed_by: str, reason: str) -> None:
    now = time.time()
    feed.record(conn, chunk_records.encode(chunk_records.ConnectionClosed(
        conn, now, time.monotonic() - started, bytes_up, bytes_down, closed_by, reason)))
    feed.forget(conn)


async def _close_early(accepted: HandshakenStream, log: LogWriter, started: float, reason: str) -> None:
    """Before the relay runs: close the accepted side (close_notify if it got that far), even
    when we are being cancelled (shutdown), and say so."""
    # Shielded: when the caller is being cancelled, an unshielded aclose would be cancelled at
    # its first checkpoint and could leave the socket open; bounded, so a peer that does not
    # read cannot hold the shutdown.
    with trio.CancelScope(shield=True), trio.move_on_after(_CLOSE_TIMEOUT):
        await accepted.aclose()
    log.info("connection_closed", closed_by="siptap", reason=reason, duration=round(time.monotonic() - started, 3))


def _failure_counter(plan: SessionPlan) -> Callable[[str], None] | None:
    metrics = plan.metrics
    if metrics is None:
        return None

    def failed(reason: str) -> None:
        metrics.child(metrics.failovers, plan.route, plan.dialled_leg).inc()
        metrics.child(metrics.handshakes, plan.route, plan.dialled_leg, "failed", reason).inc()

    return failed


class _Relay:
    """The two pumps of one connection and how it ended; counts what crossed each way."""

    # Slotted, no per-connection closures or dicts: one of these lives as long as the connection.
    __slots__ = (
        "_bytes",
        "_latency",
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
        self.bytes_up = 0  # accepted -> dialled
        self.bytes_down = 0
        self.last_activity = trio.current_time()
        a, d = plan.accepted_leg, plan.dialled_leg
        m = plan.metrics
        # Indexed by ``up`` (False, True).
        self._bytes = tuple(m.child(m.bytes, plan.route, direction) if m else None
                            for direction in (f"{d}->{a}", f"{a}->{d}"))
        self._latency = tuple(m.child(m.latency, plan.route, direction) if m else None
                              for direction in (f"{d}->{a}", f"{a}->{d}"))

    async def run(self) -> None:
        try:
            async with trio.open_nursery() as nursery:
                self.scope = nursery.cancel_scope
                nursery.start_soon(self._pump, self.accepted, self.dialled, True)
                if self.plan.limits.idle_timeout > 0:
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
                for stream in (self.accepted, self.dialled):
                    with trio.move_on_after(_CLOSE_TIMEOUT):
                        await stream.aclose()
            # Reached with no ending recorded only when the pumps were cancelled from outside
            # the connection (the app's drain deadline or abort): that is a shutdown.
            self.ending.set("siptap", "shutdown")

    async def _pump(self, src: HandshakenStream, dst: HandshakenStream, up: bool) -> None:
        src_leg = self.plan.accepted_leg if up else self.plan.dialled_leg
        dst_leg = self.plan.dialled_leg if up else self.plan.accepted_leg
        byte_counter, latency = self._bytes[up], self._latency[up]
        # Bound once: the loop below runs per chunk for the life of a trunk.
        hand_over, conn = self.plan.feed.chunk, self.conn
        direction = FROM_ACCEPTED if up else FROM_DIALLED
        while True:
            try:
                data = await src.receive_some(_RECEIVE_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                return self._broken(src_leg, exc)
            if not data:
                break
            arrived = time.perf_counter()
            # Forward first, hand over after: observation never delays a chunk or decides
            # what is relayed.
            try:
                await dst.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                return self._broken(dst_leg, exc)
            if latency is not None and byte_counter is not None:
                latency.observe(time.perf_counter() - arrived)
                byte_counter.inc(len(data))
            # A timestamp, not a timer reset: the watchdog reads it when its deadline comes.
            self.last_activity = trio.current_time()
            # The chunk's offset in its direction's stream lets the mirror see any hole.
            if up:
                hand_over(conn, direction, self.bytes_up, data)
                self.bytes_up += len(data)
            else:
                hand_over(conn, direction, self.bytes_down, data)
                self.bytes_down += len(data)
        if src.eof_without_close_notify:
            # A TCP FIN without close_notify may be a truncation (or a crashed peer): passing
            # it on as close_notify would vouch for a clean end that did not happen, so both
            # legs are torn down instead of half-closed.
            self.ending.set(src_leg, f"{src_leg} closed TCP without TLS close_notify")
            self.scope.cancel()
            return
        self.ending.set(src_leg, f"{src_leg} sent close_notify")
        try:
            await dst.send_eof()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self.scope.cancel()
            return
        # Half-closed: give the other direction a bounded time to finish, then close. min():
        # when both sides half-close, the second must not extend the first one's deadline.
        self.scope.deadline = min(self.scope.deadline, trio.current_time() + self.plan.limits.half_close_timeout)

    def _broken(self, leg: str, exc: BaseException) -> None:
        self.ending.set(leg, f"{leg} connection broken: {_cause(exc)}")
        self.scope.cancel()

    async def _idle_watchdog(self) -> None:
        idle = self.plan.limits.idle_timeout
        while True:
            # Sleep until the connection would be idle long enough if nothing moved since the
            # last look; traffic in the meantime moved last_activity on, so look again.
            await trio.sleep_until(self.last_activity + idle)
            if trio.current_time() - self.last_activity >= idle:
                self.ending.set("siptap", f"idle for {idle:g} s")
                self.scope.cancel()
                return


def _cause(exc: BaseException) -> str:
    cause = exc.__cause__
    return f"{exc} ({cause})" if cause is not None and str(cause) not in str(exc) else str(exc)


def peer_address(sock: trio.socket.SocketType) -> Address:
    """The peer's address, or ("unknown", 0) for a connection reset before we got to it
    (Linux still hands it to accept(), and getpeername() then fails with ENOTCONN)."""
    try:
        return _addr(sock.getpeername())
    except OSError:
        return ("unknown", 0)


def _addr(sockaddr: tuple[Any, ...]) -> Address:
    return (str(sockaddr[0]), int(sockaddr[1]))

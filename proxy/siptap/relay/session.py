"""One proxied connection, end to end: accept-side handshake, dial, relay, close.

Theory of operation. The accepted leg's TLS handshake runs first (with a timeout); only an
authenticated peer makes siptap dial the other side (upstreams in order). Then two pumps run
in one nursery, one per direction. A pump forwards each chunk *before* it lets the observer
frame and publish it, so observation never delays or alters what is relayed.

Ending: a clean EOF (close_notify) on one side is passed on as close_notify to the other
(half-close), and the other direction gets ``half_close_timeout`` to finish. A broken side
(reset, EOF without close_notify, TLS error) cancels the nursery at once so the other side is
closed promptly. Both streams are then closed (close_notify best effort, bounded), and one
``connection_closed`` event says who closed, why, and what went through.

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
from siptap.metrics import Metrics, message_kind
from siptap.mirror.events import Address, ConnectionClosed, KeyEvent, LegInfo
from siptap.relay.observe import DirectionObserver, Publish
from siptap.relay.upstream import connect_first
from siptap.sansio.handshake import HandshakeFacts
from siptap.sansio.sip_message import SipMessageView
from siptap.tls.stream import OpenSSLStream

_RECEIVE_SIZE = 65536
# A stalled close_notify must not hold a connection's socket (and its task) for longer.
_CLOSE_TIMEOUT = 5
_PROCESS_TAG = secrets.token_hex(3)
_counter = itertools.count(1)


def new_connection_id() -> str:
    """Unique across siptap instances feeding one collector: a per-process tag plus a counter."""
    return f"{_PROCESS_TAG}-{next(_counter)}"


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
    mirror_legs: frozenset[str] = frozenset({"customer"})
    publish: Publish = field(default=lambda event: None)
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
    conn_id = new_connection_id()
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
                        conn_id=conn_id, peer=peer, local=local, started=started)


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
                        conn_id: str, peer: Address, local: Address, started: float) -> None:
    """One connection after its accepted handshake: log and publish that handshake, dial the
    other leg, relay until either side ends, then publish and log how it ended.

    ``log`` is already bound to the connection (``conn``, ``route``, ``peer``); ``started``
    is the :func:`time.monotonic` of the accept. Never raises for peer behaviour."""
    assert accepted.facts is not None
    accepted_info = LegInfo(conn_id, plan.route, plan.accepted_leg, client=peer, server=local)
    if plan.metrics is not None:
        plan.metrics.child(plan.metrics.handshakes, plan.route, plan.accepted_leg, "ok", "").inc()
    _log_handshake(log, plan, accepted.facts, accepted_info)
    plan.publish(KeyEvent(time.time(), accepted_info, accepted.facts))

    try:
        leg = await dial()
    except UpstreamError as exc:
        log.error("no_upstream", leg=plan.dialled_leg, detail=str(exc), attempts=[a for a, _ in exc.attempts])
        await _close_early(accepted, log, started, "no_upstream")
        return
    except trio.Cancelled:
        await _close_early(accepted, log, started, f"shutdown while dialling the {plan.dialled_leg}")
        raise
    dialled = leg.stream
    dialled_info = LegInfo(conn_id, plan.route, plan.dialled_leg, client=leg.local, server=leg.remote)
    assert dialled.facts is not None
    if plan.metrics is not None:
        plan.metrics.child(plan.metrics.handshakes, plan.route, plan.dialled_leg, "ok", "").inc()
    _log_handshake(log, plan, dialled.facts, dialled_info, upstream=str(leg.upstream.address))
    plan.publish(KeyEvent(time.time(), dialled_info, dialled.facts))
    # Logged and published: nothing later needs the facts, and the connection may idle for
    # hours (a few KiB per leg: peer chain summaries, key-log lines, the client's offer).
    del leg
    accepted.discard_facts()
    dialled.discard_facts()

    relay = _Relay(plan, log, accepted, dialled, accepted_info, dialled_info)
    await relay.run()
    duration = time.monotonic() - started
    for info in (accepted_info, dialled_info):  # the same bytes crossed both legs
        plan.publish(ConnectionClosed(
            time.time(), info, duration,
            bytes_from_client=relay.bytes_up, bytes_from_server=relay.bytes_down,
            messages_observed=relay.up.messages + relay.down.messages, reason=relay.ending.reason or "closed",
        ))
    log.info(
        "connection_closed", closed_by=relay.ending.closed_by, reason=relay.ending.reason,
        duration=round(duration, 3),
        **{f"bytes_{plan.accepted_leg}_to_{plan.dialled_leg}": relay.bytes_up,
           f"bytes_{plan.dialled_leg}_to_{plan.accepted_leg}": relay.bytes_down,
           f"messages_{plan.accepted_leg}_to_{plan.dialled_leg}": relay.up.messages,
           f"messages_{plan.dialled_leg}_to_{plan.accepted_leg}": relay.down.messages},
        keepalives=relay.up.keepalives + relay.down.keepalives,
        messages_observed=relay.up.messages + relay.down.messages,
        # "mirrored": queued to every sink; a sink that later fails counts it in its own
        # sent/dropped counters (mirror_events_dropped, mirror_stopped).
        messages_mirrored=relay.up.messages + relay.down.messages - relay.up.mirror_dropped - relay.down.mirror_dropped,
        messages_mirror_dropped=relay.up.mirror_dropped + relay.down.mirror_dropped,
        unframeable_bytes=relay.up.unframeable_bytes + relay.down.unframeable_bytes,
    )


async def _close_early(accepted: HandshakenStream, log: LogWriter, started: float, reason: str) -> None:
    """Before the relay runs: close the accepted side (close_notify if it got that far), even
    when we are being cancelled (shutdown), and say so."""
    # Shielded: when the caller is being cancelled, an unshielded aclose would be cancelled at
    # its first checkpoint and could leave the socket open; bounded, so a peer that does not
    # read cannot hold the shutdown.
    with trio.CancelScope(shield=True), trio.move_on_after(_CLOSE_TIMEOUT):
        await accepted.aclose()
    log.info("connection_closed", closed_by="siptap", reason=reason, duration=round(time.monotonic() - started, 3))


def _count_message(metrics: Metrics, route: str, direction: str, view: SipMessageView | None) -> None:
    kind = message_kind(view.is_request, view.method, view.status_code) if view is not None else "unparsed"
    metrics.child(metrics.sip_messages, route, direction, kind).inc()


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
        "dialled",
        "down",
        "ending",
        "last_activity",
        "log",
        "plan",
        "scope",
        "up",
    )
    scope: trio.CancelScope  # the pumps' nursery: cancelling it ends the connection

    def __init__(self, plan: SessionPlan, log: LogWriter, accepted: HandshakenStream, dialled: HandshakenStream,
                 accepted_info: LegInfo, dialled_info: LegInfo) -> None:
        self.plan, self.log = plan, log
        self.accepted, self.dialled = accepted, dialled
        self.ending = _Ending()
        self.bytes_up = 0  # accepted -> dialled
        self.bytes_down = 0
        self.last_activity = trio.current_time()
        a, d = plan.accepted_leg, plan.dialled_leg
        mirrored = [info for info in (accepted_info, dialled_info) if info.leg in plan.mirror_legs]
        # On both legs the accepted side's bytes travel from the TLS client to the TLS server.
        self.up = self._observer(f"{a}->{d}", [(i, True) for i in mirrored])
        self.down = self._observer(f"{d}->{a}", [(i, False) for i in mirrored])
        m = plan.metrics
        # Indexed by ``up`` (False, True).
        self._bytes = tuple(m.child(m.bytes, plan.route, direction) if m else None
                            for direction in (f"{d}->{a}", f"{a}->{d}"))
        self._latency = tuple(m.child(m.latency, plan.route, direction) if m else None
                              for direction in (f"{d}->{a}", f"{a}->{d}"))

    def _observer(self, direction: str, legs: list[tuple[LegInfo, bool]]) -> DirectionObserver:
        plan, m = self.plan, self.plan.metrics
        return DirectionObserver(
            direction=direction, legs=legs, publish=plan.publish, log=self.log,
            max_message_size=plan.limits.max_sip_message, log_messages=plan.log_settings.sip_messages,
            log_payloads=plan.log_settings.sip_payloads, log_key_material=plan.log_settings.key_material,
            count_message=None if m is None else functools.partial(_count_message, m, plan.route, direction),
        )

    async def run(self) -> None:
        try:
            async with trio.open_nursery() as nursery:
                self.scope = nursery.cancel_scope
                nursery.start_soon(self._pump, self.accepted, self.dialled, self.up, True)
                if self.plan.limits.idle_timeout > 0:
                    nursery.start_soon(self._idle_watchdog)
                # The other direction runs in this task, inside the nursery's cancel scope like
                # its children: a task (about 1 KiB) fewer per idle connection.
                await self._pump(self.dialled, self.accepted, self.down, False)
        finally:
            # Ordering matters here. The observers first: closing a framer flushes a partial
            # message as an ``unframeable`` event, which belongs before ``connection_closed``.
            # Then the streams, even when this task is being cancelled (the app's drain
            # deadline, a second SIGTERM): shielded, or the first checkpoint of aclose would
            # re-raise the cancellation and leave both sockets to the garbage collector.
            try:
                self.up.close()
                self.down.close()
            finally:
                # Each leg on its own bound: a close that stalls or fails on one leg must not
                # leave the other leg's socket open.
                with trio.CancelScope(shield=True):
                    for stream in (self.accepted, self.dialled):
                        with trio.move_on_after(_CLOSE_TIMEOUT):
                            await stream.aclose()
            # Reached with no ending recorded only when the pumps were cancelled from outside
            # the connection (the app's drain deadline or abort): that is a shutdown.
            self.ending.set("siptap", "shutdown")

    async def _pump(self, src: HandshakenStream, dst: HandshakenStream, observer: DirectionObserver,
                    up: bool) -> None:
        src_leg = self.plan.accepted_leg if up else self.plan.dialled_leg
        dst_leg = self.plan.dialled_leg if up else self.plan.accepted_leg
        byte_counter, latency = self._bytes[up], self._latency[up]
        while True:
            try:
                data = await src.receive_some(_RECEIVE_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                return self._broken(src_leg, exc)
            if not data:
                break
            arrived = time.perf_counter()
            # Forward first, observe after: framing, logging and mirroring never delay a
            # chunk or decide what is relayed.
            try:
                await dst.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                return self._broken(dst_leg, exc)
            if latency is not None and byte_counter is not None:
                latency.observe(time.perf_counter() - arrived)
                byte_counter.inc(len(data))
            # A timestamp, not a timer reset: the watchdog reads it when its deadline comes.
            self.last_activity = trio.current_time()
            if up:
                self.bytes_up += len(data)
            else:
                self.bytes_down += len(data)
            observer.feed(data)
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


def _log_handshake(log: LogWriter, plan: SessionPlan, facts: HandshakeFacts, info: LegInfo,
                   upstream: str | None = None) -> None:
    data = facts.as_dict(secrets=plan.log_settings.key_material)
    chain = data.pop("peer_chain")
    assert isinstance(chain, list)  # as_dict renders the chain as a list of dicts
    peer = chain[0] if chain else None
    log.info(
        "handshake_done", **data, upstream=upstream,
        client=f"{info.client[0]}:{info.client[1]}", server=f"{info.server[0]}:{info.server[1]}",
        peer_certificate=peer, peer_chain_length=len(chain),
    )


def peer_address(sock: trio.socket.SocketType) -> Address:
    """The peer's address, or ("unknown", 0) for a connection reset before we got to it
    (Linux still hands it to accept(), and getpeername() then fails with ENOTCONN)."""
    try:
        return _addr(sock.getpeername())
    except OSError:
        return ("unknown", 0)


def _addr(sockaddr: tuple[Any, ...]) -> Address:
    return (str(sockaddr[0]), int(sockaddr[1]))

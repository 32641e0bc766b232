"""A self-healing socket to a collector, and the sink that writes one unit per event to it.

:class:`Link` is the client side of a socket to a peer that may come and go: TCP, TLS over
TCP (siptap's client certificate out, the collector's verified: see
:mod:`siptap.mirror.collector_tls`), UDP, Unix stream or Unix datagram. Theory of operation:
a keeper task connects with exponential
back-off (0.5 s doubling to 30 s by default) and, for stream sockets, reads until EOF to
notice the peer leaving; :meth:`Link.send` delivers one unit (a HEP packet, a JSON line or
datagram) if connected, with a timeout, and otherwise reports why it could not. A peer that
is down at start-up (collector not running, Unix socket path with no reader) is the normal
"not connected" state, not an error to raise. A stream send that fails or times out
half-way leaves a partial record on the wire, so the link drops that connection and
reconnects; a datagram send that fails only loses that datagram. Over TLS the handshake is
part of connecting (within ``connect_timeout``); a handshake that fails is a connect that
failed, logged with the reason in words (collector certificate not trusted, name mismatch,
client certificate refused), and retried with the same back-off.

A TLS 1.3 link is not up when its handshake returns: it is *awaiting acceptance* until the
collector shows it took siptap's certificate (:mod:`siptap.mirror.collector_tls` says how);
sends wait meanwhile, and a refusal is a failed connect whose waiting events are dropped with
the alert as their reason.

Cost: :class:`LinkSink` encodes a batch, then sends each datagram with one non-blocking
system call (falling back to trio's waiting send with its timeout only when the socket
buffer is full), or joins a stream batch into one write with one timeout (over TLS, in
pieces of at most 16 KiB, one TLS record each, so ``partial`` knows what was written).
"""

from __future__ import annotations

import errno
import os
import socket
import ssl
from typing import Literal, TypedDict

import trio

from siptap.config.mirror import CollectorTls
from siptap.mirror.collector_tls import CLOSED_BEFORE_ACCEPTING, WatchedTransport, describe_failure, refusal_alert
from siptap.mirror.events import MirrorEvent
from siptap.mirror.sink import Sink, describe_error, log

STREAM_KINDS = ("tcp", "tls", "unix")
LINK_KINDS = ("tcp", "tls", "udp", "unix", "unix-dgram")
TLS_PIECE = 16384  # plaintext per TLS record


class LinkOptions(TypedDict, total=False):
    """How a :class:`Link` connects and sends (see its defaults): what the socket sinks take
    besides their settings, and tests shorten."""

    backoff_initial: float
    backoff_max: float
    connect_timeout: float
    send_timeout: float
    accept_wait: float  # kind "tls", TLS 1.3: no refusal for this long counts as accepted
    # kind "tls": the context (siptap.mirror.collector_tls.client_context) and what it was built from
    tls_context: ssl.SSLContext
    tls: CollectorTls


class Link:
    """Client side of a socket to a peer that may be absent; see the module docstring.

    ``target`` is ``(host, port)`` for tcp/tls/udp, a filesystem path for the Unix kinds.
    Kind ``tls`` needs ``tls_context`` and ``tls`` (the settings, for the expected name and
    for describing failures).
    """

    def __init__(
        self,
        sink: Sink,
        kind: str,
        target: tuple[str, int] | str | os.PathLike[str],
        *,
        backoff_initial: float = 0.5,
        backoff_max: float = 30.0,
        connect_timeout: float = 5.0,
        send_timeout: float = 1.0,
        accept_wait: float = 0.5,
        tls_context: ssl.SSLContext | None = None,
        tls: CollectorTls | None = None,
    ) -> None:
        if kind not in LINK_KINDS:
            raise ValueError(f"unknown link kind {kind!r}")
        if (kind == "tls") != (tls_context is not None and tls is not None):
            raise ValueError("a tls link needs tls_context and tls; other kinds take neither")
        self.sink = sink
        self.kind = kind
        self.target = target if isinstance(target, tuple) else os.fspath(target)
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.connect_timeout = connect_timeout
        self.send_timeout = send_timeout
        self.accept_wait = accept_wait
        self.stream = kind in STREAM_KINDS
        self._sock: trio.socket.SocketType | None = None
        self._raw: socket.socket | None = None  # the same socket, for non-blocking sends
        self.tls_context = tls_context
        self.tls = tls
        self._tls: trio.SSLStream[WatchedTransport] | None = None  # kind "tls": the session over _sock
        # TLS 1.3, handshake done, the collector's verdict not yet seen: the connection, and
        # the event senders wait on (set when it is up, or refused: then ``_refusal`` says why).
        self._pending: tuple[trio.socket.SocketType, socket.socket, trio.SSLStream[WatchedTransport]] | None = None
        self._verdict = trio.Event()
        self._refusal: str | None = None
        self.partial = 0  # octets of the current batch written so far (send_stream)
        self._connected = trio.Event()
        self._lost = trio.Event()
        self._down_reason = "not connected yet"
        self._logged_down = False
        self.connects = 0

    def __str__(self) -> str:
        if isinstance(self.target, tuple):
            host, port = self.target
            return f"{self.kind}:[{host}]:{port}" if ":" in host else f"{self.kind}:{host}:{port}"
        return f"{self.kind}:{self.target}"

    @property
    def connected(self) -> bool:
        return self._sock is not None

    @property
    def awaiting_acceptance(self) -> bool:
        """TLS 1.3: handshake done, the collector has not yet shown it accepts siptap."""
        return self._pending is not None

    async def accepted(self) -> str | None:
        """Wait (at most ``accept_wait``) while the link awaits the collector's verdict: None
        when it may be written to (or is simply down: the send says so), else why the
        collector refused it, the reason for the events that waited."""
        if self._pending is None:
            return None
        await self._verdict.wait()
        return self._refusal

    async def wait_connected(self) -> None:
        await self._connected.wait()

    async def run(self) -> None:
        """Keep the link up until cancelled. The back-off grows on each failed connect and
        on each connection lost within ``backoff_max`` seconds of being made (a peer that
        accepts and hangs up, or a UDP collector whose port answers ICMP unreachable); it
        resets once a connection lived longer than that."""
        backoff = self.backoff_initial
        try:
            while True:
                try:
                    with trio.fail_after(self.connect_timeout):
                        sock, raw, tls = await self._open()
                except (OSError, trio.TooSlowError, trio.BrokenResourceError) as exc:
                    self._down(self._describe(exc), error=exc)
                    await trio.sleep(backoff)
                    backoff = min(backoff * 2, self.backoff_max)
                    continue
                up_since = trio.current_time()
                self._lost = trio.Event()
                try:
                    if tls is not None and tls.version() == "TLSv1.3":
                        self._await_acceptance(sock, raw, tls)
                    else:
                        self._up(sock, raw, tls, accepted="handshake" if tls is not None else None)
                    if self.stream:
                        await self._watch_eof(sock, tls)
                    else:
                        await self._lost.wait()
                finally:
                    self._sock = self._raw = self._tls = None
                    self._settle("peer down")
                    if self._connected.is_set():
                        self._connected = trio.Event()
                    sock.close()
                if trio.current_time() - up_since < self.backoff_max:
                    await trio.sleep(backoff)
                    backoff = min(backoff * 2, self.backoff_max)
                else:
                    backoff = self.backoff_initial
        finally:
            self._sock = self._raw = self._tls = None
            self._settle("peer down")

    def _describe(self, exc: BaseException, *, handshake: bool = True) -> str:
        """Why connecting (``handshake``) or a live connection failed, in words."""
        if isinstance(exc, trio.TooSlowError):
            return "connect timed out" if self.tls is None else "connect or TLS handshake timed out"
        if isinstance(exc, OSError) and not isinstance(exc, ssl.SSLError):
            return describe_error(exc)
        assert self.tls is not None  # only a TLS link raises anything else
        return describe_failure(exc, self.tls, handshake=handshake)

    async def _open(self) -> tuple[trio.socket.SocketType, socket.socket, trio.SSLStream[WatchedTransport] | None]:
        """A connected socket: trio's, for waiting sends and reads, and the standard-library
        socket it wraps (the same object, made non-blocking by trio), for the one-call
        sends of the fast paths; for kind ``tls`` also the TLS session over it, handshake
        done (the fast paths are then unused: every byte goes through the session)."""
        target = self.target
        addr: str | tuple[object, ...]
        if isinstance(target, str):  # the Unix kinds: a filesystem path
            family, addr = socket.AF_UNIX, target
        else:
            host, port = target
            infos = await trio.socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            family, addr = infos[0][0], infos[0][4]
        raw = socket.socket(family, socket.SOCK_STREAM if self.stream else socket.SOCK_DGRAM)
        sock = trio.socket.from_stdlib_socket(raw)
        tls = None
        try:
            if self.kind in ("tcp", "tls"):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            await sock.connect(addr)
            if self.tls_context is not None and self.tls is not None:
                transport = WatchedTransport(trio.SocketStream(sock), self._session_progressed)
                tls = trio.SSLStream(transport, self.tls_context, server_hostname=self.tls.server_name)
                await tls.do_handshake()
        except BaseException:
            sock.close()
            raise
        return sock, raw, tls

    async def _watch_eof(self, sock: trio.socket.SocketType, tls: trio.SSLStream[WatchedTransport] | None) -> None:
        """Collectors never talk back: anything read is discarded, EOF or an error means the
        peer is gone. Also returns when a failed send marked the link lost. Over TLS 1.3 this
        is also where a collector's refusal of siptap's client certificate shows: the server
        checks it after the client's side of the handshake is done, and answers with an alert."""
        async with trio.open_nursery() as nursery:

            async def read() -> None:
                try:
                    if tls is None:
                        while await sock.recv(4096):
                            pass
                    else:
                        while await tls.receive_some(4096):
                            self._accept("data")
                    if self._pending is not None:  # close_notify instead of a verdict
                        self._down(CLOSED_BEFORE_ACCEPTING, error=ConnectionError(CLOSED_BEFORE_ACCEPTING))
                    else:
                        self._down("peer closed the connection")
                except (OSError, trio.BrokenResourceError) as exc:
                    # Before acceptance an alert is the collector's refusal: worded as a
                    # handshake failure ("refused siptap's client certificate ...").
                    self._down(self._describe(exc, handshake=self._pending is not None), error=exc)
                nursery.cancel_scope.cancel()

            async def quiet() -> None:
                await trio.sleep(self.accept_wait)
                self._accept(f"no refusal within {self.accept_wait:g} s")

            async def lost() -> None:
                await self._lost.wait()
                nursery.cancel_scope.cancel()

            nursery.start_soon(read)
            nursery.start_soon(lost)
            if self._pending is not None:
                nursery.start_soon(quiet)

    def _await_acceptance(self, sock: trio.socket.SocketType, raw: socket.socket,
                          tls: trio.SSLStream[WatchedTransport]) -> None:
        """TLS 1.3: the handshake is done, the collector's verdict on siptap's certificate is
        not in yet (see the module docstring); sends wait for it."""
        self._pending = (sock, raw, tls)
        self._verdict = trio.Event()
        self._session_progressed()  # a ticket may have come with the collector's Finished

    def _session_progressed(self) -> None:
        """The TLS session took in all it received (see :class:`WatchedTransport`): a session ticket
        among it is the collector's acceptance."""
        pending = self._pending
        if pending is not None:
            try:
                session = pending[2].session
            except ValueError:  # OpenSSL could not serialise it: no ticket to see yet
                return
            if session is not None and session.has_ticket:
                self._accept("session ticket")

    def _accept(self, how: str) -> None:
        """The collector accepted the connection awaiting acceptance (if any): it is up."""
        if self._pending is not None:
            sock, raw, tls = self._pending
            self._pending = None
            self._refusal = None
            self._up(sock, raw, tls, accepted=how)
            self._verdict.set()

    def _settle(self, reason: str) -> None:
        """No verdict will come (refused, lost or stopped): release the waiting senders."""
        if self._pending is not None:
            self._pending = None
            self._refusal = reason
            self._verdict.set()

    def _up(self, sock: trio.socket.SocketType, raw: socket.socket,
            tls: trio.SSLStream[WatchedTransport] | None, accepted: str | None = None) -> None:
        self._sock = sock
        self._raw = raw
        self._tls = tls
        self.connects += 1
        self._connected.set()
        details: dict[str, object] = {}
        if tls is not None:
            cipher = tls.cipher()
            details = {"tls_version": tls.version(), "cipher": cipher[0] if cipher else None,
                       "client_certificate": self.tls is not None and self.tls.cert is not None,
                       "accepted": accepted}
        log.info("mirror_link_up", sink=self.sink.name, link=str(self), after=self._down_reason, **details)
        self._logged_down = False

    def _down(self, reason: str, error: BaseException | None = None) -> None:
        """Record why the link is down; count an error and log once per outage."""
        self._down_reason = reason
        if self._pending is not None:  # the collector's refusal: the reason the waiting events get
            alert = refusal_alert(error) if error is not None else None
            self._settle(f"refused by the collector (TLS alert {alert})" if alert else "closed by the collector "
                         "before it accepted siptap")
        if error is not None:
            self.sink.note_error(f"{self}: {reason}")
        if not self._logged_down:
            self._logged_down = True
            log.warning("mirror_link_down", sink=self.sink.name, link=str(self), reason=reason,
                        retry="with back-off", hint="events are dropped and counted until it is back")
        if self._sock is not None:  # stop sending now; the keeper closes the socket
            self._sock = self._raw = self._tls = None
            self._lost.set()

    async def send(self, data: bytes) -> str | None:
        """Deliver one unit; None on success, else the reason it was not delivered (the
        caller counts the drop)."""
        if self._pending is not None or self._tls is not None:
            return await self.send_stream(data)
        sock = self._sock
        if sock is None:
            return "peer down"
        try:
            with trio.fail_after(self.send_timeout):
                if self.stream:
                    view = memoryview(data)
                    while view:
                        sent = await sock.send(view)
                        view = view[sent:]
                else:
                    await sock.send(data)
        except trio.TooSlowError:
            return self._timed_out()
        except OSError as exc:
            return self.send_failed(exc)
        return None

    def send_datagram_nowait(self, data: bytes) -> str | Literal[False] | None:
        """One datagram without waiting: None when sent, a reason when it failed (as
        :meth:`send`), or False when the socket buffer is full (the caller falls back to
        :meth:`send`, which waits up to ``send_timeout``). A datagram send never waits on
        a peer, so this is what almost always happens: one system call, no trio
        machinery, no timeout scope."""
        raw = self._raw
        if raw is None:
            return "peer down"
        try:
            raw.send(data)
        except BlockingIOError:
            return False
        except OSError as exc:
            return self.send_failed(exc)
        return None

    def datagram_socket(self) -> socket.socket | None:
        """The connected socket while the link is up, None while it is down: for a caller
        that makes :meth:`send_datagram_nowait`'s one ``send`` itself in a loop of its own
        (a BlockingIOError: the buffer is full; another OSError goes to :meth:`send_failed`)."""
        return self._raw

    async def send_stream(self, data: bytes) -> str | None:
        """Write ``data`` (a batch of whole records) to a stream link: one non-blocking
        send, and only if the kernel did not take it all, trio's waiting sends, with one
        ``send_timeout`` for the rest of the batch. ``self.partial`` tells how much was
        written, also when this fails or is cancelled half-way."""
        self.partial = 0
        refused = await self.accepted()
        if refused is not None:
            return refused
        raw, sock = self._raw, self._sock
        if raw is None or sock is None:
            return "peer down"
        if self._tls is not None:
            return await self._send_tls(self._tls, data)
        try:
            try:
                self.partial = raw.send(data)
            except BlockingIOError:
                pass
            if self.partial < len(data):
                view = memoryview(data)
                with trio.fail_after(self.send_timeout):
                    while self.partial < len(data):
                        self.partial += await sock.send(view[self.partial:])
        except trio.TooSlowError:
            return self._timed_out()
        except OSError as exc:
            return self.send_failed(exc)
        return None

    async def _send_tls(self, tls: trio.SSLStream[WatchedTransport], data: bytes) -> str | None:
        """:meth:`send_stream` over the TLS session: one ``send_all`` per piece of at most
        one TLS record's worth, so ``partial`` counts what the kernel has taken, as it does
        over TCP. A send cut short (timeout, cancellation) breaks the session: the link
        reconnects."""
        view = memoryview(data)
        try:
            with trio.fail_after(self.send_timeout):
                while self.partial < len(data):
                    piece = view[self.partial:self.partial + TLS_PIECE]
                    await tls.send_all(piece)
                    self.partial += len(piece)
        except trio.TooSlowError:
            return self._timed_out()
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            # A collector gone, or its alert (read by the watcher) already broke the session.
            self._down(self._describe(exc, handshake=False), error=exc)
            return "send failed (tls)"
        return None

    def _timed_out(self) -> str:
        if self.stream:  # a partial record may be on the wire: start a fresh connection
            self._down("send timed out: reader too slow", error=TimeoutError("send timeout"))
        return "send timed out"

    def send_failed(self, exc: OSError) -> str:
        """Why a send failed, in words, for the drop count; a failure that means the peer
        is gone (anything but a datagram too large) takes the link down."""
        reason = describe_error(exc)
        if exc.errno == errno.EMSGSIZE:
            return "too large for one datagram"
        # Stream: the connection is unusable. Unix datagram: the reader's socket went away
        # and may come back as a new file: reconnect by path. UDP: ICMP port unreachable
        # for an earlier datagram, i.e. nobody listens: treat it as down and probe again
        # after the back-off rather than send into the void.
        self._down(reason, error=exc)
        return f"send failed ({errno.errorcode.get(exc.errno or 0, 'error')})"


class LinkSink(Sink):
    """A sink that writes each event as one unit (HEP packet, JSON line) to a :class:`Link`.
    Subclasses implement :meth:`encode_unit`; a batch is encoded first, then sent: over
    datagram links one non-blocking ``send`` per unit, over stream links the whole batch
    joined in one write with one timeout."""

    link: Link

    def encode_unit(self, event: MirrorEvent) -> bytes | None:
        """The bytes for one event, or None when the event is already dealt with (an
        encoding failure counted as a drop) or not carried by this output."""
        raise NotImplementedError

    async def run(self, receive: trio.MemoryReceiveChannel[MirrorEvent], batch_interval: float = 0.0) -> None:
        """:meth:`Sink.run`, with the link's keeper task beside it for as long as it runs."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.link.run, name=f"{self.name} link")
            await super().run(receive, batch_interval)
            nursery.cancel_scope.cancel()

    async def handle(self, event: MirrorEvent) -> None:
        await self.handle_batch([event])

    @property
    def delivers_nowait(self) -> bool:
        return not self.link.stream  # a datagram send never waits for the peer

    def handle_batch_nowait(self, batch: list[MirrorEvent]) -> int:
        if self.link.stream:
            return 0
        return self._datagrams_nowait(batch)[0]

    def _datagrams_nowait(self, batch: list[MirrorEvent]) -> tuple[int, bytes | None]:
        """Send each event's datagram until one would have to wait for room in the socket
        buffer: (its index, its encoded bytes); (len(batch), None) when all went.

        :meth:`Link.send_datagram_nowait` per datagram, with its one system call inlined
        while the link is up (a call and a result test less per datagram, and the sent
        count added once per batch): the same outcomes, counted the same."""
        link = self.link
        encode = self.encode_unit
        raw = link.datagram_socket()  # None while down (then each send says why)
        sent = 0
        try:
            for i, event in enumerate(batch):
                try:
                    data = encode(event)
                    if data is None:
                        continue
                    if raw is not None:
                        try:
                            raw.send(data)
                        except BlockingIOError:
                            return i, data
                        except OSError as exc:
                            self.drop(link.send_failed(exc))
                            raw = link.datagram_socket()  # None unless only this datagram was refused (EMSGSIZE)
                            continue
                        sent += 1
                        continue
                    reason = link.send_datagram_nowait(data)
                except BaseException:
                    self.leave_unfinished(batch[i:])
                    raise
                if reason is False:
                    return i, data
                if reason is None:
                    sent += 1
                else:
                    self.drop(reason)
            return len(batch), None
        finally:
            self.sent += sent

    async def handle_batch(self, batch: list[MirrorEvent]) -> None:
        if self.link.stream:
            await self._stream_batch(batch)
            return
        start = 0
        while start < len(batch):
            done, blocked = self._datagrams_nowait(batch[start:] if start else batch)
            start += done
            if blocked is None:
                return
            try:  # socket buffer full: wait for room, as long as allowed
                reason = await self.link.send(blocked)
            except BaseException:
                self.leave_unfinished(batch[start:])
                raise
            if reason is None:
                self.sent += 1
            else:
                self.drop(reason)
            start += 1

    async def _stream_batch(self, batch: list[MirrorEvent]) -> None:
        units: list[bytes] = []
        pending: list[MirrorEvent] = []  # the events in ``units``, same order
        for i, event in enumerate(batch):
            try:
                data = self.encode_unit(event)
            except BaseException:
                # The encoded ones are dealt with (dropped), like the one at hand; the rest
                # go back to the backlog.
                self.leave_unfinished([event, *batch[i + 1 :]])
                if pending:
                    self.drop("sink crashed", len(pending))
                raise
            if data is not None:
                units.append(data)
                pending.append(event)
        if not units:
            return
        link = self.link
        try:
            # A TLS 1.3 link awaiting the collector's verdict: nothing is written before it;
            # refused, every record of the batch is dropped with the collector's alert.
            refused = await link.accepted()
        except BaseException:
            self.leave_unfinished(pending)
            raise
        if refused is not None:
            self.drop(refused, len(units))
            return
        try:
            reason = await link.send_stream(units[0] if len(units) == 1 else b"".join(units))
        except BaseException:
            # Cancelled half-way (shutdown): the records fully written count as sent, the
            # one being written is the event at hand, the rest are not flushed.
            done = _whole_records(units, link.partial)
            self.sent += done
            self.leave_unfinished(pending[done:])
            raise
        if reason is None:
            self.sent += len(units)
            return
        # Records written in full before the failure were delivered; the one cut short
        # gets the reason; the link is down for the others.
        done = _whole_records(units, link.partial)
        self.sent += done
        if done < len(units):
            self.drop(reason)
            if len(units) - done - 1:
                self.drop("peer down", len(units) - done - 1)


def _whole_records(units: list[bytes], written: int) -> int:
    count = 0
    for unit in units:
        written -= len(unit)
        if written < 0:
            break
        count += 1
    return count

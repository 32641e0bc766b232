"""Listeners and the accept loop for one direction of one route.

Accepting never waits on a session: each connection runs in the connection nursery the app
owns, so stopping the listeners (shutdown) and draining the sessions are separate steps.
The session plan is read at accept time, so a reload affects new connections only. The
listener's own log lines and series (``connections_total``, ``connections_active``,
refusals for ``max_connections``, accept failures) carry its plan's route name, so they
follow a reload that renames the route or adds routes to a shared listener (the joined
name); a connection's gauge is decremented under the name it was counted under.

With ``reuse_port`` (``workers`` > 1) every listening socket sets SO_REUSEPORT before it
binds, so the worker processes each bind the same address and the kernel spreads new
connections over them (by a hash of the 4-tuple: a connection stays with the worker that
accepted it; one long-lived trunk is one worker's).

Each listening socket runs its own accept loop (:mod:`siptap.relay.accept`): when the
process runs out of descriptors it logs ``accept_failed`` (rate-limited), counts
``siptap_accept_failures_total`` and retries when one of this listener's connections ends.
"""

from __future__ import annotations

import functools
import socket
from typing import Any

import trio

from siptap.config import Endpoint
from siptap.errors import ListenError
from siptap.log import LogWriter
from siptap.relay.accept import ConnectionEnded, accept_loop
from siptap.relay.plan import SessionPlan
from siptap.relay.session import peer_address, run_session
from siptap.relay.sockets import tune_socket


class RouteListener:
    """``plan.route`` names the listener (one route's name, or a shared listener's joined
    name): in its log lines and metric labels, and to the app's reload."""

    def __init__(self, leg: str, endpoints: tuple[Endpoint, ...], plan: SessionPlan,
                 max_connections: int, log: LogWriter, *, reuse_port: bool = False) -> None:
        self.leg = leg
        self.endpoints = endpoints
        self._root_log = log
        self.use(plan)
        self.max_connections = max_connections
        self.active = 0
        self.total = 0
        self.refused = 0
        self.bound: list[tuple[str, int]] = []
        self.reuse_port = reuse_port
        self.connection_ended = ConnectionEnded()

    def use(self, plan: SessionPlan) -> None:
        """Accept new connections with ``plan`` (start-up, reload), and take its route name:
        a reload that renames the route or changes a shared listener's routes relabels this
        listener's log lines and series from now on. Live sessions keep the plan they had."""
        self.plan = plan
        self.name = plan.route
        self.log = self._root_log.bind(route=plan.route)

    async def serve(self, connections: trio.Nursery, *, task_status: trio.TaskStatus[list[tuple[str, int]]] = trio.TASK_STATUS_IGNORED) -> None:
        listeners: list[trio.SocketListener] = []
        for endpoint in self.endpoints:
            try:
                if self.reuse_port:
                    opened = await open_shared_listeners(endpoint.port, endpoint.host)
                else:
                    opened = await trio.open_tcp_listeners(endpoint.port, host=endpoint.host)
            except OSError as exc:
                for listener in listeners:
                    await listener.aclose()
                raise ListenError(f"route {self.name!r}: cannot listen on {endpoint}: {exc.strerror or exc}") from None
            listeners.extend(opened)
        self.bound = [_addr(listener.socket.getsockname()) for listener in listeners]
        for host, port in self.bound:
            self.log.info("listener_up", leg=self.leg, address=f"{host}:{port}", host=host, port=port)
        task_status.started(self.bound)
        try:
            async with trio.open_nursery() as accepting:
                for listener in listeners:
                    accepting.start_soon(functools.partial(
                        accept_loop, listener, self._handle, connections, ended=self.connection_ended,
                        log=self._accept_log, count_failure=self._count_accept_failure))
        finally:
            self.log.info("listener_down", leg=self.leg)

    def _accept_log(self) -> LogWriter:
        return self.log.bind(leg=self.leg)

    def _count_accept_failure(self, reason: str) -> None:
        metrics = self.plan.metrics
        if metrics is not None:
            metrics.child(metrics.accept_failures, self.name, self.leg, reason).inc()

    async def _handle(self, tcp: trio.SocketStream) -> None:
        if self.active >= self.max_connections:
            self.refused += 1
            peer = peer_address(tcp.socket)
            metrics = self.plan.metrics
            if metrics is not None:
                metrics.child(metrics.connections_refused, self.name, "max_connections").inc()
            self.log.warning("connection_refused", leg=self.leg, reason="max_connections",
                             limit=self.max_connections, peer=f"{peer[0]}:{peer[1]}")
            await tcp.aclose()
            self.connection_ended.notify()
            return
        self.active += 1
        self.total += 1
        metrics = self.plan.metrics
        # Kept: a reload during the session must not move its decrement to another series.
        name = self.name
        if metrics is not None:
            metrics.child(metrics.connections_total, name, self.leg).inc()
            metrics.child(metrics.connections_active, name, self.leg).inc()
        try:
            tune_socket(tcp.socket)
            await run_session(tcp, self.plan, self.log)
        except Exception:  # a bug in one session must not take the route down
            self.log.exception("session_crashed", leg=self.leg)
            await tcp.aclose()
        finally:
            self.active -= 1
            if metrics is not None:
                metrics.child(metrics.connections_active, name, self.leg).dec()
            await trio.aclose_forcefully(tcp)  # as trio.serve_listeners did: never leak the descriptor
            self.connection_ended.notify()  # a descriptor is free: an accept loop in back-off may retry


async def open_shared_listeners(port: int, host: str | None) -> list[trio.SocketListener]:
    """:func:`trio.open_tcp_listeners` with SO_REUSEPORT set before bind (same addresses,
    SO_REUSEADDR, IPV6_V6ONLY and backlog), so that several processes share the address."""
    addresses = await trio.socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    listeners: list[trio.SocketListener] = []
    try:
        for family, type_, proto, _name, sockaddr in addresses:
            sock = trio.socket.socket(family, type_, proto)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                await sock.bind(sockaddr)
                sock.listen(0xFFFF)  # as trio: the kernel caps it at net.core.somaxconn
            except BaseException:
                sock.close()
                raise
            listeners.append(trio.SocketListener(sock))
    except BaseException:
        for listener in listeners:
            listener.socket.close()
        raise
    return listeners


def _addr(sockaddr: tuple[Any, ...]) -> tuple[str, int]:
    return (str(sockaddr[0]), int(sockaddr[1]))


def listen_problem(endpoint: Endpoint) -> str | None:
    """Whether ``endpoint`` could be listened on now, as :func:`trio.open_tcp_listeners` would
    (every address it resolves to, SO_REUSEADDR, IPv6-only sockets): the problem, or None.
    For ``siptap check``; the sockets are closed at once. On Linux a bind with SO_REUSEADDR
    fails exactly when another socket listens there (a TIME_WAIT leftover does not count)."""
    try:
        addresses = socket.getaddrinfo(endpoint.host, endpoint.port, type=socket.SOCK_STREAM,
                                       flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        return f"cannot resolve {endpoint.host!r}: {exc.strerror or exc}"
    for family, type_, proto, _name, sockaddr in addresses:
        with socket.socket(family, type_, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind(sockaddr)
            except OSError as exc:
                return f"cannot listen on {endpoint}: {exc.strerror or exc}"
    return None

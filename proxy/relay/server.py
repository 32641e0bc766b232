"""Listeners and the accept loop for one direction of one route.

Accepting never waits on a session: each connection runs in the connection nursery the app
owns, so stopping the listeners (shutdown) and draining the sessions are separate steps.
The session plan is read at accept time, so a reload affects new connections only.
"""

from __future__ import annotations

from typing import Any

import trio

from proxy.config import Endpoint
from proxy.errors import ListenError
from proxy.relay.session import SessionPlan, peer_address, run_session
from proxy.relay.sockets import tune_socket


class RouteListener:
    def __init__(self, name: str, leg: str, endpoints: tuple[Endpoint, ...], plan: SessionPlan,
                 max_connections: int, log: Any) -> None:
        self.name = name
        self.leg = leg
        self.endpoints = endpoints
        self.plan = plan  # replaced wholesale on reload
        self.max_connections = max_connections
        self.log = log.bind(route=name)
        self.active = 0
        self.total = 0
        self.refused = 0
        self.bound: list[tuple[str, int]] = []

    async def serve(self, connections: trio.Nursery, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        listeners: list[trio.SocketListener] = []
        for endpoint in self.endpoints:
            try:
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
            await trio.serve_listeners(self._handle, listeners, handler_nursery=connections)
        finally:
            self.log.info("listener_down", leg=self.leg)

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
            return
        self.active += 1
        self.total += 1
        metrics = self.plan.metrics
        if metrics is not None:
            metrics.child(metrics.connections_total, self.name, self.leg).inc()
            metrics.child(metrics.connections_active, self.name, self.leg).inc()
        try:
            tune_socket(tcp.socket)
            await run_session(tcp, self.plan, self.log)
        except Exception:  # a bug in one session must not take the route down
            self.log.exception("session_crashed", leg=self.leg)
            await tcp.aclose()
        finally:
            self.active -= 1
            if metrics is not None:
                metrics.child(metrics.connections_active, self.name, self.leg).dec()


def _addr(sockaddr: tuple) -> tuple[str, int]:
    return (str(sockaddr[0]), int(sockaddr[1]))

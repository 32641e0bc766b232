"""Routing on a shared listener: which route takes a connection, once its customer is known.

Several ``[[route]]`` tables may listen on one address (:mod:`siptap.config.listeners` groups
them and refuses what cannot work). The listener accepts with one plan, whose server
context picks the customer block by SNI (:func:`siptap.tls.contexts.serve_by_sni`), and
whose ``router`` (a :class:`RoutingTable`) the session asks after the handshake: the first
route in config order whose SNI and client-certificate match hold decides the cores, the
core-side TLS and the limits. None holds: the connection is refused with reason
``no_route``, its certificate and SNI in the log line; it is never sent to a default core.

A listener with one route and no ``match`` has no router: it behaves as before routes could
share an address. A SIGHUP builds new tables (app.py); a live connection keeps the plan it
was routed to.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from siptap.config.allow import AllowEntries, parse_allow_entries
from siptap.config.listeners import ListenerGroup
from siptap.config.routes import normalise_sni
from siptap.log import LogWriter
from siptap.relay.plan import SessionPlan
from siptap.sansio.handshake import CertificateSummary, HandshakeFacts
from siptap.tls.contexts import serve_by_sni
from siptap.tls.identity import summary_matches

NO_ROUTE = "no_route"


class RoutingTable:
    """A shared listener's routes and their plans; called with a completed handshake's facts,
    returns the chosen route's plan, or None after logging and counting the refusal."""

    __slots__ = ("_clients", "_group", "_plans", "name")

    def __init__(self, group: ListenerGroup, plans: Mapping[str, SessionPlan]) -> None:
        self.name = group.name
        self._group = group
        self._plans = {route.name: plans[route.name] for route in group.routes}
        # Parsed once per table, not per connection (the config layer checked them already).
        self._clients: dict[str, AllowEntries] = {
            route.name: parse_allow_entries(route.match.client) for route in group.routes
        }

    def choose(self, sni: str | None, leaf: CertificateSummary | None) -> SessionPlan | None:
        """The plan of the first route that takes this SNI (as the client sent it) and
        verified client certificate (None: the client sent none)."""
        for route in self._group.candidates(normalise_sni(sni) if sni else None):
            entries = self._clients[route.name]
            if not entries or (leaf is not None and summary_matches(entries, leaf)):
                return self._plans[route.name]
        return None

    def __call__(self, facts: HandshakeFacts | None, log: LogWriter) -> SessionPlan | None:
        # The session calls it after a successful handshake, which leaves facts; without them
        # (never seen) the connection is judged as one with no SNI and no certificate: refused
        # unless a route takes those, never a crash on the accept path.
        sni = facts.sni if facts is not None else None
        leaf = facts.peer_chain[0] if facts is not None and facts.peer_chain else None
        plan = self.choose(sni, leaf)
        if plan is not None:
            return plan
        first = next(iter(self._plans.values()))
        metrics = first.metrics
        if metrics is not None:
            metrics.child(metrics.connections_refused, self.name, NO_ROUTE).inc()
        log.warning("connection_refused", leg=first.accepted_leg, reason=NO_ROUTE, sni=sni,
                    identity=_identity(leaf), routes=[route.name for route in self._group.routes],
                    detail="no [[route]] on this listen address matches the client certificate and SNI")
        return None


def listener_plan(group: ListenerGroup, plans: Mapping[str, SessionPlan]) -> SessionPlan:
    """The plan ``group``'s listener accepts with: the one route's own plan when it has no
    ``match``; else the first route's with the listener's name (the ``route`` of every line
    before routing), the default customer context switching by SNI, and the routing table.
    Builds on fresh contexts only (the SNI callback is set before their first connection)."""
    if not group.routed:
        return plans[group.routes[0].name]
    default = plans[group.handshake_route(None).name].server_context
    serve_by_sni(default, {sni: plans[group.handshake_route(sni).name].server_context for sni in group.named_sni})
    return dataclasses.replace(plans[group.routes[0].name], route=group.name, server_context=default,
                               router=RoutingTable(group, plans))


def _identity(leaf: CertificateSummary | None) -> dict[str, object] | None:
    """The client certificate as a refusal names it: what a match.client entry could use."""
    if leaf is None:
        return None
    return {"common_name": leaf.common_name, "subject": leaf.subject, "issuer": leaf.issuer,
            "sans": list(leaf.sans), "sha256": leaf.sha256}

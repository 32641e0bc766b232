"""What a session is given at accept time: :class:`SessionPlan`, one per route (or shared
listener), built by the app and swapped whole by a reload.

Its own module so that the app, the server, the routing table and the session share one
definition without the session module growing with every per-route setting.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from OpenSSL import SSL

from siptap.config import ClientTlsSettings, Limits, LogSettings, Upstream
from siptap.log import LogWriter
from siptap.metrics import Metrics
from siptap.relay.feed import MirrorFeed, NullFeed
from siptap.sansio.handshake import HandshakeFacts
from siptap.tls.ocsp_check import OcspChecker

__all__ = ["SessionPlan"]


# Frozen: the session keeps the plan it was accepted with. A SIGHUP reload builds a new
# plan for new connections; a live connection keeps its contexts and limits, which is
# why README says live connections are never re-checked.
@dataclass(frozen=True, slots=True)
class SessionPlan:
    """Everything a session needs, captured at accept time (reload swaps the plan, not this)."""

    route: str
    # The leg names are the only difference between a forward and a reverse route in
    # this module: they name log fields, metric labels and the ending's reasons.
    accepted_leg: str  # "customer" (forward route) or "core" (reverse route)
    dialled_leg: str
    server_context: SSL.Context
    client_context: SSL.Context
    client_settings: ClientTlsSettings
    # A tuple, in failover order ([[route.core]] or [[route.reverse.customer]]).
    upstreams: tuple[Upstream, ...]
    limits: Limits
    log_settings: LogSettings
    # NullFeed: observation off costs one no-op call per chunk, and the pumps need no
    # "is there a feed" test on their path.
    feed: MirrorFeed = field(default_factory=NullFeed)
    # None in tests and tools: every use below tests it, so the relay runs without
    # prometheus-client at all.
    metrics: Metrics | None = None
    # A listener shared by routes: picks the route's plan after the handshake, or refuses
    # (None). relay/routing.py's RoutingTable; None: this plan is the route.
    router: Callable[[HandshakeFacts | None, LogWriter], SessionPlan | None] | None = None
    # OCSP per leg (README "Revocation (OCSP)"); None: ocsp = "off".
    accepted_ocsp: OcspChecker | None = None
    dialled_ocsp: OcspChecker | None = None

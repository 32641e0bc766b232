"""Routes that share a listen address: grouping them, and refusing what cannot work.

Several ``[[route]]`` tables may name the same listen address: one listener then serves
them all, and each connection is given to the first route whose ``match`` holds once the
customer's handshake is done (:class:`~siptap.config.routes.RouteMatch`). Until then the
route is not known, so what the handshake needs comes from the listener:

- settled while the ClientHello is read, before the SNI is looked at, so the same on every
  route of the address (:data:`LISTENER_KEYS`);
- chosen by SNI (OpenSSL's servername callback switches the context): the ``[route.customer]``
  block of the routes that take that SNI, which must therefore agree among themselves.

A route with ``sni`` takes the connections that name one of its SNI names; a route without
takes those whose SNI no route of the address names (or that sent none), like a web
server's default host. So each SNI name, and "none of them", is one group of candidates,
and one handshake setting per group is all the servername callback needs.

Pure: the grouping and its checks need only the config's dataclasses.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

from siptap.addresses import Endpoint
from siptap.config.routes import Route, ServerTlsSettings
from siptap.errors import ConfigError

# [route.customer] keys OpenSSL settles before the servername callback runs (the version is
# negotiated, extended master secret and session resumption decided) or that it takes from
# the first context only (verify mode and depth): one value per listen address.
LISTENER_KEYS = ("key_exchange", "min_version", "max_version", "verify_client", "verify_depth", "resumption",
                 "sngrep_compatible")
# [route.limits] keys that apply before the route is known: the listener counts connections
# before their handshake, and times the handshake.
LISTENER_LIMITS = ("max_connections", "handshake_timeout")

Fail = Callable[[Route, str, str], NoReturn]


@dataclass(frozen=True, slots=True)
class ListenerGroup:
    """One listener (its addresses) and the routes it serves, in config order."""

    listen: tuple[Endpoint, ...]
    routes: tuple[Route, ...]

    @property
    def name(self) -> str:
        """The route name log lines and metrics carry before a connection is routed."""
        return "|".join(route.name for route in self.routes)

    @property
    def routed(self) -> bool:
        """False for one route without ``match``: it takes every connection, as before routes
        could share an address."""
        return len(self.routes) > 1 or bool(self.routes[0].match)

    @property
    def named_sni(self) -> frozenset[str]:
        """Every SNI name a route of this listener names."""
        return frozenset().union(*(route.match.sni_names for route in self.routes))

    def candidates(self, sni: str | None) -> tuple[Route, ...]:
        """The routes that may take a connection with this (normalised) SNI, in config order."""
        if sni is not None and sni in self.named_sni:
            return tuple(route for route in self.routes if sni in route.match.sni_names)
        return tuple(route for route in self.routes if not route.match.sni)

    def handshake_route(self, sni: str | None) -> Route:
        """The route whose [route.customer] block serves a handshake with this SNI: the first
        candidate (they all agree, see :func:`check_listeners`), else the first route (every
        route names an SNI, and this one none of them: the connection ends as no_route)."""
        candidates = self.candidates(sni)
        return candidates[0] if candidates else self.routes[0]


def listener_groups(routes: tuple[Route, ...]) -> list[ListenerGroup]:
    """The forward listeners ``routes`` need, in config order. A route shares the listener of
    the first earlier route with one of its addresses (a fixed port; port 0 is never shared:
    each bind gets its own port)."""
    groups: list[tuple[tuple[Endpoint, ...], list[Route]]] = []
    for route in routes:
        for listen, members in groups:
            if any(e.port != 0 and e in listen for e in route.listen):
                members.append(route)
                break
        else:
            groups.append((route.listen, [route]))
    return [ListenerGroup(listen, tuple(members)) for listen, members in groups]


def check_listeners(routes: tuple[Route, ...], path: Path) -> None:
    """Refuse routes that cannot share their listen address, naming the file, both routes
    and the key: different address lists, handshake settings that must agree, a client
    match without client certificates, and a route that could never be chosen."""
    index = {route.name: i for i, route in enumerate(routes)}

    def fail(route: Route, key: str, problem: str) -> NoReturn:
        raise ConfigError(str(path), f"route[{index[route.name]}].{key}", problem)

    for route in routes:
        if route.match.client and not route.customer.verify_client:
            fail(route, "match.client", "matching the client certificate needs customer.verify_client = true")
    for group in listener_groups(routes):
        first = group.routes[0]
        where = ", ".join(map(str, group.listen))
        for route in group.routes[1:]:
            if set(route.listen) != set(first.listen):
                fail(route, "listen", f"route {route.name!r} shares an address with route {first.name!r} "
                     f"({where}) but not all of them: routes that share a listener list the same addresses")
            for key in LISTENER_KEYS:
                # max_version as in force (key_exchange "rsa" caps it at TLS 1.2 whatever is written).
                attribute = "effective_max_version" if key == "max_version" else key
                ours, theirs = getattr(route.customer, attribute), getattr(first.customer, attribute)
                if ours != theirs:
                    fail(route, f"customer.{key}", f"{ours!r} here, {theirs!r} in route {first.name!r}: routes "
                         f"sharing {where} must agree on it (TLS settles it before the SNI or the client "
                         "certificate can pick a route)")
            for key in LISTENER_LIMITS:
                ours, theirs = getattr(route.limits, key), getattr(first.limits, key)
                if ours != theirs:
                    fail(route, f"limits.{key}", f"{ours!r} here, {theirs!r} in route {first.name!r}: routes "
                         f"sharing {where} must agree on it (it applies before a connection is routed)")
        for sni in [*sorted(group.named_sni), None]:
            _check_sni_group(group, sni, where, fail)


def _check_sni_group(group: ListenerGroup, sni: str | None, where: str, fail: Fail) -> None:
    candidates = group.candidates(sni)
    takes = f"SNI {sni!r}" if sni is not None else "connections without a listed SNI"
    for i, route in enumerate(candidates[1:], 1):
        first = candidates[0]
        for key in _differing(route.customer, first.customer):
            fail(route, f"customer.{key}", f"routes {first.name!r} and {route.name!r} both take {takes} on {where}, "
                 "so one handshake serves both: their [route.customer] blocks must be the same "
                 f"(different {key}; names in `match.sni` pick a block by SNI)")
        # A route after a catch-all of the same group is dead for that group; an error only
        # when it is dead in every group it belongs to.
        catch_all = next((r for r in candidates[:i] if not r.match.client), None)
        if catch_all is not None and all(
            any(not r.match.client for r in group.candidates(name)[: group.candidates(name).index(route)])
            for name in (route.match.sni_names or {None})
        ):
            fail(route, "match", f"route {route.name!r} can never be chosen: route {catch_all.name!r} before it "
                 f"on {where} takes every connection it could (give {catch_all.name!r} a match.client, "
                 "or move it last)")


def _differing(a: ServerTlsSettings, b: ServerTlsSettings) -> list[str]:
    return [f.name for f in dataclasses.fields(a) if getattr(a, f.name) != getattr(b, f.name)]

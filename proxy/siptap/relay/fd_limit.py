"""Enough file descriptors for ``max_connections``: raise the soft limit, warn when short.

Every proxied connection holds two descriptors (the accepted socket and the one dialled
toward the other side). Many systems start processes with a soft RLIMIT_NOFILE of 1024
and a far higher hard limit; a process may raise its own soft limit up to the hard one
without privileges, so a relay process does that at start-up (as nginx's
``worker_rlimit_nofile`` or systemd's ``LimitNOFILE=`` would) and then compares what it
got with what its routes may need. Short of it, accepts fail with EMFILE under load
(reported by :mod:`siptap.relay.accept`); the warning names the config keys to lower.
"""

from __future__ import annotations

import resource
from dataclasses import dataclass

from siptap.config import Config, Route
from siptap.config.listeners import listener_groups
from siptap.log import LogWriter

# Descriptors per proxied connection: the accepted socket and the dialled one.
PER_CONNECTION = 2
# Python, trio (epoll, wake-up socket), log and metrics threads, control and mirror
# channel sockets, TLS files read at reload, dialling attempts in flight: a margin.
MARGIN = 64


@dataclass(frozen=True, slots=True)
class FdBudget:
    soft: int  # the soft limit after raising it (-1: unlimited)
    hard: int  # -1: unlimited
    raised_from: int | None  # the soft limit before, if it was raised
    needed: int
    keys: tuple[str, ...]  # the config keys whose values make up most of ``needed``

    @property
    def short(self) -> bool:
        return 0 <= self.soft < self.needed


def descriptors_needed(config: Config, *, with_sinks: bool) -> tuple[int, tuple[str, ...]]:
    """What one relay process of ``config`` may hold at once, and the ``max_connections`` keys
    behind it. ``with_sinks``: the mirror's sinks run in this process (the demo)."""
    needed = MARGIN
    keys = []
    owners = _listener_owners(config)
    for index, route in enumerate(config.routes):
        listeners = _listeners_of(route, owners)  # each listener admits up to max_connections
        if listeners == 0:
            continue
        needed += listeners * (PER_CONNECTION * route.limits.max_connections)
        needed += (len(route.listen) * 2 if route.name in owners else 0) + (
            len(route.reverse.listen) * 2 if route.reverse is not None else 0)
        keys.append(f"route[{index}].limits.max_connections")
    if with_sinks:
        mirror = config.mirror
        needed += len(mirror.hep) + len(mirror.jsonl) + sum(
            sink is not None for sink in (mirror.keylog, mirror.pcap, mirror.srtp_keys))
    return needed, tuple(keys)


def raise_fd_limit(config: Config, *, with_sinks: bool) -> FdBudget:
    """Raise the soft RLIMIT_NOFILE to the hard limit; report what this process has and needs."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    raised_from = None
    if soft != hard and soft != resource.RLIM_INFINITY:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            raised_from, soft = soft, hard
        except (ValueError, OSError):
            pass  # e.g. a hard limit above fs.nr_open: keep the soft limit we have
    needed, keys = descriptors_needed(config, with_sinks=with_sinks)
    unlimited = resource.RLIM_INFINITY
    return FdBudget(soft=-1 if soft == unlimited else soft, hard=-1 if hard == unlimited else hard,
                    raised_from=raised_from, needed=needed, keys=keys)


def ensure_fd_limit(config: Config, log: LogWriter, *, with_sinks: bool) -> FdBudget:
    """:func:`raise_fd_limit`, logged: ``fd_limit_low`` (a warning naming the
    ``max_connections`` keys) when the limit stays below what the routes may need."""
    budget = raise_fd_limit(config, with_sinks=with_sinks)
    fields = {"soft": budget.soft, "hard": budget.hard, "needed": budget.needed}
    if budget.raised_from is not None:
        fields["raised_from"] = budget.raised_from
    if budget.short:
        fits = max(0, (budget.soft - (budget.needed - _connections(config) * PER_CONNECTION)) // PER_CONNECTION)
        log.warning("fd_limit_low", **fields, keys=list(budget.keys), connections_that_fit=fits,
                    detail=f"RLIMIT_NOFILE ({budget.soft}) is below what {', '.join(budget.keys)} need "
                    f"({PER_CONNECTION} descriptors per connection plus sinks and a margin): past about {fits} "
                    "connections accepts fail with EMFILE; raise the hard limit (LimitNOFILE= in the systemd "
                    "unit, ulimit -Hn) or lower max_connections")
    else:
        log.debug("fd_limit", **fields)
    return budget


def _connections(config: Config) -> int:
    owners = _listener_owners(config)
    return sum(route.limits.max_connections * _listeners_of(route, owners) for route in config.routes)


def _listener_owners(config: Config) -> set[str]:
    """The routes whose customer-side listener is counted: one per address, however many
    routes share it (they share its max_connections too: config/listeners.py)."""
    return {group.routes[0].name for group in listener_groups(config.routes)}


def _listeners_of(route: Route, owners: set[str]) -> int:
    return (route.name in owners) + (route.reverse is not None)

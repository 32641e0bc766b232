"""Composition root: builds contexts, listeners and the mirror from a Config, and runs them.

Lifecycle: start listeners (reporting bound addresses), then wait for signals. SIGHUP
re-reads the config file and rebuilds every TLS context (certificates, CA bundles, CRLs,
allow-lists); if anything fails the old contexts stay and the error is logged. SIGTERM or
SIGINT stops the listeners, lets live connections finish for ``drain_timeout``, cancels the
rest, then flushes the mirror. While it runs, a watch logs ``crl_expiring``/``crl_expired``
for the CRLs in force (siptap.tls.crl_watch) and ``certificate_expiring``/``certificate_expired``
for its own certificates and CAs (siptap.tls.cert_watch), and keeps their dates in gauges.

As one of ``workers`` processes (``worker=(index, count)``, started by
:mod:`siptap.supervisor`) the app is the same except: its listeners set SO_REUSEPORT, its
pcap files carry ``-w<index>`` after the prefix (one pcap stream per process; ``siptap
export`` merges them), and its metrics go to the supervisor's multiprocess directory
instead of an endpoint of its own.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import trio
from OpenSSL import SSL

from siptap.config import ClientTlsSettings, Config, Route, ServerTlsSettings, load_config
from siptap.config.listeners import ListenerGroup, listener_groups
from siptap.errors import CertificateError, ConfigError, ListenError, SiptapError
from siptap.log import get_logger
from siptap.metrics import Metrics, SipMessageCounts
from siptap.mirror.events import MirrorEvent
from siptap.mirror.fanout import Fanout
from siptap.mirror.local import LocalFeed
from siptap.mirror.observer import Observer, Publish
from siptap.relay.fd_limit import ensure_fd_limit
from siptap.relay.feed import MirrorFeed
from siptap.relay.plan import SessionPlan
from siptap.relay.routing import listener_plan
from siptap.relay.server import RouteListener
from siptap.relay.tap import MirrorTap
from siptap.tls.cert_watch import CertificateWatch, certificate_entries
from siptap.tls.contexts import build_client_context, build_server_context
from siptap.tls.crl_watch import CrlWatch, crl_entries
from siptap.tls.ocsp_check import checker_for

# Multiprocess metrics: how often a worker copies its mirror counters and relay tallies into the shared files.
MIRROR_METRICS_INTERVAL = 1.0
# Longest the CRL watch sleeps between checks of the wall clock.
CRL_RECHECK = 60.0

# What App.run reports once it listens: the addresses bound, by (route name, accepted leg).
Bound = dict[tuple[str, str], list[tuple[str, int]]]


def worker_config(config: Config, index: int) -> Config:
    """The config as worker ``index`` runs it: its pcap files are its own (``<prefix>-w<index>``)."""
    pcap = config.mirror.pcap
    if pcap is None:
        return config
    return replace(config, mirror=replace(config.mirror, pcap=replace(pcap, prefix=f"{pcap.prefix}-w{index}")))


@dataclass(frozen=True, slots=True)
class RoutePlans:
    forward: SessionPlan
    reverse: SessionPlan | None


def build_plans(config: Config, route: Route, feed: MirrorFeed | None = None,
                metrics: Metrics | None = None) -> RoutePlans:
    """Build every TLS context of a route; a bad file is reported as a ConfigError naming the
    config file, the key that names the file, and the problem."""
    try:
        return _build_plans(config, route, feed, metrics)
    except CertificateError as exc:
        raise _locate(config, route, exc) from None


def _locate(config: Config, route: Route, exc: CertificateError) -> ConfigError:
    index = config.routes.index(route)
    sections: list[tuple[str, object]] = [("customer", route.customer), ("core_tls", route.core_tls)]
    if route.reverse is not None:
        sections += [("reverse.core_side", route.reverse.core_side), ("reverse.customer_tls", route.reverse.customer_tls)]
    failed = exc.section  # set by _context: the block whose context failed
    for section, settings in sections:
        if failed is not None and section != failed:
            continue
        for name in ("cert", "key", "client_ca", "ca", "crl", "ciphers"):
            value = getattr(settings, name, None)
            if value is not None and (str(value) == exc.path or name == exc.path):
                problem = exc.problem if name == exc.path else str(exc)
                error = ConfigError(str(config.path), f"route[{index}].{section}.{name}", problem, route=route.name)
                if "No such file" in exc.problem and name in ("cert", "key", "client_ca", "ca"):
                    error.hint = "for the lab PKI run `siptap certs init --dir certs` next to the config file"
                elif name == "crl" and ("No such file" in exc.problem or "expired" in exc.problem):
                    error.hint = "for the lab PKI, `siptap certs revoke --dir certs` (re)writes certs/crl.pem (fresh nextUpdate)"
                return error
    return ConfigError(str(config.path), f"route[{index}]", str(exc), route=route.name)


def _locate_mirror(config: Config, exc: CertificateError) -> ConfigError:
    """A mirror output's bad certificate, key or CA file, at the key that names it (build_sinks
    puts that key in ``section``)."""
    error = ConfigError(str(config.path), exc.section or "mirror", str(exc))
    if "No such file" in exc.problem:
        error.hint = "for the lab PKI run `siptap certs init --dir certs` next to the config file"
    return error


def _context(section: str, build: Callable[..., SSL.Context], settings: ServerTlsSettings | ClientTlsSettings,
             **kwargs: Any) -> SSL.Context:
    """``build(settings)``, recording in a CertificateError which config block it came from."""
    try:
        return build(settings, **kwargs)
    except CertificateError as exc:
        exc.section = section
        raise


def _build_plans(config: Config, route: Route, feed: MirrorFeed | None, metrics: Metrics | None) -> RoutePlans:
    extra: dict[str, Any] = {"metrics": metrics}
    if feed is not None:
        extra["feed"] = feed
    session_id = f"siptap:{route.name}".encode()[:32]
    forward = SessionPlan(
        route=route.name, accepted_leg="customer", dialled_leg="core",
        server_context=_context("customer", build_server_context, route.customer, session_id=session_id),
        client_context=_context("core_tls", build_client_context, route.core_tls), client_settings=route.core_tls,
        upstreams=route.cores, limits=route.limits, log_settings=config.log,
        accepted_ocsp=checker_for(route.customer, route=route.name, leg="customer", metrics=metrics),
        dialled_ocsp=checker_for(route.core_tls, route=route.name, leg="core", metrics=metrics), **extra,
    )
    reverse = None
    if route.reverse is not None:
        rev = route.reverse
        reverse = SessionPlan(
            route=route.name, accepted_leg="core", dialled_leg="customer",
            server_context=_context("reverse.core_side", build_server_context, rev.core_side, session_id=session_id),
            client_context=_context("reverse.customer_tls", build_client_context, rev.customer_tls),
            client_settings=rev.customer_tls,
            upstreams=rev.customers, limits=route.limits, log_settings=config.log,
            accepted_ocsp=checker_for(rev.core_side, route=route.name, leg="core", metrics=metrics),
            dialled_ocsp=checker_for(rev.customer_tls, route=route.name, leg="customer", metrics=metrics), **extra,
        )
    return RoutePlans(forward, reverse)


def _listener_plan(group: ListenerGroup, plans: dict[str, RoutePlans]) -> SessionPlan:
    return listener_plan(group, {name: route_plans.forward for name, route_plans in plans.items()})


def _same_listener(listener: RouteListener, groups: list[ListenerGroup]) -> ListenerGroup | None:
    """The group of a reloaded config that ``listener`` serves: the same addresses (and, for
    port-0 listeners, which are never shared, the same name)."""
    same = [g for g in groups if set(g.listen) == set(listener.endpoints)]
    named = [g for g in same if g.name == listener.name]
    return named[0] if named else (same[0] if same else None)


def _same_reverse(listener: RouteListener, routes: tuple[Route, ...]) -> Route | None:
    """The route of a reloaded config whose ``[route.reverse]`` ``listener`` serves: the same
    name, else (a renamed route) the only one with the same reverse addresses (port 0 never
    matches by address: each such bind got its own port)."""
    reverse = [route for route in routes if route.reverse is not None]
    for route in reverse:
        if route.name == listener.name:
            return route
    same = [route for route in reverse if route.reverse is not None and all(e.port != 0 for e in route.reverse.listen)
            and set(route.reverse.listen) == set(listener.endpoints)]
    return same[0] if len(same) == 1 else None


class App:
    """One relay process: listeners, sessions, signals, reload, drain.

    Two ways to observe what it relays. With ``mirror_channel`` (a worker under the
    supervisor, ``siptap run``'s way) the relay only relays: its records go through a
    :class:`~siptap.relay.tap.MirrorTap` to the mirror process, which frames, logs and runs
    every sink. Without it (the demo, in-process use) the same records go straight into an
    :class:`~siptap.mirror.observer.Observer` and a fan-out in this process.
    ``observer``: an extra synchronous callback for every mirror event (the demo's view;
    in-process only)."""

    def __init__(self, config: Config, *, observer: Callable[[MirrorEvent], object] | None = None,
                 worker: tuple[int, int] | None = None, mirror_channel: Path | None = None) -> None:
        self.worker = worker
        if worker is not None and mirror_channel is None:
            config = worker_config(config, worker[0])
        self.config = config
        self.log = get_logger("siptap")
        sip_counts = SipMessageCounts()
        self.metrics = Metrics(multiprocess=worker is not None and config.metrics.enabled,
                               sip_message_counts=sip_counts)
        self.tap: MirrorTap | None = None
        self.fanout: Fanout | None = None
        self.observer: Observer | None = None
        self.feed: MirrorFeed
        if mirror_channel is not None:
            if observer is not None:
                raise ValueError("an event observer needs in-process observation (no mirror_channel)")
            self.tap = MirrorTap(mirror_channel, buffer_size=config.mirror.channel_buffer, log=self.log)
            tap = self.tap
            self.metrics.watch_mirror(lambda: {"channel": {"sent": 0, "dropped": tap.dropped_records, "queued": 0}})
            self.feed = tap
        else:
            self.feed = self._observe_here(config, observer, sip_counts)
        self.listeners: list[RouteListener] = []
        plans = {route.name: build_plans(config, route, self.feed, self.metrics) for route in config.routes}
        # One customer-side listener per address, however many routes share it (relay/routing.py).
        for group in listener_groups(config.routes):
            self.listeners.append(RouteListener("customer", group.listen, _listener_plan(group, plans),
                                                group.routes[0].limits.max_connections, self.log,
                                                reuse_port=worker is not None))
        for route in config.routes:
            reverse = plans[route.name].reverse
            if reverse is not None and route.reverse is not None:
                self.listeners.append(RouteListener("core", route.reverse.listen, reverse,
                                                    route.limits.max_connections, self.log,
                                                    reuse_port=worker is not None))
        self.shutdown_requested = trio.Event()
        self.stopped = trio.Event()
        self._connections_scope: trio.CancelScope | None = None
        self._use_watches(config)

    def _observe_here(self, config: Config, observer: Callable[[MirrorEvent], object] | None,
                      sip_counts: SipMessageCounts) -> MirrorFeed:
        """In-process observation: the relay's records go straight into an Observer here."""
        try:
            self.fanout = Fanout.from_settings(config.mirror)
        except CertificateError as exc:  # a TLS output's file (mirror.hep[N].cert, ...)
            raise _locate_mirror(config, exc) from None
        self.metrics.watch_mirror(self.fanout.stats)
        fanout_publish = self.fanout.publish
        publish: Publish = fanout_publish
        shown: frozenset[str] = frozenset()
        if observer is not None:
            def publish_and_show(event: MirrorEvent) -> bool:
                observer(event)
                return fanout_publish(event)
            publish = publish_and_show
            # The viewer (the demo) shows the customer leg's SIP whatever is mirrored; the
            # LegInfo of an unmirrored leg keeps those events from the sinks.
            shown = frozenset({"customer"})
        self.observer = Observer(publish=publish, log=self.log, log_settings=config.log, counts=sip_counts,
                                 shown_legs=shown)
        self.observer.reload(config)
        return LocalFeed(self.observer)

    async def run(self, *, task_status: trio.TaskStatus[Bound] = trio.TASK_STATUS_IGNORED,
                  handle_signals: bool = True) -> None:
        ensure_fd_limit(self.config, self.log, with_sinks=self.fanout is not None)
        if self.config.log.key_material:
            self.log.warning("key_material_in_logs",
                             detail="TLS secrets are logged (log.key_material = true): treat these logs as secret")
        if self.config.metrics.enabled and self.metrics.multiprocess:
            pass  # the supervisor serves every worker's values
        elif self.config.metrics.enabled:
            where = self.config.metrics.address
            try:
                host, port = self.metrics.serve(where.host, where.port)
            except OSError as exc:
                raise ListenError(f"metrics.address: cannot listen on {where}: {exc.strerror or exc}") from None
            self.log.info("metrics_up", address=f"{host}:{port}", host=host, port=port)
        async with trio.open_nursery() as mirror:
            if self.fanout is not None:
                await mirror.start(self.fanout.run)
            if self.tap is not None:
                # Started after the first connect attempt: a mirror already listening is
                # connected before the first connection is accepted.
                await mirror.start(self.tap.run)
            if handle_signals:
                mirror.start_soon(self._signals)
            if self.metrics.multiprocess:
                mirror.start_soon(self._sync_metrics)
            mirror.start_soon(self._watch_expiry)
            await self._serve(task_status)
            # Only now, with every session gone (each handed over its closed record on the
            # way out), is the mirror flushed and closed: nothing can publish after this.
            if self.observer is not None and self.fanout is not None:
                self.observer.close()
                await self.fanout.aclose()
                self.log.info("mirror_stopped", **self.fanout.totals())
            if self.tap is not None:
                self.log.info("mirror_channel_closed", **self.tap.dropped_totals())
                self.tap.close()
            self.metrics.sync_mirror()
            self.metrics.sync_sip_messages()
            self.metrics.sync_relay()
            mirror.cancel_scope.cancel()  # the signal watcher, the tap's connection task
        self.log.info("stopped")
        self.stopped.set()

    async def _serve(self, task_status: trio.TaskStatus[Bound]) -> None:
        """Listen until a shutdown is requested, then drain.

        Two nurseries, because stopping and draining are separate steps: the listeners run
        in ``accepting``, every session in ``connections`` (the listeners hand their
        sessions to it). Shutdown cancels ``accepting`` only, so no new connection is taken
        while the live ones go on; the connections nursery then gets a deadline
        (``drain_timeout``), and its exit waits for the last session. A session cancelled
        by that deadline, or by a second signal, still closes both legs (shielded, bounded)."""
        async with trio.open_nursery() as connections:
            async with trio.open_nursery() as accepting:
                bound = {}
                for listener in self.listeners:
                    bound[(listener.name, listener.leg)] = await accepting.start(listener.serve, connections)
                self.log.info("ready", routes=[r.name for r in self.config.routes])
                task_status.started(bound)
                await self.shutdown_requested.wait()
                accepting.cancel_scope.cancel()
            live = sum(listener.active for listener in self.listeners)
            self.log.info("draining", connections=live, drain_timeout=self.config.drain_timeout)
            # From here on a second signal cancels the drain at once (see _signals). One that
            # lands in the scheduler pass before this line is logged as drain_aborted but
            # finds no scope yet: that drain then runs to its deadline.
            self._connections_scope = connections.cancel_scope
            connections.cancel_scope.deadline = trio.current_time() + self.config.drain_timeout

    def _use_watches(self, config: Config) -> None:
        """The CRLs and certificates ``config`` puts in force (start-up, reload): their
        watches and gauges."""
        crls = crl_entries(config)
        self.crl_watch = CrlWatch(crls)
        self.metrics.set_crls(crls)
        certificates = certificate_entries(config)
        self.certificate_watch = CertificateWatch(certificates)
        self.metrics.set_certificates(certificates)
        changed = getattr(self, "_watches_changed", None)
        if changed is not None:
            changed.set()
        self._watches_changed = trio.Event()

    async def _watch_expiry(self) -> None:
        """Log ``crl_expiring``/``crl_expired`` (siptap.tls.crl_watch) and
        ``certificate_expiring``/``certificate_expired`` (siptap.tls.cert_watch) when they fall due."""
        while True:
            watches, changed = (self.crl_watch, self.certificate_watch), self._watches_changed
            now = datetime.now(UTC)
            due: datetime | None = None
            for watch in watches:
                for alarm in watch.due(now):
                    emit = self.log.error if alarm.event.endswith("_expired") else self.log.warning
                    emit(alarm.event, **alarm.fields())
                at = watch.next_check(now)
                due = at if due is None or (at is not None and at < due) else due
            # The wall clock may jump; a long sleep is re-checked at least once a minute.
            delay = CRL_RECHECK if due is None else min(CRL_RECHECK, max(0.0, (due - now).total_seconds()))
            with trio.move_on_after(delay):
                await changed.wait()

    async def _sync_metrics(self) -> None:
        while True:
            self.metrics.sync_mirror()
            self.metrics.sync_sip_messages()
            self.metrics.sync_relay()
            await trio.sleep(MIRROR_METRICS_INTERVAL)

    def request_shutdown(self) -> None:
        self.shutdown_requested.set()

    async def _signals(self) -> None:
        """First SIGTERM/SIGINT: stop accepting and drain. A second one: stop draining now."""
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            async for signum in signals:
                name = signal.Signals(signum).name
                if signum == signal.SIGHUP:
                    self.reload()
                elif not self.shutdown_requested.is_set():
                    self.log.info("shutdown_requested", signal=name)
                    self.request_shutdown()
                else:
                    # The operator does not want to wait for the drain: cancel the sessions
                    # now. None until _serve has stopped the listeners and begun draining.
                    self.log.warning("drain_aborted", signal=name)
                    if self._connections_scope is not None:
                        self._connections_scope.cancel()

    def reload(self) -> bool:
        """Rebuild every context from the config file; all or nothing."""
        try:
            config = load_config(self.config.path)
            if self.worker is not None:
                config = worker_config(config, self.worker[0])
            new_plans: dict[str, RoutePlans] = {}
            for route in config.routes:
                new_plans[route.name] = build_plans(config, route, self.feed, self.metrics)
        except SiptapError as exc:
            self.log.error("reload_failed", detail=str(exc), kept="previous certificates and settings")
            return False
        groups = listener_groups(config.routes)
        served: set[str] = set()
        for listener in self.listeners:
            plan: SessionPlan | None = None
            limit = listener.max_connections
            if listener.leg == "customer":
                # The listener's new routing table: the routes that now list its addresses.
                group = _same_listener(listener, groups)
                if group is not None:
                    plan = _listener_plan(group, new_plans)
                    limit = group.routes[0].limits.max_connections  # shared per address
                    served.update(route.name for route in group.routes)
            elif (reverse_route := _same_reverse(listener, config.routes)) is not None:
                plan = new_plans[reverse_route.name].reverse
                limit = reverse_route.limits.max_connections
            if plan is None:
                self.log.warning("reload_route_missing", route=listener.name, leg=listener.leg,
                                 detail="listener kept as it was; restart to remove it")
                continue
            # A new plan object for new connections; live sessions keep the one they were
            # accepted with (their contexts, limits, route), so a reload never disturbs a call.
            # The listener takes the plan's route name (metric labels, log lines): a renamed
            # route's or a changed shared listener's new connections count under the new name.
            listener.use(replace(plan))
            # A new limit applies to the next accept; connections above a lowered one stay.
            listener.max_connections = limit
        # Not served: a route on an address not listened on, or a reverse.listen not listened on.
        reverse_served = {listener.name for listener in self.listeners if listener.leg == "core"}
        added = sorted(route.name for route in config.routes if route.name not in served
                       or (route.reverse is not None and route.name not in reverse_served))
        if added:
            self.log.warning("reload_routes_added", routes=added, detail="new listen addresses need a restart")
        self._use_watches(config)
        # The new limits may need more descriptors (raised if the hard limit allows, else
        # fd_limit_low names the keys), as at start-up.
        ensure_fd_limit(config, self.log, with_sinks=self.fanout is not None)
        if self.observer is not None:
            # In-process observation: the routes' mirrored legs and message limits, for new
            # connections (the mirror process reloads its own copy on the SIGHUP it gets).
            self.observer.reload(config)
        self.log.info("reloaded", routes=sorted(new_plans))
        return True


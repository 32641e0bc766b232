"""Prometheus metrics: counters the relay bumps, and a scrape-time view of the mirror.

Per-connection events (accepts, handshakes, failovers) cost a dict lookup and an increment:
label children are created once and cached. Per-chunk values are plain numbers (below).
Mirror counters are not pushed at all: a collector reads the Fanout's own counters when
Prometheus scrapes. The HTTP endpoint is prometheus-client's server thread,
so a scrape never runs on the trio loop; it binds loopback unless configured otherwise.

Under the supervisor (``siptap run``: a mirror process and one or more workers) one scrape
must see every process: the workers run in
prometheus-client's multiprocess mode (the supervisor sets ``PROMETHEUS_MULTIPROC_DIR``
for them, so every value lives in a per-process mmap file) and serve nothing; the
supervisor serves the endpoint and sums the files at scrape time
(:func:`serve_workers`). Counters of a worker that died stay in its file, so sums never go
backwards across a restart; the connection gauge is ``livesum`` (the supervisor marks a dead
worker's gauges dead). The mirror's counters cannot be read at scrape time from another
process: in this mode each worker copies them into real metrics once a second
(:meth:`Metrics.sync_mirror`). Cost: an increment writes the mmap too (about 0.6 µs more
per increment, measured here), which only runs with metrics on pay, and only per connection:
per-chunk values are plain numbers.

Per-chunk and per-message values are plain numbers, never a prometheus-client child: a
child's ``inc``/``observe`` takes a lock (and in multiprocess mode writes the mmap) each time.
The relay's bytes and latency go to :class:`RelayCounts`, the mirror's SIP messages to
:class:`SipMessageCounts`; a single process exports them at scrape time (each is a custom
collector), a worker or the mirror process under the supervisor copies what moved into the
shared metrics once a second (:meth:`Metrics.sync_relay`, :meth:`Metrics.sync_sip_messages`;
the relay also at each connection's close).
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.utils import floatToGoString


class CrlInForce(Protocol):
    """A CRL the gauge reports (:class:`siptap.tls.crl_watch.CrlEntry`, a layer above)."""

    @property
    def key(self) -> str: ...
    @property
    def issuer(self) -> str: ...
    @property
    def next_update(self) -> datetime | None: ...


class CertificateInForce(Protocol):
    """A certificate the expiry gauge reports (:class:`siptap.tls.cert_watch.CertificateEntry`)."""

    @property
    def key(self) -> str: ...
    @property
    def subject(self) -> str: ...
    @property
    def not_after(self) -> datetime: ...


# Relay latency: from a chunk's arrival (receive returned) to its forward (send returned).
LATENCY_BUCKETS = (25e-6, 50e-6, 100e-6, 200e-6, 500e-6, 1e-3, 2e-3, 5e-3, 10e-3, 50e-3, 0.25, 1.0)


# Where a latency is counted: the first bound it does not exceed (Histogram.observe's
# ``amount <= bound``), +Inf last, as prometheus-client adds it.
_LATENCY_BOUNDS = (*LATENCY_BUCKETS, math.inf)
# The ``le`` label of each bucket, formatted as prometheus-client's Histogram formats it.
_LATENCY_LE = tuple(floatToGoString(bound) for bound in _LATENCY_BOUNDS)
_RELAYED_BYTES = ("siptap_relayed_bytes", "Bytes relayed")  # a counter: _total appended
_LATENCY = ("siptap_relay_latency_seconds", "Chunk arrival to forward")


class DirectionTally:
    """The relayed bytes and forward latencies of one route and direction, as plain numbers.

    Written by the relay's pumps only (the trio thread), read by a scrape (prometheus-client's
    server thread) or :meth:`Metrics.sync_relay`: ints and a float whose single writes the
    GIL keeps whole, so a reader sees a value from a moment ago, never a torn one."""

    __slots__ = ("buckets", "bytes", "latency_sum")

    def __init__(self) -> None:
        self.bytes = 0
        # Observations per bucket, not cumulative (the exposition accumulates): one increment
        # per chunk instead of one per bound above it.
        self.buckets = [0] * len(_LATENCY_BOUNDS)
        self.latency_sum = 0.0

    def relayed(self, size: int, seconds: float) -> None:
        """One chunk of ``size`` bytes forwarded ``seconds`` after it arrived."""
        self.bytes += size
        # bisect_left: the first bound >= seconds (C, no lock), the bucket observe() picks.
        self.buckets[bisect_left(_LATENCY_BOUNDS, seconds)] += 1
        # Added in chunk order into one float per label set, as observe() adds: the sum
        # scraped is the very float the Histogram child would hold.
        self.latency_sum += seconds


class RelayCounts:
    """``siptap_relayed_bytes_total`` and ``siptap_relay_latency_seconds`` as plain numbers.

    The relay's pumps bump a :class:`DirectionTally` they got once per connection
    (:meth:`for_direction`); the families are built when Prometheus scrapes (:meth:`collect`,
    registered as a custom collector) with the names, labels, buckets and values the
    prometheus-client Counter and Histogram they replace exported."""

    def __init__(self) -> None:
        self._tallies: dict[tuple[str, str], DirectionTally] = {}

    def for_direction(self, route: str, direction: str) -> DirectionTally:
        """The tally of ``route`` in ``direction`` ("customer->core"), shared by its connections."""
        tally = self._tallies.get((route, direction))
        if tally is None:
            tally = self._tallies[(route, direction)] = DirectionTally()
        return tally

    def items(self) -> list[tuple[tuple[str, str], DirectionTally]]:
        # list(): one C call under the GIL, so a scrape never iterates a dict a new route's
        # first connection grows under it.
        return list(self._tallies.items())

    def collect(self) -> Iterator[Any]:
        relayed = CounterMetricFamily(*_RELAYED_BYTES, labels=["route", "direction"])
        latency = HistogramMetricFamily(*_LATENCY, labels=["route", "direction"])
        for labels, tally in self.items():
            relayed.add_metric(labels, tally.bytes)
            cumulative, buckets = 0, []
            for le, n in zip(_LATENCY_LE, list(tally.buckets), strict=True):
                cumulative += n
                buckets.append((le, cumulative))
            latency.add_metric(labels, buckets, tally.latency_sum)
        yield relayed
        yield latency

    def describe(self) -> list[Any]:
        # The names, so that a Counter or Histogram of the same name beside this fails loudly.
        return [CounterMetricFamily(*_RELAYED_BYTES, labels=["route", "direction"]),
                HistogramMetricFamily(*_LATENCY, labels=["route", "direction"])]


# The mirror's gap and unobserved-bytes counters: name, help (labels are the collector's).
_GAPS = ("siptap_mirror_gaps", "Gaps in the mirror's copy of a stream (records the relay could not send)")
_GAP_BYTES = ("siptap_mirror_gap_bytes", "Bytes missing from the mirror's copy")
_UNOBSERVED = ("siptap_mirror_unobserved_bytes",
               "Stream bytes the mirror could not frame as SIP, by cause (unframeable: skipped; gap: lost)")


class SipMessageCounts:
    """``siptap_sip_messages_total{route,direction,kind}`` as plain integers.

    The mirror's observer counts every SIP message; a prometheus-client child's ``inc()``
    takes a lock (and in multiprocess mode writes an mmap) per message. Here the observer
    does ``counts[kind] = counts.get(kind, 0) + 1`` on a dict it got once per direction
    (:meth:`for_direction`), and the values become a metric family only when Prometheus
    scrapes (:meth:`collect`, registered on the registry as a custom collector).

    The scrape runs in prometheus-client's server thread while the observer may add a key:
    ``list(d.items())`` copies a dict of str keys and int values in one C call under the
    GIL, so the scrape never iterates a dict that changes size under it. Values only grow,
    so a scrape that sees one increment less has merely come a moment earlier.
    """

    NAME = "siptap_sip_messages"  # prometheus-client appends _total, as for the Counter it replaces
    HELP = "SIP messages observed, by direction and kind"

    def __init__(self) -> None:
        self._directions: dict[tuple[str, str], dict[str, int]] = {}
        self.gaps: dict[str, int] = {}  # by route: holes in the mirror's view of a stream
        self.gap_bytes: dict[str, int] = {}  # by route: bytes in those holes
        # by (route, cause): stream bytes no framed message or keepalive covers; cause
        # "unframeable" (the peer's: garbage, oversized or lying messages, truncation) or "gap"
        # (the mirror's: bytes missing, and partial messages around the hole).
        self.unobserved_bytes: dict[tuple[str, str], int] = {}

    def count_gap(self, route: str, missing: int) -> None:
        """A gap the observer reported (rare: no need for a dict per direction)."""
        self.gaps[route] = self.gaps.get(route, 0) + 1
        self.gap_bytes[route] = self.gap_bytes.get(route, 0) + missing

    def count_unobserved(self, route: str, cause: str, size: int) -> None:
        """Bytes the mirror could not frame (rare, per skipped piece: no per-direction dict)."""
        key = (route, cause)
        self.unobserved_bytes[key] = self.unobserved_bytes.get(key, 0) + size

    def for_direction(self, route: str, direction: str) -> dict[str, int]:
        """The counts of one route and direction, by kind (:func:`message_kind`), to increment."""
        counts = self._directions.get((route, direction))
        if counts is None:
            counts = self._directions[(route, direction)] = {}
        return counts

    def snapshot(self) -> dict[tuple[str, str, str], int]:
        """Every (route, direction, kind) and its count now."""
        return {(route, direction, kind): n
                for (route, direction), counts in list(self._directions.items())
                for kind, n in list(counts.items())}

    def collect(self) -> Iterator[Any]:
        family = CounterMetricFamily(self.NAME, self.HELP, labels=["route", "direction", "kind"])
        for (route, direction, kind), n in self.snapshot().items():
            family.add_metric([route, direction, kind], n)
        yield family
        gaps = CounterMetricFamily(*_GAPS, labels=["route"])
        gap_bytes = CounterMetricFamily(*_GAP_BYTES, labels=["route"])
        for route, n in list(self.gaps.items()):
            gaps.add_metric([route], n)
        for route, n in list(self.gap_bytes.items()):
            gap_bytes.add_metric([route], n)
        yield gaps
        yield gap_bytes
        unobserved = CounterMetricFamily(*_UNOBSERVED, labels=["route", "cause"])
        for (route, cause), n in list(self.unobserved_bytes.items()):
            unobserved.add_metric([route, cause], n)
        yield unobserved

    def describe(self) -> list[Any]:
        # The family's name, so that registering this beside a Counter of the same name fails
        # loudly instead of exporting the metric twice.
        return [CounterMetricFamily(self.NAME, self.HELP, labels=["route", "direction", "kind"])]


class Metrics:
    """``multiprocess``: this process is a worker whose values the supervisor serves.

    ``sip_message_counts``: SIP messages are counted as plain integers (the mirror process's
    observer), not by the ``sip_messages`` Counter: a single process registers them as a
    collector; in multiprocess mode :meth:`sync_sip_messages` copies them into the shared
    Counter (call it about once a second, as :meth:`sync_mirror`). The relay's bytes and
    latency are plain numbers too (:attr:`relay_counts`), the same way; :meth:`sync_relay`
    copies them in multiprocess mode."""

    def __init__(self, registry: CollectorRegistry | None = None, *, multiprocess: bool = False,
                 sip_message_counts: SipMessageCounts | None = None) -> None:
        # No `_created` series: prometheus-client adds one per counter and histogram child (the
        # Unix time it was made), which doubles every family on the page and is useless to a
        # rate() query. A process-wide switch of the library; siptap wants it off everywhere.
        disable_created_metrics()
        self.registry = registry or CollectorRegistry()
        self.multiprocess = multiprocess
        r = self.registry
        self.connections_active = Gauge("siptap_connections_active", "Proxied connections now open",
                                        ["route", "leg"], registry=r, multiprocess_mode="livesum")
        self.connections_total = Counter("siptap_connections", "Connections accepted", ["route", "leg"], registry=r)
        self.connections_refused = Counter("siptap_connections_refused", "Connections refused",
                                           ["route", "reason"], registry=r)
        self.accept_failures = Counter("siptap_accept_failures", "accept() attempts that failed for lack of "
                                       "descriptors or kernel memory (EMFILE, ENFILE, ENOBUFS, ENOMEM)",
                                       ["route", "leg", "reason"], registry=r)
        # Two families, not one with a reason that is empty on success: a `reason=""` label
        # is noise in every query and dashboard. Every handshake counts in the first (result
        # "ok" or "failed"); a failure also counts in the second, by its stable reason.
        self.handshakes = Counter("siptap_handshakes", "TLS handshakes by leg and result (ok, failed)",
                                  ["route", "leg", "result"], registry=r)
        self.handshake_failures = Counter("siptap_handshake_failures", "Failed TLS handshakes and dials by leg "
                                          "and reason (README, \"Failed handshakes\")",
                                          ["route", "leg", "reason"], registry=r)
        self.sip_message_counts = sip_message_counts
        self._sip_messages_seen: dict[tuple[str, str, str], int] = {}
        self._mirror_counters: tuple[Counter, Counter, Counter] | None = None  # made by sync_sip_messages
        self._mirror_counts_seen: dict[tuple[str, ...], int] = {}
        self.sip_messages: Counter | None = None
        if sip_message_counts is not None and not multiprocess:
            r.register(sip_message_counts)
        else:
            self.sip_messages = Counter(SipMessageCounts.NAME, SipMessageCounts.HELP,
                                        ["route", "direction", "kind"], registry=r)
        self.ocsp_checks = Counter("siptap_ocsp_checks", "OCSP checks by leg, result (good, revoked, "
                                   "unavailable_allowed, unavailable_refused) and source of the answer",
                                   ["route", "leg", "result", "source"], registry=r)
        # The relay's per-chunk values: plain numbers (RelayCounts), exported by a collector
        # in a single process, copied into these two by sync_relay in multiprocess mode.
        self.relay_counts = RelayCounts()
        self._relay_seen: dict[tuple[str, str], tuple[int, list[int], float]] = {}
        self.bytes: Counter | None = None
        self.latency: Histogram | None = None
        if multiprocess:
            self.bytes = Counter(*_RELAYED_BYTES, ["route", "direction"], registry=r)
            self.latency = Histogram(*_LATENCY, ["route", "direction"], buckets=LATENCY_BUCKETS, registry=r)
        else:
            r.register(self.relay_counts)
        self.failovers = Counter("siptap_upstream_failovers", "Upstream attempts that failed and moved on",
                                 ["route", "leg"], registry=r)
        self.crl_next_update = Gauge("siptap_crl_next_update_timestamp_seconds",
                                     "nextUpdate of each CRL in force (Unix time): alert well before it passes",
                                     ["key", "issuer"], registry=r, multiprocess_mode="livemin")
        self.certificate_expiry = Gauge("siptap_certificate_expiry_timestamp_seconds",
                                        "notAfter of each certificate siptap presents or trusts (Unix time), "
                                        "by the config key naming its file", ["key", "subject"], registry=r,
                                        multiprocess_mode="livemin")
        self._children: dict[tuple[Any, ...], Any] = {}

    def handshake(self, route: str, leg: str, reason: str | None = None) -> None:
        """One handshake of ``leg``: succeeded (``reason`` None) or failed for ``reason``."""
        if reason is None:
            self.child(self.handshakes, route, leg, "ok").inc()
        else:
            self.child(self.handshakes, route, leg, "failed").inc()
            self.child(self.handshake_failures, route, leg, reason).inc()

    def child(self, metric: Any, *labels: str) -> Any:
        """A cached label child: the hot path pays one dict lookup."""
        key = (id(metric), *labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*labels)
        return found

    def set_crls(self, entries: Iterable[CrlInForce]) -> None:
        """The CRLs now in force (start-up, reload): one gauge value each."""
        self.crl_next_update.clear()
        for entry in entries:
            if entry.next_update is not None:
                self.crl_next_update.labels(entry.key, entry.issuer).set(entry.next_update.timestamp())

    def set_certificates(self, entries: Iterable[CertificateInForce]) -> None:
        """The certificates now configured (start-up, reload): the earliest notAfter per label set."""
        earliest: dict[tuple[str, str], float] = {}
        for entry in entries:
            labels, ts = (entry.key, entry.subject), entry.not_after.timestamp()
            earliest[labels] = min(ts, earliest.get(labels, ts))
        self.certificate_expiry.clear()
        for labels, ts in earliest.items():
            self.certificate_expiry.labels(*labels).set(ts)

    def watch_mirror(self, stats: Callable[[], dict[str, dict[str, Any]]]) -> None:
        if not self.multiprocess:
            self.registry.register(_MirrorCollector(stats))
            return
        r = self.registry
        self._mirror_stats = stats
        self._mirror_seen: dict[tuple[str, str], float] = {}
        self._mirror_sent = Counter("siptap_mirror_sent", "Events a mirror sink delivered", ["sink"], registry=r)
        self._mirror_dropped = Counter("siptap_mirror_dropped", "Events a mirror sink dropped", ["sink"], registry=r)
        self._mirror_queued = Gauge("siptap_mirror_queued", "Events waiting in a sink's queue", ["sink"],
                                    registry=r, multiprocess_mode="livesum")

    def sync_mirror(self) -> None:
        """Multiprocess mode: add what the sinks counted since the last call to the shared
        counters, and set the queue gauges."""
        stats = getattr(self, "_mirror_stats", None)
        if stats is None:
            return
        seen = self._mirror_seen
        for name, s in stats().items():
            for field, counter in (("sent", self._mirror_sent), ("dropped", self._mirror_dropped)):
                now = s[field]
                delta = now - seen.get((name, field), 0)
                if delta > 0:
                    self.child(counter, name).inc(delta)
                seen[(name, field)] = now
            self.child(self._mirror_queued, name).set(s["queued"])

    def sync_relay(self) -> None:
        """Multiprocess mode: add what :class:`RelayCounts` counted since the last call to the
        shared Counter and Histogram (a write per value that moved, not one per chunk). A no-op
        in a single process, whose collector reads the tallies at scrape time."""
        if self.bytes is None or self.latency is None:
            return
        seen = self._relay_seen
        for labels, tally in self.relay_counts.items():
            # Copied: `seen` keeps this moment's values, which the pumps move on from.
            size, buckets, total = tally.bytes, list(tally.buckets), tally.latency_sum
            before = seen.get(labels)
            if before is None:
                before = (0, [0] * len(buckets), 0.0)
            elif before[0] == size and before[2] == total and before[1] == buckets:
                continue
            if size > before[0]:
                self.child(self.bytes, *labels).inc(size - before[0])
            histogram = self.child(self.latency, *labels)
            # A Histogram child has no "add n observations to bucket i": its per-bucket and
            # sum values (prometheus-client's _buckets and _sum, the mmap-backed values that
            # observe() increments) take the deltas. tests/test_metrics_exposition.py pins them.
            for i, (now, then) in enumerate(zip(buckets, before[1], strict=True)):
                if now > then:
                    histogram._buckets[i].inc(now - then)
            if total != before[2]:
                # A float difference: the supervisor's sum may differ from the worker's own in
                # the last digits, as sums of floats added in another order do.
                histogram._sum.inc(total - before[2])
            seen[labels] = (size, buckets, total)

    def sync_sip_messages(self) -> None:
        """Multiprocess mode: add what :class:`SipMessageCounts` counted since the last call
        to the shared Counter (one ``inc`` per label set that moved, not one per message)."""
        counts, counter = self.sip_message_counts, self.sip_messages
        if counts is None or counter is None:
            return
        seen = self._sip_messages_seen
        for labels, now in counts.snapshot().items():
            delta = now - seen.get(labels, 0)
            if delta > 0:
                self.child(counter, *labels).inc(delta)
                seen[labels] = now
        # The gap and unobserved-bytes counts too: without this they were only ever exported
        # by a single process (the collector), never by the mirror process under a supervisor.
        if self._mirror_counters is None:
            r = self.registry
            self._mirror_counters = (Counter(*_GAPS, ["route"], registry=r), Counter(*_GAP_BYTES, ["route"], registry=r),
                                     Counter(*_UNOBSERVED, ["route", "cause"], registry=r))
        gaps, gap_bytes, unobserved = self._mirror_counters
        seen_counts = self._mirror_counts_seen
        sources: list[tuple[str, Any, dict[Any, int]]] = [
            ("gaps", gaps, counts.gaps), ("gap_bytes", gap_bytes, counts.gap_bytes),
            ("unobserved", unobserved, counts.unobserved_bytes)]
        for name, metric, values in sources:
            for key, now in list(values.items()):
                labels = key if isinstance(key, tuple) else (key,)
                delta = now - seen_counts.get((name, *labels), 0)
                if delta > 0:
                    self.child(metric, *labels).inc(delta)
                    seen_counts[(name, *labels)] = now

    def serve(self, host: str, port: int) -> tuple[str, int]:
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        address = server.server_address
        return str(address[0]), int(address[1])


def serve_workers(host: str, port: int, directory: Path,
                  status: Callable[[], dict[str, float]]) -> tuple[str, int]:
    """The supervisor's endpoint: every worker's values summed from ``directory`` (the
    workers' ``PROMETHEUS_MULTIPROC_DIR``), plus the supervisor's own ``status`` gauges and
    counters (``siptap_workers`` and ``siptap_worker_restarts``)."""
    from prometheus_client import multiprocess

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=str(directory))
    registry.register(_SupervisorCollector(status))
    server, _thread = start_http_server(port, addr=host, registry=registry)
    address = server.server_address
    return str(address[0]), int(address[1])


def mark_worker_dead(directory: Path, pid: int) -> None:
    """Drop a dead worker's ``livesum`` gauges (its counters stay: sums never go back)."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid, str(directory))


class _SupervisorCollector:
    def __init__(self, status: Callable[[], dict[str, float]]) -> None:
        self._status = status

    def collect(self) -> Iterator[Any]:
        s = self._status()
        yield GaugeMetricFamily("siptap_workers", "Worker processes running", value=s["running"])
        yield GaugeMetricFamily("siptap_workers_configured", "Worker processes configured", value=s["configured"])
        yield CounterMetricFamily("siptap_worker_restarts", "Workers restarted after an unexpected exit",
                                  value=s["restarts"])

    def describe(self) -> list[Any]:
        return []


class _MirrorCollector:
    def __init__(self, stats: Callable[[], dict[str, dict[str, Any]]]) -> None:
        self._stats = stats

    def collect(self) -> Iterator[Any]:
        sent = CounterMetricFamily("siptap_mirror_sent", "Events a mirror sink delivered", labels=["sink"])
        dropped = CounterMetricFamily("siptap_mirror_dropped", "Events a mirror sink dropped", labels=["sink"])
        queued = GaugeMetricFamily("siptap_mirror_queued", "Events waiting in a sink's queue", labels=["sink"])
        for name, s in self._stats().items():
            sent.add_metric([name], s["sent"])
            dropped.add_metric([name], s["dropped"])
            queued.add_metric([name], s["queued"])
        yield sent
        yield dropped
        yield queued

    def describe(self) -> list[Any]:
        return []


def message_kind(is_request: bool, method: str | None, status: int | None) -> str:
    """Bounded label values: the method for requests, the status class for responses."""
    if is_request:
        return method if method and method.isalpha() and len(method) <= 16 else "other"
    return f"{status // 100}xx" if status else "other"

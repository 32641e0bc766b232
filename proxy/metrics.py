"""Prometheus metrics: counters the relay bumps, and a scrape-time view of the mirror.

Hot-path cost is kept to a dict lookup and an increment: label children are created once
and cached. Mirror counters are not pushed at all: a collector reads the Fanout's own
counters when Prometheus scrapes. The HTTP endpoint is prometheus-client's server thread,
so a scrape never runs on the trio loop; it binds loopback unless configured otherwise.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

# Relay latency: from a chunk's arrival (receive returned) to its forward (send returned).
LATENCY_BUCKETS = (25e-6, 50e-6, 100e-6, 200e-6, 500e-6, 1e-3, 2e-3, 5e-3, 10e-3, 50e-3, 0.25, 1.0)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.connections_active = Gauge("siptap_connections_active", "Proxied connections now open",
                                        ["route", "leg"], registry=r)
        self.connections_total = Counter("siptap_connections", "Connections accepted", ["route", "leg"], registry=r)
        self.connections_refused = Counter("siptap_connections_refused", "Connections refused",
                                           ["route", "reason"], registry=r)
        self.handshakes = Counter("siptap_handshakes", "TLS handshakes by leg, result and reason",
                                  ["route", "leg", "result", "reason"], registry=r)
        self.sip_messages = Counter("siptap_sip_messages", "SIP messages observed, by direction and kind",
                                    ["route", "direction", "kind"], registry=r)
        self.bytes = Counter("siptap_relayed_bytes", "Bytes relayed", ["route", "direction"], registry=r)
        self.failovers = Counter("siptap_upstream_failovers", "Upstream attempts that failed and moved on",
                                 ["route", "leg"], registry=r)
        self.latency = Histogram("siptap_relay_latency_seconds", "Chunk arrival to forward", ["route", "direction"],
                                 buckets=LATENCY_BUCKETS, registry=r)
        self._children: dict[tuple[Any, ...], Any] = {}

    def child(self, metric: Any, *labels: str) -> Any:
        """A cached label child: the hot path pays one dict lookup."""
        key = (id(metric), *labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*labels)
        return found

    def watch_mirror(self, stats: Callable[[], dict[str, dict[str, Any]]]) -> None:
        self.registry.register(_MirrorCollector(stats))

    def serve(self, host: str, port: int) -> tuple[str, int]:
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        address = server.server_address
        return str(address[0]), int(address[1])


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

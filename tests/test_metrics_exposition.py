"""The metrics page as a single siptap process serves it (the demo; ``siptap run`` serves the
supervisor's sum, checked in tests/relay/test_metrics.py): what a scrape of
:class:`siptap.metrics.Metrics`' registry shows after one good and one failed handshake."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from siptap.metrics import LATENCY_BUCKETS, Metrics

# Chunks (size, forward latency): on bucket bounds exactly (le is inclusive), between them,
# zero, and beyond the last bound (+Inf only); two directions of one route and a second route.
TRAFFIC = [
    ("lab", "customer->core", 931, 25e-6), ("lab", "customer->core", 1402, 3.1e-5),
    ("lab", "core->customer", 512, 0.0), ("lab", "customer->core", 7, 1e-3),
    ("lab", "core->customer", 16384, 2.5), ("trunk2", "customer->core", 1, 0.0495),
    ("lab", "customer->core", 931, 1.0), ("lab", "customer->core", 100, 7.3e-5),
]
RELAY_FAMILIES = ("siptap_relayed_bytes", "siptap_relay_latency_seconds")


def samples(metrics: Metrics) -> list[tuple[str, dict[str, str], float]]:
    text = generate_latest(metrics.registry).decode()
    return [(s.name, s.labels, s.value) for family in text_string_to_metric_families(text) for s in family.samples]


def test_successful_handshakes_carry_no_reason_and_failures_their_reason() -> None:
    metrics = Metrics()
    metrics.handshake("lab", "customer")
    metrics.handshake("lab", "customer", "unknown_ca")
    metrics.handshake("lab", "core", "connect_refused")
    scraped = samples(metrics)
    handshakes = {(s[1]["leg"], s[1]["result"]): s[2] for s in scraped if s[0] == "siptap_handshakes_total"}
    assert handshakes == {("customer", "ok"): 1, ("customer", "failed"): 1, ("core", "failed"): 1}
    assert all("reason" not in s[1] for s in scraped if s[0] == "siptap_handshakes_total")
    failures = {(s[1]["leg"], s[1]["reason"]): s[2] for s in scraped if s[0] == "siptap_handshake_failures_total"}
    assert failures == {("customer", "unknown_ca"): 1, ("core", "connect_refused"): 1}
    assert not [s for s in scraped if s[1].get("reason") == ""]


def test_no_created_series() -> None:
    metrics = Metrics()
    metrics.handshake("lab", "customer")
    metrics.relay_counts.for_direction("lab", "customer->core").relayed(100, 1e-4)
    names = {name for name, _labels, _value in samples(metrics)}
    assert "siptap_relayed_bytes_total" in names and "siptap_relay_latency_seconds_count" in names
    assert not [name for name in names if name.endswith("_created")], sorted(names)


def exposition(registry: CollectorRegistry, families: tuple[str, ...] = RELAY_FAMILIES) -> list[str]:
    """The page's lines of ``families`` (HELP, TYPE and samples), in page order."""
    return [line for line in generate_latest(registry).decode().splitlines()
            if any(line.split(" ")[2 if line.startswith("#") else 0].startswith(f) for f in families)]


def test_relay_counts_export_exactly_what_the_counter_and_histogram_did() -> None:
    # The reference: the prometheus-client Counter and Histogram the relay bumped per chunk
    # until the plain-number tallies replaced them. Same names, labels, buckets, values.
    reference = CollectorRegistry()
    relayed = Counter("siptap_relayed_bytes", "Bytes relayed", ["route", "direction"], registry=reference)
    latency = Histogram("siptap_relay_latency_seconds", "Chunk arrival to forward", ["route", "direction"],
                        buckets=LATENCY_BUCKETS, registry=reference)
    metrics = Metrics()
    for route, direction, size, seconds in TRAFFIC:
        relayed.labels(route, direction).inc(size)
        latency.labels(route, direction).observe(seconds)
        metrics.relay_counts.for_direction(route, direction).relayed(size, seconds)
    ours = exposition(metrics.registry)
    assert ours == exposition(reference)
    assert 'siptap_relay_latency_seconds_bucket{direction="customer->core",le="2.5e-05",route="lab"} 1.0' in ours
    assert 'siptap_relayed_bytes_total{direction="core->customer",route="lab"} 16896.0' in ours
    # Nothing relayed yet: no series at all, as a labelled Counter without children.
    assert exposition(Metrics().registry) == [line for line in exposition(reference) if line.startswith("#")]


# Run in a child process: prometheus-client picks its mmap-backed values when it is imported
# with PROMETHEUS_MULTIPROC_DIR set, so this process (imported without it) cannot be a worker.
_WORKER = """
import json, sys
from siptap.metrics import Metrics
metrics = Metrics(multiprocess=True)
traffic = json.loads(sys.argv[1])
for i, (route, direction, size, seconds) in enumerate(traffic):
    metrics.relay_counts.for_direction(route, direction).relayed(size, seconds)
    if i in (2, 5):
        metrics.sync_relay()  # the once-a-second copy, between chunks: later ones add deltas
metrics.sync_relay()
metrics.sync_relay()  # nothing moved since: adds nothing
"""


def test_relay_counts_reach_the_supervisor_in_multiprocess_mode(tmp_path: Path) -> None:
    # Two workers' files, summed as the supervisor's endpoint sums them (serve_workers).
    for half in (TRAFFIC[:4], TRAFFIC[4:]):
        env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
        subprocess.run([sys.executable, "-c", _WORKER, json.dumps(half)], env=env, check=True, timeout=60)
    summed = CollectorRegistry()
    MultiProcessCollector(summed, path=str(tmp_path))
    got = {(s.name, tuple(sorted(s.labels.items()))): s.value
           for family in text_string_to_metric_families(generate_latest(summed).decode()) for s in family.samples}
    reference = CollectorRegistry()
    relayed = Counter("siptap_relayed_bytes", "Bytes relayed", ["route", "direction"], registry=reference)
    latency = Histogram("siptap_relay_latency_seconds", "Chunk arrival to forward", ["route", "direction"],
                        buckets=LATENCY_BUCKETS, registry=reference)
    for route, direction, size, seconds in TRAFFIC:
        relayed.labels(route, direction).inc(size)
        latency.labels(route, direction).observe(seconds)
    expected = {(s.name, tuple(sorted(s.labels.items()))): s.value
                for family in text_string_to_metric_families(generate_latest(reference).decode())
                for s in family.samples}
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        # Sums of float deltas may differ from one running sum in the last digits; counts are exact.
        assert math.isclose(got[key], value, rel_tol=1e-12) if key[0].endswith("_sum") else got[key] == value, key

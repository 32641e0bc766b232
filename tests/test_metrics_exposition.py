"""The metrics page as a single siptap process serves it (the demo; ``siptap run`` serves the
supervisor's sum, checked in tests/relay/test_metrics.py): what a scrape of
:class:`siptap.metrics.Metrics`' registry shows after one good and one failed handshake."""

from __future__ import annotations

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from siptap.metrics import Metrics


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
    metrics.child(metrics.latency, "lab", "customer->core").observe(1e-4)
    metrics.child(metrics.bytes, "lab", "customer->core").inc(100)
    names = {name for name, _labels, _value in samples(metrics)}
    assert "siptap_relayed_bytes_total" in names and "siptap_relay_latency_seconds_count" in names
    assert not [name for name in names if name.endswith("_created")], sorted(names)

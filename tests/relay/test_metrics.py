"""The Prometheus endpoint of `siptap run`, scraped during a real relay."""

from __future__ import annotations

import urllib.request
from pathlib import Path

import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from siptap.tools.lab.core import start_lab_core
from siptap.tools.lab.customer import CustomerSession, customer_context
from tests.relay.harness import SiptapProcess, write_config


async def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    def fetch() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
            return response.read().decode()

    text = await trio.to_thread.run_sync(fetch)
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_metrics_move_with_the_traffic(pki: Path, tmp_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        core, core_port = await start_lab_core(nursery, pki)
        top = f'[metrics]\nenabled = true\naddress = "127.0.0.1:0"\n[mirror.keylog]\npath = "{tmp_path}/keys.log"\n'
        siptap = SiptapProcess(write_config(tmp_path, pki, cores=[core_port], top=top))
        await siptap.start(nursery)
        port = await siptap.port()
        metrics_port = int((await siptap.wait_for("metrics_up"))[0]["port"])
        assert (await siptap.wait_for("metrics_up"))[0]["host"] == "127.0.0.1"
        before = await scrape(metrics_port)
        session = await CustomerSession.connect("127.0.0.1", port, customer_context(pki))
        codes = await session.call()
        during = await scrape(metrics_port)
        await session.aclose()
        with pytest.raises(Exception):
            bad = await CustomerSession.connect("127.0.0.1", port, customer_context(pki, cert=None))
            await bad.options()
        closed = await siptap.wait_for("connection_closed", count=2)
        await siptap.wait_for("connection_observed", count=1)
        # The relay's counters and the mirror process's reach the supervisor's endpoint through
        # the shared files, copied once a second: wait (bounded) until the mirror's are there.
        after = await scrape(metrics_port)
        with trio.fail_after(10):
            while value(after, "siptap_mirror_sent_total", sink="keylog") < 2 or \
                    value(after, "siptap_sip_messages_total", route="test", direction="core->customer", kind="2xx") < 2:
                await trio.sleep(0.2)
                after = await scrape(metrics_port)
        assert await siptap.stop() == 0
        nursery.cancel_scope.cancel()
    assert codes == ["100", "180", "200", "200"]
    assert value(before, "siptap_connections_total", route="test", leg="customer") == 0
    assert value(during, "siptap_connections_active", route="test", leg="customer") == 1
    assert value(after, "siptap_connections_active", route="test", leg="customer") == 0
    assert value(after, "siptap_connections_total", route="test", leg="customer") == 2
    assert value(after, "siptap_handshakes_total", route="test", leg="customer", result="ok") == 1
    assert value(after, "siptap_handshakes_total", route="test", leg="core", result="ok") == 1
    assert value(after, "siptap_handshakes_total", route="test", leg="customer", result="failed") == 1
    assert value(after, "siptap_handshake_failures_total", route="test", leg="customer",
                 reason="no_client_certificate") == 1
    # A success carries no empty reason label, and no family has a `_created` twin.
    assert not [key for key in after if ("reason", "") in key[1]], [key for key in after if ("reason", "") in key[1]]
    assert not [name for name, _labels in after if name.endswith("_created")]
    up, down = "customer->core", "core->customer"
    for method in ("INVITE", "ACK", "BYE"):
        assert value(after, "siptap_sip_messages_total", route="test", direction=up, kind=method) == 1
    assert value(after, "siptap_sip_messages_total", route="test", direction=down, kind="1xx") == 2
    assert value(after, "siptap_sip_messages_total", route="test", direction=down, kind="2xx") == 2
    assert value(after, "siptap_relayed_bytes_total", route="test", direction=up) == sum(map(len, session.sent))
    # Both directions as the connection's own line counts them (a worker copies its tallies
    # into the shared files before that line).
    relayed = [e for e in closed if "bytes_customer_to_core" in e]
    assert_relayed_series(after, relayed)
    # One observation per forwarded chunk: the INVITE alone (it waits for its answer), ACK and
    # BYE possibly together (what arrived together is received and forwarded at once).
    assert value(after, "siptap_relay_latency_seconds_count", route="test", direction=up) >= 2
    assert value(after, "siptap_mirror_sent_total", sink="keylog") == 2  # one handshake per leg
    assert value(after, "siptap_mirror_dropped_total", sink="keylog") == 0


LATENCY_LE = ["2.5e-05", "5e-05", "0.0001", "0.0002", "0.0005", "0.001", "0.002", "0.005", "0.01", "0.05",
              "0.25", "1.0", "+Inf"]


def assert_relayed_series(samples: dict, closed: list[dict]) -> None:
    """The bytes and latency series of route "test" after the connections of ``closed``
    (their connection_closed lines) relayed and closed: bytes as the lines count them, and a
    well-formed histogram (every bucket, cumulative, +Inf = count, a positive sum)."""
    for direction, field in (("customer->core", "bytes_customer_to_core"), ("core->customer", "bytes_core_to_customer")):
        assert value(samples, "siptap_relayed_bytes_total", route="test", direction=direction) \
            == sum(e[field] for e in closed) > 0
        buckets = [samples[("siptap_relay_latency_seconds_bucket",
                            tuple(sorted({"route": "test", "direction": direction, "le": le}.items())))]
                   for le in LATENCY_LE]
        assert buckets == sorted(buckets) and buckets[-1] >= len(closed), buckets
        assert value(samples, "siptap_relay_latency_seconds_count", route="test", direction=direction) == buckets[-1]
        assert value(samples, "siptap_relay_latency_seconds_sum", route="test", direction=direction) > 0

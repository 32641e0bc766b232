"""The certificate expiry watch: states, what is reported when, the next check (pure: the clock
is passed in), and which certificates a real configuration puts under watch."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509

from siptap.config import load_config
from siptap.tls.cert_watch import WARN_BEFORE, CertificateEntry, CertificateWatch, certificate_entries
from siptap.tools.pki import issue_leaf
from tests.relay.harness import write_config

T0 = datetime(2026, 11, 1, tzinfo=UTC)
D = timedelta(days=1)
H = timedelta(hours=1)


def entry(days: float, key: str = "route[0].customer.cert") -> CertificateEntry:
    return CertificateEntry(key, "/pki/proxy-server.pem", "CN=proxy-server", T0 + days * D)


def events(watch: CertificateWatch, now: datetime) -> list[tuple[str, str]]:
    return [(a.event, a.entry.key) for a in watch.due(now)]


def test_states_over_a_certificate_life() -> None:
    cert = entry(days=40)
    assert cert.state(T0) == "ok"
    assert cert.state(T0 + 10 * D - timedelta(seconds=1)) == "ok"
    assert cert.state(T0 + 10 * D) == "expiring"  # 30 days left
    assert cert.state(T0 + 40 * D) == "expiring"  # valid through notAfter itself
    assert cert.state(T0 + 40 * D + timedelta(seconds=1)) == "expired"
    assert WARN_BEFORE == 30 * D


def test_reports_at_once_then_daily_while_expiring_then_hourly_once_expired() -> None:
    watch = CertificateWatch([entry(days=2), entry(days=400, key="route[0].core_tls.ca")])
    assert events(watch, T0) == [("certificate_expiring", "route[0].customer.cert")]
    assert watch.next_check(T0) == T0 + D  # the daily repeat comes before notAfter
    assert events(watch, T0 + 23 * H) == []
    assert events(watch, T0 + D) == [("certificate_expiring", "route[0].customer.cert")]
    assert watch.next_check(T0 + D) == T0 + 2 * D
    assert events(watch, T0 + 2 * D) == [("certificate_expiring", "route[0].customer.cert")]  # still valid
    assert watch.next_check(T0 + 2 * D) == T0 + 2 * D + timedelta(seconds=1)  # the expiry comes first now
    after = T0 + 2 * D + timedelta(seconds=1)
    assert events(watch, after) == [("certificate_expired", "route[0].customer.cert")]
    assert events(watch, after + 59 * timedelta(minutes=1)) == []
    assert events(watch, after + H) == [("certificate_expired", "route[0].customer.cert")]
    assert watch.next_check(after + H) == after + 2 * H


def test_next_check_for_a_healthy_certificate_is_its_warning_date() -> None:
    watch = CertificateWatch([entry(days=400)])
    assert events(watch, T0) == []
    assert watch.next_check(T0) == T0 + 400 * D - WARN_BEFORE
    assert CertificateWatch([]).next_check(T0) is None


def test_alarm_fields_and_description() -> None:
    watch = CertificateWatch([entry(days=12), entry(days=-3, key="route[0].customer.client_ca")])
    expiring, expired = watch.due(T0)
    fields = expiring.fields()
    assert (fields["key"], fields["subject"], fields["seconds_left"]) == (
        "route[0].customer.cert", "CN=proxy-server", 12 * 86400)
    assert fields["not_after"] == (T0 + 12 * D).isoformat()
    assert "siptap's own certificate" in str(fields["detail"])
    assert expired.fields()["seconds_since"] == 3 * 86400
    assert "the CA bundle" in str(expired.fields()["detail"])
    assert entry(days=12).describe(T0) == \
        "/pki/proxy-server.pem: certificate CN=proxy-server expires in 12 days (2026-11-13 00:00 UTC)"
    assert entry(days=-3).describe(T0) == \
        "/pki/proxy-server.pem: certificate CN=proxy-server expired 3 days ago (2026-10-29 00:00 UTC)"
    assert entry(days=0.5).describe(T0).endswith("expires in 12 hours (2026-11-01 12:00 UTC)")


def test_entries_name_every_certificate_by_its_config_key(pki: Path, tmp_path: Path) -> None:
    """A real config with a server certificate valid for 10 days and a CA bundle of two CAs."""
    cert, key = issue_leaf(tmp_path, "short-server", usage="server", ca_dir=pki, days=10)
    bundle = tmp_path / "two-cas.pem"
    bundle.write_bytes((pki / "ca.pem").read_bytes() + (pki / "foreign-ca.pem").read_bytes())
    config_path = write_config(tmp_path, pki, cores=[5062])
    text = config_path.read_text().replace(f'cert = "{pki}/proxy-server.pem"', f'cert = "{cert}"')
    text = text.replace(f'key = "{pki}/proxy-server.key"', f'key = "{key}"')
    config_path.write_text(text.replace(f'client_ca = "{pki}/ca.pem"', f'client_ca = "{bundle}"'))
    entries = certificate_entries(load_config(config_path))
    by_key: dict[str, list[CertificateEntry]] = {}
    for found in entries:
        by_key.setdefault(found.key, []).append(found)
    assert sorted(by_key) == ["route[0].core_tls.ca", "route[0].core_tls.cert", "route[0].customer.cert",
                              "route[0].customer.client_ca"]
    assert len(by_key["route[0].customer.client_ca"]) == 2
    (server,) = by_key["route[0].customer.cert"]
    real = x509.load_pem_x509_certificate(cert.read_bytes())
    assert (server.path, server.subject, server.not_after) == (
        str(cert), real.subject.rfc4514_string(), real.not_valid_after_utc)
    now = datetime.now(UTC)
    assert server.state(now) == "expiring"
    assert {e.state(now) for e in entries if e is not server} == {"ok"}

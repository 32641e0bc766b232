"""The CRL watch: when a CRL in force counts as expiring or expired, what is reported and
when, and what the next check is. Pure: the clock is passed in."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from siptap.tls.crl_watch import CrlEntry, CrlWatch

T0 = datetime(2026, 11, 1, tzinfo=UTC)
H = timedelta(hours=1)


def entry(days: float = 30, key: str = "route[0].customer.crl", next_update: bool = True) -> CrlEntry:
    return CrlEntry(key, "/pki/crl.pem", "CN=siptap lab CA", T0, T0 + timedelta(days=days) if next_update else None)


def events(watch: CrlWatch, now: datetime) -> list[tuple[str, str]]:
    return [(a.event, a.entry.key) for a in watch.due(now)]


def test_warning_window_is_a_quarter_of_the_validity_capped_at_a_day() -> None:
    assert entry(days=30).warn_window == timedelta(hours=24)
    assert entry(days=1).warn_window == timedelta(hours=6)
    assert entry(next_update=False).warn_window == timedelta(0)


def test_states_over_a_crl_life() -> None:
    crl = entry(days=1)  # nextUpdate T0 + 24 h, warn from T0 + 18 h
    assert crl.state(T0) == "ok"
    assert crl.state(T0 + 18 * H - timedelta(seconds=1)) == "ok"
    assert crl.state(T0 + 18 * H) == "expiring"
    assert crl.state(T0 + 24 * H) == "expiring"  # OpenSSL still uses it during nextUpdate's second
    assert crl.state(T0 + 24 * H + timedelta(seconds=1)) == "expired"
    assert entry(next_update=False).state(T0 + timedelta(days=10_000)) == "ok"


def test_reports_once_per_state_then_hourly() -> None:
    watch = CrlWatch([entry(days=1), entry(days=30, key="route[0].core_tls.crl")])
    assert events(watch, T0) == []
    assert watch.next_check(T0) == T0 + 18 * H  # the daily CRL's warning starts first
    expiring = [("crl_expiring", "route[0].customer.crl")]
    assert events(watch, T0 + 18 * H) == expiring
    assert events(watch, T0 + 18 * H + 59 * timedelta(minutes=1)) == []
    assert watch.next_check(T0 + 18 * H + timedelta(minutes=5)) == T0 + 19 * H  # the hourly repeat
    assert events(watch, T0 + 19 * H) == expiring
    assert events(watch, T0 + 23.5 * H) == expiring  # (hourly: overdue since 20 h)
    assert watch.next_check(T0 + 23.5 * H) == T0 + 24 * H + timedelta(seconds=1)
    assert events(watch, T0 + 24 * H + timedelta(seconds=1)) == [("crl_expired", "route[0].customer.crl")]  # not at the repeat
    assert events(watch, T0 + 24 * H + timedelta(minutes=30)) == []
    assert events(watch, T0 + 25 * H + timedelta(seconds=1)) == [("crl_expired", "route[0].customer.crl")]


def test_first_check_reports_everything_already_due() -> None:
    watch = CrlWatch([entry(days=1), entry(days=30, key="k2")])
    late = T0 + timedelta(days=29, hours=12)  # the daily one long expired, the monthly one expiring
    assert sorted(events(watch, late)) == [("crl_expired", "route[0].customer.crl"), ("crl_expiring", "k2")]


def test_alarm_fields_say_what_to_do() -> None:
    watch = CrlWatch([entry(days=1)])
    (alarm,) = watch.due(T0 + 20 * H)
    fields = alarm.fields()
    assert fields["key"] == "route[0].customer.crl" and fields["path"] == "/pki/crl.pem"
    assert fields["seconds_left"] == 4 * 3600
    assert fields["next_update"] == "2026-11-02T00:00:00+00:00"
    assert "SIGHUP" in str(fields["detail"])
    (expired,) = watch.due(T0 + 26 * H)
    assert expired.fields()["seconds_since"] == 2 * 3600 and "crl_unusable" in str(expired.fields()["detail"])


def test_a_crl_without_next_update_never_alarms() -> None:
    watch = CrlWatch([entry(next_update=False)])
    assert watch.due(T0 + timedelta(days=3650)) == []
    assert watch.next_check(T0) is None

"""When siptap's own certificates and the CAs it trusts run out, say so a month ahead.

An expired server certificate makes every E-SBC refuse siptap; an expired client
certificate makes the core refuse it; an expired CA in ``client_ca`` or ``ca`` makes
siptap refuse every peer whose chain ends there. Nothing in OpenSSL says so at start-up.
``siptap check`` reports them (warns within ``WARN_BEFORE``, fails on an expired one);
while siptap runs, :class:`CertificateWatch` tells the app what to log and when, and the
gauge ``siptap_certificate_expiry_timestamp_seconds{key,subject}`` carries every notAfter
for an alert rule. Pure like :mod:`siptap.tls.crl_watch`: the clock is passed in.

Which certificates: every one in each configured ``cert`` file (the leaf and any
intermediates sent with it) and in each CA bundle (``client_ca``, ``ca``), named by the
config key of the file: the routes' TLS settings and the mirror outputs' over TLS
(``mirror.hep[0].cert``: an expired client certificate there makes the collector refuse
the mirror, and the capture goes blind). Policy: *expiring* once less than 30 days are left, reported at
once after start-up or reload, then daily; *expired* reported when it happens, then hourly.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from siptap.tls.alarm_repeat import RepeatLimit
from siptap.tls.pem import load_certificate_chain

if TYPE_CHECKING:
    from siptap.config import Config

WARN_BEFORE = timedelta(days=30)
REPEAT = {"expiring": timedelta(days=1), "expired": timedelta(hours=1)}


@dataclass(frozen=True, slots=True)
class CertificateEntry:
    """One certificate siptap presents or trusts: the config key naming its file, its validity."""

    key: str  # e.g. "route[0].customer.cert", "route[0].core_tls.ca"
    path: str
    subject: str
    not_after: datetime

    def state(self, now: datetime, *, warn_before: timedelta = WARN_BEFORE) -> str:
        """``ok``, ``expiring`` or ``expired`` at ``now``."""
        if now > self.not_after:
            return "expired"
        if now >= self.not_after - warn_before:
            return "expiring"
        return "ok"

    def describe(self, now: datetime) -> str:
        """For a person: ``certificate CN=x (file) expires in 12 days (2026-12-14 10:00 UTC)``."""
        left = self.not_after - now
        when = self.not_after.strftime("%Y-%m-%d %H:%M UTC")
        if left < timedelta(0):
            return f"{self.path}: certificate {self.subject} expired {_span(-left)} ago ({when})"
        return f"{self.path}: certificate {self.subject} expires in {_span(left)} ({when})"


def _span(delta: timedelta) -> str:
    if delta >= timedelta(days=2):
        return f"{delta.days} days"
    hours = int(delta.total_seconds() // 3600)
    return f"{hours} hours" if hours >= 2 else f"{int(delta.total_seconds() // 60)} minutes"


@dataclass(frozen=True, slots=True)
class CertificateAlarm:
    """One line to log: ``certificate_expiring`` (a warning) or ``certificate_expired`` (an error)."""

    event: str
    entry: CertificateEntry
    now: datetime

    def fields(self) -> dict[str, object]:
        seconds = int((self.entry.not_after - self.now).total_seconds())
        role = "the CA bundle" if self.entry.key.endswith("ca") else "siptap's own certificate"  # ca, client_ca
        return {
            "key": self.entry.key,
            "path": self.entry.path,
            "subject": self.entry.subject,
            "not_after": self.entry.not_after.isoformat(),
            "seconds_left" if seconds >= 0 else "seconds_since": abs(seconds),
            "detail": (f"a certificate in {role} has expired: peers (or siptap) refuse the handshakes it is in; "
                       "replace the file and reload (SIGHUP)") if self.event == "certificate_expired" else
                      (f"a certificate in {role} expires within {WARN_BEFORE.days} days: replace the file and "
                       "reload (SIGHUP) before then"),
        }


class CertificateWatch:
    """The certificates of one configuration; replace the watch on reload."""

    def __init__(self, entries: list[CertificateEntry]) -> None:
        self.entries = entries
        self._repeat = RepeatLimit()

    def due(self, now: datetime) -> list[CertificateAlarm]:
        alarms = []
        for index, entry in enumerate(self.entries):
            state = entry.state(now)
            if self._repeat.due(index, state, now, REPEAT.get(state, timedelta(0))):
                alarms.append(CertificateAlarm(f"certificate_{state}", entry, now))
        return alarms

    def next_check(self, now: datetime) -> datetime | None:
        """When :meth:`due` may next have something to say; None: no certificate configured."""
        times = []
        for index, entry in enumerate(self.entries):
            state = entry.state(now)
            last = self._repeat.last(index)
            if state == "ok":
                times.append(entry.not_after - WARN_BEFORE)
                continue
            if state == "expiring":
                times.append(entry.not_after + timedelta(seconds=1))
            times.append(last + REPEAT[state] if last is not None else now)
        return max(min(times), now) if times else None


def certificate_entries(config: Config) -> list[CertificateEntry]:
    """Every certificate the configuration presents or trusts, named by its config key.
    A file that does not load is left out: the context builders report it (start-up,
    ``siptap check``, reload) with the same key."""
    sections: list[tuple[str, object]] = []
    for index, route in enumerate(config.routes):
        sections += [(f"route[{index}].customer", route.customer), (f"route[{index}].core_tls", route.core_tls)]
        if route.reverse is not None:
            sections += [(f"route[{index}].reverse.core_side", route.reverse.core_side),
                         (f"route[{index}].reverse.customer_tls", route.reverse.customer_tls)]
    for kind, outputs in (("hep", config.mirror.hep), ("jsonl", config.mirror.jsonl)):
        sections += [(f"mirror.{kind}[{index}]", output) for index, output in enumerate(outputs)]
    entries = []
    for section, settings in sections:
        for name in ("cert", "client_ca", "ca"):
            path = getattr(settings, name, None)
            if not isinstance(path, Path):
                continue
            try:
                certificates = load_certificate_chain(path)
            except Exception:
                continue
            for certificate in certificates:
                entries.append(CertificateEntry(
                    key=f"{section}.{name}", path=str(path),
                    subject=certificate.subject.rfc4514_string(), not_after=certificate.not_valid_after_utc,
                ))
    return entries

"""When the CRLs siptap checks client certificates against run out, say so before it hurts.

A CRL is good until its nextUpdate. After that OpenSSL refuses every certificate of that
CA's clients (``crl_unusable``): for an operator, a trunk that was fine yesterday stops
taking calls. Start-up and reload already refuse an expired CRL file; this tells the time
in between. Pure: the clock is passed in, the caller logs what :meth:`CrlWatch.due`
returns and sleeps until :meth:`CrlWatch.next_check`.

Policy: a CRL is *expiring* once less than ``warn_window`` of its life is left, a quarter
of its validity period (thisUpdate..nextUpdate) capped at 24 hours, so a CRL published
daily warns 6 hours ahead and a monthly one a day ahead. The first check after start-up or
reload reports every expiring or expired CRL at once; later, a CRL that becomes expiring or
expired is reported when it does, and again every ``repeat`` (an hour) while it stays so.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from siptap.tls.alarm_repeat import RepeatLimit
from siptap.tls.pem import load_crls

if TYPE_CHECKING:
    from siptap.config import Config

WARN_CAP = timedelta(hours=24)
REPEAT = timedelta(hours=1)
# OpenSSL refuses with "CRL has expired" once its clock, in whole seconds, is past nextUpdate:
# during nextUpdate's own second the CRL still works (measured here).
OPENSSL_EXPIRES_AFTER = timedelta(seconds=1)


@dataclass(frozen=True, slots=True)
class CrlEntry:
    """One CRL in force: where the config names it, and its validity period."""

    key: str  # the config key that names the file, e.g. "route[0].customer.crl"
    path: str
    issuer: str
    this_update: datetime
    next_update: datetime | None  # None: the CRL never expires (no nextUpdate)

    @property
    def warn_window(self) -> timedelta:
        if self.next_update is None:
            return timedelta(0)
        return min(WARN_CAP, max(timedelta(0), (self.next_update - self.this_update) / 4))

    @property
    def expires(self) -> datetime:
        """When OpenSSL starts refusing (see OPENSSL_EXPIRES_AFTER)."""
        assert self.next_update is not None
        return self.next_update + OPENSSL_EXPIRES_AFTER

    def state(self, now: datetime) -> str:
        """``ok``, ``expiring`` or ``expired`` at ``now``."""
        if self.next_update is None:
            return "ok"
        if now >= self.expires:
            return "expired"
        if now >= self.next_update - self.warn_window:
            return "expiring"
        return "ok"


@dataclass(frozen=True, slots=True)
class CrlAlarm:
    """One line to log: ``event`` is ``crl_expiring`` (a warning) or ``crl_expired`` (an error)."""

    event: str
    entry: CrlEntry
    remaining: timedelta  # negative once expired

    def fields(self) -> dict[str, object]:
        seconds = int(self.remaining.total_seconds())
        next_update = self.entry.next_update
        return {
            "key": self.entry.key,
            "path": self.entry.path,
            "issuer": self.entry.issuer,
            "next_update": next_update.isoformat() if next_update else None,
            "seconds_left" if seconds >= 0 else "seconds_since": abs(seconds),
            "detail": (
                "every client certificate of this CA is refused (crl_unusable) until a fresh CRL is "
                "published and siptap reloaded (SIGHUP)" if self.event == "crl_expired" else
                "publish a fresh CRL and reload (SIGHUP) before nextUpdate, or every client certificate "
                "of this CA will be refused (crl_unusable)"
            ),
        }


class CrlWatch:
    """The CRLs of one configuration; replace the watch on reload."""

    def __init__(self, entries: list[CrlEntry], *, repeat: timedelta = REPEAT) -> None:
        self.entries = entries
        self.repeat = repeat
        self._repeat = RepeatLimit()

    def due(self, now: datetime) -> list[CrlAlarm]:
        alarms = []
        for index, entry in enumerate(self.entries):
            state = entry.state(now)
            if not self._repeat.due(index, state, now, self.repeat):
                continue
            event = "crl_expired" if state == "expired" else "crl_expiring"
            assert entry.next_update is not None
            alarms.append(CrlAlarm(event, entry, entry.next_update - now))
        return alarms

    def next_check(self, now: datetime) -> datetime | None:
        """When :meth:`due` may next have something to say; None: never (no CRL expires)."""
        times = []
        for index, entry in enumerate(self.entries):
            if entry.next_update is None:
                continue
            state = entry.state(now)
            if state == "ok":
                times.append(entry.next_update - entry.warn_window)
            elif state == "expiring":
                last = self._repeat.last(index)
                times.append(entry.expires)
                if last is not None:
                    times.append(last + self.repeat)
            else:
                last = self._repeat.last(index)
                times.append(last + self.repeat if last is not None else now)
        return max(min(times), now) if times else None


def crl_entries(config: Config) -> list[CrlEntry]:
    """Every CRL the configuration puts in force, named by its config key. The files were
    checked by the context builders already (start-up, reload); one that fails to load here
    is left out rather than raised."""
    entries = []
    for index, route in enumerate(config.routes):
        sections: list[tuple[str, object]] = [("customer", route.customer), ("core_tls", route.core_tls)]
        if route.reverse is not None:
            sections += [("reverse.core_side", route.reverse.core_side),
                         ("reverse.customer_tls", route.reverse.customer_tls)]
        for section, settings in sections:
            path = getattr(settings, "crl", None)
            if path is None:
                continue
            try:
                crls = load_crls(path)
            except Exception:
                continue
            for crl in crls:
                entries.append(CrlEntry(
                    key=f"route[{index}].{section}.crl", path=str(path), issuer=crl.issuer.rfc4514_string(),
                    this_update=crl.last_update_utc, next_update=crl.next_update_utc,
                ))
    return entries

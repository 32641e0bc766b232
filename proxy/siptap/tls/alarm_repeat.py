"""When a watch (CRL expiry, certificate expiry) says something again: the rate limit both share.

A watched file in a bad state ("expiring", "expired") is reported at once, then again only
after its state's repeat interval, or at once when the state changes; back to "ok", it is
forgotten, so a later relapse is reported at once too. Pure bookkeeping, no clock of its own:
the watches pass ``now``, which keeps their tests free of sleeps.
"""

from __future__ import annotations

from datetime import datetime, timedelta

__all__ = ["RepeatLimit"]


class RepeatLimit:
    """Per watched entry (by index): the state last reported, and when."""

    def __init__(self) -> None:
        self._reported: dict[int, tuple[str, datetime]] = {}

    def due(self, index: int, state: str, now: datetime, repeat: timedelta) -> bool:
        """Whether entry ``index`` in ``state`` is worth a line now; records it if so."""
        if state == "ok":
            self._reported.pop(index, None)
            return False
        last = self._reported.get(index)
        if last is not None and last[0] == state and now - last[1] < repeat:
            return False
        self._reported[index] = (state, now)
        return True

    def last(self, index: int) -> datetime | None:
        """When entry ``index`` was last reported (None: not since it was last "ok")."""
        last = self._reported.get(index)
        return None if last is None else last[1]

"""What to export and from where: the selected calls and window (:class:`Selection`), the input files (:class:`Sources`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from siptap.tools.calls.grouping import group_calls
from siptap.tools.calls.select import CallSelector, pick_calls
from siptap.tools.export.captures import CaptureScan, Message
from siptap.tools.export.errors import ExportError
from siptap.tools.export.times import iso


@dataclass(frozen=True, slots=True)
class Selection:
    """Which messages: a Call-ID among ``call_ids`` (exact, as RFC 3261 compares them) and a time in the window."""

    call_ids: frozenset[str] = frozenset()  # empty: any call
    since_us: int | None = None
    until_us: int | None = None
    asked: tuple[tuple[str, str], ...] = ()  # the selectors as given (option, value) that chose call_ids

    def in_window(self, ts_us: int) -> bool:
        return (self.since_us is None or ts_us >= self.since_us) and (self.until_us is None or ts_us <= self.until_us)

    def wants(self, message: Message) -> bool:
        if message.call_id is None:
            return False
        if self.call_ids and message.call_id not in self.call_ids:
            return False
        return self.in_window(message.ts_us)

    def describe(self) -> dict[str, object]:
        return {"call_ids": sorted(self.call_ids) or None,
                "since": iso(self.since_us) if self.since_us is not None else None,
                "until": iso(self.until_us) if self.until_us is not None else None,
                "asked": " ".join(f"{option} {value}" for option, value in self.asked) or None}


@dataclass(slots=True)
class Sources:
    """The inputs: from the config's ``[mirror]`` section unless given on the command line."""

    captures: Path
    prefix: str | None
    keylog: Path | None
    srtp: Path | None
    log: Path | None


def check_found(scan: CaptureScan, selection: Selection) -> None:
    """Refuse a Call-ID the captures do not hold, naming a few they do (the likeliest typo fixes)."""
    known = {m.call_id for m in scan.messages if m.call_id is not None}
    missing = sorted(selection.call_ids - known)
    if not missing:
        return
    # A few that exist, the most recent first: what an operator most likely meant.
    recent: list[str] = []
    for m in reversed(scan.messages):
        if m.call_id is not None and m.call_id not in recent:
            recent.append(m.call_id)
    shown = ", ".join(recent[:5]) + (f" (and {len(recent) - 5} more)" if len(recent) > 5 else "")
    which = ", ".join(missing)
    raise ExportError(f"Call-ID not found in {len(scan.files)} capture file(s): {which}; some that exist: {shown}",
                      "Call-IDs are compared exactly (case-sensitive)")


def resolve_selection(scan: CaptureScan, selector: CallSelector, *, several: bool = False) -> Selection:
    """The shared call selectors turned into what to export: a window alone keeps its meaning
    (every call's messages inside it); anything else picks calls (:func:`pick_calls`: an
    ambiguous selector lists the candidates), whose messages the window then bounds."""
    if not selector.picks_calls:
        return Selection(frozenset(), selector.since_us, selector.until_us)
    calls = pick_calls(group_calls(scan.messages), selector, several=several)
    if not calls:
        raise ExportError("the Call-ID(s) name calls that the other selectors leave out",
                          "`siptap calls` with the same selectors shows what is left")
    asked = tuple((f"--{name.replace('_', '-')}", str(value)) for name, values in selector.describe().items()
                  if isinstance(values, list) for value in values)
    return Selection(frozenset(c.call_id for c in calls), selector.since_us, selector.until_us, asked)

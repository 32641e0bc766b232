"""The call selectors `siptap calls` and `siptap export` share: options, matching, resolution.

A call is selected when it passes every selector given (each selector repeatable: any of
its values):

- ``--call-id ID``: the Call-ID exactly; else with or without its ``@host`` part
  (``abc`` finds ``abc@10.0.0.1``, ``abc@other`` finds ``abc@10.0.0.1`` too); else as a
  prefix (what a narrow terminal showed). The strongest kind that matches wins, so an exact
  Call-ID is never ambiguous because another one starts with it.
- ``--number TEXT``: a number or URI fragment in From, To, the Request-URI or
  P-Asserted-Identity (see :func:`siptap.tools.calls.parties.party_matches`).
- ``--status CLASS``: the final status: ``4xx`` (any class 1xx..6xx), an exact code
  (``486``), ``failed`` (4xx, 5xx, 6xx), ``answered`` (2xx) or ``none`` (no final response).
- ``--method M``: the call's first request (INVITE, OPTIONS, ...).
- ``--since``/``--until``: the call has a message in the window.

Listing keeps every call that passes. Exporting needs each ``--call-id`` to name one call,
and number/status/method selectors to find exactly one (unless ``--all``); otherwise the
candidates are listed (:func:`pick_calls`). Export applies the window to a named call's
messages itself, so a Call-ID outside the window is reported with the span the captures cover.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass

from siptap.errors import SiptapError
from siptap.tools.calls.grouping import Call
from siptap.tools.calls.parties import party_matches
from siptap.tools.calls.table import candidates_text

_CLASSES = {"1xx": (1,), "2xx": (2,), "3xx": (3,), "4xx": (4,), "5xx": (5,), "6xx": (6,),
            "failed": (4, 5, 6), "answered": (2,)}
_NONE = ("none", "unanswered")


class SelectionError(SiptapError):
    """A selector that cannot be used or that does not name what it must: one line plus a hint."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint


def parse_statuses(values: Sequence[str]) -> tuple[str, ...]:
    """``--status`` values (repeatable, comma-separated) as normalized tokens; refuse the unknown."""
    out: list[str] = []
    for value in values:
        for raw in value.split(","):
            token = raw.strip().lower()
            if not token:
                continue
            if token in _CLASSES or token in _NONE or (token.isdigit() and len(token) == 3 and token[0] in "123456"):
                out.append("none" if token in _NONE else token)
                continue
            raise SelectionError(f"--status {raw.strip()!r}: not a status class",
                                 "use 1xx..6xx, an exact code such as 486, failed (4xx-6xx), answered (2xx) or none")
    return tuple(dict.fromkeys(out))


def call_id_match(value: str, call_id: str) -> int:
    """How strongly ``value`` names ``call_id``: 3 exactly, 2 with/without the ``@host`` part,
    1 as a prefix, 0 not at all. Call-IDs compare case-sensitively (RFC 3261 section 20.8)."""
    if value == call_id:
        return 3
    if value.split("@", 1)[0] == call_id.split("@", 1)[0]:
        return 2
    return 1 if call_id.startswith(value) else 0


@dataclass(frozen=True, slots=True)
class CallSelector:
    call_ids: tuple[str, ...] = ()
    numbers: tuple[str, ...] = ()
    statuses: tuple[str, ...] = ()  # from parse_statuses
    methods: tuple[str, ...] = ()  # upper case
    since_us: int | None = None
    until_us: int | None = None

    @property
    def picks_calls(self) -> bool:
        """Whether anything but a time window was given (a window alone is a slice of time)."""
        return bool(self.call_ids or self.numbers or self.statuses or self.methods)

    @property
    def empty(self) -> bool:
        return not self.picks_calls and self.since_us is None and self.until_us is None

    def status_matches(self, status: int | None) -> bool:
        if not self.statuses:
            return True
        for token in self.statuses:
            if token == "none":
                if status is None:
                    return True
            elif status is not None and (str(status) == token or status // 100 in _CLASSES.get(token, ())):
                return True
        return False

    def in_window(self, call: Call) -> bool:
        return (self.since_us is None or call.end_us >= self.since_us) and \
            (self.until_us is None or call.start_us <= self.until_us)

    def matches(self, call: Call, *, call_ids: bool = True, window: bool = True) -> bool:
        """Every selector, or all but the Call-ID one and/or the window."""
        if call_ids and self.call_ids and not any(call_id_match(v, call.call_id) for v in self.call_ids):
            return False
        if self.numbers and not any(party_matches(n, call.parties()) for n in self.numbers):
            return False
        if self.methods and (call.method or "").upper() not in self.methods:
            return False
        return self.status_matches(call.status) and (not window or self.in_window(call))

    def describe(self) -> dict[str, object]:
        return {"call_id": list(self.call_ids) or None, "number": list(self.numbers) or None,
                "status": list(self.statuses) or None, "method": list(self.methods) or None}


def select_calls(calls: Sequence[Call], selector: CallSelector) -> list[Call]:
    """Listing: every call that passes every selector."""
    return [c for c in calls if selector.matches(c)]


def pick_calls(calls: Sequence[Call], selector: CallSelector, *, several: bool = False) -> list[Call]:
    """Exporting: each ``--call-id`` resolved to exactly one call (the strongest match), then
    the other selectors; with only number/status/method selectors more than one result is
    ambiguous unless ``several``. Errors list the candidates."""
    picked: list[Call] = []
    for value in selector.call_ids:
        scored = [(call_id_match(value, c.call_id), c) for c in calls]
        best = max((score for score, _ in scored), default=0)
        if best == 0:
            recent = [c.call_id for c in sorted(calls, key=lambda c: c.end_us, reverse=True)]
            shown = ", ".join(recent[:5]) + (f" (and {len(recent) - 5} more)" if len(recent) > 5 else "")
            raise SelectionError(f"Call-ID not found in the captures: {value}; some that exist: {shown}",
                                 "a Call-ID matches exactly, without its @host part, or as a prefix "
                                 "(case-sensitive); `siptap calls` lists them")
        found = [c for score, c in scored if score == best]
        if len(found) > 1:
            raise SelectionError(f"--call-id {value!r} is ambiguous: it matches {len(found)} calls\n"
                                 + candidates_text(found),
                                 "give more of the Call-ID (or the whole of it)")
        picked += [c for c in found if c not in picked]
    if selector.call_ids:
        # The window is left to the caller: export keeps a named call's messages inside it and
        # says so when there are none (with the span the captures cover).
        return [c for c in picked if selector.matches(c, call_ids=False, window=False)]
    chosen = select_calls(calls, selector)
    if not chosen:
        raise SelectionError("no call matches the selectors", "`siptap calls` with the same selectors lists "
                             "what there is; drop a selector to widen the search")
    if len(chosen) > 1 and not several:
        raise SelectionError(f"the selectors match {len(chosen)} calls\n" + candidates_text(chosen),
                             "add --call-id (a prefix is enough) to pick one, or --all to export every one of them")
    return chosen


def add_selector_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("call selectors (repeatable; a call must pass every selector given)")
    group.add_argument("--call-id", action="append", default=[], metavar="ID",
                       help="Call-ID: exact, without its @host part, or a prefix")
    group.add_argument("--number", "--uri", dest="number", action="append", default=[], metavar="TEXT",
                       help="number or URI fragment in From, To, Request-URI or P-Asserted-Identity")
    group.add_argument("--status", action="append", default=[], metavar="CLASS",
                       help="final status: 1xx..6xx, a code (486), failed (4xx-6xx), answered (2xx), none; "
                       "comma-separated")
    group.add_argument("--method", action="append", default=[], metavar="M", help="first request (INVITE, OPTIONS...)")
    group.add_argument("--since", metavar="TIME", help="calls with a message at or after TIME (ISO 8601 or epoch)")
    group.add_argument("--until", metavar="TIME", help="calls with a message at or before TIME")


def selector_from_args(args: argparse.Namespace) -> CallSelector:
    # Imported here: siptap.tools.export imports this module, so this one must not import it at load.
    from siptap.tools.export.times import parse_time

    since = parse_time(args.since) if args.since is not None else None
    until = parse_time(args.until) if args.until is not None else None
    if since is not None and until is not None and since > until:
        raise SelectionError(f"--since {args.since} is after --until {args.until}")
    return CallSelector(
        call_ids=tuple(dict.fromkeys(c.strip() for c in args.call_id if c.strip())),
        numbers=tuple(dict.fromkeys(n.strip() for n in args.number if n.strip())),
        statuses=parse_statuses(args.status),
        methods=tuple(dict.fromkeys(m.strip().upper() for m in args.method if m.strip())),
        since_us=since, until_us=until,
    )

"""`siptap calls` and the call selectors it shares with `siptap export`.

The pure parts, records in and results out: :mod:`.parties` (From/To/P-Asserted-Identity
URIs and user parts, number matching), :mod:`.grouping` (captured messages -> one
:class:`Call` per Call-ID, with its first request and final status), :mod:`.select` (the
selectors: options, matching, the resolution export needs), :mod:`.table` (text table and
JSON records). :mod:`.command` is the command line; it reads the captures with
:mod:`siptap.tools.export`'s reader and is imported by :mod:`siptap.cli` only, so that
:mod:`siptap.tools.export` can import the selectors without a cycle.
"""

from siptap.tools.calls.grouping import Call, group_calls
from siptap.tools.calls.parties import party_matches, uri_of, user_of
from siptap.tools.calls.select import CallSelector, SelectionError, parse_statuses, pick_calls, select_calls

__all__ = [
    "Call",
    "CallSelector",
    "SelectionError",
    "group_calls",
    "parse_statuses",
    "party_matches",
    "pick_calls",
    "select_calls",
    "uri_of",
    "user_of",
]

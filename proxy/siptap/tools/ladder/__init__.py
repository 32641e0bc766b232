"""Ladder (sequence) diagrams of calls: E-SBC | siptap | core, one arrow per captured message.

:mod:`.model` computes the ladder from the captured messages and what is known of each flow
(pure, data in and rows out); :mod:`.text` draws it for a terminal and ``summary.txt``,
:mod:`.svg` as a self-contained HTML page with inline SVG (``ladder.html`` in an export
bundle, ``siptap flow --html``). :mod:`.command` is `siptap flow`; like
:mod:`siptap.tools.calls.command` it is imported by :mod:`siptap.cli` only, so that
:mod:`siptap.tools.export` can draw ladders without an import cycle.
"""

from siptap.tools.ladder.model import (
    Column,
    FlowLeg,
    Ladder,
    LegTls,
    Row,
    build_ladder,
    build_ladders,
    infer_legs,
    pairs,
)
from siptap.tools.ladder.text import ladder_lines, ladders_text

__all__ = [
    "Column",
    "FlowLeg",
    "Ladder",
    "LegTls",
    "Row",
    "build_ladder",
    "build_ladders",
    "infer_legs",
    "ladder_lines",
    "ladders_text",
    "pairs",
]

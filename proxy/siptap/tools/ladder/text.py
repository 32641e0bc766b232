"""The ladder as text for a terminal and for ``summary.txt``: three lanes, one arrow a line.

```
                    E-SBC                             siptap                            core
                    127.0.0.1:40332                   127.0.0.1:32981                   127.0.0.1:42997
                    TLSv1.2 AES256-GCM-SHA384         127.0.0.1:55206                   TLSv1.3 TLS_AES_256_GCM_SHA384
      +s       Δs
    +0.000   Δ0.000 |--INVITE------------------------>|                                 |  CSeq 1 INVITE  sip:486@...  SDP offer
    +0.000   Δ0.000 |                                 |<==486 Busy Here=================|  CSeq 1 INVITE  ✗ failed
```

Relative times: seconds since the call's first message and since the line before. A failed
response (>= 400) is drawn with ``=`` and marked; SDP offer/answer and SDES keys (``a=crypto``,
the keys themselves are in ``srtp-keys.log``) are noted after the lanes, with the CSeq and a
request's Request-URI (on the copy siptap received; its relayed copy is the same).
"""

from __future__ import annotations

from collections.abc import Iterable

from siptap.tools.calls.table import iso
from siptap.tools.ladder.model import Column, Ladder, LegTls, Row

LANE = 34  # characters from one lane to the next
_TIMES = 19  # width of the "+s Δs" prefix: the header's cells start at the lanes


def _fit(text: str, width: int) -> str:
    return text if len(text) <= width else text[:width - 1] + "…"


def tls_lines(tls: LegTls) -> list[str]:
    """A leg's TLS facts as short lines (each fits a lane when it can)."""
    lines = [" ".join(v for v in (tls.version, tls.cipher) if v) or "TLS -"]
    if tls.key_exchange:
        lines.append(f"key exchange {tls.key_exchange}")
    if tls.peer_subject:
        lines.append(f"cert {tls.peer_subject}")
    if tls.peer_not_after:
        lines.append(f"notAfter {tls.peer_not_after}")
    return lines


def column_lines(column: Column, several_conns: bool) -> list[str]:
    lines = [column.name, *column.addresses]
    for tls in column.tls:
        if several_conns and tls.conn:
            lines.append(f"conn {tls.conn}:")
        lines += tls_lines(tls)
    return lines


def _header(ladder: Ladder) -> list[str]:
    several = len({t.conn for c in ladder.columns for t in c.tls}) > 1
    cells = [column_lines(c, several) for c in ladder.columns]
    height = max(len(c) for c in cells)
    lines = []
    for i in range(height):
        parts = [(cells[k][i] if i < len(cells[k]) else "") for k in range(3)]
        line = " " * _TIMES + _fit(parts[0], LANE - 1).ljust(LANE) + _fit(parts[1], LANE - 1).ljust(LANE) + parts[2]
        lines.append(line.rstrip())
    lines.append(f"{'+s':>9} {'Δs':>8}")
    return lines


def arrow(row: Row) -> str:
    """The lanes of one row with its arrow: ``|--LABEL---->|`` or ``|<==486 Busy Here===|``."""
    cells = [" "] * (2 * LANE + 1)
    for lane in range(3):
        cells[lane * LANE] = "|"
    left, right = sorted((row.src, row.dst))
    a, b = left * LANE + 1, right * LANE - 1  # the arrow's first and last character
    fill = "=" if row.failed else "-"
    for x in range(a, b + 1):
        cells[x] = fill
    rightward = row.dst > row.src
    if rightward:
        cells[b] = ">"
    else:
        cells[a] = "<"
    label = _fit(row.label + (" ✗" if row.failed else ""), b - a - 4)
    start = a + 2 if rightward else a + 3
    cells[start:start + len(label)] = list(label)
    return "".join(cells)


def notes(row: Row) -> str:
    parts = [f"CSeq {row.cseq}" if row.cseq else "CSeq -"]
    if row.request_uri and row.relay_of is None:
        parts.append(row.request_uri)
    if row.sdp:
        parts.append(f"SDP {row.sdp}")
    if row.crypto:
        parts.append("a=crypto (SRTP keys)")
    if row.failed:
        parts.append("failed")
    return "  ".join(parts)


def ladder_lines(ladder: Ladder) -> list[str]:
    """The header (columns, addresses, TLS facts) and one line per message."""
    lines = _header(ladder)
    for row in ladder.rows:
        times = f"{'+%.3f' % (row.offset_us / 1e6):>9} {'Δ%.3f' % (row.delta_us / 1e6):>8} "
        lines.append(f"{times}{arrow(row)}  {notes(row)}".rstrip())
    if ladder.unplaced:
        lines.append("note: leg guessed (no key-log or log entry names it): " + ", ".join(ladder.unplaced))
    return lines


def ladders_text(ladders: Iterable[Ladder]) -> str:
    """Every ladder with a title line: what `siptap flow` prints."""
    out: list[str] = []
    for ladder in ladders:
        if out:
            out.append("")
        conns = sorted({r.conn for r in ladder.rows if r.conn})
        out.append(f"call {ladder.call_id}: {ladder.outcome}, started {iso(ladder.start_us)}, {len(ladder.rows)} messages"
                   + (f", connection(s) {', '.join(conns)}" if conns else ""))
        out += ladder_lines(ladder)
    return "\n".join(out) + "\n" if out else ""

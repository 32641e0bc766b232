"""The ladder as a self-contained HTML page with inline SVG: ``ladder.html`` of a bundle, ``siptap flow --html``.

Self-contained on purpose: the page is handed to a vendor and opened offline, so it has no
script, no external style, font, image or link, and a Content-Security-Policy that forbids
loading any (``default-src 'none'``). Every text taken from SIP (labels, Request-URIs, the
Call-ID, addresses) or from certificates is escaped: a hostile peer's From header must not
become markup in the engineer's browser.

Each arrow is a ``<g class="msg">`` holding a ``<title>`` (the message's start line, addresses and
time: the tooltip) and its texts, in the order of the rows, so the DOM reads as the call did.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from html import escape

from siptap.tools.calls.table import iso
from siptap.tools.ladder.model import Ladder, Row
from siptap.tools.ladder.text import column_lines

LANES = (270, 570, 870)  # x of the three lifelines
BOX = 284  # width of a column's header box
BOX_CHARS = 37  # monospace characters a header box line holds; longer ones end in "…" (the tooltip has all)
NOTES_X = 905
WIDTH = 1360
LINE = 16  # header line height
ROW = 30  # arrow spacing

_STYLE = """
body { font-family: "DejaVu Sans", "Liberation Sans", Arial, sans-serif; margin: 16px; color: #1b1b1b; background: #fff; }
h1 { font-size: 20px; margin: 0 0 4px 0; }
h2 { font-size: 16px; margin: 24px 0 4px 0; font-family: "DejaVu Sans Mono", monospace; word-break: break-all; }
p { margin: 2px 0; font-size: 13px; }
.legend { color: #555; }
svg { display: block; margin-top: 8px; }
svg text { font-size: 13px; }
.box { fill: #f3f6fa; stroke: #8aa1b8; }
.name { font-weight: bold; font-size: 15px; }
.mono, .time, .notes { font-family: "DejaVu Sans Mono", monospace; font-size: 12px; }
.lifeline { stroke: #8aa1b8; stroke-dasharray: 4 4; }
.msg line { stroke: #24527a; stroke-width: 1.5; }
.msg polygon { fill: #24527a; }
.msg .label { fill: #102a43; }
.msg.failed line { stroke: #c62828; stroke-width: 2.5; }
.msg.failed polygon { fill: #c62828; }
.msg.failed .label { fill: #c62828; font-weight: bold; }
.time { fill: #333; }
.delta { fill: #888; }
.uri { fill: #666; }
.sdp { fill: #1565c0; font-weight: bold; }
.crypto { fill: #b26a00; font-weight: bold; }
.bad { fill: #c62828; font-weight: bold; }
"""


def _t(text: object) -> str:
    return escape(str(text), quote=True)


def _header(ladder: Ladder) -> tuple[list[str], int]:
    several = len({t.conn for c in ladder.columns for t in c.tls}) > 1
    cells = [column_lines(c, several) for c in ladder.columns]
    height = 14 + LINE * max(len(c) for c in cells)
    out: list[str] = []
    for x, lines in zip(LANES, cells):
        left = x - BOX // 2
        out.append(f'<rect class="box" x="{left}" y="4" width="{BOX}" height="{height}" rx="6"/>')
        for i, line in enumerate(lines):
            css = "name" if i == 0 else "mono"
            shown = line if len(line) <= BOX_CHARS else line[:BOX_CHARS - 1] + "…"
            tip = f"<title>{_t(line)}</title>" if shown != line else ""
            out.append(f'<text class="{css}" x="{left + 10}" y="{22 + i * LINE}">{tip}{_t(shown)}</text>')
    return out, height + 4


def _arrow(row: Row, y: int) -> list[str]:
    x1, x2 = LANES[row.src], LANES[row.dst]
    step = 1 if x2 > x1 else -1
    tip = x2 - 2 * step
    head = f"{tip},{y} {tip - 10 * step},{y - 5} {tip - 10 * step},{y + 5}"
    title = f"{row.start_line}\n{row.src_address} -> {row.dst_address}  ({row.leg} leg"
    title += f", conn {row.conn})" if row.conn else ")"
    title += f"\n{iso(row.time_us)}"
    label = row.label + (" ✗" if row.failed else "")
    out = [f'<g class="msg{" failed" if row.failed else ""}" data-row="{row.index}">',
           f"<title>{_t(title)}</title>",
           f'<text class="time" x="12" y="{y + 4}">+{row.offset_us / 1e6:.3f}</text>',
           f'<text class="delta time" x="92" y="{y + 4}">Δ{row.delta_us / 1e6:.3f}</text>',
           f'<line x1="{x1 + 2 * step}" y1="{y}" x2="{tip - 8 * step}" y2="{y}"/>',
           f'<polygon points="{head}"/>',
           f'<text class="label" x="{(x1 + x2) // 2}" y="{y - 6}" text-anchor="middle">{_t(label)}</text>',
           f'<text class="notes" x="{NOTES_X}" y="{y + 4}">{_notes(row)}</text>',
           "</g>"]
    return out


def _notes(row: Row) -> str:
    parts = [f"<tspan>CSeq {_t(row.cseq or '-')}</tspan>"]
    if row.sdp:
        parts.append(f'<tspan class="sdp"> SDP {row.sdp}</tspan>')
    if row.crypto:
        parts.append('<tspan class="crypto"> a=crypto</tspan>')
    if row.request_uri and row.relay_of is None:
        uri = row.request_uri if len(row.request_uri) <= 44 else row.request_uri[:43] + "…"
        parts.append(f'<tspan class="uri"> {_t(uri)}</tspan>')
    return "".join(parts)


def ladder_svg(ladder: Ladder) -> str:
    """One call's ladder as an ``<svg>`` element."""
    header, top = _header(ladder)
    first = top + 36
    bottom = first + ROW * max(len(ladder.rows) - 1, 0) + 24
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{bottom + 8}" '
             f'viewBox="0 0 {WIDTH} {bottom + 8}" role="img" aria-label="{_t("ladder of call " + ladder.call_id)}">']
    parts += header
    parts += [f'<line class="lifeline" x1="{x}" y1="{top}" x2="{x}" y2="{bottom}"/>' for x in LANES]
    parts.append(f'<text class="delta time" x="12" y="{top + 14}">+s since start, Δs since the arrow before</text>')
    for i, row in enumerate(ladder.rows):
        parts += _arrow(row, first + i * ROW)
    parts.append("</svg>")
    return "\n".join(parts)


def ladders_html(ladders: Sequence[Ladder], *, title: str, notes: Iterable[str] = ()) -> str:
    """The whole page: a section per call."""
    body: list[str] = []
    for ladder in ladders:
        conns = sorted({r.conn for r in ladder.rows if r.conn})
        failed = sum(1 for r in ladder.rows if r.failed and r.relay_of is None)  # a relayed copy is the same response
        body += ['<section class="call">',
                 f"<h2>call {_t(ladder.call_id)}</h2>",
                 f"<p>{_t(ladder.outcome)}; started {_t(iso(ladder.start_us))}; {len(ladder.rows)} messages"
                 + (f"; connection(s) {_t(', '.join(conns))}" if conns else "")
                 + (f'; <span class="bad">{failed} failed response(s)</span>' if failed else "") + "</p>"]
        if ladder.unplaced:
            body.append(f"<p>leg guessed (no key-log or log entry names it): {_t(', '.join(ladder.unplaced))}</p>")
        body += [ladder_svg(ladder), "</section>"]
    if not ladders:
        body.append("<p>no call</p>")
    legend = ("Columns: the customer's E-SBC, siptap and the core, with their addresses and each leg's TLS facts "
              "(version, suite, key exchange, the peer's certificate). A message siptap relayed shows twice: as "
              "received, then as relayed. Red: a response of 400 or more. SDP offer/answer and a=crypto (the SDP "
              "carries SRTP keys; they are in srtp-keys.log, not here). Hover an arrow for its start line, "
              "addresses and time.")
    return "\n".join([
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\">",
        f"<title>{_t(title)}</title>",
        f"<style>{_STYLE}</style>",
        "</head>",
        "<body>",
        f"<h1>{_t(title)}</h1>",
        *(f'<p class="legend">{_t(note)}</p>' for note in notes),
        f'<p class="legend">{_t(legend)}</p>',
        *body,
        "</body>",
        "</html>",
        "",
    ])

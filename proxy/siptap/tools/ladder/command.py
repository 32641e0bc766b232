"""`siptap flow`'s command line: the ladder of the selected calls from the captures, without a bundle (wired into siptap.cli).

The selectors and sources are `siptap export`'s (a flow you looked at exports with the same
options); the captures are read, and the key log and JSON log placed on the ladder, as export
does. The text ladder goes to stdout; ``--html FILE`` also writes the picture, 0600 like every
capture output (it holds SIP cleartext), refusing to replace a file unless ``--force``.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from siptap.tools.calls.select import add_selector_arguments, selector_from_args
from siptap.tools.export.bundle import read_scan, read_source_text
from siptap.tools.export.command import add_source_arguments, sources_from_args
from siptap.tools.export.errors import ExportError
from siptap.tools.export.json_log import LogFacts, parse_json_log
from siptap.tools.export.keylog import flow_entries, parse_keylog
from siptap.tools.export.legs import flow_legs
from siptap.tools.export.selection import check_found, resolve_selection
from siptap.tools.export.times import iso
from siptap.tools.ladder.model import build_ladders
from siptap.tools.ladder.svg import ladders_html
from siptap.tools.ladder.text import ladders_text


def add_parser(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = subparsers.add_parser(
        "flow", parents=[common],
        help="ladder diagram of the selected calls from the captures: text, or --html FILE for the picture",
        description="Draw the selected calls (the selectors of `siptap calls` and `siptap export`) as ladders: "
        "columns E-SBC | siptap | core with their addresses and each leg's TLS facts, one arrow per SIP message "
        "with method or status and CSeq, times since the call's start and since the message before, SDP "
        "offer/answer and a=crypto markers, failed responses (>= 400) marked. A message siptap relayed shows on "
        "both legs: received, then relayed.",
        epilog="Paths default to the config's [mirror] section; --captures/--keylog/--srtp override it; --log adds "
        "key exchange and peer certificates. A window alone draws every call with a message inside it; other "
        "selectors must name one call (or add --all), and an ambiguous one lists the candidates. exit status: 0 "
        "drawn, 1 nothing selected, an ambiguous selector or a file problem",
    )
    add_selector_arguments(p)
    p.add_argument("--all", dest="several", action="store_true",
                   help="draw every call the number/status/method selectors match, not just one")
    add_source_arguments(p)
    p.add_argument("--html", type=Path, metavar="FILE",
                   help="also write the ladder as a self-contained HTML page (inline SVG, opens offline; 0600)")
    p.add_argument("--force", action="store_true", help="replace an existing --html FILE")


def run_from_args(args: argparse.Namespace) -> int:
    selector = selector_from_args(args)
    if selector.empty:
        raise ExportError("nothing selected", "give --call-id ID, --number, --status, --method and/or --since/--until "
                          "(`siptap calls` lists the calls)")
    html_path: Path | None = args.html
    if html_path is not None and (html_path.exists() or html_path.is_symlink()) and not args.force:
        raise ExportError(f"{html_path} already exists", "choose another --html FILE, or add --force to replace it")
    sources = sources_from_args(args)
    scan = read_scan(sources)
    selection = resolve_selection(scan, selector, several=args.several)
    check_found(scan, selection)
    chosen = [m for m in scan.messages if selection.wants(m)]
    if not chosen:
        raise ExportError("no selected message in the window",
                          f"the captures cover {iso(scan.first_us or 0)} .. {iso(scan.last_us or 0)}")
    warnings = list(scan.warnings)
    entries = parse_keylog(read_source_text(sources.keylog, "key log", warnings,
                                            "legs are told apart by the messages siptap relayed"))
    log = parse_json_log(read_source_text(sources.log, "JSON log", warnings)) if sources.log else LogFacts()
    ladders = build_ladders(chosen, flow_legs(flow_entries(chosen, entries, log), entries, log))
    for warning in warnings:
        print(f"siptap: warning: {warning}", file=sys.stderr)
    try:
        sys.stdout.write(ladders_text(ladders))
        sys.stdout.flush()
    except BrokenPipeError:
        # `siptap flow ... | head`: as `siptap calls` does, stop quietly.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    if html_path is not None:
        asked = " ".join(f"{option} {value}" for option, value in selection.asked) or "a time window"
        page = ladders_html(ladders, title=f"siptap flow: {len(ladders)} call(s)", notes=[f"selection: {asked}"])
        write_private(html_path, page.encode())
        print(f"wrote {html_path}: {len(ladders)} call(s), {sum(len(ld.rows) for ld in ladders)} messages",
              file=sys.stderr)
    return 0


def write_private(path: Path, data: bytes) -> None:
    """Write ``path`` 0600 (SIP cleartext) through a temporary sibling, so a reader never sees half a page."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except FileNotFoundError:
        raise ExportError(f"{path.parent}: folder not found", "create it, or give another --html FILE") from None
    except OSError as exc:
        raise ExportError(f"{path}: cannot write: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise

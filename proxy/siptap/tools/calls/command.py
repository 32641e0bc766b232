"""`siptap calls`'s command line: the calls in siptap's captures, as a table or as JSON (wired into siptap.cli)."""

from __future__ import annotations

import argparse
import json
import os
import sys

from siptap.tools.calls.grouping import Flow, group_calls
from siptap.tools.calls.select import add_selector_arguments, select_calls, selector_from_args
from siptap.tools.calls.table import record, table
from siptap.tools.export.bundle import read_scan, read_source_text
from siptap.tools.export.command import add_source_arguments, sources_from_args
from siptap.tools.export.json_log import LogFacts, parse_json_log
from siptap.tools.export.keylog import flow_entries, parse_keylog

# Keepalive pings are calls to SIP (one Call-ID each) but not to the person looking for one.
_HIDDEN_BY_DEFAULT = ("OPTIONS",)


def add_parser(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = subparsers.add_parser(
        "calls", parents=[common],
        help="list the calls in the captures: start, Call-ID, From/To, first request, final status, duration",
        description="One line per call (per Call-ID) found in siptap's cleartext captures, oldest first: start "
        "time, duration (first to last message), first request, final status (of that request), From and To "
        "users, the siptap connection (from the key log; else the TCP flow) and the Call-ID. The selectors are "
        "those of `siptap export`, so a listed call exports with the same options.",
        epilog="OPTIONS pings are left out unless --method OPTIONS asks for them. Times are ISO 8601 (no zone = "
        "UTC) or epoch seconds; the table shows UTC. exit status: 0 the captures were read (even if no call "
        "matches), 1 no captures or a bad option",
    )
    add_selector_arguments(p)
    add_source_arguments(p)
    p.add_argument("--json", action="store_true", help="a JSON array of calls (every field, ISO and epoch times)")


def run_from_args(args: argparse.Namespace) -> int:
    selector = selector_from_args(args)
    sources = sources_from_args(args)
    scan = read_scan(sources)
    warnings = list(scan.warnings)
    entries = parse_keylog(read_source_text(sources.keylog, "key log", warnings,
                                            "connections are shown as TCP flows, not siptap connection ids"))
    log = parse_json_log(read_source_text(sources.log, "JSON log", warnings)) if sources.log else LogFacts()
    by_flow = flow_entries(scan.messages, entries, log)

    def conns_of(flow: Flow) -> list[str]:
        return sorted({e.conn for e in by_flow.get(flow, [])})

    calls = group_calls(scan.messages, conns_of)
    hidden = 0
    if not selector.methods:
        shown = [c for c in calls if c.method not in _HIDDEN_BY_DEFAULT]
        hidden, calls = len(calls) - len(shown), shown
    chosen = select_calls(calls, selector)
    for warning in warnings:
        print(f"siptap: warning: {warning}", file=sys.stderr)
    try:
        if args.json:
            print(json.dumps([record(c) for c in chosen], indent=2))
            return 0
        if chosen:
            sys.stdout.write(table(chosen))
        sys.stdout.flush()
    except BrokenPipeError:
        # `siptap calls | head`: the reader has what it wanted. Point stdout at /dev/null so the
        # interpreter's final flush does not raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    notes = [f"{len(chosen)} call(s)" if selector.empty else f"{len(chosen)} of {len(calls)} call(s)"]
    if hidden:
        notes.append(f"{hidden} OPTIONS ping(s) not listed (--method OPTIONS lists them)")
    print("; ".join(notes), file=sys.stderr)
    return 0

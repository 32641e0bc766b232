"""`siptap export`'s command line: argparse, the sources from the config or the options, the run (wired into siptap.cli)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from siptap.tools.calls.select import add_selector_arguments, selector_from_args
from siptap.tools.export.archive import write_bundle
from siptap.tools.export.bundle import build_bundle, read_scan
from siptap.tools.export.errors import ExportError
from siptap.tools.export.selection import Sources, resolve_selection


def add_parser(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = subparsers.add_parser(
        "export", parents=[common],
        help="escalation bundle for a vendor: the selected calls' cleartext pcapng, their SRTP lines, a summary",
        description="Select calls (by Call-ID, number, status, method and/or time window: the selectors of "
        "`siptap calls`) from siptap's captures (cleartext pcap sink, key log, SRTP keys, optionally the JSON log) "
        "and write one bundle folder plus a .tar.gz of it: calls.pcapng (just those calls' SIP messages, in "
        "cleartext), srtp-keys.log (only those calls), summary.txt/summary.json (call flow as a ladder, TLS facts), "
        "ladder.html (the ladders as a self-contained page for a browser) and, with "
        "--with-keys, keys.log (only the connections that carried them). Nothing from other calls is copied.",
        epilog="Paths default to the config's [mirror] section; --captures/--keylog/--srtp override it. Times are ISO "
        "8601 (no zone = UTC) or epoch seconds. A window alone exports every call's messages inside it; other "
        "selectors must name one call (or add --all), and an ambiguous one lists the candidates. TLS keys decrypt "
        "the whole connection, including other calls it carried, for whoever also holds a raw capture of it: "
        "they are left out unless --with-keys, and then the summary says which other calls they open. "
        "exit status: 0 bundle written, 1 nothing to export, an ambiguous selector or a file problem",
    )
    add_selector_arguments(p)
    p.add_argument("--all", dest="several", action="store_true",
                   help="export every call the number/status/method selectors match, not just one")
    add_source_arguments(p)
    p.add_argument("--with-keys", dest="keys", action="store_true",
                   help="add keys.log (and embed it in calls.pcapng): the key lines of the connections involved")
    p.add_argument("--no-keys", dest="keys", action="store_false", help=argparse.SUPPRESS)  # the default since --with-keys
    p.add_argument("--out", "-o", type=Path, required=True, metavar="DIR", help="bundle folder to create")
    p.add_argument("--force", action="store_true", help="replace an existing bundle folder and archive")


def add_source_arguments(p: argparse.ArgumentParser) -> None:
    """Where the captures are: the config's [mirror] section, or these options (shared with `siptap calls`)."""
    p.add_argument("--config", "-c", type=Path, default=None,
                   help="config whose [mirror] section names the files (default: config.toml)")
    p.add_argument("--captures", type=Path, metavar="DIR", help="pcap sink folder (or one capture file)")
    p.add_argument("--keylog", type=Path, metavar="FILE", help="NSS key-log file")
    p.add_argument("--srtp", type=Path, metavar="FILE", help="SRTP keys file")
    p.add_argument("--log", type=Path, metavar="FILE", help="siptap's JSON log (stdout of `siptap run`), for TLS facts")


def sources_from_args(args: argparse.Namespace) -> Sources:
    config_path: Path | None = args.config
    need_config = config_path is not None or args.captures is None or args.keylog is None or args.srtp is None
    mirror = None
    if need_config:
        from siptap.config import load_config

        path = config_path or Path("config.toml")
        if config_path is None and not path.exists():
            if args.captures is None:
                raise ExportError(f"{path} not found, and no --captures given",
                                  "give --config FILE, or --captures DIR [--keylog FILE --srtp FILE]")
        else:
            mirror = load_config(path).mirror
    captures = args.captures or (mirror.pcap.directory if mirror and mirror.pcap else None)
    if captures is None:
        raise ExportError("no capture folder: the config has no [mirror.pcap] section", "give --captures DIR")
    prefix = None if args.captures else (mirror.pcap.prefix if mirror and mirror.pcap else None)
    keylog = args.keylog or (mirror.keylog.path if mirror and mirror.keylog else None)
    srtp = args.srtp or (mirror.srtp_keys.path if mirror and mirror.srtp_keys else None)
    if args.log is not None and not args.log.is_file():
        raise ExportError(f"{args.log}: JSON log not found")
    return Sources(captures=captures, prefix=prefix, keylog=keylog, srtp=srtp, log=args.log)


def run_from_args(args: argparse.Namespace) -> int:
    selector = selector_from_args(args)
    if selector.empty:
        raise ExportError("nothing selected", "give --call-id ID, --number, --status, --method and/or --since/--until "
                          "(`siptap calls` lists the calls)")
    sources = sources_from_args(args)
    out: Path = args.out
    if (out.exists() or out.with_name(out.name + ".tar.gz").exists()) and not args.force:
        # Before reading anything: the cheap refusal first.
        raise ExportError(f"{out if out.exists() else out.with_name(out.name + '.tar.gz')} already exists",
                          "choose another --out, or add --force to replace it")
    scan = read_scan(sources)
    selection = resolve_selection(scan, selector, several=args.several)
    bundle = build_bundle(sources, selection, keys=args.keys, scan=scan)
    write_bundle(bundle, out, force=args.force)
    for warning in bundle.warnings:
        print(f"siptap: warning: {warning}", file=sys.stderr)
    files = bundle.summary["files"]
    calls = bundle.summary["calls"]
    keys = files["keys.log"]
    print(f"wrote {out}/ and {out}.tar.gz: {len(calls)} call(s), {files['calls.pcapng']['messages']} SIP messages, "
          + (f"{keys['lines']} key-log lines of {keys['connections']} connection(s), " if args.keys else "no TLS keys, ")
          + f"{files['srtp-keys.log']['lines']} SRTP key line(s)")
    if bundle.also_decrypted:
        print(f"note: with keys.log, a raw capture of these connections also decrypts {len(bundle.also_decrypted)} "
              "other call(s):")
        for call in bundle.also_decrypted:
            print(f"  {call.call_id}")
    return 0

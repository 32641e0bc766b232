"""`siptap probe`'s command line: the target's syntax, the argparse subcommand, the run (wired into siptap.cli)."""

from __future__ import annotations

import argparse
import functools
import json
import sys
from pathlib import Path
from typing import TextIO

import trio

from siptap.tools.probe.report import ProbeError
from siptap.tools.probe.scan import probe
from siptap.tools.probe.table import format_table

DEFAULT_PORT = 5061


def parse_target(text: str, default_port: int = DEFAULT_PORT) -> tuple[str, int]:
    """``host``, ``host:port``, ``[v6]`` or ``[v6]:port`` -> (host, port)."""
    raw = text.strip()
    port_text = ""
    if raw.startswith("["):
        end = raw.find("]")
        if end < 0:
            raise ProbeError(f"{text!r}: unclosed [ in IPv6 address", "write IPv6 targets as [addr]:port")
        host, rest = raw[1:end], raw[end + 1:]
        if rest and not rest.startswith(":"):
            raise ProbeError(f"{text!r}: expected [IPv6]:port", "write IPv6 targets as [addr]:port")
        port_text = rest[1:]
        if rest == ":":
            raise ProbeError(f"{text!r}: missing port after ':'")
    elif raw.count(":") == 1:
        host, port_text = raw.split(":")
        if not port_text:
            raise ProbeError(f"{text!r}: missing port after ':'")
    elif raw.count(":") > 1:
        raise ProbeError(f"{text!r}: ambiguous IPv6 address", "write IPv6 targets as [addr]:port")
    else:
        host = raw
    if not host:
        raise ProbeError(f"{text!r}: missing host", "usage: siptap probe HOST[:PORT]")
    if not port_text:
        return host, default_port
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ProbeError(f"{text!r}: port must be 1..65535")
    return host, int(port_text)


def add_parser(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = subparsers.add_parser(
        "probe", parents=[common],
        help="scan a SIP-over-TLS endpoint: TLS versions, every suite per version, features, certificate, "
        "client-cert request, SIP OPTIONS",
        description="Probe a customer's or a core's SIP-over-TLS endpoint, one TCP connection per attempt: per TLS "
        "version (SSLv3 to TLS 1.3) every IANA cipher suite it accepts, also those this OpenSSL cannot negotiate "
        "(read from the ServerHello to hand-built ClientHellos); whether RSA key exchange is possible; extended "
        "master secret, encrypt-then-MAC, secure renegotiation, session-ID and ticket resumption, OCSP stapling; "
        "its certificate chain and what is wrong with it; whether it requires a client certificate (and which CAs "
        "it names); and the response line to a SIP OPTIONS. On a terminal, progress goes to stderr.",
        epilog="exit status: 0 the endpoint was probed (whatever it accepts), 1 it could not be reached or "
        "spoke no TLS, or an argument was unusable",
    )
    p.add_argument("target", metavar="HOST[:PORT]", help=f"the endpoint; port defaults to {DEFAULT_PORT}; IPv6 as [addr]:port")
    p.add_argument("--server-name", metavar="NAME",
                   help="SNI, SIP domain, and the name the certificate must match (default: HOST)")
    p.add_argument("--cert", type=Path, metavar="PEM", help="client certificate (chain) to present if the endpoint asks")
    p.add_argument("--key", type=Path, metavar="PEM", help="private key of --cert")
    p.add_argument("--ca", type=Path, metavar="PEM",
                   help="CA bundle to check the endpoint's chain against (default: trust is not checked)")
    p.add_argument("--timeout", type=float, default=5.0, metavar="SECONDS",
                   help="per connection: connect, handshake, SIP response (default: %(default)s)")
    p.add_argument("--no-sip", dest="sip", action="store_false", help="do not send a SIP OPTIONS")
    p.add_argument("--json", action="store_true", help="print the report as JSON")


class TerminalProgress:
    """One status line on a terminal, rewritten in place per step and erased at the end.

    Only for a terminal: piped or redirected, stderr gets nothing (a log or a CI job wants the
    report, not a hundred carriage returns)."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._shown = False

    def __call__(self, text: str) -> None:
        self._stream.write(f"\r\x1b[Ksiptap probe: {text}")
        self._stream.flush()
        self._shown = True

    def clear(self) -> None:
        if self._shown:
            self._stream.write("\r\x1b[K")
            self._stream.flush()


def progress_for(stream: TextIO) -> TerminalProgress | None:
    try:
        return TerminalProgress(stream) if stream.isatty() else None
    except (AttributeError, ValueError):  # a closed or exotic stream: no progress
        return None


def run_from_args(args: argparse.Namespace) -> int:
    host, port = parse_target(args.target)
    if args.timeout <= 0:
        raise ProbeError(f"--timeout must be positive, not {args.timeout:g}")
    progress = progress_for(sys.stderr)
    try:
        report = trio.run(functools.partial(probe, host, port, server_name=args.server_name, cert=args.cert,
                                            key=args.key, ca=args.ca, timeout=args.timeout, sip=args.sip,
                                            progress=progress))
    finally:
        if progress is not None:
            progress.clear()
    if args.json:
        print(json.dumps(report.as_dict(), indent=2))
    else:
        print(format_table(report), end="")
    return 0 if report.reachable else 1

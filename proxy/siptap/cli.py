"""The `siptap` command: argv in, exit status out. The only module with process side effects.

Errors a user can fix are one line (what, where) plus a hint, never a traceback; --debug
shows the traceback for the ones we did not foresee.
"""

from __future__ import annotations

import argparse
import gc
import sys
import traceback
from pathlib import Path
from typing import TYPE_CHECKING

from siptap import __version__
from siptap.errors import SiptapError

if TYPE_CHECKING:
    from siptap.config import Config

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="siptap",
        description="Inline TLS-terminating SIP proxy: forces RSA key exchange toward the customer E-SBC, "
        "re-originates TLS to the core, relays bytes unchanged and mirrors cleartext SIP plus key material.",
    )
    parser.add_argument("--version", action="version", version=f"siptap {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for unexpected errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    # --debug is accepted before or after the subcommand.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks")

    run = sub.add_parser("run", parents=[common], help="run the proxy on a config file",
                         description="Listen for customer E-SBCs and relay to the core SBC, per config file.")
    run.add_argument("--config", "-c", type=Path, default=Path("config.toml"), help="config file (default: %(default)s)")
    run.add_argument("--log-format", choices=("json", "console"), help="override log.format from the config")
    run.add_argument("--log-level", choices=("debug", "info", "warning", "error"), help="override log.level")
    # Internal: how the supervisor (workers > 1) starts each worker process.
    run.add_argument("--worker", metavar="I/N", help=argparse.SUPPRESS)
    run.add_argument("--control-fd", type=int, help=argparse.SUPPRESS)
    # Internal: the mirror process's channel socket (issue 16); the relay's tap connects to it.
    run.add_argument("--mirror-channel", type=Path, help=argparse.SUPPRESS)

    # Internal, hidden (no help= keeps it out of the command list): the mirror process the
    # supervisor starts before the workers (siptap.mirror.process).
    mirror = sub.add_parser("mirror", parents=[common])
    mirror.add_argument("--config", "-c", type=Path, default=Path("config.toml"))
    mirror.add_argument("--channel", type=Path, required=True)
    mirror.add_argument("--control-fd", type=int)
    mirror.add_argument("--log-format", choices=("json", "console"))
    mirror.add_argument("--log-level", choices=("debug", "info", "warning", "error"))

    demo = sub.add_parser("demo", parents=[common], help="run the shipped config with an embedded lab core and customer",
                          description="Create the lab PKI if needed, start an embedded lab core, run siptap on the "
                          "config, drive SIP dialogs from an embedded customer through it, show what siptap saw.")
    demo.add_argument("--config", "-c", type=Path, default=Path("config.toml"), help="config file (default: %(default)s)")
    demo.add_argument("--calls", type=int, default=3, help="INVITE dialogs to run (default: %(default)s)")
    demo.add_argument("--forever", action="store_true", help="keep running after the dialogs, until Ctrl-C")

    check = sub.add_parser("check", parents=[common], help="validate a config file and every file it names, without starting",
                           description="Validate the config and every certificate/key it names; exit 0 if usable.")
    check.add_argument("--config", "-c", type=Path, default=Path("config.toml"), help="config file (default: %(default)s)")

    certs = sub.add_parser("certs", parents=[common], help="lab PKI: create a CA and the lab certificates, or issue extra leaves",
                           description="Lab PKI for siptap, its sample customer and core. Never for production.")
    certs_sub = certs.add_subparsers(dest="certs_command", metavar="ACTION")
    init = certs_sub.add_parser("init", parents=[common], help="create ca, proxy-server, proxy-client, customer and core certificates",
                                description="Create the lab CA and the four leaves (RSA-2048, SHA-256). Key files are 0600.")
    init.add_argument("--dir", type=Path, default=Path("certs"), help="output folder (default: %(default)s)")
    init.add_argument("--force", action="store_true", help="overwrite existing files")
    init.add_argument("--san", action="append", metavar="NAME",
                      help="SAN (DNS name or IP) for the server certificates; repeat; default: localhost 127.0.0.1 ::1")
    init.add_argument("--days", type=int, default=825, help="leaf validity in days (default: %(default)s)")
    init.add_argument("--ocsp-url", metavar="URL", help="put this OCSP responder in every leaf's AIA "
                      "(e.g. http://127.0.0.1:8888/ for `siptap certs ocsp`)")

    issue = certs_sub.add_parser("issue", parents=[common], help="mint one extra leaf signed by the lab CA (or a new foreign CA)",
                                 description="Mint an extra leaf, e.g. expired, wrong-EKU or foreign-CA ones for tests.")
    issue.add_argument("--name", required=True, help="file stem: writes NAME.pem and NAME.key")
    usage = issue.add_mutually_exclusive_group(required=True)
    usage.add_argument("--client", dest="usage", action="store_const", const="client", help="EKU clientAuth")
    usage.add_argument("--server", dest="usage", action="store_const", const="server", help="EKU serverAuth")
    usage.add_argument("--both", dest="usage", action="store_const", const="both", help="EKU clientAuth and serverAuth")
    usage.add_argument("--no-eku", dest="usage", action="store_const", const="none", help="no EKU extension")
    issue.add_argument("--dir", type=Path, default=Path("certs"), help="folder with ca.pem/ca.key (default: %(default)s)")
    issue.add_argument("--days", type=int, default=825, help="validity in days (default: %(default)s)")
    when = issue.add_mutually_exclusive_group()
    when.add_argument("--expired", action="store_true", help="validity entirely in the past")
    when.add_argument("--not-yet-valid", action="store_true", help="validity entirely in the future")
    issue.add_argument("--foreign-ca", metavar="CA_NAME", help="sign with a separate CA CA_NAME (created if missing)")
    issue.add_argument("--ec", action="store_true", help="P-256 key instead of RSA-2048")
    issue.add_argument("--san", action="append", metavar="NAME", help="SAN (DNS name or IP); repeat")
    issue.add_argument("--force", action="store_true", help="overwrite existing files")
    issue.add_argument("--ocsp-url", metavar="URL", help="put this OCSP responder in the leaf's AIA")

    revoke = certs_sub.add_parser("revoke", parents=[common], help="revoke a leaf: (re)write crl.pem signed by the lab CA",
                                  description="Add NAME.pem's serial to the lab CA's CRL (crl.pem, cumulative) and re-sign "
                                  "it with a fresh nextUpdate; without --name only re-sign. Point `crl` at the file and "
                                  "send siptap SIGHUP.")
    revoke.add_argument("--name", action="append", metavar="NAME", help="file stem of the certificate to revoke; repeat")
    revoke.add_argument("--dir", type=Path, default=Path("certs"), help="folder with ca.pem/ca.key (default: %(default)s)")
    revoke.add_argument("--days", type=int, default=30, help="nextUpdate in days from now (default: %(default)s)")
    ocsp = certs_sub.add_parser("ocsp", parents=[common], help="run a lab OCSP responder for the lab CA (revoked: crl.pem)",
                                description="Answer OCSP requests for the lab CA: revoked if crl.pem lists the "
                                "certificate (`siptap certs revoke`), else good. Runs until Ctrl-C.")
    ocsp.add_argument("--dir", type=Path, default=Path("certs"), help="folder with ca.pem/ca.key (default: %(default)s)")
    ocsp.add_argument("--listen", default="127.0.0.1:8888", metavar="HOST:PORT",
                      help="where to listen; port 0 picks a free one (default: %(default)s)")
    ocsp.add_argument("--validity", type=float, default=60.0, metavar="MINUTES",
                      help="nextUpdate this many minutes after each answer (default: %(default)s)")
    ocsp.add_argument("--delay", type=float, default=0.0, metavar="SECONDS",
                      help="answer this late (to show siptap's ocsp_timeout; default: %(default)s)")
    from siptap.tools.probe import add_parser as add_probe_parser

    add_probe_parser(sub, common)
    from siptap.tools.export import add_parser as add_export_parser

    add_export_parser(sub, common)
    from siptap.tools.calls.command import add_parser as add_calls_parser

    add_calls_parser(sub, common)
    from siptap.tools.ladder.command import add_parser as add_flow_parser

    add_flow_parser(sub, common)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    try:
        if args.command == "run":
            return _run(args)
        if args.command == "check":
            return _check(args)
        if args.command == "mirror":
            return _mirror(args)
        if args.command == "probe":
            from siptap.tools.probe import run_from_args

            return run_from_args(args)
        if args.command == "export":
            from siptap.tools.export import run_from_args as run_export

            return run_export(args)
        if args.command == "calls":
            from siptap.tools.calls.command import run_from_args as run_calls

            return run_calls(args)
        if args.command == "flow":
            from siptap.tools.ladder.command import run_from_args as run_flow

            return run_flow(args)
        if args.command == "demo":
            from siptap.tools.demo import main as demo_main

            return demo_main(args.config, calls=args.calls, forever=args.forever)
        if args.command == "certs":
            return _certs(args, parser)
    except SiptapError as exc:
        _error(str(exc), exc.hint)
        if args.debug:
            traceback.print_exc()
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return 130
    except ExceptionGroup as group:
        # trio nurseries wrap what a task raised (a listen address in use at start-up...).
        leaves = _leaves(group)
        if not all(isinstance(leaf, SiptapError) for leaf in leaves):
            if args.debug:
                raise
            _error(f"unexpected {type(group).__name__}: {'; '.join(f'{type(e).__name__}: {e}' for e in leaves)}",
                   "run again with --debug for the traceback, and report it")
            return EXIT_FAILURE
        first = leaves[0]
        _error(str(first), getattr(first, "hint", None))
        if args.debug:
            traceback.print_exc()
        return EXIT_FAILURE
    except Exception as exc:
        if args.debug:
            raise
        _error(f"unexpected {type(exc).__name__}: {exc}", "run again with --debug for the traceback, and report it")
        return EXIT_FAILURE
    parser.error(f"unknown command {args.command!r}")  # exits with status 2 (EXIT_USAGE)


def _leaves(group: BaseExceptionGroup) -> list[BaseException]:
    out: list[BaseException] = []
    for exc in group.exceptions:
        out.extend(_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return out


def settle_heap() -> None:
    """Collect, then freeze what start-up built (modules, config, TLS contexts: alive as long
    as the process) out of the cyclic garbage collector's sight. Otherwise every older-
    generation pass re-examines those tens of thousands of objects while the relay waits:
    measured here, gen-1 passes of up to 13 ms in the first seconds of relaying."""
    gc.collect()
    gc.freeze()


def _error(message: str, hint: str | None = None) -> None:
    print(f"siptap: error: {message}", file=sys.stderr)
    if hint:
        print(f"siptap: hint: {hint}", file=sys.stderr)


def _certs(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from siptap.tools import pki

    if args.certs_command == "init":
        sans = tuple(args.san) if args.san else pki.DEFAULT_SANS
        try:
            written = pki.init_lab_pki(args.dir, force=args.force, sans=sans, days=args.days, ocsp_url=args.ocsp_url)
        except ValueError as exc:
            _error(str(exc))
            return EXIT_USAGE
        for path in written:
            print(f"wrote {path}")
        return EXIT_OK
    if args.certs_command == "issue":
        try:
            cert, key = pki.issue_leaf(
                args.dir, args.name, usage=args.usage, days=args.days, expired=args.expired,
                not_yet_valid=args.not_yet_valid, sans=tuple(args.san) if args.san else pki.DEFAULT_SANS,
                key_type="ec" if args.ec else "rsa", self_ca=args.foreign_ca, force=args.force,
                ocsp_url=args.ocsp_url,
            )
        except ValueError as exc:
            _error(str(exc))
            return EXIT_USAGE
        print(f"wrote {cert}\nwrote {key}")
        return EXIT_OK
    if args.certs_command == "revoke":
        try:
            for name in args.name or [None]:
                path, serials = pki.revoke(args.dir, name, days=args.days)
        except ValueError as exc:
            _error(str(exc))
            return EXIT_USAGE
        print(f"wrote {path} ({len(serials)} revoked: {', '.join(f'{s:X}' for s in serials) or 'none'}; "
              f"next update in {args.days} days)")
        return EXIT_OK
    if args.certs_command == "ocsp":
        from siptap.tools.ocsp_responder import run_from_args

        return run_from_args(args)
    parser.parse_args(["certs", "--help"])
    return EXIT_USAGE


def _check(args: argparse.Namespace) -> int:
    from siptap.app import App
    from siptap.config import load_config

    config = load_config(args.config)
    App(config)  # builds every context: opens and checks every file the config names
    _check_expiry_and_ports(config)
    routes = ", ".join(f"{r.name} ({', '.join(map(str, r.listen))} -> {', '.join(str(u.address) for u in r.cores)})"
                       for r in config.routes)
    workers = f"; {config.worker_count} workers" if config.worker_count > 1 else ""
    print(f"{args.config}: OK: {routes}{workers}")
    return EXIT_OK


def _check_expiry_and_ports(config: Config) -> None:
    """What would bite soon or at once: every certificate siptap presents or trusts that
    expires within 30 days (a warning) or has expired (an error), and every listen address
    another process holds (an error naming its config key)."""
    from datetime import UTC, datetime

    from siptap.errors import ConfigError
    from siptap.relay.server import listen_problem
    from siptap.tls.cert_watch import certificate_entries

    now = datetime.now(UTC)
    names = [route.name for route in config.routes]
    for entry in certificate_entries(config):
        state = entry.state(now)
        if state == "expired":
            error = ConfigError(str(config.path), entry.key, entry.describe(now)).naming_route(names)
            error.hint = "replace it (lab PKI: `siptap certs init --force` or `siptap certs issue`)"
            raise error
        if state == "expiring":
            warning = ConfigError(str(config.path), entry.key, entry.describe(now)).naming_route(names)
            print(f"siptap: warning: {warning}", file=sys.stderr)
    listens = [(f"route[{i}].listen", r.listen) for i, r in enumerate(config.routes)]
    listens += [(f"route[{i}].reverse.listen", r.reverse.listen) for i, r in enumerate(config.routes) if r.reverse]
    if config.metrics.enabled:
        listens.append(("metrics.address", (config.metrics.address,)))
    for key, endpoints in listens:
        for endpoint in endpoints:
            problem = listen_problem(endpoint)
            if problem is not None:
                error = ConfigError(str(config.path), key, problem).naming_route(names)
                error.hint = "is another siptap (or the SBC) already on that port? stop it or choose another"
                raise error


def _load_for_run(args: argparse.Namespace) -> Config:
    """The config with ``--log-format``/``--log-level`` applied (``run`` and ``mirror``)."""
    import dataclasses

    from siptap.config import load_config

    config = load_config(args.config)
    overrides = {k: v for k, v in (("format", args.log_format), ("level", args.log_level)) if v}
    if overrides:
        config = dataclasses.replace(config, log=dataclasses.replace(config.log, **overrides))
    return config


def _mirror(args: argparse.Namespace) -> int:
    import structlog
    import trio

    from siptap.log import configure
    from siptap.mirror.process import run_mirror

    config = _load_for_run(args)
    writer = configure(config.log)
    try:
        # Its log lines say which process wrote them, as a worker's carry ``worker``.
        structlog.contextvars.bind_contextvars(process="mirror")
        settle_heap()
        trio.run(run_mirror, config, args.channel, args.control_fd)
    finally:
        writer.close()
    return EXIT_OK


def _run(args: argparse.Namespace) -> int:
    import trio

    from siptap.allocator import map_large_allocations
    from siptap.app import App
    from siptap.child_process import parse_worker, run_worker
    from siptap.log import configure
    from siptap.supervisor import Supervisor

    worker = None
    if args.worker is not None:
        try:
            worker = parse_worker(args.worker)
        except ValueError as exc:
            _error(str(exc))
            return EXIT_USAGE
    config = _load_for_run(args)
    writer = configure(config.log)
    try:
        if worker is not None:
            import structlog

            structlog.contextvars.bind_contextvars(worker=worker[0])
        # Every start-up check; a failure is one line on stderr, exit 1.
        app = App(config, worker=worker, mirror_channel=args.mirror_channel if worker is not None else None)
        if worker is None:
            # The checks above ran once, here. The process model (ARCHITECTURE.md): this
            # process supervises; the mirror process observes and runs every sink; the
            # workers (``workers``, one by default) only relay.
            del app
            passed = [f"--{name}={value}" for name, value in (("log-format", args.log_format),
                                                              ("log-level", args.log_level)) if value]
            passed += ["--debug"] if args.debug else []
            # Before any child's line is forwarded: a burst of them must not grow the heap for good.
            threshold = map_large_allocations()
            supervisor = Supervisor(config, config.worker_count, writer.msg, worker_args=tuple(passed), mirror=True,
                                    mmap_threshold=threshold)
            return trio.run(supervisor.run)
        settle_heap()
        trio.run(run_worker, app, args.control_fd)
    finally:
        writer.close()
    return EXIT_OK

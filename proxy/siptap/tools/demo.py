"""`siptap demo`: the whole product in one command on a fresh machine.

Creates the lab PKI if the config's certificates are missing, starts an embedded lab core
where the config's first core upstream points (127.0.0.1:5062 in the shipped config), runs
siptap on the config, drives a few SIP dialogs from an embedded customer E-SBC through it,
prints the call flow as siptap saw it and where its outputs went, and exits 0 when every
dialog completed (or keeps running with --forever).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import ssl
import sys
import time
from pathlib import Path
from typing import IO

import trio

from siptap.app import App
from siptap.config import Config, load_config
from siptap.errors import SiptapError
from siptap.log import configure
from siptap.mirror.events import KeyEvent, MirrorEvent, SipEvent
from siptap.mirror.files import open_private_append
from siptap.tools.lab.core import LabCore, core_context
from siptap.tools.lab.customer import CustomerSession, customer_context
from siptap.tools.pki import init_lab_pki


class DemoFailed(SiptapError):
    pass


def ensure_lab_pki(config_path: Path, out: IO[str]) -> Path:
    certs = config_path.parent / "certs"
    if not (certs / "ca.pem").exists():
        init_lab_pki(certs)
        print(f"created the lab PKI in {certs}/ (siptap certs init)", file=out)
    return certs


async def run_demo(config: Config, certs: Path, *, calls: int, forever: bool, out: IO[str]) -> None:
    route = config.routes[0]
    seen: list[MirrorEvent] = []
    core_address = route.cores[0].address
    async with trio.open_nursery() as nursery:
        core = LabCore(core_context(certs))
        try:
            core_port = await nursery.start(functools.partial(core.serve, core_address.host, core_address.port))
        except OSError as exc:
            raise DemoFailed(f"cannot start the lab core on {core_address}: {exc.strerror or exc}") from None
        if core_address.port == 0:  # a config asking for a free port (tests): dial where the core landed
            core_address = dataclasses.replace(core_address, port=core_port)
            upstream = dataclasses.replace(route.cores[0], address=core_address)
            route = dataclasses.replace(route, cores=(upstream,))
            config = dataclasses.replace(config, routes=(route, *config.routes[1:]))
        app = App(config, observer=seen.append)
        bound = await nursery.start(functools.partial(app.run, handle_signals=forever))
        host, port = bound[(route.name, "customer")][0]
        print(f"siptap listening on {host}:{port} (route {route.name!r}), lab core on {core_address}", file=out)
        try:
            session = await CustomerSession.connect(host, port, customer_context(certs))
            results = []
            for i in range(calls):
                results.append(await session.call(media_port=30000 + 2 * i))
            options = await session.options()
            await session.aclose()
        except (EOFError, ssl.SSLError, trio.BrokenResourceError) as exc:
            # siptap refused the lab customer: a revoked certificate (CRL, OCSP), an OCSP
            # responder down under ocsp = "hard", no core. The log line says which.
            raise DemoFailed(f"the lab customer's connection ended early ({exc}): see handshake_failed, "
                             "no_upstream or upstream_failed in captures/siptap.log for the reason") from None
        _print_flow(seen, out)
        ok = all(r[-2:] == ["200", "200"] for r in results) and options.status_code == 200
        print(f"{calls} calls and 1 OPTIONS through siptap: {'all completed' if ok else 'FAILED'}", file=out)
        if not ok:
            raise DemoFailed(f"dialogs did not complete: {results}")
        if forever:
            print(f"running until Ctrl-C: point an E-SBC at {host}:{port}", file=out)
            await app.shutdown_requested.wait()
        app.request_shutdown()
        with trio.move_on_after(config.drain_timeout + 5):
            await app.stopped.wait()
        nursery.cancel_scope.cancel()  # the lab core
    _print_outputs(config, app, out)


def _print_outputs(config: Config, app: App, out: IO[str]) -> None:
    mirror = config.mirror
    where = {
        "keylog": f"{mirror.keylog.path} (Wireshark: tls.keylog_file)" if mirror.keylog else None,
        "pcap": f"{mirror.pcap.directory}/ (cleartext SIP, opens without keys)" if mirror.pcap else None,
        "srtp_keys": f"{mirror.srtp_keys.path}" if mirror.srtp_keys else None,
    }
    print("\nmirror outputs:", file=out)
    assert app.fanout is not None  # the demo observes in-process
    for name, stats in app.fanout.stats().items():
        note = where.get(name) or ""
        if stats["dropped"] and name.startswith(("hep", "jsonl")):
            note = "nothing listening there: dropped and counted, the relay was not affected"
        print(f"  {name:<34} sent {stats['sent']:>4}  dropped {stats['dropped']:>4}  {note}", file=out)


def _print_flow(events: list[MirrorEvent], out: IO[str]) -> None:
    start = next((e.ts for e in events), time.time())
    print("\ncall flow seen by siptap (customer leg):", file=out)
    for event in events:
        if event.leg.leg != "customer" and not isinstance(event, KeyEvent):
            continue
        if isinstance(event, KeyEvent):
            f = event.facts
            print(f"  {event.ts - start:7.3f}s  TLS {event.leg.leg}: {f.version} {f.cipher} "
                  f"kex={f.key_exchange} peer={f.peer_chain[0].common_name if f.peer_chain else '?'}", file=out)
        elif isinstance(event, SipEvent) and event.view is not None:
            v = event.view
            arrow = "E-SBC -> core " if event.from_client else "E-SBC <- core "
            what = v.method if v.is_request else f"{v.status_code} {v.reason}"
            print(f"  {event.ts - start:7.3f}s  {arrow} {what:<16} Call-ID {v.call_id}", file=out)


def main(config_path: Path, *, calls: int = 3, forever: bool = False, out: IO[str] = sys.stdout) -> int:
    certs = ensure_lab_pki(config_path, out)
    config = load_config(config_path)
    log_file = config_path.parent / "captures" / "siptap.log"
    # The log holds master secrets, key-log lines and SRTP keys ([log] key_material): created
    # 0600 in a 0700 folder whatever the umask, and an older, wider file is narrowed first.
    with os.fdopen(open_private_append(log_file), "a", encoding="utf-8") as stream:
        writer = configure(dataclasses.replace(config.log, format="json"), stream)
        try:
            trio.run(functools.partial(run_demo, config, certs, calls=calls, forever=forever, out=out))
        finally:
            writer.close()
    print(f"\nsiptap's JSON log: {log_file}", file=out)
    return 0

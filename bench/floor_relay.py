"""The floor under siptap's per-message cost: siptap's own TLS shell with nothing on top.

Reads a siptap config, builds the first route's contexts exactly as ``siptap run`` does
(``siptap.app.build_plans``), accepts on its listen address, completes the customer
handshake, dials the first core with siptap's upstream code, and relays with two pumps of
``receive_some`` / ``send_all`` on siptap's ``OpenSSLStream``. No SIP framing, no logging
per message, no mirror, no metrics, no drain or reload. As a middle in bench/run.py
(``trio-floor``) it says how much of siptap's CPU per message is the trio + pyOpenSSL shell
that any trio relay pays, and how much is siptap's own observation on top.

Usage: python bench/floor_relay.py --config siptap.toml   (prints nothing; SIGTERM stops it)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from siptap.app import build_plans
from siptap.config import load_config
from siptap.relay.upstream import connect_first
from siptap.tls.stream import OpenSSLStream


class _NoLog:
    def __getattr__(self, name: str):
        return lambda *args, **kwargs: self

    def bind(self, **kwargs: object) -> _NoLog:
        return self


async def _pump(src: OpenSSLStream, dst: OpenSSLStream, scope: trio.CancelScope) -> None:
    try:
        while data := await src.receive_some(65536):
            await dst.send_all(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    scope.cancel()


async def main(config_path: Path) -> None:
    config = load_config(config_path)
    route = config.routes[0]
    plan = build_plans(config, route).forward
    endpoint = route.listen[0]
    listeners = await trio.open_tcp_listeners(endpoint.port, host=endpoint.host)

    async def session(tcp: trio.SocketStream) -> None:
        accepted = OpenSSLStream(tcp, plan.server_context, server_side=True, leg="customer")
        try:
            await accepted.do_handshake(plan.limits.handshake_timeout)
            dialled, _ = await connect_first(
                plan.upstreams, plan.client_context, plan.client_settings,
                connect_timeout=plan.limits.connect_timeout, handshake_timeout=plan.limits.handshake_timeout,
                log=_NoLog(),
            )
        except Exception:
            await accepted.aclose()
            return
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_pump, accepted, dialled, nursery.cancel_scope)
            nursery.start_soon(_pump, dialled, accepted, nursery.cancel_scope)
        with trio.move_on_after(2) as cleanup:
            cleanup.shield = True
            await accepted.aclose()
            await dialled.aclose()

    await trio.serve_listeners(session, listeners)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, required=True)
    trio.run(main, parser.parse_args().config)

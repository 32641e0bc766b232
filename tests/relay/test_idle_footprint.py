"""What an established, idle proxied connection keeps (run in-process, so the heap can be
inspected): the handshake's records reach the feed complete, and are then let go."""

from __future__ import annotations

import gc
from dataclasses import replace
from pathlib import Path

import trio

from siptap.app import build_plans
from siptap.certificates import CertificateCache
from siptap.config import load_config
from siptap.log import get_logger
from siptap.relay.session import run_session
from siptap.sansio import chunk_records
from siptap.sansio.handshake import HandshakeFacts, RawHandshake
from siptap.tls.facts import HandshakeObserver
from siptap.tools.lab.core import start_lab_core
from siptap.tools.lab.customer import CustomerSession, customer_context
from tests.relay.harness import write_config
from tests.relay.memory import RecordingFeed


def alive(kind: type) -> list[object]:
    gc.collect()
    return [o for o in gc.get_objects() if type(o) is kind]


async def test_idle_session_keeps_no_handshake_records(pki: Path, tmp_path: Path) -> None:
    feed = RecordingFeed()
    async with trio.open_nursery() as nursery:
        core, core_port = await start_lab_core(nursery, pki)
        config = load_config(write_config(tmp_path, pki, cores=[core_port]))
        plan = build_plans(config, config.routes[0], feed).forward
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        port = listeners[0].socket.getsockname()[1]
        nursery.start_soon(trio.serve_listeners, lambda tcp: run_session(tcp, plan, get_logger()), listeners)
        session = await CustomerSession.connect("127.0.0.1", port, customer_context(pki))
        assert (await session.options()).status_code == 200  # both legs are up and relaying

        keys = [r for r in feed.records if isinstance(r, chunk_records.HandshakeDone)]
        assert [k.leg for k in keys] == ["customer", "core"]
        # The chain travels as DER (the mirror summarises it): summarised here as it does.
        summary = CertificateCache().summary
        customer, core_leg = (replace(HandshakeFacts.from_dict(k.facts), peer_chain=tuple(map(summary, k.chain)))
                              for k in keys)
        assert customer.peer_chain[0].common_name == "customer" and customer.keylog_lines
        assert customer.client_offer is not None
        assert core_leg.peer_chain[0].common_name == "core" and core_leg.keylog_lines
        del keys
        # Handed over as plain data: the relay keeps no handshake record, only the copies
        # rebuilt here from the records; the handshake observers are gone.
        assert {id(f) for f in alive(HandshakeFacts)} == {id(customer), id(core_leg)}
        assert alive(HandshakeObserver) == [] and alive(RawHandshake) == []

        assert (await session.options()).status_code == 200  # and it still relays
        await session.aclose()
        nursery.cancel_scope.cancel()

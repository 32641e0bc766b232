"""Relay details against `siptap run`: idle timeout, IPv6, payload logging, handshake failures in
the log, and no file-descriptor leak across connections."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import trio

from siptap.tools.lab.core import start_lab_core
from siptap.tools.lab.customer import CustomerSession, customer_context
from tests.relay.harness import SiptapProcess, write_config


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


async def test_no_fd_leak_and_failures_logged(pki: Path, tmp_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        core, core_port = await start_lab_core(nursery, pki)
        siptap = SiptapProcess(write_config(tmp_path, pki, cores=[core_port]))
        await siptap.start(nursery)
        port = await siptap.port()
        assert siptap.process is not None
        # Warm up once (lazy imports, log writer), then take the baseline.
        warm = await CustomerSession.connect("127.0.0.1", port, customer_context(pki))
        await warm.options()
        await warm.aclose()
        await siptap.wait_for("connection_closed", count=1)
        baseline = open_fds(siptap.process.pid)
        for _ in range(5):
            session = await CustomerSession.connect("127.0.0.1", port, customer_context(pki))
            await session.options()
            await session.aclose()
        # A client without a certificate, and plain TCP garbage.
        with pytest.raises(Exception):
            bad = await CustomerSession.connect("127.0.0.1", port, customer_context(pki, cert=None))
            await bad.options()
        garbage = await trio.open_tcp_stream("127.0.0.1", port)
        await garbage.send_all(b"GET / HTTP/1.0\r\n\r\n")
        await garbage.aclose()
        await siptap.wait_for("connection_closed", count=8)  # every accepted connection ends with one
        failures = siptap.find("handshake_failed")
        assert open_fds(siptap.process.pid) == baseline
        assert await siptap.stop() == 0
        nursery.cancel_scope.cancel()
    assert {f["reason"] for f in failures} == {"no_client_certificate", "not_tls"}
    assert all(f["leg"] == "customer" and f["route"] == "test" and f["peer"] for f in failures)
    assert core.connections == 6  # failed handshakes never reached the core


async def test_idle_timeout_closes_both_legs(pki: Path, tmp_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        core, core_port = await start_lab_core(nursery, pki)
        siptap = SiptapProcess(write_config(tmp_path, pki, cores=[core_port], limits="idle_timeout = 0.5"))
        await siptap.start(nursery)
        session = await CustomerSession.connect("127.0.0.1", await siptap.port(), customer_context(pki))
        assert (await session.options()).status_code == 200
        with pytest.raises(EOFError):
            await session.next_message()  # nothing more sent: siptap closes after 0.5 s idle
        closed = await siptap.wait_for("connection_closed")
        await session.aclose()
        assert await siptap.stop() == 0
        nursery.cancel_scope.cancel()
    assert closed[0]["closed_by"] == "siptap" and "idle" in closed[0]["reason"]


async def test_ipv6_listen_and_payload_logging(pki: Path, tmp_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        core, core_port = await start_lab_core(nursery, pki)
        config = write_config(tmp_path, pki, cores=[core_port], listen='["[::1]:0"]', log="sip_payloads = true")
        siptap = SiptapProcess(config)
        await siptap.start(nursery)
        listener = (await siptap.wait_for("listener_up"))[0]
        assert listener["host"] == "::1"
        session = await CustomerSession.connect("::1", int(listener["port"]), customer_context(pki))
        assert (await session.options()).status_code == 200
        await session.aclose()
        await siptap.wait_for("connection_closed")
        assert await siptap.stop() == 0
        nursery.cancel_scope.cancel()
    sip = siptap.find("sip")
    assert sip[0]["payload"] == session.sent[0].decode()
    assert siptap.find("connection_accepted")[0]["peer"].startswith("::1:")

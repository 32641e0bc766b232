"""Reload, drain, connection limits and the reverse route, against `siptap run` as a process."""

from __future__ import annotations

import functools
import shutil
import signal
import ssl
from pathlib import Path

import pytest
import trio

from siptap.tools.lab.core import LabCore, core_context, start_lab_core
from siptap.tools.lab.customer import IMG2020_CIPHERS, CustomerSession, customer_context
from siptap.tools.pki import issue_leaf
from tests.integration.peers import free_port
from tests.relay.harness import SiptapProcess, reverse_route, write_config


def peer_common_name(session: CustomerSession) -> str:
    cert = session.stream.getpeercert()
    return dict(x[0] for x in cert["subject"])["commonName"]


async def test_sighup_reloads_certificate_for_new_connections_only(pki: Path, tmp_path: Path) -> None:
    own = tmp_path / "certs"
    own.mkdir()
    for name in ("proxy-server.pem", "proxy-server.key"):
        shutil.copy2(pki / name, own / name)
    issue_leaf(tmp_path, "renewed", usage="server", ca_dir=pki)
    async with trio.open_nursery() as nursery:
        core, core_port = await start_lab_core(nursery, pki)
        config = write_config(tmp_path, pki, cores=[core_port])
        text = config.read_text().replace(f"{pki}/proxy-server.", f"{own}/proxy-server.")
        config.write_text(text)
        siptap = SiptapProcess(config)
        await siptap.start(nursery)
        port = await siptap.port()
        old = await CustomerSession.connect("127.0.0.1", port, customer_context(pki))
        assert peer_common_name(old) == "proxy-server"
        shutil.copy2(tmp_path / "renewed.pem", own / "proxy-server.pem")
        shutil.copy2(tmp_path / "renewed.key", own / "proxy-server.key")
        siptap.signal(signal.SIGHUP)
        await siptap.wait_for("reloaded")
        new = await CustomerSession.connect("127.0.0.1", port, customer_context(pki))
        assert peer_common_name(new) == "renewed"
        # The connection made before the reload carries on.
        assert (await old.options()).status_code == 200
        assert (await new.options()).status_code == 200
        await old.aclose()
        await new.aclose()
        await siptap.wait_for("connection_closed", count=2)
        assert await siptap.stop() == 0
        nursery.cancel_scope.cancel()


async def test_failed_reload_keeps_the_running_config(pki: Path, tmp_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        core, core_port = await start_lab_core(nursery, pki)
        config = write_config(tmp_path, pki, cores=[core_port])
        siptap = SiptapProcess(config)
        await siptap.start(nursery)
        port = await siptap.port()
        config.write_text(config.read_text().replace("proxy-server.key", "missing.key"))
        siptap.signal(signal.SIGHUP)
        failed = await siptap.wait_for("reload_failed")
        assert "route[0].customer.key" in failed[0]["detail"] and "missing.key" in failed[0]["detail"]
        session = await CustomerSession.connect("127.0.0.1", port, customer_context(pki))
        assert (await session.options()).status_code == 200
        await session.aclose()
        assert await siptap.stop() == 0
        nursery.cancel_scope.cancel()


async def test_sigterm_drains_live_connections(pki: Path, tmp_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        core, core_port = await start_lab_core(nursery, pki)
        siptap = SiptapProcess(write_config(tmp_path, pki, cores=[core_port], top="", limits=""))
        await siptap.start(nursery)
        port = await siptap.port()
        session = await CustomerSession.connect("127.0.0.1", port, customer_context(pki))
        siptap.signal(signal.SIGTERM)
        draining = await siptap.wait_for("draining")
        assert draining[0]["connections"] == 1
        await siptap.wait_for("listener_down")
        with pytest.raises(OSError):  # no longer accepting
            await trio.open_tcp_stream("127.0.0.1", port)
        # The live connection still relays while draining.
        assert (await session.options()).status_code == 200
        await session.aclose()
        await siptap.wait_for("stopped")  # exits by itself once the last connection is gone
        assert await siptap.stop() == 0
        nursery.cancel_scope.cancel()
    closed = siptap.find("connection_closed")
    assert closed[0]["closed_by"] == "customer"


async def test_second_sigterm_aborts_the_drain(pki: Path, tmp_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        core, core_port = await start_lab_core(nursery, pki)
        siptap = SiptapProcess(write_config(tmp_path, pki, cores=[core_port]))
        await siptap.start(nursery)
        session = await CustomerSession.connect("127.0.0.1", await siptap.port(), customer_context(pki))
        siptap.signal(signal.SIGTERM)
        await siptap.wait_for("draining")
        siptap.signal(signal.SIGTERM)
        await siptap.wait_for("drain_aborted")
        with pytest.raises(EOFError):
            await session.next_message()  # siptap closed it, with close_notify
        await session.aclose()
        await siptap.wait_for("stopped")
        assert await siptap.stop() == 0
        nursery.cancel_scope.cancel()


async def test_max_connections_refuses_cleanly(pki: Path, tmp_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        core, core_port = await start_lab_core(nursery, pki)
        siptap = SiptapProcess(write_config(tmp_path, pki, cores=[core_port], limits="max_connections = 1"))
        await siptap.start(nursery)
        port = await siptap.port()
        first = await CustomerSession.connect("127.0.0.1", port, customer_context(pki))
        with pytest.raises((ssl.SSLError, trio.BrokenResourceError, OSError)):
            second = await CustomerSession.connect("127.0.0.1", port, customer_context(pki))
            await second.options()
        refused = await siptap.wait_for("connection_refused")
        assert refused[0]["reason"] == "max_connections" and refused[0]["limit"] == 1
        assert (await first.options()).status_code == 200
        await first.aclose()
        await siptap.wait_for("connection_closed")
        third = await CustomerSession.connect("127.0.0.1", port, customer_context(pki))
        assert (await third.options()).status_code == 200
        await third.aclose()
        assert await siptap.stop() == 0
        nursery.cancel_scope.cancel()


async def test_a_reload_applies_the_new_max_connections(pki: Path, tmp_path: Path) -> None:
    """SIGHUP with a raised limit: the next connection past the old one is admitted (before this
    fix the listener kept its start-up limit and refused it); lowered again: refused, while the
    connections already open stay."""
    async with trio.open_nursery() as nursery:
        core, core_port = await start_lab_core(nursery, pki)
        config = write_config(tmp_path, pki, cores=[core_port], limits="max_connections = 1")
        siptap = SiptapProcess(config)
        await siptap.start(nursery)
        port = await siptap.port()
        first = await CustomerSession.connect("127.0.0.1", port, customer_context(pki))
        assert (await first.options()).status_code == 200
        config.write_text(config.read_text().replace("max_connections = 1", "max_connections = 2"))
        siptap.signal(signal.SIGHUP)
        await siptap.wait_for("reloaded")
        second = await CustomerSession.connect("127.0.0.1", port, customer_context(pki))
        assert (await second.options()).status_code == 200
        assert not siptap.find("connection_refused")
        config.write_text(config.read_text().replace("max_connections = 2", "max_connections = 1"))
        siptap.signal(signal.SIGHUP)
        await siptap.wait_for("reloaded", count=2)
        with pytest.raises((ssl.SSLError, trio.BrokenResourceError, OSError)):
            third = await CustomerSession.connect("127.0.0.1", port, customer_context(pki))
            await third.options()
        refused = await siptap.wait_for("connection_refused")
        assert refused[0]["reason"] == "max_connections" and refused[0]["limit"] == 1
        for session in (first, second):  # above the lowered limit, still relayed
            assert (await session.options()).status_code == 200
            await session.aclose()
        await siptap.wait_for("connection_closed", count=2)
        assert await siptap.stop() == 0
        nursery.cancel_scope.cancel()


async def test_reverse_route_core_initiated_connection(pki: Path, tmp_path: Path) -> None:
    """The core dials siptap's reverse listener; siptap dials the E-SBC with RSA-only suites."""
    issue_leaf(tmp_path, "proxy-both", usage="both", ca_dir=pki)
    async with trio.open_nursery() as nursery:
        # The E-SBC as a TLS server (it accepts the core's requests relayed by siptap).
        esbc = LabCore(core_context(pki, cert="core", ciphers=IMG2020_CIPHERS))
        esbc_port = await nursery.start(functools.partial(esbc.serve, "127.0.0.1", 0))
        core, core_port = await start_lab_core(nursery, pki)
        reverse = reverse_route(pki, tmp_path / "proxy-both", esbc_port)
        config = write_config(tmp_path, pki, cores=[core_port])
        config.write_text(config.read_text() + reverse)
        siptap = SiptapProcess(config)
        await siptap.start(nursery)
        reverse_port = await siptap.port(leg="core")
        # The "core" opens its own connection toward the customer, via siptap.
        core_as_client = await CustomerSession.connect("127.0.0.1", reverse_port, customer_context(pki, cert="proxy-client"))
        assert (await core_as_client.options()).status_code == 200
        await core_as_client.aclose()
        await siptap.wait_for("connection_closed")
        assert await siptap.stop() == 0
        nursery.cancel_scope.cancel()
    accepted = siptap.find("handshake_done", leg="core")[0]
    dialled = siptap.find("handshake_done", leg="customer")[0]
    assert accepted["role"] == "server" and dialled["role"] == "client"
    assert dialled["version"] == "TLSv1.2" and dialled["key_exchange"] == "RSA"
    assert dialled["upstream"] == f"127.0.0.1:{esbc_port}"
    assert esbc.received == core_as_client.sent
    sip = siptap.find("sip")
    assert {e["direction"] for e in sip} == {"core->customer", "customer->core"}


async def test_a_renamed_reverse_route_keeps_its_listener(pki: Path, tmp_path: Path) -> None:
    """A SIGHUP that renames a route with a reverse listener (same addresses) hands that
    listener the renamed route's plan: its next connection is the new name's, not refused or
    left on the old plan with a warning."""
    issue_leaf(tmp_path, "proxy-both", usage="both", ca_dir=pki)
    async with trio.open_nursery() as nursery:
        esbc = LabCore(core_context(pki, cert="core", ciphers=IMG2020_CIPHERS))
        esbc_port = await nursery.start(functools.partial(esbc.serve, "127.0.0.1", 0))
        core, core_port = await start_lab_core(nursery, pki)
        # A fixed reverse port (a free one): port 0 is never matched by address across a reload.
        reverse = reverse_route(pki, tmp_path / "proxy-both", esbc_port).replace(
            '"127.0.0.1:0"', f'"127.0.0.1:{free_port()}"')
        config = write_config(tmp_path, pki, cores=[core_port])
        config.write_text(config.read_text() + reverse)
        siptap = SiptapProcess(config)
        await siptap.start(nursery)
        reverse_port = await siptap.port(leg="core")
        for expected in (1, 2):
            core_as_client = await CustomerSession.connect("127.0.0.1", reverse_port,
                                                           customer_context(pki, cert="proxy-client"))
            assert (await core_as_client.options()).status_code == 200
            await core_as_client.aclose()
            await siptap.wait_for("connection_closed", count=expected)
            if expected == 1:
                config.write_text(config.read_text().replace('name = "test"', 'name = "renamed"'))
                siptap.signal(signal.SIGHUP)
                await siptap.wait_for("reloaded")
        assert await siptap.stop() == 0
        nursery.cancel_scope.cancel()
    assert not siptap.find("reload_route_missing") and not siptap.find("reload_routes_added")
    assert [e["route"] for e in siptap.find("connection_closed")] == ["test", "renamed"]

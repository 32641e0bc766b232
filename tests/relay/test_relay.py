"""`siptap run` between a real TLS customer and a real TLS core, over loopback sockets."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from siptap.tools.lab.core import start_lab_core
from siptap.tools.lab.customer import CustomerSession, customer_context
from tests.relay.harness import SiptapProcess, write_config


async def test_trunk_of_many_transactions_and_keepalives(pki: Path, tmp_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        core, core_port = await start_lab_core(nursery, pki)
        siptap = SiptapProcess(write_config(tmp_path, pki, cores=[core_port]))
        await siptap.start(nursery)
        port = await siptap.port()
        session = await CustomerSession.connect("127.0.0.1", port, customer_context(pki))
        codes = []
        for i in range(5):
            codes.append(await session.call(media_port=30000 + 2 * i))
            await session.ping()
            assert (await session.options()).status_code == 200
        await session.aclose()
        closed = await siptap.wait_for("connection_closed")
        assert await siptap.stop() == 0
        nursery.cancel_scope.cancel()

    assert codes == [["100", "180", "200", "200"]] * 5
    assert session.pongs == 5
    # What the core received is byte-for-byte what the customer sent (keepalives aside).
    assert core.received == session.sent
    assert core.connections == 1
    # The core verified siptap's client certificate.
    assert dict(x[0] for x in core.peers[0]["subject"])["commonName"] == "proxy-client"

    accepted = siptap.find("connection_accepted")[0]
    conn = accepted["conn"]
    assert all(e["route"] == "test" for e in siptap.events if e.get("conn") == conn)
    customer_hs, core_hs = siptap.find("handshake_done", conn=conn)
    assert customer_hs["leg"] == "customer" and customer_hs["key_exchange"] == "RSA"
    assert customer_hs["version"] == "TLSv1.2" and customer_hs["cipher"] == "AES256-GCM-SHA384"
    assert customer_hs["peer_certificate"]["common_name"] == "customer"
    assert any(line.startswith("CLIENT_RANDOM ") for line in customer_hs["keylog"])
    assert core_hs["leg"] == "core" and core_hs["peer_certificate"]["common_name"] == "core"
    assert core_hs["keylog"]  # NSS lines for the core leg too
    # Every SIP message was logged once, with direction, and Call-IDs match what was sent.
    sip = siptap.find("sip", conn=conn)
    up = [e for e in sip if e["direction"] == "customer->core"]
    down = [e for e in sip if e["direction"] == "core->customer"]
    assert len(up) == len(session.sent) and len(down) == len(session.received)
    sent_call_ids = {line.split(b": ", 1)[1].decode() for m in session.sent for line in m.split(b"\r\n")
                     if line.startswith(b"Call-ID: ")}
    assert {e["call_id"] for e in up} == sent_call_ids
    assert [e["method"] for e in up[:3]] == ["INVITE", "ACK", "BYE"]
    assert [e["status"] for e in down[:4]] == [100, 180, 200, 200]
    srtp = siptap.find("srtp_key", conn=conn)
    assert len(srtp) == 10  # one a=crypto per INVITE and per 200 OK
    assert closed[0]["closed_by"] == "customer" and "close_notify" in closed[0]["reason"]
    observed = siptap.find("connection_observed", conn=conn)
    assert observed[0]["messages_customer_to_core"] == len(session.sent)
    assert observed[0]["keepalives"] == 10  # 5 pings up, 5 pongs down
    assert siptap.find("key_material_in_logs")


async def test_failover_to_second_core(pki: Path, tmp_path: Path) -> None:
    dead = trio.socket.socket()
    await dead.bind(("127.0.0.1", 0))  # bound, never listening: connection refused
    dead_port = dead.getsockname()[1]
    async with trio.open_nursery() as nursery:
        core, core_port = await start_lab_core(nursery, pki)
        siptap = SiptapProcess(write_config(tmp_path, pki, cores=[dead_port, core_port]))
        await siptap.start(nursery)
        session = await CustomerSession.connect("127.0.0.1", await siptap.port(), customer_context(pki))
        assert (await session.options()).status_code == 200
        await session.aclose()
        await siptap.stop()
        nursery.cancel_scope.cancel()
    dead.close()
    failed = siptap.find("upstream_failed")
    assert failed[0]["upstream"] == f"127.0.0.1:{dead_port}" and failed[0]["next"] == f"127.0.0.1:{core_port}"
    assert siptap.find("handshake_done", leg="core")[0]["upstream"] == f"127.0.0.1:{core_port}"


async def test_no_core_reachable_closes_customer_with_reason(pki: Path, tmp_path: Path) -> None:
    dead = trio.socket.socket()
    await dead.bind(("127.0.0.1", 0))
    async with trio.open_nursery() as nursery:
        siptap = SiptapProcess(write_config(tmp_path, pki, cores=[dead.getsockname()[1]]))
        await siptap.start(nursery)
        port = await siptap.port()
        session = await CustomerSession.connect("127.0.0.1", port, customer_context(pki))
        with pytest.raises(EOFError):
            await session.options()
        await session.aclose()
        await siptap.wait_for("no_upstream")
        # The route keeps serving: a second customer is accepted and handshaken.
        second = await CustomerSession.connect("127.0.0.1", port, customer_context(pki))
        await second.aclose()
        await siptap.wait_for("handshake_done", count=2, leg="customer")
        await siptap.stop()
        nursery.cancel_scope.cancel()
    dead.close()
    closed = siptap.find("connection_closed")
    assert closed[0]["reason"] == "no_upstream"


async def test_core_closing_closes_customer(pki: Path, tmp_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        core, core_port = await start_lab_core(nursery, pki, close_after=1)
        siptap = SiptapProcess(write_config(tmp_path, pki, cores=[core_port]))
        await siptap.start(nursery)
        session = await CustomerSession.connect("127.0.0.1", await siptap.port(), customer_context(pki))
        assert (await session.options()).status_code == 200
        with pytest.raises(EOFError):
            await session.next_message()  # the core closed after one request: so are we
        await session.aclose()
        closed = await siptap.wait_for("connection_closed")
        await siptap.stop()
        nursery.cancel_scope.cancel()
    assert closed[0]["closed_by"] == "core"


async def test_garbage_after_handshake_is_relayed_byte_for_byte(pki: Path, tmp_path: Path) -> None:
    garbage = bytes(range(256)) * 40 + b"\r\n\r\nnot SIP at all\r\n"
    async with trio.open_nursery() as nursery:
        core, core_port = await start_lab_core(nursery, pki)
        siptap = SiptapProcess(write_config(tmp_path, pki, cores=[core_port]))
        await siptap.start(nursery)
        session = await CustomerSession.connect("127.0.0.1", await siptap.port(), customer_context(pki))
        # Use a raw echo of what the core got: the lab core records messages only, so compare via
        # a byte counter in siptap's close event plus the unframeable event.
        await session.stream.send_all(garbage)
        await session.aclose()
        # One line per skipped region, written when the region ends: here at the close (issue 13).
        await siptap.wait_for("unframeable")
        closed = await siptap.wait_for("connection_closed")
        observed = await siptap.wait_for("connection_observed")
        await siptap.stop()
        nursery.cancel_scope.cancel()
    assert closed[0]["bytes_customer_to_core"] == len(garbage)
    assert observed[0]["unframeable_bytes"] == len(garbage)
    event = siptap.find("unframeable")[0]
    assert event["direction"] == "customer->core"

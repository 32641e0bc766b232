"""JSON lines: the event shapes, and delivery over TCP, UDP, Unix stream and Unix datagram
sockets, including a Unix socket without reader at start-up and a reader that stalls."""

from __future__ import annotations

import base64
import json
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import trio
import trio.testing

from siptap.config import Endpoint
from siptap.config.mirror import JsonlSinkSettings
from siptap.mirror.events import MirrorEvent
from siptap.mirror.fanout import Fanout
from siptap.mirror.jsonl import JsonlSink
from siptap.mirror.render import event_to_dict

from .helpers import (
    CALL_ID,
    closed,
    dialog_events,
    key_event,
    read_until,
    recv_datagrams,
    sip_event,
    srtp_event,
    udp_reader,
    unix_listener,
)


def all_events() -> list[MirrorEvent]:
    return [key_event(), *dialog_events(), srtp_event(), closed()]


def test_sip_event_shape() -> None:
    event = dialog_events()[3]  # 200 OK, server -> client
    d = event_to_dict(event, payload=True)
    assert d["type"] == "sip"
    assert d["ts"] == "2023-11-14T22:13:20.280000Z"
    assert d["epoch"] == pytest.approx(event.ts)
    assert (d["conn_id"], d["route"], d["leg"]) == ("c1", "lab", "customer")
    assert d["src"] == {"ip": "192.0.2.1", "port": 5061}
    assert d["dst"] == {"ip": "192.0.2.10", "port": 40000}
    assert d["direction"] == "server->client"
    assert d["sip"]["status"] == 200 and d["sip"]["call_id"] == CALL_ID and d["sip"]["cseq_method"] == "INVITE"
    assert d["sip"]["to_tag"] == "a6c85cf" and d["sip"]["via_branch"] == "z9hG4bK776asdhds"
    assert d["size"] == len(event.data) and d["payload"] == event.data.decode()
    assert "payload_b64" not in d
    assert "payload" not in event_to_dict(event, payload=False)
    json.dumps(d)


def test_undecodable_payload_keeps_exact_bytes() -> None:
    data = b"MESSAGE sip:x SIP/2.0\r\nCall-ID: q\r\n\r\n\xff\xfe"
    d = event_to_dict(sip_event(data))
    assert d["payload"].endswith("\\xff\\xfe")
    assert base64.b64decode(d["payload_b64"]) == data


def test_key_srtp_and_close_shapes() -> None:
    k = event_to_dict(key_event())
    assert k["type"] == "tls_keys" and k["client"] == {"ip": "192.0.2.10", "port": 40000}
    assert k["tls"]["keylog"][1].startswith("CLIENT_RANDOM ") and k["tls"]["master_secret"] == "cd" * 48
    s = event_to_dict(srtp_event())
    key = srtp_event().key
    assert s["type"] == "srtp_key" and s["call_id"] == CALL_ID and s["sip"] == "INVITE"
    assert s["srtp"]["suite"] == "AES_CM_128_HMAC_SHA1_80"
    assert base64.b64decode(s["srtp"]["inline"]) == key.master_key + key.master_salt
    assert s["srtp"]["key_salt_hex"] == (key.master_key + key.master_salt).hex()
    assert (s["srtp"]["media"], s["srtp"]["port"], s["srtp"]["address"]) == ("audio", 49170, "192.0.2.10")
    c = event_to_dict(closed())
    assert c["type"] == "connection_closed" and c["messages_observed"] == 7


def check_lines(lines: list[bytes]) -> None:
    events = all_events()
    assert len(lines) == len(events)
    objs = [json.loads(line) for line in lines]
    assert [o["type"] for o in objs] == ["tls_keys", *["sip"] * 7, "srtp_key", "connection_closed"]
    assert [o["payload"] for o in objs[1:8]] == [e.data.decode() for e in events[1:8]]


async def run_with(sink: JsonlSink, deliver: Callable[[Fanout], Awaitable[None]]) -> Fanout:
    fanout = Fanout([sink])
    async with trio.open_nursery() as nursery:
        await nursery.start(fanout.run)
        await deliver(fanout)
        await fanout.aclose()
    return fanout


async def test_tcp() -> None:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    sink = JsonlSink(JsonlSinkSettings(transport="tcp", address=Endpoint("127.0.0.1", port)))

    async def deliver(fanout: Fanout) -> None:
        await sink.link.wait_connected()
        stream = await listeners[0].accept()
        for event in all_events():
            fanout.publish(event)
        data = await read_until(stream, lambda b: b.count(b"\n") >= 10)
        check_lines(data.splitlines())
        await stream.aclose()

    await run_with(sink, deliver)
    await listeners[0].aclose()
    assert sink.sent == 10 and sink.dropped == 0


async def test_udp_one_object_per_datagram() -> None:
    reader = await udp_reader()
    port = reader.getsockname()[1]
    sink = JsonlSink(JsonlSinkSettings(transport="udp", address=Endpoint("127.0.0.1", port)))

    async def deliver(fanout: Fanout) -> None:
        await sink.link.wait_connected()
        for event in all_events():
            fanout.publish(event)
        datagrams = await recv_datagrams(reader, 10)
        assert not any(d.endswith(b"\n") for d in datagrams)
        check_lines(datagrams)

    await run_with(sink, deliver)
    reader.close()


async def test_unix_stream(tmp_path: Path) -> None:
    path = tmp_path / "mirror.sock"
    listener = await unix_listener(path)
    sink = JsonlSink(JsonlSinkSettings(transport="unix", path=path))

    async def deliver(fanout: Fanout) -> None:
        await sink.link.wait_connected()
        conn, _ = await listener.accept()
        stream = trio.SocketStream(conn)
        for event in all_events():
            fanout.publish(event)
        check_lines((await read_until(stream, lambda b: b.count(b"\n") >= 10)).splitlines())
        await stream.aclose()

    await run_with(sink, deliver)
    listener.close()


async def test_unix_datagram(tmp_path: Path) -> None:
    path = tmp_path / "mirror.dgram"
    reader = await unix_listener(path, socket.SOCK_DGRAM)
    sink = JsonlSink(JsonlSinkSettings(transport="unix-dgram", path=path))

    async def deliver(fanout: Fanout) -> None:
        await sink.link.wait_connected()
        for event in all_events():
            fanout.publish(event)
        check_lines(await recv_datagrams(reader, 10))

    await run_with(sink, deliver)
    reader.close()


@pytest.mark.parametrize("transport", ["unix", "unix-dgram"])
@pytest.mark.parametrize("stale", [False, True], ids=["missing", "stale-socket-file"])
async def test_unix_without_reader_at_start(tmp_path: Path, transport: str, stale: bool) -> None:
    path = tmp_path / "mirror.sock"
    kind = socket.SOCK_STREAM if transport == "unix" else socket.SOCK_DGRAM
    if stale:  # a socket file left by a reader that died: connect() says ECONNREFUSED
        s = socket.socket(socket.AF_UNIX, kind)
        s.bind(str(path))
        s.close()
    sink = JsonlSink(JsonlSinkSettings(transport=transport, path=path), backoff_initial=0.01, backoff_max=0.05)
    events = all_events()
    fanout = Fanout([sink])
    async with trio.open_nursery() as nursery:
        await nursery.start(fanout.run)
        assert all(fanout.publish(e) for e in events)  # the relay's side: instant, accepted
        await sink.wait_handled(len(events))
        assert sink.dropped == len(events) and sink.drop_reasons == {"peer down": len(events)}
        # The link's first connect attempt has failed by the time every task waits
        # (loopback and Unix connects are refused synchronously).
        await trio.testing.wait_all_tasks_blocked()
        assert sink.errors >= 1 and sink.last_error is not None

        # The reader shows up: the link connects by itself and later events flow.
        path.unlink(missing_ok=True)
        listener = await unix_listener(path, kind)
        await sink.link.wait_connected()
        fanout.publish(events[1])
        if transport == "unix":
            conn, _ = await listener.accept()
            line = await read_until(trio.SocketStream(conn), lambda b: b.endswith(b"\n"))
            conn.close()
        else:
            (line,) = await recv_datagrams(listener, 1)
        assert json.loads(line)["sip"]["method"] == "INVITE"
        await fanout.aclose()
        listener.close()
    assert sink.sent == 1


async def test_stalled_reader_costs_drops_not_memory(tmp_path: Path) -> None:
    path = tmp_path / "mirror.sock"
    listener = await unix_listener(path)
    sink = JsonlSink(JsonlSinkSettings(transport="unix", path=path), send_timeout=0.05,
                     backoff_initial=0.01, backoff_max=0.05)
    big = sip_event(b"MESSAGE sip:x SIP/2.0\r\nCall-ID: big\r\n\r\n" + b"x" * 60000)
    fanout = Fanout([sink], queue_size=10)
    async with trio.open_nursery() as nursery:
        await nursery.start(fanout.run)
        await sink.link.wait_connected()
        conn, _ = await listener.accept()  # accepted, never read
        published = 0
        while sink.dropped == 0 or sink.handled < published:
            fanout.publish(big)
            published += 1
            await sink.wait_handled(published)
        assert fanout.stats()[sink.name]["queued"] == 0
        assert "send timed out" in sink.drop_reasons
        await fanout.aclose()
        conn.close()
        listener.close()
    assert sink.sent + sink.dropped == published


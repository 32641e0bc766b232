"""HEP sink: packets decoded by the sans-IO decoder match the events (UDP and TCP), a
collector down at start-up costs counted drops and is reconnected, and a real consumer
(sngrep -L) records every message of a dialog."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
import trio
import trio.testing

from siptap.config import Endpoint
from siptap.config.mirror import HepSinkSettings
from siptap.mirror.fanout import Fanout
from siptap.mirror.hep import HepSink
from siptap.sansio import hep
from siptap.sansio.keylog import parse_line

from .helpers import (
    CALL_ID,
    CORE,
    CUSTOMER,
    EXPECTED,
    closed,
    dialog_events,
    free_port,
    key_event,
    recv_datagrams,
    sip_event,
    srtp_event,
    udp_reader,
)


def settings(port: int, **kw: object) -> HepSinkSettings:
    return HepSinkSettings(Endpoint("127.0.0.1", port), **kw)  # type: ignore[arg-type]  # kw: any of its fields, per test


async def test_udp_packets_match_events() -> None:
    reader = await udp_reader()
    port = reader.getsockname()[1]
    sink = HepSink(settings(port, capture_id=4242, auth_key="s3cret", node_name="lab-1"))
    fanout = Fanout([sink])
    events = dialog_events()
    async with trio.open_nursery() as nursery:
        await nursery.start(fanout.run)
        await sink.link.wait_connected()
        for event in [*events, key_event(), srtp_event(), closed()]:
            assert fanout.publish(event)
        datagrams = await recv_datagrams(reader, len(events) + 2)
        await fanout.aclose()
    packets = [hep.decode(d) for d in datagrams]
    for event, packet in zip(events, packets):
        assert (packet.src_ip, packet.src_port) == event.src
        assert (packet.dst_ip, packet.dst_port) == event.dst
        assert packet.ts_sec + packet.ts_usec / 1e6 == pytest.approx(event.ts, abs=1e-6)
        assert packet.payload == event.data
        assert packet.correlation_id == CALL_ID.encode()
        assert (packet.ip_proto, packet.proto_type) == (hep.IPPROTO_TCP, hep.PROTO_SIP)
        assert (packet.capture_id, packet.auth_key, packet.node_name) == (4242, b"s3cret", b"lab-1")
    # Key material: log packets. TLS keys: key-log lines then JSON, correlated by connection.
    keys, srtp = packets[-2:]
    assert keys.proto_type == hep.PROTO_LOG == srtp.proto_type
    assert keys.correlation_id == CUSTOMER.conn_id.encode()
    assert (keys.src_ip, keys.src_port, keys.dst_ip, keys.dst_port) == (*CUSTOMER.client, *CUSTOMER.server)
    *lines, info = keys.payload.decode().splitlines()
    assert [parse_line(line).label for line in lines] == ["RSA", "CLIENT_RANDOM"]  # type: ignore[union-attr]  # None fails the test anyway
    meta = json.loads(info)
    assert meta["type"] == "tls_keys" and meta["tls"]["cipher"] == "AES256-GCM-SHA384"
    assert srtp.correlation_id == CALL_ID.encode()
    assert json.loads(srtp.payload)["srtp"]["master_key_hex"] == srtp_event().key.master_key_hex
    assert fanout.stats()[sink.name] | {"drop_reasons": {}} == {
        "queued": 0, "sent": 9, "dropped": 0, "errors": 0, "restarts": 0, "drop_reasons": {}, "last_error": None,
    }


async def test_tls_ip_proto_and_no_key_material() -> None:
    reader = await udp_reader()
    sink = HepSink(settings(reader.getsockname()[1], ip_proto="tls", log_key_material=False))
    fanout = Fanout([sink], legs="core")
    async with trio.open_nursery() as nursery:
        await nursery.start(fanout.run)
        await sink.link.wait_connected()
        fanout.publish(key_event(CORE))  # not accepted: never queued
        fanout.publish(sip_event(b"OPTIONS sip:x SIP/2.0\r\nCall-ID: z\r\n\r\n", leg=CORE))
        (datagram,) = await recv_datagrams(reader, 1)
        await fanout.aclose()
    packet = hep.decode(datagram)
    assert packet.ip_proto == 22
    assert packet.correlation_id == b"z"
    assert sink.sent == 1 and sink.dropped == 0


async def test_oversize_message_dropped_with_reason() -> None:
    reader = await udp_reader()
    sink = HepSink(settings(reader.getsockname()[1]))
    fanout = Fanout([sink])
    big = sip_event(b"MESSAGE sip:x SIP/2.0\r\nCall-ID: big\r\n\r\n" + b"x" * 70000)
    async with trio.open_nursery() as nursery:
        await nursery.start(fanout.run)
        await sink.link.wait_connected()
        fanout.publish(big)
        fanout.publish(dialog_events()[0])
        (datagram,) = await recv_datagrams(reader, 1)
        await fanout.aclose()
    assert hep.decode(datagram).correlation_id == CALL_ID.encode()
    assert sink.drop_reasons == {"too large for HEP": 1}
    assert sink.sent == 1


async def test_udp_collector_down_counts_refused_datagrams() -> None:
    port = free_port(kind=2)  # SOCK_DGRAM
    sink = HepSink(settings(port), backoff_initial=60)
    fanout = Fanout([sink])
    events = dialog_events()
    async with trio.open_nursery() as nursery:
        await nursery.start(fanout.run)
        await sink.link.wait_connected()
        for event in events:
            fanout.publish(event)
        await sink.wait_handled(len(events))
        await fanout.aclose()
    # Loopback answers with ICMP port unreachable: a later send reports ECONNREFUSED, the
    # link counts as down, and the rest are dropped until the next probe.
    assert sink.sent + sink.dropped == len(events)
    assert sink.drop_reasons["send failed (ECONNREFUSED)"] == 1
    assert set(sink.drop_reasons) <= {"send failed (ECONNREFUSED)", "peer down"}
    assert sink.errors >= 1 and not sink.link.connected


async def read_hep_stream(stream: trio.SocketStream, count: int) -> list[hep.HepPacket]:
    buf, packets = b"", []
    with trio.fail_after(5):
        while len(packets) < count:
            size = hep.frame_length(buf)
            if size is not None and len(buf) >= size:
                packets.append(hep.decode(buf[:size]))
                buf = buf[size:]
                continue
            chunk = await stream.receive_some(65536)
            assert chunk, "collector connection closed early"
            buf += chunk
    return packets


async def test_tcp_collector_down_at_start_then_up() -> None:
    port = free_port()
    sink = HepSink(settings(port, transport="tcp"), backoff_initial=0.01, backoff_max=0.05)
    fanout = Fanout([sink])
    events = dialog_events()
    async with trio.open_nursery() as nursery:
        await nursery.start(fanout.run)
        for event in events[:3]:
            assert fanout.publish(event)  # queued instantly, whatever the collector does
        await sink.wait_handled(3)
        assert sink.dropped == 3 and sink.drop_reasons == {"peer down": 3}
        # The link's first connect attempt has failed by the time every task waits
        # (loopback and Unix connects are refused synchronously).
        await trio.testing.wait_all_tasks_blocked()
        assert sink.errors >= 1  # connection refused, counted

        listeners = await trio.open_tcp_listeners(port, host="127.0.0.1")
        await sink.link.wait_connected()
        stream = await listeners[0].accept()
        for event in events[3:]:
            fanout.publish(event)
        packets = await read_hep_stream(stream, 4)
        assert [p.payload for p in packets] == [e.data for e in events[3:]]

        # The collector goes away: the sink notices (EOF), drops while down, reconnects.
        await stream.aclose()
        await listeners[0].aclose()
        listeners = await trio.open_tcp_listeners(port, host="127.0.0.1")
        await sink.link.wait_connected()
        stream = await listeners[0].accept()
        assert sink.link.connects == 2
        fanout.publish(events[0])
        (packet,) = await read_hep_stream(stream, 1)
        assert packet.payload == events[0].data
        await fanout.aclose()
        await stream.aclose()
        await listeners[0].aclose()
    assert sink.sent == 5


# -- a real consumer --------------------------------------------------------------------


def udp_socket_state(port: int) -> list[str] | None:
    """The /proc/net/udp row of a socket bound to 127.0.0.1:port (None if none)."""
    for line in Path("/proc/net/udp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1] == f"0100007F:{port:04X}":
            return fields
    return None


@pytest.mark.peers
@pytest.mark.skipif(shutil.which("sngrep") is None or shutil.which("tshark") is None,
                    reason="needs sngrep and tshark (Debian packages)")
async def test_sngrep_receives_the_dialog(tmp_path: Path) -> None:
    port = free_port(kind=2)
    out = tmp_path / "out.pcap"
    proc = subprocess.Popen(
        ["sngrep", "-N", "-q", "-L", f"udp:127.0.0.1:{port}", "-O", str(out)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        # Ready = its HEP socket is bound; datagrams sent from then on wait in its buffer.
        with trio.fail_after(10):
            while udp_socket_state(port) is None:
                assert proc.poll() is None, "sngrep exited"
                await trio.sleep(0.01)  # polling a condition, bounded by fail_after
        sink = HepSink(settings(port))
        fanout = Fanout([sink])
        events = dialog_events()
        async with trio.open_nursery() as nursery:
            await nursery.start(fanout.run)
            await sink.link.wait_connected()
            for event in events:
                fanout.publish(event)
            await sink.wait_handled(len(events))
            await fanout.aclose()
        assert sink.sent == 7 and sink.dropped == 0
        # Everything read by sngrep: its socket's receive queue (field 5, tx:rx) is empty.
        with trio.fail_after(10):
            while udp_socket_state(port)[4].split(":")[1] != "00000000":  # type: ignore[index]  # the socket exists while sngrep runs
                await trio.sleep(0.01)
    finally:
        proc.send_signal(signal.SIGTERM)  # sngrep flushes its -O file on SIGTERM
        proc.wait(timeout=10)
    rows = subprocess.run(
        ["tshark", "-r", str(out), "-Y", "sip", "-T", "fields",
         "-e", "sip.Call-ID", "-e", "sip.Method", "-e", "sip.Status-Code", "-e", "ip.src", "-e", "udp.srcport"],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout.splitlines()
    got = [row.split("\t") for row in rows]
    assert [(m, s) for _, m, s, _, _ in got] == EXPECTED
    assert {c for c, *_ in got} == {CALL_ID}
    assert [(ip, int(p)) for *_, ip, p in got] == [e.src for e in events]
    assert os.stat(out).st_size > 0

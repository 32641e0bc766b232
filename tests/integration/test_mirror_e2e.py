"""Issue 4's proofs, end to end: `siptap run` relays real calls while its mirror feeds real
consumers. sngrep receives HEP, tshark reads the cleartext pcap and decrypts a tcpdump of the
core leg with siptap's key log; the JSON-lines socket carries the SRTP key of the call."""

from __future__ import annotations

import base64
import json
import signal
import subprocess
from pathlib import Path

import trio

from siptap.tools.lab.core import start_lab_core
from siptap.tools.lab.customer import CustomerSession, customer_context
from tests.integration.capture import LoopbackCapture, require, tshark_fields
from tests.mirror.helpers import free_port
from tests.mirror.test_hep import udp_socket_state
from tests.relay.harness import SiptapProcess, write_config

CUSTOMER_SDES_KEY = bytes(range(100, 130))  # what siptap.tools.lab.customer puts in its a=crypto


def mirror_config(tmp: Path, hep: str, jsonl: str) -> str:
    return f"""
[mirror]
legs = "customer"
[[mirror.hep]]
{hep}
[[mirror.jsonl]]
{jsonl}
[mirror.keylog]
path = "{tmp}/keys.log"
[mirror.pcap]
directory = "{tmp}/pcap"
[mirror.srtp_keys]
path = "{tmp}/srtp-keys.log"
"""


def call_ids(messages: list[bytes]) -> list[str]:
    out = []
    for message in messages:
        for line in message.split(b"\r\n"):
            if line.lower().startswith(b"call-id:"):
                out.append(line.split(b":", 1)[1].strip().decode())
    return out


async def accept_jsonl(listener: trio.socket.SocketType, lines: list[dict]) -> None:
    conn, _ = await listener.accept()
    buffer = b""
    while data := await conn.recv(65536):
        buffer += data
        *complete, buffer = buffer.split(b"\n")
        lines.extend(json.loads(line) for line in complete if line)
    conn.close()


@require("sngrep", "tshark", "tcpdump")
async def test_mirror_outputs_land_in_real_tools(pki: Path, tmp_path: Path) -> None:
    hep_port = free_port(kind=2)
    sock_path = tmp_path / "mirror.sock"
    listener = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
    await listener.bind(str(sock_path))
    listener.listen()
    sngrep_out = tmp_path / "sngrep.pcap"
    sngrep = subprocess.Popen(["sngrep", "-N", "-q", "-L", f"udp:127.0.0.1:{hep_port}", "-O", str(sngrep_out)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    jsonl: list[dict] = []
    try:
        with trio.fail_after(10):
            while udp_socket_state(hep_port) is None:
                await trio.sleep(0.01)  # polling a condition, bounded
        async with trio.open_nursery() as nursery:
            nursery.start_soon(accept_jsonl, listener, jsonl)
            core, core_port = await start_lab_core(nursery, pki)
            config = write_config(tmp_path, pki, cores=[core_port], top=mirror_config(
                tmp_path, hep=f'address = "127.0.0.1:{hep_port}"',
                jsonl=f'transport = "unix"\npath = "{sock_path}"'))
            siptap = SiptapProcess(config)
            await siptap.start(nursery)
            port = await siptap.port()
            with LoopbackCapture(tmp_path / "core-leg.pcap", [core_port]) as capture:
                session = await CustomerSession.connect("127.0.0.1", port, customer_context(pki))
                for i in range(3):
                    assert (await session.call(media_port=31000 + 2 * i))[-1] == "200"
                await session.aclose()
                await siptap.wait_for("connection_closed")
                await capture.wait_for_close(2)
            assert await siptap.stop() == 0
            with trio.fail_after(10):
                while (state := udp_socket_state(hep_port)) and state[4].split(":")[1] != "00000000":
                    await trio.sleep(0.01)
            nursery.cancel_scope.cancel()
    finally:
        sngrep.send_signal(signal.SIGTERM)
        sngrep.wait(timeout=10)
        listener.close()

    sent, received = session.sent, session.received
    relayed = len(sent) + len(received)
    expected_ids = sorted(call_ids(sent) + call_ids(received))
    mirror = siptap.find("mirror_stopped")[0]
    assert mirror["dropped"] == 0
    observed = siptap.find("connection_observed")[0]
    assert observed["messages_observed"] == relayed and observed["messages_mirrored"] == relayed

    # 1. HEP -> sngrep: every relayed message, with its Call-ID.
    rows = tshark_fields(sngrep_out, ["sip.Call-ID"])
    assert sorted(r[0] for r in rows) == expected_ids

    # 2. The cleartext pcap sink opens in tshark as SIP, with the customer leg's addresses.
    pcaps = sorted((tmp_path / "pcap").glob("*.pcap"))
    assert len(pcaps) == 1
    rows = tshark_fields(pcaps[0], ["sip.Call-ID", "ip.dst", "tcp.dstport", "tcp.analysis.flags"],
                         "-d", f"tcp.port=={port},sip")
    assert sorted(r[0] for r in rows) == expected_ids
    assert {(r[1], r[2]) for r in rows} >= {("127.0.0.1", str(port))}
    assert all(r[3] == "" for r in rows)

    # 3. A raw capture of the core leg (TLS 1.3, ECDHE) decrypts with siptap's key log.
    rows = tshark_fields(tmp_path / "core-leg.pcap", ["sip.Call-ID"],
                         "-o", f"tls.keylog_file:{tmp_path / 'keys.log'}", "-o", f"sip.tls.port:{core_port}")
    # A frame of the wire can carry several SIP messages (siptap forwards what arrived
    # together in one write): tshark then lists their Call-IDs comma-separated.
    assert sorted(cid for r in rows for cid in r[0].split(",")) == expected_ids
    assert (tmp_path / "keys.log").stat().st_mode & 0o777 == 0o600

    # 4. SRTP key events on the JSON-lines socket: the customer's a=crypto key, decoded.
    offers = [e for e in jsonl if e["type"] == "srtp_key" and e["direction"] == "client->server"]
    assert [e["sip"] for e in offers] == ["INVITE"] * 3
    for event in offers:
        assert event["srtp"]["suite"] == "AES_CM_128_HMAC_SHA1_80"
        assert event["srtp"]["inline"] == base64.b64encode(CUSTOMER_SDES_KEY).decode()
        assert event["srtp"]["master_key_hex"] == CUSTOMER_SDES_KEY[:16].hex()
        assert event["srtp"]["master_salt_hex"] == CUSTOMER_SDES_KEY[16:].hex()
    assert len([e for e in jsonl if e["type"] == "sip"]) == relayed
    lines = (tmp_path / "srtp-keys.log").read_text().splitlines()
    assert len([line for line in lines if f"key_salt={CUSTOMER_SDES_KEY.hex()}" in line]) == 3


async def test_collector_down_and_no_reader_do_not_disturb_the_relay(pki: Path, tmp_path: Path) -> None:
    dead_tcp = free_port()  # nothing listens: HEP over TCP keeps reconnecting
    async with trio.open_nursery() as nursery:
        core, core_port = await start_lab_core(nursery, pki)
        config = write_config(tmp_path, pki, cores=[core_port], top=mirror_config(
            tmp_path, hep=f'address = "127.0.0.1:{dead_tcp}"\ntransport = "tcp"',
            jsonl=f'transport = "unix"\npath = "{tmp_path}/nobody.sock"'))
        siptap = SiptapProcess(config)
        await siptap.start(nursery)
        session = await CustomerSession.connect("127.0.0.1", await siptap.port(), customer_context(pki))
        for i in range(3):
            assert await session.call(media_port=32000 + 2 * i) == ["100", "180", "200", "200"]
        await session.aclose()
        await siptap.wait_for("connection_closed")
        await siptap.wait_for("connection_observed")
        assert await siptap.stop() == 0
        nursery.cancel_scope.cancel()
    relayed = len(session.sent) + len(session.received)
    assert core.received == session.sent
    observed = siptap.find("connection_observed")[0]
    assert observed["messages_observed"] == relayed
    # Queued for the mirror, then dropped and counted by the two sinks whose peer is absent.
    assert siptap.find("mirror_events_dropped")
    totals = siptap.find("mirror_stopped")[0]
    assert totals["dropped"] >= 2 * relayed
    # The file sinks were unaffected.
    assert (tmp_path / "keys.log").read_text().count("CLIENT_RANDOM") >= 1

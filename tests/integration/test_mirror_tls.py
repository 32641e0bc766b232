"""Issue 15 part 3, end to end: `siptap run` relays real calls while its HEP and JSON-lines
outputs cross the "network" only inside mutual TLS, to real collectors: stunnel (TLS server,
client certificate required and verified) in front of Kamailio's sipcapture (HEPv3 over TCP)
and in front of a plain TCP reader (JSON lines). The messages are counted at the far end; a
collector that requires a client certificate refuses a siptap without one, and says so in
siptap's log; a collector that restarts is reconnected, with what was lost meanwhile counted.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import trio

from siptap.tools.lab.core import start_lab_core
from siptap.tools.lab.customer import CustomerSession, customer_context
from tests.integration.capture import require
from tests.integration.peers import Peer, free_port, kamailio_hep_collector, stunnel_collector
from tests.integration.test_mirror_e2e import call_ids
from tests.relay.harness import SiptapProcess, write_config

pytestmark = pytest.mark.peers

HEP_LINE = re.compile(r"HEP3 packet proto=(\d+) auth=(\S*) capture=(\d+) cid=(\S*)")


def tls_keys(pki: Path, *, client_cert: bool = True) -> str:
    out = f'transport = "tls"\nca = "{pki}/ca.pem"\nserver_name = "localhost"\n'
    if client_cert:
        out += f'cert = "{pki}/proxy-client.pem"\nkey = "{pki}/proxy-client.key"\n'
    return out


class LineReader:
    """The collector behind stunnel's JSON-lines front: a plain TCP reader that accepts every
    connection stunnel makes and keeps each JSON object it reads."""

    def __init__(self) -> None:
        self.lines: list[dict[str, object]] = []
        self.connections = 0
        self.port = 0

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        (listener,) = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listener.socket.getsockname()[1]
        task_status.started()
        async with listener, trio.open_nursery() as nursery:
            while True:
                stream = await listener.accept()
                self.connections += 1
                nursery.start_soon(self._read, stream)

    async def _read(self, stream: trio.SocketStream) -> None:
        buffer = b""
        async with stream:
            while data := await stream.receive_some(65536):
                buffer += data
                *complete, buffer = buffer.split(b"\n")
                self.lines.extend(json.loads(line) for line in complete if line)

    def sip(self) -> list[dict[str, object]]:
        return [line for line in self.lines if line["type"] == "sip"]


async def until(condition: object, what: str, timeout: float = 20.0) -> None:
    """Poll ``condition()`` (a cheap read of state another task fills) with a deadline."""
    with trio.move_on_after(timeout):
        while not condition():  # type: ignore[operator]  # a zero-argument callable
            await trio.sleep(0.02)  # polling a condition, bounded by the deadline
        return
    raise AssertionError(f"timed out waiting for {what}")


def hep_packets(kamailio: Peer) -> list[tuple[str, ...]]:
    return [m.groups() for m in HEP_LINE.finditer(kamailio.log.read_text(errors="replace"))]


async def calls(port: int, pki: Path, count: int, media_base: int) -> CustomerSession:
    session = await CustomerSession.connect("127.0.0.1", port, customer_context(pki))
    for i in range(count):
        assert (await session.call(media_port=media_base + 2 * i))[-1] == "200"
    await session.aclose()
    return session


@require("stunnel4", "kamailio")
async def test_hep_and_jsonl_over_mutual_tls_reach_real_collectors(pki: Path, tmp_path: Path) -> None:
    reader = LineReader()
    async with trio.open_nursery() as nursery:
        await nursery.start(reader.run)
        async with kamailio_hep_collector(tmp_path) as kamailio, \
                stunnel_collector(tmp_path, pki, connect_port=kamailio.ports[0], name="stunnel-hep") as hep_front, \
                stunnel_collector(tmp_path, pki, connect_port=reader.port, name="stunnel-jsonl") as jsonl_front:
            core, core_port = await start_lab_core(nursery, pki)
            config = write_config(tmp_path, pki, cores=[core_port], top=f"""
[mirror]
legs = "customer"
[[mirror.hep]]
address = "127.0.0.1:{hep_front.ports[0]}"
auth_key = "lab-s3cret"
capture_id = 4711
{tls_keys(pki)}
[[mirror.jsonl]]
address = "127.0.0.1:{jsonl_front.ports[0]}"
{tls_keys(pki)}
""")
            siptap = SiptapProcess(config)
            await siptap.start(nursery)
            port = await siptap.port()
            ups = await siptap.wait_for("mirror_link_up", count=2)
            session = await calls(port, pki, 3, 33000)
            relayed = len(session.sent) + len(session.received)
            await until(lambda: len([p for p in hep_packets(kamailio) if p[0] == "1"]) >= relayed, "HEP at Kamailio")
            await until(lambda: len(reader.sip()) >= relayed, "JSON lines at the reader")
            assert await siptap.stop() == 0
        nursery.cancel_scope.cancel()

    # stunnel (OpenSSL) showed it accepted siptap with its session ticket, not by staying quiet.
    assert {(e["tls_version"], e["client_certificate"], e["accepted"]) for e in ups} == {("TLSv1.3", True, "session ticket")}
    expected_ids = sorted(call_ids(session.sent) + call_ids(session.received))
    packets = hep_packets(kamailio)
    sip_packets = [p for p in packets if p[0] == "1"]
    # Every relayed message, once, with siptap's auth key chunk and capture id as sent.
    assert sorted(p[3] for p in sip_packets) == expected_ids
    assert {(p[1], p[2]) for p in packets} == {("lab-s3cret", "4711")}
    # The key material went too (HEP log packets, type 100), inside the same TLS connection.
    assert any(p[0] == "100" for p in packets)
    # sipcapture parsed each SIP payload as SIP.
    assert kamailio.log.read_text(errors="replace").count("HEP-SIP ") == relayed
    assert sorted(str(line["sip"]["call_id"]) for line in reader.sip()) == expected_ids  # type: ignore[index]  # a sip line's summary
    mirror = siptap.find("mirror_stopped")[0]
    assert mirror["dropped"] == 0 and not siptap.find("mirror_link_down")


@pytest.mark.parametrize("max_version", ["TLSv1.2", "TLSv1.3"])
@require("stunnel4")
async def test_collector_requiring_a_client_certificate_refuses_siptap_without_one(
        pki: Path, tmp_path: Path, max_version: str) -> None:
    reader = LineReader()
    async with trio.open_nursery() as nursery:
        await nursery.start(reader.run)
        async with stunnel_collector(tmp_path, pki, connect_port=reader.port, max_version=max_version) as front:
            core, core_port = await start_lab_core(nursery, pki)
            config = write_config(tmp_path, pki, cores=[core_port], top=f"""
[mirror]
[[mirror.jsonl]]
address = "127.0.0.1:{front.ports[0]}"
{tls_keys(pki, client_cert=False)}
""")
            siptap = SiptapProcess(config)
            await siptap.start(nursery)
            port = await siptap.port()
            down = (await siptap.wait_for("mirror_link_down"))[0]
            session = await calls(port, pki, 1, 34000)
            await siptap.wait_for("connection_observed")
            assert await siptap.stop() == 0
        nursery.cancel_scope.cancel()

    assert down["reason"] == {
        "TLSv1.2": "the collector refused the TLS handshake (TLS alert handshake_failure): it probably requires a "
                   "client certificate and siptap has none (set cert and key), or shares no cipher with siptap",
        "TLSv1.3": "the collector requires a client certificate and siptap has none (TLS alert certificate_required): "
                   "set cert and key",
    }[max_version], down
    assert down["sink"] == f"jsonl:tls:127.0.0.1:{front.ports[0]}"
    # The collector never saw a byte: stunnel refused before connecting its backend.
    assert reader.connections == 0 and reader.lines == []
    relayed = len(session.sent) + len(session.received)
    mirror = siptap.find("mirror_stopped")[0]
    assert mirror["errors"] >= 1
    # Refused: the link never came up, every event is a counted drop (the SIP messages and the
    # connection's key, SRTP and close events). With TLS 1.2 inside the handshake; with TLS 1.3
    # siptap's side of the handshake completes before the collector checks the certificate,
    # and the link waits for the collector's verdict (its alert) before it is up.
    assert mirror["sent"] == 0 and mirror["dropped"] > relayed
    assert not siptap.find("mirror_link_up")


@require("stunnel4")
async def test_collector_restart_is_reconnected_and_the_gap_is_counted(pki: Path, tmp_path: Path) -> None:
    reader = LineReader()
    accept_port = free_port()
    async with trio.open_nursery() as nursery:
        await nursery.start(reader.run)
        core, core_port = await start_lab_core(nursery, pki)
        config = write_config(tmp_path, pki, cores=[core_port], top=f"""
[mirror]
[[mirror.jsonl]]
address = "127.0.0.1:{accept_port}"
payload = false
{tls_keys(pki)}
""")
        siptap = SiptapProcess(config)
        async with stunnel_collector(tmp_path, pki, connect_port=reader.port, accept_port=accept_port):
            await siptap.start(nursery)
            port = await siptap.port()
            await siptap.wait_for("mirror_link_up")
            before = await calls(port, pki, 1, 35000)
            # Everything of the first connection is at the reader (its close is the last line).
            await until(lambda: any(line["type"] == "connection_closed" for line in reader.lines), "the first close")
        # The collector is gone (stunnel stopped, its TLS connections closed): siptap notices.
        await siptap.wait_for("mirror_link_down")
        during = await calls(port, pki, 1, 35100)
        await siptap.wait_for("connection_observed", count=2)
        async with stunnel_collector(tmp_path, pki, connect_port=reader.port, accept_port=accept_port):
            await siptap.wait_for("mirror_link_up", count=2, timeout=40)  # after the back-off
            after = await calls(port, pki, 1, 35200)
            await until(lambda: sum(line["type"] == "connection_closed" for line in reader.lines) == 2,
                        "the third connection's close")
            assert await siptap.stop() == 0
        nursery.cancel_scope.cancel()

    # The reader got the first and third connections in full, nothing of the second.
    by_conn: dict[object, int] = {}
    for line in reader.lines:
        by_conn[line["conn_id"]] = by_conn.get(line["conn_id"], 0) + 1
    first, third = by_conn.values()
    assert first == third, by_conn  # the same lab call: the same events
    got = {str(line["sip"]["call_id"]) for line in reader.sip()}  # type: ignore[index]  # a sip line's summary
    assert got == set(call_ids(before.sent) + call_ids(after.sent))
    assert not set(call_ids(during.sent)) & got
    # What the collector missed is exactly the second connection's events, counted as drops.
    mirror = siptap.find("mirror_stopped")[0]
    assert (mirror["sent"], mirror["dropped"]) == (first + third, first), mirror
    dropped = siptap.find("mirror_events_dropped")
    assert sum(e["dropped"] for e in dropped) == first and all(set(e["reasons"]) == {"peer down"} for e in dropped)

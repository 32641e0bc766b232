"""Faults around `siptap run`, over real loopback sockets: a core that dies mid-call, stalls in
its handshake or stops reading; a customer that vanishes; a HEP/TCP collector that is down,
goes away and comes back; key-log and capture outputs that cannot be written.

Each test checks, besides its own fault: a clear reason in siptap's JSON log, no crash
(``session_crashed``), the relay unaffected where the fault is elsewhere, and no leak: siptap's
open file count is back to the baseline taken after a warm-up connection, and its resident set
stays within a bound of that baseline. Synchronisation is on log events and peer state, never
on sleeps; the only fixed interval is the backpressure test's observation window, and a slow
machine can only make that test weaker, never make it fail.

Helpers come from test_hostile.py (fd/RSS measurement, crash extraction, RST close).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import socket
import ssl
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from siptap.sansio import hep
from siptap.sansio.sip_framer import KeepAlive, SipFramer, SipMessage
from siptap.sansio.sip_message import parse_message
from siptap.tools.lab.core import core_context
from siptap.tools.lab.customer import CustomerSession, customer_context
from siptap.tools.lab.sip import LabUas, request
from tests.integration.test_hostile import crashes, memory_kib, open_fds, peer_of, reset, reset_peak_rss
from tests.relay.harness import SiptapProcess, write_config

MiB = 1 << 20
CALL = ["100", "180", "200", "200"]
RSS_BOUND = 16 * MiB  # growth of siptap's resident set over the baseline allowed in any test


# -- a core whose connections misbehave on request --------------------------------------------


@dataclass
class FaultConnection:
    mode: str
    tcp: trio.SocketStream
    total: int = 0
    digest: Any = field(default_factory=hashlib.sha256)
    resume: trio.Event = field(default_factory=trio.Event)  # "paused": start reading
    ended: trio.Event = field(default_factory=trio.Event)


@dataclass
class FaultCore:
    """A mutual-TLS core (stdlib ssl) answering SIP like the lab core. Each new connection takes
    the next mode from ``modes`` (then "normal"):

    ``normal``        answers SIP, pongs pings, counts and hashes what it receives;
    ``die_mid_call``  answers an INVITE with 100 and 180 only, then dies: TCP reset, no
                      close_notify, as a crashed core host does;
    ``paused``        completes the handshake, then reads nothing until ``resume`` is set.
    """

    context: ssl.SSLContext
    modes: list[str] = field(default_factory=list)
    uas: LabUas = field(default_factory=LabUas)
    connections: list[FaultConnection] = field(default_factory=list)
    changed: trio.Event = field(default_factory=trio.Event)
    receive_buffer: int | None = None

    async def serve(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        sock = trio.socket.socket()
        if self.receive_buffer:  # set before listen(): accepted sockets inherit it
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.receive_buffer)
        await sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        listener = trio.SocketListener(sock)
        task_status.started(sock.getsockname()[1])
        await trio.serve_listeners(self._handle, [listener])

    def _notify(self) -> None:
        self.changed.set()
        self.changed = trio.Event()

    async def wait_until(self, condition: Any, timeout: float = 30.0) -> None:
        with trio.fail_after(timeout):
            while not condition():
                await self.changed.wait()

    async def _handle(self, tcp: trio.SocketStream) -> None:
        conn = FaultConnection(self.modes.pop(0) if self.modes else "normal", tcp)
        self.connections.append(conn)
        self._notify()
        stream = trio.SSLStream(tcp, self.context, server_side=True)
        framer = SipFramer()
        try:
            await stream.do_handshake()
            if conn.mode == "paused":
                await conn.resume.wait()
            while data := await stream.receive_some(65536):
                conn.total += len(data)
                conn.digest.update(data)
                self._notify()
                for event in framer.feed(data):
                    if isinstance(event, KeepAlive) and event.kind == "ping":
                        await stream.send_all(b"\r\n")
                    elif isinstance(event, SipMessage):
                        view = parse_message(event.data, event.header_end)
                        answers = self.uas.answer(view)
                        if conn.mode == "die_mid_call" and view.method == "INVITE":
                            for answer in answers[:2]:
                                await stream.send_all(answer)
                            reset(tcp)  # type: ignore[arg-type]
                            return
                        for answer in answers:
                            await stream.send_all(answer)
        except (trio.BrokenResourceError, trio.ClosedResourceError, ssl.SSLError, OSError):
            pass
        finally:
            with trio.move_on_after(2) as scope:
                scope.shield = True
                with contextlib.suppress(Exception):
                    await stream.aclose()
            conn.ended.set()
            self._notify()


@dataclass
class Stage:
    siptap: SiptapProcess
    port: int
    pid: int
    core: FaultCore
    baseline_fds: int
    baseline_rss_kib: int
    pki: Path
    core_port: int

    async def customer(self) -> CustomerSession:
        return await CustomerSession.connect("127.0.0.1", self.port, customer_context(self.pki))


@contextlib.asynccontextmanager
async def stage(pki: Path, tmp: Path, *, cores: list[int] | None = None, core: FaultCore | None = None,
                top: str = "", limits: str = "", check_relay: bool = True,
                handshake_timeout: float | None = None) -> AsyncIterator[Stage]:
    """siptap in front of a :class:`FaultCore` (plus ``cores`` listed before it); a warm-up call,
    then the fd and RSS baselines. On exit: a fresh customer completes a call (the relay is
    unaffected), every accepted connection logged connection_closed, no session crashed, fds are
    back to the baseline and the resident set within RSS_BOUND of it, and siptap exits 0."""
    core = core or FaultCore(core_context(pki))
    async with trio.open_nursery() as nursery:
        core_port = await nursery.start(core.serve)
        config = write_config(tmp, pki, cores=[*(cores or []), core_port], top=top, limits=limits)
        if handshake_timeout is not None:
            text = config.read_text()
            config.write_text(text.replace("handshake_timeout = 5.0", f"handshake_timeout = {handshake_timeout}"))
        siptap = SiptapProcess(config)
        await siptap.start(nursery)
        try:
            port = await siptap.port()
            assert siptap.process is not None
            pid = siptap.process.pid
            warm = await CustomerSession.connect("127.0.0.1", port, customer_context(pki))
            assert await warm.call() == CALL
            await warm.aclose()
            await siptap.wait_for("connection_closed", count=1)
            s = Stage(siptap, port, pid, core, open_fds(pid), memory_kib(pid, "VmRSS"), pki, core_port)
            reset_peak_rss(pid)

            yield s

            if check_relay:
                fresh = await s.customer()
                fresh_peer = peer_of(fresh.stream.transport_stream)  # type: ignore[arg-type]
                assert await fresh.call() == CALL
                await fresh.aclose()
                await siptap.wait_for("connection_closed", peer=fresh_peer)
            await wait_closed_all(siptap)
            assert open_fds(pid) == s.baseline_fds, " ".join(fd_targets(pid))
            rss = memory_kib(pid, "VmRSS")
            assert (rss - s.baseline_rss_kib) * 1024 < RSS_BOUND, (s.baseline_rss_kib, rss)
            assert not crashes(siptap), crashes(siptap)[:2]
            assert await siptap.stop() == 0
            nursery.cancel_scope.cancel()
        finally:
            if siptap.process is not None and siptap.process.returncode is None:
                siptap.process.kill()
                with trio.CancelScope(shield=True):
                    await siptap.process.wait()


def fd_targets(pid: int) -> list[str]:
    out = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            out.append(f"{fd}->{os.readlink(f'/proc/{pid}/fd/{fd}')}")
    return out


async def wait_closed_all(siptap: SiptapProcess, timeout: float = 30.0) -> None:
    with trio.fail_after(timeout):
        while len(siptap.find("connection_closed")) < len(siptap.find("connection_accepted")):
            await siptap._changed.wait()


async def invite_until_ringing(session: CustomerSession) -> str:
    call_id = f"{uuid.uuid4()}@customer.invalid"
    await session.send(request("INVITE", call_id=call_id, cseq=1, from_tag="f1", branch="z9hG4bK" + uuid.uuid4().hex))
    while (await session.next_message()).status_code != 180:
        pass
    return call_id


# -- the core side ------------------------------------------------------------------------------


async def test_core_dying_mid_call_closes_the_customer_naming_the_core(pki: Path, tmp_path: Path) -> None:
    async with stage(pki, tmp_path) as s:
        s.core.modes.append("die_mid_call")
        session = await s.customer()
        peer = peer_of(session.stream.transport_stream)  # type: ignore[arg-type]
        await invite_until_ringing(session)  # 100 and 180 came through; then the core is gone
        got = b""
        with trio.fail_after(20):
            try:
                while data := await session.stream.receive_some(65536):
                    got += data
            except trio.BrokenResourceError:
                pass  # siptap closed the customer leg (without close_notify reaching us is fine too)
        closed = await s.siptap.wait_for("connection_closed", peer=peer)
        observed = await s.siptap.wait_for("connection_observed", peer=peer)
        with contextlib.suppress(trio.BrokenResourceError):
            await session.aclose()
    assert b"SIP/2.0 200" not in got
    assert closed[0]["closed_by"] == "core", closed[0]
    assert closed[0]["reason"].startswith("core "), closed[0]  # "core connection broken: ..." and the like
    assert observed[0]["messages_core_to_customer"] == 2  # 100, 180


async def test_core_stalling_in_the_handshake_times_out_and_the_next_core_serves(pki: Path, tmp_path: Path) -> None:
    """A core that accepts TCP and never answers the ClientHello (the kernel completes the TCP
    handshake from the listen backlog: nobody ever accepts or reads)."""
    stalled = trio.socket.socket()
    await stalled.bind(("127.0.0.1", 0))
    stalled.listen(16)
    stalled_port = stalled.getsockname()[1]
    try:
        async with stage(pki, tmp_path, cores=[stalled_port], handshake_timeout=1.5) as s:
            # Every connection tries the stalled core first.
            session = await s.customer()
            assert await session.call() == CALL
            await session.aclose()
    finally:
        stalled.close()
    failed = s.siptap.find("upstream_failed", upstream=f"127.0.0.1:{stalled_port}")
    # warm-up, the test's call and the final fresh call each tried it first.
    assert len(failed) == 3, failed
    assert {f["reason"] for f in failed} == {"timeout"}, failed
    assert {f["next"] for f in failed} == {f"127.0.0.1:{s.core_port}"}
    assert all("1.5 s" in f["detail"] for f in failed), failed
    assert s.siptap.find("no_upstream") == []


async def test_only_core_stalling_gives_no_upstream(pki: Path, tmp_path: Path) -> None:
    stalled = trio.socket.socket()
    await stalled.bind(("127.0.0.1", 0))
    stalled.listen(16)
    stalled_port = stalled.getsockname()[1]
    async with trio.open_nursery() as nursery:
        siptap = SiptapProcess(write_config(tmp_path, pki, cores=[stalled_port]).with_suffix(".toml"))
        text = siptap.config.read_text().replace("handshake_timeout = 5.0", "handshake_timeout = 1.0")
        siptap.config.write_text(text)
        await siptap.start(nursery)
        port = await siptap.port()
        session = await CustomerSession.connect("127.0.0.1", port, customer_context(pki))
        await session.send(request("OPTIONS", call_id="stall@x", cseq=1, from_tag="t", branch="z9hG4bKstall"))
        with trio.fail_after(20):
            try:
                assert await session.stream.receive_some(65536) == b""
            except trio.BrokenResourceError:
                pass
        closed = await siptap.wait_for("connection_closed")
        assert await siptap.stop() == 0
        nursery.cancel_scope.cancel()
    stalled.close()
    failed = siptap.find("upstream_failed")
    assert [(f["reason"], f["next"]) for f in failed] == [("timeout", None)], failed
    assert siptap.find("no_upstream")[0]["attempts"] == [f"127.0.0.1:{stalled_port}"]
    assert closed[0]["reason"] == "no_upstream"
    assert not crashes(siptap)


async def test_core_that_stops_reading_back_pressures_the_customer(pki: Path, tmp_path: Path) -> None:
    """The customer keeps sending while the core reads nothing: siptap must stop reading from the
    customer (TCP backpressure) instead of buffering. Checked by what the customer could push
    (less than the total, within the window) and by siptap's peak resident set (a bound); then
    the core reads again and every byte arrives, in order."""
    total = 20 * MiB
    chunk = bytes(range(256)) * 1024  # 256 KiB
    payload_digest = hashlib.sha256(chunk * (total // len(chunk))).digest()
    core = FaultCore(core_context(pki), receive_buffer=64 * 1024)
    async with stage(pki, tmp_path, core=core) as s:
        s.core.modes.append("paused")
        session = await s.customer()
        peer = peer_of(session.stream.transport_stream)  # type: ignore[arg-type]
        await s.core.wait_until(lambda: len(s.core.connections) == 2)
        paused = s.core.connections[-1]
        assert paused.mode == "paused"
        sent = 0
        done = trio.Event()

        async def sender() -> None:
            nonlocal sent
            for _ in range(total // len(chunk)):
                await session.stream.send_all(chunk)
                sent += len(chunk)
            done.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(sender)
            with trio.move_on_after(3):  # the observation window (see the module docstring)
                await done.wait()
            pushed, peak_kib = sent, memory_kib(s.pid, "VmHWM")
            paused.resume.set()  # the core reads again: the customer's sends complete
        await session.aclose()
        closed = await s.siptap.wait_for("connection_closed", peer=peer)
        with trio.fail_after(30):
            await paused.ended.wait()
    assert pushed < total, f"the customer pushed all {total} bytes while the core read nothing"
    growth = (peak_kib - s.baseline_rss_kib) * 1024
    assert growth < RSS_BOUND, f"siptap's peak RSS grew by {growth / MiB:.1f} MiB with the core not reading"
    assert paused.total == total and paused.digest.digest() == payload_digest
    assert closed[0]["bytes_customer_to_core"] == total


# -- the customer side --------------------------------------------------------------------------

_VANISHING_CUSTOMER = r"""
import socket, ssl, sys, uuid
from pathlib import Path
from siptap.tools.lab.customer import customer_context
from siptap.tools.lab.sip import request
pki, port = Path(sys.argv[1]), int(sys.argv[2])
tls = customer_context(pki).wrap_socket(socket.create_connection(("127.0.0.1", port)), server_hostname="localhost")
tls.sendall(request("INVITE", call_id="vanish@customer.invalid", cseq=1, from_tag="v", branch="z9hG4bKvanish"))
got = b""
while b"SIP/2.0 180" not in got:
    got += tls.recv(65536)
print(tls.getsockname()[1], flush=True)
sys.stdin.read()  # until killed
"""


async def test_customer_killed_mid_call_closes_the_core_leg(pki: Path, tmp_path: Path) -> None:
    """A customer process killed (SIGKILL) mid-call: the kernel closes its socket, no TLS
    close_notify ever comes. siptap closes the core leg and says so."""
    async with stage(pki, tmp_path) as s:
        proc = await trio.lowlevel.open_process(
            [sys.executable, "-c", _VANISHING_CUSTOMER, str(s.pki), str(s.port)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=Path(__file__).parents[2],
        )
        try:
            assert proc.stdout is not None
            line = b""
            with trio.fail_after(20):
                while not line.endswith(b"\n"):
                    data = await proc.stdout.receive_some(100)
                    assert data, "the customer process ended early"
                    line += data
            peer = f"127.0.0.1:{int(line)}"
            core_conn = s.core.connections[-1]
            proc.send_signal(signal.SIGKILL)
        finally:
            with trio.CancelScope(shield=True):
                if proc.returncode is None:
                    proc.kill()
                await proc.wait()
        closed = await s.siptap.wait_for("connection_closed", peer=peer)
        with trio.fail_after(20):
            await core_conn.ended.wait()  # the core leg was closed too
    assert closed[0]["closed_by"] == "customer", closed[0]
    assert closed[0]["reason"].startswith("customer "), closed[0]["reason"]


# -- mirror outputs -------------------------------------------------------------------------------


@dataclass
class Collector:
    """A HEP-over-TCP collector on a fixed port that can be stopped and started again."""

    port: int
    packets: list[hep.HepPacket] = field(default_factory=list)
    changed: trio.Event = field(default_factory=trio.Event)
    scope: trio.CancelScope | None = None

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        sock = trio.socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        await sock.bind(("127.0.0.1", self.port))
        sock.listen(4)
        with trio.CancelScope() as self.scope:
            task_status.started()
            try:
                await trio.serve_listeners(self._handle, [trio.SocketListener(sock)])
            finally:
                sock.close()

    async def _handle(self, stream: trio.SocketStream) -> None:
        buffer = bytearray()
        try:
            while data := await stream.receive_some(65536):
                buffer += data
                while (size := hep.frame_length(buffer)) is not None and len(buffer) >= size:
                    self.packets.append(hep.decode(bytes(buffer[:size])))
                    del buffer[:size]
                    self.changed.set()
                    self.changed = trio.Event()
        finally:
            await stream.aclose()

    def stop(self) -> None:
        assert self.scope is not None
        self.scope.cancel()

    def correlated(self, call_id: str) -> list[hep.HepPacket]:
        return [p for p in self.packets if p.correlation_id == call_id.encode() and p.proto_type == hep.PROTO_SIP]

    async def wait_for(self, call_id: str, timeout: float = 20.0) -> None:
        with trio.fail_after(timeout):
            while not self.correlated(call_id):
                await self.changed.wait()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _options(session: CustomerSession) -> str:
    call_id = f"{uuid.uuid4()}@customer.invalid"
    await session.send(request("OPTIONS", call_id=call_id, cseq=1, from_tag="o", branch="z9hG4bK" + uuid.uuid4().hex))
    assert (await session.final_response()).status_code == 200
    return call_id


async def _dropped_after_observed(siptap: SiptapProcess, call_id: str) -> None:
    """Wait until the mirror has observed both messages of ``call_id`` and then logged a
    mirror_events_dropped line: the sinks get a slice's events in the same step that logs its
    sip lines, so a drop line after them counts these too. A drop line alone is not enough:
    it may report earlier drops while these still wait in the mirror's batch (up to
    [mirror] batch_interval), to be delivered after the collector is back."""
    await siptap.wait_for("sip", count=2, call_id=call_id)
    observed = max(i for i, e in enumerate(siptap.events) if e.get("event") == "sip" and e.get("call_id") == call_id)
    with trio.fail_after(20):
        while not any(e.get("event") == "mirror_events_dropped" for e in siptap.events[observed:]):
            await trio.sleep(0.01)  # polling a condition the mirror's log will meet, bounded


async def test_hep_tcp_collector_down_at_start_gone_mid_run_and_back(pki: Path, tmp_path: Path) -> None:
    port = _free_port()
    top = f"""
[mirror]
warn_interval = 0.01
[[mirror.hep]]
address = "127.0.0.1:{port}"
transport = "tcp"
"""
    collector = Collector(port)
    async with stage(pki, tmp_path, top=top) as s:
        bystander = await s.customer()  # one trunk through all phases: never disturbed
        # 1. Down at start: relaying works, the mirror counts drops.
        lost_1 = await _options(bystander)
        await _dropped_after_observed(s.siptap, lost_1)
        assert s.siptap.find("mirror_link_up") == []
        async with trio.open_nursery() as nursery:
            # 2. The collector comes up: siptap connects (back-off) and delivers.
            await nursery.start(collector.run)
            await s.siptap.wait_for("mirror_link_up", count=1, timeout=40)
            seen_2 = await _options(bystander)
            await collector.wait_for(seen_2)
            # 3. It goes down mid-run: link down, drops counted, relay unaffected.
            collector.stop()
        await s.siptap.wait_for("mirror_link_down", count=2)
        lost_3 = await _options(bystander)
        await _dropped_after_observed(s.siptap, lost_3)
        async with trio.open_nursery() as nursery:
            # 4. It comes back: delivery resumes.
            await nursery.start(collector.run)
            await s.siptap.wait_for("mirror_link_up", count=2, timeout=60)
            seen_4 = await _options(bystander)
            await collector.wait_for(seen_4)
            assert await bystander.call() == CALL
            await bystander.aclose()
            await wait_closed_all(s.siptap)
            collector.stop()
    assert collector.correlated(lost_1) == [] and collector.correlated(lost_3) == []
    totals = s.siptap.find("mirror_stopped")[0]
    assert totals["dropped"] >= 2 and totals["errors"] >= 1, totals
    assert totals["sent"] >= 2, totals
    reasons: dict[str, int] = {}
    for event in s.siptap.find("mirror_events_dropped"):
        for reason, count in event["reasons"].items():
            reasons[reason] = reasons.get(reason, 0) + count
    assert "peer down" in reasons, reasons


async def test_unwritable_keylog_and_capture_folder_count_errors_and_relay_goes_on(pki: Path, tmp_path: Path) -> None:
    """A regular file where the capture folder and the key log's folder should be: every write
    fails (counted, logged as mirror_sink_error), the relay is unaffected."""
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file, not a folder\n")
    top = f"""
[mirror]
warn_interval = 0.01
[mirror.keylog]
path = "{blocker}/keys.log"
[mirror.pcap]
directory = "{blocker}"
"""
    async with stage(pki, tmp_path, top=top) as s:
        session = await s.customer()
        assert await session.call() == CALL
        await session.aclose()
        await s.siptap.wait_for("mirror_sink_error", sink="keylog")
        await s.siptap.wait_for("mirror_sink_error", sink="pcap")
    assert blocker.read_text() == "a file, not a folder\n"
    totals = s.siptap.find("mirror_stopped")[0]
    assert totals["sent"] == 0 and totals["dropped"] > 0 and totals["errors"] >= 2, totals
    errors = s.siptap.find("mirror_sink_error")
    assert all("ENOTDIR" in e["error"] or "EEXIST" in e["error"] for e in errors), errors[:3]


async def test_key_log_on_a_full_disk_counts_errors_and_relay_goes_on(pki: Path, tmp_path: Path) -> None:
    """/dev/full: opening works, every write fails with ENOSPC, as on a full disk."""
    top = """
[mirror]
warn_interval = 0.01
[mirror.keylog]
path = "/dev/full"
"""
    async with stage(pki, tmp_path, top=top) as s:
        session = await s.customer()
        assert await session.call() == CALL
        await session.aclose()
        await s.siptap.wait_for("mirror_sink_error", sink="keylog")
    errors = s.siptap.find("mirror_sink_error", sink="keylog")
    assert "ENOSPC" in errors[0]["error"], errors[0]
    totals = s.siptap.find("mirror_stopped")[0]
    assert totals["sent"] == 0 and totals["dropped"] >= 2, totals

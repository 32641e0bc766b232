"""Hostile and broken peers against `siptap run`, each with the same four checks:

* a clear reason in siptap's JSON log (``handshake_failed`` reason, ``unframeable`` reason,
  ``connection_closed`` closed_by/reason);
* no crash (no ``session_crashed`` event; ``siptap run`` still exits 0 on SIGTERM);
* other connections unaffected (a bystander customer connected before the hostile peer still
  completes a call afterwards);
* no leak (every accepted connection logged its ``connection_closed``, and siptap's open file
  count is back to the baseline taken after a warm-up connection).

The core is :class:`CountingCore`: a stdlib-ssl TLS server (mutual TLS, like the lab core) that
answers SIP like the lab core and also counts and hashes every byte each connection received, so
a stream that is not SIP (10 MB of header) can still be compared byte for byte.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import socket
import ssl
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from siptap.sansio.sip_framer import KeepAlive, SipFramer, SipMessage
from siptap.sansio.sip_message import parse_message
from siptap.tools.lab.core import core_context
from siptap.tools.lab.customer import CustomerSession, customer_context
from siptap.tools.lab.sip import LabUas
from tests.relay.harness import SiptapProcess, write_config

MiB = 1 << 20
CALL = ["100", "180", "200", "200"]


# -- the core -------------------------------------------------------------------------------


@dataclass
class CoreConnection:
    total: int = 0
    digest: Any = field(default_factory=hashlib.sha256)
    head: bytearray = field(default_factory=bytearray)  # the first 64 KiB, for small checks
    ended: trio.Event = field(default_factory=trio.Event)


@dataclass
class CountingCore:
    context: ssl.SSLContext
    uas: LabUas = field(default_factory=LabUas)
    connections: list[CoreConnection] = field(default_factory=list)
    changed: trio.Event = field(default_factory=trio.Event)

    async def serve(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        task_status.started(listeners[0].socket.getsockname()[1])
        await trio.serve_listeners(self._handle, listeners)

    def _notify(self) -> None:
        self.changed.set()
        self.changed = trio.Event()

    async def wait_until(self, condition: Any, timeout: float = 20.0) -> None:
        with trio.fail_after(timeout):
            while not condition():
                await self.changed.wait()

    async def _handle(self, tcp: trio.SocketStream) -> None:
        conn = CoreConnection()
        self.connections.append(conn)
        stream = trio.SSLStream(tcp, self.context, server_side=True)
        framer = SipFramer()
        try:
            await stream.do_handshake()
            while data := await stream.receive_some(65536):
                conn.total += len(data)
                conn.digest.update(data)
                if len(conn.head) < 65536:
                    conn.head += data[: 65536 - len(conn.head)]
                self._notify()
                for event in framer.feed(data):
                    if isinstance(event, KeepAlive) and event.kind == "ping":
                        await stream.send_all(b"\r\n")
                    elif isinstance(event, SipMessage):
                        for answer in self.uas.answer(parse_message(event.data, event.header_end)):
                            await stream.send_all(answer)
        except (trio.BrokenResourceError, ssl.SSLError):
            pass
        finally:
            with trio.move_on_after(2) as scope:
                scope.shield = True
                await stream.aclose()
            conn.ended.set()
            self._notify()


# -- the arena: core, siptap, warm-up, baseline, bystander, and the checks after ---------------


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def memory_kib(pid: int, field_name: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field_name} in /proc/{pid}/status")


def reset_peak_rss(pid: int) -> None:
    """Reset VmHWM to the current resident set (Linux clear_refs "5"), so a later VmHWM is the
    peak since now. Without the right to, VmHWM stays the lifetime peak: the check stays valid,
    only weaker."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        pass


@dataclass
class Arena:
    siptap: SiptapProcess
    port: int
    core: CountingCore
    pid: int
    baseline_fds: int
    baseline_rss_kib: int
    bystander: CustomerSession
    pki: Path

    def peer_events(self, event: str, peer: str) -> list[dict[str, Any]]:
        return self.siptap.find(event, peer=peer)

    async def customer(self) -> CustomerSession:
        return await CustomerSession.connect("127.0.0.1", self.port, customer_context(self.pki))


@contextlib.asynccontextmanager
async def arena(pki: Path, tmp: Path, *, handshake_timeout: float | None = None, limits: str = "",
                expected_closed: int | None = None) -> AsyncIterator[Arena]:
    """Everything a hostile test needs; on exit, the bystander's call, the leak and crash checks.
    ``expected_closed``: the number of hostile connections (beyond warm-up and bystander) that must
    each have logged ``connection_closed``; default: as many as siptap logged ``connection_accepted``."""
    async with trio.open_nursery() as nursery:
        core = CountingCore(core_context(pki))
        core_port = await nursery.start(functools.partial(core.serve))
        config = write_config(tmp, pki, cores=[core_port], limits=limits)
        if handshake_timeout is not None:
            text = config.read_text()
            assert "handshake_timeout = 5.0" in text
            config.write_text(text.replace("handshake_timeout = 5.0", f"handshake_timeout = {handshake_timeout}"))
        siptap = SiptapProcess(config)
        await siptap.start(nursery)
        try:
            port = await siptap.port()
            assert siptap.process is not None
            pid = siptap.process.pid
            # Warm-up (lazy imports, log writer thread), then the baselines.
            warm = await CustomerSession.connect("127.0.0.1", port, customer_context(pki))
            assert (await warm.options()).status_code == 200
            await warm.aclose()
            await siptap.wait_for("connection_closed", count=1)
            baseline_fds = open_fds(pid)
            baseline_rss = memory_kib(pid, "VmRSS")
            reset_peak_rss(pid)
            bystander = await CustomerSession.connect("127.0.0.1", port, customer_context(pki))
            assert (await bystander.options()).status_code == 200
            a = Arena(siptap, port, core, pid, baseline_fds, baseline_rss, bystander, pki)

            yield a

            # Other connections unaffected: the bystander, up since before the hostile peer, still
            # completes a call; so does a brand-new customer.
            assert await bystander.call() == CALL
            fresh = await a.customer()
            assert await fresh.call() == CALL
            await fresh.aclose()
            await bystander.aclose()
            hostile = expected_closed if expected_closed is not None else len(siptap.find("connection_accepted")) - 3
            await siptap.wait_for("connection_closed", count=3 + hostile, timeout=30)
            # No leak: every socket siptap opened for those connections is closed again.
            assert open_fds(pid) == baseline_fds, os.listdir(f"/proc/{pid}/fd")
            assert not crashes(siptap), crashes(siptap)[:2]
            assert await siptap.stop() == 0
            nursery.cancel_scope.cancel()
        finally:
            # A failed test must not leave siptap running.
            if siptap.process is not None and siptap.process.returncode is None:
                siptap.process.kill()
                with trio.CancelScope(shield=True):
                    await siptap.process.wait()
    assert len(siptap.find("connection_closed")) == len(siptap.find("connection_accepted"))


async def read_until_eof(stream: trio.SocketStream, timeout: float = 20.0) -> bytes:
    """What siptap sent before it closed (an alert at most); fails if siptap never closes."""
    got = bytearray()
    with trio.fail_after(timeout):
        while True:
            try:
                data = await stream.receive_some(65536)
            except trio.BrokenResourceError:  # closed with unread data on our side: RST
                break
            if not data:
                break
            got += data
    return bytes(got)


def peer_of(stream: trio.SocketStream) -> str:
    host, port = stream.socket.getsockname()[:2]
    return f"{host}:{port}"


def client_hello(pki: Path) -> bytes:
    """A real ClientHello (stdlib ssl, the customer's offer), as the first flight's bytes."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = customer_context(pki).wrap_bio(incoming, outgoing, server_hostname="localhost")
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    hello = outgoing.read()
    assert hello[0] == 22 and len(hello) > 100
    return hello


async def wait_logged(siptap: SiptapProcess, condition: Any, timeout: float = 60.0) -> None:
    """Wait until ``condition()`` holds over siptap's log (or siptap exits): a condition, with a
    deadline, never a sleep."""
    with trio.fail_after(timeout):
        while not condition():
            if siptap.process is not None and siptap.process.returncode is not None:
                return
            await siptap._changed.wait()


def crashes(siptap: SiptapProcess) -> list[str]:
    """session_crashed events, as "ExcType: message at file:line" (the innermost siptap frame)."""
    out = []
    for event in siptap.find("session_crashed"):
        exc = (event.get("exception") or [{}])[0]
        frames = [f for f in exc.get("frames", []) if "/siptap/" in f["filename"]]
        where = f'{frames[-1]["filename"].split("/siptap/")[-1]}:{frames[-1]["lineno"]}' if frames else "?"
        out.append(f'{exc.get("exc_type")}: {exc.get("exc_value")} at siptap/{where}')
    return out


def reset(stream: trio.SocketStream) -> None:
    """Close with RST instead of FIN: SO_LINGER on, zero timeout."""
    stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    stream.socket.close()


# -- the tests -------------------------------------------------------------------------------


NOT_TLS = [
    # (what is sent, a substring of the handshake_failed detail)
    (b"\x00\x01\x02garbage that is not TLS at all\xff\xfe\r\n" * 4, "bytes that are not TLS"),
    (bytes(range(0x20, 0x80)) * 8, "bytes that are not TLS"),
    (b"GET / HTTP/1.1\r\nHost: siptap\r\nUser-Agent: curl/7.88\r\n\r\n", "HTTP request"),
    (b"OPTIONS sip:core.invalid SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.1\r\nContent-Length: 0\r\n\r\n",
     "plain SIP"),
]


async def test_garbage_http_and_plain_sip_on_the_tls_port_are_not_tls(pki: Path, tmp_path: Path) -> None:
    async with arena(pki, tmp_path, expected_closed=len(NOT_TLS)) as a:
        peers = []
        for payload, _ in NOT_TLS:
            tcp = await trio.open_tcp_stream("127.0.0.1", a.port)
            peers.append(peer_of(tcp))
            await tcp.send_all(payload)
            await read_until_eof(tcp)  # siptap hangs up on its own
            await tcp.aclose()
        await a.siptap.wait_for("connection_closed", count=1 + len(NOT_TLS))
    for peer, (_payload, detail) in zip(peers, NOT_TLS):
        failed = a.peer_events("handshake_failed", peer)
        assert len(failed) == 1, (peer, a.siptap.events[-10:])
        assert failed[0]["reason"] == "not_tls", failed[0]
        assert detail in failed[0]["detail"], failed[0]
        assert failed[0]["leg"] == "customer"
        closed = a.peer_events("connection_closed", peer)
        assert len(closed) == 1 and closed[0]["reason"] == "handshake_failed: not_tls"
    assert len(a.core.connections) == 3  # warm-up, bystander, fresh: nothing else reached the core


async def test_slowloris_truncated_hello_and_silence_time_out(pki: Path, tmp_path: Path) -> None:
    hello = client_hello(pki)
    async with arena(pki, tmp_path, handshake_timeout=2.0, expected_closed=2) as a:
        truncated = await trio.open_tcp_stream("127.0.0.1", a.port)
        silent = await trio.open_tcp_stream("127.0.0.1", a.port)
        await truncated.send_all(hello[: len(hello) // 2])
        # Then silence on both; siptap must hang up by itself after handshake_timeout.
        async with trio.open_nursery() as nursery:
            nursery.start_soon(read_until_eof, truncated)
            nursery.start_soon(read_until_eof, silent)
        events = {name: peer_of(s) for name, s in (("truncated", truncated), ("silent", silent))}
        await truncated.aclose()
        await silent.aclose()
    for name, peer in events.items():
        failed = a.peer_events("handshake_failed", peer)
        assert len(failed) == 1, (name, a.siptap.events[-10:])
        assert failed[0]["reason"] == "timeout", failed[0]
        assert "handshake not complete after 2 s" in failed[0]["detail"], failed[0]
        closed = a.peer_events("connection_closed", peer)
        assert len(closed) == 1 and closed[0]["reason"] == "handshake_failed: timeout"


async def test_ten_megabytes_without_header_end_relayed_with_bounded_memory(pki: Path, tmp_path: Path) -> None:
    size = 10 * MiB
    prefix = b"OPTIONS sip:core.invalid SIP/2.0\r\nX-Filler: "
    payload = prefix + b"a" * (size - len(prefix))  # a header that never ends
    async with arena(pki, tmp_path) as a:
        session = await a.customer()
        peer = peer_of(session.stream.transport_stream)  # type: ignore[arg-type]

        async def bystander_keeps_working() -> None:
            for _ in range(3):
                assert (await a.bystander.options()).status_code == 200

        async with trio.open_nursery() as nursery:
            nursery.start_soon(session.stream.send_all, payload)
            nursery.start_soon(bystander_keeps_working)
        await a.core.wait_until(lambda: any(c.total >= size for c in a.core.connections))
        peak_kib = memory_kib(a.pid, "VmHWM")
        await session.aclose()
        closed = await a.siptap.wait_for("connection_closed", peer=peer)
        observed = await a.siptap.wait_for("connection_observed", peer=peer)
    big = [c for c in a.core.connections if c.total >= size]
    assert len(big) == 1
    assert big[0].total == size and big[0].digest.digest() == hashlib.sha256(payload).digest()  # byte for byte
    unframeable = a.peer_events("unframeable", peer)
    assert unframeable[0]["direction"] == "customer->core"
    assert unframeable[0]["reason"] == "header block exceeds 16384 bytes without end"
    assert closed[0]["bytes_customer_to_core"] == size
    # Every byte is accounted for: skipped as unframeable, or, where the burst outran the
    # mirror (a full channel: the relay dropped and counted those chunks), reported as a gap
    # and the bytes around it as resync debris. Which share is which depends on how fast the
    # mirror read; the sum does not.
    gaps = a.peer_events("gap", peer)
    missing = observed[0]["missing_bytes"]
    assert (observed[0]["gaps"] > 0) == (missing > 0) == bool(gaps)
    assert observed[0]["unframeable_bytes"] + missing + observed[0]["resync_bytes"] == size, observed[0]
    assert observed[0]["messages_customer_to_core"] == 0
    assert closed[0]["closed_by"] == "customer" and "close_notify" in closed[0]["reason"]
    # Memory (a bound, not a timing threshold): siptap's peak resident set since the baseline grew
    # by less than the payload, so it never held the header it could not frame (measured here:
    # ~0.3 MiB; the framer skips the header past 16 KiB as it streams by, holding none of it).
    growth = (peak_kib - a.baseline_rss_kib) * 1024
    assert growth < 8 * MiB, f"resident set {a.baseline_rss_kib} KiB before, peak {peak_kib} KiB during 10 MiB"


async def test_content_length_beyond_what_follows_then_close(pki: Path, tmp_path: Path) -> None:
    message = (b"MESSAGE sip:core.invalid SIP/2.0\r\nVia: SIP/2.0/TLS 127.0.0.1;branch=z9hG4bKshort\r\n"
               b"Call-ID: short@customer.invalid\r\nCSeq: 1 MESSAGE\r\nContent-Type: text/plain\r\n"
               b"Content-Length: 500\r\n\r\n" + b"only a hundred bytes follow.".ljust(100, b"."))
    async with arena(pki, tmp_path) as a:
        session = await a.customer()
        peer = peer_of(session.stream.transport_stream)  # type: ignore[arg-type]
        await session.stream.send_all(message)
        await session.aclose()  # close_notify, then FIN
        closed = await a.siptap.wait_for("connection_closed", peer=peer)
        observed = await a.siptap.wait_for("connection_observed", peer=peer)
        await a.core.wait_until(lambda: all(c.ended.is_set() for c in a.core.connections[2:]))
    assert closed[0]["closed_by"] == "customer" and "close_notify" in closed[0]["reason"], closed[0]
    assert closed[0]["bytes_customer_to_core"] == len(message)
    assert observed[0]["messages_customer_to_core"] == 0
    unframeable = a.peer_events("unframeable", peer)
    assert [(u["direction"], u["reason"], u["size"]) for u in unframeable] == [
        ("customer->core", "truncated at end of stream", len(message))]
    assert [bytes(c.head) for c in a.core.connections if c.total == len(message)] == [message]


async def test_peer_resetting_mid_message(pki: Path, tmp_path: Path) -> None:
    half = (b"INVITE sip:core.invalid SIP/2.0\r\nVia: SIP/2.0/TLS 127.0.0.1;branch=z9hG4bKreset\r\n"
            b"Call-ID: reset@customer.invalid\r\nCSeq: 1 INV")
    async with arena(pki, tmp_path) as a:
        session = await a.customer()
        transport = session.stream.transport_stream
        assert isinstance(transport, trio.SocketStream)
        peer = peer_of(transport)
        await session.stream.send_all(half)
        # Wait until the half message is through to the core: the reset then lands mid-message.
        await a.core.wait_until(lambda: any(c.total == len(half) for c in a.core.connections))
        reset(transport)
        closed = await a.siptap.wait_for("connection_closed", peer=peer)
        target = next(c for c in a.core.connections if c.total == len(half))
        with trio.fail_after(20):
            await target.ended.wait()  # siptap closed the core leg too
    assert closed[0]["closed_by"] == "customer", closed[0]
    assert "broken" in closed[0]["reason"], closed[0]
    assert closed[0]["bytes_customer_to_core"] == len(half)
    unframeable = a.peer_events("unframeable", peer)
    assert [(u["reason"], u["size"]) for u in unframeable] == [("truncated at end of stream", len(half))]


async def test_a_thousand_connections_dropped_during_handshakes(pki: Path, tmp_path: Path) -> None:
    hello = client_hello(pki)
    count = 1000

    async def drop(i: int, limiter: trio.CapacityLimiter) -> None:
        async with limiter:
            tcp = await trio.open_tcp_stream("127.0.0.1", a.port)
            kind = i % 5
            if kind == 1:
                await tcp.send_all(hello[:7])  # a record header and a bit
            elif kind == 2:
                await tcp.send_all(hello[: len(hello) // 2])
            elif kind == 3:
                await tcp.send_all(hello)  # the whole hello; gone before siptap's answer is read
            if kind == 4:
                await tcp.send_all(hello[:20])
                reset(tcp)
            else:
                await tcp.aclose()

    # max_connections above the test's burst: this test is about handshakes dropped, not refused.
    async with arena(pki, tmp_path, limits="max_connections = 5000", expected_closed=count) as a:
        limiter = trio.CapacityLimiter(50)
        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                for i in range(count):
                    nursery.start_soon(drop, i, limiter)
        # Every one of them was accepted and ends with exactly one connection_closed (a crashed
        # session would log session_crashed instead: count those too, so a bug fails fast).
        await wait_logged(a.siptap, lambda: len(a.siptap.find("connection_closed"))
                          + len(a.siptap.find("session_crashed")) >= 1 + count)
        crashed = crashes(a.siptap)
        assert not crashed, f"{len(crashed)} of {count} dropped connections crashed their session: {crashed[:2]}"
        await a.siptap.wait_for("connection_closed", count=1 + count)
    failed = a.siptap.find("handshake_failed")
    assert {f["reason"] for f in failed} == {"peer_closed"}, {f["reason"] for f in failed}
    assert len(failed) == count
    assert len(a.core.connections) == 3  # none of them reached the core


async def test_resets_beyond_max_connections_are_refused_and_siptap_survives(pki: Path, tmp_path: Path) -> None:
    """At max_connections, new connections are refused (closed at once, connection_refused). A
    client that connects and resets at once may be reset before siptap accepts it: that must be
    refused like any other, not take siptap down."""
    resets = 50
    async with arena(pki, tmp_path, limits="max_connections = 2", expected_closed=1) as a:
        holder = await a.customer()  # with the bystander: 2 active, the limit
        assert (await holder.options()).status_code == 200
        for _ in range(resets):
            try:
                tcp = await trio.open_tcp_stream("127.0.0.1", a.port)
            except OSError:  # nobody listens any more: siptap is gone (asserted below)
                break
            reset(tcp)
        await wait_logged(a.siptap, lambda: len(a.siptap.find("connection_refused")) >= resets, timeout=20)
        assert a.siptap.process is not None
        exited = a.siptap.process.returncode
        assert exited is None, (
            f"siptap exited ({exited}) after resets at max_connections; "
            f"stderr: {a.siptap.stderr.decode(errors='replace')[-500:]}; last events: "
            f"{[e.get('event') for e in a.siptap.events[-5:]]}")
        refused = a.siptap.find("connection_refused")
        assert len(refused) == resets
        assert {r["reason"] for r in refused} == {"max_connections"}
        await holder.aclose()  # frees the slot the arena's fresh customer needs
        await a.siptap.wait_for("connection_closed", count=2)

"""The relay's tap (relay/tap.py) against real Unix SOCK_SEQPACKET sockets: in order, full
channel (drop, count, marker first), mirror gone (down, count, reconnect)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import structlog.testing
import trio

from siptap.mirror.channel import ChannelReceiver
from siptap.relay.tap import MirrorTap, set_send_buffer
from siptap.sansio.chunk_records import (
    FROM_ACCEPTED,
    FROM_DIALLED,
    Chunk,
    ConnectionClosed,
    ConnectionOpened,
    Dropped,
    HandshakeDone,
    LegAddresses,
    Record,
    decode,
    encode,
)
from tests.relay.harness import write_config

TS = 1_700_000_000.5
LEGS = (LegAddresses("customer", ("192.0.2.10", 40000), ("192.0.2.1", 5061)),)


class Collect:
    """A RecordHandler that keeps what it is given; ``wait(n)`` until it holds n records."""

    def __init__(self) -> None:
        self.records: list[tuple[int, Record]] = []
        self.lost: list[int] = []
        self.closed = False
        self._changed = trio.Event()

    def handle(self, channel: int, record: Record) -> None:
        self.records.append((channel, record))
        self._changed.set()

    def channel_lost(self, channel: int) -> None:
        self.lost.append(channel)
        self._changed.set()

    def close(self) -> None:
        self.closed = True

    async def wait_lost(self) -> None:
        with trio.fail_after(10):
            while not self.lost:
                self._changed = trio.Event()
                await self._changed.wait()

    async def wait(self, count: int) -> None:
        with trio.fail_after(10):
            while len(self.records) < count:
                self._changed = trio.Event()
                await self._changed.wait()


async def until(condition: Callable[[], bool]) -> None:
    """Poll a state the tap's own task changes (connected / down), with a deadline."""
    with trio.fail_after(10):
        while not condition():
            await trio.sleep(0.01)


async def test_records_arrive_in_order_and_decode(tmp_path: Path) -> None:
    path = tmp_path / "mirror.sock"
    handler = Collect()
    receiver = ChannelReceiver(path, handler)
    async with trio.open_nursery() as mirror:
        await mirror.start(receiver.serve)
        tap = MirrorTap(path)
        async with trio.open_nursery() as nursery:
            await nursery.start(tap.run)
            assert tap.connected
            tap.record(7, encode(ConnectionOpened(7, TS, "ab12cd-7", "lab", LEGS)))
            sent = []
            offsets = {FROM_ACCEPTED: 0, FROM_DIALLED: 0}
            for i in range(300):
                direction = FROM_ACCEPTED if i % 3 else FROM_DIALLED
                data = f"message {i} ".encode() * (1 + i % 50)
                tap.chunk(7, direction, offsets[direction], data)
                sent.append((direction, offsets[direction], data))
                offsets[direction] += len(data)
            tap.record(7, encode(ConnectionClosed(7, TS, 1.0, offsets[0], offsets[1], "customer", "close_notify")))
            tap.forget(7)
            nursery.cancel_scope.cancel()
        tap.close()  # the worker goes away: the mirror hears it after the last record
        await handler.wait(302)
        await handler.wait_lost()
        receiver.stop()
    assert tap.dropped_totals() == {"records": 0, "bytes": 0}
    records = [record for channel, record in handler.records]
    assert {channel for channel, _ in handler.records} == {1} and handler.lost == [1]
    assert isinstance(records[0], ConnectionOpened) and records[0].conn_id == "ab12cd-7"
    assert isinstance(records[-1], ConnectionClosed)
    chunks = records[1:-1]
    assert [(c.direction, c.offset, c.data) for c in chunks if isinstance(c, Chunk)] == sent
    assert all(isinstance(c, Chunk) and c.conn == 7 and c.ts > TS for c in chunks)


async def test_full_channel_drops_count_and_a_marker_precedes_the_next_record(tmp_path: Path) -> None:
    """A mirror that accepted the channel but does not read it: sends are refused at once
    (the test would hang otherwise), counted per connection and direction, and once there is
    room again the connection's Dropped marker goes before its next record."""
    path = tmp_path / "mirror.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    listener.bind(str(path))
    listener.listen()
    with structlog.testing.capture_logs() as events, listener:
        async with trio.open_nursery() as nursery:
            tap = MirrorTap(path, buffer_size=65536, warn_interval=3600)
            await nursery.start(tap.run)
            mirror, _ = listener.accept()
            data = b"x" * 900
            sent = 0
            while tap.dropped_records == 0:  # fill the channel: conn 1 only
                tap.chunk(1, FROM_ACCEPTED, sent * 900, data)
                sent += 1
                assert sent < 10_000
            sent -= 1  # the last one was refused
            tap.chunk(1, FROM_DIALLED, 0, b"y" * 50)
            held = encode(HandshakeDone(1, TS, "core", {"version": "TLSv1.3"}))
            tap.record(1, held)  # a lifecycle record is held, not dropped
            assert tap.dropped_totals() == {"records": 2, "bytes": 950}
            assert tap.owing == 1
            # The rate-limited line: the first drop is reported at once, the rest later.
            with trio.fail_after(10):
                while not [e for e in events if e["event"] == "mirror_channel_dropped"]:
                    await trio.sleep(0.01)
            line = [e for e in events if e["event"] == "mirror_channel_dropped"]
            assert len(line) == 1 and line[0]["records"] >= 1 and line[0]["connected"] is True

            # The mirror reads everything: room again.
            received = _read_all(mirror)
            assert len(received) == sent
            assert [r.offset for r in received if isinstance(r, Chunk)] == [i * 900 for i in range(sent)]
            tap.chunk(2, FROM_ACCEPTED, 0, b"other connection")  # owes nothing: no marker
            tap.chunk(1, FROM_ACCEPTED, (sent + 1) * 900, data)
            after = _read_all(mirror)
            assert isinstance(after[0], Chunk) and after[0].conn == 2
            # The held record, then the marker for the hole in the streams, then the chunk.
            assert encode(after[1]) == held
            marker = after[2]
            assert isinstance(marker, Dropped) and marker.conn == 1
            assert (marker.chunks_from_accepted, marker.bytes_from_accepted, marker.chunks_from_dialled,
                    marker.bytes_from_dialled, marker.other_records) == (1, 900, 1, 50, 0)
            assert isinstance(after[3], Chunk) and after[3].conn == 1 and after[3].offset == (sent + 1) * 900
            assert len(after) == 4 and tap.owing == 0
            mirror.close()
            nursery.cancel_scope.cancel()


async def test_a_closed_record_refused_by_a_full_channel_still_reaches_the_mirror(tmp_path: Path) -> None:
    """A connection whose last chunks and closed record met a full channel has no next record
    to carry them: the tap's flusher sends the marker and then the closed record once the
    mirror reads, so the mirror still ends the connection (its connection_observed summary)."""
    path = tmp_path / "mirror.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    listener.bind(str(path))
    listener.listen()
    with listener:
        async with trio.open_nursery() as nursery:
            tap = MirrorTap(path, buffer_size=65536, warn_interval=3600)
            await nursery.start(tap.run)
            mirror, _ = listener.accept()
            tap.record(1, encode(ConnectionOpened(1, TS, "x-1", "lab", LEGS)))
            sent = 0
            while tap.dropped_records == 0:
                tap.chunk(1, FROM_ACCEPTED, sent * 900, b"x" * 900)
                sent += 1
                assert sent < 10_000
            closed = encode(ConnectionClosed(1, TS, 1.0, sent * 900, 0, "customer", "close_notify"))
            tap.record(1, closed)
            tap.forget(1)
            tap.forget(1)  # the session's second call on its way out changes nothing
            assert tap.owing == 1
            received = _read_all(mirror)  # room again: the flusher sends the rest unasked
            with trio.fail_after(10):
                while tap.owing:
                    await trio.sleep(0.01)
            received += _read_all(mirror)
            mirror.close()
            nursery.cancel_scope.cancel()
    assert isinstance(received[0], ConnectionOpened)
    assert [r.offset for r in received if isinstance(r, Chunk)] == [i * 900 for i in range(sent - 1)]
    marker, last = received[-2:]
    assert isinstance(marker, Dropped) and (marker.chunks_from_accepted, marker.bytes_from_accepted) == (1, 900)
    assert encode(last) == closed
    assert tap.abandoned == 0 and not tap._announced  # forgotten once delivered


async def test_ended_connections_owing_a_mirror_that_is_down_are_bounded(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """With no mirror, every ending connection owes its records to the next one: at most
    MAX_ENDED_OWING of them are kept, the oldest given up and counted; the next mirror gets
    the rest replayed, whole."""
    import siptap.relay.tap as tap_module

    monkeypatch.setattr(tap_module, "MAX_ENDED_OWING", 3)
    path = tmp_path / "mirror.sock"
    async with trio.open_nursery() as nursery:
        tap = MirrorTap(path, retry_interval=0.05, warn_interval=3600)
        await nursery.start(tap.run)
        assert not tap.connected
        for conn in range(1, 6):
            tap.record(conn, encode(ConnectionOpened(conn, TS, f"x-{conn}", "lab", LEGS)))
            tap.chunk(conn, FROM_ACCEPTED, 0, b"lost")
            tap.record(conn, encode(ConnectionClosed(conn, TS, 1.0, 4, 0, "customer", "close_notify")))
            tap.forget(conn)
        assert tap.abandoned == 2 and tap.owing == 3
        handler = Collect()
        receiver = ChannelReceiver(path, handler)
        async with trio.open_nursery() as mirror:
            await mirror.start(receiver.serve)
            await handler.wait(6)  # opened + closed of connections 3, 4 and 5, unasked
            receiver.stop()
        nursery.cancel_scope.cancel()
    assert [(type(r).__name__, r.conn) for _, r in handler.records] == [
        (kind, conn) for conn in (3, 4, 5) for kind in ("ConnectionOpened", "ConnectionClosed")]
    assert tap.owing == 0


def _read_all(sock: socket.socket) -> list[Record]:
    out = []
    while True:
        try:
            out.append(decode(sock.recv(1 << 17, socket.MSG_DONTWAIT)))
        except BlockingIOError:
            return out


def start_mirror(config: Path, channel: Path) -> tuple[subprocess.Popen[bytes], socket.socket]:
    """``python -m siptap mirror`` with a control socket; returns once it said ready."""
    ours, theirs = socket.socketpair()
    process = subprocess.Popen(
        [sys.executable, "-m", "siptap", "mirror", "--config", str(config), "--channel", str(channel),
         "--control-fd", str(theirs.fileno())],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, pass_fds=(theirs.fileno(),))
    theirs.close()
    ours.settimeout(30)
    assert ours.recv(64) == b"ready\n", process.communicate(timeout=10)
    return process, ours


async def test_a_killed_mirror_is_counted_as_drops_until_a_new_one_listens(pki: Path, tmp_path: Path) -> None:
    config = write_config(tmp_path, pki, cores=[9])
    channel = tmp_path / "run" / "mirror.sock"
    channel.parent.mkdir(mode=0o700)
    first, control = start_mirror(config, channel)
    with structlog.testing.capture_logs() as events:
        async with trio.open_nursery() as nursery:
            tap = MirrorTap(channel, retry_interval=0.05)
            await nursery.start(tap.run)
            assert tap.connected
            tap.chunk(3, FROM_ACCEPTED, 0, b"before")
            os.kill(first.pid, signal.SIGKILL)
            first.wait()
            await until(lambda: not tap.connected)  # it noticed the EOF, without any send
            downs = [e for e in events if e["event"] == "mirror_channel_down"]
            assert downs[-1]["reason"] == "the mirror closed the channel"
            tap.chunk(3, FROM_ACCEPTED, 6, b"during")
            tap.record(3, encode(ConnectionOpened(3, TS, "x-3", "lab", LEGS)))
            tap.chunk(4, FROM_DIALLED, 0, b"other")
            assert tap.dropped_totals() == {"records": 2, "bytes": 11} and tap.owing == 2

            second, control2 = start_mirror(config, channel)  # the same path: the stale socket is replaced
            await until(lambda: tap.connected)
            assert [e["event"] for e in events].count("mirror_channel_up") == 2
            tap.chunk(3, FROM_ACCEPTED, 12, b"after")  # preceded by conn 3's marker
            tap.chunk(4, FROM_DIALLED, 5, b"after")  # and by conn 4's
            tap.close()
            nursery.cancel_scope.cancel()
    # The second mirror got conn 3's opened record again (replayed: it was recorded while the
    # mirror was down) and its chunk, conn 4's marker and chunk; it exits 0 on SIGTERM.
    second.send_signal(signal.SIGTERM)
    out, err = second.communicate(timeout=30)
    assert second.returncode == 0, err
    control.close()
    control2.close()
    lines = [json.loads(line) for line in out.decode().splitlines()]
    stopped = next(e for e in lines if e["event"] == "mirror_stopped")
    assert (stopped["records"], stopped["invalid"]) == (4, 0), stopped
    # Conn 3 is known to this mirror through the replay: everything before its first chunk is
    # one gap from the stream's start, in place of a marker that could not say where the hole
    # was. Conn 4 was never opened (no record to replay): its marker says what was missed,
    # then its chunk finds no connection, reported once.
    gaps = [e for e in lines if e["event"] == "gap"]
    assert sorted((str(e.get("conn_number", e.get("conn"))), e["cause"], e["offset"], e["missing"]) for e in gaps) == [
        ("4", "channel full", None, 5), ("4", "connection not announced", 5, None), ("x-3", "joined mid-stream", 0, 12),
        ("x-3", "relay worker lost", None, None),  # the tap closed with conn 3 still open
    ], gaps
    assert all(e.get("process") == "mirror" for e in lines)


async def test_a_replay_to_a_new_mirror_carries_the_handshake_without_the_peer_chain(tmp_path: Path) -> None:
    """The first mirror gets the handshake record whole; the tap keeps it without the chain
    (idle connections must not hold certificates' DER in the relay for hours), so a
    restarted mirror learns the connection, its legs and keys, not the chain again."""
    path = tmp_path / "mirror.sock"
    chain = (b"\x30\x82" + bytes(900), b"\x30\x82" + bytes(700))
    handshake = HandshakeDone(5, TS, "customer", {"version": "TLSv1.2"}, chain)
    first, second = Collect(), Collect()
    tap = MirrorTap(path, retry_interval=0.05)
    async with trio.open_nursery() as nursery:
        receiver = ChannelReceiver(path, first)
        mirror = await nursery.start(_serve_until_stopped, receiver)
        await nursery.start(tap.run)
        tap.record(5, encode(ConnectionOpened(5, TS, "x-5", "lab", LEGS)))
        tap.record(5, encode(handshake))
        await first.wait(2)
        receiver.stop()
        await mirror.wait()
        await until(lambda: not tap.connected)
        await nursery.start(_serve_until_stopped, ChannelReceiver(path, second))
        await second.wait(2)  # the replay: opened, then the handshake
        tap.close()
        nursery.cancel_scope.cancel()
    assert [record for _, record in first.records] == [ConnectionOpened(5, TS, "x-5", "lab", LEGS), handshake]
    replayed = [record for _, record in second.records]
    assert replayed[1] == HandshakeDone(5, TS, "customer", {"version": "TLSv1.2"}, ())


async def _serve_until_stopped(receiver: ChannelReceiver, *, task_status: trio.TaskStatus[trio.Event]) -> None:
    """Run ``receiver`` until it is stopped; started is its serving, the Event its end."""
    ended = trio.Event()
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(receiver.serve)
            task_status.started(ended)
    finally:
        ended.set()


def _wmem_max() -> int:
    with open("/proc/sys/net/core/wmem_max") as f:
        return int(f.read())


@pytest.mark.skipif(os.geteuid() != 0, reason="SO_SNDBUFFORCE needs CAP_NET_ADMIN (CI runs as root)")
def test_root_gets_the_configured_channel_buffer_past_wmem_max() -> None:
    """`[mirror] channel_buffer` above net.core.wmem_max: plain SO_SNDBUF would be capped
    (the kernel doubles what it grants); a privileged siptap gets what the config says."""
    wanted = 2 * _wmem_max() + 65536
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as capped:
        capped.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, wanted)
        assert capped.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) == 2 * _wmem_max()
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as sock:
        set_send_buffer(sock, wanted)
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) == 2 * wanted


def test_an_unprivileged_siptap_falls_back_to_the_capped_buffer() -> None:
    """Without CAP_NET_ADMIN the forced option is refused (EPERM): the capped request is made
    instead, never an error. Run in a child that drops root (or is not root) first."""
    code = (  # imports first: the interpreter's files may not be readable by nobody
        "import os, socket, sys\n"
        "from siptap.relay.tap import set_send_buffer\n"
        "if os.geteuid() == 0:\n"
        "    os.setgid(65534); os.setuid(65534)\n"
        "s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)\n"
        "set_send_buffer(s, 1 << 30)\n"
        "print(s.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         cwd="/", env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert out.returncode == 0, out.stderr
    assert int(out.stdout) == 2 * _wmem_max()

"""The mirror's end of the channel (mirror/channel.py) and the mirror process
(``python -m siptap mirror``), on real Unix SOCK_SEQPACKET sockets and real processes."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
from pathlib import Path

import structlog.testing
import trio

from siptap.mirror.channel import ChannelReceiver
from siptap.sansio.chunk_records import FROM_ACCEPTED, Chunk, chunk_header
from tests.relay.harness import write_config
from tests.relay.test_tap import Collect

TS = 1_700_000_000.5


def connect(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    sock.connect(str(path))
    return sock




async def test_invalid_datagrams_are_skipped_and_logged_once_per_channel(tmp_path: Path) -> None:
    path = tmp_path / "mirror.sock"
    path.write_bytes(b"")  # not a socket: refused, never unlinked
    try:
        ChannelReceiver(path, Collect()).listen()
        raise AssertionError("bound over a regular file")
    except OSError:
        assert path.read_bytes() == b""
    path.unlink()
    handler = Collect()
    receiver = ChannelReceiver(path, handler)
    with structlog.testing.capture_logs() as events:
        async with trio.open_nursery() as nursery:
            await nursery.start(receiver.serve)
            assert stat.S_IMODE(path.stat().st_mode) == 0o600
            first, second = connect(path), connect(path)
            for n in range(3):
                first.send(b"not a record")
                first.send(chunk_header(5, FROM_ACCEPTED, n, TS) + b"ok")
            first.send(b"ST\x02\x09" + bytes(28))  # an unknown kind
            second.send(chunk_header(5, FROM_ACCEPTED, 0, TS) + b"second worker")
            first.close()
            second.close()
            await handler.wait(4)
            while len(handler.lost) < 2:
                await handler.wait_lost()
            receiver.stop()
    assert not path.exists()
    by_channel = sorted((channel, record.offset) for channel, record in handler.records if isinstance(record, Chunk))
    assert by_channel == [(1, 0), (1, 1), (1, 2), (2, 0)]
    assert sorted(handler.lost) == [1, 2]
    invalid = [e for e in events if e["event"] == "mirror_record_invalid"]
    assert len(invalid) == 1 and invalid[0]["channel"] == 1 and "magic" in invalid[0]["reason"]
    closed = {e["channel"]: e for e in events if e["event"] == "mirror_channel_closed"}
    assert closed[1]["invalid"] == 4 and closed[1]["records"] == 3 and closed[2]["records"] == 1


class Failing(Collect):
    def handle(self, channel: int, record: object) -> None:
        raise RuntimeError("observer bug")


async def test_a_handler_that_raises_costs_the_record_not_the_mirror(tmp_path: Path) -> None:
    path = tmp_path / "mirror.sock"
    handler = Failing()
    receiver = ChannelReceiver(path, handler)
    with structlog.testing.capture_logs() as events:
        async with trio.open_nursery() as nursery:
            await nursery.start(receiver.serve)
            with connect(path) as sock:
                for n in range(5):
                    sock.send(chunk_header(1, FROM_ACCEPTED, n, TS) + b"x")
            await handler.wait_lost()
            receiver.stop()
    assert [e["event"] for e in events].count("mirror_handler_failed") == 1
    closed = next(e for e in events if e["event"] == "mirror_channel_closed")
    assert closed["handler_errors"] == 5


async def test_stop_drains_what_a_live_worker_queued(tmp_path: Path) -> None:
    """SIGTERM's path: no new channel, but what a still-connected worker sent is handled."""
    path = tmp_path / "mirror.sock"
    handler = Collect()
    receiver = ChannelReceiver(path, handler)
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as sock:  # open throughout: a live worker
        async with trio.open_nursery() as nursery:
            await nursery.start(receiver.serve)
            sock.connect(str(path))
            with trio.fail_after(10):
                while receiver.open_channels == 0:  # accepted, its reader waiting for data
                    await trio.sleep(0.01)
            for n in range(100):
                sock.send(chunk_header(1, FROM_ACCEPTED, n, TS) + b"y" * 100)
            receiver.stop()  # before the reader woke for them: the drain must read them
    assert len(handler.records) == 100 and handler.lost == []
    assert not path.exists()


def mirror_command(config: Path, channel: Path, control: socket.socket) -> list[str]:
    return [sys.executable, "-m", "siptap", "mirror", "--config", str(config), "--channel", str(channel),
            "--control-fd", str(control.fileno())]


def test_the_mirror_process_says_ready_and_exits_0_on_sigterm(pki: Path, tmp_path: Path) -> None:
    captures = tmp_path / "captures"
    config = write_config(tmp_path, pki, cores=[9], top=f'[mirror]\n[mirror.keylog]\npath = "{captures}/keys.log"\n')
    channel = tmp_path / "mirror.sock"
    ours, theirs = socket.socketpair()
    process = subprocess.Popen(mirror_command(config, channel, theirs), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, pass_fds=(theirs.fileno(),))
    theirs.close()
    ours.settimeout(30)
    try:
        assert ours.recv(64) == b"ready\n"
        usage = subprocess.run([sys.executable, "-m", "siptap", "--help"], capture_output=True, text=True,
                               check=True).stdout
        assert "    mirror" not in usage and "run " in usage  # hidden from the command list
        with connect(channel) as worker:
            worker.send(chunk_header(1, FROM_ACCEPTED, 0, TS) + b"INVITE")
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=30)
    finally:
        if process.returncode is None:
            process.kill()
        ours.close()
    assert process.returncode == 0, err
    events = [json.loads(line) for line in out.decode().splitlines()]
    names = [e["event"] for e in events]
    assert names.index("mirror_ready") < names.index("mirror_stopping") < names.index("mirror_stopped")
    assert next(e for e in events if e["event"] == "mirror_stopped")["records"] == 1
    # The chunk reached the observer: a connection it was never told of is reported, once.
    gap = next(e for e in events if e["event"] == "gap")
    assert (gap["conn_number"], gap["cause"]) == (1, "connection not announced")
    assert all(e["process"] == "mirror" for e in events)
    assert next(e for e in events if e["event"] == "mirror_ready")["sinks"] == ["keylog"]  # from [mirror]
    assert not channel.exists()


def test_the_mirror_stops_when_the_supervisor_goes(pki: Path, tmp_path: Path) -> None:
    config = write_config(tmp_path, pki, cores=[9])
    channel = tmp_path / "mirror.sock"
    ours, theirs = socket.socketpair()
    process = subprocess.Popen(mirror_command(config, channel, theirs), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, pass_fds=(theirs.fileno(),))
    theirs.close()
    ours.settimeout(30)
    assert ours.recv(64) == b"ready\n"
    ours.close()  # as the kernel does when the supervisor is SIGKILLed
    out, err = process.communicate(timeout=30)
    assert process.returncode == 0, err
    assert b'"supervisor_gone"' in out and b'"mirror_stopped"' in out
    assert os.path.exists(channel) is False


async def test_deliver_runs_after_every_slice_of_records_and_at_the_end_of_a_batch(tmp_path: Path) -> None:
    """With a ``deliver`` callback (the mirror process passes Fanout.deliver_queued), the sinks
    are given each slice of DELIVER_EVERY records' events before more are read, and the rest
    when the batch ends: a flood never piles up more than a slice in the fan-out's queues."""
    from siptap.mirror.channel import DELIVER_EVERY

    path = tmp_path / "mirror.sock"
    handler = Collect()
    delivered_at: list[int] = []
    receiver = ChannelReceiver(path, handler, deliver=lambda: delivered_at.append(len(handler.records)))
    total = 2 * DELIVER_EVERY + 3
    async with trio.open_nursery() as nursery:
        await nursery.start(receiver.serve)
        sock = connect(path)
        for n in range(total):  # queued before the reader wakes: one batch
            sock.send(chunk_header(5, FROM_ACCEPTED, n, TS) + b"x")
        sock.close()
        while not handler.lost:
            await handler.wait_lost()
        receiver.stop()
    assert delivered_at[:3] == [DELIVER_EVERY, 2 * DELIVER_EVERY, total]
    assert delivered_at[-1] == total  # after channel_lost too: the connections it closed


def test_a_wait_aims_at_a_number_of_records_at_the_last_rate_never_longer_than_the_interval() -> None:
    from siptap.mirror.channel import _ChannelStats

    receiver = ChannelReceiver(Path("unused.sock"), Collect(), batch_interval=0.1, target_batch=64)
    stats = _ChannelStats()
    stats.previous_started, stats.batch_started, stats.last_batch = 10.0, 10.01, 7  # 700 records/s
    assert abs(receiver._pause(stats) - 64 / 700) < 1e-9
    stats.last_batch = 1  # one record after a quiet spell: the longest wait
    stats.previous_started = 0.0
    assert receiver._pause(stats) == 0.1
    stats.previous_started, stats.last_batch = 10.0, 31  # 3,100 records/s: a short wait
    assert abs(receiver._pause(stats) - 64 / 3100) < 1e-9


def test_the_target_is_a_quarter_of_what_the_channel_holds(tmp_path: Path) -> None:
    from siptap.mirror.process import target_batch

    cap = tmp_path / "wmem_max"
    cap.write_text("4194304\n")
    assert target_batch(4 * 1024 * 1024, str(cap), privileged=False) == 64  # raised cap: the most
    assert target_batch(65536, str(cap), privileged=False) == 16  # a small channel_buffer
    cap.write_text("212992\n")  # the kernel's default cap
    assert target_batch(4 * 1024 * 1024, str(cap), privileged=False) == 54
    assert target_batch(4 * 1024 * 1024, str(tmp_path / "absent"), privileged=False) == 54  # not Linux
    # Root's workers get their channel_buffer past the cap (SO_SNDBUFFORCE): only it counts.
    assert target_batch(4 * 1024 * 1024, str(cap), privileged=True) == 64
    assert target_batch(65536, str(cap), privileged=True) == 16

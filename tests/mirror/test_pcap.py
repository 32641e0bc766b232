"""Cleartext capture sink: files 0600 that tshark reads as SIP with the right count,
addresses and ports; rotation by size and time, each file standalone with consistent
sequence numbers; pruning; disk errors counted."""

from __future__ import annotations

import errno
import os
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from siptap.config.mirror import PcapSettings
from siptap.mirror import pcap as pcap_sink
from siptap.mirror.events import LegInfo, MirrorEvent, SipEvent
from siptap.mirror.fanout import Fanout
from siptap.mirror.pcap import PcapSink
from siptap.sansio.pcap import MAX_SEGMENT

from .helpers import CALL_ID, CORE, EXPECTED, TS, closed, dialog_events, sip, sip_event

needs_tshark = pytest.mark.skipif(shutil.which("tshark") is None, reason="needs tshark (Debian package)")

FIELDS = ["sip.Call-ID", "sip.Method", "sip.Status-Code", "ip.src", "tcp.srcport", "ip.dst", "tcp.dstport",
          "tcp.analysis.flags"]


def tshark(path: Path, display_filter: str = "sip") -> list[list[str]]:
    cmd = ["tshark", "-n", "-r", str(path), "-d", "tcp.port==5061,sip", "-Y", display_filter, "-T", "fields",
           "-E", "separator=|"]
    for field in FIELDS:
        cmd += ["-e", field]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=True).stdout
    return [line.split("|") for line in out.splitlines()]


async def drive(sink: PcapSink, events: Sequence[MirrorEvent], legs: str = "customer") -> None:
    fanout = Fanout([sink], legs=legs)
    async with trio.open_nursery() as nursery:
        await nursery.start(fanout.run)
        for event in events:
            fanout.publish(event)
        await fanout.aclose()


@pytest.mark.peers
@needs_tshark
@pytest.mark.parametrize("fmt", ["pcap", "pcapng"])
async def test_dialog_reads_as_sip(tmp_path: Path, fmt: str) -> None:
    directory = tmp_path / "captures"
    sink = PcapSink(PcapSettings(directory=directory, format=fmt))
    events = [*dialog_events(), *dialog_events(CORE, call_id="other@x"), closed(), closed(CORE)]
    await drive(sink, events, legs="both")
    (path,) = directory.iterdir()
    assert path.name.startswith("siptap-20231114-221320-") and path.suffix == f".{fmt}"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(directory).st_mode) == 0o700
    rows = tshark(path)
    assert [(m, s) for _, m, s, *_ in rows] == EXPECTED * 2
    assert [r[0] for r in rows] == [CALL_ID] * 7 + ["other@x"] * 7
    expected_ends = [(*e.src, *e.dst) for e in events[:14] if isinstance(e, SipEvent)]
    assert [(r[3], int(r[4]), r[5], int(r[6])) for r in rows] == expected_ends
    everything = tshark(path, "tcp")
    assert all(r[7] == "" for r in everything)  # no lost/retransmitted/out-of-order segments
    assert len(everything) == 2 * (3 + 7 + 4)  # handshake, one segment per message, FINs
    assert sink.sent == 14 and sink.dropped == 0


@pytest.mark.peers
@needs_tshark
async def test_rotation_by_size_each_file_standalone(tmp_path: Path) -> None:
    sink = PcapSink(PcapSettings(directory=tmp_path, rotate_bytes=65536))
    body = b"v=0\r\n" + b"a=x-pad:" + b"p" * 3000 + b"\r\n"
    events = []
    for i in range(60):
        from_client = i % 2 == 0
        first = "OPTIONS sip:core@example.com SIP/2.0" if from_client else "SIP/2.0 200 OK"
        events.append(sip_event(sip(first, f"{i // 2 + 1} OPTIONS", body=body), from_client, ts=TS + i))
    await drive(sink, [*events, closed(ts=TS + 100)])
    files = sorted(tmp_path.iterdir(), key=lambda p: int(p.stem.rsplit("-", 1)[1]))
    assert len(files) >= 3
    assert files == sink.files
    total = 0
    for path in files:
        assert os.path.getsize(path) <= 65536
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        rows = tshark(path, "tcp")
        assert rows and all(r[7] == "" for r in rows), path  # consistent seq/ack in each file
        total += sum(1 for r in rows if r[0])
    assert total == 60
    # The last file holds the end of the flow: its FINs.
    assert len(tshark(files[-1], "tcp.flags.fin == 1")) == 2


async def test_rotation_by_time_and_keep(tmp_path: Path) -> None:
    # Something else in the folder is never pruned.
    (tmp_path / "notes.txt").write_text("mine")
    sink = PcapSink(PcapSettings(directory=tmp_path, rotate_seconds=10, rotate_bytes=0, keep=2))
    events = [sip_event(e.data, e.from_client, ts=TS + 6 * i) for i, e in enumerate(dialog_events())]
    await drive(sink, events)
    # Files start at t=0, 12, 24, 36 (each holds two events); only the newest two remain.
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["notes.txt", "siptap-20231114-221344-3.pcap", "siptap-20231114-221356-4.pcap"]
    assert sink.sent == 7


async def test_disk_errors_are_counted(tmp_path: Path) -> None:
    blocker = tmp_path / "captures"
    blocker.write_text("")  # the capture "folder" is a file
    sink = PcapSink(PcapSettings(directory=blocker), retry_initial=0, retry_max=0)
    await drive(sink, dialog_events()[:3])
    assert sink.dropped == 3 and sink.sent == 0
    assert sink.errors == 3 and sink.drop_reasons == {"write failed": 3}


@pytest.mark.peers
@needs_tshark
async def test_recovers_in_a_new_file_with_a_fresh_handshake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    directory = tmp_path / "captures"
    real_write_all = pcap_sink.write_all
    disk_full = [False]

    def write_all(fd: int, data: bytes) -> None:
        if disk_full[0]:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_write_all(fd, data)

    monkeypatch.setattr(pcap_sink, "write_all", write_all)
    sink = PcapSink(PcapSettings(directory=directory), retry_initial=0, retry_max=0)
    events = dialog_events()
    fanout = Fanout([sink])
    async with trio.open_nursery() as nursery:
        await nursery.start(fanout.run)
        for event in events[:3]:
            fanout.publish(event)
        await sink.wait_handled(3)
        disk_full[0] = True
        fanout.publish(events[3])
        await sink.wait_handled(4)
        assert sink.dropped == 1 and "ENOSPC" in (sink.last_error or "")
        disk_full[0] = False
        for event in events[4:]:
            fanout.publish(event)
        await fanout.aclose()
    first, second = sink.files
    assert [(r[1], r[2]) for r in tshark(first) if r[0]] == EXPECTED[:3]
    rows = tshark(second, "tcp")
    assert all(r[7] == "" for r in rows)
    assert len(rows) == 3 + 3  # a fresh handshake, then ACK, BYE, 200
    assert [(r[1], r[2]) for r in rows if r[0]] == EXPECTED[4:]
    assert sink.sent == 6



class GeneralPathPcapSink(PcapSink):
    """The sink with every event through its general path: the reference for the fast one."""

    def _one(self, event: MirrorEvent) -> None:
        key = (event.leg.conn_id, event.leg.leg)
        self._general(event, key, self._flows.get(key))


PCAP_LEGS = [
    LegInfo("f1", "lab", "customer", ("192.0.2.10", 40000), ("192.0.2.1", 5061)),
    LegInfo("f2", "lab", "customer", ("2001:db8::10", 40001), ("2001:db8::1", 5061)),
    LegInfo("f3", "lab", "customer", ("::ffff:192.0.2.30", 40003), ("192.0.2.1", 5061)),
]
payload_sizes = st.one_of(st.integers(0, 3000), st.sampled_from([MAX_SEGMENT - 1, MAX_SEGMENT, MAX_SEGMENT + 1]))
pcap_events = st.lists(st.tuples(st.integers(0, 2), st.booleans(), payload_sizes, st.floats(0, 0.7),
                                 st.integers(0, 12)), min_size=1, max_size=40)


@settings(max_examples=60, deadline=None)
@given(steps=pcap_events, fmt=st.sampled_from(["pcap", "pcapng"]), rotate_bytes=st.sampled_from([0, 65536]),
       rotate_seconds=st.sampled_from([0.0, 1.0]), batch=st.integers(1, 7))
def test_fast_path_writes_what_the_general_path_writes(steps: list[tuple[int, bool, int, float, int]], fmt: str,
                                                       rotate_bytes: int, rotate_seconds: float, batch: int) -> None:
    """Messages of flows already in the open file skip the general path; the files are the
    same bytes: both formats, rotations by size and time, messages too large for one
    segment, closes in between, three address families."""
    events: list[MirrorEvent] = []
    ts = TS
    for leg_index, from_client, size, pause, fill in steps:
        ts += pause
        leg = PCAP_LEGS[leg_index]
        if fill == 0:
            events.append(closed(leg, ts))
        else:
            events.append(SipEvent(ts, leg, from_client, bytes([fill + 64]) * size, None))
    written = []
    for sink_class in (PcapSink, GeneralPathPcapSink):
        with tempfile.TemporaryDirectory() as folder:
            sink = sink_class(PcapSettings(Path(folder), format=fmt, rotate_bytes=rotate_bytes,
                                           rotate_seconds=rotate_seconds))


            async def deliver(sink: PcapSink = sink) -> None:  # the sink reads trio's clock after a failure
                for i in range(0, len(events), batch):
                    assert sink.handle_batch_nowait(events[i : i + batch]) == len(events[i : i + batch])
                await sink.aclose()

            trio.run(deliver)
            written.append(([p.name for p in sink.files], [p.read_bytes() for p in sink.files],
                            sink.sent, sink.dropped, sink._bytes))  # _bytes: what size rotation goes by
    assert written[0] == written[1]

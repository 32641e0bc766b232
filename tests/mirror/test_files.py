"""File sinks: the NSS key log (0600, both legs, parseable, failures counted and healed)
and the SRTP keys file (format, 0600, keys that decode back to the SDP's)."""

from __future__ import annotations

import base64
import os
import stat
from collections.abc import Sequence
from pathlib import Path

import pytest
import trio

from siptap.mirror.events import MirrorEvent
from siptap.mirror.fanout import Fanout
from siptap.mirror.keylog import KeylogSink
from siptap.mirror.srtp import SrtpKeysSink, rtp_decoder_args, srtp_key_line
from siptap.sansio.keylog import parse_line
from siptap.sansio.sdp_crypto import SdesKey, parse_sdp_crypto

from .helpers import CALL_ID, CORE, CUSTOMER, SDP, TS, closed, dialog_events, key_event, srtp_event


async def drive(fanout: Fanout, events: Sequence[MirrorEvent], until: int | None = None) -> None:
    async with trio.open_nursery() as nursery:
        await nursery.start(fanout.run)
        for event in events:
            fanout.publish(event)
        for sink in fanout.sinks:
            await sink.wait_handled(until if until is not None else 0)
        await fanout.aclose()


def mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


async def test_keylog_file_both_legs_0600_parseable(tmp_path: Path) -> None:
    path = tmp_path / "captures" / "keys.log"  # folder created on demand
    sink = KeylogSink(path)
    fanout = Fanout([sink], legs="customer")  # the key log ignores the leg filter
    await drive(fanout, [key_event(CUSTOMER), *dialog_events(), closed(), key_event(CORE)])
    assert mode(path) == 0o600 and mode(path.parent) == 0o700
    lines = path.read_text().splitlines()
    assert lines[0] == ("# conn=c1 leg=customer route=lab client=192.0.2.10:40000 server=192.0.2.1:5061"
                        " TLSv1.2 AES256-GCM-SHA384")
    assert lines[3].startswith("# conn=c1 leg=core ")
    parsed = [parse_line(line) for line in lines]
    assert [p.label for p in parsed if p] == ["RSA", "CLIENT_RANDOM"] * 2
    assert sink.sent == 2 and sink.dropped == 0


async def test_keylog_appends_and_narrows_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "keys.log"
    path.write_text("# earlier\n")
    path.chmod(0o644)
    await drive(Fanout([KeylogSink(path)]), [key_event()])
    assert path.read_text().startswith("# earlier\n# conn=c1")
    assert mode(path) == 0o600


async def test_keylog_unwritable_location_is_counted_not_raised(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    sink = KeylogSink(blocker / "keys.log")  # its "folder" is a file: fails even for root
    fanout = Fanout([sink])
    await drive(fanout, [key_event(), key_event(CORE)], until=2)
    assert sink.dropped == 2 and sink.sent == 0
    assert sink.errors >= 1 and "not-a-folder" in (sink.last_error or "")
    assert set(sink.drop_reasons) <= {"write failed", "file unavailable"}


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
async def test_keylog_disk_full_is_counted() -> None:
    sink = KeylogSink(Path("/dev/full"))
    before = os.stat("/dev/full").st_mode
    await drive(Fanout([sink]), [key_event()], until=1)
    assert sink.dropped == 1 and sink.drop_reasons == {"write failed": 1}
    assert "ENOSPC" in (sink.last_error or "")
    assert os.stat("/dev/full").st_mode == before  # devices are never chmod'ed


async def test_a_batch_is_one_write_of_whole_lines(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """However many events a batch holds, the file gets one write (one system call; with
    O_APPEND it lands whole, so workers sharing the file never interleave); a failed write
    costs every event of it, counted once each."""
    path = tmp_path / "srtp.log"
    sink = SrtpKeysSink(path)
    writes: list[int] = []
    real_write = os.write

    def counting_write(fd: int, data: bytes) -> int:
        writes.append(len(data))
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", counting_write)
    batch: list[MirrorEvent] = [srtp_event(ts=TS + i) for i in range(5)]
    assert sink.handle_batch_nowait(batch) == 5
    assert writes == [path.stat().st_size] and sink.sent == 5
    assert len(path.read_text().splitlines()) == 5
    if os.path.exists("/dev/full"):
        full = KeylogSink(Path("/dev/full"))
        assert full.handle_batch_nowait([key_event(), key_event(CORE), key_event()]) == 3
        assert full.drop_reasons == {"write failed": 3} and full.sent == 0 and full.errors == 1


async def test_keylog_heals_after_the_problem_is_fixed(tmp_path: Path) -> None:
    blocker = tmp_path / "captures"
    blocker.write_text("")
    sink = KeylogSink(blocker / "keys.log", retry_initial=0, retry_max=0)  # retry on the next event
    fanout = Fanout([sink])
    async with trio.open_nursery() as nursery:
        await nursery.start(fanout.run)
        fanout.publish(key_event())
        await sink.wait_handled(1)
        assert sink.dropped == 1
        blocker.unlink()  # the operator fixes it
        fanout.publish(key_event(CORE))
        await sink.wait_handled(2)
        await fanout.aclose()
    assert sink.sent == 1
    assert "leg=core" in (blocker / "keys.log").read_text()


# -- SRTP keys ----------------------------------------------------------------------------


def test_srtp_line_format() -> None:
    event = srtp_event()
    key = event.key
    line = srtp_key_line(event)
    fields = dict(f.split("=", 1) for f in line.split(" rtp_decoder=")[0].split()[1:])
    assert line.startswith("2023-11-14T22:13:20.250000Z call-id=" + CALL_ID + " ")
    assert fields["dir"] == "client->server" and fields["sip"] == "INVITE" and fields["leg"] == "customer"
    assert fields["media"] == "audio" and fields["addr"] == "192.0.2.10:49170"
    assert fields["suite"] == "AES_CM_128_HMAC_SHA1_80" and fields["tag"] == "1"
    assert base64.b64decode(fields["inline"]) == key.master_key + key.master_salt
    assert bytes.fromhex(fields["key"]) == key.master_key and len(key.master_key) == 16
    assert bytes.fromhex(fields["salt"]) == key.master_salt and len(key.master_salt) == 14
    assert fields["key_salt"] == fields["key"] + fields["salt"]
    assert fields["lifetime"] == "2^20" and fields["mki"] == "1:4"
    assert line.endswith(
        f'rtp_decoder="-s AES_CM_128_HMAC_SHA1_80 -k {fields["key_salt"]}'
        " -f 'src host 192.0.2.10 and udp src port 49170'\""
    )
    assert "\n" not in line


def test_rtp_decoder_args_per_suite() -> None:
    def key(suite: str, raw_len: int) -> SdesKey:
        inline = base64.b64encode(bytes(range(raw_len))).decode()
        sdp = f"v=0\r\nc=IN IP4 10.1.1.1\r\nm=audio 4000 RTP/SAVP 0\r\na=crypto:1 {suite} inline:{inline}\r\n"
        (k,) = parse_sdp_crypto(sdp.encode())
        return k

    assert (rtp_decoder_args(key("AES_256_CM_HMAC_SHA1_80", 46)) or "").startswith("-e 256 -a -t 10 -k ")
    assert (rtp_decoder_args(key("AEAD_AES_128_GCM", 28)) or "").startswith("-g -e 128 -t 16 -k ")
    assert rtp_decoder_args(key("AES_192_CM_HMAC_SHA1_80", 38)) is None


async def test_srtp_file_0600_one_line_per_key(tmp_path: Path) -> None:
    path = tmp_path / "srtp-keys.log"
    sink = SrtpKeysSink(path)
    (key,) = parse_sdp_crypto(SDP)
    await drive(Fanout([sink]), [*dialog_events(), srtp_event(), srtp_event(ts=1_700_000_100.0)])
    assert mode(path) == 0o600
    lines = path.read_text().splitlines()
    assert len(lines) == 2 and all(f"key={key.master_key_hex}" in line for line in lines)
    assert sink.sent == 2

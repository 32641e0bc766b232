"""`siptap export`: escalation bundles cut out of real captures, holding the selected calls only.

The captures are made for real: `siptap run` as a process with every file sink on, an
embedded lab core, and two lab customers on two TLS connections making 3 and 2 SDES calls
(interleaved). Exports are read back with tshark (when installed), the pure pcap reader,
and plain byte searches for everything that must not be there.
"""

from __future__ import annotations

import json
import re
import shutil
import struct
import tarfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
import trio

from siptap import cli
from siptap.sansio import pcap
from siptap.sansio.pcap_reader import PcapFormatError, decode_tcp, read_capture
from siptap.sansio.sip_message import parse_message
from siptap.tools.export import (
    ExportError,
    KeyEntry,
    LogFacts,
    Selection,
    Sources,
    build_bundle,
    capture_files,
    parse_keylog,
    parse_time,
    read_messages,
    select_srtp_lines,
)
from siptap.tools.export.keylog import pick_entry
from siptap.tools.lab.core import start_lab_core
from siptap.tools.lab.customer import CustomerSession, customer_context
from tests.integration.capture import require, tshark_fields
from tests.relay.harness import SiptapProcess, write_config

FLOW = ["INVITE", "100", "180", "200", "ACK", "BYE", "200"]


# -- real captures -----------------------------------------------------------------------------


@dataclass
class LabCaptures:
    root: Path
    config: Path
    log: Path
    port: int  # siptap's customer-leg port: the server port of every captured flow
    calls_a: list[str]  # Call-IDs on connection A
    calls_b: list[str]  # on connection B
    conn_a: str
    conn_b: str
    window_b0: tuple[float, float]  # wall-clock bounds around B's first call

    @property
    def all_calls(self) -> list[str]:
        return self.calls_a + self.calls_b


def _call_ids(messages: list[bytes]) -> list[str]:
    out: list[str] = []
    for data in messages:
        call_id = parse_message(data).call_id
        if call_id and call_id not in out:
            out.append(call_id)
    return out


async def _make_captures(pki: Path, root: Path) -> LabCaptures:
    mirror = f"""
[mirror]
legs = "customer"
[mirror.keylog]
path = "{root}/captures/keys.log"
[mirror.pcap]
directory = "{root}/captures"
[mirror.srtp_keys]
path = "{root}/captures/srtp-keys.log"
"""
    async with trio.open_nursery() as nursery:
        _core, core_port = await start_lab_core(nursery, pki)
        config = write_config(root, pki, cores=[core_port], top=mirror)
        siptap = SiptapProcess(config)
        await siptap.start(nursery)
        port = await siptap.port()
        a = await CustomerSession.connect("127.0.0.1", port, customer_context(pki))
        b = await CustomerSession.connect("127.0.0.1", port, customer_context(pki))
        a_addr, b_addr = (f"127.0.0.1:{s.stream.transport_stream.socket.getsockname()[1]}"  # type: ignore[attr-defined]
                          for s in (a, b))
        media = iter(range(33000, 34000, 2))
        assert await a.call(media_port=next(media)) == ["100", "180", "200", "200"]
        # Window edges around B's first call. siptap stamps a message just after relaying it, so
        # the peer may see it before the mirror stamps it: wait until siptap has *logged* every
        # message so far (the log line comes after the stamp), then read the clock.
        await siptap.wait_for("sip", count=7)
        t0 = time.time()
        assert await b.call(media_port=next(media)) == ["100", "180", "200", "200"]
        await siptap.wait_for("sip", count=14)
        t1 = time.time()
        assert await a.call(media_port=next(media)) == ["100", "180", "200", "200"]
        assert await b.call(media_port=next(media)) == ["100", "180", "200", "200"]
        assert await a.call(media_port=next(media)) == ["100", "180", "200", "200"]
        await a.aclose()
        await b.aclose()
        await siptap.wait_for("connection_closed", count=2)
        assert await siptap.stop() == 0
        nursery.cancel_scope.cancel()
    assert siptap.find("mirror_stopped")[0]["dropped"] == 0
    log = root / "siptap.log"
    log.write_text("".join(json.dumps(e) + "\n" for e in siptap.events))
    conns = {e["client"]: e["conn"] for e in siptap.find("handshake_done", leg="customer")}
    return LabCaptures(root, config, log, port, _call_ids(a.sent), _call_ids(b.sent), conns[a_addr], conns[b_addr],
                       (t0, t1))


@pytest.fixture(scope="module")
def lab(pki: Path, tmp_path_factory: pytest.TempPathFactory) -> LabCaptures:
    return trio.run(_make_captures, pki, tmp_path_factory.mktemp("export-lab"))


def export(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(["export", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def bundle_bytes(out: Path) -> dict[str, bytes]:
    """Every file of the bundle folder, and every member of its .tar.gz."""
    files = {f"dir/{p.name}": p.read_bytes() for p in out.iterdir()}
    with tarfile.open(out.with_name(out.name + ".tar.gz")) as tar:
        for member in tar.getmembers():
            if member.isfile():
                extracted = tar.extractfile(member)
                assert extracted is not None
                files[f"tar/{member.name}"] = extracted.read()
    return files


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


# -- end to end ---------------------------------------------------------------------------------


def test_captures_are_what_the_scenario_made(lab: LabCaptures) -> None:
    assert len(lab.calls_a) == 3 and len(lab.calls_b) == 2
    assert lab.conn_a != lab.conn_b
    scan = read_messages(capture_files(lab.root / "captures"))
    assert len(scan.messages) == 5 * 7
    assert not scan.warnings


def test_export_one_call_holds_that_call_only(lab: LabCaptures, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    wanted = lab.calls_a[1]  # the middle call of the connection that carried three
    out = tmp_path / "bundle"
    code, stdout, err = export(capsys, "--call-id", wanted, "--config", str(lab.config), "--log", str(lab.log),
                               "--with-keys", "--out", str(out))
    assert code == 0, err
    assert "1 call(s), 7 SIP messages" in stdout
    # The keys open connection A: its other two calls, named to the operator (not in the bundle).
    assert f"also decrypts 2 other call(s):\n  {lab.calls_a[0]}\n  {lab.calls_a[2]}\n" in stdout
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["calls.pcapng", "keys.log", "srtp-keys.log", "summary.txt", "summary.json", "ladder.html"])
    assert all(p.stat().st_mode & 0o777 == 0o600 for p in out.iterdir())
    assert out.stat().st_mode & 0o777 == 0o700

    # calls.pcapng: the call's seven messages, readable as SIP, in order.
    capture = read_capture((out / "calls.pcapng").read_bytes())
    assert capture.format == "pcapng"
    payloads = [seg.payload for p in capture.packets if (seg := decode_tcp(p.data)) and seg.payload]
    assert [parse_message(d).call_id for d in payloads] == [wanted] * 7
    labels = [(v.method or str(v.status_code)) for v in map(parse_message, payloads)]
    assert labels == FLOW

    # keys.log: exactly the entries of connection A (both legs), as in the original key log.
    original = parse_keylog((lab.root / "captures" / "keys.log").read_text())
    expected = "".join(e.text() for e in original if e.conn == lab.conn_a)
    keys = (out / "keys.log").read_text()
    assert keys == expected
    assert {e.conn for e in parse_keylog(keys)} == {lab.conn_a}
    assert {e.leg for e in parse_keylog(keys)} == {"customer", "core"}
    other_secrets = [line.split()[1] for e in original if e.conn != lab.conn_a for line in e.lines]
    assert other_secrets
    # ...and embedded in the pcapng as a Decryption Secrets Block.
    assert capture.secrets == [(pcap.PCAPNG_SECRETS_TLS_KEYLOG, expected.encode())]

    # srtp-keys.log: that call's lines only, all of them.
    srtp_all = (lab.root / "captures" / "srtp-keys.log").read_text().splitlines()
    mine = [line for line in srtp_all if f"call-id={wanted} " in line]
    assert mine
    assert (out / "srtp-keys.log").read_text().splitlines() == mine

    # summary: the flow and the TLS facts of connection A.
    summary = json.loads((out / "summary.json").read_text())
    [call] = summary["calls"]
    assert call["call_id"] == wanted
    assert [r["method"] or str(r["status"]) for r in call["flow"]] == FLOW
    assert [r["cseq"] for r in call["flow"]] == ["1 INVITE"] * 4 + ["1 ACK"] + ["2 BYE"] * 2
    assert {r["leg"] for r in call["flow"]} == {"customer"}
    assert call["connections"] == [lab.conn_a]
    [conn] = summary["connections"]
    assert conn["conn"] == lab.conn_a
    customer_leg = next(leg for leg in conn["legs"] if leg["leg"] == "customer")
    assert customer_leg["version"] == "TLSv1.2"
    assert customer_leg["handshake_done"]["key_exchange"] == "RSA"
    assert all("master_secret" not in leg["handshake_done"] and "keylog" not in leg["handshake_done"]
               for leg in conn["legs"])
    for entry in parse_keylog(keys):  # secrets live in keys.log, never in the summary
        assert all(line.split()[2] not in json.dumps(summary) for line in entry.lines)
    assert conn["connection_closed"]["reason"]
    text = (out / "summary.txt").read_text()
    assert wanted in text and "CSeq 2 BYE" in text and "TLSv1.2" in text
    assert re.search(r"^ +\+\d\.\d{3} +Δ\d\.\d{3} \|--INVITE-+>\| .*  CSeq 1 INVITE  sip:", text, re.M)  # the ladder

    # Nothing of the other calls or connections anywhere: folder, archive, pcapng bytes.
    files = bundle_bytes(out)
    assert set(files) >= {f"tar/bundle/{name}" for name in ("calls.pcapng", "keys.log", "summary.json")}
    for name, data in files.items():
        for other in lab.all_calls:
            if other != wanted:
                assert other.encode() not in data, (name, other)
                assert other.split("@")[0].encode() not in data, (name, other)
        assert lab.conn_b.encode() not in data, name
        for secret in other_secrets:
            assert secret.encode() not in data, name


@require("tshark")
def test_export_opens_in_tshark_without_tcp_warnings(lab: LabCaptures, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    wanted = lab.calls_a[1]
    out = tmp_path / "bundle"
    assert export(capsys, "--call-id", wanted, "--config", str(lab.config), "--out", str(out))[0] == 0
    rows = tshark_fields(out / "calls.pcapng", ["sip.Call-ID", "sip.CSeq"], "-d", f"tcp.port=={lab.port},sip")
    assert [r[0] for r in rows] == [wanted] * 7
    assert tshark_fields(out / "calls.pcapng", ["frame.number"], display_filter="tcp.analysis.flags") == []
    assert tshark_fields(out / "calls.pcapng", ["frame.number"], display_filter="_ws.expert.severity >= warning") == []
    # The original capture shows every call: the export is the cut, not the tool.
    [original] = capture_files(lab.root / "captures")
    assert len({r[0] for r in tshark_fields(original, ["sip.Call-ID"], "-d", f"tcp.port=={lab.port},sip")}) == 5


def test_export_several_calls_over_two_connections(lab: LabCaptures, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    wanted = [lab.calls_a[2], lab.calls_b[0]]
    out = tmp_path / "two"
    code, _, err = export(capsys, "--call-id", wanted[0], "--call-id", wanted[1], "--captures",
                          str(lab.root / "captures"), "--keylog", str(lab.root / "captures" / "keys.log"),
                          "--srtp", str(lab.root / "captures" / "srtp-keys.log"), "--with-keys", "--out", str(out))
    assert code == 0, err
    summary = json.loads((out / "summary.json").read_text())
    assert [c["call_id"] for c in summary["calls"]] == [wanted[1], wanted[0]]  # by time: B's first call came earlier
    assert {e.conn for e in parse_keylog((out / "keys.log").read_text())} == {lab.conn_a, lab.conn_b}
    payloads = [seg.payload for p in read_capture((out / "calls.pcapng").read_bytes()).packets
                if (seg := decode_tcp(p.data)) and seg.payload]
    assert sorted(parse_message(d).call_id for d in payloads) == sorted(wanted * 7)
    srtp = (out / "srtp-keys.log").read_text()
    assert srtp.count("call-id=") >= 2 and all(any(w in line for w in wanted) for line in srtp.splitlines())
    for data in bundle_bytes(out).values():
        for other in lab.all_calls:
            if other not in wanted:
                assert other.encode() not in data


def test_export_by_time_window(lab: LabCaptures, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    since, until = lab.window_b0
    out = tmp_path / "window"
    code, stdout, err = export(capsys, "--since", iso(since), "--until", iso(until), "--config", str(lab.config),
                               "--with-keys", "--out", str(out))
    assert code == 0, err
    summary = json.loads((out / "summary.json").read_text())
    assert [c["call_id"] for c in summary["calls"]] == [lab.calls_b[0]]
    assert [r["method"] or str(r["status"]) for r in summary["calls"][0]["flow"]] == FLOW
    assert summary["selection"]["since"] and summary["selection"]["call_ids"] is None
    assert {e.conn for e in parse_keylog((out / "keys.log").read_text())} == {lab.conn_b}
    for data in bundle_bytes(out).values():
        for other in lab.all_calls[:3] + lab.calls_b[1:]:
            assert other.encode() not in data
    # A Call-ID with a window that excludes it: nothing to export, said plainly.
    code, _, err = export(capsys, "--call-id", lab.calls_a[0], "--since", iso(since), "--until", iso(until),
                          "--config", str(lab.config), "--out", str(tmp_path / "empty"))
    assert code == 1 and "no selected message between" in err and "captures cover" in err
    assert not (tmp_path / "empty").exists()


def test_errors_are_one_line(lab: LabCaptures, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = str(lab.config)
    # Unknown Call-ID: named, with a few that exist.
    code, _, err = export(capsys, "--call-id", "nope@nowhere", "--config", config, "--out", str(tmp_path / "x"))
    assert code == 1
    first = err.splitlines()[0]
    assert first.startswith("siptap: error: Call-ID not found") and "nope@nowhere" in first
    assert lab.calls_a[-1] in first and "Traceback" not in err
    assert not (tmp_path / "x").exists()
    # No captures.
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = export(capsys, "--call-id", lab.calls_a[0], "--captures", str(empty), "--keylog",
                          str(empty / "k"), "--srtp", str(empty / "s"), "--out", str(tmp_path / "y"))
    assert code == 1 and err.splitlines()[0].startswith("siptap: error: no captures found in")
    code, _, err = export(capsys, "--call-id", "x", "--captures", str(tmp_path / "missing"), "--keylog", "k",
                          "--srtp", "s", "--out", str(tmp_path / "y"))
    assert code == 1 and "capture folder not found" in err
    # Nothing selected, a bad time, an inverted window.
    code, _, err = export(capsys, "--config", config, "--out", str(tmp_path / "z"))
    assert code == 1 and "nothing selected" in err
    code, _, err = export(capsys, "--since", "yesterday", "--config", config, "--out", str(tmp_path / "z"))
    assert code == 1 and "not an ISO 8601 time: 'yesterday'" in err
    code, _, err = export(capsys, "--since", "2024-01-02", "--until", "2024-01-01", "--config", config,
                          "--out", str(tmp_path / "z"))
    assert code == 1 and "is after --until" in err
    # An existing bundle is refused without --force, replaced with it.
    out = tmp_path / "bundle"
    assert export(capsys, "--call-id", lab.calls_a[0], "--config", config, "--out", str(out))[0] == 0
    code, _, err = export(capsys, "--call-id", lab.calls_b[1], "--config", config, "--out", str(out))
    assert code == 1 and "already exists" in err and "--force" in err
    assert lab.calls_a[0] in (out / "summary.txt").read_text()
    code, _, err = export(capsys, "--call-id", lab.calls_b[1], "--config", config, "--out", str(out), "--force")
    assert code == 0, err
    assert lab.calls_b[1] in (out / "summary.txt").read_text()
    for data in bundle_bytes(out).values():  # the replaced archive, too
        assert lab.calls_a[0].encode() not in data
    # --force never deletes a folder that is not a bundle.
    other = tmp_path / "precious"
    other.mkdir()
    (other / "thesis.tex").write_text("x")
    code, _, err = export(capsys, "--call-id", lab.calls_b[1], "--config", config, "--out", str(other), "--force")
    assert code == 1 and "not a siptap bundle" in err and (other / "thesis.tex").exists()
    assert not list(tmp_path.glob(".*"))  # no staging folder left behind


@pytest.mark.parametrize("flag", [[], ["--no-keys"]], ids=["default", "--no-keys"])
def test_no_keys_by_default(lab: LabCaptures, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                            flag: list[str]) -> None:
    """The pcapng already holds the cleartext: keys ride along only with --with-keys (--no-keys,
    the former opt-out, is still accepted)."""
    out = tmp_path / "nokeys"
    code, stdout, err = export(capsys, "--call-id", lab.calls_b[1], "--config", str(lab.config), *flag, "--out", str(out))
    assert code == 0, err
    assert "no TLS keys" in stdout and "decrypts" not in stdout
    assert not (out / "keys.log").exists()
    assert read_capture((out / "calls.pcapng").read_bytes()).secrets == []
    secrets = [line.split()[2] for e in parse_keylog((lab.root / "captures" / "keys.log").read_text()) for line in e.lines]
    assert secrets
    for data in bundle_bytes(out).values():
        assert not any(secret.encode() in data for secret in secrets)
    assert "keys.log: not included" in (out / "summary.txt").read_text()


def test_cli_help_lists_export() -> None:
    assert "export" in cli.build_parser().format_help()


# -- pure helpers, on synthetic captures ----------------------------------------------------------------

CLIENT, SERVER = ("192.0.2.10", 40000), ("192.0.2.1", 5061)
T0 = 1_700_000_000


def sip(first: str, call_id: str, cseq: str = "1 INVITE", body: bytes = b"") -> bytes:
    return (f"{first}\r\nVia: SIP/2.0/TLS 192.0.2.10;branch=z9hG4bK1\r\nCall-ID: {call_id}\r\nCSeq: {cseq}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


def write_pcap(path: Path, records: list[tuple[int, bytes]], *, ng: bool = False) -> Path:
    if ng:
        blob = pcap.pcapng_section_header() + pcap.pcapng_interface_description()
        blob += b"".join(pcap.pcapng_enhanced_packet(ts // 10**6, ts % 10**6, f) for ts, f in records)
    else:
        blob = pcap.pcap_global_header() + b"".join(pcap.pcap_record(ts // 10**6, ts % 10**6, f) for ts, f in records)
    path.write_bytes(blob)
    return path


def test_reader_round_trips_both_formats_and_secrets() -> None:
    flow = pcap.TcpFlow(CLIENT, SERVER)
    frames = flow.handshake() + flow.segment(True, sip("INVITE sip:b@x SIP/2.0", "c1"))
    for ng in (False, True):
        blob = (pcap.pcapng_section_header() + pcap.pcapng_interface_description()
                + pcap.pcapng_decryption_secrets(b"CLIENT_RANDOM aa bb\n")
                + b"".join(pcap.pcapng_enhanced_packet(T0 + i, 250000, f) for i, f in enumerate(frames))) if ng else (
            pcap.pcap_global_header() + b"".join(pcap.pcap_record(T0 + i, 250000, f) for i, f in enumerate(frames)))
        capture = read_capture(blob)
        assert [p.data for p in capture.packets] == frames
        assert [p.ts_us for p in capture.packets] == [(T0 + i) * 10**6 + 250000 for i in range(len(frames))]
        assert capture.secrets == ([(pcap.PCAPNG_SECRETS_TLS_KEYLOG, b"CLIENT_RANDOM aa bb\n")] if ng else [])
        # A file still being written: the tail is cut, the rest is read.
        cut = read_capture(blob[:-7], tolerate_truncation=True)
        assert cut.truncated and len(cut.packets) == len(frames) - 1
        with pytest.raises(PcapFormatError):
            read_capture(blob[:-7])
    segment = decode_tcp(frames[-1])
    assert segment is not None and segment.src == CLIENT and segment.dst == SERVER
    assert segment.payload.startswith(b"INVITE")
    v6 = pcap.TcpFlow(("2001:db8::1", 40000), ("2001:db8::2", 5061)).segment(False, b"x")[0]
    assert decode_tcp(v6) == decode_tcp(v6) and decode_tcp(v6).src == ("2001:db8::2", 5061)  # type: ignore[union-attr]
    with pytest.raises(PcapFormatError):
        read_capture(b"\x00" * 40)


def test_reader_big_endian_nanoseconds_and_tsresol() -> None:
    frame = pcap.TcpFlow(CLIENT, SERVER).segment(True, b"hello")[0]
    blob = struct.pack(">IHHiIII", 0xA1B23C4D, 2, 4, 0, 0, 65535, 1) + struct.pack(
        ">IIII", T0, 123456789, len(frame), len(frame)) + frame
    [packet] = read_capture(blob).packets
    assert packet.ts_us == T0 * 10**6 + 123456 and packet.data == frame
    # pcapng with if_tsresol = 9 (nanoseconds).
    idb_body = struct.pack("<HHI", 1, 0, 65535) + struct.pack("<HH", 9, 1) + b"\x09\x00\x00\x00" + struct.pack("<HH", 0, 0)
    idb = struct.pack("<II", 1, 12 + len(idb_body)) + idb_body + struct.pack("<I", 12 + len(idb_body))
    ns = T0 * 10**9 + 5_000
    epb_body = struct.pack("<IIIII", 0, ns >> 32, ns & 0xFFFFFFFF, len(frame), len(frame)) + frame
    epb_body += b"\x00" * (-len(epb_body) % 4)
    epb = struct.pack("<II", 6, 12 + len(epb_body)) + epb_body + struct.pack("<I", 12 + len(epb_body))
    [packet] = read_capture(pcap.pcapng_section_header() + idb + epb).packets
    assert packet.ts_us == T0 * 10**6 + 5 and packet.data == frame


def test_read_messages_reassembles_across_segments_rotation_and_retransmission(tmp_path: Path) -> None:
    flow = pcap.TcpFlow(CLIENT, SERVER)
    invite = sip("INVITE sip:b@x SIP/2.0", "c1", body=b"v=0\r\n" * 10)
    ok = sip("SIP/2.0 200 OK", "c1")
    records = [(T0 * 10**6, f) for f in flow.handshake()]
    records += [(T0 * 10**6 + 1, f) for f in flow.segment(True, invite, mss=40)]  # one message, many segments
    retransmitted = flow.segment(False, ok)
    records += [(T0 * 10**6 + 2, retransmitted[0]), (T0 * 10**6 + 3, retransmitted[0])]
    first = write_pcap(tmp_path / "siptap-20231114-221320-1.pcap", records)
    # Rotation: the sink re-emits the handshake from the current sequence numbers.
    bye = sip("BYE sip:b@x SIP/2.0", "c1", "2 BYE")
    records = [(T0 * 10**6 + 10, f) for f in flow.handshake() + flow.segment(True, bye)]
    records += [(T0 * 10**6 + 11, f) for f in flow.fin(True) + flow.fin(False)]
    second = write_pcap(tmp_path / "siptap-20231114-221330-2.pcapng", records, ng=True)
    (tmp_path / "siptap-20231114-221340-3.txt").write_text("not a capture name")
    files = capture_files(tmp_path, "siptap")
    assert files == [first, second]
    scan = read_messages(files)
    assert [(m.data, m.from_client, m.generation) for m in scan.messages] == [
        (invite, True, 0), (ok, False, 0), (bye, True, 0)]
    assert scan.messages[0].ts_us == T0 * 10**6 + 1 and len(scan.messages[0].frame_ts) > 1
    assert scan.messages[0].client == CLIENT and scan.messages[0].server == SERVER
    assert list(scan.fins) == [(CLIENT, SERVER, 0)]


def test_keylog_srtp_and_time_helpers() -> None:
    text = (
        "CLIENT_RANDOM " + "11" * 32 + " " + "22" * 48 + "\n"  # before any comment: nobody's
        "# conn=c1 leg=customer route=r client=192.0.2.10:40000 server=192.0.2.1:5061 TLSv1.2 AES256-SHA\n"
        "CLIENT_RANDOM " + "33" * 32 + " " + "44" * 48 + "\n"
        "# conn=c2 leg=core route=r client=[::ffff:192.0.2.1]:45000 server=[2001:db8::7]:5061 TLSv1.3 TLS_AES_256\n"
        "SERVER_TRAFFIC_SECRET_0 " + "55" * 32 + " " + "66" * 48 + "\n"
    )
    entries = parse_keylog(text)
    assert [(e.conn, e.leg, e.client, e.server, e.version, len(e.lines)) for e in entries] == [
        ("c1", "customer", ("192.0.2.10", 40000), ("192.0.2.1", 5061), "TLSv1.2", 1),
        ("c2", "core", ("192.0.2.1", 45000), ("2001:db8::7", 5061), "TLSv1.3", 1),
    ]
    assert "11" * 32 not in "".join(e.text() for e in entries)
    srtp = ("2023-11-14T22:13:20.000000Z call-id=a@x conn=c1 leg=customer key=1\n"
            "2023-11-14T22:13:21.000000Z call-id=a@xy conn=c1 leg=customer key=2\n"
            "2023-11-14T22:13:22.000000Z call-id=b@x conn=c1 leg=customer key=3\n"
            "2023-11-14T22:13:23.000000Z call-id=a@x conn=c1 leg=customer key=4\n")
    assert [line[-1] for line in select_srtp_lines(srtp, {"a@x"}, None, None)] == ["1", "4"]
    assert [line[-1] for line in select_srtp_lines(srtp, {"a@x"}, None, parse_time("2023-11-14T22:13:21Z"))] == ["1"]
    assert parse_time("2023-11-14T22:13:20Z") == T0 * 10**6
    assert parse_time("2023-11-14 23:13:20.5+01:00") == T0 * 10**6 + 500000
    assert parse_time("2023-11-14T22:13:20") == T0 * 10**6  # naive = UTC
    assert parse_time(str(T0)) == T0 * 10**6
    with pytest.raises(ExportError):
        parse_time("soon")
    assert Selection(frozenset({"a"}), 5, 10).in_window(10) and not Selection(since_us=11).in_window(10)


def test_port_reuse_is_decided_by_the_log() -> None:
    def entry(i: int, conn: str) -> KeyEntry:
        return KeyEntry(i, conn, "customer", "r", CLIENT, SERVER, "TLSv1.2", "AES256-SHA", f"# conn={conn}")
    old, new = entry(0, "old"), entry(1, "new")
    log = LogFacts(handshakes=[
        {"conn": "old", "leg": "customer", "timestamp": "2023-11-14T22:00:00.000000Z"},
        {"conn": "new", "leg": "customer", "timestamp": "2023-11-14T22:10:00.000000Z"},
    ])
    assert pick_entry([old, new], parse_time("2023-11-14T22:05:00Z"), log) == [old]
    assert pick_entry([old, new], parse_time("2023-11-14T22:15:00Z"), log) == [new]
    assert pick_entry([old, new], parse_time("2023-11-14T22:15:00Z"), LogFacts()) == [old, new]
    assert pick_entry([old], 0, LogFacts()) == [old]


def test_synthetic_export_rewrites_sequence_numbers(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Two interleaved calls on one flow; the kept segments of one are contiguous again."""
    flow = pcap.TcpFlow(CLIENT, SERVER)
    records = [(T0 * 10**6, f) for f in flow.handshake()]
    for i, (first, call) in enumerate([("INVITE sip:b@x SIP/2.0", "keep"), ("INVITE sip:b@x SIP/2.0", "drop"),
                                       ("SIP/2.0 200 OK", "drop"), ("SIP/2.0 200 OK", "keep")]):
        records += [(T0 * 10**6 + i + 1, f) for f in flow.segment(first.startswith("INVITE"), sip(first, call))]
    captures = tmp_path / "captures"
    captures.mkdir()
    write_pcap(captures / "siptap-20231114-221320-1.pcap", records)
    out = tmp_path / "b"
    code, _, err = export(capsys, "--call-id", "keep", "--captures", str(captures), "--keylog", str(tmp_path / "none"),
                          "--srtp", str(tmp_path / "none2"), "--out", str(out))
    assert code == 0, err
    assert "key log not found" in err  # a warning, not a failure
    segments = [decode_tcp(p.data) for p in read_capture((out / "calls.pcapng").read_bytes()).packets]
    data = [s for s in segments if s and s.payload]
    assert [parse_message(s.payload).call_id for s in data] == ["keep", "keep"]
    invite, ok = data
    syn, synack = segments[0], segments[1]
    assert syn and synack and invite.seq == syn.seq + 1 and ok.seq == synack.seq + 1
    assert ok.ack == invite.seq + len(invite.payload)
    assert [p.ts_us for p in read_capture((out / "calls.pcapng").read_bytes()).packets][-1] == T0 * 10**6 + 4
    assert b"drop" not in b"".join(p.read_bytes() for p in out.iterdir())
    shutil.rmtree(out)


def test_per_worker_capture_series_are_found_and_merged_by_time(tmp_path: Path) -> None:
    """workers > 1: each worker writes its own `<prefix>-w<I>-...` series; export reads them
    all and interleaves their messages by time, each worker's own order kept."""
    other_client = ("192.0.2.11", 40001)
    flow1, flow2 = pcap.TcpFlow(CLIENT, SERVER), pcap.TcpFlow(other_client, SERVER)
    a1, a2 = sip("INVITE sip:b@x SIP/2.0", "a"), sip("SIP/2.0 200 OK", "a")
    b1, b2 = sip("INVITE sip:b@x SIP/2.0", "b"), sip("SIP/2.0 200 OK", "b")
    us = T0 * 10**6
    w1 = [(us, f) for f in flow1.handshake()] + [(us + 10, f) for f in flow1.segment(True, a1)]
    w1 += [(us + 30, f) for f in flow1.segment(False, a2)] + [(us + 40, f) for f in flow1.fin(True) + flow1.fin(False)]
    w2 = [(us + 5, f) for f in flow2.handshake()] + [(us + 20, f) for f in flow2.segment(True, b1)]
    w2 += [(us + 35, f) for f in flow2.segment(False, b2)]
    first = write_pcap(tmp_path / "siptap-w1-20231114-221320-1.pcap", w1)
    second = write_pcap(tmp_path / "siptap-w2-20231114-221320-1.pcap", w2)
    single = write_pcap(tmp_path / "siptap-20231114-221310-1.pcap", [])  # from before workers = 2
    (tmp_path / "other-w1-20231114-221320-1.pcap").write_bytes(b"")  # another prefix
    assert capture_files(tmp_path, "siptap") == [single, first, second]
    scan = read_messages(capture_files(tmp_path, "siptap"))
    assert [m.data for m in scan.messages] == [a1, b1, a2, b2]
    assert [m.file for m in scan.messages] == [first, second, first, second]
    bundle = build_bundle(Sources(tmp_path, "siptap", None, None, None), Selection(frozenset({"a", "b"})))
    packets = read_capture(bundle.files["calls.pcapng"]).packets
    assert [p.ts_us for p in packets] == sorted(p.ts_us for p in packets)

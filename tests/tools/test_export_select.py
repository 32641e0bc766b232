"""`siptap export` with the selectors of `siptap calls`, --with-keys and the summary a vendor reads.

On the captures of a real proxy run (tests/tools/call_lab.py): two connections, answered and
refused calls, an OPTIONS ping, both legs mirrored. Bundles are read back byte for byte, and
the summary's tshark hint is run as written.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
from pathlib import Path

import pytest

from siptap import cli
from siptap.sansio.pcap_reader import decode_tcp, read_capture
from siptap.sansio.sip_message import parse_message
from siptap.tools.export import parse_keylog
from tests.integration.capture import require
from tests.tools.call_lab import CallLab
from tests.tools.test_export import bundle_bytes


def export(capsys: pytest.CaptureFixture[str], lab: CallLab, out: Path, *argv: str) -> tuple[int, str, str]:
    code = cli.main(["export", "--config", str(lab.config), "--log", str(lab.log), "--out", str(out), *argv])
    stdout, err = capsys.readouterr()
    return code, stdout, err


def exported_call_ids(out: Path) -> list[str]:
    payloads = [seg.payload for p in read_capture((out / "calls.pcapng").read_bytes()).packets
                if (seg := decode_tcp(p.data)) and seg.payload]
    return list(dict.fromkeys(parse_message(d).call_id or "" for d in payloads))


def test_call_id_without_its_host_part(call_lab: CallLab, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    busy = call_lab.calls["busy"].call_id
    for i, given in enumerate([busy.split("@")[0], busy.split("@")[0] + "@elsewhere.invalid"]):
        out = tmp_path / f"b{i}"
        code, stdout, err = export(capsys, call_lab, out, "--call-id", given)
        assert code == 0, err
        assert exported_call_ids(out) == [busy]
        summary = json.loads((out / "summary.json").read_text())
        assert summary["selection"]["call_ids"] == [busy] and summary["selection"]["asked"] == f"--call-id {given}"


def test_an_ambiguous_selector_lists_the_candidates(call_lab: CallLab, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "x"
    code, stdout, err = export(capsys, call_lab, out, "--call-id", "lab-a")
    assert code == 1 and stdout == ""
    lines = err.splitlines()
    assert lines[0] == "siptap: error: --call-id 'lab-a' is ambiguous: it matches 3 calls"
    assert "CALL-ID" in lines[1]
    assert [line.split()[-1] for line in lines[2:5]] == [call_lab.calls[n].call_id for n in ("answered", "asserted", "again")]
    assert lines[5].startswith("siptap: hint: ")
    assert not out.exists() and not out.with_name("x.tar.gz").exists()
    # A number that two calls dialled: both listed; --all exports both.
    code, _, err = export(capsys, call_lab, out, "--number", "+49 40 222")
    assert code == 1 and err.splitlines()[0] == "siptap: error: the selectors match 2 calls" and "--all" in err
    assert call_lab.calls["answered"].call_id in err and call_lab.calls["again"].call_id in err
    code, stdout, err = export(capsys, call_lab, out, "--number", "+49 40 222", "--all")
    assert code == 0, err
    assert exported_call_ids(out) == [call_lab.calls["answered"].call_id, call_lab.calls["again"].call_id]


def test_failed_call_by_status_and_number(call_lab: CallLab, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "failed"
    code, stdout, err = export(capsys, call_lab, out, "--status", "failed", "--number", "4930111")
    assert code == 0, err
    busy = call_lab.calls["busy"].call_id
    assert exported_call_ids(out) == [busy]
    assert "no TLS keys" in stdout
    assert sorted(p.name for p in out.iterdir()) == ["calls.pcapng", "ladder.html", "srtp-keys.log", "summary.json",
                                                     "summary.txt"]
    for name, data in bundle_bytes(out).items():
        for other in call_lab.calls.values():
            if other.call_id != busy:
                assert other.call_id.encode() not in data, name
        assert call_lab.options_call_id.encode() not in data


def test_with_keys_only_the_connection_involved_and_what_else_it_opens(
        call_lab: CallLab, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    busy = call_lab.calls["busy"]
    out = tmp_path / "keys"
    code, stdout, err = export(capsys, call_lab, out, "--call-id", "lab-busy", "--with-keys")
    assert code == 0, err
    # Only connection A's key lines (both its legs), exactly as the key log holds them.
    original = parse_keylog((call_lab.captures / "keys.log").read_text())
    keys = (out / "keys.log").read_text()
    assert keys == "".join(e.text() for e in original if e.conn == busy.conn)
    assert {e.leg for e in parse_keylog(keys)} == {"customer", "core"}
    assert read_capture((out / "calls.pcapng").read_bytes()).secrets[0][1] == keys.encode()
    # Connection A also carried "answered", "again" and the OPTIONS ping: the operator is told
    # which (by Call-ID, on stdout); the bundle says how many and when, never their Call-IDs.
    others = [call_lab.calls["answered"].call_id, call_lab.calls["again"].call_id, call_lab.options_call_id]
    assert stdout.splitlines()[1:] == [
        "note: with keys.log, a raw capture of these connections also decrypts 3 other call(s):",
        *(f"  {c}" for c in others)]
    text = (out / "summary.txt").read_text()
    assert "also decrypt 3 other call(s)" in text
    assert len(re.findall(r"^    \S+Z INVITE -> 200, 14 messages$", text, re.M)) == 2
    assert re.search(r"^    \S+Z OPTIONS -> 200, 4 messages$", text, re.M)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["files"]["keys.log"]["also_decrypts"]["calls"] == 3
    for data in bundle_bytes(out).values():
        for other in others + [call_lab.calls[n].call_id for n in ("asserted", "unavailable")]:
            assert other.encode() not in data
    assert all(p.stat().st_mode & 0o777 == 0o600 for p in out.iterdir())
    assert out.with_name("keys.tar.gz").stat().st_mode & 0o777 == 0o600
    # A connection that carried nothing else says so.
    out2 = tmp_path / "alone"
    code, stdout, err = export(capsys, call_lab, out2, "--since", "2000-01-01T00:00:00Z", "--call-id", "lab-unavailable",
                               "--with-keys")
    assert code == 0, err
    assert "also decrypt 1 other call(s)" in (out2 / "summary.txt").read_text()  # "asserted" shares connection B


def test_summary_reads_as_prose(call_lab: CallLab, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "summary"
    answered = call_lab.calls["answered"]
    assert export(capsys, call_lab, out, "--call-id", "lab-answered")[0] == 0
    text = (out / "summary.txt").read_text()
    summary = json.loads((out / "summary.json").read_text())
    core_port = int(summary["connections"][0]["legs"][1]["server"].rsplit(":", 1)[1])
    # The decode-as hint names both legs' server ports.
    ports = sorted([call_lab.port, core_port])
    hint = f"tshark -r calls.pcapng -d tcp.port=={ports[0]},sip -d tcp.port=={ports[1]},sip -Y sip"
    assert f"open it: {hint} " in text
    # Relative times: the call's start once, then +seconds since it and the gap to the message before.
    [call] = summary["calls"]
    assert f"call {answered.call_id}\n  started {call['first']}, 14 messages over " in text
    offsets = [float(m) for m in re.findall(r"^ +\+(\d+\.\d{3}) +Δ\d+\.\d{3} \|", text, re.M)]
    assert len(offsets) == 14 and offsets[0] == 0.0 and offsets == sorted(offsets)
    assert [round(r["offset"], 3) for r in call["flow"]] == offsets
    # Certificates as a person reads them, not JSON.
    tls = text[text.index("TLS connections involved"):]
    assert "{" not in tls
    assert re.search(r"peer certificate \(chain of 2\): .*CN=customer\n +issuer: +.*CN=siptap lab CA\n"
                     r" +SANs: +DNS:customer\n +notAfter: +20\d\d-", tls)
    assert "SANs:      DNS:localhost, IP:127.0.0.1" in tls


@require("tshark")
def test_the_summary_hint_opens_the_bundle_in_tshark(call_lab: CallLab, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "hint"
    assert export(capsys, call_lab, out, "--call-id", "lab-asserted")[0] == 0
    hint = next(line for line in (out / "summary.txt").read_text().splitlines() if "open it:" in line)
    argv = shlex.split(hint.split("open it: ", 1)[1].split("   (", 1)[0])
    assert argv[:3] == ["tshark", "-r", "calls.pcapng"]
    result = subprocess.run([*argv, "-T", "fields", "-e", "sip.Call-ID", "-e", "sip.CSeq"], cwd=out,
                            capture_output=True, text=True, check=True)
    rows = [line.split("\t") for line in result.stdout.splitlines()]
    assert [r[0] for r in rows] == [call_lab.calls["asserted"].call_id] * 14

"""`siptap flow` and the bundle's ladder over real captures, and the HTML ladder in a real browser.

The captures are those of tests/tools/call_lab.py: `siptap run` as a process with both legs
mirrored, two lab customers, answered and refused calls. The HTML page is opened by Debian's
chromium, headless: its rendered DOM must hold every message of the call in order, and its
screenshot (written into tmp_path, never into the repository) must show the failed response in
red: the page did render, styles and all.
"""

from __future__ import annotations

import functools
import json
import re
import struct
import subprocess
import uuid
import zlib
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio

from siptap import cli
from siptap.tools.lab.core import LabCore, core_context, start_lab_core
from siptap.tools.lab.customer import IMG2020_CIPHERS, CustomerSession, customer_context
from siptap.tools.pki import issue_leaf
from tests.integration.capture import PEERS, require
from tests.relay.harness import SiptapProcess, reverse_route, write_config
from tests.tools.call_lab import CallLab, place_call

# The busy call as siptap relayed it: (label, leg) per arrow, each message received then relayed.
BUSY = [("INVITE", "customer"), ("INVITE", "core"), ("100 Trying", "core"), ("100 Trying", "customer"),
        ("486 Busy Here", "core"), ("486 Busy Here", "customer"), ("ACK", "customer"), ("ACK", "core")]
ROW = re.compile(r"^ +\+\d+\.\d{3} +Δ\d+\.\d{3} (\|.*\|)  (CSeq .*)$")


def flow(capsys: pytest.CaptureFixture[str], lab: CallLab, *argv: str, log: bool = True) -> tuple[int, str, str]:
    code = cli.main(["flow", "--config", str(lab.config), *(["--log", str(lab.log)] if log else []), *argv])
    out, err = capsys.readouterr()
    return code, out, err


def arrows(text: str) -> list[tuple[str, str]]:
    """(label, leg) of every row of a text ladder: the leg from the lanes the arrow spans."""
    out = []
    for line in text.splitlines():
        match = ROW.match(line)
        if match:
            lanes = match.group(1).split("|")[1:-1]
            span = next(i for i, lane in enumerate(lanes) if lane.strip())
            label = lanes[span].strip("-=<> ").removesuffix(" ✗")
            out.append((label, "customer" if span == 0 else "core"))
    return out


def directed(text: str) -> list[tuple[str, str, str]]:
    """(label, from, to) of every row of a text ladder, the columns by name."""
    out = []
    for line in text.splitlines():
        match = ROW.match(line)
        if match:
            lanes = match.group(1).split("|")[1:-1]
            span = next(i for i, lane in enumerate(lanes) if lane.strip())
            ends = [("E-SBC", "siptap"), ("siptap", "core")][span]
            label = lanes[span].strip("-=<> ").removesuffix(" ✗")
            out.append((label, *(ends if lanes[span].rstrip().endswith(">") else ends[::-1])))
    return out


def test_flow_draws_the_call_from_the_captures(call_lab: CallLab, capsys: pytest.CaptureFixture[str]) -> None:
    busy = call_lab.calls["busy"]
    code, out, err = flow(capsys, call_lab, "--call-id", "lab-busy")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith(f"call {busy.call_id}: INVITE -> 486 Busy Here, started ")
    assert lines[0].endswith(f", 8 messages, connection(s) {busy.conn}")
    assert arrows(out) == BUSY
    # The columns: the real addresses, and each leg's TLS facts above its peer.
    assert lines[1].split() == ["E-SBC", "siptap", "core"]
    summary = lines[2:lines.index(next(line for line in lines if line.strip().startswith("+s")))]
    text = "\n".join(summary)
    assert f"127.0.0.1:{call_lab.port}" in text
    assert "TLSv1.2 AES256-GCM-SHA384" in text and "key exchange RSA" in text and "cert O=siptap lab,CN=customer" in text
    assert "cert O=siptap lab,CN=core" in text and re.search(r"notAfter 20\d\d-\d\d-\d\dT", text)
    rows = [line for line in lines if ROW.match(line)]
    assert "SDP offer  a=crypto (SRTP keys)" in rows[0] and "sip:486@core.lab.invalid" in rows[0]
    assert all("failed" in row for row in rows[4:6]) and "==486 Busy Here ✗" in rows[4]
    # The same messages as the export's flow, every one of them.
    bundle = call_lab.root / "flow-busy-bundle"
    assert cli.main(["export", "--config", str(call_lab.config), "--log", str(call_lab.log), "--call-id", "lab-busy",
                     "--out", str(bundle), "--force"]) == 0
    capsys.readouterr()
    [call] = json.loads((bundle / "summary.json").read_text())["calls"]
    assert sorted((r["label"].split(" sip:")[0], r["leg"]) for r in call["flow"]) == sorted(BUSY)
    assert arrows((bundle / "summary.txt").read_text()) == BUSY


def test_flow_without_key_log_or_log_tells_the_legs_apart_by_the_relayed_copies(
        call_lab: CallLab, capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["flow", "--captures", str(call_lab.captures), "--keylog", str(call_lab.root / "none.log"),
                     "--srtp", str(call_lab.root / "none.log"), "--call-id", "lab-busy"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert arrows(out) == BUSY
    assert "key log not found: legs are told apart by the messages siptap relayed" in err
    assert "note: leg guessed" in out and "key exchange" not in out


def test_flow_selectors_are_exports(call_lab: CallLab, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = flow(capsys, call_lab, "--call-id", "lab-a")
    assert code == 1 and out == ""
    assert err.splitlines()[0] == "siptap: error: --call-id 'lab-a' is ambiguous: it matches 3 calls"
    code, out, err = flow(capsys, call_lab, "--status", "failed")
    assert code == 1 and "the selectors match 2 calls" in err
    code, out, err = flow(capsys, call_lab, "--status", "failed", "--all")
    assert code == 0, err
    titles = [line.split(":")[0] for line in out.splitlines() if line.startswith("call ")]
    assert titles == [f"call {call_lab.calls[n].call_id}" for n in ("busy", "unavailable")]
    assert len(arrows(out)) == 16
    code, out, err = flow(capsys, call_lab, "--number", "4930444")
    assert code == 0 and out.startswith(f"call {call_lab.calls['unavailable'].call_id}: INVITE -> 503 Service")
    code, out, err = flow(capsys, call_lab)
    assert code == 1 and "nothing selected" in err
    code, out, err = flow(capsys, call_lab, "--call-id", "lab-busy", "--until", "2000-01-01T00:00:00Z")
    assert code == 1 and "no selected message" in err and "Traceback" not in err


def test_flow_html_is_private_and_never_replaced_silently(call_lab: CallLab, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    page = tmp_path / "busy.html"
    code, out, err = flow(capsys, call_lab, "--call-id", "lab-busy", "--html", str(page))
    assert code == 0, err
    assert arrows(out) == BUSY  # the text too
    assert f"wrote {page}: 1 call(s), 8 messages" in err
    assert page.stat().st_mode & 0o777 == 0o600
    assert call_lab.calls["busy"].call_id in page.read_text()
    code, out, err = flow(capsys, call_lab, "--call-id", "lab-again", "--html", str(page))
    assert code == 1 and f"{page} already exists" in err and "--force" in err
    assert call_lab.calls["again"].call_id not in page.read_text()
    page.chmod(0o644)
    code, out, err = flow(capsys, call_lab, "--call-id", "lab-again", "--html", str(page), "--force")
    assert code == 0, err
    assert call_lab.calls["again"].call_id in page.read_text() and page.stat().st_mode & 0o777 == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["busy.html"]  # no temporary file left
    code, out, err = flow(capsys, call_lab, "--call-id", "lab-busy", "--html", str(tmp_path / "no" / "x.html"))
    assert code == 1 and "folder not found" in err


@dataclass
class ReverseLab:
    config: Path
    log: Path
    call_id: str
    esbc_port: int
    reverse_port: int


async def _reverse_captures(pki: Path, root: Path) -> ReverseLab:
    """A reverse route: the core dials siptap, siptap dials the E-SBC; the core places one call."""
    issue_leaf(root, "proxy-both", usage="both", ca_dir=pki)
    mirror = f"""
[mirror]
legs = "both"
[mirror.keylog]
path = "{root}/captures/keys.log"
[mirror.pcap]
directory = "{root}/captures"
"""
    call_id = f"lab-reverse-{uuid.uuid4()}@core.invalid"
    async with trio.open_nursery() as nursery:
        esbc = LabCore(core_context(pki, cert="core", ciphers=IMG2020_CIPHERS))  # the E-SBC as the TLS server
        esbc_port = await nursery.start(functools.partial(esbc.serve, "127.0.0.1", 0))
        _core, core_port = await start_lab_core(nursery, pki)
        config = write_config(root, pki, cores=[core_port], top=mirror)
        config.write_text(config.read_text() + reverse_route(pki, root / "proxy-both", esbc_port))
        siptap = SiptapProcess(config)
        await siptap.start(nursery)
        reverse_port = await siptap.port(leg="core")
        core = await CustomerSession.connect("127.0.0.1", reverse_port, customer_context(pki, cert="proxy-client"))
        assert await place_call(core, call_id, "+4940222", "+4930111") == 200
        await core.aclose()
        await siptap.wait_for("connection_closed")
        assert await siptap.stop() == 0
        nursery.cancel_scope.cancel()
    log = root / "siptap.log"
    log.write_text("".join(json.dumps(e) + "\n" for e in siptap.events))
    return ReverseLab(config, log, call_id, esbc_port, reverse_port)


@pytest.fixture(scope="module")
def reverse_lab(pki: Path, tmp_path_factory: pytest.TempPathFactory) -> ReverseLab:
    return trio.run(_reverse_captures, pki, tmp_path_factory.mktemp("reverse-lab"))


def test_flow_of_a_reverse_route_starts_at_the_core(reverse_lab: ReverseLab, capsys: pytest.CaptureFixture[str]) -> None:
    """The core dialled siptap: its requests come from the right, the E-SBC (the TLS server) answers."""
    expected = [("INVITE", "core", "siptap"), ("INVITE", "siptap", "E-SBC"),
                ("100 Trying", "E-SBC", "siptap"), ("100 Trying", "siptap", "core"),
                ("180 Ringing", "E-SBC", "siptap"), ("180 Ringing", "siptap", "core"),
                ("200 OK", "E-SBC", "siptap"), ("200 OK", "siptap", "core"),
                ("ACK", "core", "siptap"), ("ACK", "siptap", "E-SBC"),
                ("BYE", "core", "siptap"), ("BYE", "siptap", "E-SBC"),
                ("200 OK", "E-SBC", "siptap"), ("200 OK", "siptap", "core")]
    for with_log in (True, False):  # siptap's side from handshake_done's role, else from the key log's order
        code = cli.main(["flow", "--config", str(reverse_lab.config), "--call-id", reverse_lab.call_id,
                         *(["--log", str(reverse_lab.log)] if with_log else [])])
        out, err = capsys.readouterr()
        assert code == 0, err
        assert directed(out) == expected, with_log
        header = out.splitlines()[2]
        assert header.split() == [f"127.0.0.1:{reverse_lab.esbc_port}", f"127.0.0.1:{reverse_lab.reverse_port}",
                                  header.split()[-1]]
        assert "note: leg guessed" not in out
        assert ("key exchange RSA" in out) and "TLSv1.2" in out  # the E-SBC leg: RSA-only suites


def test_cli_help_lists_flow() -> None:
    assert "flow" in cli.build_parser().format_help()


# -- the HTML ladder in a real browser ----------------------------------------------------------------


def chromium(tmp_path: Path, page: Path, *args: str) -> subprocess.CompletedProcess[str]:
    binary = PEERS["chromium"]
    assert binary is not None
    # --no-sandbox: tests may run as root, where chromium's sandbox refuses to start.
    return subprocess.run([binary, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                           f"--user-data-dir={tmp_path / 'chromium-profile'}", *args, page.as_uri()],
                          capture_output=True, text=True, timeout=180, check=True)


def png_pixels(data: bytes) -> tuple[int, int, list[bytes]]:
    """Width, height and the unfiltered rows of an 8-bit RGB/RGBA PNG (what chromium writes)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, width, height, channels = 8, b"", 0, 0, 0
    while pos < len(data):
        (length,), kind = struct.unpack(">I", data[pos:pos + 4]), data[pos + 4:pos + 8]
        chunk = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            width, height, depth, color = struct.unpack(">IIBB", chunk[:10])
            assert depth == 8 and color in (2, 6)
            channels = 3 if color == 2 else 4
        elif kind == b"IDAT":
            idat += chunk
        pos += 12 + length
    raw, stride, rows = zlib.decompress(idat), width * channels, []
    previous = bytearray(stride)
    for y in range(height):
        kind, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for x in range(stride):
            left = line[x - channels] if x >= channels else 0
            up, corner = previous[x], previous[x - channels] if x >= channels else 0
            if kind == 1:
                line[x] = (line[x] + left) & 0xFF
            elif kind == 2:
                line[x] = (line[x] + up) & 0xFF
            elif kind == 3:
                line[x] = (line[x] + (left + up) // 2) & 0xFF
            elif kind == 4:
                p = left + up - corner
                pa, pb, pc = abs(p - left), abs(p - up), abs(p - corner)
                line[x] = (line[x] + (left if pa <= pb and pa <= pc else up if pb <= pc else corner)) & 0xFF
        rows.append(bytes(line))
        previous = line
    return width, height, [b"".join(r[i:i + 3] for i in range(0, stride, channels)) for r in rows]


def red_pixels(rows: list[bytes]) -> int:
    """Pixels of the failed-response red (#c62828, give or take antialiasing)."""
    return sum(1 for row in rows for i in range(0, len(row), 3)
               if row[i] > 170 and row[i + 1] < 80 and row[i + 2] < 80)


@require("chromium")
def test_the_html_ladder_renders_in_a_browser(call_lab: CallLab, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    busy = call_lab.calls["busy"]
    bundle = tmp_path / "bundle"
    assert cli.main(["export", "--config", str(call_lab.config), "--log", str(call_lab.log), "--call-id", "lab-busy",
                     "--out", str(bundle)]) == 0
    capsys.readouterr()
    page = bundle / "ladder.html"
    dom = chromium(tmp_path, page, "--dump-dom").stdout
    # Every message of the call, in order, each with its leg (from its tooltip) and its label.
    groups = re.findall(r'<g class="msg( failed)?" data-row="(\d+)">\s*<title>(.*?)</title>.*?'
                        r'<text class="label"[^>]*>(.*?)</text>', dom, re.S)
    assert [int(g[1]) for g in groups] == list(range(8))
    legs = [re.search(r"\((customer|core) leg", g[2]).group(1) for g in groups]  # type: ignore[union-attr]
    assert list(zip([g[3].removesuffix(" ✗") for g in groups], legs)) == BUSY
    assert [bool(g[0]) for g in groups] == [False] * 4 + [True, True] + [False] * 2
    assert busy.call_id in dom and "CN=customer" in dom and "a=crypto" in dom
    # The screenshot: a PNG of the window's size, and the failed response drawn in red.
    shot = tmp_path / "busy.png"
    chromium(tmp_path, page, f"--screenshot={shot}", "--window-size=1400,900", "--hide-scrollbars")
    width, height, rows = png_pixels(shot.read_bytes())
    assert (width, height) == (1400, 900)
    assert red_pixels(rows) > 200
    # An answered call has nothing in red: the red above is the failure's, not the page's.
    answered = tmp_path / "answered.html"
    assert cli.main(["flow", "--config", str(call_lab.config), "--log", str(call_lab.log), "--call-id",
                     "lab-answered", "--html", str(answered)]) == 0
    capsys.readouterr()
    shot2 = tmp_path / "answered.png"
    chromium(tmp_path, answered, f"--screenshot={shot2}", "--window-size=1400,900", "--hide-scrollbars")
    assert red_pixels(png_pixels(shot2.read_bytes())[2]) == 0
    labels = re.findall(r'<text class="label"[^>]*>(.*?)</text>', chromium(tmp_path, answered, "--dump-dom").stdout)
    assert labels == ["INVITE", "INVITE", "100 Trying", "100 Trying", "180 Ringing", "180 Ringing", "200 OK", "200 OK",
                      "ACK", "ACK", "BYE", "BYE", "200 OK", "200 OK"]

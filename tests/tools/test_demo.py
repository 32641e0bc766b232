"""`siptap demo` (the README's first command) on a copy of the shipped config, on free ports."""

from __future__ import annotations

import socket
import stat
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_demo_on_the_shipped_config(tmp_path: Path) -> None:
    collector = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    collector.bind(("127.0.0.1", 0))
    collector.settimeout(10)
    hep_port = collector.getsockname()[1]
    text = (ROOT / "config.toml").read_text()
    assert '"127.0.0.1:5061"' in text and '"127.0.0.1:5062"' in text  # the shipped contract
    text = text.replace("127.0.0.1:5061", "127.0.0.1:0").replace("127.0.0.1:5062", "127.0.0.1:0")
    text = text.replace("127.0.0.1:9060", f"127.0.0.1:{hep_port}").replace("127.0.0.1:9464", "127.0.0.1:0")
    (tmp_path / "config.toml").write_text(text)
    result = subprocess.run(
        [sys.executable, "-m", "siptap", "demo", "--calls", "2"], cwd=tmp_path,
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "2 calls and 1 OPTIONS through siptap: all completed" in result.stdout
    assert "TLS customer: TLSv1.2" in result.stdout and "kex=RSA" in result.stdout
    captures = tmp_path / "captures"
    for name in ("keys.log", "srtp-keys.log"):
        assert stat.S_IMODE((captures / name).stat().st_mode) == 0o600
    assert list(captures.glob("siptap-*.pcap"))
    assert stat.S_IMODE((tmp_path / "certs" / "proxy-server.key").stat().st_mode) == 0o600
    packet, _ = collector.recvfrom(65535)  # the HEP sink really sent to the collector
    assert packet[:4] == b"HEP3"
    collector.close()


def test_demo_says_why_siptap_refused_the_lab_customer(tmp_path: Path) -> None:
    """The shipped config with OCSP `hard` and the responder down: one clear error line, and
    the reason in siptap's JSON log (not a traceback of the lab customer)."""
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))  # bound, never listening: connection refused
    text = (ROOT / "config.toml").read_text()
    shipped = '# ocsp = "off"                # OCSP for the client certificate'
    assert shipped in text
    text = text.replace(shipped, f'ocsp = "hard"\nocsp_url = "http://127.0.0.1:{dead.getsockname()[1]}/"\n#')
    text = text.replace("127.0.0.1:5061", "127.0.0.1:0").replace("127.0.0.1:5062", "127.0.0.1:0")
    (tmp_path / "config.toml").write_text(text)
    result = subprocess.run([sys.executable, "-m", "siptap", "demo", "--calls", "1"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=120)
    dead.close()
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.startswith("siptap: error: the lab customer's connection ended early ("), result.stderr
    assert "see handshake_failed, no_upstream or upstream_failed in captures/siptap.log" in result.stderr
    assert '"reason": "ocsp_unavailable"' in (tmp_path / "captures" / "siptap.log").read_text()

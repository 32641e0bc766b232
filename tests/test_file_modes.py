"""Every file siptap creates that can hold secrets is 0600, whatever the umask.

Each writer runs under the most permissive umask (0o000), so a mode that merely relied on
the umask would show up as 0644/0666 here:

- the demo (a real `siptap demo` subprocess): its JSON log ``captures/siptap.log`` (master
  secrets, key-log lines, SRTP keys with ``[log] key_material``, the default), the key log,
  the SRTP keys file, the pcap files, the lab PKI's keys; an older, wider log is narrowed;
- the file sinks' two openers (``open_private_append``: key log, SRTP keys;
  ``create_private``: each pcap file), every sink's only way to a file;
- ``siptap export``'s bundle folder, its parts and its ``.tar.gz``;
- ``siptap flow --html``'s page (SIP cleartext, like the captures);
- ``siptap certs init/issue``'s keys.

``siptap probe`` writes no file (its report goes to stdout). ``siptap run`` writes its log
to stdout only (the journal under systemd); its files are the sinks above.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from siptap.mirror.files import create_private, open_private_append
from siptap.tools import pki
from siptap.tools.export.archive import write_bundle
from siptap.tools.export.bundle import BUNDLE_FILES, Bundle
from siptap.tools.ladder.command import write_private

ROOT = Path(__file__).resolve().parent.parent


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def open_umask() -> Iterator[None]:
    previous = os.umask(0)
    try:
        yield
    finally:
        os.umask(previous)


def test_demo_outputs_and_its_log_are_0600_under_umask_0(tmp_path: Path) -> None:
    text = (ROOT / "config.toml").read_text()
    for shipped in ("127.0.0.1:5061", "127.0.0.1:5062", "127.0.0.1:9464"):
        text = text.replace(shipped, "127.0.0.1:0")
    (tmp_path / "config.toml").write_text(text)
    captures = tmp_path / "captures"
    captures.mkdir()
    old_log = captures / "siptap.log"
    old_log.write_text("")
    old_log.chmod(0o644)  # what earlier versions left behind
    result = subprocess.run([sys.executable, "-m", "siptap", "demo", "--calls", "1"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=120, preexec_fn=lambda: os.umask(0))
    assert result.returncode == 0, result.stderr
    log = old_log.read_text()
    assert "CLIENT_RANDOM" in log or "master_secret" in log  # the log really holds secrets
    assert mode(old_log) == 0o600
    written = {p.relative_to(tmp_path): mode(p) for p in captures.iterdir()}
    assert {Path("captures/keys.log"), Path("captures/srtp-keys.log")} <= set(written)
    assert any(p.suffix == ".pcap" for p in written)
    assert set(written.values()) == {0o600}, written
    keys = {p.name: mode(p) for p in (tmp_path / "certs").glob("*.key")}
    assert keys and set(keys.values()) == {0o600}, keys


def test_a_new_demo_log_folder_is_0700(tmp_path: Path, open_umask: None) -> None:
    fd = open_private_append(tmp_path / "captures" / "siptap.log")
    os.close(fd)
    assert (mode(tmp_path / "captures"), mode(tmp_path / "captures" / "siptap.log")) == (0o700, 0o600)


def test_sink_file_openers_are_0600_under_umask_0(tmp_path: Path, open_umask: None) -> None:
    os.close(open_private_append(tmp_path / "keys.log"))
    os.close(create_private(tmp_path / "siptap-1.pcap"))
    wide = tmp_path / "srtp-keys.log"
    wide.write_text("")
    wide.chmod(0o666)
    os.close(open_private_append(wide))
    assert {p.name: mode(p) for p in tmp_path.iterdir()} == dict.fromkeys(
        ("keys.log", "siptap-1.pcap", "srtp-keys.log"), 0o600)


def test_export_bundle_is_private_under_umask_0(tmp_path: Path, open_umask: None) -> None:
    bundle = Bundle(files=dict.fromkeys(BUNDLE_FILES, b"CLIENT_RANDOM 00 11\n"),
                    summary={}, warnings=[])  # type: ignore[typeddict-item]  # the writer never reads the summary
    out = tmp_path / "escalation" / "bundle"
    archive = write_bundle(bundle, out)
    assert mode(out.parent) == 0o700  # created for the bundle
    assert mode(out) == 0o700
    assert {p.name: mode(p) for p in out.iterdir()} == dict.fromkeys(BUNDLE_FILES, 0o600)
    assert mode(archive) == 0o600
    with tarfile.open(archive) as tar:
        members = {m.name: m.mode & 0o777 for m in tar.getmembers()}
    assert members.pop("bundle") == 0o700
    assert set(members.values()) == {0o600}, members


def test_flow_html_is_private_under_umask_0(tmp_path: Path, open_umask: None) -> None:
    page = tmp_path / "ladder.html"
    write_private(page, b"<!DOCTYPE html>")
    assert mode(page) == 0o600
    page.chmod(0o666)  # replaced (--force): the new page is 0600 again, not the old file's mode
    write_private(page, b"<!DOCTYPE html>")
    assert mode(page) == 0o600 and page.read_bytes() == b"<!DOCTYPE html>"


def test_lab_pki_keys_are_0600_under_umask_0(tmp_path: Path, open_umask: None) -> None:
    certs = tmp_path / "certs"
    pki.init_lab_pki(certs)
    pki.issue_leaf(certs, "extra", usage="client")
    keys = {p.name: mode(p) for p in certs.glob("*.key")}
    assert {"ca.key", "proxy-server.key", "extra.key"} <= set(keys)
    assert set(keys.values()) == {0o600}, keys
    assert mode(certs) == 0o755  # certificates are public; the folder is not writable by others

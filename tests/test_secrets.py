"""Secrets handling: private keys stay private.

- Start-up refuses a private key that group or others can read, naming the config key and the
  file, unless that block says ``allow_insecure_key_permissions = true`` (below; the
  world-readable customer key is also in tests/test_check.py::test_check_world_readable_key).
- Outputs holding secrets are created 0600, covered where they are written (not repeated here):
  key log tests/mirror/test_files.py::test_keylog_file_both_legs_0600_parseable and
  ::test_keylog_appends_and_narrows_existing_file, SRTP keys ::test_srtp_file_0600_one_line_per_key,
  pcap tests/mirror/test_pcap.py::test_dialog_reads_as_sip and ::test_rotation_by_size_each_file_standalone,
  end to end tests/integration/test_mirror_e2e.py, the demo's captures tests/tools/test_demo.py, lab
  keys tests/test_certs.py; every writer under umask 0 (the demo's log too) tests/test_file_modes.py.
- The metrics endpoint binds loopback unless told otherwise.
- Logs carry key *material* by design (NSS lines, master secrets) but never a private key: a
  debug-level `siptap run` through a full call, a refused handshake and a reload is searched
  for every lab private key in every encoding it could plausibly leak in.
"""

from __future__ import annotations

import base64
import shutil
import signal
import tomllib
import urllib.request
from pathlib import Path

import pytest
import trio
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from siptap.addresses import Endpoint
from siptap.config import MetricsSettings, parse_config
from siptap.tls.pem import load_private_key
from siptap.tools.lab.core import start_lab_core
from siptap.tools.lab.customer import CustomerSession, customer_context
from tests.relay.harness import SiptapProcess
from tests.relay.harness import write_config as write_run_config
from tests.test_check import assert_refused, siptap, write_config

ROOT = Path(__file__).resolve().parent.parent


# -- key file permissions -----------------------------------------------------------------------


@pytest.mark.parametrize(("section", "original", "mode", "what"), [
    ("customer", "proxy-server", 0o640, "readable"),
    ("core_tls", "proxy-client", 0o604, "readable"),
    ("core_tls", "proxy-client", 0o620, "writable"),
])
def test_insecure_key_refused_unless_explicitly_allowed(pki: Path, tmp_path: Path, section: str, original: str,
                                                        mode: int, what: str) -> None:
    key = tmp_path / f"{original}.key"
    shutil.copy(pki / f"{original}.key", key)
    key.chmod(mode)

    def config_with(extra: str) -> Path:
        path = write_config(tmp_path, pki, **{section: extra})
        path.write_text(path.read_text().replace(f'key = "{pki / original}.key"', f'key = "{key}"'))
        return path

    config = config_with("")
    assert_refused(siptap("check", "--config", str(config), cwd=tmp_path),
                   f"siptap: error: {config}: route[0].{section}.key (route 'lab'): {key}: "
                   f"private key is {what} by group/others (mode {mode:04o}); chmod 600 it")

    config = config_with("allow_insecure_key_permissions = true")
    result = siptap("check", "--config", str(config), cwd=tmp_path)
    assert (result.returncode, result.stderr) == (0, ""), result.stderr
    assert key.stat().st_mode & 0o777 == mode  # allowed, not "fixed" behind the user's back


# -- metrics bind address -----------------------------------------------------------------------


def test_metrics_bind_loopback_by_default(tmp_path: Path, pki: Path) -> None:
    assert MetricsSettings().address == Endpoint("127.0.0.1", 9464)
    assert MetricsSettings().enabled is False
    path = write_config(tmp_path, pki)
    path.write_text("[metrics]\nenabled = true\n" + path.read_text())
    config = parse_config(tomllib.loads(path.read_text()), path)
    assert config.metrics.enabled and config.metrics.address == Endpoint("127.0.0.1", 9464)
    port_only = tmp_path / "port-only.toml"
    port_only.write_text(path.read_text().replace("enabled = true\n", 'enabled = true\naddress = "127.0.0.1"\n'))
    assert parse_config(tomllib.loads(port_only.read_text()), port_only).metrics.address.host == "127.0.0.1"
    shipped = tomllib.loads((ROOT / "config.toml").read_text())
    assert shipped["metrics"]["address"].startswith("127.0.0.1:")


# -- no private key in the logs -----------------------------------------------------------------


class RawSiptap(SiptapProcess):
    """SiptapProcess keeping stdout byte for byte as well."""

    def __init__(self, config: Path) -> None:
        super().__init__(config)
        self.stdout = b""

    async def _read_stdout(self) -> None:
        import json

        assert self.process is not None and self.process.stdout is not None
        buffer = b""
        async for chunk in self.process.stdout:
            self.stdout += chunk
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                if line.strip():
                    self.events.append(json.loads(line))
            self._changed.set()
            self._changed = trio.Event()
        self._changed.set()


def key_fingerprints(path: Path) -> dict[str, str]:
    """Ways a private key could show up in text: PEM body lines, DER as hex, its secret numbers."""
    key = load_private_key(path)
    der = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    traditional = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.TraditionalOpenSSL,
                                    serialization.NoEncryption())
    marks = {}
    for label, blob in (("pkcs8", der), ("traditional", traditional)):
        b64 = base64.b64encode(blob).decode()
        for i in range(0, len(b64) - 64, 64):  # every PEM line (64 chars) of the body
            marks[f"{label} base64 line {i // 64}"] = b64[i:i + 64]
        marks[f"{label} DER hex"] = blob.hex()[64:192]
    if isinstance(key, rsa.RSAPrivateKey):
        numbers = key.private_numbers()
        for name in ("d", "p", "q"):
            value = getattr(numbers, name)
            marks[f"{name} hex"] = f"{value:x}"[:48]
            marks[f"{name} decimal"] = str(value)[:48]
    return marks


async def test_no_private_key_in_logs_through_call_refusal_and_reload(pki: Path, tmp_path: Path) -> None:
    log = "sip_payloads = true\nkey_material = true"  # the most the log can hold (level is debug)
    top = '[metrics]\nenabled = true\naddress = "127.0.0.1:0"\n'
    async with trio.open_nursery() as nursery:
        _, core_port = await start_lab_core(nursery, pki)
        siptap = RawSiptap(write_run_config(tmp_path, pki, cores=[core_port], log=log, top=top))
        await siptap.start(nursery)
        port = await siptap.port()
        metrics_port = (await siptap.wait_for("metrics_up"))[0]["port"]
        session = await CustomerSession.connect("127.0.0.1", port, customer_context(pki))
        assert await session.call() == ["100", "180", "200", "200"]
        await session.aclose()
        with pytest.raises((trio.BrokenResourceError, OSError)):
            refused = await CustomerSession.connect("127.0.0.1", port, customer_context(pki, cert="foreign"))
            await refused.options()
        await siptap.wait_for("handshake_failed")
        siptap.signal(signal.SIGHUP)
        await siptap.wait_for("reloaded")
        metrics = await trio.to_thread.run_sync(
            lambda: urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read())
        assert await siptap.stop() == 0
        nursery.cancel_scope.cancel()

    # The run did log secrets of the kind it should (so the search below searched real output).
    done = siptap.find("handshake_done", leg="customer")[0]
    assert done["master_secret"] and done["keylog"], done
    assert siptap.find("sip") and siptap.find("handshake_failed")[0]["reason"] == "unknown_ca"

    text = siptap.stdout.decode(errors="replace") + siptap.stderr.decode(errors="replace") + metrics.decode()
    assert "PRIVATE KEY" not in text
    assert "BEGIN RSA" not in text and "BEGIN EC" not in text
    for name in ("proxy-server", "proxy-client", "customer", "core", "ca", "foreign"):
        for what, mark in key_fingerprints(pki / f"{name}.key").items():
            assert mark not in text, f"{name}.key leaked ({what})"

"""The README's "Driving calls with SIPp through stunnel" recipe, run as written.

The stunnel configuration and the two command lines are taken from the README text itself; the
test only moves the fixed lab ports to free ones (stunnel's 5070, siptap's 5061), points
``certs/`` at the session's lab PKI, and adds SIPp flags for running unattended (no keyboard, a
deadline, statistics to a file). siptap is `siptap run` toward the lab core. Oracles: SIPp's exit
code and statistics, and siptap's log (one customer connection, RSA key exchange, every call's
INVITE relayed).
"""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

import pytest
import trio

from siptap.tools.lab.core import start_lab_core
from tests.integration import peers
from tests.integration.capture import PEERS, require
from tests.relay.harness import SiptapProcess, write_config

README = Path(__file__).resolve().parents[2] / "README.md"

pytestmark = pytest.mark.peers


def recipe() -> tuple[str, list[str]]:
    """(the stunnel configuration, the shell lines) of the README's SIPp section."""
    text = README.read_text()
    section = text.split("\n### Driving calls with SIPp through stunnel\n", 1)[1].split("\n## ", 1)[0]
    (conf,) = re.findall(r"```ini\n(.*?)```", section, re.S)
    (shell,) = re.findall(r"```sh\n(.*?)```", section, re.S)
    return conf, [line.split("#", 1)[0].strip() for line in shell.splitlines() if line.strip()]


@require("stunnel4", "sipp")
async def test_readme_sipp_through_stunnel_recipe(pki: Path, tmp_path: Path) -> None:
    conf, (stunnel_line, sipp_line) = recipe()
    assert stunnel_line == "stunnel sipp-stunnel.conf &"
    accept = peers.free_port()
    async with trio.open_nursery() as nursery:
        core, core_port = await start_lab_core(nursery, pki)
        siptap = SiptapProcess(write_config(tmp_path, pki, cores=[core_port]))
        await siptap.start(nursery)
        siptap_port = await siptap.port()
        assert "accept = 127.0.0.1:5070" in conf and "connect = 127.0.0.1:5061" in conf
        (tmp_path / "sipp-stunnel.conf").write_text(
            conf.replace("127.0.0.1:5070", f"127.0.0.1:{accept}").replace("127.0.0.1:5061", f"127.0.0.1:{siptap_port}"))
        (tmp_path / "certs").symlink_to(pki)  # the recipe runs "from the folder holding certs/"
        stunnel = [PEERS["stunnel4"] or "stunnel", "sipp-stunnel.conf"]
        async with peers.running("stunnel", stunnel, tmp_path, [accept]):
            argv = shlex.split(sipp_line.replace("127.0.0.1:5070", f"127.0.0.1:{accept}"))
            assert argv[0] == "sipp"
            argv[0] = PEERS["sipp"] or "sipp"
            argv += ["-nostdin", "-timeout", "30s", "-timeout_error", "-trace_stat", "-stf", "stats.csv", "-fd", "1"]
            with open(tmp_path / "sipp.log", "wb") as out, trio.fail_after(60):
                result = await trio.run_process(argv, cwd=str(tmp_path), stdin=subprocess.DEVNULL, stdout=out,
                                                stderr=subprocess.STDOUT, check=False)
        await siptap.wait_for("connection_closed")
        assert await siptap.stop() == 0
        nursery.cancel_scope.cancel()
    stats = peers.read_sipp_stats(tmp_path / "stats.csv")
    assert result.returncode == 0, ((tmp_path / "sipp.log").read_text(errors="replace")[-2000:], stats)
    calls = int(sipp_line.split("-m ", 1)[1].split()[0])
    assert int(stats["SuccessfulCall(C)"]) == calls and int(stats["FailedCall(C)"]) == 0, stats
    (customer,) = siptap.find("handshake_done", leg="customer")  # -t t1: one TLS connection
    assert (customer["version"], customer["key_exchange"]) == ("TLSv1.2", "RSA")
    assert len(siptap.find("sip", method="INVITE")) == calls
    assert len([m for m in core.received if m.startswith(b"INVITE ")]) == calls

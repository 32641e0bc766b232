"""`siptap run --log-format console` as a person watches it: a real process (supervisor, relay
worker, mirror process), one call through it, its stdout read as the terminal shows it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import trio

from siptap.tools.lab.core import start_lab_core
from siptap.tools.lab.customer import CustomerSession, customer_context
from tests.relay.harness import write_config


async def test_console_lines_of_a_real_call(pki: Path, tmp_path: Path) -> None:
    out = bytearray()
    async with trio.open_nursery() as nursery:
        _core, core_port = await start_lab_core(nursery, pki)
        config = write_config(tmp_path, pki, cores=[core_port], log="key_material = true")
        process = await trio.lowlevel.open_process(
            [sys.executable, "-m", "siptap", "run", "--config", str(config), "--log-format", "console"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=dict(os.environ, PYTHONUNBUFFERED="1"))
        assert process.stdout is not None

        async def lines_until(fragment: bytes) -> None:
            with trio.fail_after(20):
                while fragment not in out:
                    chunk = await process.stdout.receive_some()  # type: ignore[union-attr]
                    assert chunk, bytes(out).decode(errors="replace")
                    out.extend(chunk)

        try:
            await lines_until(b" listener_up ")
            line = next(line for line in out.decode().splitlines() if " listener_up " in line)
            port = int(line.split(" port=")[1].split()[0])
            session = await CustomerSession.connect("127.0.0.1", port, customer_context(pki))
            codes = await session.call()
            await session.aclose()
            await lines_until(b" connection_observed ")
        finally:
            process.terminate()
            with trio.fail_after(15):
                await process.wait()
        nursery.cancel_scope.cancel()
    assert codes == ["100", "180", "200", "200"]
    lines = out.decode().splitlines()
    sip = [line.split() for line in lines if " sip " in line]
    # time, level, event, what the message is, its Call-ID: in that order on every sip line
    assert [words[1:4] for words in sip[:2]] == [["info", "sip", "INVITE"], ["info", "sip", "100"]], sip[:2]
    # the Call-ID right after the method, or the status code and its reason phrase
    assert all(words[4 if words[3].isalpha() else 5].startswith("call_id=") for words in sip), sip
    done = [line for line in lines if " handshake_done " in line]
    assert len(done) == 2 and all(len(line) < 500 for line in done), done
    customer = next(line for line in done if " leg=customer " in line)
    assert "key_exchange=RSA cert='O=siptap lab,CN=customer'" in customer and " expires=" in customer, customer
    assert lines[lines.index(customer) + 1].startswith("    CLIENT_RANDOM ")
    assert not [line for line in lines if line.startswith("{")]  # no JSON line slipped through

"""`siptap run` as a real process for integration tests, with its JSON log as the oracle.

The process is started on a config written for the test (free ports: port 0), and the
harness follows its stdout: tests wait for log events (e.g. ``listener_up`` to learn the
port) instead of sleeping.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import trio


def write_config(tmp: Path, pki: Path, *, cores: list[int], extra_route: str = "", top: str = "",
                 log: str = "", listen: str = '["127.0.0.1:0"]', customer: str = "", core_tls: str = "",
                 limits: str = "") -> Path:
    core_entries = "\n".join(
        f'[[route.core]]\naddress = "127.0.0.1:{port}"\nserver_name = "localhost"\n' for port in cores
    )
    text = f"""
drain_timeout = 5.0
{top}
[log]
format = "json"
level = "debug"
{log}

[[route]]
name = "test"
listen = {listen}
{extra_route}

[route.customer]
cert = "{pki}/proxy-server.pem"
key = "{pki}/proxy-server.key"
client_ca = "{pki}/ca.pem"
{customer}

{core_entries}

[route.core_tls]
cert = "{pki}/proxy-client.pem"
key = "{pki}/proxy-client.key"
ca = "{pki}/ca.pem"
{core_tls}

[route.limits]
handshake_timeout = 5.0
connect_timeout = 2.0
{limits}
"""
    path = tmp / "siptap.toml"
    path.write_text(text)
    return path


def reverse_route(pki: Path, client_cert: Path, esbc_port: int) -> str:
    """A ``[route.reverse]`` block to append to :func:`write_config`'s route: the core dials siptap's
    reverse listener (any key exchange, up to TLS 1.3), siptap dials the E-SBC on ``esbc_port``
    with ``client_cert`` (``.pem``/``.key``, serverAuth and clientAuth) and RSA-only suites."""
    return f"""
[route.reverse]
listen = ["127.0.0.1:0"]
[route.reverse.core_side]
cert = "{pki}/proxy-server.pem"
key = "{pki}/proxy-server.key"
client_ca = "{pki}/ca.pem"
key_exchange = "any"
max_version = "TLSv1.3"
[[route.reverse.customer]]
address = "127.0.0.1:{esbc_port}"
server_name = "localhost"
[route.reverse.customer_tls]
cert = "{client_cert.with_suffix('.pem')}"
key = "{client_cert.with_suffix('.key')}"
ca = "{pki}/ca.pem"
"""


class SiptapProcess:
    def __init__(self, config: Path) -> None:
        self.config = config
        self.events: list[dict[str, Any]] = []
        self.lines: list[bytes] = []  # stdout as written, for tools that read the log itself (jq)
        self.stderr = b""
        self._changed = trio.Event()
        self.process: trio.Process | None = None

    async def start(self, nursery: trio.Nursery) -> None:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.process = await trio.lowlevel.open_process(
            [sys.executable, "-m", "siptap", "run", "--config", str(self.config)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
        )
        nursery.start_soon(self._read_stdout)
        nursery.start_soon(self._read_stderr)
        nursery.start_soon(self._kill_when_cancelled)

    async def _kill_when_cancelled(self) -> None:
        """A failing test cancels the nursery: never leave a siptap process behind."""
        try:
            await trio.sleep_forever()
        finally:
            if self.process is not None and self.process.returncode is None:
                self.process.kill()

    async def _read_stdout(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        buffer = b""
        async for chunk in self.process.stdout:
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                if line.strip():
                    self.lines.append(line)
                    self.events.append(json.loads(line))
            self._changed.set()
            self._changed = trio.Event()
        self._changed.set()

    async def _read_stderr(self) -> None:
        assert self.process is not None and self.process.stderr is not None
        async for chunk in self.process.stderr:
            self.stderr += chunk

    def find(self, event: str, **fields: Any) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("event") == event and all(e.get(k) == v for k, v in fields.items())]

    async def wait_for(self, event: str, count: int = 1, timeout: float = 20.0, **fields: Any) -> list[dict[str, Any]]:
        with trio.move_on_after(timeout):
            while len(found := self.find(event, **fields)) < count:
                if self.process is not None and self.process.returncode is not None:
                    break
                await self._changed.wait()
            else:
                return found
            found = self.find(event, **fields)
            if len(found) >= count:
                return found
        raise AssertionError(
            f"no {count}x {event} {fields} in siptap's log; stderr: {self.stderr.decode(errors='replace')[-2000:]}\n"
            f"last events: {[e.get('event') for e in self.events[-20:]]}"
        )

    async def port(self, leg: str = "customer") -> int:
        return int((await self.wait_for("listener_up", leg=leg))[0]["port"])

    def signal(self, signum: int) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    async def stop(self) -> int:
        assert self.process is not None
        if self.process.returncode is None and not self.find("stopped"):
            self.process.send_signal(signal.SIGTERM)
        with trio.fail_after(15):
            code = await self.process.wait()
        await self.wait_for("stopped") if code == 0 else None
        return code

"""The supervisor with a mirror process (issue 16): one worker plus the mirror, real
processes. The mirror starts first, every worker is told its channel, a killed mirror is
restarted, and the mirror stops last."""

from __future__ import annotations

import json
import os
import signal
import stat
from collections.abc import Callable
from pathlib import Path

import structlog.testing
import trio

from siptap.config import load_config
from siptap.supervisor import MIRROR_SOCKET, Supervisor
from tests.relay.harness import write_config
from tests.relay.test_workers import free_port


async def until(condition: Callable[[], bool]) -> None:
    """Poll a state the supervisor's own tasks change, with a deadline."""
    with trio.fail_after(30):
        while not condition():
            await trio.sleep(0.02)


async def test_one_worker_and_the_mirror_restart_and_stop_order(pki: Path, tmp_path: Path) -> None:
    config = write_config(tmp_path, pki, cores=[9], top="workers = 1", listen=f'["127.0.0.1:{free_port()}"]')
    lines: list[str] = []
    supervisor = Supervisor(load_config(config), 1, lines.append, mirror=True, restart_initial=0.01,
                            restart_max=0.05)
    with structlog.testing.capture_logs() as events:
        async with trio.open_nursery() as nursery:
            done = trio.Event()
            codes: list[int] = []

            async def run() -> None:
                try:
                    codes.append(await supervisor.run())
                finally:
                    done.set()

            nursery.start_soon(run)
            with trio.fail_after(60):
                await supervisor._all_ready.wait()
            mirror, worker = supervisor.mirror, supervisor.slots[0]
            assert mirror is not None and mirror.process is not None and worker.process is not None
            runtime = supervisor.runtime_dir
            assert runtime is not None and stat.S_IMODE(runtime.stat().st_mode) == 0o700
            channel = runtime / MIRROR_SOCKET
            assert stat.S_ISSOCK(channel.stat().st_mode)
            argv = Path(f"/proc/{worker.process.pid}/cmdline").read_bytes().split(b"\0")
            assert argv[argv.index(b"--mirror-channel") + 1] == str(channel).encode()
            names = [e["event"] for e in events]
            assert names.index("mirror_started") < names.index("worker_started")

            first = mirror.process.pid
            os.kill(first, signal.SIGKILL)
            await until(lambda: any(e["event"] == "mirror_restarted" for e in events))
            died = next(e for e in events if e["event"] == "mirror_died")
            assert died["pid"] == first and died["status"] == "killed by SIGKILL" and died["log_level"] == "error"
            assert mirror.process.pid != first and supervisor.mirror_restarts == 1
            assert worker.process.returncode is None  # the relay never noticed
            await until(lambda: channel.exists())

            supervisor._request_stop()
            with trio.fail_after(30):
                await done.wait()
    assert codes == [0]
    names = [e["event"] for e in events]
    # Stopped last: after the worker had exited.
    assert names.index("worker_exited") < names.index("mirror_exited")
    assert next(e for e in events if e["event"] == "mirror_exited")["status"] == "exit status 0"
    assert not runtime.exists()
    # The mirror's own lines came through the supervisor's one writer, whole.
    mirror_lines = [json.loads(line) for text in lines for line in text.splitlines() if '"process": "mirror"' in line]
    assert [e["event"] for e in mirror_lines].count("mirror_ready") == 2
    assert [e["event"] for e in mirror_lines][-1] == "mirror_stopped"


async def test_a_mirror_that_cannot_start_fails_the_run_before_any_worker(pki: Path, tmp_path: Path) -> None:
    config = write_config(tmp_path, pki, cores=[9], top="workers = 1", listen=f'["127.0.0.1:{free_port()}"]')
    loaded = load_config(config)
    config.write_text("not toml [")  # the mirror re-reads the file: it fails at start-up
    supervisor = Supervisor(loaded, 1, lambda line: None, mirror=True)
    with structlog.testing.capture_logs() as events:
        try:
            with trio.fail_after(60):
                await supervisor.run()
            raise AssertionError("the run should fail")
        except Exception as exc:
            assert "the mirror process failed to start (exit status 1)" in str(exc)
    names = [e["event"] for e in events]
    assert "mirror_start_failed" in names and "worker_started" not in names

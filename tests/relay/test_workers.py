"""`workers = 2`: a supervisor and two worker processes sharing the listen port (SO_REUSEPORT),
against real sockets on loopback. The JSON log on the supervisor's stdout is the oracle, as
in the other relay tests: every line must parse (the harness's reader fails on the first one
that does not), events carry `worker`."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import uuid
from collections import Counter
from pathlib import Path

import pytest
import trio

from siptap.allocator import MMAP_THRESHOLD
from siptap.config import load_config
from siptap.supervisor import Supervisor
from siptap.tools.export import capture_files
from siptap.tools.lab.core import start_lab_core
from siptap.tools.lab.customer import CustomerSession, _branch, customer_context
from siptap.tools.lab.sip import request
from tests.relay.harness import SiptapProcess, write_config
from tests.relay.test_metrics import assert_relayed_series, scrape, value

KEYLOG_LINE = re.compile(
    r"^(# conn=[0-9a-f]{6}-\d+ leg=(customer|core) route=test client=\S+ server=\S+ \S+ \S+"
    r"|(CLIENT_RANDOM|RSA|CLIENT_HANDSHAKE_TRAFFIC_SECRET|SERVER_HANDSHAKE_TRAFFIC_SECRET|CLIENT_TRAFFIC_SECRET_0"
    r"|SERVER_TRAFFIC_SECRET_0|EXPORTER_SECRET) [0-9a-f]+ [0-9a-f]+)$")


def free_port() -> int:
    """A port for the config: SO_REUSEPORT needs every worker on the same, fixed port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def workers_config(tmp_path: Path, pki: Path, core_port: int, port: int, *, metrics: bool = True,
                   log: str = "") -> Path:
    captures = tmp_path / "captures"
    top = f"""workers = 2
[mirror]
legs = "both"
[mirror.keylog]
path = "{captures}/keys.log"
[mirror.pcap]
directory = "{captures}"
"""
    if metrics:
        top += '[metrics]\nenabled = true\naddress = "127.0.0.1:0"\n'
    return write_config(tmp_path, pki, cores=[core_port], top=top, listen=f'["127.0.0.1:{port}"]', log=log)


async def connect_until_both_workers(siptap: SiptapProcess, pki: Path, port: int, *, per_round: int = 6,
                                     rounds: int = 10, min_rounds: int = 1) -> list[str]:
    """Calls on fresh connections, ``per_round`` at once, until both workers took some
    (the kernel hashes each connection's 4-tuple). Returns the Call-IDs."""
    call_ids: list[str] = []

    async def one() -> None:
        session = await CustomerSession.connect("127.0.0.1", port, customer_context(pki))
        assert await session.call() == ["100", "180", "200", "200"]
        call_ids.append(session.received[0].split(b"Call-ID: ")[1].split(b"\r\n")[0].decode())
        await session.aclose()

    for done in range(1, rounds + 1):
        async with trio.open_nursery() as nursery:
            for _ in range(per_round):
                nursery.start_soon(one)
        await siptap.wait_for("connection_closed", count=len(call_ids))
        if done >= min_rounds and {e.get("worker") for e in siptap.find("connection_accepted")} == {1, 2}:
            break
    return call_ids


async def test_two_workers_share_the_port_and_their_outputs(pki: Path, tmp_path: Path) -> None:
    port = free_port()
    async with trio.open_nursery() as nursery:
        core, core_port = await start_lab_core(nursery, pki)
        # sip_payloads: log lines longer than PIPE_BUF, which a shared pipe could tear apart.
        config = workers_config(tmp_path, pki, core_port, port, log="sip_payloads = true")
        siptap = SiptapProcess(config)
        await siptap.start(nursery)
        await siptap.wait_for("workers_ready")
        # A worker's log lines may arrive after the supervisor saw it ready (its writer batches).
        listeners = await siptap.wait_for("listener_up", count=2)
        assert sorted(e["worker"] for e in listeners) == [1, 2] and {e["port"] for e in listeners} == {port}
        starting = siptap.find("supervisor_starting")[0]
        assert starting.get("worker") is None
        # glibc here: the supervisor's forwarded log buffers come from mmap (siptap/allocator.py).
        assert starting["mmap_threshold"] == MMAP_THRESHOLD
        metrics_port = int(siptap.find("metrics_up")[0]["port"])

        # Many connections, 6 at a time: both workers write the key log and the pcap files at once.
        call_ids = await connect_until_both_workers(siptap, pki, port, min_rounds=3)
        accepted = Counter(e["worker"] for e in siptap.find("connection_accepted"))
        assert set(accepted) == {1, 2}, accepted
        print("connections per worker:", dict(accepted))
        # Log lines of ~9 kB (more than PIPE_BUF) from both workers. Every stdout line must be
        # JSON: the harness's reader json.loads each one and fails the test on the first that
        # is not (a torn or interleaved line).
        big = 0
        # The sip lines come from the mirror process (one writer for every worker's traffic);
        # the worker that relayed a connection is the one that accepted it.
        def workers_of_big_lines() -> set[int]:
            worker_of = {e["conn"]: e["worker"] for e in siptap.find("connection_accepted")}
            return {worker_of[e["conn"]] for e in siptap.find("sip") if len(str(e.get("payload", ""))) > 9000}

        while workers_of_big_lines() != {1, 2}:
            assert big < 40
            session = await CustomerSession.connect("127.0.0.1", port, customer_context(pki))
            call_id = f"{uuid.uuid4()}@customer.invalid"
            await session.send(request("MESSAGE", call_id=call_id, cseq=1, from_tag="big", branch=_branch(),
                                       body=b"x" * 9000, content_type="text/plain"))
            assert (await session.final_response()).status_code == 200
            await session.aclose()
            big += 1
            await siptap.wait_for("connection_closed", count=len(call_ids) + big)
        connections = len(call_ids) + big

        # One scrape sees both workers: the counters are the sums of their work.
        samples = await scrape(metrics_port)
        assert value(samples, "siptap_connections_total", route="test", leg="customer") == connections
        assert value(samples, "siptap_handshakes_total", route="test", leg="core", result="ok") \
            == connections
        assert value(samples, "siptap_connections_active", route="test", leg="customer") == 0
        assert value(samples, "siptap_workers") == 2
        # Each worker's relay tallies, copied into its file at each connection's close: the
        # sums of what both relayed, exactly as the connection_closed lines count it.
        assert_relayed_series(samples, siptap.find("connection_closed"))
        # The mirror process's counters reach the shared files once a second.
        with trio.fail_after(10):
            while value(samples, "siptap_mirror_sent_total", sink="keylog") < 2 * connections or value(
                    samples, "siptap_sip_messages_total", route="test", direction="customer->core",
                    kind="INVITE") < len(call_ids):
                await trio.sleep(0.2)
                samples = await scrape(metrics_port)
        assert value(samples, "siptap_mirror_sent_total", sink="keylog") == 2 * connections
        assert value(samples, "siptap_sip_messages_total", route="test", direction="customer->core",
                     kind="INVITE") == len(call_ids)

        siptap.signal(signal.SIGHUP)
        reloaded = await siptap.wait_for("reloaded", count=2)
        assert sorted(e["worker"] for e in reloaded) == [1, 2]

        siptap.signal(signal.SIGTERM)
        with trio.fail_after(20):
            code = await siptap.process.wait()  # type: ignore[union-attr]
        assert code == 0, siptap.stderr
        stopped = siptap.find("stopped")
        assert sorted(e["worker"] for e in stopped) == [1, 2]
        assert siptap.find("supervisor_stopped")
        nursery.cancel_scope.cancel()

    # Mirror metrics are synchronised from each worker at its exit at the latest: the key log
    # saw one handshake per leg per connection, and every line of it parses.
    lines = (tmp_path / "captures" / "keys.log").read_text().splitlines()
    assert lines and all(KEYLOG_LINE.match(line) for line in lines), [line for line in lines if not KEYLOG_LINE.match(line)][:3]
    comments = [line for line in lines if line.startswith("#")]
    assert len(comments) == 2 * connections
    conns = {line.split()[1] for line in comments}
    assert len({c.split("-")[0] for c in conns}) == 2  # two process tags: ids are unique per worker

    # One pcap series for both workers (the mirror process writes it), which tshark reads
    # cleanly and which holds every INVITE either worker relayed; export finds calls of both.
    files = capture_files(tmp_path / "captures", "siptap")
    assert files and not any(re.search(r"-w\d-", f.name) for f in files), files
    invites: list[str] = []
    for file in files:
        read = subprocess.run(["tshark", "-r", str(file), "-Y", "sip.Method == \"INVITE\"", "-T", "fields",
                               "-e", "sip.Call-ID"], capture_output=True, text=True, timeout=60)
        assert read.returncode == 0 and "appears to be damaged" not in read.stderr, read.stderr
        invites += read.stdout.split()
    assert set(call_ids) <= set(invites)
    worker_of = {e["conn"]: e["worker"] for e in siptap.find("connection_accepted")}
    by_worker: dict[int, str] = {}
    for event in siptap.find("sip"):
        if event.get("method") == "INVITE" and event.get("call_id") in call_ids:
            by_worker.setdefault(worker_of[event["conn"]], event["call_id"])
    assert set(by_worker) == {1, 2}
    out = tmp_path / "bundle"
    result = subprocess.run([sys.executable, "-m", "siptap", "export", "--config", str(config),
                             *(a for c in by_worker.values() for a in ("--call-id", c)), "--with-keys", "--out", str(out)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    summary = (out / "summary.json").read_text()
    for call_id in by_worker.values():
        assert call_id in summary
    keys = (out / "keys.log").read_text()
    assert keys.count("# conn=") == 4  # both legs of both calls' connections


async def test_a_killed_worker_is_restarted_and_the_supervisor_survives(pki: Path, tmp_path: Path) -> None:
    port = free_port()
    async with trio.open_nursery() as nursery:
        core, core_port = await start_lab_core(nursery, pki)
        siptap = SiptapProcess(workers_config(tmp_path, pki, core_port, port, metrics=False))
        await siptap.start(nursery)
        ready = await siptap.wait_for("workers_ready")
        victim = ready[0]["pids"][0]
        os.kill(victim, signal.SIGKILL)
        died = await siptap.wait_for("worker_died")
        assert died[0]["worker"] == 1 and died[0]["pid"] == victim and died[0]["status"] == "killed by SIGKILL"
        assert died[0]["level"] == "error"
        await siptap.wait_for("worker_restarting", worker=1)
        again = await siptap.wait_for("worker_ready", count=3)
        assert again[-1]["worker"] == 1 and again[-1]["pid"] != victim
        await connect_until_both_workers(siptap, pki, port)
        assert {e.get("worker") for e in siptap.find("connection_accepted")} == {1, 2}
        siptap.signal(signal.SIGTERM)
        with trio.fail_after(20):
            assert await siptap.process.wait() == 0, siptap.stderr  # type: ignore[union-attr]
        nursery.cancel_scope.cancel()


async def test_second_signal_aborts_the_drain_of_every_worker(pki: Path, tmp_path: Path) -> None:
    port = free_port()
    async with trio.open_nursery() as nursery:
        core, core_port = await start_lab_core(nursery, pki)
        config = workers_config(tmp_path, pki, core_port, port, metrics=False)
        config.write_text(config.read_text().replace("drain_timeout = 5.0", "drain_timeout = 60.0"))
        siptap = SiptapProcess(config)
        await siptap.start(nursery)
        await siptap.wait_for("workers_ready")
        sessions = []
        while {e.get("worker") for e in siptap.find("connection_accepted")} != {1, 2}:
            session = await CustomerSession.connect("127.0.0.1", port, customer_context(pki))
            assert (await session.options()).status_code == 200
            sessions.append(session)
            assert len(sessions) < 40
        siptap.signal(signal.SIGTERM)
        draining = await siptap.wait_for("draining", count=2)
        assert sum(e["connections"] for e in draining) == len(sessions)
        siptap.signal(signal.SIGTERM)
        aborted = await siptap.wait_for("drain_aborted", count=3)  # the supervisor's and each worker's
        assert sorted(e.get("worker", 0) for e in aborted) == [0, 1, 2]
        with trio.fail_after(20):
            assert await siptap.process.wait() == 0, siptap.stderr  # type: ignore[union-attr]
        for session in sessions:
            await session.aclose()
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("workers", [1, 2])
async def test_a_port_in_use_fails_the_run_with_one_clear_line(pki: Path, tmp_path: Path, workers: int) -> None:
    # Something else (no SO_REUSEPORT) holds the port: no worker can bind it.
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        config = workers_config(tmp_path, pki, 9, port, metrics=False)
        config.write_text(config.read_text().replace("workers = 2", f"workers = {workers}"))
        with trio.fail_after(30):
            result = await trio.run_process([sys.executable, "-m", "siptap", "run", "--config", str(config)],
                                            capture_stdout=True, capture_stderr=True, check=False)
    assert result.returncode == 1
    stderr = result.stderr.decode()
    assert "Traceback" not in stderr and "unexpected" not in stderr, stderr
    listen_error = f"route 'test': cannot listen on 127.0.0.1:{port}: Address already in use"
    if workers == 1:
        assert stderr.splitlines()[0] == f"siptap: error: {listen_error}", stderr
        return
    # Each worker's own lines, then the supervisor's summary.
    assert f"siptap: error: {listen_error}" in stderr.splitlines()
    assert re.search(rf"siptap: error: worker \d of 2 failed to start \(exit status 1\): {re.escape(listen_error)}$",
                     stderr.strip()), stderr
    assert '"worker_start_failed"' in result.stdout.decode()


async def test_workers_stop_when_the_supervisor_is_killed(pki: Path, tmp_path: Path) -> None:
    """SIGKILL leaves no time to forward anything: the workers see their control socket
    close, drain and exit instead of serving on unsupervised."""
    port = free_port()
    async with trio.open_nursery() as nursery:
        core, core_port = await start_lab_core(nursery, pki)
        siptap = SiptapProcess(workers_config(tmp_path, pki, core_port, port, metrics=False))
        await siptap.start(nursery)
        pids = (await siptap.wait_for("workers_ready"))[0]["pids"]
        siptap.process.kill()  # type: ignore[union-attr]
        with trio.fail_after(20):
            while any(_alive(pid) for pid in pids):
                await trio.sleep(0.05)
        nursery.cancel_scope.cancel()


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


def test_check_and_run_refuse_a_bad_workers_value(pki: Path, tmp_path: Path) -> None:
    config = workers_config(tmp_path, pki, 9, 5061, metrics=False)
    config.write_text(config.read_text().replace("workers = 2", "workers = 0"))
    for command in ("check", "run"):
        result = subprocess.run([sys.executable, "-m", "siptap", command, "--config", str(config)],
                                capture_output=True, text=True, timeout=30)
        assert result.returncode == 1
        assert result.stderr.splitlines() == [f"siptap: error: {config}: workers: must be between 1 and 256 "
                                              f"(or \"auto\"), got 0"], result.stderr
    config.write_text(config.read_text().replace("workers = 0", "workers = 2"))
    result = subprocess.run([sys.executable, "-m", "siptap", "check", "--config", str(config)],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0 and result.stdout.endswith("; 2 workers\n"), result


async def test_a_worker_that_keeps_failing_at_start_up_is_given_up(pki: Path, tmp_path: Path) -> None:
    """In-process supervisor with short back-offs: worker 1 is killed, and its restarts fail
    (its certificate is gone); it is abandoned loudly, worker 2 keeps serving."""
    import structlog.testing

    own = tmp_path / "own"
    own.mkdir()
    (own / "proxy-server.pem").write_bytes((pki / "proxy-server.pem").read_bytes())
    port = free_port()
    config_path = workers_config(tmp_path, pki, 9, port, metrics=False)
    config_path.write_text(config_path.read_text().replace(f"{pki}/proxy-server.pem", f"{own}/proxy-server.pem"))
    lines: list[str] = []
    supervisor = Supervisor(load_config(config_path), 2, lines.append, restart_initial=0.01, restart_max=0.05,
                            max_start_failures=3)
    with structlog.testing.capture_logs() as events:
        async with trio.open_nursery() as nursery:
            done = trio.Event()

            async def run() -> None:
                try:
                    await supervisor.run()
                finally:
                    done.set()

            nursery.start_soon(run)
            with trio.fail_after(30):
                await supervisor._all_ready.wait()
            (own / "proxy-server.pem").unlink()
            first = supervisor.slots[0].process
            assert first is not None
            first.kill()
            with trio.fail_after(60):
                while not supervisor.slots[0].gave_up:
                    await trio.sleep(0.05)
            assert supervisor.slots[1].process is not None and supervisor.slots[1].process.returncode is None
            supervisor._request_stop()
            with trio.fail_after(20):
                await done.wait()
    names = [e["event"] for e in events]
    assert names.count("worker_start_failed") == 3
    gave_up = [e for e in events if e["event"] == "worker_gave_up"]
    assert gave_up and gave_up[0]["worker"] == 1 and gave_up[0]["workers_left"] == [2]
    assert gave_up[0]["log_level"] == "error"
    assert any("route[0].customer.cert" in (e.get("stderr") or "") for e in events
               if e["event"] == "worker_start_failed")

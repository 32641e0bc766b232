"""`siptap run` with ``workers`` > 1: a small supervisor over N worker processes.

Theory of operation. The supervisor binds no SIP port. Each worker is a fresh interpreter
running ``python -m siptap run --config FILE --worker I/N --control-fd FD``: the very code path
of a single-process ``siptap run`` (one trio loop, one :class:`siptap.app.App`), except that
its listeners set SO_REUSEPORT, so all workers bind the same addresses and the kernel
spreads new connections over them. A re-exec rather than ``multiprocessing``: nothing to
pickle, no resource-tracker process, every worker starts from the config file exactly as a
single process would, and each worker gets its own stdout pipe.

- Logs: a worker's stdout is a pipe to the supervisor, which forwards only whole lines (it
  cuts each chunk it reads at the last newline) through its own single log writer. Several
  processes writing one pipe could interleave inside a line longer than PIPE_BUF; one writer
  cannot. Each worker's events carry ``worker`` (1..N). A worker's stderr (start-up errors)
  is forwarded line by line to the supervisor's stderr.
- Control socket: a socketpair per worker. The worker writes ``ready`` once its listeners are
  up; EOF before that is a failed start. The worker watches its end: EOF means the supervisor
  is gone (even SIGKILLed), and the worker drains and stops instead of living on unsupervised.
- Signals: workers run in their own process group, so a terminal's Ctrl-C reaches only the
  supervisor (systemd: ``KillMode=mixed``, which the shipped unit sets). SIGHUP is forwarded
  (each worker reloads); the first SIGTERM/SIGINT is forwarded (each worker drains), a second
  one too (each worker stops draining). The supervisor exits when every worker has.
- Failures: if a worker fails to start at start-up, the others are stopped and ``siptap run``
  exits 1. A worker that dies later is logged (``worker_died``) and restarted after a
  back-off (0.5 s doubling to 30 s; reset once it ran a minute); one that then fails to start
  5 times in a row is abandoned with ``worker_gave_up`` (error), the others keep serving (the
  kernel sends new connections only to live listeners); when none is left the supervisor
  exits 1.
- Metrics: see :mod:`siptap.metrics` (multiprocess mode; the supervisor serves the endpoint).
"""

from __future__ import annotations

import collections
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import trio

from siptap.config import Config, load_config
from siptap.errors import ListenError, SiptapError
from siptap.log import get_logger

if TYPE_CHECKING:  # the supervisor process never builds an App; only workers import it
    from siptap.app import App

READY_TIMEOUT = 60.0
RESTART_INITIAL = 0.5
RESTART_MAX = 30.0
STABLE_AFTER = 60.0  # a worker that ran this long restarts after RESTART_INITIAL again
MAX_START_FAILURES = 5
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class WorkersFailed(SiptapError):
    """A worker could not start (at start-up), or every worker was given up."""


@dataclass(slots=True)
class Slot:
    index: int
    process: trio.Process | None = None
    ready: bool = False
    ready_at: float = 0.0
    start_failures: int = 0
    delay: float = RESTART_INITIAL
    gave_up: bool = False
    last_code: int | None = None
    stop_code: int | None = None  # its exit status when it stopped because we asked
    stderr_tail: collections.deque[str] = field(default_factory=lambda: collections.deque(maxlen=5))

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None


def describe_exit(code: int | None) -> str:
    if code is None:
        return "running"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit status {code}"


class Supervisor:
    """Runs ``count`` workers on ``config``; :meth:`run` returns the exit status.

    ``emit`` receives worker stdout as text holding whole lines (without the last newline):
    :meth:`siptap.log.QueueWriter.msg` in production. ``worker_args`` go to every worker's
    ``run`` command line (log overrides)."""

    def __init__(self, config: Config, count: int, emit: Callable[[str], None], *,
                 worker_args: tuple[str, ...] = (), restart_initial: float = RESTART_INITIAL,
                 restart_max: float = RESTART_MAX, max_start_failures: int = MAX_START_FAILURES,
                 ready_timeout: float = READY_TIMEOUT) -> None:
        self.config = config
        self.count = count
        self.emit = emit
        self.worker_args = worker_args
        self.restart_initial = restart_initial
        self.restart_max = restart_max
        self.max_start_failures = max_start_failures
        self.ready_timeout = ready_timeout
        self.log = get_logger("siptap")
        self.slots = [Slot(i, delay=restart_initial) for i in range(1, count + 1)]
        self.failure: str | None = None  # why the supervisor will exit 1
        self.restarts = 0
        self.metrics_dir: Path | None = None
        self._stop = trio.Event()  # set once, by the first stop signal or a fatal start failure
        self._all_ready = trio.Event()
        self._started = False  # every worker was ready once: later failures are restarts

    @property
    def stopping(self) -> bool:
        """A stop was requested: no worker is (re)started from now on."""
        return self._stop.is_set()

    # -- the whole run -------------------------------------------------------------------------

    async def run(self) -> int:
        self.log.info("supervisor_starting", workers=self.count, pid=os.getpid())
        try:
            self._start_metrics()
            async with trio.open_nursery() as outer:
                outer.start_soon(self._signals)
                outer.start_soon(self._announce_ready)
                async with trio.open_nursery() as slots:
                    for slot in self.slots:
                        slots.start_soon(self._run_slot, slot)
                outer.cancel_scope.cancel()
        finally:
            if self.metrics_dir is not None:
                shutil.rmtree(self.metrics_dir, ignore_errors=True)
        codes = {slot.index: slot.last_code for slot in self.slots}
        # A worker that died earlier was reported then; what counts now is how the others stopped.
        clean = all(slot.stop_code in (None, 0, 130, -signal.SIGTERM, -signal.SIGINT) for slot in self.slots)
        self.log.info("supervisor_stopped", workers={str(i): describe_exit(c) for i, c in codes.items()},
                      restarts=self.restarts)
        if self.failure is not None:
            raise WorkersFailed(self.failure)
        return 0 if clean else 1

    def _start_metrics(self) -> None:
        if not self.config.metrics.enabled:
            return
        from siptap.metrics import serve_workers

        self.metrics_dir = Path(tempfile.mkdtemp(prefix="siptap-metrics-"))
        where = self.config.metrics.address
        try:
            host, port = serve_workers(where.host, where.port, self.metrics_dir, self.status)
        except OSError as exc:
            raise ListenError(f"metrics.address: cannot listen on {where}: {exc.strerror or exc}") from None
        self.log.info("metrics_up", address=f"{host}:{port}", host=host, port=port, workers=self.count)

    def status(self) -> dict[str, float]:
        running = sum(1 for s in self.slots if s.ready and s.process is not None and s.process.returncode is None)
        return {"running": running, "configured": self.count, "restarts": self.restarts}

    async def _announce_ready(self) -> None:
        await self._all_ready.wait()
        self.log.info("workers_ready", workers=self.count, pids=[s.pid for s in self.slots])

    def _request_stop(self) -> None:
        self._stop.set()
        self._forward(signal.SIGTERM)

    def _forward(self, signum: int) -> list[int]:
        sent = []
        for slot in self.slots:
            process = slot.process
            if process is not None and process.returncode is None:
                try:
                    process.send_signal(signum)
                except ProcessLookupError:
                    continue
                sent.append(slot.index)
        return sent

    async def _signals(self) -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            async for signum in signals:
                name = signal.Signals(signum).name
                if signum == signal.SIGHUP:
                    self._check_reload()
                    self.log.info("reload_forwarded", signal=name, workers=self._forward(signum))
                elif not self.stopping:
                    self.log.info("shutdown_requested", signal=name)
                    self._stop.set()
                    self.log.info("shutdown_forwarded", signal=name, workers=self._forward(signum))
                else:
                    # The second SIGTERM/SIGINT goes to the workers as it came: each worker's
                    # App treats its own second signal as "stop draining now". The supervisor
                    # itself just keeps waiting for them to exit, so it still reports their status.
                    self.log.warning("drain_aborted", signal=name, workers=self._forward(signum))

    def _check_reload(self) -> None:
        try:
            count = load_config(self.config.path).worker_count
        except SiptapError:
            return  # every worker reports the error itself (reload_failed) and keeps its settings
        if count != self.count:
            self.log.warning("reload_workers_changed", running=self.count, configured=count,
                             detail="a new number of workers needs a restart")

    # -- one worker slot ----------------------------------------------------------------------

    async def _run_slot(self, slot: Slot) -> None:
        """Keep worker ``slot.index`` running until a stop: restart it when it dies, with a
        back-off so a worker that crashes at once cannot spin the CPU or flood the log."""
        while not self._stop.is_set():
            ready, code = await self._run_once(slot)
            slot.last_code = code
            if self.metrics_dir is not None and slot.pid is not None:
                from siptap.metrics import mark_worker_dead

                # Its livesum gauges (open connections) would otherwise count a dead process.
                mark_worker_dead(self.metrics_dir, slot.pid)
            # Checked again after the wait: the stop may have come while the worker ran, and
            # then its exit is the answer to our SIGTERM, not a death to restart. (A call, not
            # the property: a type checker would carry the loop test's answer across the await.)
            if self._stop.is_set():
                slot.stop_code = code
                self.log.info("worker_exited", worker=slot.index, pid=slot.pid, status=describe_exit(code))
                return
            detail = " | ".join(slot.stderr_tail)
            # At start-up, one worker that cannot start fails the whole run (its error is
            # most likely every worker's: a port in use, a bad file), so `siptap run` exits 1
            # with that worker's own error line instead of limping along on fewer workers.
            if not self._started and not ready:
                self.failure = f"worker {slot.index} of {self.count} failed to start ({describe_exit(code)})" + (
                    f": {_why(slot)}" if slot.stderr_tail else "")
                self.log.error("worker_start_failed", worker=slot.index, pid=slot.pid, status=describe_exit(code),
                               stderr=detail, detail="stopping the other workers")
                self._request_stop()
                return
            if ready:
                uptime = trio.current_time() - slot.ready_at
                self.restarts += 1
                if uptime >= STABLE_AFTER:
                    slot.delay = self.restart_initial
                self.log.error("worker_died", worker=slot.index, pid=slot.pid, status=describe_exit(code),
                               uptime=round(uptime, 3), stderr=detail or None)
            else:
                slot.start_failures += 1
                self.log.error("worker_start_failed", worker=slot.index, pid=slot.pid, status=describe_exit(code),
                               attempt=slot.start_failures, stderr=detail or None)
                if slot.start_failures >= self.max_start_failures:
                    slot.gave_up = True
                    left = [s.index for s in self.slots if not s.gave_up]
                    self.log.error("worker_gave_up", worker=slot.index, attempts=slot.start_failures,
                                   workers_left=left,
                                   detail="it keeps failing at start-up; the other workers keep serving. "
                                          "Fix the cause and restart siptap")
                    if not left:
                        self.failure = f"every worker keeps failing at start-up (last: {describe_exit(code)})" + (
                            f": {_why(slot)}" if slot.stderr_tail else "")
                        self._request_stop()
                    return
            delay = slot.delay
            slot.delay = min(slot.delay * 2, self.restart_max)
            self.log.warning("worker_restarting", worker=slot.index, delay=delay)
            # The back-off ends early on a stop: the loop condition then ends the slot.
            with trio.move_on_after(delay):
                await self._stop.wait()

    async def _run_once(self, slot: Slot) -> tuple[bool, int]:
        """Start the worker, forward its output until it exits; (was it ready, exit code)."""
        # The control socket is the worker's lifeline in both directions: it says "ready" on
        # it, and it sees EOF on it when this process dies, however it dies (even SIGKILL:
        # the kernel closes our end). Only the child's end is inherited (pass_fds); ours is
        # close-on-exec, so no other worker holds it open and hides our death from this one.
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            argv = [sys.executable, "-m", "siptap", "run", "--config", str(self.config.path),
                    "--worker", f"{slot.index}/{self.count}", "--control-fd", str(theirs.fileno()), *self.worker_args]
            env = dict(os.environ)
            if self.metrics_dir is not None:
                env["PROMETHEUS_MULTIPROC_DIR"] = str(self.metrics_dir)
            else:
                env.pop("PROMETHEUS_MULTIPROC_DIR", None)
            slot.ready = False
            slot.stderr_tail.clear()
            process = await trio.lowlevel.open_process(
                argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                pass_fds=(theirs.fileno(),), process_group=0,
            )
        finally:
            # Our copy of the child's end: kept open, it would stop us from seeing the
            # child's EOF (a crash before "ready") and the child from seeing ours.
            theirs.close()
        slot.process = process
        control = trio.socket.from_stdlib_socket(ours)
        self.log.info("worker_started", worker=slot.index, pid=process.pid)
        ready = False
        try:
            async with trio.open_nursery() as nursery:
                assert process.stdout is not None and process.stderr is not None
                nursery.start_soon(self._forward_stdout, process.stdout)
                nursery.start_soon(self._forward_stderr, process.stderr, slot)
                with trio.move_on_after(self.ready_timeout) as waiting:
                    ready = await _read_ready(control)
                if waiting.cancelled_caught:
                    slot.stderr_tail.append(f"not ready after {self.ready_timeout:g} s: killed")
                    process.kill()
                if ready:
                    slot.ready = True
                    slot.ready_at = trio.current_time()
                    slot.start_failures = 0
                    self.log.info("worker_ready", worker=slot.index, pid=process.pid)
                    if all(s.ready for s in self.slots):
                        self._started = True
                        self._all_ready.set()
                    if self.stopping:  # the stop signal went out while it was starting
                        process.send_signal(signal.SIGTERM)
                code = await process.wait()
        finally:
            control.close()
        return ready, code

    async def _forward_stdout(self, stream: trio.abc.ReceiveStream) -> None:
        pending: bytes | bytearray = b""
        async for chunk in stream:
            cut = chunk.rfind(b"\n")
            if cut < 0:
                pending += chunk
                continue
            self.emit((pending + chunk[:cut]).decode("utf-8", "replace"))
            pending = chunk[cut + 1:]
        if pending:
            self.emit(pending.decode("utf-8", "replace"))

    async def _forward_stderr(self, stream: trio.abc.ReceiveStream, slot: Slot) -> None:
        pending: bytes | bytearray = b""
        async for chunk in stream:
            pending += chunk
            cut = pending.rfind(b"\n")
            if cut < 0:
                continue
            lines, pending = pending[: cut + 1], pending[cut + 1:]
            _write_stderr(lines)
            slot.stderr_tail.extend(line.decode("utf-8", "replace") for line in lines.splitlines() if line.strip())
        if pending:
            _write_stderr(pending + b"\n")
            slot.stderr_tail.append(pending.decode("utf-8", "replace"))


def _why(slot: Slot) -> str:
    """The worker's own error line (without its ``siptap: error:`` prefix), else its last line."""
    errors = [line for line in slot.stderr_tail if line.startswith("siptap: error: ")]
    return errors[-1].removeprefix("siptap: error: ") if errors else slot.stderr_tail[-1]


async def _read_ready(control: trio.socket.SocketType) -> bool:
    data = b""
    while not data.endswith(b"\n"):
        chunk = await control.recv(64)
        if not chunk:
            return False
        data += chunk
    return data.strip() == b"ready"


def _write_stderr(data: bytes | bytearray) -> None:
    try:
        sys.stderr.flush()
        view = memoryview(data)
        while view:
            view = view[os.write(2, view):]
    except OSError:
        pass


# -- the worker's side ---------------------------------------------------------------------------


def parse_worker(text: str) -> tuple[int, int]:
    """``"I/N"`` -> (I, N), 1 <= I <= N."""
    try:
        index_text, count_text = text.split("/")
        index, count = int(index_text), int(count_text)
    except ValueError:
        raise ValueError(f"--worker wants I/N, got {text!r}") from None
    if not 1 <= index <= count:
        raise ValueError(f"--worker wants 1 <= I <= N, got {text!r}")
    return index, count


async def run_worker(app: App, control_fd: int | None) -> None:
    """A worker's main: run ``app``; once it is ready, tell the supervisor; drain and stop
    when the supervisor goes away (EOF on the control socket)."""
    if control_fd is None:
        await app.run()
        return
    control = trio.socket.from_stdlib_socket(socket.socket(fileno=control_fd))
    with control:
        async with trio.open_nursery() as nursery:
            async def serve(task_status: trio.TaskStatus[object] = trio.TASK_STATUS_IGNORED) -> None:
                await app.run(task_status=task_status)
                # The app stopped (drained after SIGTERM, or after the lifeline asked it to):
                # the lifeline task has nothing left to watch.
                nursery.cancel_scope.cancel()

            # "ready" only once every listener is bound: the supervisor counts a worker that
            # dies before that as a failed start, not as a death to restart.
            await nursery.start(serve)
            await control.send(b"ready\n")
            nursery.start_soon(_lifeline, app, control)


async def _lifeline(app: App, control: trio.socket.SocketType) -> None:
    """Wait for the supervisor to go away (EOF or an error on the control socket), then drain:
    a worker left alone would serve on with nobody to forward its logs or restart it."""
    try:
        while await control.recv(64):
            pass
    except OSError:
        pass
    app.log.warning("supervisor_gone", detail="the supervisor's control socket closed: draining")
    app.request_shutdown()

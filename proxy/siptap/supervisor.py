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
- The mirror process (``mirror=True``, issue 16): ``python -m siptap mirror --channel PATH``
  (:mod:`siptap.mirror.process`), started first, in a runtime directory created 0700 for its
  socket and removed at exit; every worker gets ``--mirror-channel PATH``. It is watched and
  restarted like a worker (``mirror_died``, ``mirror_restarted``) and stopped last, once every
  worker has drained, so their last records reach the sinks.
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
MIRROR_SOCKET = "mirror.sock"  # the channel's name in the runtime directory
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
                 ready_timeout: float = READY_TIMEOUT, mirror: bool = False) -> None:
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
        # The mirror process's slot (index 0: it is no worker), when there is one.
        self.mirror = Slot(0, delay=restart_initial) if mirror else None
        self.runtime_dir: Path | None = None  # holds the mirror's channel socket
        self.failure: str | None = None  # why the supervisor will exit 1
        self.restarts = 0  # of workers
        self.mirror_restarts = 0
        self.metrics_dir: Path | None = None
        self._stop = trio.Event()  # set once, by the first stop signal or a fatal start failure
        self._all_ready = trio.Event()
        self._started = False  # every worker was ready once: later failures are restarts
        self._workers_done = trio.Event()  # every worker has exited: time to stop the mirror
        self._mirror_stopped = trio.Event()
        if self.mirror is None:
            self._mirror_stopped.set()

    @property
    def stopping(self) -> bool:
        """A stop was requested: no worker is (re)started from now on."""
        return self._stop.is_set()

    # -- the whole run -------------------------------------------------------------------------

    async def run(self) -> int:
        self.log.info("supervisor_starting", workers=self.count, pid=os.getpid(), mirror=self.mirror is not None)
        try:
            self._start_metrics()
            if self.mirror is not None:
                # mkdtemp creates it 0700: only siptap's user may reach the channel socket in
                # it, and whoever can connect there writes into every mirror output.
                self.runtime_dir = Path(tempfile.mkdtemp(prefix="siptap-run-"))
            async with trio.open_nursery() as outer:
                outer.start_soon(self._signals)
                outer.start_soon(self._announce_ready)
                # Stop order, the reverse of the start order: the mirror first, so that a
                # worker's tap connects at once (no record of its first calls dropped for
                # want of a listener), and last out, so that the records a worker sends
                # while it drains (the last calls' BYEs, closes) still reach the sinks.
                if self.mirror is not None:
                    await outer.start(self._run_mirror, self.mirror)
                if not self.stopping:  # the mirror may have failed to start: then no worker
                    async with trio.open_nursery() as slots:
                        for slot in self.slots:
                            slots.start_soon(self._run_slot, slot)
                self._workers_done.set()  # _run_mirror now stops the mirror and returns
                await self._mirror_stopped.wait()
                outer.cancel_scope.cancel()  # the signal watcher
        finally:
            for directory in (self.metrics_dir, self.runtime_dir):
                if directory is not None:
                    shutil.rmtree(directory, ignore_errors=True)
        codes = {str(slot.index): describe_exit(slot.last_code) for slot in self.slots}
        if self.mirror is not None:
            codes["mirror"] = describe_exit(self.mirror.last_code)
        # A worker that died earlier was reported then; what counts now is how the others stopped.
        stopped = [*self.slots, *([self.mirror] if self.mirror is not None else [])]
        clean = all(slot.stop_code in (None, 0, 130, -signal.SIGTERM, -signal.SIGINT) for slot in stopped)
        self.log.info("supervisor_stopped", workers=codes, restarts=self.restarts)
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
        """Stop from within (a fatal start failure): as if SIGTERM had come, minus the log line."""
        self._stop.set()
        self._forward(signal.SIGTERM)

    def _forward(self, signum: int) -> list[int]:
        """Send ``signum`` to every live worker (never to the mirror: it is stopped after them)."""
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
        """Signal forwarding. The children sit in their own process groups, so whatever the
        operator (or systemd, KillMode=mixed) sends reaches this process alone, and each child
        gets it from here, when it should: SIGHUP to the workers (each reloads its TLS
        material; the mirror's sinks reload nothing), SIGTERM/SIGINT to the workers (they
        drain), and only then, from run(), SIGTERM to the mirror. A signal that found the
        children already gone (ProcessLookupError) is not an error: they are being reaped."""
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
        """Keep worker ``slot.index`` running until a stop: restart it when it dies.

        Restart policy: a back-off (0.5 s doubling to 30 s) so a worker that crashes at once
        cannot spin the CPU or flood the log; back to 0.5 s once it had run STABLE_AFTER, so
        a crash a day is not punished like a crash loop. A worker that never gets ready
        (bad certificate, port taken) is given up after MAX_START_FAILURES in a row: its
        siblings keep serving, since the kernel sends new connections only to live listeners."""
        argv = [sys.executable, "-m", "siptap", "run", "--config", str(self.config.path),
                "--worker", f"{slot.index}/{self.count}", *self.worker_args]
        if self.runtime_dir is not None:
            argv += ["--mirror-channel", str(self.runtime_dir / MIRROR_SOCKET)]
        while not self._stop.is_set():
            ready, code = await self._run_once(slot, argv, lambda process: self._worker_ready(slot, process),
                                               worker=slot.index)
            slot.last_code = code
            # Its livesum gauges (open connections) would otherwise count a dead process.
            self._mark_dead(slot)
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
            uptime = trio.current_time() - slot.ready_at
            going_on = self._next_attempt(slot, ready)
            if ready:
                self.restarts += 1
                self.log.error("worker_died", worker=slot.index, pid=slot.pid, status=describe_exit(code),
                               uptime=round(uptime, 3), stderr=detail or None)
            else:
                self.log.error("worker_start_failed", worker=slot.index, pid=slot.pid, status=describe_exit(code),
                               attempt=slot.start_failures, stderr=detail or None)
            if not going_on:
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
            self.log.warning("worker_restarting", worker=slot.index, delay=slot.delay)
            # The back-off ends early on a stop: the loop condition then ends the slot.
            await self._back_off(slot, self._stop)

    def _next_attempt(self, slot: Slot, was_ready: bool) -> bool:
        """Account for one unexpected exit of ``slot``'s process; False: give it up."""
        if was_ready:
            if trio.current_time() - slot.ready_at >= STABLE_AFTER:
                slot.delay = self.restart_initial
            return True
        slot.start_failures += 1
        slot.gave_up = slot.start_failures >= self.max_start_failures
        return not slot.gave_up

    async def _back_off(self, slot: Slot, cut_short: trio.Event) -> None:
        delay = slot.delay
        slot.delay = min(slot.delay * 2, self.restart_max)
        with trio.move_on_after(delay):
            await cut_short.wait()

    def _mark_dead(self, slot: Slot) -> None:
        if self.metrics_dir is not None and slot.pid is not None:
            from siptap.metrics import mark_worker_dead

            mark_worker_dead(self.metrics_dir, slot.pid)

    async def _run_once(self, slot: Slot, argv: list[str], on_ready: Callable[[trio.Process], None],
                        **fields: object) -> tuple[bool, int]:
        """Start a worker or the mirror (``argv`` + its control fd), forward its output until
        it exits; (was it ready, exit code). ``fields`` name it in the log lines."""
        name = "worker" if slot is not self.mirror else "mirror"
        # The control socket is the child's lifeline in both directions: it says "ready" on
        # it, and it sees EOF on it when this process dies, however it dies (even SIGKILL:
        # the kernel closes our end). Only the child's end is inherited (pass_fds); ours is
        # close-on-exec, so no other child holds it open and hides our death from this one.
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            env = dict(os.environ)
            if self.metrics_dir is not None:
                env["PROMETHEUS_MULTIPROC_DIR"] = str(self.metrics_dir)
            else:
                env.pop("PROMETHEUS_MULTIPROC_DIR", None)
            slot.ready = False
            slot.stderr_tail.clear()
            # Each child in its own process group: a terminal's Ctrl-C (SIGINT to the
            # foreground group) reaches only the supervisor, which decides what each child
            # gets and when (see _signals): the mirror must not stop before the workers.
            process = await trio.lowlevel.open_process(
                [*argv, "--control-fd", str(theirs.fileno())], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, env=env, pass_fds=(theirs.fileno(),), process_group=0,
            )
        finally:
            # Our copy of the child's end: kept open, it would stop us from seeing the
            # child's EOF (a crash before "ready") and the child from seeing ours.
            theirs.close()
        slot.process = process
        control = trio.socket.from_stdlib_socket(ours)
        self.log.info(f"{name}_started", **fields, pid=process.pid)
        ready = False
        try:
            async with trio.open_nursery() as nursery:
                assert process.stdout is not None and process.stderr is not None
                # Every child's stdout goes through the one emit: whole lines only, so JSON
                # lines from several processes never interleave inside a line.
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
                    on_ready(process)
                code = await process.wait()
        finally:
            control.close()
        return ready, code

    def _worker_ready(self, slot: Slot, process: trio.Process) -> None:
        self.log.info("worker_ready", worker=slot.index, pid=process.pid)
        if all(s.ready for s in self.slots):
            self._started = True
            self._all_ready.set()
        if self.stopping:  # the stop signal went out while it was starting
            process.send_signal(signal.SIGTERM)

    # -- the mirror process ------------------------------------------------------------------------

    async def _run_mirror(self, slot: Slot, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Keep the mirror running until every worker has exited, then stop it (SIGTERM: it
        drains its channels and flushes its sinks). Started once it is first ready, or failed."""
        assert self.runtime_dir is not None
        argv = [sys.executable, "-m", "siptap", "mirror", "--config", str(self.config.path),
                "--channel", str(self.runtime_dir / MIRROR_SOCKET), *self.worker_args]
        restarted = started = False

        def ready(process: trio.Process) -> None:
            nonlocal started
            if restarted:
                self.log.info("mirror_restarted", pid=process.pid, restarts=self.mirror_restarts)
            if not started:
                started = True
                task_status.started()
            if self._workers_done.is_set():  # every worker went while it was starting
                process.send_signal(signal.SIGTERM)

        async def stop_after_workers() -> None:
            await self._workers_done.wait()
            if slot.process is not None and slot.process.returncode is None:
                slot.process.send_signal(signal.SIGTERM)

        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(stop_after_workers)
                while not self._workers_done.is_set():
                    was_ready, code = await self._run_once(slot, argv, ready)
                    slot.last_code = code
                    self._mark_dead(slot)
                    if self._workers_done.is_set():  # the answer to our SIGTERM
                        slot.stop_code = code
                        self.log.info("mirror_exited", pid=slot.pid, status=describe_exit(code))
                        break
                    detail = " | ".join(slot.stderr_tail) or None
                    if not restarted and not was_ready:
                        # At start-up no worker runs yet: the run fails, as for a worker.
                        self.failure = f"the mirror process failed to start ({describe_exit(code)})" + (
                            f": {_why(slot)}" if slot.stderr_tail else "")
                        self.log.error("mirror_start_failed", pid=slot.pid, status=describe_exit(code), stderr=detail)
                        self._request_stop()
                        task_status.started()
                        break
                    # Later the workers keep relaying without it (their taps count what they
                    # drop), so it is restarted with a worker's back-off, or given up the same way.
                    going_on = self._next_attempt(slot, was_ready)
                    self.log.error("mirror_died" if was_ready else "mirror_start_failed", pid=slot.pid,
                                   status=describe_exit(code), stderr=detail, delay=slot.delay if going_on else None)
                    if not going_on:
                        self.log.error("mirror_gave_up", attempts=slot.start_failures,
                                       detail="the mirror keeps failing at start-up; the workers relay on, "
                                              "unmirrored. Fix the cause and restart siptap")
                        break
                    self.mirror_restarts += 1
                    restarted = True
                    await self._back_off(slot, self._workers_done)
                nursery.cancel_scope.cancel()
        finally:
            self._mirror_stopped.set()

    async def _forward_stdout(self, stream: trio.abc.ReceiveStream) -> None:
        """One child's stdout to ``emit``, whole lines only. A pipe read ends anywhere, often
        mid-line (a 9 kB ``sip`` line spans reads); emitting up to the last newline and
        keeping the rest means another child's line can never land inside this one's."""
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
    """The child's ``ready`` line; False on EOF first (it died or exited before it was ready:
    a failed start, which the restart policy counts differently from a death)."""
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

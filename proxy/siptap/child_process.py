"""One child process of the supervisor (a relay worker or the mirror), both ends of its plumbing.

The parent's end: :func:`run_child` starts the child with its control socket, waits for its
``ready`` line, forwards its stdout (whole lines only) and stderr, and returns once it has
exited; :class:`Slot` is what the supervisor keeps per child across restarts, and
:func:`describe_exit` / :func:`stderr_reason` word an exit for the log and the exit message.
The child's end: :func:`run_worker` says ``ready`` once the worker's listeners are bound and
drains the worker when the control socket reports the supervisor gone (:func:`_lifeline`);
:func:`parse_worker` reads ``--worker I/N``. The restart policy and the signal forwarding are
the supervisor's (:mod:`siptap.supervisor`); nothing here decides whether a child runs again.
"""

from __future__ import annotations

import collections
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import trio

from siptap.log import LogWriter

if TYPE_CHECKING:  # the supervisor process never builds an App; only workers import it
    from siptap.app import App

__all__ = ["Slot", "describe_exit", "parse_worker", "run_child", "run_worker", "stderr_reason"]


@dataclass(slots=True)
class Slot:
    """One child's place in the supervisor: the process now running in it, and what the
    restart policy counts across the processes that have run in it."""

    index: int  # the worker's I of I/N; 0 for the mirror, which is no worker
    # The current back-off. Required: the supervisor's restart_initial (tests shorten it).
    delay: float
    # The process now (or last) in this slot: None only before its first start. Tests read
    # it (pid, returncode) to kill a child and see it replaced.
    process: trio.Process | None = None
    # True from the child's "ready" line until it is restarted: metrics count only these.
    ready: bool = False
    # trio.current_time() of the "ready" line: how long it ran decides its next back-off.
    ready_at: float = 0.0
    # Starts that died before "ready", in a row: a ready line resets it to 0 (run_child).
    start_failures: int = 0
    # Set by the supervisor's restart policy; a given-up slot is never started again.
    gave_up: bool = False
    # The exit status of the slot's last process (trio's convention: -N for signal N).
    last_code: int | None = None
    # Kept apart from last_code: only exits we asked for decide whether the run was clean.
    stop_code: int | None = None  # its exit status when it stopped because we asked
    # The last few stderr lines: a failed start is reported with the child's own error line
    # (a port in use, a file that will not load). Five bound it: a child that prints a long
    # traceback leaves its last lines, which hold the exception.
    stderr_tail: collections.deque[str] = field(default_factory=lambda: collections.deque(maxlen=5))

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None


def describe_exit(code: int | None) -> str:
    """An exit status in words: trio (like subprocess) gives a signal death as -signum."""
    # None: no exit seen yet (still running, or never started) in supervisor_stopped.
    if code is None:
        return "running"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            # A real-time signal (SIGRTMIN+n) has no name in signal.Signals.
            return f"killed by signal {-code}"
    # 0 is a clean exit; 1 is cli's exit for an error it printed (siptap: error: ...).
    return f"exit status {code}"


def stderr_reason(slot: Slot) -> str:
    """The child's own error line (without its ``siptap: error:`` prefix), else its last line.

    The caller checks ``slot.stderr_tail`` is not empty. cli prints a usage or config error
    as one ``siptap: error: ...`` line; that line, not a traceback's last frame, is what an
    operator needs in ``siptap run``'s own exit message."""
    # The last such line: an earlier one may be a warning the child survived.
    errors = [line for line in slot.stderr_tail if line.startswith("siptap: error: ")]
    return errors[-1].removeprefix("siptap: error: ") if errors else slot.stderr_tail[-1]


# -- the parent's end --------------------------------------------------------------------------


async def run_child(slot: Slot, argv: list[str], *, name: str, log: LogWriter, emit: Callable[[str], None],
                    ready_timeout: float, metrics_dir: Path | None, on_ready: Callable[[trio.Process], None],
                    fields: dict[str, object]) -> tuple[bool, int]:
    """Start a worker or the mirror (``argv`` + its control fd), forward its output until
    it exits; (was it ready, exit code). ``name`` ("worker"/"mirror") and ``fields`` name it
    in the log lines; ``emit`` takes its stdout, whole lines; ``on_ready`` runs at its
    ``ready`` line, in this task, before the wait for its exit."""
    # The control socket is the child's lifeline in both directions: it says "ready" on
    # it, and it sees EOF on it when this process dies, however it dies (even SIGKILL:
    # the kernel closes our end). Only the child's end is inherited (pass_fds); ours is
    # close-on-exec, so no other child holds it open and hides our death from this one.
    # SOCK_STREAM, not a pipe: one descriptor carries both directions, and EOF is seen by
    # whichever side survives. (tests/relay/test_workers.py, ..._when_the_supervisor_is_killed)
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        # A copy of our environment: the child is `python -m siptap` on the same
        # interpreter (argv[0] is sys.executable), so PATH, locale and venv carry over.
        env = dict(os.environ)
        # prometheus-client reads PROMETHEUS_MULTIPROC_DIR at import time: with it set each
        # child writes its samples to files there, which the supervisor's endpoint sums.
        # Without metrics it must be unset, or a variable left in the operator's shell would
        # send a child's samples into some stale directory.
        if metrics_dir is not None:
            env["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
        else:
            env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        # Reset before the start, not after the exit: status() must not count the new
        # process as running until it has said "ready".
        slot.ready = False
        # Cleared per start: the tail explains this process's exit, not a previous one's.
        slot.stderr_tail.clear()
        # Each child in its own process group: a terminal's Ctrl-C (SIGINT to the
        # foreground group) reaches only the supervisor, which decides what each child
        # gets and when (see Supervisor._signals): the mirror must not stop before the
        # workers. stdin from /dev/null: a child never reads the terminal.
        process = await trio.lowlevel.open_process(
            [*argv, "--control-fd", str(theirs.fileno())], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, env=env, pass_fds=(theirs.fileno(),), process_group=0,
        )
    finally:
        # Our copy of the child's end: kept open, it would stop us from seeing the
        # child's EOF (a crash before "ready") and the child from seeing ours.
        theirs.close()
    # Set at once: signals forwarded from now on (a stop during the start) reach this
    # process, and status() sees it.
    slot.process = process
    # A trio socket: the ready wait below must be cancellable (ready_timeout) and must not
    # block the supervisor's one thread while the other children run.
    control = trio.socket.from_stdlib_socket(ours)
    # Logged once the process exists, so the line carries its pid: a crash report from the
    # kernel or a core file can be matched to it.
    log.info(f"{name}_started", **fields, pid=process.pid)
    # False until the line came: a child killed by ready_timeout, or dead first, was not ready.
    ready = False
    try:
        # The nursery holds the two forwarders: it is left only once both have read EOF,
        # i.e. once the child (and anything it spawned with our pipes) has closed them, so
        # the child's last lines are emitted before its exit is logged.
        async with trio.open_nursery() as nursery:
            # Both are PIPE above, so both exist; the assert is for the type checker.
            assert process.stdout is not None and process.stderr is not None
            # Every child's stdout goes through the one emit: whole lines only, so JSON
            # lines from several processes never interleave inside a line.
            nursery.start_soon(_forward_stdout, process.stdout, emit)
            # Forwarded while waiting for "ready": a child that fails at start-up says why
            # on stderr, and a full pipe would block it before it could exit.
            nursery.start_soon(_forward_stderr, process.stderr, slot)
            with trio.move_on_after(ready_timeout) as waiting:
                ready = await _read_ready(control)
            if waiting.cancelled_caught:
                # A child that hangs at start-up (a file on a stalled mount, a DNS wait)
                # would hold its slot forever: killed, its exit counts as a failed start.
                slot.stderr_tail.append(f"not ready after {ready_timeout:g} s: killed")
                # SIGKILL, not SIGTERM: a child stuck before its signal handlers exist, or inside a
                # blocking call, may never act on SIGTERM, and nothing of it is worth a drain.
                process.kill()
            if ready:
                slot.ready = True
                slot.ready_at = trio.current_time()
                # Only a start that got as far as "ready" breaks a run of failed starts.
                slot.start_failures = 0
                # In this task, right at the line: the supervisor's bookkeeping (all ready, a stop that
                # came during the start, the mirror's task_status) must happen before the exit wait.
                on_ready(process)
            # Also after a false "ready" (EOF): the exit code is what the log reports, and
            # wait() reaps the child, which would otherwise stay a zombie.
            code = await process.wait()
    finally:
        # Closed only now, not after "ready": the child watches its end for EOF, and
        # closing ours would tell a healthy child that the supervisor is gone.
        control.close()
    # ready tells the restart policy whether this was a failed start or a death.
    return ready, code


async def _read_ready(control: trio.socket.SocketType) -> bool:
    """The child's ``ready`` line; False on EOF first (it died or exited before it was ready:
    a failed start, which the restart policy counts differently from a death)."""
    data = b""
    # A stream socket may deliver "ready\n" in pieces: read up to the newline. The child
    # writes nothing else, so there is no "after" to keep.
    while not data.endswith(b"\n"):
        chunk = await control.recv(64)
        if not chunk:
            return False
        data += chunk
    # Anything else is no ready line: treated as a failed start. The caller still waits
    # for the child's exit, so a child that wrote garbage is not left behind.
    return data.strip() == b"ready"


async def _forward_stdout(stream: trio.abc.ReceiveStream, emit: Callable[[str], None]) -> None:
    """One child's stdout to ``emit``, whole lines only. A pipe read ends anywhere, often
    mid-line (a 9 kB ``sip`` line spans reads); emitting up to the last newline and
    keeping the rest means another child's line can never land inside this one's."""
    # bytes | bytearray: what a trio ReceiveStream's chunks are typed as. pending holds at most one
    # partial line: a child writes whole JSON lines, and the largest is a sip line with a
    # full message in it (~9 kB), so this does not grow without bound in practice.
    pending: bytes | bytearray = b""
    async for chunk in stream:
        # rfind, not a split per line: at most two emits per read, however many lines it holds
        # (the emit is a queue put in production, and lines come in bursts).
        cut = chunk.rfind(b"\n")
        if cut < 0:
            pending += chunk
            # No newline in this read: all of it belongs to a line still being written.
            continue
        # "replace": a child cut off mid-character (killed) must not kill the forwarder.
        # In production emit is QueueWriter.msg: a bounded queue that drops (and counts) when
        # full, so a flood from one child costs log lines, never the supervisor's memory.
        # Decoded from a view of the read, not from a copy: a read is up to 64 KiB, and each
        # copy of it is a large block (a mapping of its own in the supervisor: siptap/allocator.py).
        # The line the last read left unfinished goes out on its own (a UTF-8 character never
        # spans a newline, so decoding the two apart is the same text).
        start = 0
        if pending:
            start = chunk.find(b"\n") + 1
            emit((pending + chunk[:start - 1]).decode("utf-8", "replace"))
        if start <= cut:
            emit(str(memoryview(chunk)[start:cut], "utf-8", "replace"))
        pending = chunk[cut + 1:]
    # EOF: the child is gone; its unterminated last line is still a line of its own.
    if pending:
        # One more emit, after the loop: the writer adds the newline the child never wrote.
        emit(pending.decode("utf-8", "replace"))


async def _forward_stderr(stream: trio.abc.ReceiveStream, slot: Slot) -> None:
    """One child's stderr to ours, whole lines, keeping the last few for the exit report."""
    pending: bytes | bytearray = b""
    # Read as it comes: a stderr pipe left unread would fill (64 KiB) and block a child
    # that prints a long traceback, which would then never exit.
    async for chunk in stream:
        pending += chunk
        cut = pending.rfind(b"\n")
        if cut < 0:
            continue
        # Whole lines go out, the rest waits: our stderr is shared by every child, and a
        # line cut in two would be interleaved with another child's.
        lines, pending = pending[: cut + 1], pending[cut + 1:]
        _write_stderr(lines)
        # Blank lines are not worth one of the five places in the tail.
        slot.stderr_tail.extend(line.decode("utf-8", "replace") for line in lines.splitlines() if line.strip())
    # The child exited mid-line (killed while writing): its partial line still goes out,
    # terminated, so the next child's stderr starts on a line of its own.
    if pending:
        _write_stderr(pending + b"\n")
        slot.stderr_tail.append(pending.decode("utf-8", "replace"))


def _write_stderr(data: bytes | bytearray) -> None:
    # os.write on fd 2, not sys.stderr.write: bytes go out as the child wrote them, with no
    # re-encoding. Flushed first so our own buffered stderr text is not overtaken.
    try:
        sys.stderr.flush()
        view = memoryview(data)
        # os.write may write less than asked (a pipe with little room): loop on the rest.
        while view:
            view = view[os.write(2, view):]
    except OSError:
        # Our stderr closed (the terminal went away): a child's error text is not worth
        # taking the supervisor down, and stdout (the JSON log) still works.
        pass


# -- the child's end -----------------------------------------------------------------------------


def parse_worker(text: str) -> tuple[int, int]:
    """``"I/N"`` -> (I, N), 1 <= I <= N."""
    try:
        # A wrong count of parts ("3", "1/2/3") fails the unpacking with ValueError too.
        index_text, count_text = text.split("/")
        index, count = int(index_text), int(count_text)
    except ValueError:
        # from None: int()'s own message would name the wrong thing; cli shows this one.
        raise ValueError(f"--worker wants I/N, got {text!r}") from None
    if not 1 <= index <= count:
        # Worker numbers are 1-based, as in the log's `worker` field and the README.
        raise ValueError(f"--worker wants 1 <= I <= N, got {text!r}")
    return index, count


async def run_worker(app: App, control_fd: int | None) -> None:
    """A worker's main: run ``app``; once it is ready, tell the supervisor; drain and stop
    when the supervisor goes away (EOF on the control socket)."""
    # No control fd: a plain single-process `siptap run`, with nobody to tell.
    if control_fd is None:
        await app.run()
        return
    # The fd is the supervisor's socketpair end, inherited through pass_fds; wrapped, not
    # duplicated, so closing it (the with below) leaves no copy open.
    control = trio.socket.from_stdlib_socket(socket.socket(fileno=control_fd))
    # Closed when the worker ends. The supervisor no longer reads it after "ready"; it
    # learns of the exit by reaping the process, so the close is only tidiness.
    with control:
        # The nursery holds the app and, after "ready", the lifeline: whichever ends first
        # ends the worker (serve cancels the lifeline; the lifeline makes the app drain).
        async with trio.open_nursery() as nursery:
            # A wrapper so the app's end can cancel the nursery: the lifeline would otherwise keep
            # it open for ever, waiting on a supervisor that is still there.
            async def serve(task_status: trio.TaskStatus[object] = trio.TASK_STATUS_IGNORED) -> None:
                await app.run(task_status=task_status)
                # The app stopped (drained after SIGTERM, or after the lifeline asked it to):
                # the lifeline task has nothing left to watch.
                nursery.cancel_scope.cancel()

            # "ready" only once every listener is bound: the supervisor counts a worker that
            # dies before that as a failed start, not as a death to restart.
            # App.run calls task_status.started() once every listener is bound, and only then
            # does start() return: a worker that cannot bind never says "ready".
            await nursery.start(serve)
            # Six bytes on a socket nobody has written yet: they fit its buffer, so this
            # send does not wait. If the supervisor died meanwhile, it fails with EPIPE
            # (Python ignores SIGPIPE, so that is an OSError) and this worker exits.
            await control.send(b"ready\n")
            # Watched only from here on: before "ready" the worker is still starting, and
            # a supervisor that died then is answered by the failed send above.
            nursery.start_soon(_lifeline, app, control)


async def _lifeline(app: App, control: trio.socket.SocketType) -> None:
    """Wait for the supervisor to go away (EOF or an error on the control socket), then drain:
    a worker left alone would serve on with nobody to forward its logs or restart it."""
    try:
        # The supervisor never writes after the start: anything read is ignored, and only
        # EOF (b"") ends the loop.
        while await control.recv(64):
            pass
    # ECONNRESET and the like: as much a sign of the supervisor's end as an EOF.
    except OSError:
        pass
    # The log line goes to a stdout pipe whose reader is gone: it may be lost (EPIPE), which
    # is why the drain does not depend on it. (tests/relay/test_workers.py: supervisor killed)
    app.log.warning("supervisor_gone", detail="the supervisor's control socket closed: draining")
    app.request_shutdown()

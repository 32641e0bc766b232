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
  (each worker reloads, and the mirror reloads its routes' mirrored legs); the first SIGTERM/SIGINT is forwarded (each worker drains), a second
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

One child's plumbing (its start, ``ready`` line, output forwarding, exit description, and the
worker's end of the control socket) is :mod:`siptap.child_process`; this module decides when
each child runs, restarts, is signalled and stops.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import trio

from siptap.child_process import Slot, describe_exit, run_child, stderr_reason
from siptap.config import Config, load_config
from siptap.errors import ListenError, SiptapError
from siptap.log import get_logger

# Generous: a worker loads every certificate, CA bundle and CRL of the config before it
# binds, and a cold start on a loaded host (or a slow disk) must not count as a failure.
# A child that hangs is killed at this bound (child_process.run_child) and its exit then
# counts as a failed start.
READY_TIMEOUT = 60.0
# The back-off, 0.5 s doubling to 30 s (README "Workers"): short enough that one crash
# costs one worker half a second of accepting, long enough that a child failing at once
# cannot spin a core or flood the log; the cap keeps a long outage retried twice a minute.
RESTART_INITIAL = 0.5
RESTART_MAX = 30.0
STABLE_AFTER = 60.0  # a worker that ran this long restarts after RESTART_INITIAL again
# Only failed starts (exits before "ready") count toward giving up: a cause like a port in
# use or an unreadable key does not go away by itself, while deaths after "ready" (a crash
# under traffic) are retried for ever, with the back-off. Five failed starts in a row take
# 0.5 + 1 + 2 + 4 s of back-off plus their own start-up time.
MAX_START_FAILURES = 5
# A fixed name inside a fresh 0700 directory: short (a Unix socket path is limited to
# 108 bytes, and /tmp/siptap-run-XXXX/ leaves room) and never shared between runs.
MIRROR_SOCKET = "mirror.sock"  # the channel's name in the runtime directory


# A SiptapError, so cli prints it as one `siptap: error:` line and exits 1, as for a bad
# config: at start-up the operator sees the failing worker's own reason, not a traceback.
class WorkersFailed(SiptapError):
    """A worker could not start (at start-up), or every worker was given up."""


class Supervisor:
    """Runs ``count`` workers on ``config``; :meth:`run` returns the exit status.

    ``emit`` receives worker stdout as text holding whole lines (without the last newline):
    :meth:`siptap.log.QueueWriter.msg` in production. ``worker_args`` go to every worker's
    ``run`` command line (log overrides)."""

    def __init__(self, config: Config, count: int, emit: Callable[[str], None], *,
                 worker_args: tuple[str, ...] = (), restart_initial: float = RESTART_INITIAL,
                 restart_max: float = RESTART_MAX, max_start_failures: int = MAX_START_FAILURES,
                 ready_timeout: float = READY_TIMEOUT, mirror: bool = False, mmap_threshold: int | None = None) -> None:
        self.config = config
        # What cli set this process's allocator to (siptap.allocator), for supervisor_starting.
        self.mmap_threshold = mmap_threshold
        self.count = count
        self.emit = emit
        self.worker_args = worker_args
        # The policy figures are parameters so the tests can run a crash loop in a second
        # (test_workers.py, test_supervisor_mirror.py); production uses the module's constants.
        self.restart_initial = restart_initial
        self.restart_max = restart_max
        self.max_start_failures = max_start_failures
        self.ready_timeout = ready_timeout
        # The supervisor's own lines go through the same writer as the children's forwarded
        # ones (emit), so stdout stays one JSON object per line whatever their source.
        self.log = get_logger("siptap")
        # Slots, not processes: a slot outlives each process that runs in it, carrying its
        # back-off and failure count across restarts, and index I is the worker's I of I/N.
        self.slots = [Slot(i, delay=restart_initial) for i in range(1, count + 1)]
        # The mirror process's slot (index 0: it is no worker), when there is one.
        # Kept apart from self.slots: signals, status() and the all-ready test are about
        # workers only, and the mirror has its own start and stop order.
        self.mirror = Slot(0, delay=restart_initial) if mirror else None
        self.runtime_dir: Path | None = None  # holds the mirror's channel socket
        # Recorded, not raised where it happens: the other children must be stopped and
        # reaped first, and run() raises it at the very end.
        self.failure: str | None = None  # why the supervisor will exit 1
        # Counted only for deaths after "ready": the siptap_worker_restarts_total counter
        # (status()) reports real restarts, not attempts at a start that keeps failing.
        self.restarts = 0  # of workers
        self.mirror_restarts = 0
        self.metrics_dir: Path | None = None
        # An Event rather than a flag: the back-off waits on it, so a stop ends a pending
        # restart delay at once instead of after up to 30 s.
        self._stop = trio.Event()  # set once, by the first stop signal or a fatal start failure
        # Set when every worker has said "ready" once: _announce_ready logs workers_ready
        # then, the line tests and operators wait for before sending traffic.
        self._all_ready = trio.Event()
        self._started = False  # every worker was ready once: later failures are restarts
        # An Event, because two waiters need it: _run_mirror's stop task and its back-off.
        self._workers_done = trio.Event()  # every worker has exited: time to stop the mirror
        # Set when _run_mirror returns, however (mirror stopped, gave up, failed to start):
        # run() waits on it before leaving, so the mirror's sinks are flushed before exit.
        # Without a mirror there is nothing to wait for.
        self._mirror_stopped = trio.Event()
        if self.mirror is None:
            self._mirror_stopped.set()

    @property
    def stopping(self) -> bool:
        """A stop was requested: no worker is (re)started from now on."""
        return self._stop.is_set()

    # -- the whole run -------------------------------------------------------------------------

    async def run(self) -> int:
        # Metrics first: serve_workers binds the endpoint and creates the multiprocess directory,
        # which must exist before a child starts (its env names it), and a port already in use
        # must fail the run before any child is started, not after.
        self.log.info("supervisor_starting", workers=self.count, pid=os.getpid(), mirror=self.mirror is not None,
                      mmap_threshold=self.mmap_threshold)
        try:
            self._start_metrics()
            if self.mirror is not None:
                # mkdtemp creates it 0700: only siptap's user may reach the channel socket in
                # it, and whoever can connect there writes into every mirror output.
                # A fresh directory per run, so a stale socket left by a killed supervisor can never
                # be mistaken for this run's channel.
                self.runtime_dir = Path(tempfile.mkdtemp(prefix="siptap-run-"))
            async with trio.open_nursery() as outer:
                # Signals are received from before the first child starts: a SIGTERM that comes during
                # the start-up must stop the run, not kill the supervisor by default action.
                outer.start_soon(self._signals)
                outer.start_soon(self._announce_ready)
                # Stop order, the reverse of the start order: the mirror first, so that a
                # worker's tap connects at once (no record of its first calls dropped for
                # want of a listener), and last out, so that the records a worker sends
                # while it drains (the last calls' BYEs, closes) still reach the sinks.
                if self.mirror is not None:
                    # start(), not start_soon(): returns once the mirror said "ready" (or failed), and
                    # only then are the workers started. tests/relay/test_supervisor_mirror.py pins the order.
                    await outer.start(self._run_mirror, self.mirror)
                # A property read here, after the await: the stop may have come during the mirror's
                # start (a signal, or its failed start), and then no worker is started at all.
                if not self.stopping:  # the mirror may have failed to start: then no worker
                    # One task per slot: each restarts its own worker, and the nursery is left only once
                    # every slot has ended (stopped, or given up), which is when the workers are done.
                    async with trio.open_nursery() as slots:
                        for slot in self.slots:
                            slots.start_soon(self._run_slot, slot)
                # Set after the nursery, not on the stop signal: workers still draining send their last
                # records (the closing calls' BYEs) to the mirror, which must be there to take them.
                self._workers_done.set()  # _run_mirror now stops the mirror and returns
                # The mirror drains its channels and flushes its sinks after our SIGTERM; leaving
                # before it has exited would delete its runtime directory under it.
                await self._mirror_stopped.wait()
                # Cancelling the receiver puts back the handlers it replaced (for SIGTERM, the
                # default: death); by then every child has exited and only the cleanup is left.
                outer.cancel_scope.cancel()  # the signal watcher
        finally:
            # In finally: even on an error, the channel socket and the metrics files (one per
            # process that ever ran) do not pile up in /tmp run after run. ignore_errors: a child
            # may still be removing its own files at this moment.
            for directory in (self.metrics_dir, self.runtime_dir):
                if directory is not None:
                    shutil.rmtree(directory, ignore_errors=True)
        # Keyed by the slot's index as a string: a JSON object's keys are strings anyway, and
        # "mirror" sits beside the workers' numbers.
        codes = {str(slot.index): describe_exit(slot.last_code) for slot in self.slots}
        if self.mirror is not None:
            codes["mirror"] = describe_exit(self.mirror.last_code)
        # A worker that died earlier was reported then; what counts now is how the others stopped.
        stopped = [*self.slots, *([self.mirror] if self.mirror is not None else [])]
        # Clean answers to our SIGTERM: 0 (drained and exited), 130 (cli's exit on
        # KeyboardInterrupt, which a child still in start-up may raise), or death by the
        # signal itself (a child that had not installed its handler yet). None: the slot was
        # not running when the stop came (given up, or in its back-off).
        clean = all(slot.stop_code in (None, 0, 130, -signal.SIGTERM, -signal.SIGINT) for slot in stopped)
        self.log.info("supervisor_stopped", workers=codes, restarts=self.restarts)
        if self.failure is not None:
            # Raised after the cleanup and the supervisor_stopped line, so the log says how every
            # child ended before cli prints the one error line and exits 1.
            raise WorkersFailed(self.failure)
        return 0 if clean else 1

    def _start_metrics(self) -> None:
        if not self.config.metrics.enabled:
            return
        # Imported here: prometheus-client is loaded only when metrics are on.
        from siptap.metrics import serve_workers

        # A new empty directory per run: counters left by a previous run's processes would
        # otherwise be summed into this one's (multiprocess mode reads every file in it).
        self.metrics_dir = Path(tempfile.mkdtemp(prefix="siptap-metrics-"))
        where = self.config.metrics.address
        try:
            host, port = serve_workers(where.host, where.port, self.metrics_dir, self.status)
        except OSError as exc:
            # A ListenError names the config key, like a SIP listen address that is taken.
            raise ListenError(f"metrics.address: cannot listen on {where}: {exc.strerror or exc}") from None
        self.log.info("metrics_up", address=f"{host}:{port}", host=host, port=port, workers=self.count)

    # Called by the metrics endpoint's HTTP thread at each scrape, not on trio's thread: it
    # only reads attributes (atomic under the GIL) and changes nothing, so it needs no lock.
    # A worker counts as running from its "ready" line until its exit is seen.
    def status(self) -> dict[str, float]:
        running = sum(1 for s in self.slots if s.ready and s.process is not None and s.process.returncode is None)
        return {"running": running, "configured": self.count, "restarts": self.restarts}

    # A task, not a line in _worker_ready: it runs once whatever order the workers come up
    # in, and it never fires if a worker fails before they are all ready.
    async def _announce_ready(self) -> None:
        await self._all_ready.wait()
        self.log.info("workers_ready", workers=self.count, pids=[s.pid for s in self.slots])

    # Used when a start failure is fatal: the remaining workers drain as on SIGTERM and the
    # run then exits 1 with self.failure, which the caller has set first.
    def _request_stop(self) -> None:
        """Stop from within (a fatal start failure): as if SIGTERM had come, minus the log line."""
        self._stop.set()
        self._forward(signal.SIGTERM)

    def _forward(self, signum: int, *, ready_only: bool = False) -> list[int]:
        """Send ``signum`` to every live worker (never to the mirror: it is stopped after them);
        with ``ready_only``, only to those past their ready line (SIGHUP: see _signal_mirror)."""
        # Only workers: the mirror gets its SIGTERM from _run_mirror once every worker has
        # exited, or it would stop taking the records of calls still being drained.
        sent = []
        for slot in self.slots:
            process = slot.process
            if process is not None and process.returncode is None and (slot.ready or not ready_only):
                try:
                    process.send_signal(signum)
                # The process exited between the returncode test and the kill (returncode is set only
                # when trio reaps it): nothing to forward, and it is not reported as signalled.
                except ProcessLookupError:
                    continue
                sent.append(slot.index)
        # The indexes that were signalled go in the log line, so an operator sees which
        # workers were still there to be told.
        return sent

    def _signal_mirror(self, signum: int) -> bool:
        """Send ``signum`` (SIGHUP: its routes) to the mirror process once it is ready. One
        still starting may have no handler yet (SIGHUP's default action would kill it, and its
        restart cost a gap); it read the config file when it started. A change made in the
        instant between that read and its ready line needs another SIGHUP (the same holds for
        a worker, _forward)."""
        slot = self.mirror
        process = slot.process if slot is not None else None
        if slot is None or process is None or process.returncode is not None or not slot.ready:
            return False
        try:
            process.send_signal(signum)
        except ProcessLookupError:  # exited meanwhile, not reaped yet
            return False
        return True

    async def _signals(self) -> None:
        """Signal forwarding. The children sit in their own process groups, so whatever the
        operator (or systemd, KillMode=mixed) sends reaches this process alone, and each child
        gets it from here, when it should: SIGHUP to the workers (each reloads its TLS
        material and routes) and to the mirror (its routes' mirrored legs; its outputs are
        not rebuilt), SIGTERM/SIGINT to the workers (they
        drain), and only then, from run(), SIGTERM to the mirror. A signal that found the
        children already gone (ProcessLookupError) is not an error: they are being reaped."""
        # trio queues the signals and delivers them here one at a time, in this task: two quick
        # SIGTERMs are seen as a first and a second, in that order.
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            async for signum in signals:
                name = signal.Signals(signum).name
                if signum == signal.SIGHUP:
                    # The workers reload their TLS material themselves; the supervisor only checks what it
                    # cannot apply itself (the number of workers) and says so.
                    self._check_reload()
                    self.log.info("reload_forwarded", signal=name, workers=self._forward(signum, ready_only=True),
                                  mirror=self._signal_mirror(signum))
                elif not self.stopping:
                    self.log.info("shutdown_requested", signal=name)
                    self._stop.set()
                    # _stop was set before forwarding: a worker that dies while the signal is on its way must be seen
                    # as stopped, not restarted (_run_slot checks _stop after each exit).
                    self.log.info("shutdown_forwarded", signal=name, workers=self._forward(signum))
                else:
                    # The second SIGTERM/SIGINT goes to the workers as it came: each worker's
                    # App treats its own second signal as "stop draining now". The supervisor
                    # itself just keeps waiting for them to exit, so it still reports their status.
                    # No second SIGTERM to the mirror here: it bounds its own drain, and it must still be
                    # running to take what the workers send while they close their connections.
                    self.log.warning("drain_aborted", signal=name, workers=self._forward(signum))

    def _check_reload(self) -> None:
        try:
            # The supervisor reads the file again only to compare the number of workers: changing it
            # live would mean stopping or starting workers, which a reload never does.
            count = load_config(self.config.path).worker_count
        except SiptapError:
            return  # every worker reports the error itself (reload_failed) and keeps its settings
        # A warning, not an error: the workers keep serving with the count they started with,
        # and the next start of siptap applies the new one.
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
        # The same interpreter and the same config path as this process: a worker is exactly a
        # single-process `siptap run` plus --worker (which makes it set SO_REUSEPORT and tag its
        # log lines) and the control fd run_child appends.
        argv = [sys.executable, "-m", "siptap", "run", "--config", str(self.config.path),
                "--worker", f"{slot.index}/{self.count}", *self.worker_args]
        if self.runtime_dir is not None:
            # With a mirror, every worker sends its records to its channel socket; without one
            # the worker observes in-process.
            argv += ["--mirror-channel", str(self.runtime_dir / MIRROR_SOCKET)]
        # One pass per process: start it, wait until it exits, then decide (stop, fail the run,
        # give up, or restart after the back-off).
        while not self._stop.is_set():
            # A lambda per slot: _worker_ready needs to know which slot became ready, and
            # run_child only hands over the process.
            ready, code = await self._run_once(slot, argv, lambda process: self._worker_ready(slot, process),
                                               worker=slot.index)
            # The last exit, whatever its cause, goes in supervisor_stopped's per-worker status.
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
            # The child's last stderr lines, one field: the error logged with the exit says why
            # it went without the operator having to find its stderr.
            detail = " | ".join(slot.stderr_tail)
            # At start-up, one worker that cannot start fails the whole run (its error is
            # most likely every worker's: a port in use, a bad file), so `siptap run` exits 1
            # with that worker's own error line instead of limping along on fewer workers.
            if not self._started and not ready:
                self.failure = f"worker {slot.index} of {self.count} failed to start ({describe_exit(code)})" + (
                    f": {stderr_reason(slot)}" if slot.stderr_tail else "")
                self.log.error("worker_start_failed", worker=slot.index, pid=slot.pid, status=describe_exit(code),
                               stderr=detail, detail="stopping the other workers")
                self._request_stop()
                return
            # Read before _next_attempt, which may reset the back-off from this same figure.
            uptime = trio.current_time() - slot.ready_at
            going_on = self._next_attempt(slot, ready)
            if ready:
                # A restart only for a worker that was ready: a failed start is an attempt, counted in
                # slot.start_failures, not in the restarts metric.
                self.restarts += 1
                self.log.error("worker_died", worker=slot.index, pid=slot.pid, status=describe_exit(code),
                               uptime=round(uptime, 3), stderr=detail or None)
            else:
                self.log.error("worker_start_failed", worker=slot.index, pid=slot.pid, status=describe_exit(code),
                               attempt=slot.start_failures, stderr=detail or None)
            if not going_on:
                # The others keep serving: with SO_REUSEPORT the kernel hashes new connections over
                # the listeners that exist, so a given-up worker takes no traffic (test_workers.py,
                # ..._keeps_failing_at_start_up_is_given_up).
                left = [s.index for s in self.slots if not s.gave_up]
                self.log.error("worker_gave_up", worker=slot.index, attempts=slot.start_failures,
                               workers_left=left,
                               detail="it keeps failing at start-up; the other workers keep serving. "
                                      "Fix the cause and restart siptap")
                if not left:
                    # Every worker gave up: nothing serves, so the run ends and exits 1 (README
                    # "Workers": "with none left siptap exits 1"); the mirror is stopped after them.
                    self.failure = f"every worker keeps failing at start-up (last: {describe_exit(code)})" + (
                        f": {stderr_reason(slot)}" if slot.stderr_tail else "")
                    self._request_stop()
                return
            # Logged with the delay about to be waited, before _back_off doubles it for next time.
            self.log.warning("worker_restarting", worker=slot.index, delay=slot.delay)
            # The back-off ends early on a stop: the loop condition then ends the slot.
            await self._back_off(slot, self._stop)

    def _next_attempt(self, slot: Slot, was_ready: bool) -> bool:
        """Account for one unexpected exit of ``slot``'s process; False: give it up."""
        if was_ready:
            # A worker that served a minute before dying is not in a crash loop: its next restart
            # is quick again. One that dies sooner keeps its doubled delay.
            if trio.current_time() - slot.ready_at >= STABLE_AFTER:
                slot.delay = self.restart_initial
            # A death after "ready" is always restarted: giving up on a worker that served would
            # shrink the pool for good over a crash that may never come again.
            return True
        # A death before "ready" is a failed start; run_child resets the count at the next
        # "ready", so only failures in a row lead to giving up.
        slot.start_failures += 1
        slot.gave_up = slot.start_failures >= self.max_start_failures
        return not slot.gave_up

    async def _back_off(self, slot: Slot, cut_short: trio.Event) -> None:
        delay = slot.delay
        # Doubled now, waited with the old value: the first restart comes after restart_initial.
        slot.delay = min(slot.delay * 2, self.restart_max)
        # Waiting on the event, not a plain sleep: a stop (or, for the mirror, the workers'
        # end) must not sit out a 30 s back-off before the supervisor can exit.
        with trio.move_on_after(delay):
            await cut_short.wait()

    def _mark_dead(self, slot: Slot) -> None:
        # After every exit, restart or not: the dead pid's livesum gauges (open connections)
        # would otherwise be summed in for ever; its counters stay, so totals never go back.
        if self.metrics_dir is not None and slot.pid is not None:
            # Imported only when metrics are on, as in _start_metrics.
            from siptap.metrics import mark_worker_dead

            mark_worker_dead(self.metrics_dir, slot.pid)

    async def _run_once(self, slot: Slot, argv: list[str], on_ready: Callable[[trio.Process], None],
                        **fields: object) -> tuple[bool, int]:
        """One run of ``slot``'s child (:func:`siptap.child_process.run_child`): (ready?, exit code)."""
        # The event names: worker_started/worker_ready or mirror_started, as the docs list them.
        name = "worker" if slot is not self.mirror else "mirror"
        return await run_child(slot, argv, name=name, log=self.log, emit=self.emit, ready_timeout=self.ready_timeout,
                               metrics_dir=self.metrics_dir, on_ready=on_ready, fields=fields)

    def _worker_ready(self, slot: Slot, process: trio.Process) -> None:
        self.log.info("worker_ready", worker=slot.index, pid=process.pid)
        # _started once every worker was ready at the same time: from then on an exit is a death
        # to restart, not a start-up failure that fails the whole run.
        if all(s.ready for s in self.slots):
            self._started = True
            self._all_ready.set()
        # A worker still starting when SIGTERM was forwarded may not have had its handler yet;
        # it is told again now that it can drain, or it would run on after the stop.
        if self.stopping:  # the stop signal went out while it was starting
            process.send_signal(signal.SIGTERM)

    # -- the mirror process ------------------------------------------------------------------------

    async def _run_mirror(self, slot: Slot, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Keep the mirror running until every worker has exited, then stop it (SIGTERM: it
        drains its channels and flushes its sinks). Started once it is first ready, or failed."""
        # run() creates the runtime directory before it starts this task (mirror set).
        assert self.runtime_dir is not None
        argv = [sys.executable, "-m", "siptap", "mirror", "--config", str(self.config.path),
                # The same path every worker is given: the mirror listens there, and a restarted mirror
                # listens there again, so the workers' taps reconnect without being told anything.
                "--channel", str(self.runtime_dir / MIRROR_SOCKET), *self.worker_args]
        # started: task_status.started() was called (it may be called only once); restarted: a
        # later "ready" is a restart and is logged as mirror_restarted.
        restarted = started = False

        def ready(process: trio.Process) -> None:
            nonlocal started
            # The first "ready" is the normal start (mirror_started/ready lines suffice); a
            # later one ends a restart, which the operator sees as one line.
            if restarted:
                self.log.info("mirror_restarted", pid=process.pid, restarts=self.mirror_restarts)
            if not started:
                started = True
                # Once only: trio raises if started() is called twice, and run() is past this point
                # after the first time anyway.
                task_status.started()
            # The workers may have ended while this mirror was being started, before slot.process
            # named it: stop_after_workers then found no live process to signal, so the SIGTERM
            # comes from here, or the mirror would run on with nobody left to stop it.
            if self._workers_done.is_set():  # every worker went while it was starting
                process.send_signal(signal.SIGTERM)

        # A task of its own: the loop below is inside run_child's wait for the mirror's exit
        # when the workers finish, and this SIGTERM is what ends that wait.
        async def stop_after_workers() -> None:
            await self._workers_done.wait()
            # No process (between restarts) or already exited: the while test ends the loop.
            if slot.process is not None and slot.process.returncode is None:
                slot.process.send_signal(signal.SIGTERM)

        try:
            async with trio.open_nursery() as nursery:
                # The while test is read only between runs: a mirror stopped by our SIGTERM ends the loop
                # through the _workers_done test after its exit, not through a restart.
                nursery.start_soon(stop_after_workers)
                while not self._workers_done.is_set():
                    was_ready, code = await self._run_once(slot, argv, ready)
                    slot.last_code = code
                    # The mirror's own metrics (sinks' sent/dropped) are in the same directory as the
                    # workers'; a dead mirror's gauges must go as a dead worker's do.
                    self._mark_dead(slot)
                    if self._workers_done.is_set():  # the answer to our SIGTERM
                        slot.stop_code = code
                        self.log.info("mirror_exited", pid=slot.pid, status=describe_exit(code))
                        break
                    detail = " | ".join(slot.stderr_tail) or None
                    # Unlike a worker, the mirror fails the run only at its very first start: no worker
                    # has started then, so nothing is lost by stopping (test_supervisor_mirror.py).
                    if not restarted and not was_ready:
                        # At start-up no worker runs yet: the run fails, as for a worker.
                        self.failure = f"the mirror process failed to start ({describe_exit(code)})" + (
                            f": {stderr_reason(slot)}" if slot.stderr_tail else "")
                        # Reached only at start-up, before any worker: _request_stop forwards to no one, and
                        # started() lets run() go on, to see self.stopping and start no worker.
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
                        # Not a failure of the run: the relay is the product, and it goes on. The metrics
                        # (siptap_mirror_dropped_total) and this error line say the observation stopped.
                        self.log.error("mirror_gave_up", attempts=slot.start_failures,
                                       detail="the mirror keeps failing at start-up; the workers relay on, "
                                              "unmirrored. Fix the cause and restart siptap")
                        break
                    # Counted before the back-off, so mirror_restarted (logged at the next "ready") says
                    # how many restarts it took.
                    self.mirror_restarts += 1
                    restarted = True
                    # Cut short by the workers' end, not by the stop signal: while workers drain, a dead
                    # mirror is still worth restarting for their last records.
                    await self._back_off(slot, self._workers_done)
                # stop_after_workers may still be waiting (the mirror gave up before the workers
                # ended): nothing is left for it to stop.
                nursery.cancel_scope.cancel()
        finally:
            # In finally: run() waits on this, so even a failure in here must not leave it waiting.
            self._mirror_stopped.set()

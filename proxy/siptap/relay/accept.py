"""The accept loop of one listening socket, and what it says when the process runs out of room.

``accept(2)`` fails with EMFILE/ENFILE (no descriptor left for this process or the
system), ENOBUFS or ENOMEM (no kernel memory) while the connection waits in the listen
backlog. :func:`trio.serve_listeners` logs each such failure with a traceback through the
standard library's ``logging`` (which siptap does not configure: it lands on stderr) and
retries every 0.1 s: hundreds of KB of tracebacks a minute and nothing in the JSON log.

This loop instead reports through the route's JSON log, rate-limited
(:class:`AcceptFailures`: the first failure at once, then a count at most every
``REPORT_INTERVAL``, and ``accept_recovered`` when accepting works again), counts every
failed attempt for a metric, and backs off without spinning: it retries when one of the
listener's own connections ends (a descriptor was freed) or after a delay doubling from
``BACKOFF_FIRST`` to ``BACKOFF_MAX``, whichever comes first. Any other error propagates.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from siptap.log import LogWriter

# accept(2)'s "no room now" errors: the connection stays queued; retrying later can work.
CAPACITY_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
REPORT_INTERVAL = 10.0
BACKOFF_FIRST = 0.05
BACKOFF_MAX = 1.0


class AcceptFailures:
    """One listener's accept failures, pure (the clock is passed in): what to log, how long
    to back off. An *episode* runs from the first failure to the next successful accept."""

    def __init__(self, *, interval: float = REPORT_INTERVAL) -> None:
        self.interval = interval
        self.total = 0  # failed attempts since start-up
        self._episode_start: float | None = None
        self._episode_failures = 0
        self._unreported = 0
        self._last_report = 0.0
        self._backoff = BACKOFF_FIRST

    def failed(self, reason: str, now: float) -> dict[str, Any] | None:
        """Record a failed attempt; the fields of an ``accept_failed`` line when one is due."""
        self.total += 1
        self._episode_failures += 1
        self._unreported += 1
        if self._episode_start is None:
            self._episode_start = now
        elif now - self._last_report < self.interval:
            return None
        fields = {"reason": reason, "count": self._unreported, "failing_for": round(now - self._episode_start, 3)}
        self._unreported = 0
        self._last_report = now
        return fields

    def backoff(self) -> float:
        """How long to wait before the next attempt (unless a connection ends first)."""
        delay = self._backoff
        self._backoff = min(BACKOFF_MAX, self._backoff * 2)
        return delay

    def succeeded(self, now: float) -> dict[str, Any] | None:
        """An accept worked; the fields of an ``accept_recovered`` line if an episode ends."""
        if self._episode_start is None:
            return None
        fields = {"failures": self._episode_failures, "failing_for": round(now - self._episode_start, 3)}
        self._episode_start = None
        self._episode_failures = self._unreported = 0
        self._backoff = BACKOFF_FIRST
        return fields


class ConnectionEnded:
    """A wake-up for accept loops in back-off: :meth:`notify` when a connection closes."""

    def __init__(self) -> None:
        self._event = trio.Event()

    def notify(self) -> None:
        self._event.set()
        self._event = trio.Event()

    async def wait(self, timeout: float) -> None:
        with trio.move_on_after(timeout):
            await self._event.wait()


DETAILS = {
    errno.EMFILE: "this process has no file descriptor left (RLIMIT_NOFILE): raise LimitNOFILE / ulimit -n, "
                  "or lower max_connections",
    errno.ENFILE: "the system has no file descriptor left (fs.file-max)",
    errno.ENOBUFS: "the kernel has no socket buffer memory left",
    errno.ENOMEM: "the kernel has no memory left for the connection",
}


async def accept_loop(listener: trio.SocketListener, handler: Callable[[trio.SocketStream], Awaitable[None]],
                      connections: trio.Nursery, *, ended: ConnectionEnded, log: Callable[[], LogWriter],
                      count_failure: Callable[[str], None]) -> None:
    """Accept on ``listener`` forever, starting ``handler(stream)`` in ``connections`` for each
    connection. ``log()``: the route's logger now, its name as the last reload gave it
    (``accept_failed``, ``accept_recovered``);
    ``count_failure(reason)``: bumps the metric, once per failed attempt."""
    failures = AcceptFailures()
    host, port = listener.socket.getsockname()[:2]
    address = f"{host}:{port}"
    async with listener:
        while True:
            try:
                stream = await listener.accept()
            except OSError as exc:
                if exc.errno not in CAPACITY_ERRNOS:
                    raise
                reason = errno.errorcode[exc.errno]
                count_failure(reason)
                report = failures.failed(reason, trio.current_time())
                if report is not None:
                    log().warning("accept_failed", address=address, strerror=os.strerror(exc.errno),
                                detail=DETAILS[exc.errno], **report)
                await ended.wait(failures.backoff())
                continue
            recovered = failures.succeeded(trio.current_time())
            if recovered is not None:
                log().info("accept_recovered", address=address, **recovered)
            connections.start_soon(handler, stream)

"""structlog set-up: JSON lines (or a console view) written by a thread, never by the relay.

The relay's tasks only render an event and put the line on a bounded queue; a writer
thread does the blocking write and flush. A stdout piped into a slow consumer therefore
cannot stall SIP forwarding: when the queue is full the line is dropped and counted, and
the count is reported once the writer catches up.
"""

from __future__ import annotations

import json
import logging
import collections
import sys
import threading
import time
from typing import IO, Any

import structlog

from proxy.config import LogSettings

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


class QueueWriter:
    """A structlog "logger" whose every method appends the rendered line to a bounded deque.

    The relay pays an append (no lock, no condition variable: deque appends are atomic);
    the writer thread wakes every ``interval`` seconds (or at once on close) and writes what
    accumulated in one write and one flush. Log lines reach stdout within ``interval``.
    """

    def __init__(self, stream: IO[str], maxsize: int = 10000, interval: float = 0.05) -> None:
        self._stream = stream
        self._lines: collections.deque[str] = collections.deque()
        self._maxsize = maxsize
        self._interval = interval
        self._wake = threading.Event()
        self._stopping = False
        self.dropped = 0
        self._reported_dropped = 0
        self._thread = threading.Thread(target=self._drain, name="siptap-log-writer", daemon=True)
        self._thread.start()

    def msg(self, line: str) -> None:
        if len(self._lines) >= self._maxsize:
            self.dropped += 1
            return
        self._lines.append(line)

    debug = info = warning = warn = error = critical = exception = fatal = log = failure = err = msg

    def _drain(self) -> None:
        while True:
            self._wake.wait(self._interval)
            self._wake.clear()
            stopping = self._stopping
            lines: list[str] = []
            popleft = self._lines.popleft
            try:
                while True:
                    lines.append(popleft())
            except IndexError:
                pass
            if self.dropped != self._reported_dropped:
                lost = self.dropped - self._reported_dropped
                self._reported_dropped = self.dropped
                lines.append(json.dumps({"event": "log_lines_dropped", "level": "warning", "count": lost}))
            if lines:
                try:
                    self._stream.write("".join(line + "\n" for line in lines))
                    self._stream.flush()
                except (OSError, ValueError):
                    pass  # stdout closed or broken: nothing sensible to do, keep the proxy alive
            if stopping:
                return

    def close(self, timeout: float = 5.0) -> None:
        self._stopping = True
        self._wake.set()
        self._thread.join(timeout)


def _timestamper() -> Any:
    """ISO 8601 UTC with microseconds; the seconds part is formatted once per second."""
    cache: list[Any] = [None, ""]

    def stamp(_logger: Any, _name: str, event_dict: dict[str, Any]) -> dict[str, Any]:
        now = time.time()
        second = int(now)
        if second != cache[0]:
            cache[0], cache[1] = second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        event_dict["timestamp"] = f"{cache[1]}.{int((now - second) * 1e6):06d}Z"
        return event_dict

    return stamp


def _json_default(value: object) -> object:
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    return str(value)


def configure(settings: LogSettings, stream: IO[str] | None = None) -> QueueWriter:
    """Configure structlog once, in main; returns the writer to close at exit."""
    writer = QueueWriter(stream or sys.stdout, settings.queue_size)
    renderer: Any
    if settings.format == "console":
        renderer = structlog.dev.ConsoleRenderer(colors=False)
    else:
        renderer = structlog.processors.JSONRenderer(default=_json_default)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            _timestamper(),
            structlog.processors.dict_tracebacks if settings.format == "json" else structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[settings.level]),
        logger_factory=lambda *args: writer,
        cache_logger_on_first_use=False,
    )
    return writer


def get_logger(name: str = "siptap") -> Any:
    return structlog.get_logger(name)

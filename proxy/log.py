"""structlog set-up: JSON lines (or a console view) written by a thread, never by the relay.

The relay's tasks only render an event and put the line on a bounded queue; a writer
thread does the blocking write and flush. A stdout piped into a slow consumer therefore
cannot stall SIP forwarding: when the queue is full the line is dropped and counted, and
the count is reported once the writer catches up.
"""

from __future__ import annotations

import json
import logging
import queue
import sys
import threading
from typing import IO, Any

import structlog

from proxy.config import LogSettings

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}
_STOP = object()


class QueueWriter:
    """A structlog "logger" whose every method enqueues the rendered line."""

    def __init__(self, stream: IO[str], maxsize: int = 10000) -> None:
        self._stream = stream
        self._queue: queue.Queue[object] = queue.Queue(maxsize)
        self.dropped = 0
        self._reported_dropped = 0
        self._thread = threading.Thread(target=self._drain, name="siptap-log-writer", daemon=True)
        self._thread.start()

    def msg(self, line: str) -> None:
        try:
            self._queue.put_nowait(line)
        except queue.Full:
            self.dropped += 1

    debug = info = warning = warn = error = critical = exception = fatal = log = failure = err = msg

    def _drain(self) -> None:
        while True:
            item = self._queue.get()
            lines: list[str] = []
            stop = False
            while True:
                if item is _STOP:
                    stop = True
                else:
                    lines.append(item)  # type: ignore[arg-type]
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
            if self.dropped != self._reported_dropped:
                lost = self.dropped - self._reported_dropped
                self._reported_dropped = self.dropped
                lines.append(json.dumps({"event": "log_lines_dropped", "level": "warning", "count": lost}))
            try:
                self._stream.write("".join(line + "\n" for line in lines))
                self._stream.flush()
            except (OSError, ValueError):
                pass  # stdout closed or broken: nothing sensible to do, keep the proxy alive
            if stop:
                return

    def close(self, timeout: float = 5.0) -> None:
        try:
            self._queue.put(_STOP, timeout=timeout)
        except queue.Full:
            return
        self._thread.join(timeout)


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
            structlog.processors.TimeStamper(fmt="iso", utc=True),
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

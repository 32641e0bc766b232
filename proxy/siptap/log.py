"""structlog set-up: JSON lines (or a console view) written by a thread, never by the relay.

The relay's tasks only render an event and put the line on a bounded queue; a writer
thread does the blocking write and flush. A stdout piped into a slow consumer therefore
cannot stall SIP forwarding: when the queue is full the line is dropped and counted, and
the count is reported once the writer catches up.
"""

from __future__ import annotations

import collections
import json
import logging
import sys
import threading
import time
from collections.abc import Callable
from json.encoder import encode_basestring_ascii as _encode_str  # what json.dumps uses for str
from typing import IO, Any, Protocol

import structlog

from siptap.config import LogSettings


class LogWriter(Protocol):
    """What siptap calls on a logger: an event name plus fields, at a level, and ``bind`` for
    fields every later event of that logger carries (``conn``, ``route``). structlog's bound
    logger in production; the relay's tests pass a logger that collects events in a list."""

    def bind(self, **fields: Any) -> LogWriter: ...
    def debug(self, event: str, **fields: Any) -> Any: ...
    def info(self, event: str, **fields: Any) -> Any: ...
    def warning(self, event: str, **fields: Any) -> Any: ...
    def error(self, event: str, **fields: Any) -> Any: ...
    def exception(self, event: str, **fields: Any) -> Any: ...


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


def _clock() -> Callable[[], str]:
    """ISO 8601 UTC with microseconds; the seconds part is formatted once per second."""
    cache: list[Any] = [None, ""]

    def now() -> str:
        now = time.time()
        second = int(now)
        if second != cache[0]:
            cache[0], cache[1] = second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{cache[1]}.{int((now - second) * 1e6):06d}Z"

    return now


def _timestamper(clock: Callable[[], str]) -> Any:
    def stamp(_logger: Any, _name: str, event_dict: dict[str, Any]) -> dict[str, Any]:
        event_dict["timestamp"] = clock()
        return event_dict

    return stamp


def _json_default(value: object) -> object:
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    return str(value)


_configured: dict[str, Any] = {}  # what configure() set up, for event_writer()


def event_writer(logger: LogWriter, event: str) -> Callable[[dict[str, Any]], None] | None:
    """A cheaper ``logger.info(event, **fields)`` for an event logged per relayed message.

    structlog's processor chain (bind, merge, level, timestamp, render) costs about 10 µs a
    call, a large share of siptap's per-message CPU. This renders the same JSON line, same
    keys in the same order (the logger's bound context, the fields, ``event``, the context
    variables, ``level``, ``timestamp``), from a prefix and suffix computed once per logger,
    and queues it on the same writer. None when it cannot (console format, info filtered
    out, structlog not configured by :func:`configure`): then log the usual way. Fields must
    not repeat a bound key.
    """
    writer = _configured.get("writer")
    if writer is None or _configured.get("format") != "json" or _LEVELS[_configured["level"]] > logging.INFO:
        return None
    try:
        context = dict(structlog.get_context(logger))  # type: ignore[arg-type]  # any LogWriter: the except below handles one that is not structlog's
    except Exception:  # not a bound structlog logger (e.g. a lazy proxy, a test's list): log the usual way
        return None
    prefix = json.dumps(context, default=_json_default)[:-1] + (", " if context else "")
    suffix = f'"event": {json.dumps(event)}'
    for key, value in structlog.contextvars.get_contextvars().items():
        suffix += f", {json.dumps(key)}: {json.dumps(value, default=_json_default)}"
    suffix += ', "level": "info", "timestamp": "'
    stamp = _configured["stamp"]
    append = writer.msg
    encode = _encode_str

    def write(fields: dict[str, Any]) -> None:
        parts = [prefix]
        for key, value in fields.items():
            kind = type(value)
            if kind is str:
                rendered = encode(value)
            elif kind is int:
                rendered = str(value)
            else:
                rendered = json.dumps(value, default=_json_default)
            parts.append(f'"{key}": {rendered}, ')
        parts.append(suffix)
        parts.append(stamp())
        parts.append('"}')
        append("".join(parts))

    return write


def configure(settings: LogSettings, stream: IO[str] | None = None) -> QueueWriter:
    """Configure structlog once, in main; returns the writer to close at exit."""
    writer = QueueWriter(stream or sys.stdout, settings.queue_size)
    clock = _clock()
    _configured.update(writer=writer, format=settings.format, level=settings.level, stamp=clock)
    renderer: Any
    if settings.format == "console":
        renderer = structlog.dev.ConsoleRenderer(colors=False)
    else:
        renderer = structlog.processors.JSONRenderer(default=_json_default)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            _timestamper(clock),
            structlog.processors.dict_tracebacks if settings.format == "json" else structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[settings.level]),
        logger_factory=lambda *args: writer,
        cache_logger_on_first_use=False,
    )
    return writer


def get_logger(name: str = "siptap") -> LogWriter:
    logger: LogWriter = structlog.get_logger(name)
    return logger

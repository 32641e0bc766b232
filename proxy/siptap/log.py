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
                    lines.append("")  # the last line's newline, without a copy of each line plus "\n"
                    self._stream.write("\n".join(lines))
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


# -- the console format ------------------------------------------------------------------------
#
# JSON lines are for jq and the tools; the console format is for a person watching a terminal.
# A line reads: time, level, event, then what that event is about (a `sip` line's method or
# status and its Call-ID), then the other fields, and the connection's context (conn, route,
# worker) last. Nested records are summarised: a `handshake_done` line is ~2,000 characters of
# JSON (certificate, client offer, secrets), one line here plus its key-log lines, which a
# person copies into a key log as they are.

# Fields shown right after the event, in this order (when present); the context goes last.
_CONSOLE_FIRST = ("call_id", "cseq", "direction", "leg", "version", "cipher", "key_exchange", "cert", "sans", "issuer",
                  "expires", "reason", "detail")
_CONSOLE_LAST = ("conn", "route", "worker", "process")
# handshake_done's members a person does not read on a terminal: the key-log lines below hold
# the same secrets in the form Wireshark takes.
_CONSOLE_DROPPED = ("client_random", "master_secret", "peer_chain_length", "role")


def _console_value(value: object) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, bytes):
        value = value.decode("utf-8", "backslashreplace")
    if isinstance(value, str):
        plain = value and not any(c.isspace() or c in "'\"=" for c in value)
        return value if plain else repr(value)
    if isinstance(value, (int, float)):
        return str(value)
    return json.dumps(value, default=_json_default, separators=(",", ":"))


def _certificate_fields(cert: object) -> dict[str, object]:
    """A peer certificate summary (subject, issuer, SANs, expiry) as a few readable fields."""
    if not isinstance(cert, dict):
        return {"cert": cert}
    out: dict[str, object] = {"cert": cert.get("subject")}
    if cert.get("sans"):
        out["sans"] = ",".join(str(name) for name in cert["sans"])
    out["issuer"] = cert.get("issuer")
    not_after = cert.get("not_after")
    out["expires"] = not_after[:10] if isinstance(not_after, str) else not_after
    return out


def _offer_summary(offer: object) -> object:
    """A ClientHello summary (versions, suites...) as "TLSv1.3,TLSv1.2 31 suites"."""
    if not isinstance(offer, dict):
        return offer
    versions = ",".join(str(v) for v in offer.get("versions") or [])
    return f"{versions} {len(offer.get('cipher_suites') or [])} suites".strip()


def console_line(event_dict: dict[str, Any]) -> str:
    """One event as the console format shows it (see the comment above)."""
    fields = dict(event_dict)
    head = [str(fields.pop("timestamp", "")), f"{fields.pop('level', 'info'):<7}", str(fields.pop("event", ""))]
    exception = fields.pop("exception", None)
    extra_lines = [str(line) for line in fields.pop("keylog", None) or []]
    if head[2] == "sip":
        # A SIP message: the method, or the status code and reason phrase, is what it is.
        method, status = fields.pop("method", None), fields.pop("status", None)
        if method is not None:
            head.append(str(method))
        elif status is not None:
            head.append(f"{status} {fields.pop('reason', '') or ''}".rstrip())
    if "peer_certificate" in fields:
        fields.update(_certificate_fields(fields.pop("peer_certificate")))
    if "client_offer" in fields:
        fields["offered"] = _offer_summary(fields.pop("client_offer"))
    if head[2] == "handshake_done":
        for name in _CONSOLE_DROPPED:
            fields.pop(name, None)
        if fields.get("session_reused") is False:
            del fields["session_reused"]
        if "extended_master_secret" in fields:
            fields["ems"] = fields.pop("extended_master_secret")
        if fields.get("client") is not None and fields.get("client") == fields.get("peer"):
            del fields["client"]  # the customer leg: the bound peer address says it already
    ordered = [name for name in _CONSOLE_FIRST if name in fields]
    ordered += [name for name in fields if name not in _CONSOLE_FIRST and name not in _CONSOLE_LAST]
    ordered += [name for name in _CONSOLE_LAST if name in fields]
    parts = head + [f"{name}={_console_value(fields[name])}" for name in ordered if fields[name] is not None]
    lines = [" ".join(part for part in parts if part)]
    lines += [f"    {line}" for line in extra_lines]
    if exception:
        lines.append(str(exception))
    return "\n".join(lines)


def _render_console(_logger: Any, _name: str, event_dict: dict[str, Any]) -> str:
    return console_line(event_dict)


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
    parts = event_parts(logger, event)
    if parts is None:
        return None
    prefix, suffix, stamp, append = parts
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


def event_parts(logger: LogWriter, event: str) -> tuple[str, str, Callable[[], str], Callable[[str], None]] | None:
    """What :func:`event_writer` renders an ``info`` line of ``event`` from, for a caller
    that renders its own fields (the mirror's ``sip`` line, per message): ``(prefix, suffix,
    stamp, append)``; a line is ``prefix``, then each field as ``"key": <JSON>, `` (a str by
    ``json.encoder.encode_basestring_ascii``, an int by ``str``, anything else by
    ``json.dumps``), then ``suffix + stamp() + '"}'``, handed to ``append``. None when
    event_writer would decline."""
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
    return prefix, suffix, _configured["stamp"], writer.msg


def configure(settings: LogSettings, stream: IO[str] | None = None) -> QueueWriter:
    """Configure structlog once, in main; returns the writer to close at exit."""
    writer = QueueWriter(stream or sys.stdout, settings.queue_size)
    clock = _clock()
    _configured.update(writer=writer, format=settings.format, level=settings.level, stamp=clock)
    renderer: Any
    if settings.format == "console":
        renderer = _render_console
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

"""The log writer never blocks its caller: bounded, counted, flushed on close."""

from __future__ import annotations

import io
import json
import threading

from siptap.config import LogSettings
from siptap.log import QueueWriter, configure, get_logger


class BlockedStream(io.StringIO):
    """A stdout whose reader is stuck until released."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()

    def write(self, text: str) -> int:
        self.release.wait(10)
        return super().write(text)


def test_full_queue_drops_and_reports_instead_of_blocking() -> None:
    stream = BlockedStream()
    writer = QueueWriter(stream, maxsize=10, interval=0.01)
    for i in range(1000):  # returns at once although nothing can be written
        writer.msg(json.dumps({"event": "x", "i": i}))
    assert writer.dropped > 0
    stream.release.set()
    writer.close()
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    written = [line for line in lines if line["event"] == "x"]
    reported = [line for line in lines if line["event"] == "log_lines_dropped"]
    assert len(written) + sum(r["count"] for r in reported) == 1000


def test_json_lines_with_utc_timestamp_and_bytes() -> None:
    stream = io.StringIO()
    writer = configure(LogSettings(), stream)
    get_logger().info("sip", payload=b"OPTIONS \xff", call_id="a@b")
    writer.close()
    event = json.loads(stream.getvalue())
    assert event["event"] == "sip" and event["level"] == "info"
    assert event["payload"] == "OPTIONS \\xff"
    assert event["timestamp"].endswith("Z") and len(event["timestamp"]) == len("2026-01-01T00:00:00.000000Z")


def test_event_writer_renders_what_structlog_renders() -> None:
    import structlog

    from siptap.log import event_writer

    stream = io.StringIO()
    writer = configure(LogSettings(format="json", level="info"), stream)
    structlog.contextvars.bind_contextvars(worker=2)
    try:
        log = get_logger().bind(conn="ab-1", route="lab", peer="127.0.0.1:5555")
        fields = {"direction": "customer->core", "size": 12, "method": "INVITE", "call_id": 'a"\u00e9\\b',
                  "cseq": "1 INVITE", "status": None, "payload": b"\xffSIP"}
        write = event_writer(log, "sip")
        assert write is not None
        write(dict(fields))
        log.info("sip", **fields)
    finally:
        structlog.contextvars.unbind_contextvars("worker")
        writer.close()
    fast, slow = (json.loads(line) for line in stream.getvalue().splitlines())
    assert abs(len(fast.pop("timestamp")) - len(slow.pop("timestamp"))) == 0
    assert list(fast.items()) == list(slow.items())


def test_event_writer_declines_console_and_filtered_levels() -> None:
    from siptap.log import event_writer

    for settings in (LogSettings(format="console"), LogSettings(level="warning")):
        writer = configure(settings, io.StringIO())
        try:
            assert event_writer(get_logger(), "sip") is None
        finally:
            writer.close()


def test_event_writer_declines_a_logger_without_bound_context() -> None:
    from siptap.log import event_writer

    writer = configure(LogSettings(format="json", level="info"), io.StringIO())
    try:
        assert event_writer(object(), "sip") is None
    finally:
        writer.close()

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


def test_console_line_puts_the_event_and_what_it_is_about_first() -> None:
    from siptap.log import console_line

    line = console_line({"conn": "ab-1", "route": "lab", "direction": "core->customer", "size": 300, "status": 486,
                         "reason": "Busy Here", "call_id": "c1@h", "cseq": "1 INVITE", "event": "sip",
                         "level": "info", "timestamp": "2026-01-01T00:00:00.000000Z"})
    assert line == ("2026-01-01T00:00:00.000000Z info    "
                    "sip 486 Busy Here call_id=c1@h cseq='1 INVITE' direction=core->customer size=300 conn=ab-1 route=lab")


def test_console_line_summarises_a_handshake_and_keeps_tracebacks() -> None:
    from siptap.log import console_line

    cert = {"subject": "CN=esbc1", "issuer": "CN=Customer CA", "serial": "0A", "not_before": "2026-01-01T00:00:00Z",
            "not_after": "2027-01-01T00:00:00Z", "sha256": "AB:" * 31 + "AB", "sans": ["DNS:esbc1"], "common_name": "esbc1"}
    offer = {"versions": ["TLSv1.2"], "cipher_suites": ["TLS_RSA_WITH_AES_128_GCM_SHA256"] * 30, "sni": None}
    line = console_line({"conn": "ab-1", "leg": "customer", "role": "server", "version": "TLSv1.2",
                         "cipher": "AES128-GCM-SHA256", "key_exchange": "RSA", "extended_master_secret": True,
                         "session_reused": False, "sni": None, "client_random": "00" * 32, "master_secret": "11" * 48,
                         "keylog": ["CLIENT_RANDOM " + "00" * 32 + " " + "11" * 48], "client_offer": offer,
                         "peer_certificate": cert, "peer_chain_length": 1, "event": "handshake_done",
                         "level": "info", "timestamp": "T"})
    first, keylog = line.split("\n")
    assert first == ("T info    handshake_done leg=customer version=TLSv1.2 cipher=AES128-GCM-SHA256 key_exchange=RSA "
                     "cert='CN=esbc1' sans=DNS:esbc1 issuer='CN=Customer CA' expires=2027-01-01 offered='TLSv1.2 30 suites' "
                     "ems=yes conn=ab-1")
    assert keylog == "    CLIENT_RANDOM " + "00" * 32 + " " + "11" * 48
    failed = console_line({"event": "session_crashed", "level": "error", "timestamp": "T",
                           "exception": "Traceback (most recent call last):\n  ...\nValueError: x"})
    assert failed.splitlines()[0] == "T error   session_crashed" and failed.endswith("ValueError: x")

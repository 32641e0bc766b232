"""The relay without sockets or TLS: a list-collecting log writer, legs over trio's memory
streams, handshake records, a session plan, and SIP messages to send through them."""

from __future__ import annotations

from typing import Any

import trio
from OpenSSL import SSL

from siptap.config import ClientTlsSettings, Limits, LogSettings
from siptap.mirror.events import MirrorEvent
from siptap.relay.feed import MirrorFeed
from siptap.relay.plan import SessionPlan
from siptap.sansio import chunk_records
from siptap.sansio.handshake import HandshakeFacts


class RecordingLog:
    """A :class:`siptap.log.LogWriter` that keeps every event as a dict: the bound fields,
    the event's own fields, ``event`` and ``level`` (what a JSON log line would hold)."""

    def __init__(self, events: list[dict[str, Any]] | None = None, bound: dict[str, Any] | None = None) -> None:
        self.events: list[dict[str, Any]] = [] if events is None else events
        self._bound = bound or {}

    def bind(self, **fields: Any) -> RecordingLog:
        return RecordingLog(self.events, {**self._bound, **fields})

    def _emit(self, level: str, event: str, fields: dict[str, Any]) -> None:
        self.events.append({**self._bound, **fields, "event": event, "level": level})

    def debug(self, event: str, **fields: Any) -> None:
        self._emit("debug", event, fields)

    def info(self, event: str, **fields: Any) -> None:
        self._emit("info", event, fields)

    def warning(self, event: str, **fields: Any) -> None:
        self._emit("warning", event, fields)

    def error(self, event: str, **fields: Any) -> None:
        self._emit("error", event, fields)

    def exception(self, event: str, **fields: Any) -> None:
        self._emit("error", event, fields)

    def find(self, event: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["event"] == event]

    def names(self) -> list[str]:
        return [e["event"] for e in self.events]


class MemoryLeg:
    """A handshaken leg as the session sees it (:class:`siptap.relay.session.HandshakenStream`),
    over a trio memory stream instead of TLS over TCP. An EOF counts as close_notify unless
    the test sets ``eof_without_close_notify`` first (a peer that dropped TCP)."""

    def __init__(self, stream: trio.abc.HalfCloseableStream, facts: HandshakeFacts) -> None:
        self._stream = stream
        # Already summarised (no DER to hand over): the session hands it over as it is.
        self.handshake: HandshakeFacts | None = facts
        self.eof_without_close_notify = False
        self.closed = False

    @property
    def facts(self) -> HandshakeFacts | None:
        return self.handshake

    def discard_facts(self) -> None:
        self.handshake = None

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        return bytes(await self._stream.receive_some(max_bytes))

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self._stream.send_all(data)

    async def send_eof(self) -> None:
        await self._stream.send_eof()

    async def aclose(self) -> None:
        self.closed = True
        await self._stream.aclose()


def handshake(leg: str) -> HandshakeFacts:
    """A completed RSA handshake's record for ``leg`` (customer: siptap was the server)."""
    return HandshakeFacts(
        leg=leg, role="server" if leg == "customer" else "client", version="TLSv1.2",
        cipher="AES256-GCM-SHA384", key_exchange="RSA", extended_master_secret=True, session_reused=False,
        sni="sbc.example.com", client_random="ab" * 32, master_secret="cd" * 48,
        keylog_lines=(f"CLIENT_RANDOM {'ab' * 32} {'cd' * 48}",), peer_chain=(),
    )


def plan(feed: MirrorFeed | None = None, *, idle_timeout: float = 0.0, half_close_timeout: float = 5.0,
         log: LogSettings | None = None) -> SessionPlan:
    """A forward route's plan. Its TLS contexts are placeholders: relay_session never reads
    them (it gets handshaken streams and a dial function)."""
    unused = SSL.Context(SSL.TLS_METHOD)
    return SessionPlan(
        route="lab", accepted_leg="customer", dialled_leg="core", server_context=unused, client_context=unused,
        client_settings=ClientTlsSettings(cert=None, key=None, ca=None),
        upstreams=(), limits=Limits(idle_timeout=idle_timeout, half_close_timeout=half_close_timeout),
        log_settings=log or LogSettings(), feed=feed if feed is not None else RecordingFeed(),
    )


class RecordingFeed:
    """A :class:`siptap.relay.feed.MirrorFeed` that keeps every record the relay hands over,
    decoded, in order (a chunk as the mirror would decode it, with its time set to 0)."""

    def __init__(self) -> None:
        self.records: list[chunk_records.Record] = []
        self.forgotten: list[int] = []
        self._changed = trio.Event()

    def chunk(self, conn: int, direction: int, offset: int, data: bytes) -> None:
        self._keep(chunk_records.Chunk(conn, direction, offset, 0.0, data))

    def record(self, conn: int, encoded: bytes) -> None:
        record = chunk_records.decode(encoded)
        assert record.conn == conn
        self._keep(record)

    def forget(self, conn: int) -> None:
        self.forgotten.append(conn)

    def _keep(self, record: chunk_records.Record) -> None:
        self.records.append(record)
        self._changed.set()
        self._changed = trio.Event()

    async def wait_for(self, count: int) -> None:
        while len(self.records) < count:
            await self._changed.wait()


CALL_ID = "a84b4c76e66710@pc33.example.com"
INLINE = "WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz"
SDP = (
    b"v=0\r\no=- 1 1 IN IP4 192.0.2.10\r\ns=-\r\nc=IN IP4 192.0.2.10\r\nt=0 0\r\n"
    b"m=audio 49170 RTP/SAVP 0\r\n"
    + f"a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{INLINE}|2^20|1:4\r\n".encode()
)


def sip(first_line: str, cseq: str, *, body: bytes = b"", call_id: str = CALL_ID) -> bytes:
    """One SIP message with the headers a stream framer and the log need."""
    head = (
        f"{first_line}\r\n"
        "Via: SIP/2.0/TLS 192.0.2.10:40000;branch=z9hG4bK776asdhds\r\n"
        "From: <sip:alice@example.com>;tag=1928301774\r\n"
        "To: <sip:bob@example.com>\r\n"
        f"Call-ID: {call_id}\r\n"
        f"CSeq: {cseq}\r\n"
        + ("Content-Type: application/sdp\r\n" if body else "")
        + f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


INVITE = sip("INVITE sip:bob@example.com SIP/2.0", "1 INVITE", body=SDP)
OK = sip("SIP/2.0 200 OK", "1 INVITE", body=SDP)
BYE = sip("BYE sip:bob@example.com SIP/2.0", "2 BYE")


async def receive_exactly(stream: trio.abc.ReceiveStream, size: int) -> bytes:
    """``size`` bytes from ``stream``, however they were chunked; fewer only at EOF."""
    data = b""
    while len(data) < size:
        chunk = await stream.receive_some(size - len(data))
        if not chunk:
            break
        data += chunk
    return data


async def receive_until_eof(stream: trio.abc.ReceiveStream) -> bytes:
    data = b""
    while chunk := await stream.receive_some():
        data += chunk
    return data


class Published(list[MirrorEvent]):
    """A publish callable (the fan-out's place) that keeps what it was given, in order; a test
    can wait until a given number of events arrived."""

    def __init__(self) -> None:
        super().__init__()
        self._changed = trio.Event()

    def __call__(self, event: MirrorEvent) -> bool:
        self.append(event)
        self._changed.set()
        self._changed = trio.Event()
        return True

    async def wait_for(self, count: int) -> None:
        while len(self) < count:
            await self._changed.wait()

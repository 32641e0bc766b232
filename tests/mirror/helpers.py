"""Builders for mirror tests: legs, a seven-message SIP dialog, handshake facts, SDES keys,
a recording sink, and real local peers (UDP/TCP/Unix readers)."""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path

import trio

from siptap.mirror.events import ConnectionClosed, KeyEvent, LegInfo, MirrorEvent, SipEvent, SrtpKeyEvent
from siptap.mirror.sink import Sink
from siptap.sansio.handshake import HandshakeFacts
from siptap.sansio.sdp_crypto import parse_sdp_crypto
from siptap.sansio.sip_message import parse_message

TS = 1_700_000_000.25
CALL_ID = "a84b4c76e66710@pc33.example.com"
CUSTOMER = LegInfo("c1", "lab", "customer", ("192.0.2.10", 40000), ("192.0.2.1", 5061))
CORE = LegInfo("c1", "lab", "core", ("192.0.2.1", 45000), ("198.51.100.7", 5061))

SDP = (
    b"v=0\r\no=- 1 1 IN IP4 192.0.2.10\r\ns=-\r\nc=IN IP4 192.0.2.10\r\nt=0 0\r\n"
    b"m=audio 49170 RTP/SAVP 0\r\n"
    b"a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz|2^20|1:4\r\n"
)


def sip(first_line: str, cseq: str, *, call_id: str = CALL_ID, body: bytes = b"", to_tag: bool = False) -> bytes:
    head = (
        f"{first_line}\r\n"
        "Via: SIP/2.0/TLS 192.0.2.10:40000;branch=z9hG4bK776asdhds\r\n"
        "From: <sip:alice@example.com>;tag=1928301774\r\n"
        f"To: <sip:bob@example.com>{';tag=a6c85cf' if to_tag else ''}\r\n"
        f"Call-ID: {call_id}\r\n"
        f"CSeq: {cseq}\r\n"
        + ("Content-Type: application/sdp\r\n" if body else "")
        + f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def dialog(call_id: str = CALL_ID) -> list[tuple[bool, bytes]]:
    """INVITE/100/180/200/ACK/BYE/200 as (from_client, bytes) on a leg whose client calls."""
    return [
        (True, sip("INVITE sip:bob@example.com SIP/2.0", "1 INVITE", call_id=call_id, body=SDP)),
        (False, sip("SIP/2.0 100 Trying", "1 INVITE", call_id=call_id)),
        (False, sip("SIP/2.0 180 Ringing", "1 INVITE", call_id=call_id, to_tag=True)),
        (False, sip("SIP/2.0 200 OK", "1 INVITE", call_id=call_id, to_tag=True)),
        (True, sip("ACK sip:bob@example.com SIP/2.0", "1 ACK", call_id=call_id, to_tag=True)),
        (True, sip("BYE sip:bob@example.com SIP/2.0", "2 BYE", call_id=call_id, to_tag=True)),
        (False, sip("SIP/2.0 200 OK", "2 BYE", call_id=call_id, to_tag=True)),
    ]


EXPECTED = [("INVITE", ""), ("", "100"), ("", "180"), ("", "200"), ("ACK", ""), ("BYE", ""), ("", "200")]


def sip_event(data: bytes, from_client: bool = True, leg: LegInfo = CUSTOMER, ts: float = TS) -> SipEvent:
    return SipEvent(ts, leg, from_client, data, parse_message(data))


def dialog_events(leg: LegInfo = CUSTOMER, call_id: str = CALL_ID, ts: float = TS) -> list[SipEvent]:
    return [sip_event(data, fc, leg, ts + i * 0.01) for i, (fc, data) in enumerate(dialog(call_id))]


CLIENT_RANDOM = "ab" * 32
MASTER = "cd" * 48


def facts(leg: str = "customer") -> HandshakeFacts:
    return HandshakeFacts(
        leg=leg,
        role="server" if leg == "customer" else "client",
        version="TLSv1.2",
        cipher="AES256-GCM-SHA384",
        key_exchange="RSA",
        extended_master_secret=True,
        session_reused=False,
        sni="sbc.example.com",
        client_random=CLIENT_RANDOM,
        master_secret=MASTER,
        keylog_lines=("RSA 0c9fb8c80400a86c " + "03" * 48, f"CLIENT_RANDOM {CLIENT_RANDOM} {MASTER}"),
        peer_chain=(),
    )


def key_event(leg: LegInfo = CUSTOMER, ts: float = TS) -> KeyEvent:
    return KeyEvent(ts, leg, facts(leg.leg))


def srtp_event(leg: LegInfo = CUSTOMER, ts: float = TS) -> SrtpKeyEvent:
    (key,) = parse_sdp_crypto(SDP)
    return SrtpKeyEvent(ts, leg, True, CALL_ID, "INVITE", key)


def closed(leg: LegInfo = CUSTOMER, ts: float = TS + 1) -> ConnectionClosed:
    return ConnectionClosed(ts, leg, 1.0, 1000, 900, 7, "client closed")


class Recorder(Sink):
    """Keeps what it gets; optionally waits on a gate first or crashes on chosen events."""

    def __init__(self, name: str = "rec", *, gate: trio.Event | None = None, all_legs: bool = False,
                 crash_first: int = 0) -> None:
        super().__init__(name)
        self.events: list[MirrorEvent] = []
        self.gate = gate
        self.all_legs = all_legs
        self.crash_first = crash_first

    async def handle(self, event: MirrorEvent) -> None:
        if self.gate is not None:
            await self.gate.wait()
        if self.crash_first:
            self.crash_first -= 1
            raise RuntimeError("sink bug")
        self.events.append(event)
        self.sent_one()


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """A port nothing listens on right now (bound, then released)."""
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def udp_reader() -> trio.socket.SocketType:
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    await sock.bind(("127.0.0.1", 0))
    return sock


async def recv_datagrams(sock: trio.socket.SocketType, count: int, timeout: float = 5.0) -> list[bytes]:
    out = []
    with trio.fail_after(timeout):
        while len(out) < count:
            out.append(await sock.recv(70000))
    return out


async def read_until(stream: trio.abc.ReceiveStream, done: Callable[[bytes], bool], timeout: float = 5.0) -> bytes:
    """Read a stream until ``done(buffer)`` is true."""
    buf = b""
    with trio.fail_after(timeout):
        while not done(buf):
            chunk = await stream.receive_some(65536)
            if not chunk:
                break
            buf += chunk
    return buf


async def unix_listener(path: Path, kind: int = socket.SOCK_STREAM) -> trio.socket.SocketType:
    sock = trio.socket.socket(socket.AF_UNIX, kind)
    await sock.bind(str(path))
    if kind == socket.SOCK_STREAM:
        sock.listen(8)
    return sock

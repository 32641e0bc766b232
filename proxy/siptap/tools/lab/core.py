"""A lab core SBC: a TLS server (standard-library ssl, mutual TLS) that answers SIP.

Framed with siptap's own framer; answers from :class:`siptap.tools.lab.sip.LabUas`. Records what it
received so tests can compare both ends. CRLFCRLF pings get a CRLF pong (RFC 5626).
"""

from __future__ import annotations

import functools
import ssl
from dataclasses import dataclass, field
from pathlib import Path

import trio

from siptap.sansio.sip_framer import KeepAlive, SipFramer, SipMessage
from siptap.sansio.sip_message import parse_message
from siptap.tools.lab.sip import LabUas


def core_context(certs: Path, *, cert: str = "core", require_client_cert: bool = True,
                 minimum: ssl.TLSVersion = ssl.TLSVersion.TLSv1_2, ciphers: str | None = None) -> ssl.SSLContext:
    """Python's default server cipher list has no RSA key exchange: pass ``ciphers`` to act as
    an E-SBC that accepts it (the reverse route dials E-SBCs with RSA suites only)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    if ciphers:
        ctx.set_ciphers(ciphers)
    ctx.load_cert_chain(certs / f"{cert}.pem", certs / f"{cert}.key")
    ctx.minimum_version = minimum
    if require_client_cert:
        ctx.load_verify_locations(certs / "ca.pem")
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


@dataclass
class LabCore:
    context: ssl.SSLContext
    uas: LabUas = field(default_factory=LabUas)
    received: list[bytes] = field(default_factory=list)
    peers: list[dict[str, object]] = field(default_factory=list)  # verified client certificates (getpeercert())
    connections: int = 0
    close_after: int | None = None  # close each connection after this many requests (tests)
    message_received: trio.Event = field(default_factory=trio.Event)

    async def serve(self, host: str = "127.0.0.1", port: int = 0, *,
                    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(port, host=host)
        task_status.started(listeners[0].socket.getsockname()[1])
        await trio.serve_listeners(self._handle, listeners)

    async def _handle(self, tcp: trio.SocketStream) -> None:
        self.connections += 1
        stream = trio.SSLStream(tcp, self.context, server_side=True)
        framer = SipFramer()
        handled = 0
        try:
            await stream.do_handshake()
            self.peers.append(stream.getpeercert() or {})
            while data := await stream.receive_some(65536):
                for event in framer.feed(bytes(data)):  # trio types it bytes | bytearray; ssl gives bytes
                    if isinstance(event, KeepAlive) and event.kind == "ping":
                        await stream.send_all(b"\r\n")
                    elif isinstance(event, SipMessage):
                        self.received.append(event.data)
                        self.message_received.set()
                        self.message_received = trio.Event()
                        view = parse_message(event.data, event.header_end)
                        for answer in self.uas.answer(view):
                            await stream.send_all(answer)
                        handled += 1
                        if self.close_after is not None and handled >= self.close_after:
                            return
        except (trio.BrokenResourceError, ssl.SSLError):
            pass
        finally:
            with trio.move_on_after(2) as scope:
                scope.shield = True
                await stream.aclose()


async def start_lab_core(nursery: trio.Nursery, certs: Path, *, close_after: int | None = None) -> tuple[LabCore, int]:
    core = LabCore(core_context(certs), close_after=close_after)
    port = await nursery.start(functools.partial(core.serve))
    return core, port

"""A lab customer E-SBC: stdlib-ssl TLS client with a client certificate and an E-SBC's
cipher offer (ECDHE first, RSA last), driving SIP dialogs over one long-lived connection."""

from __future__ import annotations

import ssl
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import trio

from siptap.sansio.sip_framer import KeepAlive, SipFramer, SipMessage
from siptap.sansio.sip_message import SipMessageView, parse_message
from siptap.tools.lab.sip import request, sdp

# The cipher offer of a Sangoma IMG 2020 E-SBC (design.md): ECDHE/DHE first, RSA last.
IMG2020_CIPHERS = (
    "ECDHE-RSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-SHA384:ECDHE-RSA-AES256-SHA:"
    "DHE-RSA-AES256-GCM-SHA384:DHE-RSA-AES256-SHA256:DHE-RSA-AES256-SHA:"
    "ECDHE-RSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-SHA256:ECDHE-RSA-AES128-SHA:"
    "DHE-RSA-AES128-GCM-SHA256:DHE-RSA-AES128-SHA256:DHE-RSA-AES128-SHA:"
    "AES256-GCM-SHA384:AES256-SHA256:AES256-SHA:AES128-GCM-SHA256:AES128-SHA256:AES128-SHA"
)


def customer_context(certs: Path, *, cert: str | None = "customer", ciphers: str = IMG2020_CIPHERS,
                     maximum: ssl.TLSVersion = ssl.TLSVersion.TLSv1_3) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(certs / "ca.pem")
    if cert:
        ctx.load_cert_chain(certs / f"{cert}.pem", certs / f"{cert}.key")
    ctx.set_ciphers(ciphers)
    ctx.maximum_version = maximum
    return ctx


@dataclass
class CustomerSession:
    """One TLS connection to siptap; sends requests and collects responses by Call-ID."""

    stream: trio.SSLStream
    framer: SipFramer = field(default_factory=SipFramer)
    pending: list[SipMessageView] = field(default_factory=list)
    sent: list[bytes] = field(default_factory=list)
    received: list[bytes] = field(default_factory=list)
    pongs: int = 0

    @classmethod
    async def connect(cls, host: str, port: int, context: ssl.SSLContext, server_name: str = "localhost") -> CustomerSession:
        tcp = await trio.open_tcp_stream(host, port)
        stream = trio.SSLStream(tcp, context, server_hostname=server_name)
        await stream.do_handshake()
        return cls(stream)

    async def send(self, data: bytes) -> None:
        self.sent.append(data)
        await self.stream.send_all(data)

    async def next_message(self) -> SipMessageView:
        while not self.pending:
            data = await self.stream.receive_some(65536)
            if not data:
                raise EOFError("siptap closed the connection")
            for event in self.framer.feed(bytes(data)):  # trio types it bytes | bytearray; ssl gives bytes
                if isinstance(event, SipMessage):
                    self.received.append(event.data)
                    self.pending.append(parse_message(event.data, event.header_end))
                elif isinstance(event, KeepAlive):
                    self.pongs += 1
        return self.pending.pop(0)

    async def final_response(self) -> SipMessageView:
        while True:
            view = await self.next_message()
            if view.status_code is not None and view.status_code >= 200:
                return view

    async def ping(self) -> None:
        """RFC 5626 CRLF keepalive; the pong arrives before the next response."""
        await self.stream.send_all(b"\r\n\r\n")

    async def options(self) -> SipMessageView:
        call_id = f"{uuid.uuid4()}@customer.invalid"
        await self.send(request("OPTIONS", call_id=call_id, cseq=1, from_tag="opt", branch=_branch()))
        return await self.final_response()

    async def call(self, *, media_port: int = 30000) -> list[str]:
        """INVITE/100/180/200/ACK/BYE/200; returns the status codes seen, in order."""
        call_id = f"{uuid.uuid4()}@customer.invalid"
        tag = uuid.uuid4().hex[:8]
        body = sdp("127.0.0.1", media_port, bytes(range(100, 130)))
        await self.send(request("INVITE", call_id=call_id, cseq=1, from_tag=tag, branch=_branch(), body=body))
        codes: list[str] = []
        while True:
            view = await self.next_message()
            codes.append(str(view.status_code))
            if view.status_code and view.status_code >= 200:
                break
        to_tag = view.to_tag
        await self.send(request("ACK", call_id=call_id, cseq=1, from_tag=tag, to_tag=to_tag, branch=_branch()))
        await self.send(request("BYE", call_id=call_id, cseq=2, from_tag=tag, to_tag=to_tag, branch=_branch()))
        bye = await self.final_response()
        codes.append(str(bye.status_code))
        return codes

    async def aclose(self) -> None:
        await self.stream.aclose()


def _branch() -> str:
    return "z9hG4bK" + uuid.uuid4().hex[:16]

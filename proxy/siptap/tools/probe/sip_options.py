"""The SIP check: an OPTIONS over the established TLS connection, as an SBC pinging a trunk sends it."""

from __future__ import annotations

import secrets

import trio

from siptap import __version__
from siptap.sansio.sip_framer import SipFramer, SipMessage
from siptap.sansio.sip_message import SipParseError, parse_message
from siptap.tls.stream import OpenSSLStream
from siptap.tools.probe.handshake import cause
from siptap.tools.probe.report import SipResult

# A clean close without a TLS alert (scan.py: not a certificate refusal by itself).
CLOSED_WITHOUT_ANSWER = "the endpoint closed the connection without a final response"


def options_request(server_name: str, port: int, local: tuple[str, int], *, call_id: str | None = None) -> bytes:
    """A SIP OPTIONS for the endpoint, as an SBC pinging a trunk would send it (RFC 3261 11)."""
    local_host = f"[{local[0]}]" if ":" in local[0] else local[0]
    target = f"[{server_name}]" if ":" in server_name else server_name
    call_id = call_id or f"{secrets.token_hex(8)}@siptap-probe"
    lines = [
        f"OPTIONS sip:{target}:{port};transport=tls SIP/2.0",
        f"Via: SIP/2.0/TLS {local_host}:{local[1]};branch=z9hG4bK{secrets.token_hex(8)};rport",
        "Max-Forwards: 70",
        f"From: <sip:siptap-probe@{local_host}>;tag={secrets.token_hex(4)}",
        f"To: <sip:{target}>",
        f"Call-ID: {call_id}",
        "CSeq: 1 OPTIONS",
        f"Contact: <sip:siptap-probe@{local_host}:{local[1]};transport=tls>",
        "Accept: application/sdp",
        f"User-Agent: siptap-probe/{__version__}",
        "Content-Length: 0",
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def send_options(stream: OpenSSLStream, server_name: str, port: int, timeout: float) -> SipResult:
    sock = getattr(stream.transport_stream, "socket", None)
    try:
        local = sock.getsockname()[:2] if sock is not None else ("127.0.0.1", 0)
    except OSError:
        local = ("127.0.0.1", 0)
    call_id = f"{secrets.token_hex(8)}@siptap-probe"
    request = options_request(server_name, port, (str(local[0]), int(local[1])), call_id=call_id)
    try:
        await stream.send_all(request)
    except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
        return SipResult(sent=False, closed=True, detail=f"sending failed: {cause(exc)}")
    framer = SipFramer()
    provisional: list[str] = []
    with trio.move_on_after(timeout):
        while True:
            try:
                data = await stream.receive_some(65536)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                return SipResult(sent=True, provisional=tuple(provisional), closed=True,
                                 detail=f"connection failed: {cause(exc)}")
            if not data:
                return SipResult(sent=True, provisional=tuple(provisional), closed=True,
                                 detail=CLOSED_WITHOUT_ANSWER)
            for event in framer.feed(data):
                if not isinstance(event, SipMessage):
                    continue
                try:
                    view = parse_message(event.data, event.header_end)
                except SipParseError:
                    continue
                if view.is_request or view.status_code is None:
                    continue
                line = event.data.split(b"\r\n", 1)[0].decode("utf-8", "replace")
                if view.status_code < 200:
                    provisional.append(line)
                    continue
                detail = "" if view.call_id == call_id else f"Call-ID {view.call_id!r} is not ours"
                return SipResult(sent=True, status_line=line, status_code=view.status_code,
                                 provisional=tuple(provisional), detail=detail)
    return SipResult(sent=True, provisional=tuple(provisional), detail=f"no final response within {timeout:g} s")

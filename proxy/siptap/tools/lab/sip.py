"""Pure SIP message building for the lab peers: requests of a dialog and the UAS's answers.

No I/O: the lab core feeds framed requests to :func:`answer` and sends what comes back;
the lab customer builds its dialogs with :func:`request`.
"""

from __future__ import annotations

import base64
import itertools

from siptap.sansio.sip_message import SipMessageView

_tags = itertools.count(1)

SDP_TEMPLATE = (
    "v=0\r\n"
    "o=- {sess} 1 IN IP4 {addr}\r\n"
    "s=siptap lab\r\n"
    "c=IN IP4 {addr}\r\n"
    "t=0 0\r\n"
    "m=audio {port} RTP/SAVP 0 8 101\r\n"
    "a=rtpmap:0 PCMU/8000\r\n"
    "a=rtpmap:8 PCMA/8000\r\n"
    "a=rtpmap:101 telephone-event/8000\r\n"
    "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{inline}\r\n"
)


def sdp(addr: str, port: int, key: bytes, session: int = 1) -> bytes:
    """An SDES SDP offer/answer: `key` is the 30-byte master key + salt (16 + 14)."""
    inline = base64.b64encode(key).decode()
    return SDP_TEMPLATE.format(sess=session, addr=addr, port=port, inline=inline).encode()


def request(
    method: str,
    *,
    call_id: str,
    cseq: int,
    from_tag: str,
    to_tag: str | None = None,
    branch: str,
    via_host: str = "127.0.0.1:5099",
    uri: str = "sip:core@lab.invalid",
    body: bytes = b"",
    content_type: str = "application/sdp",
    cseq_method: str | None = None,
) -> bytes:
    lines = [
        f"{method} {uri} SIP/2.0",
        f"Via: SIP/2.0/TLS {via_host};branch={branch}",
        "Max-Forwards: 70",
        f"From: <sip:esbc@customer.invalid>;tag={from_tag}",
        f"To: <{uri}>" + (f";tag={to_tag}" if to_tag else ""),
        f"Call-ID: {call_id}",
        f"CSeq: {cseq} {cseq_method or method}",
        f"Contact: <sip:esbc@{via_host};transport=tls>",
        "User-Agent: siptap-lab-customer",
    ]
    if body:
        lines.append(f"Content-Type: {content_type}")
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def response(view: SipMessageView, status: int, reason: str, *, to_tag: str | None = None,
             body: bytes = b"", content_type: str = "application/sdp") -> bytes:
    """A response echoing the request's Via(s), From, To (with our tag), Call-ID and CSeq."""
    lines = [f"SIP/2.0 {status} {reason}"]
    for name in ("Via", "From"):
        lines += [f"{name}: {value}" for value in view.header(name)]
    to = view.header("To")
    if to:
        value = to[0]
        if to_tag and view.to_tag is None:
            value += f";tag={to_tag}"
        lines.append(f"To: {value}")
    lines.append(f"Call-ID: {view.call_id}")
    lines.append(f"CSeq: {view.cseq_number} {view.cseq_method}")
    lines.append("Server: siptap-lab-core")
    if body:
        lines.append(f"Content-Type: {content_type}")
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


class LabUas:
    """The core's answers: enough of a UAS to complete OPTIONS and INVITE/ACK/BYE dialogs."""

    def __init__(self, media_addr: str = "127.0.0.1", media_port: int = 40000) -> None:
        self.media_addr = media_addr
        self.media_port = media_port
        self.to_tags: dict[str, str] = {}

    def answer(self, view: SipMessageView) -> list[bytes]:
        if not view.is_request:
            return []
        method = view.method or ""
        if method == "ACK":
            return []
        tag = self.to_tags.setdefault(view.call_id or "", f"core{next(_tags)}")
        if method == "INVITE":
            key = bytes(range(30))
            return [
                response(view, 100, "Trying"),
                response(view, 180, "Ringing", to_tag=tag),
                response(view, 200, "OK", to_tag=tag, body=sdp(self.media_addr, self.media_port, key, 2)),
            ]
        if method == "BYE":
            self.to_tags.pop(view.call_id or "", None)
        if method in ("OPTIONS", "BYE", "REGISTER", "UPDATE", "INFO", "NOTIFY", "MESSAGE", "CANCEL"):
            return [response(view, 200, "OK", to_tag=tag)]
        return [response(view, 405, "Method Not Allowed", to_tag=tag)]

"""Asking an OCSP responder: one HTTP POST over trio, bounded by a timeout.

OCSP over HTTP is one small POST (RFC 6960 appendix A) and one small answer. trio has no HTTP
client; httpx would bring anyio, httpcore, certifi, idna and sniffio for it. h11 (sans-IO
HTTP/1.1, pure Python, no dependencies) does the part worth not writing by hand: framing
the answer whatever the responder sends (Content-Length, chunked, or close-delimited), and
refusing what is not HTTP. The socket work around it is a dozen lines of trio.

``http://`` only: OCSP over HTTPS would need a TLS check that itself wants revocation
checking, and responders serve plain HTTP by convention (the response is signed).
Every failure, including the timeout, is an :class:`OcspUnavailable` whose message says
what happened, for the log line and the ``ocsp_unavailable`` detail.
"""

from __future__ import annotations

import urllib.parse

import h11
import trio

__all__ = ["MAX_RESPONSE", "OcspUnavailable", "fetch_ocsp", "parse_url"]

# A response holds one or a few SingleResponses and maybe a responder certificate: a few KiB.
MAX_RESPONSE = 65536


class OcspUnavailable(Exception):
    """No answer from the responder (unreachable, too slow, not HTTP, an HTTP error)."""


def parse_url(url: str) -> tuple[str, int, str]:
    """``(host, port, path)`` of an ``http://`` responder URL; ValueError saying what is wrong."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "http":
        raise ValueError(f"{url!r}: an OCSP responder URL must start with http://")
    if not parts.hostname:
        raise ValueError(f"{url!r}: no host")
    try:
        port = parts.port or 80
    except ValueError:
        raise ValueError(f"{url!r}: bad port") from None
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return parts.hostname, port, path


async def fetch_ocsp(url: str, request: bytes, *, timeout: float) -> bytes:
    """POST the DER ``request`` to ``url``; the DER body of a 200 answer within ``timeout``
    seconds (connect, send and receive together), else OcspUnavailable."""
    try:
        host, port, path = parse_url(url)
    except ValueError as exc:
        raise OcspUnavailable(str(exc)) from None
    try:
        with trio.fail_after(timeout):
            stream = await trio.open_tcp_stream(host, port)
            async with stream:
                return await _exchange(stream, host, port, path, request)
    except trio.TooSlowError:
        raise OcspUnavailable(f"no answer from {url} within {timeout:g} s (ocsp_timeout)") from None
    except OSError as exc:
        raise OcspUnavailable(f"cannot reach {url}: {exc.strerror or exc}") from None
    except (trio.BrokenResourceError, h11.ProtocolError) as exc:
        raise OcspUnavailable(f"{url} did not answer in HTTP: {exc}") from None


async def _exchange(stream: trio.SocketStream, host: str, port: int, path: str, request: bytes) -> bytes:
    conn = h11.Connection(h11.CLIENT)
    authority = f"[{host}]" if ":" in host else host
    if port != 80:
        authority += f":{port}"
    head = h11.Request(method="POST", target=path, headers=[
        ("Host", authority), ("Content-Type", "application/ocsp-request"), ("Accept", "application/ocsp-response"),
        ("Content-Length", str(len(request))), ("Connection", "close"),
    ])
    await stream.send_all(b"".join(conn.send(e) or b"" for e in (head, h11.Data(data=request), h11.EndOfMessage())))
    status = 0
    body = bytearray()
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(await stream.receive_some(16384))
        elif isinstance(event, h11.Response):
            status = event.status_code
        elif isinstance(event, h11.Data):
            body += event.data
            if len(body) > MAX_RESPONSE:
                raise OcspUnavailable(f"the answer exceeds {MAX_RESPONSE} bytes")
        elif isinstance(event, h11.EndOfMessage):
            break
        elif isinstance(event, h11.ConnectionClosed):
            raise OcspUnavailable("the responder closed the connection before answering")
    if status != 200:
        raise OcspUnavailable(f"the responder answered HTTP {status}")
    return bytes(body)

"""Dialling the core: each configured upstream in order, TCP then TLS, each with a timeout.

Any failure (refused, timeout, TLS handshake failure, certificate mismatch) moves on to the
next upstream; the caller gets either a ready TLS stream or an UpstreamError that lists
every attempt and why it failed.
"""

from __future__ import annotations

import functools
import ipaddress
import socket
from collections.abc import Callable

import trio
from OpenSSL import SSL

from siptap.config import ClientTlsSettings, Upstream
from siptap.errors import HandshakeFailed, UpstreamError
from siptap.log import LogWriter
from siptap.relay.sockets import tune_socket
from siptap.tls.stream import OpenSSLStream


async def connect_first(
    upstreams: tuple[Upstream, ...],
    context: SSL.Context,
    settings: ClientTlsSettings,
    *,
    connect_timeout: float,
    handshake_timeout: float,
    log: LogWriter,
    leg: str = "core",
    on_failure: Callable[[str], None] | None = None,
) -> tuple[OpenSSLStream, Upstream]:
    attempts: list[tuple[str, str]] = []
    for index, upstream in enumerate(upstreams):
        address = str(upstream.address)
        try:
            with trio.fail_after(connect_timeout):
                tcp = await open_tcp(upstream.address.host, upstream.address.port)
        except trio.TooSlowError:
            why = f"TCP connect timed out after {connect_timeout:g} s"
            attempts.append((address, why))
            if on_failure:
                on_failure("connect_timeout")
            log.warning("upstream_failed", leg=leg, upstream=address, reason="connect_timeout", detail=why,
                        next=_next(upstreams, index))
            continue
        except OSError as exc:
            why = exc.strerror or str(exc)
            attempts.append((address, why))
            if on_failure:
                on_failure("connect_failed")
            log.warning("upstream_failed", leg=leg, upstream=address, reason="connect_failed", detail=why,
                        next=_next(upstreams, index))
            continue
        tune_socket(tcp.socket)
        name = upstream.server_name or settings.server_name or upstream.address.host
        stream = OpenSSLStream(
            tcp, context, server_side=False, leg=leg, server_hostname=name,
            check_hostname=settings.verify and settings.check_hostname, send_sni=settings.send_sni,
        )
        try:
            await stream.do_handshake(handshake_timeout)
        except trio.Cancelled:
            with trio.CancelScope(shield=True), trio.move_on_after(2):
                await stream.aclose()
            raise
        except HandshakeFailed as exc:
            attempts.append((address, f"TLS {exc.reason}: {exc.detail}"))
            if on_failure:
                on_failure(exc.reason)
            log.warning("upstream_failed", leg=leg, upstream=address, reason=exc.reason, detail=exc.detail,
                        next=_next(upstreams, index))
            await stream.aclose()
            continue
        return stream, upstream
    raise UpstreamError(attempts)


async def open_tcp(host: str, port: int) -> trio.SocketStream:
    """``trio.open_tcp_stream(host, port)``, without its machinery when ``host`` is an IP
    literal, as upstreams usually are.

    For a literal, trio resolves the host to that one address and runs the one connect
    attempt as a task in a happy-eyeballs nursery of its own; there is nothing to race, and
    per new proxied connection the lookup, nursery and task cost more Python than the
    connect itself. This makes the same socket (the address's family, SOCK_STREAM,
    IPPROTO_TCP), connects it the same way, and fails with the same error (trio's message,
    the cause in an ExceptionGroup), closing the socket on any failure or cancellation.
    A host name goes to trio as before."""
    family = _literal_family(host)
    if family is None:
        return await trio.open_tcp_stream(host, port)
    sock = trio.socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        await sock.connect((host, port))
    except OSError as exc:
        sock.close()
        where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        msg = f"all attempts to connect to {where} failed"
        raise OSError(msg) from ExceptionGroup(msg, [exc])
    except BaseException:
        sock.close()
        raise
    return trio.SocketStream(sock)


@functools.lru_cache(maxsize=64)  # keyed by configured upstream hosts: a handful
def _literal_family(host: str) -> socket.AddressFamily | None:
    """AF_INET/AF_INET6 for an IP literal written the way getaddrinfo returns it, else None."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None
    if str(ip) != host or getattr(ip, "scope_id", None):
        return None  # unusual spellings and scoped addresses: let getaddrinfo decide
    return socket.AF_INET6 if ip.version == 6 else socket.AF_INET


def _next(upstreams: tuple[Upstream, ...], index: int) -> str | None:
    return str(upstreams[index + 1].address) if index + 1 < len(upstreams) else None

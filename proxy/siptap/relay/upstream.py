"""Dialling the other side: each configured upstream in order, TCP then TLS, each with a timeout.

Any failure moves on to the next upstream; the caller gets either a ready TLS stream or an
UpstreamError that lists every attempt and why it failed. Each failed attempt is logged
(``upstream_failed``) with its cause as a stable ``reason``: ``connect_refused`` (nothing
listens, or a firewall rejects), ``connect_timeout`` (no answer to the SYN: a firewall that
drops, a host that is down, a full listen backlog), ``unreachable`` (the network or host is
unreachable), ``name_unresolved``, ``out_of_descriptors`` (siptap's own descriptor limit),
``connect_failed`` (any other socket error), or, once
TCP is up, the TLS handshake's failure reason (``unknown_ca``, ``hostname_mismatch``,
``timeout``, ...) with ``stage`` saying which of the two failed.
"""

from __future__ import annotations

import errno
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
from siptap.tls.ocsp_check import OcspChecker
from siptap.tls.stream import OpenSSLStream

# What each dialled leg reaches, in the words of log lines and errors: a reverse route dials
# the customer's E-SBC, which is no core.
PEER_NAMES = {"core": "core", "customer": "customer E-SBC"}


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
    ocsp: OcspChecker | None = None,
) -> tuple[OpenSSLStream, Upstream]:
    attempts: list[tuple[str, str]] = []

    def failed(index: int, stage: str, reason: str, detail: str) -> None:
        address = str(upstreams[index].address)
        attempts.append((address, f"{reason}: {detail}" if stage == "tcp" else f"TLS {reason}: {detail}"))
        if on_failure:
            on_failure(reason)
        log.warning("upstream_failed", leg=leg, upstream=address, stage=stage, reason=reason, detail=detail,
                    next=_next(upstreams, index))

    for index, upstream in enumerate(upstreams):
        try:
            with trio.fail_after(connect_timeout):
                tcp = await open_tcp(upstream.address.host, upstream.address.port)
        except trio.TooSlowError:
            failed(index, "tcp", "connect_timeout",
                   f"no answer to the TCP connect within {connect_timeout:g} s (connect_timeout)")
            continue
        except OSError as exc:
            failed(index, "tcp", *connect_failure(exc))
            continue
        tune_socket(tcp.socket)
        name = upstream.server_name or settings.server_name or upstream.address.host
        stream = OpenSSLStream(
            tcp, context, server_side=False, leg=leg, server_hostname=name,
            check_hostname=settings.verify and settings.check_hostname, send_sni=settings.send_sni,
        )
        try:
            # The raw record: the relay hands the chain over as DER, the mirror summarises it.
            await stream.complete_handshake(handshake_timeout)
            if ocsp is not None:  # a revoked (or, under "hard", unchecked) upstream: the next one
                await ocsp.enforce(stream, log)
        except trio.Cancelled:
            with trio.CancelScope(shield=True), trio.move_on_after(2):
                await stream.aclose()
            raise
        except HandshakeFailed as exc:
            failed(index, "tls", exc.reason, exc.detail)
            await stream.aclose()
            continue
        return stream, upstream
    raise UpstreamError(attempts, peer=PEER_NAMES.get(leg, leg))


_CONNECT_ERRNOS = {
    errno.ECONNREFUSED: ("connect_refused", "connection refused: nothing listens there, or a firewall rejects"),
    errno.ETIMEDOUT: ("connect_timeout", "the kernel gave up waiting for an answer to the TCP connect"),
    errno.ENETUNREACH: ("unreachable", "network unreachable: no route to that address"),
    errno.EHOSTUNREACH: ("unreachable", "host unreachable: no route to that host"),
    # Our side, not the upstream's: seen when a flood of customers uses up RLIMIT_NOFILE.
    errno.EMFILE: ("out_of_descriptors", "siptap has no file descriptor left for the connection "
                   "(RLIMIT_NOFILE; lower max_connections or raise the limit)"),
    errno.ENFILE: ("out_of_descriptors", "the system has no file descriptor left (fs.file-max)"),
}


def connect_failure(exc: OSError) -> tuple[str, str]:
    """``(reason, detail)`` for a failed TCP connect, from the socket error underneath.

    trio (and :func:`open_tcp`) raise a summary ``OSError`` ("all attempts to connect to ...
    failed") whose cause is an ExceptionGroup of each address's error; the cause that says
    what happened (refused, unreachable) is in there, so it is what names the attempt."""
    errors = _socket_errors(exc)
    for error in errors:
        if isinstance(error, socket.gaierror):
            return "name_unresolved", f"cannot resolve the host name: {error.strerror or error}"
    for error in errors:
        known = _CONNECT_ERRNOS.get(error.errno or 0)
        if known is not None:
            reason, detail = known
            return reason, f"{detail} ({errno.errorcode.get(error.errno or 0, error.errno)})"
    first = errors[0] if errors else exc
    return "connect_failed", first.strerror or str(first)


def _socket_errors(exc: BaseException) -> list[OSError]:
    """The OSErrors that carry an errno, from ``exc``, its cause, and any ExceptionGroup in between."""
    found: list[OSError] = []
    seen: set[int] = set()
    todo: list[BaseException] = [exc]
    while todo:
        current = todo.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, BaseExceptionGroup):
            todo.extend(current.exceptions)
        elif isinstance(current, OSError) and (current.errno is not None or isinstance(current, socket.gaierror)):
            found.append(current)
        if current.__cause__ is not None:
            todo.append(current.__cause__)
    return found


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

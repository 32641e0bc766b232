"""Which cipher suites the endpoint accepts, per protocol version, read from its ServerHellos.

OpenSSL can only offer what it can negotiate, and a peer's CCM_8, ARIA, CAMELLIA, 3DES or
GOST suites are exactly what an E-SBC vendor's stack may have and ours may not. So the
suites are found the way nmap's ssl-enum-ciphers and testssl.sh find them: a hand-built
ClientHello (:func:`siptap.sansio.tls_hello.build_client_hello`) offers a list of IANA codes
at one version, the ServerHello names the server's choice, that suite leaves the list, and
the rest is offered again until the server refuses (handshake_failure). Nothing past the
ServerHello is needed, so the connection is dropped as soon as it is read: the probe never
has to speak the suite it detects. A client certificate is never needed for this either:
the ServerHello comes before the server asks for one.

The registry goes out in chunks of 64 codes (nmap's size: some servers refuse long hellos),
one TCP connection per offer, one at a time. A version is accepted when some offer at that
version got a ServerHello *at that version*; a protocol_version alert or a ServerHello at
another version rejects it at once. A server that just closes the connection may be refusing
the version or only that list, so the next chunk is still offered.
"""

from __future__ import annotations

import ipaddress
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import trio

from siptap.sansio.tls_hello import (
    TLS13,
    Alert,
    NotTls,
    ServerHello,
    ServerHelloReader,
    build_client_hello,
)

CHUNK = 64

# (name, wire value), oldest first: SSLv3 is tried too, since a peer that still speaks it is
# exactly what an interop report must show.
SCANNED_VERSIONS: tuple[tuple[str, int], ...] = (
    ("SSLv3", 0x0300),
    ("TLSv1", 0x0301),
    ("TLSv1.1", 0x0302),
    ("TLSv1.2", 0x0303),
    ("TLSv1.3", 0x0304),
)

Progress = Callable[[str], None]


@dataclass(slots=True)
class VersionScan:
    """What the offers at one version found: the suites accepted (in the order the server chose
    them) and every ServerHello (their extensions say EMS, ETM, renegotiation_info, ...)."""

    name: str
    version: int
    accepted: bool = False
    error: str | None = None  # no verdict: the endpoint could not be reached or stopped answering
    detail: str = ""
    suites: list[int] = field(default_factory=list)
    hellos: list[ServerHello] = field(default_factory=list)


async def server_answer(host: str, port: int, hello: bytes, timeout: float) -> ServerHello | Alert | str:
    """Send one hand-built ClientHello on a new connection; the ServerHello, the alert, or why neither came."""
    try:
        with trio.fail_after(timeout):
            stream = await trio.open_tcp_stream(host, port)
    except trio.TooSlowError:
        return f"TCP connect timed out after {timeout:g} s"
    except OSError as exc:
        return f"cannot connect: {exc.strerror or exc}"
    reader = ServerHelloReader()
    try:
        with trio.move_on_after(timeout) as scope:
            await stream.send_all(hello)
            while not reader.done:
                data = await stream.receive_some(65536)
                if not data:
                    return "the endpoint closed the connection without an answer"
                reader.feed(data)
        if scope.cancelled_caught:
            return f"no answer within {timeout:g} s"
    except (trio.BrokenResourceError, OSError) as exc:
        return f"the endpoint reset the connection: {exc}"
    finally:
        with trio.move_on_after(1):
            await stream.aclose()
    result = reader.result
    if isinstance(result, ServerHello | Alert):
        return result
    if isinstance(result, NotTls):
        return f"not TLS: {result.looks_like}"
    return "an answer that is not a well-formed ServerHello or alert"


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name.strip("[]"))
    except ValueError:
        return False
    return True


def _unreachable(text: str) -> bool:
    return text.startswith(("cannot connect", "TCP connect timed out", "no answer within"))


async def scan_version(host: str, port: int, name: str, version: int, candidates: Sequence[int], *,
                       server_name: str, timeout: float, progress: Progress | None = None) -> VersionScan:
    """Every suite of ``candidates`` the endpoint accepts at ``version`` (see the module docstring)."""
    scan = VersionScan(name, version)
    sni = None if _is_ip(server_name) else server_name
    last_refusal = ""
    offers = 0
    for start in range(0, len(candidates), CHUNK):
        remaining = list(candidates[start : start + CHUNK])
        while remaining:
            offers += 1
            if progress is not None:
                progress(f"{name}: offer {offers}, {len(scan.suites)} suites found")
            hello = build_client_hello(
                version, remaining, random=secrets.token_bytes(32), server_name=sni,
                key_share=secrets.token_bytes(32) if version >= TLS13 else None,
                session_id=secrets.token_bytes(32) if version >= TLS13 else b"",
            )
            answer = await server_answer(host, port, hello, timeout)
            if isinstance(answer, str):
                if _unreachable(answer):
                    scan.error = answer
                    return _finish(scan, answer)
                # Not decisive: some servers refuse a version, others only a list of suites,
                # by closing the connection. The next chunk may still be accepted.
                last_refusal = answer
                break
            if isinstance(answer, Alert):
                if answer.name == "protocol_version" and not scan.suites:
                    return _finish(scan, "protocol_version alert")
                last_refusal = f"{answer.name} alert"
                break
            if answer.version != version:
                if scan.suites:
                    last_refusal = f"answered with {answer.version_name}"
                    break
                return _finish(scan, f"answered with {answer.version_name}")
            if answer.cipher_suite not in remaining:
                last_refusal = f"chose 0x{answer.cipher_suite:04X}, which was not offered"
                break
            scan.suites.append(answer.cipher_suite)
            scan.hellos.append(answer)
            remaining.remove(answer.cipher_suite)
    return _finish(scan, last_refusal)


def _finish(scan: VersionScan, refusal: str) -> VersionScan:
    scan.accepted = bool(scan.suites)
    if scan.accepted:
        scan.detail = f"{len(scan.suites)} suite{'s' if len(scan.suites) != 1 else ''}"
    else:
        scan.detail = refusal or "no suite accepted"
    return scan

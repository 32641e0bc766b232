"""Each failed attempt to reach an upstream names its cause, over real loopback sockets:

* refused: a port bound by nobody listening;
* timed out: a listener whose accept queue is full (``listen(0)`` plus one connection nobody
  accepts: Linux then drops further SYNs, so the connect hangs until connect_timeout);
* no route: the loopback broadcast address (127.255.255.255), which TCP refuses with
  ENETUNREACH before a packet leaves;
* TLS failure, with its reason: a core whose certificate siptap's CA did not sign.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

from siptap.addresses import Endpoint
from siptap.config import ClientTlsSettings, Upstream
from siptap.errors import UpstreamError
from siptap.relay.upstream import connect_failure, connect_first
from siptap.tls.contexts import build_client_context
from siptap.tools.lab.core import LabCore, core_context
from tests.relay.memory import RecordingLog


def settings(pki: Path) -> ClientTlsSettings:
    return ClientTlsSettings(cert=pki / "proxy-client.pem", key=pki / "proxy-client.key", ca=pki / "ca.pem",
                             server_name="localhost")


@asynccontextmanager
async def dead_ends() -> AsyncIterator[dict[str, int]]:
    """Ports for the refused and timed-out cases, held open for the test."""
    refused = socket.socket()
    refused.bind(("127.0.0.1", 0))  # bound, never listening
    full = socket.socket()
    full.bind(("127.0.0.1", 0))
    full.listen(0)
    filler = socket.socket()
    filler.connect(full.getsockname())  # completes from the backlog; nobody ever accepts it
    try:
        yield {"refused": refused.getsockname()[1], "full": full.getsockname()[1]}
    finally:
        for s in (filler, full, refused):
            s.close()


async def test_each_attempt_names_its_cause_and_the_next_core_serves(pki: Path) -> None:
    log = RecordingLog()
    failures: list[str] = []
    async with dead_ends() as ports, trio.open_nursery() as nursery:
        untrusted = await nursery.start(LabCore(core_context(pki, cert="foreign-core")).serve)
        good = await nursery.start(LabCore(core_context(pki)).serve)
        upstreams = tuple(Upstream(Endpoint(host, port)) for host, port in (
            ("127.0.0.1", ports["refused"]), ("127.0.0.1", ports["full"]), ("127.255.255.255", 5061),
            ("127.0.0.1", untrusted), ("127.0.0.1", good)))
        stream, upstream = await connect_first(
            upstreams, build_client_context(settings(pki)), settings(pki), connect_timeout=0.5,
            handshake_timeout=5, log=log, on_failure=failures.append)
        await stream.aclose()
        nursery.cancel_scope.cancel()
    assert upstream.address.port == good
    failed = log.find("upstream_failed")
    assert [(f["stage"], f["reason"]) for f in failed] == [
        ("tcp", "connect_refused"), ("tcp", "connect_timeout"), ("tcp", "unreachable"), ("tls", "unknown_ca")]
    assert failures == [f["reason"] for f in failed]  # the metric's labels
    assert "ECONNREFUSED" in failed[0]["detail"]
    assert "0.5 s" in failed[1]["detail"]
    assert "ENETUNREACH" in failed[2]["detail"]
    assert "CN=foreign-core" in failed[3]["detail"]
    assert [f["next"] for f in failed] == [str(u.address) for u in upstreams[1:]]


@pytest.mark.parametrize(("leg", "peer"), [("core", "no core reachable"), ("customer", "no customer E-SBC reachable")])
async def test_no_upstream_names_the_peer_and_every_cause(pki: Path, leg: str, peer: str) -> None:
    log = RecordingLog()
    async with dead_ends() as ports:
        upstreams = (Upstream(Endpoint("127.0.0.1", ports["refused"])), Upstream(Endpoint("127.255.255.255", 5061)))
        with pytest.raises(UpstreamError) as info:
            await connect_first(upstreams, build_client_context(settings(pki)), settings(pki), connect_timeout=2,
                                handshake_timeout=2, log=log, leg=leg)
    message = str(info.value)
    assert message.startswith(peer), message
    assert "core" not in message or leg == "core", message
    assert [why.split(":")[0] for _, why in info.value.attempts] == ["connect_refused", "unreachable"]
    assert {f["leg"] for f in log.find("upstream_failed")} == {leg}


def _trio_style(*errors: OSError) -> OSError:
    """What trio.open_tcp_stream (and siptap's open_tcp) raise: a summary whose cause groups
    each address's error."""
    msg = "all attempts to connect to example:5061 failed"
    try:
        raise OSError(msg) from ExceptionGroup(msg, list(errors))
    except OSError as exc:
        return exc


@pytest.mark.parametrize(
    ("exc", "reason", "detail_part"),
    [
        (_trio_style(ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused")), "connect_refused",
         "ECONNREFUSED"),
        (_trio_style(OSError(errno.EHOSTUNREACH, "No route to host")), "unreachable", "EHOSTUNREACH"),
        (_trio_style(OSError(errno.ETIMEDOUT, "Connection timed out")), "connect_timeout", "ETIMEDOUT"),
        # Happy eyeballs: IPv6 unreachable, IPv4 refused; the first known cause names it.
        (_trio_style(OSError(errno.ENETUNREACH, "Network is unreachable"),
                     ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused")), "unreachable", "ENETUNREACH"),
        (socket.gaierror(socket.EAI_NONAME, "Name or service not known"), "name_unresolved", "not known"),
        (OSError(errno.EMFILE, "Too many open files"), "out_of_descriptors", "RLIMIT_NOFILE"),
        (_trio_style(OSError(errno.EACCES, "Permission denied")), "connect_failed", "Permission denied"),
    ],
    ids=["refused", "unreachable", "kernel-timeout", "mixed", "dns", "emfile", "other"],
)
def test_connect_failure_reads_the_cause_under_the_summary(exc: OSError, reason: str, detail_part: str) -> None:
    got_reason, detail = connect_failure(exc)
    assert got_reason == reason
    assert detail_part in detail, detail

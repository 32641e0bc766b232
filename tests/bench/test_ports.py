"""The benchmark harness's free ports (bench/chain.py): a port picked free can be taken by
another process before the peer binds it (the session-7 official run lost its stunnel-pair
row so). The harness must notice that its peer did not get the port, and start it again on
a new one, a bounded number of times, saying so. Real stunnel, a port held busy by the test."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench import chain as c
from tests.integration.capture import require
from tests.integration.peers import free_port

pytestmark = require("stunnel4")


def plain_stunnel_conf(port: int) -> str:
    """A client-mode service (no certificate needed): stunnel accepts plain TCP on ``port``."""
    return f"foreground = yes\npid =\n[plain]\nclient = yes\naccept = 127.0.0.1:{port}\nconnect = 127.0.0.1:9\n"


@pytest.fixture(params=["listening", "bound"])
def busy_port(request: pytest.FixtureRequest) -> Iterator[int]:
    """A port another process holds: listening (seen in /proc), or only bound (as a client
    socket's local port is: no listener to see, stunnel's bind fails and it exits)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        if request.param == "listening":
            sock.listen()
        yield sock.getsockname()[1]


async def test_a_peer_that_lost_its_port_is_started_again_on_a_new_one(
        tmp_path: Path, busy_port: int, capsys: pytest.CaptureFixture[str]) -> None:
    picks = iter([busy_port, free_port()])  # the first pick is taken before stunnel binds it

    def start(ports: list[int]) -> c.AbstractAsyncContextManager[c.Peer]:
        return c.stunnel(tmp_path, "stunnel-plain", plain_stunnel_conf(ports[0]), ports)

    async with c.on_free_ports("stunnel-plain", 1, start, pick=lambda: next(picks)) as peer:
        assert peer.ports != [busy_port]
        assert set(peer.ports) <= c.owned_listening_ports(peer.process.pid)
        assert busy_port not in c.owned_listening_ports(peer.process.pid)
    err = capsys.readouterr().err
    assert "bench: stunnel-plain: " in err and str(busy_port) in err
    assert "starting it again on new ports (attempt 2 of 5)" in err


async def test_the_harness_gives_up_after_the_attempts_it_was_given(tmp_path: Path, busy_port: int) -> None:
    def start(ports: list[int]) -> c.AbstractAsyncContextManager[c.Peer]:
        return c.stunnel(tmp_path, "stunnel-plain", plain_stunnel_conf(ports[0]), ports)

    with pytest.raises(c.PortTaken, match=rf"stunnel-plain: lost a picked port 2 times in a row; last: .*{busy_port}"):
        async with c.on_free_ports("stunnel-plain", 1, start, attempts=2, pick=lambda: busy_port):
            pytest.fail("started on a port another process holds")


async def test_a_peer_failing_for_another_reason_is_not_started_again(tmp_path: Path) -> None:
    picks: list[int] = []

    def pick() -> int:
        picks.append(free_port())
        return picks[-1]

    def start(ports: list[int]) -> c.AbstractAsyncContextManager[c.Peer]:
        # A server-mode service without its certificate: stunnel refuses the configuration.
        return c.stunnel(tmp_path, "stunnel-bad", plain_stunnel_conf(ports[0]).replace("client = yes\n", ""), ports)

    with pytest.raises(RuntimeError, match=r"(?s)stunnel-bad is not listening .* TLS server needs a certificate"):
        async with c.on_free_ports("stunnel-bad", 1, start, pick=pick):
            pytest.fail("started without its certificate")
    assert len(picks) == 1

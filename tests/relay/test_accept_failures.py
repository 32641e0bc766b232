"""Running out of descriptors: accept failures are JSON log events (rate-limited, counted),
never a traceback per retry on stderr, and the relay recovers once descriptors free up.

The integration test runs `siptap run` with RLIMIT_NOFILE pinned low (soft = hard, so the
start-up raise cannot help) and floods it with TCP connections that never say a word.
"""

from __future__ import annotations

import errno
import itertools
import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from siptap.config import Config, load_config
from siptap.relay.accept import BACKOFF_FIRST, BACKOFF_MAX, AcceptFailures
from siptap.relay.fd_limit import MARGIN, descriptors_needed
from siptap.tools.lab.core import start_lab_core
from siptap.tools.lab.customer import CustomerSession, customer_context
from tests.relay.harness import SiptapProcess, write_config

# Enough for the supervisor, the mirror process and a worker to start and relay one call;
# far fewer than the flood below.
FD_LIMIT = 48
FLOOD = 120
# What trio.serve_listeners would have written: one traceback (~750 bytes, measured) per
# 0.1 s retry, over the ten seconds this test keeps the process starved, is ~75 KB.
STDERR_BOUND = 2000


# -- the reporting policy, pure -----------------------------------------------------------------


def test_first_failure_reported_at_once_then_counts_per_interval() -> None:
    failures = AcceptFailures(interval=10.0)
    assert failures.failed("EMFILE", 100.0) == {"reason": "EMFILE", "count": 1, "failing_for": 0.0}
    assert [failures.failed("EMFILE", 100.0 + t) for t in (1, 2, 9.5)] == [None, None, None]
    assert failures.failed("EMFILE", 110.0) == {"reason": "EMFILE", "count": 4, "failing_for": 10.0}
    assert failures.failed("EMFILE", 111.0) is None
    assert failures.succeeded(112.5) == {"failures": 6, "failing_for": 12.5}
    assert failures.succeeded(113.0) is None  # no episode: nothing to say
    assert failures.total == 6
    # A new episode is reported at once again.
    assert failures.failed("ENFILE", 114.0) == {"reason": "ENFILE", "count": 1, "failing_for": 0.0}


def test_backoff_doubles_to_a_cap_and_resets_on_success() -> None:
    failures = AcceptFailures()
    delays = []
    for _ in range(8):
        failures.failed("EMFILE", 0.0)
        delays.append(failures.backoff())
    assert delays[0] == BACKOFF_FIRST
    assert all(b == min(BACKOFF_MAX, a * 2) for a, b in itertools.pairwise(delays))
    assert delays[-1] == BACKOFF_MAX
    failures.succeeded(1.0)
    assert failures.backoff() == BACKOFF_FIRST


# -- the descriptor budget ----------------------------------------------------------------------


def _config(pki: Path, tmp_path: Path, limits: str) -> Config:
    return load_config(write_config(tmp_path, pki, cores=[5062], limits=limits))


def test_descriptors_needed_counts_two_per_connection(pki: Path, tmp_path: Path) -> None:
    config = _config(pki, tmp_path, "max_connections = 300")
    needed, keys = descriptors_needed(config, with_sinks=False)
    assert keys == ("route[0].limits.max_connections",)
    assert needed == MARGIN + 2 * 300 + 2


def test_routes_sharing_an_address_share_its_budget(pki: Path, tmp_path: Path) -> None:
    # Three routes on one address: one listener, one max_connections (the routes agree on it).
    text = write_config(tmp_path, pki, cores=[5062], listen='"127.0.0.1:5070"', limits="max_connections = 300",
                        extra_route='match = { client = ["cn:a"] }').read_text()
    route = "[[route]]" + text.split("[[route]]", 1)[1]
    config_path = tmp_path / "shared.toml"
    config_path.write_text(text + route.replace('name = "test"', 'name = "b"').replace('"cn:a"', '"cn:b"')
                           + route.replace('name = "test"', 'name = "c"').replace('"cn:a"', '"cn:c"'))
    needed, keys = descriptors_needed(load_config(config_path), with_sinks=False)
    assert keys == ("route[0].limits.max_connections",)
    assert needed == MARGIN + 2 * 300 + 2


def test_soft_limit_raised_to_hard_in_a_child() -> None:
    """In a subprocess (the limit is per process): soft 64, hard 256 -> 256."""
    hard = min(256, resource.getrlimit(resource.RLIMIT_NOFILE)[1])
    result = subprocess.run(
        [sys.executable, "-c", "import resource; from siptap.relay.fd_limit import raise_fd_limit; "
         "from types import SimpleNamespace as N; "
         "b = raise_fd_limit(N(routes=(), mirror=None), with_sinks=False); "
         "print(b.soft, b.hard, b.raised_from, resource.getrlimit(resource.RLIMIT_NOFILE)[0])"],
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (64, hard)),
        capture_output=True, text=True, check=True, timeout=30,
    )
    assert result.stdout.split() == [str(hard), str(hard), "64", str(hard)], result.stderr


# -- a starved process, for real ----------------------------------------------------------------


class StarvedSiptap(SiptapProcess):
    """`siptap run` (supervisor, mirror, worker) with RLIMIT_NOFILE pinned to ``limit``."""

    def __init__(self, config: Path, limit: int) -> None:
        super().__init__(config)
        self.limit = limit

    async def start(self, nursery: trio.Nursery) -> None:
        limit = self.limit
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.process = await trio.lowlevel.open_process(
            [sys.executable, "-m", "siptap", "run", "--config", str(self.config)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
            preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit)),
        )
        nursery.start_soon(self._read_stdout)
        nursery.start_soon(self._read_stderr)
        nursery.start_soon(self._kill_when_cancelled)


async def test_emfile_flood_is_logged_not_traced_and_the_relay_recovers(pki: Path, tmp_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        _, core_port = await start_lab_core(nursery, pki)
        # A long handshake timeout: the flood's silent connections hold their descriptors
        # until the test lets them go.
        config = write_config(tmp_path, pki, cores=[core_port], limits="max_connections = 500")
        config.write_text(config.read_text().replace("handshake_timeout = 5.0", "handshake_timeout = 60.0"))
        proxy = StarvedSiptap(config, FD_LIMIT)
        await proxy.start(nursery)
        port = await proxy.port()
        low = (await proxy.wait_for("fd_limit_low"))[0]
        assert low["keys"] == ["route[0].limits.max_connections"]
        assert (low["soft"], low["hard"]) == (FD_LIMIT, FD_LIMIT)
        assert "max_connections" in low["detail"]

        flood = []
        for _ in range(FLOOD):
            sock = trio.socket.socket()
            await sock.connect(("127.0.0.1", port))  # completes in the kernel's backlog
            flood.append(sock)
        first = (await proxy.wait_for("accept_failed"))[0]
        assert (first["reason"], first["count"], first["leg"], first["route"]) == ("EMFILE", 1, "customer", "test")
        assert first["address"] == f"127.0.0.1:{port}"
        # The next report comes one interval later, with the count of the attempts between:
        # backed off (a busy retry loop would count hundreds of thousands), never zero.
        second = (await proxy.wait_for("accept_failed", count=2, timeout=30))[1]
        assert 1 <= second["count"] < 1000, second
        assert second["failing_for"] > 0

        for sock in flood:
            sock.close()
        session = await CustomerSession.connect("127.0.0.1", port, customer_context(pki))
        assert await session.call() == ["100", "180", "200", "200"]
        await session.aclose()
        recovered = (await proxy.wait_for("accept_recovered"))[0]
        assert recovered["failures"] >= second["count"] + 1
        assert await proxy.stop() == 0
        nursery.cancel_scope.cancel()
    assert b"Traceback" not in proxy.stderr
    assert len(proxy.stderr) < STDERR_BOUND, proxy.stderr.decode(errors="replace")[-3000:]


@pytest.mark.parametrize("code", sorted({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}))
def test_capacity_errnos_have_a_detail(code: int) -> None:
    from siptap.relay.accept import CAPACITY_ERRNOS, DETAILS

    assert code in CAPACITY_ERRNOS
    assert DETAILS[code]

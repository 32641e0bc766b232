"""After a flood of connections: nothing Python-level stays behind per closed connection, and
the worker gives the heap the flood freed back to the system (relay/heap.py; the measurement
behind it: bench/results/2026-12-02-memory-after-flood.md)."""

from __future__ import annotations

import gc
import tracemalloc
from pathlib import Path

import trio
from OpenSSL import SSL

from siptap.app import build_plans
from siptap.config import load_config
from siptap.log import get_logger
from siptap.relay import heap
from siptap.relay.heap import HeapTrimmer, glibc_malloc_trim
from siptap.relay.session import run_session
from siptap.tls.facts import HandshakeObserver
from siptap.tls.stream import OpenSSLStream
from siptap.tools.lab.core import start_lab_core
from siptap.tools.lab.customer import CustomerSession, customer_context
from tests.relay.harness import write_config


class Recorder:
    def __init__(self, trimmer: list[HeapTrimmer]) -> None:
        self.trimmer = trimmer
        self.at: list[int] = []  # live sessions at each trim

    def __call__(self) -> None:
        self.at.append(self.trimmer[0].active)


def trimmer() -> tuple[HeapTrimmer, Recorder]:
    holder: list[HeapTrimmer] = []
    recorder = Recorder(holder)
    holder.append(HeapTrimmer(recorder))
    return holder[0], recorder


def run(t: HeapTrimmer, *levels: int) -> None:
    """Open or close sessions one at a time until each level of live sessions is reached."""
    for level in levels:
        while t.active < level:
            t.opened()
        while t.active > level:
            t.closed()


def test_a_subsiding_flood_trims_twice() -> None:
    t, trims = trimmer()
    run(t, 60, 0)
    assert trims.at == [15, 3]  # a quarter of the peak, then a quarter of that
    run(t, 60, 0)
    assert trims.at == [15, 3, 15, 3]  # every flood, not only the first


def test_steady_traffic_never_trims() -> None:
    t, trims = trimmer()
    run(t, 10)
    for _ in range(10_000):  # churn: one opens, one closes
        run(t, 11, 10)
    run(t, 31, 0)  # and a burst smaller than FLOOD
    assert trims.at == []


def test_trunks_that_stay_up_do_not_stop_later_trims() -> None:
    t, trims = trimmer()
    run(t, 20, 100, 20)  # 20 trunks stay up through a flood
    assert trims.at == [25]
    run(t, 90, 20)  # a second, smaller flood is still one
    assert trims.at == [25, 22]


def test_without_malloc_trim_it_only_counts() -> None:
    t = HeapTrimmer(None)
    run(t, 60, 0)
    assert (t.trims, t.active) == (0, 0)


def test_glibc_has_malloc_trim() -> None:
    trim = glibc_malloc_trim()
    assert trim is not None  # Debian's glibc: the production platform
    assert trim() in (0, 1)


def prune_trio_deadlines() -> None:
    """trio drops an expired or moved deadline from its heap lazily, keeping up to 1000 stale
    entries (each a float and its cancel scope: a half-closed session's deadline is one) and
    pruning past that; prune now, so that what is left alive is really held by someone."""
    from trio._core import _run

    _run.GLOBAL_RUN_CONTEXT.runner.deadlines._prune()


def siptap_objects() -> dict[str, int]:
    gc.collect()
    counts = {"OpenSSLStream": 0, "HandshakeObserver": 0, "SSL.Connection": 0}
    for obj in gc.get_objects():
        if isinstance(obj, OpenSSLStream):
            counts["OpenSSLStream"] += 1
        elif isinstance(obj, HandshakeObserver):
            counts["HandshakeObserver"] += 1
        elif isinstance(obj, SSL.Connection):
            counts["SSL.Connection"] += 1
    return counts


async def test_a_flood_leaves_no_objects_behind_and_trims_the_heap(pki: Path, tmp_path: Path) -> None:
    flood = heap.FLOOD + 8
    trims_before = heap.HEAP.trims
    async with trio.open_nursery() as nursery:
        _core, core_port = await start_lab_core(nursery, pki)
        config = load_config(write_config(tmp_path, pki, cores=[core_port]))
        plan = build_plans(config, config.routes[0]).forward  # NullFeed: no records kept by the test
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        port = listeners[0].socket.getsockname()[1]
        nursery.start_soon(trio.serve_listeners, lambda tcp: run_session(tcp, plan, get_logger()), listeners)

        async def one_flood() -> None:
            sessions: list[CustomerSession] = []
            up = trio.Event()

            async def customer() -> None:
                session = await CustomerSession.connect("127.0.0.1", port, customer_context(pki))
                assert (await session.options()).status_code == 200  # both legs up: a live session
                sessions.append(session)
                if len(sessions) == flood:
                    up.set()
                await up.wait()  # all of them live at once: the flood's peak

            async with trio.open_nursery() as customers:
                for _ in range(flood):
                    customers.start_soon(customer)
            assert heap.HEAP.active == flood
            for session in sessions:
                await session.aclose()
            with trio.fail_after(30):
                while heap.HEAP.active:  # each session ends once both of its legs closed
                    await trio.sleep(0.01)

        await one_flood()  # fills the caches that stay (certificate cache, lru caches)
        assert siptap_objects() == {"OpenSSLStream": 0, "HandshakeObserver": 0, "SSL.Connection": 0}
        tracemalloc.start(12)
        try:
            before = tracemalloc.take_snapshot()
            await one_flood()
            prune_trio_deadlines()
            gc.collect()
            after = tracemalloc.take_snapshot()
        finally:
            tracemalloc.stop()
        nursery.cancel_scope.cancel()
    # Nothing allocated in siptap's own code during the second flood is still alive: no
    # per-connection leftovers, whatever their type. (The in-process lab core and customers
    # keep what they received: their allocations are left out.)
    only_siptap = [tracemalloc.Filter(True, "*/siptap/*"),
                   tracemalloc.Filter(False, "*/siptap/tools/*", all_frames=True),
                   tracemalloc.Filter(False, "*/tests/*", all_frames=True)]
    grown = [s for s in after.filter_traces(only_siptap).compare_to(before.filter_traces(only_siptap), "lineno")
             if s.size_diff > 0]
    assert grown == [], [str(s) for s in grown[:10]]
    assert siptap_objects() == {"OpenSSLStream": 0, "HandshakeObserver": 0, "SSL.Connection": 0}
    assert heap.HEAP.trims - trims_before == 4  # two per flood

"""The session logic (relay_session) over trio's in-memory streams: no sockets, no TLS.

The customer and the core are the far ends of two memory stream pairs; the session gets the
near ends as handshaken legs and a dial function that hands over the core's. What the peers
receive, what the session logs (a list-collecting log writer) and the records it hands its
feed are the oracles; with the mirror's :class:`Observer` behind an in-process feed, the
whole chain's events and log lines are too. Time-dependent endings (idle timeout, half-close timeout) run on trio's autojump
clock, so they take no wall time and nothing waits on a real timer.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import trio
import trio.testing

from siptap.addresses import Endpoint
from siptap.config import Upstream
from siptap.errors import UpstreamError
from siptap.mirror.events import ConnectionClosed, KeyEvent, SipEvent, SrtpKeyEvent
from siptap.mirror.local import LocalFeed
from siptap.mirror.observer import Observer
from siptap.relay.plan import SessionPlan
from siptap.relay.session import Dial, DialledLeg, relay_session
from siptap.sansio import chunk_records
from siptap.sansio.chunk_records import FROM_ACCEPTED, FROM_DIALLED
from tests.relay.memory import (
    BYE,
    INLINE,
    INVITE,
    OK,
    MemoryLeg,
    Published,
    RecordingFeed,
    RecordingLog,
    handshake,
    plan,
    receive_exactly,
    receive_until_eof,
)

PEER = ("192.0.2.10", 40000)  # the customer, as accepted
LOCAL = ("192.0.2.1", 5061)
CORE_LOCAL = ("192.0.2.1", 45000)
CORE = Upstream(Endpoint("198.51.100.7", 5061))
PairFactory = Callable[[], tuple[trio.abc.HalfCloseableStream, trio.abc.HalfCloseableStream]]


@dataclass
class Chain:
    customer: trio.abc.HalfCloseableStream  # the E-SBC's end
    core: trio.abc.HalfCloseableStream  # the core SBC's end
    accepted: MemoryLeg
    dialled: MemoryLeg
    log: RecordingLog
    done: trio.Event


def observed(log: RecordingLog, published: Published | None = None,
             mirror_legs: frozenset[str] = frozenset({"customer"}), **plan_options: float) -> SessionPlan:
    """A plan whose feed is the mirror's Observer in this process, logging to ``log``."""
    observer = Observer(publish=published if published is not None else Published(), log=log, mirror_legs=mirror_legs)
    return plan(LocalFeed(observer), **plan_options)


def start(nursery: trio.Nursery, the_plan: SessionPlan, *, pair: PairFactory = trio.testing.memory_stream_pair,
          dial: Dial | None = None, log: RecordingLog | None = None) -> Chain:
    customer, accepted_end = pair()
    dialled_end, core = pair()
    accepted = MemoryLeg(accepted_end, handshake("customer"))
    dialled = MemoryLeg(dialled_end, handshake("core"))
    log = log if log is not None else RecordingLog()
    done = trio.Event()

    async def dial_core() -> DialledLeg:
        await trio.lowlevel.checkpoint()
        return DialledLeg(dialled, CORE, local=CORE_LOCAL, remote=("198.51.100.7", 5061))

    async def session() -> None:
        bound = log.bind(conn="m-1", route=the_plan.route, peer=f"{PEER[0]}:{PEER[1]}")
        await relay_session(accepted, dial or dial_core, the_plan, bound, conn=1, conn_id="m-1", peer=PEER,
                            local=LOCAL, started=time.monotonic())
        done.set()

    nursery.start_soon(session)
    return Chain(customer, core, accepted, dialled, log, done)


async def send_in_chunks(stream: trio.abc.SendStream, data: bytes, sizes: tuple[int, ...] = (1, 7, 300, 4096)) -> None:
    """``data`` in chunks of uneven sizes, so the relay's reads do not line up with messages."""
    offset, turn = 0, 0
    while offset < len(data):
        size = sizes[turn % len(sizes)]
        await stream.send_all(data[offset:offset + size])
        offset += size
        turn += 1


@pytest.mark.parametrize("pair", [trio.testing.memory_stream_pair, trio.testing.lockstep_stream_pair],
                         ids=["buffered", "lockstep"])
async def test_bytes_are_relayed_unchanged_both_ways(pair: PairFactory) -> None:
    up = INVITE + b"\r\n\r\n" + BYE + bytes(range(256)) * 4  # SIP, a keepalive, then not SIP at all
    down = OK + b"\r\n" + bytes(range(255, -1, -1))
    log = RecordingLog()
    async with trio.open_nursery() as nursery:
        chain = start(nursery, observed(log), pair=pair, log=log)
        # Lockstep streams block a sender until its reader reads: send and receive concurrently.
        nursery.start_soon(send_in_chunks, chain.customer, up)
        nursery.start_soon(send_in_chunks, chain.core, down)
        assert await receive_exactly(chain.core, len(up)) == up
        assert await receive_exactly(chain.customer, len(down)) == down
        await chain.customer.send_eof()
        await chain.core.send_eof()
        await chain.done.wait()

    closed = chain.log.find("connection_closed")[0]
    assert closed["bytes_customer_to_core"] == len(up) and closed["bytes_core_to_customer"] == len(down)
    # What the bytes held is the observer's to say, in the mirror's connection_observed line.
    seen = chain.log.find("connection_observed")[0]
    assert seen["messages_customer_to_core"] == 2 and seen["messages_core_to_customer"] == 1
    assert seen["keepalives"] == 2  # a ping up, a pong down
    assert seen["unframeable_bytes"] == 4 * 256 + 256  # the garbage tail of each direction
    assert seen["gaps"] == 0 and seen["missing_bytes"] == 0
    assert chain.accepted.closed and chain.dialled.closed


async def test_the_relay_hands_over_raw_records_in_order() -> None:
    """Per leg its addresses then its handshake; per chunk the bytes with their offset in
    their direction's stream; at the end one closed record with the byte counts."""
    feed = RecordingFeed()
    async with trio.open_nursery() as nursery:
        chain = start(nursery, plan(feed))
        await chain.customer.send_all(INVITE[:100])
        await feed.wait_for(5)
        await chain.customer.send_all(INVITE[100:])
        await chain.core.send_all(OK)
        assert await receive_exactly(chain.core, len(INVITE)) == INVITE
        assert await receive_exactly(chain.customer, len(OK)) == OK
        await chain.customer.send_eof()
        await chain.core.send_eof()
        await chain.done.wait()

    kinds = [type(r).__name__ for r in feed.records]
    assert kinds[:4] == ["ConnectionOpened", "HandshakeDone", "ConnectionOpened", "HandshakeDone"]
    assert kinds[-1] == "ConnectionClosed" and set(kinds[4:-1]) == {"Chunk"}
    assert all(r.conn == 1 for r in feed.records) and feed.forgotten == [1]
    opened = [r for r in feed.records if isinstance(r, chunk_records.ConnectionOpened)]
    assert opened[0].conn_id == "m-1" and opened[0].route == "lab"
    assert opened[0].legs == (chunk_records.LegAddresses("customer", PEER, LOCAL),)
    assert opened[1].legs == (chunk_records.LegAddresses("core", CORE_LOCAL, ("198.51.100.7", 5061)),)
    handshakes = [r for r in feed.records if isinstance(r, chunk_records.HandshakeDone)]
    assert [h.leg for h in handshakes] == ["customer", "core"]
    assert handshakes[0].facts["master_secret"] == "cd" * 48  # secrets travel: the key log needs them
    assert "upstream" not in handshakes[0].facts and handshakes[1].facts["upstream"] == "198.51.100.7:5061"
    for direction, sent in ((FROM_ACCEPTED, INVITE), (FROM_DIALLED, OK)):
        chunks = [r for r in feed.records if isinstance(r, chunk_records.Chunk) and r.direction == direction]
        assert b"".join(c.data for c in chunks) == sent
        assert [c.offset for c in chunks] == [sum(len(c.data) for c in chunks[:i]) for i in range(len(chunks))]
    closed = feed.records[-1]
    assert isinstance(closed, chunk_records.ConnectionClosed)
    assert (closed.bytes_from_accepted, closed.bytes_from_dialled) == (len(INVITE), len(OK))
    assert closed.closed_by == "customer" and closed.reason == "customer sent close_notify"
    # The relay logs no observation of its own: no sip, no handshake_done.
    assert chain.log.names() == ["connection_closed"]


async def test_half_close_lets_the_other_direction_finish() -> None:
    async with trio.open_nursery() as nursery:
        chain = start(nursery, plan())
        await chain.customer.send_all(INVITE)
        await chain.customer.send_eof()  # the E-SBC is done sending, still reading
        assert await receive_until_eof(chain.core) == INVITE  # passed on as the core's EOF
        await chain.core.send_all(OK)  # the core's answer still gets through
        assert await receive_exactly(chain.customer, len(OK)) == OK
        assert not chain.done.is_set()
        await chain.core.send_eof()
        assert await receive_until_eof(chain.customer) == b""
        await chain.done.wait()

    closed = chain.log.find("connection_closed")[0]
    assert closed["closed_by"] == "customer" and closed["reason"] == "customer sent close_notify"
    assert closed["bytes_core_to_customer"] == len(OK)


async def test_half_close_gives_the_other_direction_a_bounded_time(autojump_clock: trio.abc.Clock) -> None:
    async with trio.open_nursery() as nursery:
        chain = start(nursery, plan(half_close_timeout=5.0))
        await chain.customer.send_eof()
        half_closed = trio.current_time()
        assert await receive_until_eof(chain.core) == b""
        # The core never closes its side: the session does, half_close_timeout later.
        assert await receive_until_eof(chain.customer) == b""
        await chain.done.wait()
    assert trio.current_time() - half_closed >= 5.0
    closed = chain.log.find("connection_closed")[0]
    assert closed["closed_by"] == "customer" and closed["reason"] == "customer sent close_notify"
    assert chain.accepted.closed and chain.dialled.closed


async def test_tcp_close_without_close_notify_closes_both_legs_at_once() -> None:
    async with trio.open_nursery() as nursery:
        chain = start(nursery, plan())
        await chain.core.send_all(OK)
        assert await receive_exactly(chain.customer, len(OK)) == OK
        chain.dialled.eof_without_close_notify = True  # what OpenSSLStream reports for a bare FIN
        await chain.core.send_eof()
        # Not passed on as a half-close: the customer's leg is closed too.
        assert await receive_until_eof(chain.customer) == b""
        await chain.done.wait()
    closed = chain.log.find("connection_closed")[0]
    assert closed["closed_by"] == "core" and closed["reason"] == "core closed TCP without TLS close_notify"


async def test_core_unreachable_is_logged_and_closes_the_customer() -> None:
    published, log = Published(), RecordingLog()

    async def no_core() -> DialledLeg:
        await trio.lowlevel.checkpoint()
        raise UpstreamError([("198.51.100.7:5061", "Connection refused"), ("198.51.100.8:5061", "TCP connect timed out after 5 s")])

    async with trio.open_nursery() as nursery:
        chain = start(nursery, observed(log, published), dial=no_core, log=log)
        assert await receive_until_eof(chain.customer) == b""
        await chain.done.wait()

    assert chain.log.names() == ["handshake_done", "no_upstream", "connection_closed", "connection_observed"]
    failed = chain.log.find("no_upstream")[0]
    assert failed["level"] == "error" and failed["leg"] == "core" and failed["conn"] == "m-1"
    assert failed["attempts"] == ["198.51.100.7:5061", "198.51.100.8:5061"]
    assert "Connection refused" in failed["detail"]
    closed = chain.log.find("connection_closed")[0]
    assert closed["closed_by"] == "siptap" and closed["reason"] == "no_upstream"
    assert chain.accepted.closed
    # The customer's handshake, then its close: the mirror lets the connection go too.
    assert [type(e) for e in published] == [KeyEvent, ConnectionClosed]


async def test_idle_timeout_closes_both_legs(autojump_clock: trio.abc.Clock) -> None:
    async with trio.open_nursery() as nursery:
        chain = start(nursery, plan(idle_timeout=30.0))
        await chain.customer.send_all(INVITE)
        assert await receive_exactly(chain.core, len(INVITE)) == INVITE
        await trio.sleep(20)  # the clock jumps; traffic then restarts the idle period
        await chain.core.send_all(OK)
        assert await receive_exactly(chain.customer, len(OK)) == OK
        last_traffic = trio.current_time()
        assert await receive_until_eof(chain.customer) == b""
        assert await receive_until_eof(chain.core) == b""
        await chain.done.wait()
    assert trio.current_time() - last_traffic >= 30.0
    closed = chain.log.find("connection_closed")[0]
    assert closed["closed_by"] == "siptap" and closed["reason"] == "idle for 30 s"


async def test_events_are_published_and_logged_in_order() -> None:
    """The relay and the mirror's observer in one process (the demo's wiring): the same
    events and log lines, in the same order, as when the relay observed for itself."""
    published, log = Published(), RecordingLog()
    async with trio.open_nursery() as nursery:
        chain = start(nursery, observed(log, published, frozenset({"customer", "core"})), log=log)
        await published.wait_for(2)  # both handshakes
        await chain.customer.send_all(INVITE)
        await published.wait_for(2 + 4)  # INVITE and its SDES key, once per mirrored leg
        await chain.core.send_all(OK)
        await published.wait_for(6 + 4)
        await chain.customer.send_all(BYE)
        await published.wait_for(10 + 2)
        await chain.customer.send_eof()
        await chain.core.send_eof()
        await chain.done.wait()

    summary = []
    for event in published:
        what = type(event).__name__
        if isinstance(event, SipEvent):
            summary.append((what, event.leg.leg, event.from_client, event.view.cseq_method if event.view else None))
        elif isinstance(event, SrtpKeyEvent):
            summary.append((what, event.leg.leg, event.from_client, event.method_or_status))
        else:
            summary.append((what, event.leg.leg, None, None))
    assert summary == [
        ("KeyEvent", "customer", None, None), ("KeyEvent", "core", None, None),
        ("SipEvent", "customer", True, "INVITE"), ("SipEvent", "core", True, "INVITE"),
        ("SrtpKeyEvent", "customer", True, "INVITE"), ("SrtpKeyEvent", "core", True, "INVITE"),
        ("SipEvent", "customer", False, "INVITE"), ("SipEvent", "core", False, "INVITE"),
        ("SrtpKeyEvent", "customer", False, "200"), ("SrtpKeyEvent", "core", False, "200"),
        ("SipEvent", "customer", True, "BYE"), ("SipEvent", "core", True, "BYE"),
        ("ConnectionClosed", "customer", None, None), ("ConnectionClosed", "core", None, None),
    ]
    keys = [e for e in published if isinstance(e, KeyEvent)]
    assert keys[0].leg.client == PEER and keys[0].leg.server == LOCAL
    assert keys[1].leg.client == CORE_LOCAL and keys[1].facts.leg == "core"
    srtp = [e for e in published if isinstance(e, SrtpKeyEvent)]
    assert all(e.key.key_params_b64.startswith(INLINE) for e in srtp)
    closing = [e for e in published if isinstance(e, ConnectionClosed)]
    assert closing[0].bytes_from_client == len(INVITE) + len(BYE) and closing[0].bytes_from_server == len(OK)
    assert closing[0].messages_observed == 3

    assert chain.log.names() == [
        "handshake_done", "handshake_done", "sip", "srtp_key", "sip", "srtp_key", "sip", "connection_observed",
        "connection_closed",
    ]
    customer_hs, core_hs = chain.log.find("handshake_done")
    assert customer_hs["leg"] == "customer" and customer_hs["client"] == "192.0.2.10:40000"
    assert customer_hs["upstream"] is None and customer_hs["keylog"]  # key material is logged by default
    assert core_hs["leg"] == "core" and core_hs["upstream"] == "198.51.100.7:5061"
    assert core_hs["server"] == "198.51.100.7:5061" and core_hs["peer_chain_length"] == 0
    assert all(e["conn"] == "m-1" and e["route"] == "lab" for e in chain.log.events)
    # The handshake records were handed over, then let go by both legs.
    assert chain.accepted.facts is None and chain.dialled.facts is None

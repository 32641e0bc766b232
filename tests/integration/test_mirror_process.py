"""The mirror can never slow the relay (issue 16), with real processes: ``siptap run`` (the
supervisor, the mirror process, one relay worker), the lab core and a lab customer on loopback.

Stopped (SIGSTOP) under traffic, the mirror costs observation, not calls: every call goes
through, the worker counts what it could not hand over, and once the mirror runs again it
reports the gap and frames the next messages. Killed (SIGKILL), it is restarted, the calls go
on meanwhile, and new connections are observed again, and so are the connections it had open.
"""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path

import trio

from siptap.tools.lab.core import start_lab_core
from siptap.tools.lab.customer import CustomerSession, customer_context
from tests.relay.harness import SiptapProcess, write_config

# The smallest channel the config allows (the kernel doubles it): about a hundred SIP-sized
# records, so a stopped mirror fills it within a few dozen calls.
SMALL_CHANNEL = "[mirror]\nchannel_buffer = 65536\n"


async def mirror_pid(siptap: SiptapProcess, count: int = 1) -> int:
    started = await siptap.wait_for("mirror_starting", count=count)
    return int(started[count - 1]["pid"])


async def test_a_stopped_mirror_costs_observation_not_calls(pki: Path, tmp_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        core, core_port = await start_lab_core(nursery, pki)
        siptap = SiptapProcess(write_config(tmp_path, pki, cores=[core_port], top=SMALL_CHANNEL))
        await siptap.start(nursery)
        port = await siptap.port()
        pid = await mirror_pid(siptap)
        session = await CustomerSession.connect("127.0.0.1", port, customer_context(pki))
        assert await session.call(media_port=30000) == ["100", "180", "200", "200"]
        conn = (await siptap.wait_for("connection_accepted"))[0]["conn"]
        await siptap.wait_for("sip", count=7, conn=conn)  # observed while the mirror runs
        # A second connection that will end while the mirror is stopped and the channel full.
        short = await CustomerSession.connect("127.0.0.1", port, customer_context(pki))
        assert await short.call(media_port=29000) == ["100", "180", "200", "200"]
        short_conn = (await siptap.wait_for("connection_accepted", count=2))[1]["conn"]
        await siptap.wait_for("sip", count=7, conn=short_conn)

        os.kill(pid, signal.SIGSTOP)
        try:
            calls = 0
            # Calls until the worker has had to drop (bounded): the relay never waits.
            while not siptap.find("mirror_channel_dropped"):
                assert calls < 200, "the channel never filled"
                assert await session.call(media_port=30002 + 2 * calls) == ["100", "180", "200", "200"]
                calls += 1
            for _ in range(5):  # and a few more while dropping
                assert await session.call(media_port=30002 + 2 * calls) == ["100", "180", "200", "200"]
                calls += 1
            # Its closed record meets the full channel: held by the worker, not dropped.
            await short.aclose()
            await siptap.wait_for("connection_closed", conn=short_conn)
        finally:
            os.kill(pid, signal.SIGCONT)
        dropped = siptap.find("mirror_channel_dropped")[0]
        assert dropped["level"] == "warning" and dropped["worker"] == 1

        # Running again, the mirror first works through what the channel held; records sent
        # meanwhile may still find it full. Calls until one is observed whole (bounded): the
        # next record after a drop brings the sender's marker, the mirror reports the gap and
        # frames again from the next message.
        observed_calls = 0
        while not observed_calls:
            assert calls < 300, "observation never recovered"
            assert await session.call(media_port=31000 + 2 * calls) == ["100", "180", "200", "200"]
            calls += 1
            with contextlib.suppress(AssertionError):  # this call's BYE may have been dropped too
                await siptap.wait_for("sip", conn=conn, call_id=last_call_id(session), method="BYE", timeout=2.0)
            observed_calls = len(siptap.find("sip", conn=conn, call_id=last_call_id(session), method="INVITE"))
        gap = siptap.find("gap", conn=conn)[0]
        assert gap["cause"] == "channel full" and gap["process"] == "mirror"
        assert gap["chunks"] > 0 and gap["missing"] > 0
        await session.aclose()
        observed = (await siptap.wait_for("connection_observed", conn=conn))[0]
        closed = (await siptap.wait_for("connection_closed", conn=conn))[0]
        # The connection that ended during the stop is summarised all the same.
        short_observed = (await siptap.wait_for("connection_observed", conn=short_conn))[0]
        assert await siptap.stop() == 0
        nursery.cancel_scope.cancel()

    # Every call reached the core, the ones made while the mirror was stopped included.
    assert closed["closed_by"] == "customer"
    assert len([m for m in core.received if m.startswith(b"INVITE ")]) == calls + 2  # and the short connection's
    # The mirror saw less than was relayed, said so, and framed what came after the hole:
    # the last call's INVITE is among the observed messages.
    # One gap line per direction that lost bytes, at most one per direction every 10 s; the
    # rest ride on the next line (suppressed_*) or on gaps_summarised at the close.
    gaps = siptap.find("gap", conn=conn)
    summaries = siptap.find("gaps_summarised", conn=conn)
    assert len(gaps) >= 1
    assert observed["gaps"] == sum(1 + g.get("suppressed_gaps", 0) for g in gaps) + sum(s["gaps"] for s in summaries)
    assert observed["missing_bytes"] == (sum(g["missing"] + g.get("suppressed_missing", 0) for g in gaps)
                                         + sum(s["missing"] for s in summaries)) > 0
    assert short_observed["messages_customer_to_core"] + short_observed["messages_core_to_customer"] >= 7
    assert 14 <= observed["messages_customer_to_core"] + observed["messages_core_to_customer"] < 7 * (calls + 1)


def last_call_id(session: CustomerSession) -> str:
    last_invite = [m for m in session.sent if m.startswith(b"INVITE ")][-1]
    return next(line.split(b":", 1)[1].strip().decode() for line in last_invite.split(b"\r\n")
                if line.lower().startswith(b"call-id:"))


async def test_a_killed_mirror_is_restarted_while_calls_go_on(pki: Path, tmp_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        core, core_port = await start_lab_core(nursery, pki)
        siptap = SiptapProcess(write_config(tmp_path, pki, cores=[core_port]))
        await siptap.start(nursery)
        port = await siptap.port()
        pid = await mirror_pid(siptap)
        session = await CustomerSession.connect("127.0.0.1", port, customer_context(pki))
        assert await session.call(media_port=30000) == ["100", "180", "200", "200"]

        os.kill(pid, signal.SIGKILL)
        died = (await siptap.wait_for("mirror_died"))[0]
        assert died["pid"] == pid and died["level"] == "error"
        # The trunk keeps relaying while the mirror is gone and while it comes back.
        for i in range(3):
            assert await session.call(media_port=30002 + 2 * i) == ["100", "180", "200", "200"]
        await siptap.wait_for("mirror_restarted")
        again = await mirror_pid(siptap, count=2)
        assert again != pid
        # The worker's tap retries once a second: the new mirror says when it has the channel.
        await siptap.wait_for("mirror_channel_open", count=2)
        # A new connection is observed by the new mirror from its first message.
        fresh = await CustomerSession.connect("127.0.0.1", port, customer_context(pki))
        assert await fresh.call(media_port=31000) == ["100", "180", "200", "200"]
        accepted = await siptap.wait_for("connection_accepted", count=2)
        await siptap.wait_for("sip", count=7, conn=accepted[1]["conn"])
        # The old trunk's connection was announced to the dead mirror: the worker replays its
        # lifecycle records to the new one, which reports the bytes it never saw as a gap and
        # observes the trunk again from its next message.
        old = accepted[0]["conn"]
        assert await session.call(media_port=31002) == ["100", "180", "200", "200"]
        await siptap.wait_for("sip", conn=old, call_id=last_call_id(session), method="BYE")
        joined = await siptap.wait_for("gap", conn=old, cause="joined mid-stream", count=2)
        # One per direction, from the stream's start to the first byte the new mirror got: the
        # four calls before it (one seen by the dead mirror, three relayed while none ran).
        assert {g["direction"] for g in joined} == {"customer->core", "core->customer"}
        assert all(g["process"] == "mirror" and g["offset"] == 0 and g["missing"] > 4 * 1000 for g in joined)
        assert len(siptap.find("gap", conn=old)) == 2
        # Its handshakes replayed: the new mirror has both legs' facts (and keys) again.
        assert {e["leg"] for e in siptap.find("handshake_done", conn=old)} == {"customer", "core"}
        assert not siptap.find("gap", cause="connection not announced")
        await session.aclose()
        await fresh.aclose()
        await siptap.wait_for("connection_closed", count=2)
        assert await siptap.stop() == 0
        nursery.cancel_scope.cancel()
    assert len([m for m in core.received if m.startswith(b"INVITE ")]) == 6

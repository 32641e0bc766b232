"""Mirror outputs over mutual TLS: the client context's file checks, and HEP / JSON lines over
real TLS on loopback to a collector played by the standard library's ssl server (OpenSSL 3)
through trio: packets back to back and decoded, siptap's client certificate seen by the
collector, and each refusal (name, trust, missing or foreign client certificate) logged in
words with the events counted as dropped. Real daemons (stunnel, Kamailio) are in
tests/integration/test_mirror_tls.py."""

from __future__ import annotations

import json
import os
import shutil
import ssl
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
import structlog.testing
import trio

from siptap.config import Endpoint
from siptap.config.mirror import CollectorTls, HepSinkSettings, JsonlSinkSettings, MirrorSettings
from siptap.errors import CertificateError
from siptap.mirror.collector_tls import client_context
from siptap.mirror.events import MirrorEvent
from siptap.mirror.fanout import Fanout
from siptap.mirror.hep import HepSink
from siptap.mirror.jsonl import JsonlSink
from siptap.mirror.sink_factory import build_sinks
from siptap.sansio import hep
from tests.tls.helpers import OpenSSLServer

from .helpers import CALL_ID, dialog_events, read_until

FAST = {"backoff_initial": 0.01, "backoff_max": 0.05}


def collector_context(pki: Path, *, cert: str = "core", require_client_cert: bool = True) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(pki / f"{cert}.pem", pki / f"{cert}.key")
    if require_client_cert:
        ctx.load_verify_locations(pki / "ca.pem")
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def hep_tls(pki: Path, port: int, **kw: object) -> HepSinkSettings:
    fields: dict[str, object] = {"transport": "tls", "cert": pki / "proxy-client.pem",
                                 "key": pki / "proxy-client.key", "ca": pki / "ca.pem"}
    fields.update(kw)
    return HepSinkSettings(Endpoint("127.0.0.1", port), **fields)  # type: ignore[arg-type]  # fields: any of its keys, per test


async def tls_collector(ctx: ssl.SSLContext) -> tuple[trio.SocketListener, int]:
    (listener,) = await trio.open_tcp_listeners(0, host="127.0.0.1")
    return listener, listener.socket.getsockname()[1]


async def accept_tls(listener: trio.SocketListener, ctx: ssl.SSLContext) -> trio.SSLStream[trio.SocketStream]:
    stream = trio.SSLStream(await listener.accept(), ctx, server_side=True)
    await stream.do_handshake()
    return stream


async def read_hep(stream: trio.abc.ReceiveStream, count: int) -> list[hep.HepPacket]:
    buf, packets = b"", []
    with trio.fail_after(10):
        while len(packets) < count:
            size = hep.frame_length(buf)
            if size is not None and len(buf) >= size:
                packets.append(hep.decode(buf[:size]))
                buf = buf[size:]
                continue
            chunk = await stream.receive_some(65536)
            assert chunk, "siptap closed the TLS connection early"
            buf += chunk
    return packets


# -- the client context: every bad file named, in words ------------------------------------


def tls_of(pki: Path, **kw: object) -> CollectorTls:
    fields: dict[str, object] = {"cert": pki / "proxy-client.pem", "key": pki / "proxy-client.key",
                                 "ca": pki / "ca.pem", "server_name": "localhost"}
    fields.update(kw)
    return CollectorTls(**fields)  # type: ignore[arg-type]  # fields: any of its keys, per test


def test_client_context_verifies_the_collector_and_presents_siptaps_certificate(pki: Path) -> None:
    ctx = client_context(tls_of(pki))
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2


@pytest.mark.parametrize(("change", "named", "problem"), [
    ({"ca": "missing.pem"}, "missing.pem", "cannot read: No such file or directory"),
    ({"ca": "proxy-client.key"}, "proxy-client.key", "no PEM certificate found"),
    ({"cert": "missing.pem"}, "missing.pem", "cannot read"),
    ({"key": "customer.key"}, "customer.key", "private key does not match the certificate in"),
])
def test_client_context_names_the_bad_file(pki: Path, change: dict[str, str], named: str, problem: str) -> None:
    with pytest.raises(CertificateError) as caught:
        client_context(tls_of(pki, **{k: pki / v for k, v in change.items()}))
    assert caught.value.path == str(pki / named)
    assert problem in caught.value.problem


def test_client_context_refuses_a_key_others_can_read(pki: Path, tmp_path: Path) -> None:
    key = tmp_path / "client.key"
    shutil.copyfile(pki / "proxy-client.key", key)
    os.chmod(key, 0o644)
    with pytest.raises(CertificateError, match=r"readable by group/others .* chmod 600"):
        client_context(tls_of(pki, key=key))


def test_build_sinks_names_the_config_key_of_a_bad_file(pki: Path) -> None:
    settings = MirrorSettings(
        hep=(HepSinkSettings(Endpoint("127.0.0.1", 9060)),),
        jsonl=(JsonlSinkSettings(transport="tls", address=Endpoint("127.0.0.1", 9999), cert=pki / "proxy-client.pem",
                                 key=pki / "customer.key", ca=pki / "ca.pem"),),
    )
    with pytest.raises(CertificateError) as caught:
        build_sinks(settings)
    assert caught.value.section == "mirror.jsonl[0].key"


# -- over real TLS --------------------------------------------------------------------------


async def test_hep_over_mutual_tls_back_to_back_with_auth_key(pki: Path) -> None:
    ctx = collector_context(pki)
    listener, port = await tls_collector(ctx)
    sink = HepSink(hep_tls(pki, port, auth_key="s3cret", capture_id=77), **_tls_link(pki, port, FAST))
    assert sink.name == f"hep:tls:127.0.0.1:{port}"
    fanout = Fanout([sink])
    events = dialog_events()
    async with trio.open_nursery() as nursery:
        await nursery.start(fanout.run)
        stream = await accept_tls(listener, ctx)
        # The collector saw siptap's client certificate.
        peer = stream.getpeercert()
        assert peer is not None and ("commonName", "proxy-client") in (item for rdn in peer["subject"] for item in rdn)
        await sink.link.wait_connected()
        for event in events:
            assert fanout.publish(event)
        packets = await read_hep(stream, len(events))
        await fanout.aclose()
        await stream.aclose()
    assert [p.payload for p in packets] == [e.data for e in events]
    assert {(p.auth_key, p.capture_id, p.correlation_id) for p in packets} == {(b"s3cret", 77, CALL_ID.encode())}
    assert sink.sent == len(events) and sink.dropped == 0


async def test_jsonl_over_mutual_tls_one_object_per_line(pki: Path) -> None:
    ctx = collector_context(pki)
    listener, port = await tls_collector(ctx)
    settings = JsonlSinkSettings(transport="tls", address=Endpoint("127.0.0.1", port), cert=pki / "proxy-client.pem",
                                 key=pki / "proxy-client.key", ca=pki / "ca.pem")
    (sink,) = build_sinks(MirrorSettings(jsonl=(settings,)), **FAST)  # type: ignore[arg-type]  # FAST: LinkOptions keys
    assert isinstance(sink, JsonlSink) and sink.name == f"jsonl:tls:127.0.0.1:{port}"
    fanout = Fanout([sink])
    events = dialog_events()
    async with trio.open_nursery() as nursery:
        await nursery.start(fanout.run)
        stream = await accept_tls(listener, ctx)
        for event in events:
            fanout.publish(event)
        data = await read_until(stream, lambda b: b.count(b"\n") >= len(events), timeout=10)
        await fanout.aclose()
        await stream.aclose()
    lines = [json.loads(line) for line in data.splitlines()]
    assert [line["sip"]["call_id"] for line in lines] == [CALL_ID] * len(events)
    assert sink.sent == len(events)


@pytest.mark.parametrize(("server_cert", "client", "reason"), [
    # The collector's certificate does not carry the name siptap expects.
    ("core", {"server_name": "collector.example"}, "does not carry the name 'collector.example'"),
    # The collector's certificate is from a CA siptap does not trust.
    ("foreign-core", {}, "the collector's certificate is not trusted by the CA bundle"),
])
async def test_collector_siptap_must_not_trust_is_refused_and_drops_are_counted(
        pki: Path, server_cert: str, client: dict[str, str], reason: str) -> None:
    ctx = collector_context(pki, cert=server_cert)
    listener, port = await tls_collector(ctx)
    settings = hep_tls(pki, port, **client)
    sink = HepSink(settings, **_tls_link(pki, port, FAST, server_name=client.get("server_name", "localhost")))
    fanout = Fanout([sink])
    events = dialog_events()
    with structlog.testing.capture_logs() as logs:
        async with trio.open_nursery() as nursery:
            await nursery.start(fanout.run)

            async def refuse() -> None:  # the collector's side: each handshake fails
                while True:
                    with pytest.raises(trio.BrokenResourceError):
                        await accept_tls(listener, ctx)

            nursery.start_soon(refuse)
            with trio.fail_after(10):
                while sink.errors < 2:  # a refused handshake, retried with back-off
                    await trio.sleep(0.01)  # polling a condition, bounded by the deadline
            for event in events:
                fanout.publish(event)
            await sink.wait_handled(len(events))
            await fanout.aclose()
            nursery.cancel_scope.cancel()
    assert sink.link.connects == 0
    assert sink.dropped == len(events) and sink.drop_reasons == {"peer down": len(events)}
    (down,) = [e for e in logs if e["event"] == "mirror_link_down"]
    assert reason in down["reason"], down


@pytest.mark.parametrize(("client_cert", "reason"), [
    (None, "siptap has none"),
    ("foreign", "the collector refused siptap's client certificate"),
])
async def test_collector_that_refuses_siptaps_client_certificate_is_logged_clearly(
        pki: Path, client_cert: str | None, reason: str) -> None:
    # openssl s_server requiring a client certificate (-Verify): a C TLS stack that sends its
    # alert. With TLS 1.3 the refusal arrives after siptap's side of the handshake is done.
    cert = {"cert": None, "key": None} if client_cert is None else {
        "cert": pki / f"{client_cert}.pem", "key": pki / f"{client_cert}.key"}
    with OpenSSLServer("-cert", str(pki / "core.pem"), "-key", str(pki / "core.key"), "-Verify", "1",
                       "-CAfile", str(pki / "ca.pem"), "-verify_return_error") as collector:
        settings = hep_tls(pki, collector.port, **cert)
        assert settings.tls is not None
        sink = HepSink(settings, tls_context=client_context(settings.tls), tls=settings.tls,
                       backoff_initial=0.01, backoff_max=0.05)
        fanout = Fanout([sink])
        with structlog.testing.capture_logs() as logs:
            async with trio.open_nursery() as nursery:
                await nursery.start(fanout.run)
                with trio.fail_after(10):
                    while not any(e["event"] == "mirror_link_down" for e in logs):
                        await trio.sleep(0.01)  # polling a condition, bounded by the deadline
                await fanout.aclose()
    down = next(e for e in logs if e["event"] == "mirror_link_down")
    assert reason in down["reason"], down
    assert sink.errors >= 1


async def judging_collector(listener: trio.SocketListener, ctx: ssl.SSLContext, answered: trio.Event,
                            judge: trio.Event) -> None:
    """A TLS 1.3 collector driven by hand (an ssl.SSLObject over the accepted socket) so that
    the test says when it judges siptap's client certificate: it answers the ClientHello,
    then holds siptap's answer (Certificate, CertificateVerify, Finished: siptap's side of the
    handshake is done when it arrives) unread until ``judge`` is set; OpenSSL then checks the
    certificate and sends its verdict (an alert, or its session tickets)."""
    stream = await listener.accept()
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_side=True)
    answered_client = False
    with trio.fail_after(10):
        while True:
            data = await stream.receive_some(65536)
            if answered_client and not answered.is_set():
                answered.set()
                await judge.wait()
            if not data:
                return
            incoming.write(data)
            try:
                tls.do_handshake()
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLError:
                await stream.send_all(outgoing.read())  # the alert
                await stream.aclose()
                return
            if out := outgoing.read():
                await stream.send_all(out)
                answered_client = True


async def test_tls13_refusal_after_the_handshake_is_a_refused_connect_and_nothing_counts_as_sent(pki: Path) -> None:
    """TLS 1.3: siptap's side of the handshake is done before the collector has judged its
    certificate. The link is not up until the collector shows it accepted siptap: the events
    published meanwhile wait, unwritten; the collector's alert refuses the connection, and
    they are dropped with that alert as their reason (none counted as sent, no link up)."""
    ctx = collector_context(pki)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    listener, port = await tls_collector(ctx)
    settings = hep_tls(pki, port, cert=pki / "foreign.pem", key=pki / "foreign.key")
    assert settings.tls is not None
    # accept_wait: long enough that only the collector's verdict can end the wait.
    sink = HepSink(settings, tls_context=client_context(settings.tls), tls=settings.tls, accept_wait=60.0, **FAST)
    events = dialog_events()
    logs = await _publish_then_judge(listener, ctx, sink, events,
                                     lambda: sink.link.connected or sink.link.awaiting_acceptance)
    assert not [e for e in logs if e["event"] == "mirror_link_up"]
    (down,) = [e for e in logs if e["event"] == "mirror_link_down"]
    assert down["reason"] == (f"the collector refused siptap's client certificate {pki / 'foreign.pem'} (TLS alert "
                              "unknown_ca): is it issued by a CA the collector trusts, and still valid?")
    assert sink.sent == 0 and sink.link.connects == 0 and sink.errors >= 1
    assert sink.drop_reasons == {"refused by the collector (TLS alert unknown_ca)": len(events)}


@pytest.mark.parametrize(("tickets", "wait", "accepted"), [
    (2, 60.0, "session ticket"),  # only the ticket can end the wait
    (0, 0.05, "no refusal within 0.05 s"),
])
async def test_tls13_link_is_up_once_the_collector_accepted_siptap(pki: Path, tickets: int, wait: float,
                                                                  accepted: str) -> None:
    """The same collector accepting siptap's certificate: its session ticket says so (OpenSSL
    sends one once the client's certificate and Finished passed); one that sends no ticket
    is taken as accepting after accept_wait without a refusal. Events published while the
    link awaited the verdict are delivered, not dropped."""
    ctx = collector_context(pki)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.num_tickets = tickets
    listener, port = await tls_collector(ctx)
    sink = HepSink(hep_tls(pki, port), **_tls_link(pki, port, {**FAST, "accept_wait": wait}))
    events = dialog_events()
    logs = await _publish_then_judge(listener, ctx, sink, events, lambda: sink.link.awaiting_acceptance)
    (up,) = [e for e in logs if e["event"] == "mirror_link_up"]
    assert (up["tls_version"], up["accepted"]) == ("TLSv1.3", accepted)
    assert sink.sent == len(events) and sink.dropped == 0


def _tls_link(pki: Path, port: int, options: dict[str, float], server_name: str = "localhost") -> dict[str, object]:
    """The link options build_sinks would give a tls output (tests pass them by hand)."""
    tls = tls_of(pki, server_name=server_name)
    return {**options, "tls_context": client_context(tls), "tls": tls}


async def test_stalled_collector_over_tls_counts_exactly_what_it_can_still_read(pki: Path) -> None:
    # The collector completes the handshake, then stops reading. siptap's sends time out: the
    # record being written is dropped with that reason, the link starts a fresh connection.
    # When the collector finally reads, it finds exactly the records counted as sent.
    ctx = collector_context(pki)
    listener, port = await tls_collector(ctx)
    settings = JsonlSinkSettings(transport="tls", address=Endpoint("127.0.0.1", port), cert=pki / "proxy-client.pem",
                                 key=pki / "proxy-client.key", ca=pki / "ca.pem", server_name="localhost")
    assert settings.tls is not None
    sink = JsonlSink(settings, tls_context=client_context(settings.tls), tls=settings.tls, send_timeout=0.05,
                     backoff_initial=0.01, backoff_max=0.05)
    big = dialog_events()[0]
    big = type(big)(big.ts, big.leg, big.from_client, big.data + b"x" * 60000, big.view)
    fanout = Fanout([sink], queue_size=10)
    async with trio.open_nursery() as nursery:
        await nursery.start(fanout.run)
        stream = await accept_tls(listener, ctx)  # handshake done, then never read until below
        published = 0
        while "send timed out" not in sink.drop_reasons:
            fanout.publish(big)
            published += 1
            await sink.wait_handled(published)
        await fanout.aclose()
        data = b""
        with trio.fail_after(10):
            try:
                while chunk := await stream.receive_some(1 << 20):
                    data += chunk
            except trio.BrokenResourceError:
                pass  # the connection siptap gave up on may end inside a TLS record
        nursery.cancel_scope.cancel()
    complete = data.split(b"\n")[:-1]
    assert len(complete) == sink.sent
    assert all(json.loads(line)["size"] == len(big.data) for line in complete)
    assert sink.sent + sink.dropped == published
    assert sink.drop_reasons["send timed out"] == 1


@pytest.mark.parametrize(("close_notify", "reason"), [
    (True, "peer closed the connection"),
    (False, "peer closed the connection (without TLS close_notify)"),
])
async def test_collector_going_away_is_noticed_and_reconnected(pki: Path, close_notify: bool, reason: str) -> None:
    ctx = collector_context(pki)
    listener, port = await tls_collector(ctx)
    sink = HepSink(hep_tls(pki, port), **_tls_link(pki, port, FAST))
    fanout = Fanout([sink])
    with structlog.testing.capture_logs() as logs:
        async with trio.open_nursery() as nursery:
            await nursery.start(fanout.run)
            stream = await accept_tls(listener, ctx)
            await sink.link.wait_connected()
            if close_notify:
                await stream.aclose()
            else:
                stream.transport_stream.socket.close()  # a collector that crashed: no TLS goodbye
            again = await accept_tls(listener, ctx)  # siptap is back after the back-off
            await sink.link.wait_connected()
            assert sink.link.connects == 2
            fanout.publish(dialog_events()[0])
            (packet,) = await read_hep(again, 1)
            await fanout.aclose()
            await again.aclose()
    (down,) = [e for e in logs if e["event"] == "mirror_link_down"]
    assert down["reason"] == reason
    assert packet.payload == dialog_events()[0].data and sink.sent == 1


async def _publish_then_judge(listener: trio.SocketListener, ctx: ssl.SSLContext, sink: HepSink,
                              events: Sequence[MirrorEvent], ready: Callable[[], bool]) -> list[dict[str, Any]]:
    """Run a judging collector: once siptap's handshake reached it and ``ready()`` holds,
    publish ``events``, let the collector judge, wait until the sink handled them all; the
    log lines of the whole exchange."""
    fanout = Fanout([sink])
    answered, judge = trio.Event(), trio.Event()
    with structlog.testing.capture_logs() as logs:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(judging_collector, listener, ctx, answered, judge)
            await nursery.start(fanout.run)
            await answered.wait()
            with trio.fail_after(10):
                while not ready():
                    await trio.sleep(0.01)  # polling a condition, bounded by the deadline
            for event in events:
                assert fanout.publish(event)
            judge.set()
            await sink.wait_handled(len(events))
            await fanout.aclose()
            nursery.cancel_scope.cancel()
    return logs

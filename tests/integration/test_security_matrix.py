"""Only authenticated customers get through: `siptap run` with an allow-list and a CRL, and a
matrix of client certificates that must each be refused with its precise reason and never reach
the core (the lab core counts TCP connections); the allowed, valid, unrevoked customer gets
through. Then CRL reload: a certificate revoked after start-up is refused after SIGHUP, while
its connection opened before the reload keeps working.

Clients are the standard library's ssl (a different TLS stack from siptap's pyOpenSSL); each
refusal is matched to its connection by the client's source port in siptap's JSON log.
"""

from __future__ import annotations

import shutil
import signal
import ssl
from datetime import UTC
from pathlib import Path

import pytest
import trio

from siptap.tools.lab.core import start_lab_core
from siptap.tools.lab.customer import CustomerSession, customer_context
from siptap.tools.pki import issue_leaf, revoke, write_crl
from tests.relay.harness import SiptapProcess, write_config

# Every refused identity is on the allow-list except `other-customer`: each refusal below is
# for its own reason, not because the allow-list happened to catch it first.
ALLOW = ["cn:customer", "cn:expired", "cn:future", "cn:serveronly", "cn:foreign", "cn:revoked", "cn:late"]

MATRIX = [
    # (client certificate, reason, a substring of siptap's detail)
    ("foreign", "unknown_ca", "CN=foreign"),
    ("expired", "certificate_expired", "X509 error 10"),
    ("future", "certificate_not_yet_valid", "X509 error 9"),
    ("serveronly", "wrong_key_usage", "X509 error 26"),
    ("revoked", "certificate_revoked", "X509 error 23"),
    ("other-customer", "not_allowed", "not on the route's allow-list"),
]


@pytest.fixture(scope="module")
def crl_pki(pki: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The session PKI copied (its CRL must not leak into other tests), plus `revoked`
    (on the CRL) and `late` (valid until a test revokes it)."""
    directory = tmp_path_factory.mktemp("crl-pki") / "pki"
    shutil.copytree(pki, directory)
    issue_leaf(directory, "revoked", usage="client")
    issue_leaf(directory, "late", usage="client")
    write_crl(directory, [])
    revoke(directory, "revoked")
    return directory


def security_config(tmp: Path, pki: Path, core_port: int, crl: Path) -> Path:
    allow = ", ".join(f'"{a}"' for a in ALLOW)
    return write_config(tmp, pki, cores=[core_port], customer=f'allow = [{allow}]\ncrl = "{crl}"')


async def attempt(siptap: SiptapProcess, port: int, pki: Path, cert: str) -> dict[str, object]:
    """One TLS handshake as ``cert``; must fail. Returns siptap's handshake_failed event for it."""
    tcp = await trio.open_tcp_stream("127.0.0.1", port)
    source = f"127.0.0.1:{tcp.socket.getsockname()[1]}"
    stream = trio.SSLStream(tcp, customer_context(pki, cert=cert), server_hostname="localhost")
    with pytest.raises((trio.BrokenResourceError, ssl.SSLError)):
        with trio.fail_after(10):
            await stream.do_handshake()
            await stream.receive_some(1)  # TLS 1.3 clients learn of a refusal only here
    await stream.aclose()
    return (await siptap.wait_for("handshake_failed", peer=source, timeout=10))[0]


async def test_security_matrix_refuses_each_with_its_reason_and_never_reaches_the_core(
        crl_pki: Path, tmp_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        core, core_port = await start_lab_core(nursery, crl_pki)
        siptap = SiptapProcess(security_config(tmp_path, crl_pki, core_port, crl_pki / "crl.pem"))
        await siptap.start(nursery)
        port = await siptap.port()
        seen = {}
        for cert, _, _ in MATRIX:
            event = await attempt(siptap, port, crl_pki, cert)
            seen[cert] = (event["reason"], event["detail"])
        assert core.connections == 0  # nobody refused reached the core
        assert siptap.find("handshake_done") == []

        session = await CustomerSession.connect("127.0.0.1", port, customer_context(crl_pki))
        assert (await session.options()).status_code == 200
        await session.aclose()
        await siptap.wait_for("connection_closed", count=len(MATRIX) + 1)
        assert await siptap.stop() == 0
        nursery.cancel_scope.cancel()

    for cert, reason, detail in MATRIX:
        assert seen[cert][0] == reason, (cert, seen[cert])
        assert detail in seen[cert][1], (cert, seen[cert])
    assert core.connections == 1
    done = siptap.find("handshake_done", leg="customer")
    assert [e["peer_certificate"]["common_name"] for e in done] == ["customer"]
    assert siptap.find("session_crashed") == []


async def test_sighup_reloads_the_crl_and_keeps_the_live_connection(crl_pki: Path, tmp_path: Path) -> None:
    pki = tmp_path / "pki"  # its own copy: this test revokes `late`
    shutil.copytree(crl_pki, pki)
    async with trio.open_nursery() as nursery:
        core, core_port = await start_lab_core(nursery, pki)
        siptap = SiptapProcess(security_config(tmp_path, pki, core_port, pki / "crl.pem"))
        await siptap.start(nursery)
        port = await siptap.port()
        live = await CustomerSession.connect("127.0.0.1", port, customer_context(pki, cert="late"))
        assert (await live.options()).status_code == 200

        revoke(pki, "late")  # rewrites crl.pem; siptap only reads it on SIGHUP
        siptap.signal(signal.SIGHUP)
        await siptap.wait_for("reloaded")

        event = await attempt(siptap, port, pki, "late")
        assert event["reason"] == "certificate_revoked", event
        assert "CN=late" in event["detail"] and "X509 error 23" in event["detail"]
        assert (await live.options()).status_code == 200  # established before the reload: untouched
        assert core.connections == 1
        await live.aclose()
        await siptap.wait_for("connection_closed", count=2)
        assert await siptap.stop() == 0
        nursery.cancel_scope.cancel()
    assert siptap.find("reload_failed") == []
    assert siptap.find("session_crashed") == []


async def test_sighup_with_an_expired_crl_keeps_the_previous_one(crl_pki: Path, tmp_path: Path) -> None:
    """A stale CRL on reload is refused (logged, with the file and nextUpdate), the old one stays."""
    from datetime import datetime, timedelta

    pki = tmp_path / "pki"
    shutil.copytree(crl_pki, pki)
    async with trio.open_nursery() as nursery:
        _, core_port = await start_lab_core(nursery, pki)
        siptap = SiptapProcess(security_config(tmp_path, pki, core_port, pki / "crl.pem"))
        await siptap.start(nursery)
        port = await siptap.port()
        past = datetime.now(UTC) - timedelta(days=40)
        write_crl(pki, [], now=past, next_update=past + timedelta(days=30))
        siptap.signal(signal.SIGHUP)
        failed = (await siptap.wait_for("reload_failed"))[0]
        assert "route[0].customer.crl" in failed["detail"] and "expired on" in failed["detail"], failed
        # Still the start-up CRL: `revoked` refused, `customer` through.
        assert (await attempt(siptap, port, pki, "revoked"))["reason"] == "certificate_revoked"
        session = await CustomerSession.connect("127.0.0.1", port, customer_context(pki))
        assert (await session.options()).status_code == 200
        await session.aclose()
        assert await siptap.stop() == 0
        nursery.cancel_scope.cancel()


async def test_crl_running_out_is_announced_then_refuses_clients(crl_pki: Path, tmp_path: Path) -> None:
    """A CRL near its nextUpdate is logged as crl_expiring at start-up (and its nextUpdate is a
    metric); one that runs out while siptap runs is logged as crl_expired when it does, after
    which clients are refused as crl_unusable, as the log line said they would be."""
    import urllib.request
    from datetime import datetime, timedelta

    pki = tmp_path / "pki"
    shutil.copytree(crl_pki, pki)
    now = datetime.now(UTC)
    write_crl(pki, [], now=now - timedelta(hours=23), next_update=now + timedelta(hours=1))  # daily CRL, 1 h left
    async with trio.open_nursery() as nursery:
        _, core_port = await start_lab_core(nursery, pki)
        config = security_config(tmp_path, pki, core_port, pki / "crl.pem")
        config.write_text(config.read_text() + '\n[metrics]\nenabled = true\naddress = "127.0.0.1:0"\n')
        siptap = SiptapProcess(config)
        await siptap.start(nursery)
        port = await siptap.port()
        expiring = (await siptap.wait_for("crl_expiring"))[0]
        assert expiring["level"] == "warning" and expiring["key"] == "route[0].customer.crl", expiring
        assert 3000 < expiring["seconds_left"] <= 3600 and expiring["path"] == str(pki / "crl.pem")
        metrics_port = (await siptap.wait_for("metrics_up"))[0]["port"]
        scrape = await trio.to_thread.run_sync(
            lambda: urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read().decode())
        gauge = [line for line in scrape.splitlines() if line.startswith("siptap_crl_next_update_timestamp_seconds{")]
        assert len(gauge) == 1 and 'key="route[0].customer.crl"' in gauge[0], gauge
        assert abs(float(gauge[0].split()[-1]) - (now + timedelta(hours=1)).timestamp()) < 1

        soon = (datetime.now(UTC) + timedelta(seconds=5)).replace(microsecond=0)  # what a CRL can say
        write_crl(pki, [], next_update=soon)
        siptap.signal(signal.SIGHUP)
        await siptap.wait_for("reloaded")
        expired = (await siptap.wait_for("crl_expired", timeout=30))[0]
        assert expired["level"] == "error" and "crl_unusable" in expired["detail"], expired
        assert datetime.now(UTC) >= soon + timedelta(seconds=1)  # when OpenSSL starts refusing
        event = await attempt(siptap, port, pki, "customer")
        assert event["reason"] == "crl_unusable", event
        assert await siptap.stop() == 0
        nursery.cancel_scope.cancel()
    assert siptap.find("reload_failed") == []

"""OCSP as a user meets it: `siptap run` between a real TLS customer and core, the lab OCSP
responder (`siptap certs ocsp`'s) on a free loopback port, and siptap's JSON log and metrics as
the oracle. Good, revoked, responder down (soft and hard), the cache, a slow responder, and a
core that staples its response (`openssl s_server -status_file`)."""

from __future__ import annotations

import shutil
import signal
import ssl
import urllib.request
from datetime import timedelta
from pathlib import Path

import pytest
import trio
from cryptography.x509 import ocsp

from siptap.tls.ocsp import build_request
from siptap.tls.pem import load_certificate_chain
from siptap.tools.lab.core import start_lab_core
from siptap.tools.lab.customer import CustomerSession, customer_context
from siptap.tools.ocsp_responder import LabOcspResponder
from siptap.tools.pki import issue_leaf, revoke
from tests.relay.harness import SiptapProcess, write_config
from tests.tls.helpers import OpenSSLServer

METRICS = '[metrics]\nenabled = true\naddress = "127.0.0.1:0"\n'


@pytest.fixture
def own_pki(pki: Path, tmp_path: Path) -> Path:
    directory = tmp_path / "pki"
    shutil.copytree(pki, directory)
    return directory


async def refused(siptap: SiptapProcess, port: int, pki: Path, cert: str) -> dict[str, object]:
    """One connection as ``cert`` that siptap must close after the TLS handshake; returns
    its handshake_failed event."""
    tcp = await trio.open_tcp_stream("127.0.0.1", port)
    source = f"127.0.0.1:{tcp.socket.getsockname()[1]}"
    stream = trio.SSLStream(tcp, customer_context(pki, cert=cert), server_hostname="localhost")
    with trio.fail_after(20):
        try:
            await stream.do_handshake()  # completes: OCSP is asked after the handshake
            assert await stream.receive_some(1) == b""  # then siptap closes
        except (trio.BrokenResourceError, ssl.SSLError):
            pass
    await stream.aclose()
    return (await siptap.wait_for("handshake_failed", peer=source))[0]


async def relayed(port: int, pki: Path, cert: str) -> None:
    session = await CustomerSession.connect("127.0.0.1", port, customer_context(pki, cert=cert))
    with trio.fail_after(20):
        assert (await session.options()).status_code == 200
    await session.aclose()


async def metric_lines(siptap: SiptapProcess, name: str) -> list[str]:
    port = (await siptap.wait_for("metrics_up"))[0]["port"]
    text = await trio.to_thread.run_sync(
        lambda: urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode())
    return [line for line in text.splitlines() if line.startswith(name)]


async def test_good_then_cached_and_revoked_refused(own_pki: Path, tmp_path: Path) -> None:
    """The responder from the certificate's AIA: a good customer is relayed and its answer
    cached (the second connection does not ask again); a revoked one is refused."""
    responder = LabOcspResponder(own_pki, validity=timedelta(hours=1))
    async with trio.open_nursery() as nursery:
        ocsp_port = await nursery.start(responder.serve)
        url = f"http://127.0.0.1:{ocsp_port}/"
        issue_leaf(own_pki, "customer", usage="client", ocsp_url=url, force=True)
        issue_leaf(own_pki, "gone", usage="client", ocsp_url=url)
        revoke(own_pki, "gone")
        core, core_port = await start_lab_core(nursery, own_pki)
        siptap = SiptapProcess(write_config(tmp_path, own_pki, cores=[core_port], top=METRICS,
                                            customer='ocsp = "hard"'))
        await siptap.start(nursery)
        port = await siptap.port()

        await relayed(port, own_pki, "customer")
        assert responder.requests == 1
        await relayed(port, own_pki, "customer")
        assert responder.requests == 1  # answered from the cache: nextUpdate is an hour away
        failed = await refused(siptap, port, own_pki, "gone")
        assert responder.requests == 2
        counted = await metric_lines(siptap, "siptap_ocsp_checks_total")
        handshakes = await metric_lines(siptap, "siptap_handshake_failures_total")
        assert await siptap.stop() == 0
        nursery.cancel_scope.cancel()

    assert failed["reason"] == "ocsp_revoked" and failed["leg"] == "customer"
    assert "CN=gone" in str(failed["detail"]) and f"{url}: revoked on " in str(failed["detail"])
    good = siptap.find("ocsp_good", leg="customer")
    assert [e["source"] for e in good] == ["responder", "cache"]
    assert core.connections == 2  # the revoked customer never reached the core
    assert 'siptap_ocsp_checks_total{leg="customer",result="good",route="test",source="responder"} 1.0' in counted
    assert 'siptap_ocsp_checks_total{leg="customer",result="good",route="test",source="cache"} 1.0' in counted
    assert 'siptap_ocsp_checks_total{leg="customer",result="revoked",route="test",source="responder"} 1.0' in counted
    assert any('reason="ocsp_revoked"' in line and line.endswith(" 1.0") for line in handshakes), handshakes


async def test_sighup_forgets_cached_answers(own_pki: Path, tmp_path: Path) -> None:
    """A good answer is cached for an hour; after `siptap certs revoke` a SIGHUP makes the
    next connection ask again, and the revoked customer is refused at once."""
    responder = LabOcspResponder(own_pki, validity=timedelta(hours=1))
    async with trio.open_nursery() as nursery:
        ocsp_port = await nursery.start(responder.serve)
        issue_leaf(own_pki, "late", usage="client")
        core, core_port = await start_lab_core(nursery, own_pki)
        siptap = SiptapProcess(write_config(tmp_path, own_pki, cores=[core_port],
                                            customer=f'ocsp = "soft"\nocsp_url = "http://127.0.0.1:{ocsp_port}/"'))
        await siptap.start(nursery)
        port = await siptap.port()
        await relayed(port, own_pki, "late")
        revoke(own_pki, "late")
        await relayed(port, own_pki, "late")  # still the cached good answer
        assert responder.requests == 1
        siptap.signal(signal.SIGHUP)
        await siptap.wait_for("reloaded")
        failed = await refused(siptap, port, own_pki, "late")
        assert responder.requests == 2
        assert await siptap.stop() == 0
        nursery.cancel_scope.cancel()
    assert failed["reason"] == "ocsp_revoked"
    assert [e["source"] for e in siptap.find("ocsp_good")] == ["responder", "cache"]


def handshake_twice(port: int, pki: Path, cert: str) -> list[bool]:
    """Two TLS connections as ``cert``, the second resuming the first's session; whether
    each was resumed. Blocking (the standard library's ssl: trio's SSLStream cannot resume)."""
    import socket

    ctx = customer_context(pki, cert=cert)
    reused, session = [], None
    for _ in range(2):
        with socket.create_connection(("127.0.0.1", port), timeout=20) as raw, \
                ctx.wrap_socket(raw, server_hostname="localhost", session=session) as tls:
            tls.sendall(b"\r\n\r\n")  # a keepalive: the connection is relayed, not refused
            reused.append(tls.session_reused)
            session = tls.session
            try:
                tls.unwrap()  # close_notify: a session ended cleanly stays resumable
            except (ssl.SSLError, OSError):
                pass  # the core's pong, or siptap's close, crossed our close_notify
    return reused


@pytest.mark.parametrize("cert", ["customer", "gone"])
async def test_resumed_sessions_are_checked_too(own_pki: Path, tmp_path: Path, cert: str) -> None:
    """With resumption = true a resumed session has no verified chain; siptap still checks
    the session's certificate (its issuer remembered from the full handshake): good stays
    good from the cache, and a revoked client cannot get in by resuming the session of the
    connection it was refused on."""
    issue_leaf(own_pki, "gone", usage="client")
    revoke(own_pki, "gone")
    responder = LabOcspResponder(own_pki)
    async with trio.open_nursery() as nursery:
        ocsp_port = await nursery.start(responder.serve)
        core, core_port = await start_lab_core(nursery, own_pki)
        siptap = SiptapProcess(write_config(
            tmp_path, own_pki, cores=[core_port],
            customer=f'resumption = true\nocsp = "hard"\nocsp_url = "http://127.0.0.1:{ocsp_port}/"'))
        await siptap.start(nursery)
        port = await siptap.port()
        reused = await trio.to_thread.run_sync(handshake_twice, port, own_pki, cert)
        await siptap.wait_for("connection_closed", count=2)
        assert await siptap.stop() == 0
        nursery.cancel_scope.cancel()
    assert reused == [False, True]
    assert responder.requests == 1  # the resumed session's answer came from the cache
    if cert == "customer":
        assert [e["source"] for e in siptap.find("ocsp_good")] == ["responder", "cache"]
        assert siptap.find("handshake_failed") == []
    else:
        assert [e["reason"] for e in siptap.find("handshake_failed")] == ["ocsp_revoked"] * 2
        assert core.connections == 0


@pytest.mark.parametrize("policy", ["soft", "hard"])
async def test_responder_down(own_pki: Path, tmp_path: Path, policy: str) -> None:
    dead = trio.socket.socket()
    await dead.bind(("127.0.0.1", 0))  # bound, never listening: connection refused
    url = f"http://127.0.0.1:{dead.getsockname()[1]}/"
    async with trio.open_nursery() as nursery:
        core, core_port = await start_lab_core(nursery, own_pki)
        siptap = SiptapProcess(write_config(tmp_path, own_pki, cores=[core_port], top=METRICS,
                                            customer=f'ocsp = "{policy}"\nocsp_url = "{url}"'))
        await siptap.start(nursery)
        port = await siptap.port()
        if policy == "soft":
            await relayed(port, own_pki, "customer")
            warning = (await siptap.wait_for("ocsp_unavailable"))[0]
            # The next certificate is not made to wait for the same dead responder.
            await relayed(port, own_pki, "other-customer")
            again = (await siptap.wait_for("ocsp_unavailable", count=2))[1]
        else:
            failed = await refused(siptap, port, own_pki, "customer")
            again = await refused(siptap, port, own_pki, "other-customer")
        counted = await metric_lines(siptap, "siptap_ocsp_checks_total")
        assert await siptap.stop() == 0
        nursery.cancel_scope.cancel()
    dead.close()

    result = "unavailable_allowed" if policy == "soft" else "unavailable_refused"
    if policy == "soft":
        assert warning["level"] == "warning" and warning["action"] == "allowed" and warning["subject"].endswith("CN=customer")
        assert f"cannot reach {url}" in warning["detail"]
        assert core.connections == 2
    else:
        assert failed["reason"] == "ocsp_unavailable" and f"cannot reach {url}" in str(failed["detail"])
        assert 'ocsp = "hard" refuses it' in str(failed["detail"])
        assert again["reason"] == "ocsp_unavailable"
        assert core.connections == 0
    # The second certificate's check: the responder's failure, remembered, named with its age.
    assert f"cannot reach {url}" in str(again["detail"]) and "s ago; not asked again until 15 s" in str(again["detail"])
    for source in ("responder", "recent_failure"):
        assert (f'siptap_ocsp_checks_total{{leg="customer",result="{result}",route="test",source="{source}"}} 1.0'
                in counted)


async def test_slow_responder_is_bounded_by_ocsp_timeout(own_pki: Path, tmp_path: Path) -> None:
    """A responder that would answer after a minute: that handshake gives up at ocsp_timeout,
    and a connection relayed meanwhile (its answer cached before the responder slowed down)
    is not held up."""
    responder = LabOcspResponder(own_pki)
    async with trio.open_nursery() as nursery:
        ocsp_port = await nursery.start(responder.serve)
        core, core_port = await start_lab_core(nursery, own_pki)
        siptap = SiptapProcess(write_config(
            tmp_path, own_pki, cores=[core_port],
            customer=f'ocsp = "hard"\nocsp_url = "http://127.0.0.1:{ocsp_port}/"\nocsp_timeout = 5'))
        await siptap.start(nursery)
        port = await siptap.port()
        live = await CustomerSession.connect("127.0.0.1", port, customer_context(own_pki))
        assert (await live.options()).status_code == 200
        responder.delay = 60
        slow: list[dict[str, object]] = []

        async def slow_customer() -> None:
            slow.append(await refused(siptap, port, own_pki, "other-customer"))

        nursery.start_soon(slow_customer)
        with trio.fail_after(20):  # polling a condition, bounded
            while responder.requests < 2:  # the slow customer's request is at the responder
                await trio.sleep(0.01)
        # Meanwhile the live connection is relayed as before.
        assert (await live.options()).status_code == 200
        assert slow == []
        with trio.fail_after(20):
            while not slow:
                await trio.sleep(0.01)
        await live.aclose()
        assert await siptap.stop() == 0
        nursery.cancel_scope.cancel()
    assert slow[0]["reason"] == "ocsp_unavailable"
    assert "no answer from" in str(slow[0]["detail"]) and "within 5 s (ocsp_timeout)" in str(slow[0]["detail"])


def staple_for(pki: Path, name: str) -> bytes:
    """The lab responder's answer about ``name``, as a core would staple it."""
    cert, ca = (load_certificate_chain(pki / f"{n}.pem")[0] for n in (name, "ca"))
    return LabOcspResponder(pki).respond(build_request(cert, ca))


@pytest.mark.peers
@pytest.mark.parametrize("revoked", [False, True])
async def test_core_staple_is_accepted(own_pki: Path, tmp_path: Path, revoked: bool) -> None:
    """`openssl s_server -status_file` staples the lab responder's answer about its
    certificate; siptap asks for it (status_request) and needs no responder at all: the
    core's certificate names none, and no ocsp_url is set, so under "hard" only the staple
    can let the connection through."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl not installed")
    if revoked:
        revoke(own_pki, "core")
    staple = tmp_path / "staple.der"
    staple.write_bytes(staple_for(own_pki, "core"))
    assert ocsp.load_der_ocsp_response(staple.read_bytes()).certificate_status == (
        ocsp.OCSPCertStatus.REVOKED if revoked else ocsp.OCSPCertStatus.GOOD)
    with OpenSSLServer("-cert", str(own_pki / "core.pem"), "-key", str(own_pki / "core.key"),
                       "-status_file", str(staple)) as core:
        async with trio.open_nursery() as nursery:
            siptap = SiptapProcess(write_config(tmp_path, own_pki, cores=[core.port], core_tls='ocsp = "hard"'))
            await siptap.start(nursery)
            port = await siptap.port()
            session = await CustomerSession.connect("127.0.0.1", port, customer_context(own_pki))
            if revoked:
                failed = (await siptap.wait_for("upstream_failed"))[0]
                await siptap.wait_for("no_upstream")
            else:
                done = await siptap.wait_for("ocsp_good", leg="core")
            await session.aclose()
            assert await siptap.stop() == 0
            nursery.cancel_scope.cancel()
    if revoked:
        assert failed["stage"] == "tls" and failed["reason"] == "ocsp_revoked"
        assert str(failed["detail"]).startswith("server certificate O=siptap lab,CN=core: stapled: revoked on ")
    else:
        assert done[0]["source"] == "staple"
        assert siptap.find("handshake_done", leg="core")


def test_openssl_ocsp_verifies_the_lab_responder(own_pki: Path) -> None:
    """The lab responder's answers pass OpenSSL's own OCSP client (`openssl ocsp`)."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl not installed")
    revoke(own_pki, "other-customer")

    async def ask() -> list[str]:
        outputs = []
        async with trio.open_nursery() as nursery:
            port = await nursery.start(LabOcspResponder(own_pki).serve)
            for name in ("customer", "other-customer"):
                result = await trio.run_process(
                    ["openssl", "ocsp", "-issuer", str(own_pki / "ca.pem"), "-cert", str(own_pki / f"{name}.pem"),
                     "-url", f"http://127.0.0.1:{port}/", "-CAfile", str(own_pki / "ca.pem")],
                    capture_stdout=True, capture_stderr=True)
                outputs.append(result.stdout.decode() + result.stderr.decode())
            nursery.cancel_scope.cancel()
        return outputs

    good, revoked = trio.run(ask)
    assert "Response verify OK" in good and f"{own_pki / 'customer.pem'}: good" in good
    assert "Response verify OK" in revoked and f"{own_pki / 'other-customer.pem'}: revoked" in revoked

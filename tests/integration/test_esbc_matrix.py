"""E-SBCs with particular TLS stacks, as real `openssl s_client` processes (Debian's OpenSSL 3.0,
a different build from siptap's pyOpenSSL), each against `siptap run` in front of the lab core.

The oracle is siptap's JSON log: ``handshake_done`` (version, cipher, key exchange) for the
clients that get through, ``handshake_failed`` with its stable ``reason`` for the others. What
s_client itself reported (its alert) is checked too, so the client really saw the refusal.

Last, the other side: a core that allows only TLS 1.3 (hence only ECDHE/DHE key exchange). The
core leg still works, and a tcpdump of it decrypts in tshark with siptap's NSS key log.
"""

from __future__ import annotations

import functools
import ssl
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio

from siptap.tools.lab.core import LabCore, core_context, start_lab_core
from siptap.tools.lab.customer import IMG2020_CIPHERS, CustomerSession, customer_context
from siptap.tools.lab.sip import request
from tests.integration import interop
from tests.integration.capture import PEERS, LoopbackCapture, require, tshark_fields
from tests.relay.harness import SiptapProcess, write_config

pytestmark = pytest.mark.peers


@dataclass
class ClientRun:
    returncode: int
    stdout: bytes
    stderr: bytes


def options_request() -> bytes:
    return request("OPTIONS", call_id=f"{uuid.uuid4()}@esbc.invalid", cseq=1, from_tag="esbc",
                   branch="z9hG4bK" + uuid.uuid4().hex[:16])


async def s_client(pki: Path, port: int, *args: str, cert: str | None = "customer", send: bytes | None = None,
                   until: bytes | None = None, timeout: float = 20.0) -> ClientRun:
    """Run `openssl s_client` as an E-SBC: verifies siptap's certificate (``-verify_return_error``),
    presents ``cert``. With ``send``, writes it once the process runs and reads stdout until
    ``until`` appears, then closes stdin: with ``-no_ign_eof`` s_client then sends close_notify
    and exits. Without ``send``, stdin stays open and the handshake's outcome ends the process."""
    argv = [PEERS["openssl"] or "openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername", "localhost",
            "-CAfile", str(pki / "ca.pem"), "-verify_return_error", "-verify_hostname", "localhost",
            "-nocommands", "-quiet", "-no_ign_eof", *args]
    if cert is not None:
        argv += ["-cert", str(pki / f"{cert}.pem"), "-key", str(pki / f"{cert}.key")]
    process = await trio.lowlevel.open_process(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                               stderr=subprocess.PIPE)
    assert process.stdin is not None and process.stdout is not None and process.stderr is not None
    out, err = bytearray(), bytearray()

    async def read(stream: trio.abc.ReceiveStream, into: bytearray) -> None:
        async for chunk in stream:
            into.extend(chunk)

    try:
        with trio.fail_after(timeout):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(read, process.stderr, err)
                if send is None:
                    nursery.start_soon(read, process.stdout, out)
                else:
                    await process.stdin.send_all(send)
                    async for chunk in process.stdout:
                        out.extend(chunk)
                        if until is not None and until in out:
                            break
                    await process.stdin.aclose()
                    nursery.start_soon(read, process.stdout, out)
                code = await process.wait()
    except trio.TooSlowError:
        raise AssertionError(f"s_client {args} did not finish; stdout {bytes(out)!r} stderr {bytes(err)!r}") from None
    finally:
        if process.returncode is None:
            process.kill()
            with trio.CancelScope(shield=True):
                await process.wait()
    return ClientRun(code, bytes(out), bytes(err))


async def run_client(pki: Path, tmp: Path, *args: str, customer: str = "", **kwargs: object
                     ) -> tuple[ClientRun, SiptapProcess, LabCore]:
    """Lab core, siptap in front of it, one s_client connection; returns when siptap logged the
    connection's end and stopped cleanly."""
    async with trio.open_nursery() as nursery:
        core, core_port = await start_lab_core(nursery, pki)
        siptap = SiptapProcess(write_config(tmp, pki, cores=[core_port], customer=customer))
        await siptap.start(nursery)
        run = await s_client(pki, await siptap.port(), *args, **kwargs)  # type: ignore[arg-type]
        await siptap.wait_for("connection_closed")
        assert await siptap.stop() == 0
        nursery.cancel_scope.cancel()
    assert siptap.find("session_crashed") == []
    return run, siptap, core


S_CLIENT = "openssl s_client as the E-SBC"


@pytest.mark.interop
@require("openssl")
async def test_img2020_offer_gets_rsa_key_exchange_and_sip_through(pki: Path, tmp_path: Path) -> None:
    options = options_request()
    run, siptap, core = await run_client(pki, tmp_path, "-tls1_2", "-cipher", IMG2020_CIPHERS,
                                         send=options, until=b"SIP/2.0 200 OK")
    assert b"SIP/2.0 200 OK\r\n" in run.stdout, run.stderr
    assert run.returncode == 0, run.stderr
    hs = siptap.find("handshake_done", leg="customer")[0]
    assert (hs["version"], hs["key_exchange"], hs["cipher"]) == ("TLSv1.2", "RSA", "AES256-GCM-SHA384")
    assert hs["peer_certificate"]["common_name"] == "customer"
    assert siptap.find("handshake_failed") == []
    assert core.received == [options]  # byte for byte
    interop.record(interop.from_handshake("esbc/img2020-offer", S_CLIENT, interop.openssl_version(), hs))
    closed = siptap.find("connection_closed")[0]
    assert closed["closed_by"] == "customer" and "close_notify" in closed["reason"]
    observed = siptap.find("connection_observed")[0]
    assert observed["messages_customer_to_core"] == 1 and observed["messages_core_to_customer"] == 1


@dataclass(frozen=True)
class Refused:
    name: str
    args: tuple[str, ...]
    cert: str | None
    reason: str
    detail: str  # a substring of siptap's detail
    client_saw: str  # a substring of what s_client printed


REFUSED = [
    Refused("tls13-only", ("-tls1_3",), "customer", "tls13_only_client", "only TLS 1.3",
            "alert protocol version"),
    # Like a Microsoft Teams Direct Routing peer: ECDHE suites only.
    Refused("ecdhe-only", ("-tls1_2", "-cipher", "ECDHE-RSA-AES256-GCM-SHA384"), "customer", "ecdhe_only_client",
            "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384", "alert handshake failure"),
    Refused("no-certificate", ("-tls1_2", "-cipher", IMG2020_CIPHERS), None, "no_client_certificate",
            "no certificate", "alert handshake failure"),
    Refused("expired", ("-tls1_2", "-cipher", IMG2020_CIPHERS), "expired", "certificate_expired",
            "X509 error 10", "alert certificate expired"),
    Refused("foreign-ca", ("-tls1_2", "-cipher", IMG2020_CIPHERS), "foreign", "unknown_ca",
            "CN=foreign", "alert unknown ca"),
    Refused("serverauth-only", ("-tls1_2", "-cipher", IMG2020_CIPHERS), "serveronly", "wrong_key_usage",
            "X509 error 26", "alert unsupported certificate"),
]


@pytest.mark.interop
@require("openssl")
@pytest.mark.parametrize("case", REFUSED, ids=[c.name for c in REFUSED])
async def test_refused_esbc_gets_a_precise_reason(pki: Path, tmp_path: Path, case: Refused) -> None:
    run, siptap, core = await run_client(pki, tmp_path, *case.args, cert=case.cert)
    assert run.returncode != 0
    assert case.client_saw in run.stderr.decode(errors="replace"), run.stderr
    failed = siptap.find("handshake_failed")
    assert len(failed) == 1, siptap.events
    event = failed[0]
    assert event["reason"] == case.reason, event
    assert case.detail in event["detail"], event
    assert event["leg"] == "customer" and event["peer"].startswith("127.0.0.1:")
    assert event["client_offer"] is not None  # what the E-SBC offered, for troubleshooting
    assert siptap.find("handshake_done") == []
    assert core.connections == 0  # a refused customer never reaches the core
    closed = siptap.find("connection_closed")
    assert len(closed) == 1 and closed[0]["reason"] == f"handshake_failed: {case.reason}"
    interop.record(interop.from_handshake(f"esbc/{case.name}", S_CLIENT, interop.openssl_version(), event))


@pytest.mark.interop
@require("openssl")
async def test_key_exchange_any_admits_the_tls13_only_client(pki: Path, tmp_path: Path) -> None:
    options = options_request()
    run, siptap, core = await run_client(
        pki, tmp_path, "-tls1_3", customer='key_exchange = "any"\nmax_version = "TLSv1.3"',
        send=options, until=b"SIP/2.0 200 OK")
    assert b"SIP/2.0 200 OK\r\n" in run.stdout, run.stderr
    hs = siptap.find("handshake_done", leg="customer")[0]
    assert hs["version"] == "TLSv1.3"
    assert hs["peer_certificate"]["common_name"] == "customer"
    assert siptap.find("handshake_failed") == []
    assert core.received == [options]
    interop.record(interop.from_handshake("esbc/tls13-only-with-key-exchange-any", S_CLIENT,
                                          interop.openssl_version(), hs))


@pytest.mark.interop
@require("tcpdump", "tshark")
async def test_tls13_only_core_leg_works_and_decrypts_with_the_key_log(pki: Path, tmp_path: Path) -> None:
    keylog = tmp_path / "keys.log"
    async with trio.open_nursery() as nursery:
        # TLS 1.3 only: every key exchange is (EC)DHE; siptap's client certificate is required.
        core = LabCore(core_context(pki, minimum=ssl.TLSVersion.TLSv1_3))
        core_port = await nursery.start(functools.partial(core.serve))
        config = write_config(tmp_path, pki, cores=[core_port], top=f'[mirror.keylog]\npath = "{keylog}"\n')
        siptap = SiptapProcess(config)
        await siptap.start(nursery)
        port = await siptap.port()
        with LoopbackCapture(tmp_path / "core-leg.pcap", [core_port]) as capture:
            session = await CustomerSession.connect("127.0.0.1", port, customer_context(pki))
            codes = await session.call()
            await session.aclose()
            await siptap.wait_for("connection_closed")
            await capture.wait_for_close(2)
        assert await siptap.stop() == 0  # the key-log file is complete
        nursery.cancel_scope.cancel()

    assert codes == ["100", "180", "200", "200"]
    customer_hs = siptap.find("handshake_done", leg="customer")[0]
    assert (customer_hs["version"], customer_hs["key_exchange"]) == ("TLSv1.2", "RSA")
    core_hs = siptap.find("handshake_done", leg="core")[0]
    assert core_hs["version"] == "TLSv1.3"
    assert core_hs["peer_certificate"]["common_name"] == "core"
    assert dict(x[0] for x in core.peers[0]["subject"])["commonName"] == "proxy-client"
    assert core.received == session.sent

    sent_ids = sorted(_call_ids(session.sent) + _call_ids(session.received))
    rows = tshark_fields(capture.path, ["sip.Call-ID"], "-o", f"tls.keylog_file:{keylog}",
                         "-o", f"sip.tls.port:{core_port}")
    # A frame of the wire can carry several SIP messages (siptap forwards what arrived
    # together in one write): tshark then lists their Call-IDs comma-separated.
    assert sorted(cid for r in rows for cid in r[0].split(",")) == sent_ids
    # Without the key log the core leg is opaque.
    assert tshark_fields(capture.path, ["sip.Call-ID"], "-o", f"sip.tls.port:{core_port}") == []
    assert "CLIENT_TRAFFIC_SECRET_0" in keylog.read_text()
    interop.record(interop.from_handshake("core/tls13-only-lab-core", "lab core (TLS 1.3 only)",
                                          interop.python_ssl_version(), core_hs))


def _call_ids(messages: list[bytes]) -> list[str]:
    return [line.split(b":", 1)[1].strip().decode() for m in messages for line in m.split(b"\r\n")
            if line.lower().startswith(b"call-id:")]

"""`siptap probe` against peers configured in known ways: its report must match their configuration.

Peers: `openssl s_server` (a C TLS stack configured by flags) and the lab core (stdlib ssl, mutual
TLS, answers SIP). All on loopback, on free ports. s_server does not speak SIP, so the s_server
probes run with sip=False (a SIP OPTIONS would only wait for its timeout).
"""

from __future__ import annotations

import argparse
import functools
import json
import shutil
from pathlib import Path

import pytest
import trio
from cryptography import x509

from siptap.sansio.tls_hello import suite_name
from siptap.tools.lab.core import LabCore, core_context
from siptap.tools.pki import issue_leaf
from siptap.tools.probe import (
    ACCEPTED,
    REJECTED,
    ProbeError,
    add_parser,
    format_table,
    parse_target,
    probe,
    run_from_args,
)
from siptap.tools.probe.sip_options import options_request
from tests.tls.helpers import OpenSSLServer

needs_openssl = pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl command not installed")

TIMEOUT = 3.0


def s_server(pki: Path, *args: str, cert: str = "core") -> OpenSSLServer:
    return OpenSSLServer("-cert", str(pki / f"{cert}.pem"), "-key", str(pki / f"{cert}.key"), *args)


def subject_of(path: Path) -> str:
    return x509.load_pem_x509_certificate(path.read_bytes()).subject.rfc4514_string()


def status_of(attempts: list, name: str) -> str:
    return next(a.status for a in attempts if a.name == name)


@pytest.fixture(scope="module")
def expired_server(pki: Path) -> str:
    name = "probe-expired-server"
    if not (pki / f"{name}.pem").exists():
        issue_leaf(pki, name, usage="server", expired=True)
    return name


@needs_openssl
async def test_tls12_single_suite_server(pki: Path) -> None:
    """-tls1_2 -cipher AES256-GCM-SHA384: exactly that suite, RSA key exchange, no TLS 1.3."""
    with s_server(pki, "-tls1_2", "-cipher", "AES256-GCM-SHA384") as server:
        report = await probe("127.0.0.1", server.port, server_name="localhost", ca=pki / "ca.pem",
                             timeout=TIMEOUT, sip=False)
    assert report.error is None
    assert report.accepted_versions == ["TLSv1.2"]
    for other in ("SSLv3", "TLSv1", "TLSv1.1", "TLSv1.3"):
        assert status_of(report.versions, other) == REJECTED
    assert report.accepted_tls12_suites == ["TLS_RSA_WITH_AES_256_GCM_SHA384"]
    assert report.tls12_suites[0].openssl_name == "AES256-GCM-SHA384" and report.tls12_suites[0].key_exchange == "RSA"
    assert report.accepted_tls13_suites == [] and set(report.suites) == {"TLSv1.2"}
    assert report.rsa_key_exchange is True
    assert report.negotiated and report.negotiated["cipher"] == "AES256-GCM-SHA384"
    assert report.client_cert is not None and not report.client_cert.requested
    # The chain as sent: the lab "core" leaf, valid, matching localhost, trusted by the lab CA.
    assert report.chain[0].subject == subject_of(pki / "core.pem")
    assert report.chain[0].key_type == "RSA-2048"
    assert "DNS:localhost" in report.chain[0].sans
    assert report.problems == []
    table = format_table(report)
    assert "TLS_RSA_WITH_AES_256_GCM_SHA384" in table
    assert "RSA key exchange: possible (TLS_RSA_WITH_AES_256_GCM_SHA384)" in table
    json.dumps(report.as_dict())  # --json output is plain JSON


@needs_openssl
async def test_tls13_only_server(pki: Path) -> None:
    """-tls1_3 with OpenSSL's default TLS 1.3 suites: the three defaults, not the CCM ones."""
    with s_server(pki, "-tls1_3") as server:
        report = await probe("127.0.0.1", server.port, server_name="localhost", timeout=TIMEOUT, sip=False)
    assert report.accepted_versions == ["TLSv1.3"]
    assert status_of(report.versions, "TLSv1.2") == REJECTED
    assert sorted(report.accepted_tls13_suites) == sorted(
        ["TLS_AES_256_GCM_SHA384", "TLS_AES_128_GCM_SHA256", "TLS_CHACHA20_POLY1305_SHA256"]
    )
    assert report.tls12_suites == [] and report.tls13_only
    assert report.rsa_key_exchange is False
    assert report.trust_checked_against is None


@needs_openssl
async def test_client_certificate_required_and_ca_names_advertised(pki: Path) -> None:
    """-Verify 1 -CAfile ca.pem: required, the lab CA named; our lab client certificate is taken."""
    with s_server(pki, "-Verify", "1", "-CAfile", str(pki / "ca.pem")) as server:
        bare = await probe("127.0.0.1", server.port, server_name="localhost", timeout=TIMEOUT, sip=False)
        ours = await probe("127.0.0.1", server.port, server_name="localhost", timeout=TIMEOUT, sip=False,
                           cert=pki / "proxy-client.pem", key=pki / "proxy-client.key")
    lab_ca = subject_of(pki / "ca.pem")
    for report in (bare, ours):
        cc = report.client_cert
        assert cc is not None and cc.requested and cc.required is True, cc
        assert lab_ca in cc.ca_names
        # Requiring a certificate does not hide what the server accepts: verdicts come from the ServerHello.
        assert "TLSv1.2" in report.accepted_versions and "TLSv1.3" in report.accepted_versions
        assert report.rsa_key_exchange is True
    assert bare.client_cert.ours is None
    assert ours.client_cert.ours == "accepted"
    assert "Client certificate: required" in format_table(bare)


@needs_openssl
async def test_expired_server_certificate(pki: Path, expired_server: str) -> None:
    with s_server(pki, cert=expired_server) as server:
        report = await probe("127.0.0.1", server.port, server_name="localhost", ca=pki / "ca.pem",
                             timeout=TIMEOUT, sip=False)
    leaf = report.chain[0]
    assert leaf.subject == subject_of(pki / f"{expired_server}.pem")
    assert any(p.startswith("expired on ") for p in leaf.problems), leaf.problems
    assert report.chain_problems == []  # trusted by the lab CA: expiry is the only problem
    assert "PROBLEM  expired on" in format_table(report)


@needs_openssl
async def test_name_mismatch_and_unknown_ca(pki: Path) -> None:
    """A certificate from a foreign CA, asked for a name it does not carry."""
    with s_server(pki, cert="foreign-core") as server:
        report = await probe("127.0.0.1", server.port, server_name="sbc.example.net", ca=pki / "ca.pem",
                             timeout=TIMEOUT, sip=False)
    assert any("name mismatch" in p and "sbc.example.net" in p for p in report.chain[0].problems)
    assert any(p.startswith("unknown CA") for p in report.chain_problems), report.chain_problems


@needs_openssl
async def test_ec_server_has_no_rsa_key_exchange(pki: Path) -> None:
    with s_server(pki, "-tls1_2", cert="ec-server") as server:
        report = await probe("127.0.0.1", server.port, server_name="localhost", timeout=TIMEOUT, sip=False)
    accepted = {a.code for a in report.tls12_suites if a.accepted}
    assert accepted and all(suite_name(c).startswith("TLS_ECDHE_ECDSA_") for c in accepted)
    assert report.rsa_key_exchange is False
    assert report.chain[0].key_type == "EC secp256r1"


async def test_sip_options_over_mutual_tls_to_the_lab_core(pki: Path) -> None:
    """The lab core requires a client certificate and answers SIP: OPTIONS gets 200 OK."""
    core = LabCore(core_context(pki))
    async with trio.open_nursery() as nursery:
        port = await nursery.start(functools.partial(core.serve, "127.0.0.1", 0))
        report = await probe("127.0.0.1", port, server_name="localhost", ca=pki / "ca.pem", timeout=TIMEOUT,
                             cert=pki / "proxy-client.pem", key=pki / "proxy-client.key")
        bare = await probe("127.0.0.1", port, server_name="localhost", timeout=TIMEOUT)
        nursery.cancel_scope.cancel()
    assert report.sip is not None and report.sip.status_line == "SIP/2.0 200 OK", report.sip
    assert report.sip.status_code == 200 and report.sip.detail == ""
    assert any(m.startswith(b"OPTIONS sip:localhost:") for m in core.received)
    assert report.client_cert is not None and report.client_cert.required is True
    assert report.client_cert.ours == "accepted"
    # Python's default server suites: ECDHE only on TLS 1.2, no RSA key exchange.
    assert report.rsa_key_exchange is False
    assert set(report.accepted_versions) == {"TLSv1.2", "TLSv1.3"}
    assert report.problems == []
    assert "SIP OPTIONS: SIP/2.0 200 OK" in format_table(report)
    # Without a certificate: no SIP answer, and the report says why.
    assert bare.sip is not None and bare.sip.status_line is None
    assert "requires a client certificate" in bare.sip.detail


@needs_openssl
async def test_optional_client_certificate(pki: Path) -> None:
    """-verify 1 (lower case): asks for a certificate, carries on without one."""
    with s_server(pki, "-verify", "1", "-CAfile", str(pki / "ca.pem")) as server:
        report = await probe("127.0.0.1", server.port, server_name="localhost", timeout=TIMEOUT, sip=False)
    cc = report.client_cert
    assert cc is not None and cc.requested and cc.required is False, cc
    assert subject_of(pki / "ca.pem") in cc.ca_names


@needs_openssl
async def test_tls10_server_is_found(pki: Path) -> None:
    """A TLS 1.0-only server: found by the hand-built hellos, whatever this OpenSSL build offers."""
    with s_server(pki, "-tls1", "-cipher", "ALL:@SECLEVEL=0") as server:
        report = await probe("127.0.0.1", server.port, server_name="localhost", timeout=TIMEOUT, sip=False)
    assert status_of(report.versions, "TLSv1") == ACCEPTED
    assert status_of(report.versions, "TLSv1.2") == REJECTED
    assert status_of(report.versions, "TLSv1.3") == REJECTED


async def test_silent_endpoint_times_out_once() -> None:
    """Accepts TCP, never answers: one timeout, not one per version and suite."""
    async def silent(stream: trio.SocketStream) -> None:
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(functools.partial(trio.serve_tcp, silent, 0, host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        with trio.fail_after(5):
            report = await probe("127.0.0.1", port, timeout=0.5)
        nursery.cancel_scope.cancel()
    assert report.error is not None and "timeout" in report.error
    assert report.versions == []


async def test_nothing_listening_is_one_error() -> None:
    with trio.socket.socket() as sock:  # a port that was free a moment ago
        await sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    report = await probe("127.0.0.1", port, timeout=TIMEOUT)
    assert report.error is not None and "cannot connect" in report.error
    assert report.versions == [] and not report.reachable
    assert "error: cannot connect" in format_table(report)


def test_parse_target() -> None:
    assert parse_target("sbc.example.net") == ("sbc.example.net", 5061)
    assert parse_target("10.0.0.1:5071") == ("10.0.0.1", 5071)
    assert parse_target("[::1]:5061") == ("::1", 5061)
    assert parse_target("[2001:db8::1]") == ("2001:db8::1", 5061)
    for bad in ("::1", "host:", "host:x", "[::1", ":5061", "host:70000"):
        with pytest.raises(ProbeError):
            parse_target(bad)


def test_options_request_frames_as_sip() -> None:
    from siptap.sansio.sip_framer import SipFramer, SipMessage
    from siptap.sansio.sip_message import parse_message

    data = options_request("sbc.example.net", 5061, ("::1", 40000), call_id="abc@probe")
    (event,) = SipFramer().feed(data)
    assert isinstance(event, SipMessage)
    view = parse_message(event.data, event.header_end)
    assert view.method == "OPTIONS" and view.call_id == "abc@probe" and view.cseq_method == "OPTIONS"
    assert view.request_uri == "sip:sbc.example.net:5061;transport=tls"
    assert "[::1]:40000" in view.header("Via")[0]


@needs_openssl
def test_command_line_json(pki: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The parser and runner as cli.py wires them: `siptap probe HOST:PORT --json`."""
    parser = argparse.ArgumentParser(prog="siptap")
    common = argparse.ArgumentParser(add_help=False)
    sub = parser.add_subparsers(dest="command")
    add_parser(sub, common)
    with s_server(pki, "-tls1_2", "-cipher", "AES128-SHA256") as server:
        args = parser.parse_args(["probe", f"127.0.0.1:{server.port}", "--server-name", "localhost",
                                  "--no-sip", "--json", "--timeout", str(TIMEOUT)])
        assert run_from_args(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["accepted_tls12_suites"] == ["TLS_RSA_WITH_AES_128_CBC_SHA256"]
    assert out["rsa_key_exchange"] is True and out["sip_options"] is None
    assert next(v for v in out["versions"] if v["name"] == "TLSv1.2")["status"] == ACCEPTED
    assert [s["code"] for s in out["suites"]["TLSv1.2"]] == ["0x003C"] and list(out["suites"]) == ["TLSv1.2"]
    features = {f["name"]: f["supported"] for f in out["features"]}
    assert features["extended master secret"] is True and "OCSP stapling" in features

"""`siptap probe` against nmap's ssl-enum-ciphers: the same servers, the same (version, suite) lists.

Servers, each started here on a free loopback port: siptap's own customer leg (mutual TLS, RSA
key exchange only), `openssl s_server` offering everything Debian's OpenSSL can serve with an
RSA key (TLS 1.0 to 1.3, CAMELLIA, ARIA, CCM, CCM_8, anonymous DH), the same with an EC key
(the ECDSA suites), a TLS 1.3-only s_server with all five TLS 1.3 suites, and GnuTLS's
gnutls-serv serving suites no OpenSSL build can negotiate (3DES, which Debian's OpenSSL 3 no
longer has, and CAMELLIA-GCM, which OpenSSL never had): the probe must find those from the
ServerHello alone.

nmap runs as `nmap -Pn -n --script +ssl-enum-ciphers -p PORT 127.0.0.1 -oX -`: the ``+`` runs the
script whatever the port's service looks like (its port rule would skip an unknown port), and
the XML output names each suite per protocol. nmap calls TLS 1.0 "TLSv1.0" and names TLS 1.3
suites "TLS_AKE_WITH_*" (its own convention, not IANA's); both are mapped to the probe's names.
No suite needs to be excluded on these servers: neither tool leaves any out.
"""

from __future__ import annotations

import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import trio

from siptap.sansio.tls_hello import RSA_KEX_AES_SUITES
from siptap.tools.probe import ACCEPTED, REJECTED, ProbeReport, format_table, probe
from tests.integration.peers import free_port, running
from tests.relay.harness import SiptapProcess, write_config
from tests.tls.helpers import OpenSSLServer

needs_gnutls = pytest.mark.skipif(shutil.which("gnutls-serv") is None, reason="gnutls-serv not installed (gnutls-bin)")

pytestmark = [
    pytest.mark.skipif(shutil.which("nmap") is None, reason="nmap not installed (Debian package nmap)"),
    pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl command not installed"),
]

TIMEOUT = 5.0
ALL_TLS13 = "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256:TLS_AES_128_CCM_SHA256:TLS_AES_128_CCM_8_SHA256"

Suites = set[tuple[str, str]]


async def nmap_suites(port: int) -> Suites:
    """(version, IANA suite name) pairs nmap's ssl-enum-ciphers finds on 127.0.0.1:port."""
    result = await trio.run_process(
        ["nmap", "-Pn", "-n", "--script", "+ssl-enum-ciphers", "-p", str(port), "127.0.0.1", "-oX", "-"],
        capture_stdout=True, capture_stderr=True,
    )
    root = ET.fromstring(result.stdout)
    scripts = [s for s in root.iter("script") if s.get("id") == "ssl-enum-ciphers"]
    assert scripts, f"nmap ran no ssl-enum-ciphers: {result.stdout.decode(errors='replace')[-2000:]}"
    found: Suites = set()
    for table in scripts[0].findall("table"):
        version = {"TLSv1.0": "TLSv1"}.get(table.get("key", ""), table.get("key", ""))
        for cipher in table.findall("table[@key='ciphers']/table"):
            name = cipher.findtext("elem[@key='name']") or ""
            found.add((version, name.replace("TLS_AKE_WITH_", "TLS_")))
    return found


def probe_suites(report: ProbeReport) -> Suites:
    return {(version, a.name) for version, suites in report.suites.items() for a in suites if a.status == ACCEPTED}


async def both(port: int, **kwargs: object) -> tuple[ProbeReport, Suites, Suites]:
    report = await probe("127.0.0.1", port, server_name="localhost", timeout=TIMEOUT, **kwargs)  # type: ignore[arg-type]
    assert report.error is None, report.error
    return report, probe_suites(report), await nmap_suites(port)


async def test_siptap_customer_leg(pki: Path, tmp_path: Path) -> None:
    """siptap itself: TLS 1.2 only, the six RSA key-transport AES suites, no resumption."""
    with trio.socket.socket() as sock:  # a core address nobody answers: the probe never gets that far
        await sock.bind(("127.0.0.1", 0))
        core_port = sock.getsockname()[1]
    async with trio.open_nursery() as nursery:
        siptap = SiptapProcess(write_config(tmp_path, pki, cores=[core_port]))
        await siptap.start(nursery)
        port = await siptap.port()
        report, ours, theirs = await both(port, sip=False, cert=pki / "customer.pem", key=pki / "customer.key")
        await siptap.stop()
        nursery.cancel_scope.cancel()  # the harness's guard task sleeps until cancelled
    assert ours == theirs
    assert {code for a in report.tls12_suites for code in [a.code]} == RSA_KEX_AES_SUITES
    assert report.accepted_versions == ["TLSv1.2"] and report.rsa_key_exchange is True
    assert report.client_cert is not None and report.client_cert.required is True
    # siptap took our certificate, then closed because its core is unreachable: not "rejected".
    assert report.client_cert.ours is not None
    assert report.client_cert.ours.startswith("accepted by TLS, then closed without an alert"), report.client_cert.ours
    # README: "no session resumption, so every connection is a full RSA handshake".
    session_id = report.feature("session-ID resumption")
    ticket = report.feature("ticket resumption (TLSv1.2)")
    assert session_id is not None and session_id.supported is False, session_id
    assert ticket is not None and ticket.supported is False, ticket


async def test_broad_openssl_server(pki: Path) -> None:
    """Everything Debian's OpenSSL serves with an RSA key, TLS 1.0 to 1.3, CAMELLIA, ARIA and CCM_8 included."""
    with OpenSSLServer("-cert", str(pki / "core.pem"), "-key", str(pki / "core.key"),
                       "-cipher", "ALL:@SECLEVEL=0", "-ciphersuites", ALL_TLS13) as server:
        report, ours, theirs = await both(server.port, sip=False)
    assert ours == theirs
    names = {name for _, name in ours}
    for expected in ("TLS_RSA_WITH_CAMELLIA_128_CBC_SHA", "TLS_RSA_WITH_ARIA_256_GCM_SHA384",
                     "TLS_RSA_WITH_AES_128_CCM_8", "TLS_DHE_RSA_WITH_AES_256_CCM", "TLS_AES_128_CCM_8_SHA256"):
        assert expected in names
    assert set(report.accepted_versions) == {"TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3"}
    # TLS 1.0 and 1.1 take the same list here: printed once.
    assert f"TLSv1.1 cipher suites accepted: the same {len(report.suites['TLSv1'])} as TLSv1" in format_table(report)


async def test_ec_key_openssl_server(pki: Path) -> None:
    """The ECDSA suites (and anonymous ones): what an EC certificate lets a server choose."""
    with OpenSSLServer("-cert", str(pki / "ec-server.pem"), "-key", str(pki / "ec-server.key"),
                       "-cipher", "ALL:@SECLEVEL=0", "-ciphersuites", ALL_TLS13) as server:
        report, ours, theirs = await both(server.port, sip=False)
    assert ours == theirs
    assert ("TLSv1.2", "TLS_ECDHE_ECDSA_WITH_AES_128_CCM_8") in ours
    assert report.rsa_key_exchange is False


async def test_tls13_only_server(pki: Path) -> None:
    """TLS 1.3 only: the same five suites, and a report of a few lines, not rows of refusals."""
    with OpenSSLServer("-cert", str(pki / "core.pem"), "-key", str(pki / "core.key"),
                       "-tls1_3", "-ciphersuites", ALL_TLS13) as server:
        report, ours, theirs = await both(server.port, sip=False)
    assert ours == theirs and len(ours) == 5
    assert report.tls13_only and report.rsa_key_exchange is False
    assert all(a.status == REJECTED for a in report.versions if a.name != "TLSv1.3")
    table = format_table(report)
    head = table.split("Certificate chain")[0]
    assert len([line for line in head.splitlines() if line.strip()]) <= 8, head
    assert "skipped" not in table and "n/a" not in table
    assert "do not apply to TLS 1.3" in head and "TLS 1.3 only" in head
    ticket = report.feature("ticket resumption (TLSv1.3)")
    assert ticket is not None and ticket.supported is True, ticket  # s_server issues TLS 1.3 tickets


# GnuTLS priorities: its defaults plus TLS 1.0/1.1, 3DES, CAMELLIA (CBC and GCM), CCM_8.
GNUTLS_PRIORITY = ("NORMAL:+VERS-TLS1.0:+VERS-TLS1.1:+3DES-CBC:+CAMELLIA-128-CBC:+CAMELLIA-256-CBC"
                   ":+CAMELLIA-128-GCM:+CAMELLIA-256-GCM:+AES-128-CCM-8:+AES-256-CCM-8:+SHA256:+SHA384")


@needs_gnutls
async def test_gnutls_server_with_suites_openssl_cannot_negotiate(pki: Path, tmp_path: Path) -> None:
    """gnutls-serv picks a port it is given (no port 0), and listens on every address (it has no
    bind option); the test talks to it on 127.0.0.1 only."""
    port = free_port()
    argv = ["gnutls-serv", "-p", str(port), "--x509certfile", str(pki / "core.pem"),
            "--x509keyfile", str(pki / "core.key"), "--priority", GNUTLS_PRIORITY, "-a", "-q"]
    async with running("gnutls-serv", argv, tmp_path, [port]):
        report, ours, theirs = await both(port, sip=False)
    assert ours == theirs
    unknown_to_openssl = {a.name for a in report.tls12_suites if a.openssl_name is None}
    assert {"TLS_RSA_WITH_3DES_EDE_CBC_SHA", "TLS_RSA_WITH_CAMELLIA_128_GCM_SHA256",
            "TLS_ECDHE_RSA_WITH_CAMELLIA_256_GCM_SHA384"} <= unknown_to_openssl
    assert ("TLSv1", "TLS_RSA_WITH_3DES_EDE_CBC_SHA") in ours
    assert "this OpenSSL build does not know the suite" in format_table(report)

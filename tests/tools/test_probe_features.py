"""`siptap probe`'s feature verdicts against `openssl s_server` configured to have, or lack, each one;
and its progress line, shown on a terminal and not when piped.

Every server is started here on a free loopback port; the OCSP response s_server staples is
signed here by the session's lab CA.
"""

from __future__ import annotations

import os
import pty
import select
import shutil
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509 import ocsp

from siptap.tools.probe import ProbeReport, probe
from tests.tls.helpers import OpenSSLServer

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl command not installed")

TIMEOUT = 3.0


def s_server(pki: Path, *args: str) -> OpenSSLServer:
    return OpenSSLServer("-cert", str(pki / "core.pem"), "-key", str(pki / "core.key"), *args)


async def scan(port: int) -> ProbeReport:
    report = await probe("127.0.0.1", port, server_name="localhost", timeout=TIMEOUT, sip=False)
    assert report.error is None, report.error
    return report


def verdict(report: ProbeReport, name: str) -> bool | None:
    feature = report.feature(name)
    assert feature is not None, [f.name for f in report.features]
    return feature.supported


@pytest.fixture(scope="module")
def ocsp_response(pki: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A DER OCSP response, signed by the lab CA: the core certificate is good for a day."""
    leaf = x509.load_pem_x509_certificate((pki / "core.pem").read_bytes())
    ca = x509.load_pem_x509_certificate((pki / "ca.pem").read_bytes())
    ca_key = serialization.load_pem_private_key((pki / "ca.key").read_bytes(), password=None)
    assert isinstance(ca_key, rsa.RSAPrivateKey)
    now = datetime.now(UTC)
    response = (
        ocsp.OCSPResponseBuilder()
        .add_response(cert=leaf, issuer=ca, algorithm=hashes.SHA256(), cert_status=ocsp.OCSPCertStatus.GOOD,
                      this_update=now - timedelta(minutes=5), next_update=now + timedelta(days=1),
                      revocation_time=None, revocation_reason=None)
        .responder_id(ocsp.OCSPResponderEncoding.HASH, ca)
        .sign(ca_key, hashes.SHA256())
    )
    path = tmp_path_factory.mktemp("ocsp") / "core.ocsp.der"
    path.write_bytes(response.public_bytes(serialization.Encoding.DER))
    return path


@pytest.mark.parametrize("version", ["-tls1_2", "-tls1_3"])
async def test_ocsp_stapling(pki: Path, ocsp_response: Path, version: str) -> None:
    with s_server(pki, version, "-status_file", str(ocsp_response)) as server:
        stapled = await scan(server.port)
    with s_server(pki, version) as server:
        bare = await scan(server.port)
    feature = stapled.feature("OCSP stapling")
    assert feature is not None and feature.supported is True, feature
    assert "certificate good" in feature.detail and "next update" in feature.detail
    assert verdict(bare, "OCSP stapling") is False


async def test_session_id_without_tickets_and_tickets_without_cache(pki: Path) -> None:
    with s_server(pki, "-tls1_2", "-no_ticket") as server:
        cache_only = await scan(server.port)
    with s_server(pki, "-tls1_2", "-no_cache") as server:
        tickets_only = await scan(server.port)
    assert verdict(cache_only, "session-ID resumption") is True
    assert verdict(cache_only, "ticket resumption (TLSv1.2)") is False
    assert verdict(tickets_only, "session-ID resumption") is False
    assert verdict(tickets_only, "ticket resumption (TLSv1.2)") is True


async def test_tls13_tickets(pki: Path) -> None:
    with s_server(pki, "-tls1_3") as server:
        issued = await scan(server.port)
    with s_server(pki, "-tls1_3", "-num_tickets", "0") as server:
        none = await scan(server.port)
    assert verdict(issued, "ticket resumption (TLSv1.3)") is True
    assert verdict(none, "ticket resumption (TLSv1.3)") is False


async def test_encrypt_then_mac_ems_and_renegotiation(pki: Path) -> None:
    with s_server(pki, "-tls1_2", "-cipher", "AES128-SHA:AES128-GCM-SHA256") as server:
        cbc = await scan(server.port)
    with s_server(pki, "-tls1_2", "-cipher", "AES128-SHA", "-no_etm") as server:
        no_etm = await scan(server.port)
    with s_server(pki, "-tls1_2", "-cipher", "AES128-GCM-SHA256") as server:
        aead_only = await scan(server.port)
    assert verdict(cbc, "encrypt-then-MAC") is True
    assert verdict(no_etm, "encrypt-then-MAC") is False
    etm = aead_only.feature("encrypt-then-MAC")
    assert etm is not None and etm.supported is None and "no CBC suite" in etm.detail
    for report in (cbc, no_etm, aead_only):  # OpenSSL always does both
        assert verdict(report, "extended master secret") is True
        assert verdict(report, "secure renegotiation") is True


def run_cli(port: int, *, stderr_is_terminal: bool) -> tuple[bytes, bytes]:
    """`siptap probe` as a user runs it, stderr on a pseudo-terminal or on a pipe: (stdout, stderr)."""
    argv = [sys.executable, "-m", "siptap", "probe", f"127.0.0.1:{port}", "--server-name", "localhost",
            "--no-sip", "--timeout", str(TIMEOUT)]
    if not stderr_is_terminal:
        done = subprocess.run(argv, capture_output=True, timeout=120, check=True)
        return done.stdout, done.stderr
    main, child = pty.openpty()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=child)
    os.close(child)
    err = b""
    while True:  # read the terminal until the child closes it (EIO on Linux)
        ready, _, _ = select.select([main], [], [], 120)
        assert ready, "no output on the terminal within 120 s"
        try:
            chunk = os.read(main, 65536)
        except OSError:
            break
        if not chunk:
            break
        err += chunk
    os.close(main)
    assert proc.stdout is not None
    out = proc.stdout.read()
    assert proc.wait(timeout=120) == 0
    return out, err


def test_progress_on_a_terminal_only(pki: Path) -> None:
    with s_server(pki, "-tls1_2") as server:
        out_tty, err_tty = run_cli(server.port, stderr_is_terminal=True)
        out_pipe, err_pipe = run_cli(server.port, stderr_is_terminal=False)
    assert b"siptap probe: TLSv1.2: offer" in err_tty and b"\r\x1b[K" in err_tty
    assert err_tty.endswith(b"\r\x1b[K")  # the line is erased before the report
    assert err_pipe == b""
    for out in (out_tty, out_pipe):
        assert b"TLSv1.2 cipher suites accepted" in out and b"\r" not in out


async def test_resumption_with_a_required_client_certificate(pki: Path) -> None:
    """Without our certificate no resumption verdict (never a false "no"); with it, both versions resume."""
    with s_server(pki, "-Verify", "1", "-CAfile", str(pki / "ca.pem")) as server:
        bare = await scan(server.port)
        ours = await probe("127.0.0.1", server.port, server_name="localhost", timeout=TIMEOUT, sip=False,
                           cert=pki / "proxy-client.pem", key=pki / "proxy-client.key")
    for name in ("session-ID resumption", "ticket resumption (TLSv1.3)"):
        feature = bare.feature(name)
        assert feature is not None and feature.supported is None, feature
        assert "no verdict" in feature.detail and "client certificate" in feature.detail
        assert verdict(ours, name) is True

"""Expiry before it bites, and ports before `run` finds them taken.

`siptap check` warns about a certificate siptap presents or trusts that expires within 30
days, refuses an expired one, and refuses a listen (or metrics) address another process
holds, each naming the config key. While siptap runs, the same certificates are watched:
``certificate_expiring`` at start-up and the gauge
``siptap_certificate_expiry_timestamp_seconds{key,subject}``; each handshake's
``handshake_done`` names the peer certificate's notAfter. Real certificates (the lab
PKI, and CAs made here with cryptography), real sockets.
"""

from __future__ import annotations

import socket
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

import trio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from siptap.tools.lab.core import start_lab_core
from siptap.tools.lab.customer import CustomerSession, customer_context
from siptap.tools.pki import issue_leaf
from tests.relay.harness import SiptapProcess
from tests.relay.harness import write_config as write_run_config
from tests.test_check import assert_refused, siptap, write_config


def make_ca(path: Path, name: str, *, not_before: datetime, not_after: datetime) -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(not_before).not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert


def with_server_cert(config: Path, pki: Path, cert: Path, key: Path) -> Path:
    text = config.read_text().replace(f'cert = "{pki}/proxy-server.pem"', f'cert = "{cert}"')
    config.write_text(text.replace(f'key = "{pki}/proxy-server.key"', f'key = "{key}"'))
    return config


def busy_port() -> socket.socket:
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen(1)
    return holder


def test_check_warns_about_a_server_certificate_expiring_in_ten_days(pki: Path, tmp_path: Path) -> None:
    cert, key = issue_leaf(tmp_path, "short-server", usage="server", ca_dir=pki, days=10)
    config = with_server_cert(write_config(tmp_path, pki), pki, cert, key)
    result = siptap("check", "--config", str(config), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"{config}: OK: ")
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"siptap: warning: {config}: route[0].customer.cert (route 'lab'): {cert}: certificate ")
    assert "expires in 9 days" in line or "expires in 10 days" in line, line  # minutes after issue


def test_check_warns_about_an_expiring_ca_in_a_bundle(pki: Path, tmp_path: Path) -> None:
    now = datetime.now(UTC)
    extra = make_ca(tmp_path / "extra.pem", "retiring CA", not_before=now - timedelta(days=300),
                    not_after=now + timedelta(days=5, hours=1))
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes((pki / "ca.pem").read_bytes() + (tmp_path / "extra.pem").read_bytes())
    config = write_config(tmp_path, pki)
    config.write_text(config.read_text().replace(f'client_ca = "{pki / "ca.pem"}"', f'client_ca = "{bundle}"'))
    result = siptap("check", "--config", str(config), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines() == [
        f"siptap: warning: {config}: route[0].customer.client_ca (route 'lab'): {bundle}: certificate CN=retiring CA expires in "
        f"5 days ({extra.not_valid_after_utc:%Y-%m-%d %H:%M} UTC)"]


def test_check_refuses_an_expired_client_certificate(pki: Path, tmp_path: Path) -> None:
    """Siptap's own expired leaf was already refused by the context builder (start-up too)."""
    config = write_config(tmp_path, pki)
    text = config.read_text().replace(f'cert = "{pki / "proxy-client.pem"}"', f'cert = "{pki / "expired.pem"}"')
    config.write_text(text.replace(f'key = "{pki / "proxy-client.key"}"', f'key = "{pki / "expired.key"}"'))
    result = siptap("check", "--config", str(config), cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    assert result.stderr.startswith(
        f"siptap: error: {config}: route[0].core_tls.cert (route 'lab'): {pki / 'expired.pem'}: certificate expired on ")


def test_check_refuses_an_expired_ca(pki: Path, tmp_path: Path) -> None:
    now = datetime.now(UTC)
    make_ca(tmp_path / "old-ca.pem", "old CA", not_before=now - timedelta(days=400), not_after=now - timedelta(days=3))
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes((pki / "ca.pem").read_bytes() + (tmp_path / "old-ca.pem").read_bytes())
    config = write_config(tmp_path, pki)
    config.write_text(config.read_text().replace(f'\nca = "{pki / "ca.pem"}"', f'\nca = "{bundle}"'))
    result = siptap("check", "--config", str(config), cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    assert result.stderr.splitlines()[0].startswith(
        f"siptap: error: {config}: route[0].core_tls.ca (route 'lab'): {bundle}: certificate CN=old CA expired 3 days ago")


def test_check_refuses_a_listen_address_in_use(pki: Path, tmp_path: Path) -> None:
    with busy_port() as holder:
        port = holder.getsockname()[1]
        config = write_config(tmp_path, pki, listen_port=port)
        assert_refused(siptap("check", "--config", str(config), cwd=tmp_path),
                       f"siptap: error: {config}: route[0].listen (route 'lab'): cannot listen on 127.0.0.1:{port}: "
                       "Address already in use",
                       hint="siptap: hint: is another siptap (or the SBC) already on that port? stop it or choose another")
    # The same config once the port is free: check binds nothing for good.
    result = siptap("check", "--config", str(config), cwd=tmp_path)
    assert result.returncode == 0, result.stderr


def test_check_refuses_a_metrics_address_in_use(pki: Path, tmp_path: Path) -> None:
    with busy_port() as holder:
        port = holder.getsockname()[1]
        config = write_config(tmp_path, pki)
        config.write_text(f'[metrics]\nenabled = true\naddress = "127.0.0.1:{port}"\n' + config.read_text())
        result = siptap("check", "--config", str(config), cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    assert result.stderr.splitlines()[0] == (
        f"siptap: error: {config}: metrics.address: cannot listen on 127.0.0.1:{port}: Address already in use")


async def test_run_watches_certificate_expiry_and_exports_the_gauge(pki: Path, tmp_path: Path) -> None:
    cert, key = issue_leaf(tmp_path, "short-server", usage="server", ca_dir=pki, days=10)
    real = x509.load_pem_x509_certificate(cert.read_bytes())
    async with trio.open_nursery() as nursery:
        _, core_port = await start_lab_core(nursery, pki)
        config = write_run_config(tmp_path, pki, cores=[core_port],
                                  top='[metrics]\nenabled = true\naddress = "127.0.0.1:0"')
        with_server_cert(config, pki, cert, key)
        proxy = SiptapProcess(config)
        await proxy.start(nursery)
        port = await proxy.port()
        # Each handshake's facts carry the peer certificate's notAfter (the customer's, here).
        session = await CustomerSession.connect("127.0.0.1", port, customer_context(pki))
        await session.options()
        await session.aclose()
        (done,) = await proxy.wait_for("handshake_done", leg="customer")
        customer = x509.load_pem_x509_certificate((pki / "customer.pem").read_bytes())
        assert done["peer_certificate"]["not_after"] == customer.not_valid_after_utc.isoformat()
        (alarm,) = await proxy.wait_for("certificate_expiring")
        assert (alarm["level"], alarm["key"], alarm["path"]) == ("warning", "route[0].customer.cert", str(cert))
        assert alarm["subject"] == real.subject.rfc4514_string()
        assert alarm["not_after"] == real.not_valid_after_utc.isoformat()
        assert 9 * 86400 < alarm["seconds_left"] <= 10 * 86400
        metrics_port = (await proxy.wait_for("metrics_up"))[0]["port"]
        body = await trio.to_thread.run_sync(
            lambda: urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read().decode())
        gauges = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in body.splitlines()
                  if line.startswith("siptap_certificate_expiry_timestamp_seconds{")}
        server = [value for name, value in gauges.items() if 'key="route[0].customer.cert"' in name]
        assert server == [real.not_valid_after_utc.timestamp()]
        assert any('key="route[0].core_tls.ca"' in name for name in gauges)
        assert not proxy.find("certificate_expired")
        assert await proxy.stop() == 0
        nursery.cancel_scope.cancel()

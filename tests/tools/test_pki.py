"""The lab PKI: real keys and certificates, checked with cryptography and with `openssl verify`."""

from __future__ import annotations

import ipaddress
import os
import shutil
import stat
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from siptap.errors import CertificateError
from siptap.tls.pem import key_matches_certificate, load_certificate_chain, load_private_key
from siptap.tools.pki import DEFAULT_SANS, LAB_FILES, init_ca, init_lab_pki, issue_leaf

OPENSSL = shutil.which("openssl")
needs_openssl = pytest.mark.skipif(OPENSSL is None, reason="openssl command not on PATH")

LAB_NAMES = ("ca", "proxy-server", "proxy-client", "customer", "core")


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One lab PKI shared by the read-only tests (key generation is the slow part)."""
    directory = tmp_path_factory.mktemp("lab") / "certs"
    init_lab_pki(directory, sans=(*DEFAULT_SANS, "sbc.example.net", "192.0.2.7"))
    return directory


def cert(path: Path) -> x509.Certificate:
    return load_certificate_chain(path)[0]


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def ekus(c: x509.Certificate) -> set[x509.ObjectIdentifier] | None:
    try:
        return set(c.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
    except x509.ExtensionNotFound:
        return None


def san_strings(c: x509.Certificate) -> set[str]:
    san = c.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return set(san.get_values_for_type(x509.DNSName)) | {
        str(ip) for ip in san.get_values_for_type(x509.IPAddress)
    }


def openssl_verify(ca: Path, leaf: Path, purpose: str) -> subprocess.CompletedProcess[str]:
    assert OPENSSL is not None
    return subprocess.run(
        [OPENSSL, "verify", "-x509_strict", "-CAfile", str(ca), "-purpose", purpose, str(leaf)],
        capture_output=True,
        text=True,
        timeout=30,
    )


# --------------------------------------------------------------------------------------------
# init_lab_pki


def test_init_writes_all_ten_files_with_the_right_modes(tmp_path: Path) -> None:
    directory = tmp_path / "new" / "certs"
    written = init_lab_pki(directory)
    expected = [directory / f"{n}.{ext}" for n in LAB_NAMES for ext in ("pem", "key")]
    assert written == expected
    assert set(LAB_FILES) == set(LAB_NAMES)
    assert sorted(p.name for p in directory.iterdir()) == sorted(p.name for p in expected)  # no temp files
    for name in LAB_NAMES:
        assert mode(directory / f"{name}.key") == 0o600
        assert mode(directory / f"{name}.pem") == 0o644
    assert mode(directory) & ~0o755 == 0  # never group/world-writable


def test_ca_certificate_is_a_path_length_zero_ca(lab: Path) -> None:
    ca = cert(lab / "ca.pem")
    assert ca.subject == ca.issuer
    assert ca.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "siptap lab CA"
    assert ca.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "siptap lab"
    bc = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca and bc.value.path_length == 0
    ku = ca.extensions.get_extension_for_class(x509.KeyUsage)
    assert ku.critical and ku.value.key_cert_sign and ku.value.crl_sign and not ku.value.digital_signature
    ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    ca.verify_directly_issued_by(ca)


@pytest.mark.parametrize(
    ("name", "eku"),
    [
        ("proxy-server", ExtendedKeyUsageOID.SERVER_AUTH),
        ("proxy-client", ExtendedKeyUsageOID.CLIENT_AUTH),
        ("customer", ExtendedKeyUsageOID.CLIENT_AUTH),
        ("core", ExtendedKeyUsageOID.SERVER_AUTH),
    ],
)
def test_lab_leaves_are_rsa_sha256_signed_by_the_ca_with_one_eku(
    lab: Path, name: str, eku: x509.ObjectIdentifier
) -> None:
    ca = cert(lab / "ca.pem")
    leaf = cert(lab / f"{name}.pem")
    leaf.verify_directly_issued_by(ca)
    assert leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == name
    assert leaf.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "siptap lab"
    assert isinstance(leaf.signature_hash_algorithm, hashes.SHA256)
    pub = leaf.public_key()
    assert isinstance(pub, rsa.RSAPublicKey)
    assert pub.key_size == 2048 and pub.public_numbers().e == 65537
    assert ekus(leaf) == {eku}
    bc = leaf.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and not bc.value.ca
    ku = leaf.extensions.get_extension_for_class(x509.KeyUsage)
    assert ku.critical and ku.value.digital_signature and ku.value.key_encipherment
    assert not ku.value.key_cert_sign
    aki = leaf.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    ski = ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert aki.key_identifier == ski.digest
    leaf.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    key = load_private_key(lab / f"{name}.key")
    assert key_matches_certificate(key, leaf)


def test_lab_leaves_are_valid_now_with_clock_skew_allowance(lab: Path) -> None:
    now = datetime.now(UTC)
    for name in LAB_NAMES:
        c = cert(lab / f"{name}.pem")
        assert now - timedelta(hours=2) < c.not_valid_before_utc <= now - timedelta(minutes=59)
        assert c.not_valid_after_utc > now + timedelta(days=824)
        assert c.serial_number > 0


def test_server_sans_include_defaults_and_custom_names(lab: Path) -> None:
    for name in ("proxy-server", "core"):
        sans = san_strings(cert(lab / f"{name}.pem"))
        assert sans == {"localhost", "127.0.0.1", "::1", "sbc.example.net", "192.0.2.7"}
    san = cert(lab / "proxy-server.pem").extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert ipaddress.ip_address("::1") in san.value.get_values_for_type(x509.IPAddress)
    assert "::1" not in san.value.get_values_for_type(x509.DNSName)


def test_client_sans_are_their_own_name(lab: Path) -> None:
    assert san_strings(cert(lab / "customer.pem")) == {"customer"}
    assert san_strings(cert(lab / "proxy-client.pem")) == {"proxy-client"}


@needs_openssl
@pytest.mark.parametrize(
    ("name", "good", "bad"),
    [
        ("proxy-server", "sslserver", "sslclient"),
        ("core", "sslserver", "sslclient"),
        ("customer", "sslclient", "sslserver"),
        ("proxy-client", "sslclient", "sslserver"),
    ],
)
def test_openssl_accepts_the_right_purpose_and_rejects_the_other(
    lab: Path, name: str, good: str, bad: str
) -> None:
    ok = openssl_verify(lab / "ca.pem", lab / f"{name}.pem", good)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert ": OK" in ok.stdout
    wrong = openssl_verify(lab / "ca.pem", lab / f"{name}.pem", bad)
    assert wrong.returncode != 0
    assert "error 26" in wrong.stderr and "unsuitable certificate purpose" in wrong.stderr


def test_second_init_refuses_naming_the_path_and_writes_nothing(tmp_path: Path) -> None:
    init_lab_pki(tmp_path)
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in tmp_path.iterdir()}
    with pytest.raises(CertificateError) as info:
        init_lab_pki(tmp_path)
    assert info.value.path == str(tmp_path / "ca.pem")
    assert "exists; use --force to overwrite" in str(info.value)
    after = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in tmp_path.iterdir()}
    assert after == before


def test_init_checks_every_target_before_writing_any(tmp_path: Path) -> None:
    (tmp_path / "core.key").write_bytes(b"someone else's key")
    with pytest.raises(CertificateError) as info:
        init_lab_pki(tmp_path)
    assert info.value.path == str(tmp_path / "core.key")
    assert [p.name for p in tmp_path.iterdir()] == ["core.key"]


def test_force_regenerates_everything(tmp_path: Path) -> None:
    init_lab_pki(tmp_path)
    old = {n: cert(tmp_path / f"{n}.pem").serial_number for n in LAB_NAMES}
    old_ca_key = (tmp_path / "ca.key").read_bytes()
    (tmp_path / "customer.key").chmod(0o644)
    written = init_lab_pki(tmp_path, force=True)
    assert len(written) == 10
    new = {n: cert(tmp_path / f"{n}.pem").serial_number for n in LAB_NAMES}
    assert all(old[n] != new[n] for n in LAB_NAMES)
    assert (tmp_path / "ca.key").read_bytes() != old_ca_key
    assert mode(tmp_path / "customer.key") == 0o600
    ca = cert(tmp_path / "ca.pem")
    for n in LAB_NAMES[1:]:
        cert(tmp_path / f"{n}.pem").verify_directly_issued_by(ca)


def test_bad_san_is_rejected_before_writing(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        init_lab_pki(tmp_path / "x", sans=("localhost", ""))
    assert not (tmp_path / "x").exists()


# --------------------------------------------------------------------------------------------
# issue_leaf


@pytest.fixture
def ca_dir(tmp_path: Path) -> Path:
    init_ca(tmp_path)
    return tmp_path


def test_init_ca_refuses_existing_unless_forced(ca_dir: Path) -> None:
    with pytest.raises(CertificateError, match="exists"):
        init_ca(ca_dir)
    old = cert(ca_dir / "ca.pem").serial_number
    init_ca(ca_dir, force=True)
    assert cert(ca_dir / "ca.pem").serial_number != old


@pytest.mark.parametrize(
    ("usage", "expected"),
    [
        ("server", {ExtendedKeyUsageOID.SERVER_AUTH}),
        ("client", {ExtendedKeyUsageOID.CLIENT_AUTH}),
        ("both", {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}),
        ("none", None),
    ],
)
def test_issue_leaf_usage(ca_dir: Path, usage: str, expected: set[x509.ObjectIdentifier] | None) -> None:
    cert_path, key_path = issue_leaf(ca_dir, "leaf", usage=usage)  # type: ignore[arg-type]  # parametrized str, each a valid Usage
    assert (cert_path, key_path) == (ca_dir / "leaf.pem", ca_dir / "leaf.key")
    leaf = cert(cert_path)
    assert ekus(leaf) == expected
    leaf.verify_directly_issued_by(cert(ca_dir / "ca.pem"))
    assert mode(key_path) == 0o600
    assert san_strings(leaf) == set(DEFAULT_SANS)


@needs_openssl
def test_issue_leaf_both_passes_either_purpose(ca_dir: Path) -> None:
    cert_path, _ = issue_leaf(ca_dir, "leaf", usage="both")
    for purpose in ("sslserver", "sslclient"):
        assert openssl_verify(ca_dir / "ca.pem", cert_path, purpose).returncode == 0


def test_issue_leaf_expired(ca_dir: Path) -> None:
    leaf = cert(issue_leaf(ca_dir, "old", usage="client", expired=True)[0])
    now = datetime.now(UTC)
    assert leaf.not_valid_before_utc < leaf.not_valid_after_utc < now
    leaf.verify_directly_issued_by(cert(ca_dir / "ca.pem"))
    if OPENSSL:
        result = openssl_verify(ca_dir / "ca.pem", ca_dir / "old.pem", "sslclient")
        assert result.returncode != 0 and "certificate has expired" in result.stdout + result.stderr


def test_issue_leaf_not_yet_valid(ca_dir: Path) -> None:
    leaf = cert(issue_leaf(ca_dir, "future", usage="server", not_yet_valid=True, days=10)[0])
    now = datetime.now(UTC)
    assert now < leaf.not_valid_before_utc < leaf.not_valid_after_utc
    assert leaf.not_valid_after_utc - leaf.not_valid_before_utc == timedelta(days=10)
    if OPENSSL:
        result = openssl_verify(ca_dir / "ca.pem", ca_dir / "future.pem", "sslserver")
        assert result.returncode != 0 and "not yet valid" in result.stdout + result.stderr


def test_expired_and_not_yet_valid_together_is_an_error(ca_dir: Path) -> None:
    with pytest.raises(ValueError):
        issue_leaf(ca_dir, "x", usage="client", expired=True, not_yet_valid=True)
    assert not (ca_dir / "x.pem").exists()


def test_issue_leaf_custom_days_and_sans(ca_dir: Path) -> None:
    leaf = cert(issue_leaf(ca_dir, "s", usage="server", days=3, sans=["sip.example.org", "10.1.2.3"])[0])
    assert san_strings(leaf) == {"sip.example.org", "10.1.2.3"}
    assert leaf.not_valid_after_utc - leaf.not_valid_before_utc == timedelta(days=3, hours=1)


def test_issue_leaf_foreign_ca(ca_dir: Path) -> None:
    cert_path, _ = issue_leaf(ca_dir, "intruder", usage="client", self_ca="evil-ca")
    lab_ca = cert(ca_dir / "ca.pem")
    evil_ca = cert(ca_dir / "evil-ca.pem")
    assert mode(ca_dir / "evil-ca.key") == 0o600
    assert evil_ca.subject != lab_ca.subject
    leaf = cert(cert_path)
    leaf.verify_directly_issued_by(evil_ca)
    with pytest.raises((ValueError, TypeError)):
        leaf.verify_directly_issued_by(lab_ca)
    if OPENSSL:
        result = openssl_verify(ca_dir / "ca.pem", cert_path, "sslclient")
        assert result.returncode != 0
        assert "unable to get local issuer certificate" in result.stdout + result.stderr
        assert openssl_verify(ca_dir / "evil-ca.pem", cert_path, "sslclient").returncode == 0
    # A second leaf from the same foreign CA reuses it.
    second, _ = issue_leaf(ca_dir, "intruder2", usage="server", self_ca="evil-ca")
    assert cert(ca_dir / "evil-ca.pem") == evil_ca
    cert(second).verify_directly_issued_by(evil_ca)


def test_issue_leaf_foreign_ca_needs_no_lab_ca(tmp_path: Path) -> None:
    cert_path, _ = issue_leaf(tmp_path, "stray", usage="server", self_ca="other")
    cert(cert_path).verify_directly_issued_by(cert(tmp_path / "other.pem"))
    assert not (tmp_path / "ca.pem").exists()


def test_issue_leaf_ec_key(ca_dir: Path) -> None:
    cert_path, key_path = issue_leaf(ca_dir, "ecdsa", usage="server", key_type="ec")
    key = load_private_key(key_path)
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1"
    leaf = cert(cert_path)
    assert isinstance(leaf.public_key(), ec.EllipticCurvePublicKey)
    assert key_matches_certificate(key, leaf)
    leaf.verify_directly_issued_by(cert(ca_dir / "ca.pem"))  # signed by the RSA CA
    ku = leaf.extensions.get_extension_for_class(x509.KeyUsage).value
    assert ku.digital_signature and not ku.key_encipherment


def test_issue_leaf_with_separate_ca_dir(tmp_path: Path) -> None:
    ca_home = tmp_path / "ca-home"
    init_ca(ca_home)
    out = tmp_path / "out"
    cert_path, _ = issue_leaf(out, "x", usage="client", ca_dir=ca_home)
    assert cert_path.parent == out
    cert(cert_path).verify_directly_issued_by(cert(ca_home / "ca.pem"))


def test_issue_leaf_refuses_existing_unless_forced(ca_dir: Path) -> None:
    issue_leaf(ca_dir, "dup", usage="client")
    first = cert(ca_dir / "dup.pem").serial_number
    with pytest.raises(CertificateError) as info:
        issue_leaf(ca_dir, "dup", usage="client")
    assert info.value.path == str(ca_dir / "dup.pem")
    assert cert(ca_dir / "dup.pem").serial_number == first
    issue_leaf(ca_dir, "dup", usage="client", force=True)
    assert cert(ca_dir / "dup.pem").serial_number != first


def test_issue_leaf_without_a_ca_names_the_missing_file(tmp_path: Path) -> None:
    with pytest.raises(CertificateError) as info:
        issue_leaf(tmp_path, "x", usage="client")
    assert info.value.path == str(tmp_path / "ca.pem")


@pytest.mark.parametrize("name", ["../x", "", ".hidden", "a/b"])
def test_issue_leaf_rejects_names_that_are_not_plain_file_names(ca_dir: Path, name: str) -> None:
    with pytest.raises(CertificateError, match="invalid name"):
        issue_leaf(ca_dir, name, usage="client")


def test_issue_leaf_will_not_overwrite_its_ca(ca_dir: Path) -> None:
    with pytest.raises(ValueError):
        issue_leaf(ca_dir, "ca", usage="client", force=True)
    assert cert(ca_dir / "ca.pem").extensions.get_extension_for_class(x509.BasicConstraints).value.ca


def test_issue_leaf_refuses_a_ca_whose_key_does_not_match(tmp_path: Path) -> None:
    init_ca(tmp_path)
    other = tmp_path / "other"
    init_ca(other)
    (tmp_path / "ca.key").write_bytes((other / "ca.key").read_bytes())
    with pytest.raises(CertificateError, match="does not match"):
        issue_leaf(tmp_path, "x", usage="client")


def test_file_modes_do_not_depend_on_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        cert_path, key_path = issue_leaf(tmp_path, "strict", usage="server", self_ca="ca2")
    finally:
        os.umask(old)
    assert mode(cert_path) == 0o644 and mode(key_path) == 0o600
    old = os.umask(0)
    try:
        cert_path, key_path = issue_leaf(tmp_path, "lax", usage="server", self_ca="ca2")
    finally:
        os.umask(old)
    assert mode(cert_path) == 0o644 and mode(key_path) == 0o600

"""Reading PEM files: chains, keys and CRLs, and every way a file can be unusable, named."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from siptap.errors import CertificateError
from siptap.tls.pem import key_matches_certificate, load_certificate_chain, load_crls, load_private_key
from siptap.tools.pki import write_crl


def cert(path: Path) -> x509.Certificate:
    return load_certificate_chain(path)[0]



def test_load_private_key_refuses_group_or_world_readable(pki: Path, tmp_path: Path) -> None:
    key_path = tmp_path / "k.key"
    key_path.write_bytes((pki / "customer.key").read_bytes())
    key_path.chmod(0o644)
    with pytest.raises(CertificateError) as info:
        load_private_key(key_path)
    assert info.value.path == str(key_path)
    assert "readable by group/others (mode 0644); chmod 600 it" in str(info.value)
    key_path.chmod(0o640)
    with pytest.raises(CertificateError, match="mode 0640"):
        load_private_key(key_path)
    assert isinstance(load_private_key(key_path, allow_insecure_permissions=True), rsa.RSAPrivateKey)
    key_path.chmod(0o600)
    assert isinstance(load_private_key(key_path), rsa.RSAPrivateKey)


def test_load_private_key_errors(pki: Path, tmp_path: Path) -> None:
    missing = tmp_path / "missing.key"
    with pytest.raises(CertificateError, match="cannot read") as info:
        load_private_key(missing)
    assert info.value.path == str(missing)

    not_key = tmp_path / "cert.key"
    not_key.write_bytes((pki / "ca.pem").read_bytes())
    not_key.chmod(0o600)
    with pytest.raises(CertificateError, match="no PEM private key"):
        load_private_key(not_key)

    garbage = tmp_path / "garbage.key"
    garbage.write_bytes(b"-----BEGIN PRIVATE KEY-----\nnot base64 at all\n-----END PRIVATE KEY-----\n")
    garbage.chmod(0o600)
    with pytest.raises(CertificateError, match="not a valid PEM private key"):
        load_private_key(garbage)


def test_load_certificate_chain_reads_every_certificate(pki: Path, tmp_path: Path) -> None:
    bundle = tmp_path / "chain.pem"
    bundle.write_bytes((pki / "proxy-server.pem").read_bytes() + (pki / "ca.pem").read_bytes())
    chain = load_certificate_chain(bundle)
    assert [c.subject.rfc4514_string() for c in chain] == [
        "O=siptap lab,CN=proxy-server",
        "O=siptap lab,CN=siptap lab CA",
    ]


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (None, "cannot read"),
        (b"", "no PEM certificate"),
        (b"hello", "no PEM certificate"),
        (b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", "not a valid PEM certificate"),
    ],
)
def test_load_certificate_chain_errors(tmp_path: Path, content: bytes | None, problem: str) -> None:
    path = tmp_path / "c.pem"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(CertificateError, match=problem) as info:
        load_certificate_chain(path)
    assert info.value.path == str(path)


def test_key_matches_certificate(pki: Path) -> None:
    server_key = load_private_key(pki / "proxy-server.key")
    assert key_matches_certificate(server_key, cert(pki / "proxy-server.pem"))
    assert not key_matches_certificate(server_key, cert(pki / "core.pem"))
    assert not key_matches_certificate(ec.generate_private_key(ec.SECP256R1()), cert(pki / "core.pem"))


def _ca_copy(pki: Path, into: Path, ca: str) -> Path:
    """A folder holding ``ca`` of the session PKI as ca.pem/ca.key, for write_crl."""
    into.mkdir()
    shutil.copy(pki / f"{ca}.pem", into / "ca.pem")
    shutil.copy(pki / f"{ca}.key", into / "ca.key")
    return into


def test_load_crls_reads_every_crl_in_file_order(pki: Path, tmp_path: Path) -> None:
    lab = _ca_copy(pki, tmp_path / "lab", "ca")
    foreign = _ca_copy(pki, tmp_path / "foreign", "foreign-ca")
    bundle = tmp_path / "crls.pem"
    # Text around and between the blocks (as in a hand-made bundle) is skipped.
    bundle.write_bytes(b"lab CA:\n" + write_crl(lab, [7]).read_bytes() + b"\nforeign:\n"
                       + write_crl(foreign, [8, 9]).read_bytes())
    crls = load_crls(bundle)
    assert [crl.issuer.rfc4514_string() for crl in crls] == [
        "O=siptap lab,CN=siptap lab CA", "O=siptap lab,CN=siptap foreign CA foreign-ca",
    ]
    assert [[e.serial_number for e in crl] for crl in crls] == [[7], [8, 9]]


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (None, "cannot read"),
        (b"", "no PEM CRL found"),
        (b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", "no PEM CRL found"),
        (b"-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n", "CRL #1 is not a valid PEM CRL"),
    ],
)
def test_load_crls_errors(tmp_path: Path, content: bytes | None, problem: str) -> None:
    path = tmp_path / "crl.pem"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(CertificateError, match=problem) as info:
        load_crls(path)
    assert info.value.path == str(path)


def test_a_bad_second_crl_is_named_by_its_position(pki: Path, tmp_path: Path) -> None:
    good = write_crl(_ca_copy(pki, tmp_path / "lab", "ca"), []).read_bytes()
    path = tmp_path / "crls.pem"
    path.write_bytes(good + b"-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n")
    with pytest.raises(CertificateError, match="CRL #2 is not a valid PEM CRL"):
        load_crls(path)

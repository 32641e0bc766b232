"""The endpoint's certificate chain, in words for an SBC engineer.

Per certificate: validity, SANs, key type, usages and problems (expired, not yet valid,
self-signed, a name mismatch with the server name, an RSA key whose key usage lacks
keyEncipherment, an EKU without serverAuth, ...). For the chain: the verification errors the
context recorded, minus those already worded per certificate.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID

from siptap.tls.identity import matches_hostname, sha256_fingerprint, subject_alt_names
from siptap.tools.probe.report import CertificateInfo

# X509_V_ERR_* codes the probe words itself (dates, purpose) or that mean "not trusted".
# X509_V_ERR_* codes the probe words itself (dates, purpose) or that mean "not trusted".
_DATE_ERRORS = frozenset({9, 10})
_PURPOSE_ERRORS = frozenset({26})
_TRUST_ERRORS = frozenset({2, 18, 19, 20, 21})


def _when(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def key_type_of(cert: x509.Certificate) -> str:
    key = cert.public_key()
    if isinstance(key, rsa.RSAPublicKey):
        return f"RSA-{key.key_size}"
    if isinstance(key, ec.EllipticCurvePublicKey):
        return f"EC {key.curve.name}"
    if isinstance(key, ed25519.Ed25519PublicKey):
        return "Ed25519"
    if isinstance(key, ed448.Ed448PublicKey):
        return "Ed448"
    if isinstance(key, dsa.DSAPublicKey):
        return f"DSA-{key.key_size}"
    return type(key).__name__.lstrip("_")


_KEY_USAGE_FLAGS = ("digital_signature", "content_commitment", "key_encipherment", "data_encipherment",
                    "key_agreement", "key_cert_sign", "crl_sign")


def _key_usage(cert: x509.Certificate) -> x509.KeyUsage | None:
    try:
        return cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return None


def _eku(cert: x509.Certificate) -> x509.ExtendedKeyUsage | None:
    try:
        return cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return None


def _is_self_signed(cert: x509.Certificate) -> bool:
    if cert.subject != cert.issuer:
        return False
    try:
        cert.verify_directly_issued_by(cert)
    except Exception:
        return False
    return True


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def certificate_problems(cert: x509.Certificate, *, leaf: bool, server_name: str | None,
                         now: datetime | None = None) -> list[str]:
    """What is wrong with one certificate of a server's chain, in words for an SBC engineer."""
    now = now or datetime.now(UTC)
    problems: list[str] = []
    if cert.not_valid_after_utc < now:
        problems.append(f"expired on {_when(cert.not_valid_after_utc)}")
    if cert.not_valid_before_utc > now:
        problems.append(f"not yet valid: valid from {_when(cert.not_valid_before_utc)}")
    key = cert.public_key()
    if isinstance(key, rsa.RSAPublicKey) and key.key_size < 2048:
        problems.append(f"weak key: RSA-{key.key_size} (below 2048 bits)")
    algorithm = cert.signature_hash_algorithm
    if algorithm is not None and algorithm.name in ("sha1", "md5") and not _is_self_signed(cert):
        problems.append(f"signed with {algorithm.name.upper()}")
    if not leaf:
        return problems
    if _is_self_signed(cert):
        problems.append("self-signed")
    if server_name and not matches_hostname(cert, server_name):
        sans = ", ".join(subject_alt_names(cert)) or "no SANs"
        problems.append(f"name mismatch: {server_name!r} is not among its SANs ({sans})")
    usage = _key_usage(cert)
    if isinstance(key, rsa.RSAPublicKey) and usage is not None and not usage.key_encipherment:
        problems.append("key usage lacks keyEncipherment: RSA key exchange with this certificate is impossible")
    eku = _eku(cert)
    if eku is not None:
        oids = set(eku)
        if ExtendedKeyUsageOID.SERVER_AUTH not in oids and ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE not in oids:
            names = ", ".join(getattr(o, "_name", o.dotted_string) for o in eku)
            problems.append(f"extended key usage lacks serverAuth ({names}): a TLS client may refuse it as a server")
    if _is_ca(cert):
        problems.append("the server's own certificate is a CA certificate")
    return problems


def describe_certificate(cert: x509.Certificate, *, leaf: bool, server_name: str | None,
                         now: datetime | None = None) -> CertificateInfo:
    usage = _key_usage(cert)
    flags: tuple[str, ...] | None = None
    if usage is not None:
        flags = tuple(name for name in _KEY_USAGE_FLAGS if getattr(usage, name))
    eku = _eku(cert)
    algorithm = cert.signature_hash_algorithm
    return CertificateInfo(
        subject=cert.subject.rfc4514_string(),
        issuer=cert.issuer.rfc4514_string(),
        serial=f"{cert.serial_number:X}",
        not_before=_when(cert.not_valid_before_utc),
        not_after=_when(cert.not_valid_after_utc),
        sans=subject_alt_names(cert),
        key_type=key_type_of(cert),
        signature_hash=algorithm.name if algorithm is not None else None,
        sha256=sha256_fingerprint(cert),
        key_usage=flags,
        extended_key_usage=tuple(getattr(o, "_name", o.dotted_string) for o in eku) if eku is not None else None,
        problems=tuple(certificate_problems(cert, leaf=leaf, server_name=server_name, now=now)),
    )


def chain_problems(verify_errors: list[tuple[int, int, str, str]], ca: Path | None) -> list[str]:
    """The verification errors recorded for the chain (errnum, depth, subject, text), worded once
    each; dates and purpose are left to the per-certificate problems, trust to ``--ca``."""
    problems: list[str] = []
    seen: set[tuple[int, int]] = set()
    for errnum, depth, subject, text in verify_errors:
        if errnum in _DATE_ERRORS or errnum in _PURPOSE_ERRORS or (errnum, depth) in seen:
            continue  # dates and purpose are worded per certificate
        seen.add((errnum, depth))
        if errnum in _TRUST_ERRORS:
            if ca is None:
                continue  # nothing to trust against; "self-signed" is reported per certificate
            problems.append(f"unknown CA: {subject} (depth {depth}): {text} (not trusted by {ca})")
        else:
            problems.append(f"{subject} (depth {depth}): {text} (X509 error {errnum})")
    return problems

"""Lab PKI: a throw-away CA and the certificates siptap needs to run and be tested
(``siptap certs``).

Everything here is for a lab. ``init_lab_pki`` writes a CA plus four leaves (the proxy's server
and client identities, a sample customer E-SBC, a sample core); ``issue_leaf`` mints extra leaves
for tests of the failure paths (expired, not yet valid, signed by a foreign CA, EC key, wrong or
missing EKU); ``revoke``/``write_crl`` keep ``crl.pem``, the lab CA's revocation list. Production
deployments substitute real certificates (and their CA's CRL) for the same file names.

Keys are RSA-2048 (RSA key exchange needs an RSA server key), written as unencrypted PKCS#8 PEM
with mode 0600 from the moment the file exists: a temporary file is created with O_EXCL and mode
0600, then renamed over the target. Nothing is written until every key and certificate has been
generated, and ``init_lab_pki`` refuses (without ``force``) before writing anything if any target
file already exists.

Reading PEM files is the product's job and lives in :mod:`siptap.tls.pem`; this module only
uses it to load the lab CA back.
"""

from __future__ import annotations

import ipaddress
import os
import re
import secrets
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificateIssuerPrivateKeyTypes,
    PrivateKeyTypes,
)
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID, NameOID

from siptap.errors import CertificateError
from siptap.tls.pem import key_matches_certificate, load_certificate_chain, load_crls, load_private_key

__all__ = [
    "DEFAULT_SANS",
    "LAB_FILES",
    "init_ca",
    "init_lab_pki",
    "issue_leaf",
    "revoke",
    "write_crl",
]

DEFAULT_SANS: tuple[str, ...] = ("localhost", "127.0.0.1", "::1")

ORGANIZATION = "siptap lab"
CA_COMMON_NAME = "siptap lab CA"

#: The files ``init_lab_pki`` writes (NAME.pem and NAME.key for each), and what each one is for.
LAB_FILES: dict[str, str] = {
    "ca": "lab CA; siptap trusts it for both legs, and the customer and core trust it for siptap",
    "proxy-server": "siptap's server certificate, presented to the customer E-SBC (EKU serverAuth)",
    "proxy-client": "siptap's client certificate, presented to the core SBC (EKU clientAuth)",
    "customer": "sample customer E-SBC client certificate, presented to siptap (EKU clientAuth)",
    "core": "sample core SBC server certificate, presented to siptap (EKU serverAuth)",
}

Usage = Literal["client", "server", "both", "none"]
KeyType = Literal["rsa", "ec"]

_LAB_ROLES: dict[str, Usage] = {
    "proxy-server": "server",
    "proxy-client": "client",
    "customer": "client",
    "core": "server",
}

CRL_FILE = "crl.pem"
CRL_DAYS = 30

_RSA_BITS = 2048
_CA_DAYS = 3650
_CLOCK_SKEW = timedelta(hours=1)
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*\Z")

_Key = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


# --------------------------------------------------------------------------------------------
# Public API


def init_lab_pki(
    directory: Path,
    *,
    force: bool = False,
    sans: Sequence[str] = DEFAULT_SANS,
    days: int = 825,
    ocsp_url: str | None = None,
) -> list[Path]:
    """Create the lab CA and the four lab leaves in ``directory``; return the paths written.

    Server certificates (proxy-server, core) carry ``sans``; client certificates (proxy-client,
    customer) carry their own name as a DNS SAN. Without ``force``, raises
    :class:`CertificateError` naming the first target that already exists, before writing
    anything. With ``force``, everything (the CA included) is regenerated. ``ocsp_url`` puts
    that responder in every leaf's Authority Information Access (``siptap certs ocsp`` serves it).
    """
    directory = Path(directory)
    _check_days(days)
    san_names = _general_names(sans)
    targets = [p for name in LAB_FILES for p in _pair(directory, name)]
    if not force:
        _refuse_existing(targets)

    ca_key = _new_key("rsa")
    ca_cert = _build_ca(ca_key, CA_COMMON_NAME, _CA_DAYS)
    pems: list[tuple[Path, bytes, bytes]] = [(directory / "ca", _cert_pem(ca_cert), _key_pem(ca_key))]
    now = datetime.now(UTC)
    for name, usage in _LAB_ROLES.items():
        leaf_key = _new_key("rsa")
        names: list[x509.GeneralName] = san_names if usage == "server" else [x509.DNSName(name)]
        cert = _build_leaf(
            leaf_key, name, usage, names, ca_cert, ca_key, now - _CLOCK_SKEW, now + timedelta(days=days), ocsp_url
        )
        pems.append((directory / name, _cert_pem(cert), _key_pem(leaf_key)))

    _ensure_dir(directory)
    written: list[Path] = []
    for stem, cert_pem, key_pem in pems:
        written += _write_pair(stem, cert_pem, key_pem)
    return written


def init_ca(
    directory: Path,
    name: str = "ca",
    common_name: str = CA_COMMON_NAME,
    *,
    days: int = _CA_DAYS,
    force: bool = False,
) -> tuple[Path, Path]:
    """Create a self-signed RSA CA as ``directory/NAME.pem`` and ``NAME.key``.

    Raises :class:`CertificateError` if either file exists, unless ``force``.
    """
    directory = Path(directory)
    _check_name(directory, name)
    _check_days(days)
    cert_path, key_path = _pair(directory, name)
    if not force:
        _refuse_existing([cert_path, key_path])
    key = _new_key("rsa")
    cert = _build_ca(key, common_name, days)
    _ensure_dir(directory)
    _write_pair(directory / name, _cert_pem(cert), _key_pem(key))
    return cert_path, key_path


def issue_leaf(
    directory: Path,
    name: str,
    *,
    usage: Usage,
    ca_dir: Path | None = None,
    days: int = 825,
    expired: bool = False,
    not_yet_valid: bool = False,
    sans: Sequence[str] = DEFAULT_SANS,
    key_type: KeyType = "rsa",
    self_ca: str | None = None,
    force: bool = False,
    ocsp_url: str | None = None,
) -> tuple[Path, Path]:
    """Mint ``directory/NAME.pem`` and ``NAME.key``, signed by a CA; return (cert, key) paths.

    The signer is ``ca.pem``/``ca.key`` in ``ca_dir`` (default ``directory``), or, with
    ``self_ca``, a separate CA ``directory/SELF_CA.pem``/``.key`` that is created if neither file
    exists and reused otherwise (for "untrusted CA" tests); ``ca_dir`` is then ignored.

    ``usage`` picks the Extended Key Usage: ``server`` (serverAuth), ``client`` (clientAuth),
    ``both``, or ``none`` (no EKU extension at all). ``expired`` makes the validity lie in the
    past (30 days ago to 1 day ago); ``not_yet_valid`` starts it tomorrow. ``key_type="ec"``
    gives a P-256 key instead of RSA-2048. ``ocsp_url``: an AIA OCSP responder URL in the leaf.

    Raises :class:`CertificateError` if the leaf files exist (unless ``force``) or the CA files
    cannot be loaded, and ``ValueError`` for contradictory arguments.
    """
    directory = Path(directory)
    _check_name(directory, name)
    _check_days(days)
    if usage not in ("client", "server", "both", "none"):
        raise ValueError(f"usage must be client, server, both or none, not {usage!r}")
    if key_type not in ("rsa", "ec"):
        raise ValueError(f"key_type must be rsa or ec, not {key_type!r}")
    if expired and not_yet_valid:
        raise ValueError("a certificate cannot be both expired and not yet valid")
    san_names = _general_names(sans)

    if self_ca is not None:
        _check_name(directory, self_ca)
        ca_stem = directory / self_ca
    else:
        ca_stem = Path(ca_dir if ca_dir is not None else directory) / "ca"
    cert_path, key_path = _pair(directory, name)
    ca_paths = _pair(ca_stem.parent, ca_stem.name)
    if {p.resolve() for p in (cert_path, key_path)} & {p.resolve() for p in ca_paths}:
        raise ValueError(f"leaf name {name!r} would overwrite the CA {ca_stem.name!r}")
    if not force:
        _refuse_existing([cert_path, key_path])

    new_ca: tuple[bytes, bytes] | None = None
    if self_ca is not None and not (ca_paths[0].exists() or ca_paths[1].exists()):
        foreign_key = _new_key("rsa")
        ca_cert = _build_ca(foreign_key, f"siptap foreign CA {self_ca}", _CA_DAYS)
        ca_key: CertificateIssuerPrivateKeyTypes = foreign_key
        new_ca = (_cert_pem(ca_cert), _key_pem(ca_key))
    else:
        ca_cert, ca_key = _load_ca(*ca_paths)

    now = datetime.now(UTC)
    if expired:
        not_before, not_after = now - timedelta(days=30), now - timedelta(days=1)
    elif not_yet_valid:
        not_before = now + timedelta(days=1)
        not_after = not_before + timedelta(days=days)
    else:
        not_before, not_after = now - _CLOCK_SKEW, now + timedelta(days=days)

    leaf_key = _new_key(key_type)
    cert = _build_leaf(leaf_key, name, usage, san_names, ca_cert, ca_key, not_before, not_after, ocsp_url)

    _ensure_dir(directory)
    if new_ca is not None:
        _write_pair(ca_stem, *new_ca)
    _write_pair(directory / name, _cert_pem(cert), _key_pem(leaf_key))
    return cert_path, key_path


def write_crl(
    directory: Path,
    revoked_serials: Iterable[int] | Mapping[int, datetime],
    *,
    days: int = CRL_DAYS,
    now: datetime | None = None,
    next_update: datetime | None = None,
    ca_name: str = "ca",
) -> Path:
    """(Re)write ``directory/crl.pem``: a CRL signed by the lab CA (``ca.pem``/``ca.key``)
    listing ``revoked_serials`` (a mapping gives each serial its revocation date; otherwise
    ``now``). thisUpdate is ``now``, nextUpdate ``now + days`` unless ``next_update`` is given
    (tests write stale CRLs with it). The CRL number is one more than the previous file's.
    """
    directory = Path(directory)
    _check_name(directory, ca_name)
    ca_cert, ca_key = _load_ca(*_pair(directory, ca_name))
    now = now or datetime.now(UTC)
    if next_update is None:
        _check_days(days)
        next_update = now + timedelta(days=days)
    dates = (
        dict(revoked_serials)
        if isinstance(revoked_serials, Mapping)
        else dict.fromkeys(revoked_serials, now)
    )
    path = directory / CRL_FILE
    number = 1
    previous = _existing_crl(path, ca_cert)
    if previous is not None:
        try:
            number = previous.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number + 1
        except x509.ExtensionNotFound:
            pass
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca_cert.subject)
        .last_update(now - _CLOCK_SKEW)
        .next_update(next_update)
        .add_extension(x509.CRLNumber(number), critical=False)
        .add_extension(_authority_key_id(ca_cert, ca_key), critical=False)
    )
    for serial in sorted(dates):
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(dates[serial]).build()
        )
    crl = builder.sign(ca_key, _hash_for(ca_key))
    _ensure_dir(directory)
    _write_atomic(path, crl.public_bytes(serialization.Encoding.PEM), 0o644)
    return path


def revoke(directory: Path, name: str | None = None, *, days: int = CRL_DAYS) -> tuple[Path, list[int]]:
    """Revoke ``directory/NAME.pem`` (if ``name``) and rewrite ``crl.pem`` with a fresh nextUpdate.

    The list of revoked serials is the existing ``crl.pem`` itself (if it is signed by this lab
    CA), so revoking is cumulative; without ``name`` the CRL is only re-signed (do that before
    nextUpdate: siptap refuses every client once its CRL has expired). Returns the CRL path and
    the serials it lists. CertificateError if the certificate is not issued by the lab CA.
    """
    directory = Path(directory)
    ca_cert, _ = _load_ca(*_pair(directory, "ca"))
    path = directory / CRL_FILE
    previous = _existing_crl(path, ca_cert)
    dates = {entry.serial_number: entry.revocation_date_utc for entry in previous} if previous is not None else {}
    if name is not None:
        _check_name(directory, name)
        cert_path = directory / f"{name}.pem"
        cert = load_certificate_chain(cert_path)[0]
        if cert.issuer != ca_cert.subject or not _signed_by(cert, ca_cert):
            raise CertificateError(str(cert_path), f"not issued by the lab CA {directory / 'ca.pem'}: cannot revoke it here")
        dates.setdefault(cert.serial_number, datetime.now(UTC))
    write_crl(directory, dates, days=days)
    return path, sorted(dates)


def _existing_crl(path: Path, ca_cert: x509.Certificate) -> x509.CertificateRevocationList | None:
    """The CRL in ``path`` if there is one this CA signed; a missing or foreign file is ignored."""
    if not path.exists():
        return None
    try:
        crls = load_crls(path)
    except CertificateError:
        return None
    for crl in crls:
        if crl.issuer == ca_cert.subject and crl.is_signature_valid(ca_cert.public_key()):  # type: ignore[arg-type]  # X25519/X448 keys are in the type, never on a CA
            return crl
    return None


def _signed_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


# --------------------------------------------------------------------------------------------
# Building


def _new_key(key_type: KeyType) -> _Key:
    if key_type == "ec":
        return ec.generate_private_key(ec.SECP256R1())
    return rsa.generate_private_key(public_exponent=65537, key_size=_RSA_BITS)


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION),
        ]
    )


def _hash_for(key: CertificateIssuerPrivateKeyTypes) -> hashes.SHA256 | None:
    # Ed25519/Ed448 sign without a separate digest; everything else here uses SHA-256.
    if isinstance(key, (ed25519.Ed25519PrivateKey, ed448.Ed448PrivateKey)):
        return None
    return hashes.SHA256()


def _build_ca(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey, common_name: str, days: int) -> x509.Certificate:
    now = datetime.now(UTC)
    subject = _name(common_name)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _CLOCK_SKEW)
        .not_valid_after(now + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, _hash_for(key))
    )


def _build_leaf(
    key: _Key,
    name: str,
    usage: Usage,
    san_names: list[x509.GeneralName],
    ca_cert: x509.Certificate,
    ca_key: CertificateIssuerPrivateKeyTypes,
    not_before: datetime,
    not_after: datetime,
    ocsp_url: str | None = None,
) -> x509.Certificate:
    is_rsa = isinstance(key, rsa.RSAPrivateKey)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(name))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                # RSA key exchange encrypts the pre-master secret to this key: keyEncipherment is
                # required on an RSA server certificate. It has no meaning for an EC key.
                key_encipherment=is_rsa,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(_authority_key_id(ca_cert, ca_key), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    ekus = {
        "server": [ExtendedKeyUsageOID.SERVER_AUTH],
        "client": [ExtendedKeyUsageOID.CLIENT_AUTH],
        "both": [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
        "none": [],
    }[usage]
    if ekus:
        builder = builder.add_extension(x509.ExtendedKeyUsage(ekus), critical=False)
    if san_names:
        builder = builder.add_extension(x509.SubjectAlternativeName(san_names), critical=False)
    if ocsp_url:
        builder = builder.add_extension(x509.AuthorityInformationAccess([x509.AccessDescription(
            AuthorityInformationAccessOID.OCSP, x509.UniformResourceIdentifier(ocsp_url))]), critical=False)
    return builder.sign(ca_key, _hash_for(ca_key))


def _authority_key_id(
    ca_cert: x509.Certificate, ca_key: CertificateIssuerPrivateKeyTypes
) -> x509.AuthorityKeyIdentifier:
    try:
        ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except x509.ExtensionNotFound:
        return x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key())
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)


def _general_names(sans: Sequence[str]) -> list[x509.GeneralName]:
    if isinstance(sans, str):  # a lone string would otherwise be split into characters
        sans = (sans,)
    names: list[x509.GeneralName] = []
    for san in sans:
        san = san.strip()
        if not san:
            raise ValueError("empty subject alternative name")
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(san)))
        except ValueError:
            try:
                names.append(x509.DNSName(san))
            except ValueError as exc:  # e.g. a non-ASCII name that is not an A-label
                raise ValueError(f"bad subject alternative name {san!r}: {exc}") from None
    return names


def _load_ca(
    cert_path: Path, key_path: Path
) -> tuple[x509.Certificate, CertificateIssuerPrivateKeyTypes]:
    cert = load_certificate_chain(cert_path)[0]
    key = load_private_key(key_path)
    if not isinstance(
        key,
        (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey, ed25519.Ed25519PrivateKey, ed448.Ed448PrivateKey),
    ):
        raise CertificateError(str(key_path), "this key type cannot sign certificates")
    if not key_matches_certificate(key, cert):
        raise CertificateError(str(key_path), f"does not match the CA certificate {cert_path}")
    try:
        is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        is_ca = False
    if not is_ca:
        raise CertificateError(str(cert_path), "not a CA certificate (no basicConstraints CA:TRUE)")
    return cert, key


# --------------------------------------------------------------------------------------------
# Files


def _pair(directory: Path, name: str) -> tuple[Path, Path]:
    return directory / f"{name}.pem", directory / f"{name}.key"


def _check_name(directory: Path, name: str) -> None:
    if not _NAME_RE.match(name):
        raise CertificateError(
            str(directory / name), "invalid name: use letters, digits, '.', '_' and '-', not starting with '.'"
        )


def _check_days(days: int) -> None:
    if days < 1:
        raise ValueError(f"days must be at least 1, not {days}")


def _refuse_existing(paths: Sequence[Path]) -> None:
    for path in paths:
        if path.exists() or path.is_symlink():
            raise CertificateError(str(path), "exists; use --force to overwrite")


def _ensure_dir(directory: Path) -> None:
    directory.mkdir(mode=0o755, parents=True, exist_ok=True)


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: PrivateKeyTypes) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _write_pair(stem: Path, cert_pem: bytes, key_pem: bytes) -> list[Path]:
    cert_path, key_path = _pair(stem.parent, stem.name)
    _write_atomic(key_path, key_pem, 0o600)
    _write_atomic(cert_path, cert_pem, 0o644)
    return [cert_path, key_path]


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    """Write via a fresh temporary file created with ``mode`` (never wider), then rename."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY | getattr(os, "O_CLOEXEC", 0), mode)
    try:
        try:
            os.fchmod(fd, mode)  # the umask may have narrowed it; never widens a key beyond 0600
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise



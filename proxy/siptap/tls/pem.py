"""Reading the PEM files a deployment names: certificate chains, private keys, CRLs.

What the TLS contexts, the CRL watch, ``siptap check`` and the probe load at start-up and on
reload. Every failure is a :class:`~siptap.errors.CertificateError` naming the file and the
problem in words (missing, unreadable, no PEM block, encrypted key, key readable by others),
so a bad file stops start-up with one clear line instead of an OpenSSL error stack. Writing
certificates is the lab PKI's job (``siptap.tools.pki``), not the product's.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

from siptap.errors import CertificateError

__all__ = [
    "key_matches_certificate",
    "load_certificate_chain",
    "load_crls",
    "load_private_key",
]

_CRL_PEM_RE = re.compile(rb"-----BEGIN X509 CRL-----\r?\n.*?-----END X509 CRL-----", re.DOTALL)


def load_certificate_chain(path: Path | str) -> list[x509.Certificate]:
    """Every PEM certificate in ``path``, in file order; CertificateError if there are none."""
    data = _read(path)
    if b"-----BEGIN CERTIFICATE-----" not in data:
        raise CertificateError(str(path), "no PEM certificate found (expected -----BEGIN CERTIFICATE-----)")
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise CertificateError(str(path), f"not a valid PEM certificate: {exc}") from None


def load_private_key(path: Path | str, *, allow_insecure_permissions: bool = False) -> PrivateKeyTypes:
    """The unencrypted PEM private key in ``path``.

    Refuses (CertificateError) a key file that group or others may access, unless
    ``allow_insecure_permissions``; also if it is missing, unreadable, encrypted or not a key.
    """
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        raise CertificateError(str(path), f"cannot read: {exc.strerror or exc}") from None
    if mode & 0o077 and not allow_insecure_permissions:
        what = "readable" if mode & 0o044 else "writable"
        raise CertificateError(
            str(path), f"private key is {what} by group/others (mode {mode & 0o777:04o}); chmod 600 it"
        )
    data = _read(path)
    if b"PRIVATE KEY-----" not in data:
        raise CertificateError(str(path), "no PEM private key found (expected -----BEGIN ... PRIVATE KEY-----)")
    try:
        return serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise CertificateError(str(path), "private key is encrypted; siptap needs an unencrypted key") from None
    except ValueError as exc:
        raise CertificateError(str(path), f"not a valid PEM private key: {exc}") from None
    except UnsupportedAlgorithm as exc:
        raise CertificateError(str(path), f"unsupported private key: {exc}") from None


def load_crls(path: Path | str) -> list[x509.CertificateRevocationList]:
    """Every PEM CRL (``-----BEGIN X509 CRL-----``) in ``path``, in file order.

    CertificateError if the file is unreadable, holds no CRL, or a block does not parse.
    """
    data = _read(path)
    blocks = _CRL_PEM_RE.findall(data)
    if not blocks:
        raise CertificateError(str(path), "no PEM CRL found (expected -----BEGIN X509 CRL-----)")
    crls = []
    for index, block in enumerate(blocks, 1):
        try:
            crls.append(x509.load_pem_x509_crl(block))
        except ValueError as exc:
            raise CertificateError(str(path), f"CRL #{index} is not a valid PEM CRL: {exc}") from None
    return crls


def key_matches_certificate(key: PrivateKeyTypes, cert: x509.Certificate) -> bool:
    """True if ``key`` is the private half of ``cert``'s public key."""
    fmt = serialization.PublicFormat.SubjectPublicKeyInfo
    try:
        ours = key.public_key().public_bytes(serialization.Encoding.DER, fmt)
        theirs = cert.public_key().public_bytes(serialization.Encoding.DER, fmt)
    except Exception:
        return False
    return ours == theirs


def _read(path: Path | str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise CertificateError(str(path), f"cannot read: {exc.strerror or exc}") from None

"""Certificate summaries: a peer certificate's DER as the handshake record shows it.

Both sides of the relay/mirror split need this: the relay's routing table matches a route's
``match.client`` against the customer's leaf, and the mirror process renders every leg's
peer chain (the ``handshake_done`` line, the JSON-lines ``tls`` member). The relay hands the
chain over as DER (issue 16 item 6: summarising it is observation, not relaying), so this
module sits below both: ``cryptography`` only, no pyOpenSSL, nothing of ``tls/``.
"""

from __future__ import annotations

from collections import OrderedDict
from datetime import UTC

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import NameOID

from siptap.sansio.handshake import CertificateSummary

__all__ = ["CertificateCache", "certificate_summary", "common_name", "sha256_fingerprint", "subject_alt_names"]


def common_name(cert: x509.Certificate) -> str | None:
    attrs = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(attrs[0].value) if attrs else None


def subject_alt_names(cert: x509.Certificate) -> tuple[str, ...]:
    """SANs as ``DNS:name`` / ``IP:addr`` / ``URI:...`` strings, the form openssl prints."""
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return ()
    out: list[str] = []
    for dns in ext.get_values_for_type(x509.DNSName):
        out.append(f"DNS:{dns}")
    for ip in ext.get_values_for_type(x509.IPAddress):
        out.append(f"IP:{ip}")
    for uri in ext.get_values_for_type(x509.UniformResourceIdentifier):
        out.append(f"URI:{uri}")
    return tuple(out)


def sha256_fingerprint(cert: x509.Certificate) -> str:
    return cert.fingerprint(hashes.SHA256()).hex(":").upper()


def certificate_summary(cert: x509.Certificate) -> CertificateSummary:
    """The handshake record's view of one parsed certificate (what :class:`CertificateCache`
    keeps per distinct DER, and what the uncached path computes per handshake)."""
    return CertificateSummary(
        subject=cert.subject.rfc4514_string(),
        issuer=cert.issuer.rfc4514_string(),
        serial=f"{cert.serial_number:X}",
        not_before=cert.not_valid_before_utc.astimezone(UTC).isoformat(),
        not_after=cert.not_valid_after_utc.astimezone(UTC).isoformat(),
        sha256=sha256_fingerprint(cert),
        sans=subject_alt_names(cert),
        common_name=common_name(cert),
    )


class _Cached:
    __slots__ = ("certificate", "summary")

    def __init__(self, certificate: x509.Certificate) -> None:
        self.certificate = certificate
        self.summary: CertificateSummary | None = None


class CertificateCache:
    """Parsed certificates and their summaries by DER bytes, made once per distinct
    certificate instead of once per handshake.

    Parsing a certificate with ``cryptography`` and summarising it (two RFC 4514 names, the
    SANs, the SHA-256 fingerprint, the dates) cost about 0.1 ms per certificate, and every
    proxied connection has three or four (the customer's verified chain, the core's chain),
    yet a deployment sees few distinct certificates: one per E-SBC, the CAs, the cores. Keyed
    by the exact DER, so a hit is the same certificate byte for byte and the summary is the
    one the uncached path would compute. Bounded (the least recently used entry goes first),
    so a stream of distinct certificates cannot grow memory. The relay's contexts own one
    each (a reload starts a fresh one); the mirror process owns one for the chains it renders.
    A DER that does not parse raises ValueError (``cryptography``'s) and is not kept.
    """

    def __init__(self, maxsize: int = 128) -> None:
        if maxsize < 1:
            raise ValueError("maxsize must be >= 1")
        self.maxsize = maxsize
        self._entries: OrderedDict[bytes, _Cached] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def _entry(self, der: bytes) -> _Cached:
        entries = self._entries
        entry = entries.get(der)
        if entry is not None:
            entries.move_to_end(der)
            self.hits += 1
            return entry
        self.misses += 1
        entry = _Cached(x509.load_der_x509_certificate(der))
        entries[der] = entry
        if len(entries) > self.maxsize:
            entries.popitem(last=False)
        return entry

    def certificate(self, der: bytes) -> x509.Certificate:
        return self._entry(der).certificate

    def summary(self, der: bytes) -> CertificateSummary:
        entry = self._entry(der)
        if entry.summary is None:
            entry.summary = certificate_summary(entry.certificate)
        return entry.summary

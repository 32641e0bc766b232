"""Certificate identity checks that OpenSSL's default verification leaves to the application.

Hostname/IP matching (RFC 6125: SANs only, a wildcard only as the whole leftmost label) for
the core leg, and the customer allow-list. Both run inside the verify callback at depth 0 so
a mismatch fails the handshake with an alert, as the peer expects, instead of a silent close.
A route's ``match.client`` uses the same entries after the handshake, on the handshake's
certificate summary (:func:`summary_matches`): one rule, two inputs.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes

# Re-exported: they were defined here before the mirror needed them too (siptap.certificates).
from siptap.certificates import common_name as common_name
from siptap.certificates import sha256_fingerprint as sha256_fingerprint
from siptap.certificates import subject_alt_names as subject_alt_names
from siptap.config.allow import AllowEntries, parse_allow_entries
from siptap.sansio.distinguished_name import common_name_of, parse_dn
from siptap.sansio.handshake import CertificateSummary


def matches_hostname(cert: x509.Certificate, name: str) -> bool:
    """True if ``name`` (DNS name or IP literal) is in the certificate's SANs."""
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    try:
        ip = ipaddress.ip_address(name.strip("[]"))
    except ValueError:
        ip = None
    if ip is not None:
        return ip in ext.get_values_for_type(x509.IPAddress)
    wanted = name.rstrip(".").lower()
    return any(_dns_match(pattern.rstrip(".").lower(), wanted) for pattern in ext.get_values_for_type(x509.DNSName))


def _dns_match(pattern: str, name: str) -> bool:
    if pattern == name:
        return True
    if pattern.startswith("*.") and "*" not in pattern[2:]:
        head, _, rest = name.partition(".")
        return bool(head) and rest == pattern[2:] and rest.count(".") >= 1
    return False


@dataclass(frozen=True, slots=True)
class AllowList:
    """Client identities allowed on the customer leg, matched against a peer certificate.
    The entries are parsed (and refused when malformed) by
    :func:`siptap.config.allow.parse_allow_entries`; empty means: any certificate the CA
    bundle verifies."""

    entries: AllowEntries = AllowEntries()  # noqa: RUF009 - frozen, shared safely

    @classmethod
    def parse(cls, entries: list[str] | tuple[str, ...]) -> AllowList:
        return cls(parse_allow_entries(entries))

    def __bool__(self) -> bool:
        return bool(self.entries)

    def permits(self, cert: x509.Certificate) -> bool:
        allowed = self.entries
        if not allowed:
            return True
        # Each part computed only when an entry of its kind could use it (the verify callback
        # runs this per handshake).
        return _matches(allowed, common_name(cert), subject_alt_names(cert),
                        lambda: cert.fingerprint(hashes.SHA256()).hex(), lambda: cert.issuer.rfc4514_string())


def summary_matches(entries: AllowEntries, leaf: CertificateSummary) -> bool:
    """Whether a verified client certificate, as its handshake summary has it, matches any of
    ``entries`` (a route's ``match.client``); the same rule as :meth:`AllowList.permits`."""
    return _matches(entries, leaf.common_name, leaf.sans,
                    lambda: leaf.sha256.replace(":", "").lower(), lambda: leaf.issuer)


def _matches(allowed: AllowEntries, cn: str | None, sans: tuple[str, ...], sha256_hex: Callable[[], str],
             issuer_rfc4514: Callable[[], str]) -> bool:
    if cn is not None and cn in allowed.common_names:
        return True
    for san in sans:
        lowered = san.lower()
        if lowered in allowed.sans or lowered.partition(":")[2] in allowed.sans:
            return True
    if allowed.fingerprints and sha256_hex() in allowed.fingerprints:
        return True
    if allowed.issuers or allowed.issuer_common_names:
        try:
            issuer = parse_dn(issuer_rfc4514())
        except ValueError:  # pragma: no cover - cryptography writes RFC 4514, which parses
            return False
        return issuer in allowed.issuers or common_name_of(issuer) in allowed.issuer_common_names
    return False

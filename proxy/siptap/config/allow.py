"""Client identities as text: ``cn:``/``san:``/``sha256:``/``issuer:`` entries parsed into sets.

Pure parsing, so that the config layer can refuse a bad entry at load time without
importing the TLS layer. The customer allow-list and a route's ``match.client`` share the
forms; :mod:`siptap.tls.identity` matches a certificate (or its summary) against them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from siptap.sansio.distinguished_name import DistinguishedName, normalise_value, parse_dn

_HEX = frozenset("0123456789abcdef")


@dataclass(frozen=True, slots=True)
class AllowEntries:
    """Client identities allowed on the customer leg, normalised for matching.

    Entries are ``cn:NAME`` (exact), ``san:DNS:NAME`` / ``san:IP:ADDR`` (or ``san:NAME``
    for either; case-insensitive), ``sha256:HEX`` (colons optional, case-insensitive) and
    ``issuer:DN`` (the whole issuer name, ``issuer:CN=Acme CA,O=Acme``, in any order) or
    ``issuer:NAME`` (the issuer's CN); issuers compare as X.500 does, ignoring case and
    extra spaces (:mod:`siptap.sansio.distinguished_name`). An entry matches alone: any one
    is enough. Empty means: any certificate the CA bundle verifies."""

    common_names: frozenset[str] = frozenset()
    sans: frozenset[str] = frozenset()  # lower case
    fingerprints: frozenset[str] = frozenset()  # 64 lower-case hex digits, no colons
    issuers: frozenset[DistinguishedName] = frozenset()  # whole issuer names, parsed
    issuer_common_names: frozenset[str] = frozenset()  # normalised (normalise_value)

    def __bool__(self) -> bool:
        return bool(self.common_names or self.sans or self.fingerprints or self.issuers or self.issuer_common_names)


def parse_allow_entries(entries: Iterable[str], what: str = "allow-list entry") -> AllowEntries:
    """Parse the ``allow`` (or ``match.client``) strings; a ValueError names the first bad
    entry (as ``what``) and why."""
    cns: set[str] = set()
    sans: set[str] = set()
    fps: set[str] = set()
    issuers: set[DistinguishedName] = set()
    issuer_cns: set[str] = set()
    for entry in entries:
        kind, sep, value = entry.partition(":")
        kind = kind.strip().lower()
        if not sep or not value.strip():
            raise ValueError(f"{what} {entry!r}: expected cn:NAME, san:NAME, sha256:HEX or issuer:DN")
        value = value.strip()
        if kind == "cn":
            cns.add(value)
        elif kind == "san":
            sans.add(value.lower())
        elif kind == "sha256":
            hexdigits = value.replace(":", "").lower()
            if len(hexdigits) != 64 or not _HEX.issuperset(hexdigits):
                raise ValueError(f"{what} {entry!r}: SHA-256 fingerprint needs 64 hex digits")
            fps.add(hexdigits)
        elif kind == "issuer":
            # With an "=" it is a whole name (CN=..., O=...); without, the issuer's CN alone.
            if "=" in value:
                try:
                    issuers.add(parse_dn(value))
                except ValueError as exc:
                    raise ValueError(f"{what} {entry!r}: {exc}") from None
            else:
                issuer_cns.add(normalise_value(value))
        else:
            raise ValueError(f"{what} {entry!r}: unknown kind {kind!r} (cn, san, sha256, issuer)")
    return AllowEntries(frozenset(cns), frozenset(sans), frozenset(fps), frozenset(issuers), frozenset(issuer_cns))

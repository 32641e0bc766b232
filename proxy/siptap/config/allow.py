"""The customer allow-list as text: ``cn:``/``san:``/``sha256:`` entries parsed into sets.

Pure parsing, so that the config layer can refuse a bad entry at load time without
importing the TLS layer; :class:`siptap.tls.identity.AllowList` matches a certificate
against the parsed form during the handshake.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

_HEX = frozenset("0123456789abcdef")


@dataclass(frozen=True, slots=True)
class AllowEntries:
    """Client identities allowed on the customer leg, normalised for matching.

    Entries are ``cn:NAME`` (exact), ``san:DNS:NAME`` / ``san:IP:ADDR`` (or ``san:NAME``
    for either; case-insensitive) and ``sha256:HEX`` (colons optional, case-insensitive).
    Empty means: any certificate the CA bundle verifies."""

    common_names: frozenset[str] = frozenset()
    sans: frozenset[str] = frozenset()  # lower case
    fingerprints: frozenset[str] = frozenset()  # 64 lower-case hex digits, no colons

    def __bool__(self) -> bool:
        return bool(self.common_names or self.sans or self.fingerprints)


def parse_allow_entries(entries: Iterable[str]) -> AllowEntries:
    """Parse the ``allow`` strings; a ValueError names the first bad entry and why."""
    cns: set[str] = set()
    sans: set[str] = set()
    fps: set[str] = set()
    for entry in entries:
        kind, sep, value = entry.partition(":")
        kind = kind.strip().lower()
        if not sep or not value.strip():
            raise ValueError(f"allow-list entry {entry!r}: expected cn:NAME, san:NAME or sha256:HEX")
        value = value.strip()
        if kind == "cn":
            cns.add(value)
        elif kind == "san":
            sans.add(value.lower())
        elif kind == "sha256":
            hexdigits = value.replace(":", "").lower()
            if len(hexdigits) != 64 or not _HEX.issuperset(hexdigits):
                raise ValueError(f"allow-list entry {entry!r}: SHA-256 fingerprint needs 64 hex digits")
            fps.add(hexdigits)
        else:
            raise ValueError(f"allow-list entry {entry!r}: unknown kind {kind!r} (cn, san, sha256)")
    return AllowEntries(frozenset(cns), frozenset(sans), frozenset(fps))

"""Distinguished names as text, normalised so that two spellings of one name compare equal.

A route matches a client certificate by its issuer (``issuer:CN=Acme CA,O=Acme``), and the
operator copies that name from wherever they saw it: ``openssl x509 -issuer`` prints
``C = US, O = Acme, CN = Acme CA`` (X.509 order, spaces around ``=``), its ``-nameopt compat``
prints ``/C=US/O=Acme/CN=Acme CA``, and cryptography's ``rfc4514_string()`` (what siptap's
own log lines show) prints ``CN=Acme CA,O=Acme,C=US`` (reversed). All three are the same CA.

So a name is parsed into a set of (attribute type, value) pairs: order-insensitive, attribute
types upper-cased with their common aliases resolved, values compared as X.500's
caseIgnoreMatch does (case and runs of spaces ignored). Two different CAs whose names hold
the same attributes in another order would compare equal; no real PKI names its CAs so.
Standard library only: the config layer parses the configured names with it, and the
routing parses the certificate summaries' issuers (RFC 4514 strings) with it.
"""

from __future__ import annotations

# Attribute type spellings -> the one form compared (cryptography's RFC 4514 names, or the
# dotted OID where it prints one: emailAddress has no RFC 4514 short name).
_ALIASES = {
    "COMMONNAME": "CN",
    "ORGANIZATIONNAME": "O",
    "ORGANISATIONNAME": "O",
    "ORGANIZATIONALUNITNAME": "OU",
    "COUNTRYNAME": "C",
    "LOCALITYNAME": "L",
    "S": "ST",
    "STATEORPROVINCENAME": "ST",
    "STREETADDRESS": "STREET",
    "DOMAINCOMPONENT": "DC",
    "USERID": "UID",
    "E": "1.2.840.113549.1.9.1",
    "EMAIL": "1.2.840.113549.1.9.1",
    "EMAILADDRESS": "1.2.840.113549.1.9.1",
}

DistinguishedName = frozenset[tuple[str, str]]


def parse_dn(text: str) -> DistinguishedName:
    """``text`` as a set of (TYPE, value) pairs; a ValueError says what is wrong with it.

    Accepts RFC 4514 (``CN=a,O=b``, ``\\,`` escapes, ``+`` for multi-valued RDNs), OpenSSL's
    one-line form (``C = US, CN = a``) and its slash form (``/C=US/CN=a``)."""
    text = text.strip()
    if not text:
        raise ValueError("empty distinguished name")
    separators = "/" if text.startswith("/") else ",+"
    parts = _split(text[1:] if separators == "/" else text, separators)
    pairs: set[tuple[str, str]] = set()
    for part in parts:
        kind, sep, value = part.partition("=")
        kind = kind.strip()
        if not sep or not kind:
            raise ValueError(f"{part.strip()!r} is not TYPE=value (a distinguished name is like CN=Acme CA,O=Acme)")
        if not (kind.replace(".", "").isdigit() or kind.replace("-", "").isalnum()):
            raise ValueError(f"{kind!r} is not an attribute type (CN, O, OU, C, L, ST, DC, ... or a dotted OID)")
        pairs.add((attribute_type(kind), normalise_value(_unescape(value))))
    return frozenset(pairs)


def attribute_type(kind: str) -> str:
    upper = kind.strip().upper()
    return _ALIASES.get(upper, upper)


def normalise_value(value: str) -> str:
    """caseIgnoreMatch, roughly: case folded, leading/trailing and repeated spaces dropped."""
    return " ".join(value.split()).casefold()


def common_name_of(name: DistinguishedName) -> str | None:
    """The (normalised) CN of a parsed name, or None; the first in sort order if several."""
    cns = sorted(value for kind, value in name if kind == "CN")
    return cns[0] if cns else None


def _split(text: str, separators: str) -> list[str]:
    """Split at unescaped separators (a backslash escapes the next character)."""
    parts: list[str] = []
    current: list[str] = []
    escaped = False
    for char in text:
        if escaped:
            current.append("\\" + char)
            escaped = False
        elif char == "\\":
            escaped = True
        elif char in separators:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    if escaped:
        raise ValueError("a distinguished name cannot end with a lone backslash")
    parts.append("".join(current))
    if any(not part.strip() for part in parts):
        raise ValueError(f"{text!r} has an empty attribute (two separators in a row, or one at the end)")
    return parts


def _unescape(value: str) -> str:
    r"""RFC 4514 escapes: ``\,`` and kin stand for the character, ``\XX`` for a hex byte (UTF-8)."""
    if "\\" not in value:
        return value
    out = bytearray()
    i = 0
    while i < len(value):
        char = value[i]
        if char == "\\" and i + 1 < len(value):
            pair = value[i + 1 : i + 3]
            if len(pair) == 2 and all(c in "0123456789abcdefABCDEF" for c in pair):
                out.append(int(pair, 16))
                i += 3
                continue
            out += value[i + 1].encode()
            i += 2
            continue
        out += char.encode()
        i += 1
    return out.decode("utf-8", "replace")

"""Who a call is between: the URI and user part of a From/To/P-Asserted-Identity value, and
how an operator's number or URI fragment is compared with them.

Pure text handling. A header value may be a name-addr (``"Alice" <sip:+4930123@h>;tag=1``)
or an addr-spec (``sip:+4930123@h;tag=1``, where the parameters after the URI belong to the
header, RFC 3261 section 20.10); a telephone number may be a ``tel:`` URI or the user part of
a ``sip:`` URI, written with visual separators (``+49-30-123``, RFC 3966).
"""

from __future__ import annotations

import re

# RFC 3966 visual separators, and the characters an operator types around a number.
_PHONE_LIKE = re.compile(r"\+?[\d\-. ()]+")
_NON_DIGITS = re.compile(r"\D")
_IPV4 = re.compile(r"\d{1,3}(?:\.\d{1,3}){3}")


def uri_of(value: str) -> str:
    """The URI of a name-addr or addr-spec header value, without the header's parameters."""
    text = value.strip()
    start = text.find("<")
    if start >= 0:
        end = text.find(">", start)
        return text[start + 1:end if end >= 0 else len(text)].strip()
    # addr-spec: ";tag=..." and the like are header parameters, not the URI's.
    return text.split(";", 1)[0].strip()


def user_of(uri: str) -> str | None:
    """The user part of a ``sip:``/``sips:`` URI, or the number of a ``tel:`` URI; None if it has none."""
    scheme, sep, rest = uri.partition(":")
    if not sep:
        return None
    scheme = scheme.strip().lower()
    if scheme == "tel":
        return rest.split(";", 1)[0] or None
    if scheme not in ("sip", "sips"):
        return None
    user, at, _host = rest.rpartition("@")
    if not at:
        return None
    return user.split(";", 1)[0].split(":", 1)[0] or None  # ";" user params, ":" a password


def is_phone_like(text: str) -> bool:
    """An operator's query that is a number (digits with ``+`` and visual separators), not an IPv4 address."""
    text = text.strip()
    return bool(_PHONE_LIKE.fullmatch(text)) and any(ch.isdigit() for ch in text) and not _IPV4.fullmatch(text)


def party_matches(query: str, values: list[str]) -> bool:
    """Whether ``query`` names one of the parties ``values`` (header values or URIs).

    A number (digits, ``+`` and visual separators) is compared digit for digit with the user
    parts only, whatever separators either side wrote: ``+49 30 123`` finds
    ``<tel:+49-30-123>``, ``4930123`` finds ``sip:004930123@h``, and ``127`` does not find
    every ``sip:x@127.0.0.1``. Anything else (an IPv4 address too) matches as a case-insensitive substring of a
    whole value (``alice@example``, ``user=phone``).
    """
    needle = query.strip().lower()
    if not needle:
        return False
    if not is_phone_like(needle):
        return any(needle in value.lower() for value in values)
    digits = _NON_DIGITS.sub("", needle)
    for value in values:
        user = user_of(uri_of(value))
        if user is not None and digits in _NON_DIGITS.sub("", user):
            return True
    return False

"""SDES key extraction from SDP bodies: ``a=crypto`` attributes (RFC 4568).

Sources: RFC 4568 §9.1 (grammar: ``a=crypto:<tag> <crypto-suite> <key-params>
*(<session-param>)``, key-params ``inline:<key||salt base64>[|lifetime][|MKI:length]``
joined by ``;``) and §6.1 (suites and key/salt sizes); RFC 6188 §7 (AES_192_CM_* and
AES_256_CM_*, 24/32-octet keys, 14-octet salt); RFC 7714 §12 and §14.2 (AEAD_AES_128_GCM and
AEAD_AES_256_GCM, 12-octet salt); RFC 4566 §5.7 and §5.14 (``c=`` and ``m=``).

Theory of operation: the body is scanned line by line (CRLF or bare LF). A ``c=`` before the
first ``m=`` is the session default; one inside a media section overrides it for that
section only. Crypto attributes are collected per media section and turned into keys when
the section ends, so a ``c=`` placed after the ``a=crypto`` lines (invalid order, seen in
the wild) still applies. Keys are what an SRTP decryptor needs next to the addresses and
port that identify the stream.

Choices, all tolerant because siptap only observes and must never fail on a peer's body:
- Bytes are decoded as UTF-8 with replacement; everything we need is ASCII.
- A line that does not parse is skipped, never raised on; so is a key whose decoded length
  does not match its (known) suite. An unknown suite keeps all decoded octets as the key
  and an empty salt.
- Several ``inline:`` key params on one line (used with MKIs) each yield a key, in order,
  sharing tag, suite and session params.
- ``a=crypto`` outside any media section is skipped: RFC 4568 defines it at media level only.
- Base64 without padding is accepted (some implementations strip it).
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass

# suite -> (master key length, master salt length)
_SUITES: dict[str, tuple[int, int]] = {
    "AES_CM_128_HMAC_SHA1_80": (16, 14),
    "AES_CM_128_HMAC_SHA1_32": (16, 14),
    "F8_128_HMAC_SHA1_80": (16, 14),
    "AES_192_CM_HMAC_SHA1_80": (24, 14),
    "AES_192_CM_HMAC_SHA1_32": (24, 14),
    "AES_256_CM_HMAC_SHA1_80": (32, 14),
    "AES_256_CM_HMAC_SHA1_32": (32, 14),
    "AEAD_AES_128_GCM": (16, 12),
    "AEAD_AES_256_GCM": (32, 12),
}
# Vendor variants of the same ciphers (e.g. AES_CM_256_HMAC_SHA1_80, *_GCM_8): by prefix.
_PREFIXES: tuple[tuple[str, tuple[int, int]], ...] = (
    ("AES_CM_128_", (16, 14)),
    ("F8_128_", (16, 14)),
    ("AES_192_CM_", (24, 14)),
    ("AES_CM_192_", (24, 14)),
    ("AES_256_CM_", (32, 14)),
    ("AES_CM_256_", (32, 14)),
    ("AEAD_AES_128_GCM", (16, 12)),
    ("AEAD_AES_256_GCM", (32, 12)),
)

_CRYPTO = re.compile(r"^a=crypto:([0-9]{1,9})[ \t]+(\S+)[ \t]+(\S+)((?:[ \t]+\S+)*)[ \t]*$")
_B64 = re.compile(r"^[A-Za-z0-9+/]+={0,2}$")
_LIFETIME = re.compile(r"^(?:2\^)?[0-9]+$")
_MKI = re.compile(r"^[0-9]+:[0-9]+$")


def key_salt_lengths(suite: str) -> tuple[int, int] | None:
    """Master key and salt sizes of a suite, or None when we do not know it."""
    known = _SUITES.get(suite)
    if known is not None:
        return known
    for prefix, lengths in _PREFIXES:
        if suite.startswith(prefix):
            return lengths
    return None


@dataclass(frozen=True, slots=True)
class SdesKey:
    """One SRTP master key offered in SDP, with what identifies the media stream it protects.
    ``key_params_b64`` is the inline base64 exactly as written, for tools that want the SDP
    form back (e.g. an srtp-decrypt command line)."""

    tag: int
    suite: str
    key_params_b64: str
    master_key: bytes
    master_salt: bytes
    lifetime: str | None
    mki: str | None
    media: str
    port: int
    connection_address: str | None
    session_params: tuple[str, ...] = ()

    @property
    def master_key_hex(self) -> str:
        return self.master_key.hex()

    @property
    def master_salt_hex(self) -> str:
        return self.master_salt.hex()


def _b64decode(text: str) -> bytes | None:
    if not _B64.match(text):
        return None
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        return None


@dataclass(frozen=True, slots=True)
class _Crypto:
    tag: int
    suite: str
    key_params: str
    session_params: tuple[str, ...]


def _parse_crypto_line(line: str) -> _Crypto | None:
    match = _CRYPTO.match(line)
    if match is None:
        return None
    tag, suite, key_params, rest = match.groups()
    return _Crypto(int(tag), suite, key_params, tuple(rest.split()))


def _keys(crypto: _Crypto, media: str, port: int, address: str | None) -> list[SdesKey]:
    keys = []
    lengths = key_salt_lengths(crypto.suite)
    for param in crypto.key_params.split(";"):
        method, sep, info = param.partition(":")
        if not sep or method.lower() != "inline":
            continue
        key_salt, *extras = info.split("|")
        lifetime = mki = None
        bad = len(extras) > 2
        for extra in extras:
            if _MKI.match(extra) and mki is None:
                mki = extra
            elif _LIFETIME.match(extra) and lifetime is None and mki is None:
                lifetime = extra
            else:
                bad = True
        raw = _b64decode(key_salt)
        if bad or not raw:
            continue
        if lengths is None:
            master_key, master_salt = raw, b""
        elif len(raw) == sum(lengths):
            master_key, master_salt = raw[: lengths[0]], raw[lengths[0] :]
        else:
            continue
        keys.append(
            SdesKey(
                tag=crypto.tag,
                suite=crypto.suite,
                key_params_b64=key_salt,
                master_key=master_key,
                master_salt=master_salt,
                lifetime=lifetime,
                mki=mki,
                media=media,
                port=port,
                connection_address=address,
                session_params=crypto.session_params,
            )
        )
    return keys


def _connection_address(value: str) -> str | None:
    """``IN IP4 224.2.1.1/127/3`` -> ``224.2.1.1``; None if malformed."""
    parts = value.split()
    if len(parts) != 3 or parts[0] != "IN" or parts[1] not in ("IP4", "IP6"):
        return None
    return parts[2].split("/", 1)[0] or None


def _media(value: str) -> tuple[str, int] | None:
    """``audio 49170/2 RTP/SAVP 0`` -> ``("audio", 49170)``; None if malformed."""
    parts = value.split()
    if len(parts) < 3:
        return None
    port = parts[1].split("/", 1)[0]
    if not port.isascii() or not port.isdigit() or int(port) > 65535:
        return None
    return parts[0], int(port)


def parse_sdp_crypto(body: bytes) -> list[SdesKey]:
    """Every SDES key in an SDP body, in document order. Never raises."""
    text = body.decode("utf-8", "replace")
    session_address: str | None = None
    keys: list[SdesKey] = []
    # Current media section: (media, port) or None before the first m= / after a bad m=.
    section: tuple[str, int] | None = None
    in_media = False
    section_address: str | None = None
    pending: list[_Crypto] = []

    def flush() -> None:
        if section is not None:
            address = section_address if section_address is not None else session_address
            for crypto in pending:
                keys.extend(_keys(crypto, section[0], section[1], address))
        pending.clear()

    for raw_line in text.split("\n"):
        line = raw_line.rstrip("\r").strip()
        if len(line) < 2 or line[1] != "=":
            continue
        kind, value = line[0], line[2:]
        if kind == "m":
            flush()
            in_media = True
            section = _media(value)
            section_address = None
        elif kind == "c":
            address = _connection_address(value)
            if in_media:
                section_address = address
            else:
                session_address = address
        elif kind == "a" and in_media and line.startswith("a=crypto:"):
            crypto = _parse_crypto_line(line)
            if crypto is not None:
                pending.append(crypto)
    flush()
    return keys

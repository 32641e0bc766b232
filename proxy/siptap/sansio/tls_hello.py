"""Reads the client's first flight to say *why* a handshake failed and what the client offered.

OpenSSL reports "no shared cipher" or "unsupported protocol" but not what the client sent.
Interop troubleshooting needs exactly that (an E-SBC offering only ECDHE suites, or only
TLS 1.3, or plain SIP on the TLS port), so the TLS shell tees the bytes it feeds to OpenSSL
into this sniffer until a ClientHello is complete. Pure code, bounded: it stops buffering
after ``max_bytes`` and never raises on hostile input.

Theory of operation: bytes accumulate until the first TLS record header can be read; a
first byte other than 22 (handshake) means the peer is not speaking TLS, and the first line
is kept to say what it was. Handshake records are concatenated until the 4-byte handshake
header's length is satisfied, then the ClientHello body (RFC 5246 §7.4.1.2, RFC 8446
§4.1.2) is parsed.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

# IANA TLS cipher suite registry: the suites E-SBCs, SBCs and OpenSSL offer in practice.
CIPHER_SUITE_NAMES: dict[int, str] = {
    0x000A: "TLS_RSA_WITH_3DES_EDE_CBC_SHA",
    0x002F: "TLS_RSA_WITH_AES_128_CBC_SHA",
    0x0033: "TLS_DHE_RSA_WITH_AES_128_CBC_SHA",
    0x0035: "TLS_RSA_WITH_AES_256_CBC_SHA",
    0x0039: "TLS_DHE_RSA_WITH_AES_256_CBC_SHA",
    0x003C: "TLS_RSA_WITH_AES_128_CBC_SHA256",
    0x003D: "TLS_RSA_WITH_AES_256_CBC_SHA256",
    0x0041: "TLS_RSA_WITH_CAMELLIA_128_CBC_SHA",
    0x0067: "TLS_DHE_RSA_WITH_AES_128_CBC_SHA256",
    0x006B: "TLS_DHE_RSA_WITH_AES_256_CBC_SHA256",
    0x0084: "TLS_RSA_WITH_CAMELLIA_256_CBC_SHA",
    0x009C: "TLS_RSA_WITH_AES_128_GCM_SHA256",
    0x009D: "TLS_RSA_WITH_AES_256_GCM_SHA384",
    0x009E: "TLS_DHE_RSA_WITH_AES_128_GCM_SHA256",
    0x009F: "TLS_DHE_RSA_WITH_AES_256_GCM_SHA384",
    0x00FF: "TLS_EMPTY_RENEGOTIATION_INFO_SCSV",
    0x1301: "TLS_AES_128_GCM_SHA256",
    0x1302: "TLS_AES_256_GCM_SHA384",
    0x1303: "TLS_CHACHA20_POLY1305_SHA256",
    0x1304: "TLS_AES_128_CCM_SHA256",
    0x1305: "TLS_AES_128_CCM_8_SHA256",
    0x5600: "TLS_FALLBACK_SCSV",
    0xC009: "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA",
    0xC00A: "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA",
    0xC013: "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA",
    0xC014: "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA",
    0xC023: "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256",
    0xC024: "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA384",
    0xC027: "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256",
    0xC028: "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA384",
    0xC02B: "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
    0xC02C: "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
    0xC02F: "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
    0xC030: "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
    0xCCA8: "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
    0xCCA9: "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
    0xCCAA: "TLS_DHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
}

# The six suites siptap forces on the customer leg (RSA key transport, AES).
RSA_KEX_AES_SUITES = frozenset({0x002F, 0x0035, 0x003C, 0x003D, 0x009C, 0x009D})
SIGNALLING_SUITES = frozenset({0x00FF, 0x5600})

TLS12 = 0x0303
TLS13 = 0x0304
VERSION_NAMES = {0x0300: "SSLv3", 0x0301: "TLSv1", 0x0302: "TLSv1.1", 0x0303: "TLSv1.2", 0x0304: "TLSv1.3"}

EXT_SERVER_NAME = 0x0000
EXT_ENCRYPT_THEN_MAC = 0x0016
EXT_EXTENDED_MASTER_SECRET = 0x0017
EXT_SESSION_TICKET = 0x0023
EXT_SUPPORTED_VERSIONS = 0x002B


def suite_name(suite: int) -> str:
    return CIPHER_SUITE_NAMES.get(suite, f"0x{suite:04X}")


def is_tls13_suite(suite: int) -> bool:
    return 0x1301 <= suite <= 0x1305


def is_forward_secret_suite(suite: int) -> bool:
    """(EC)DHE suites: an RSA server key cannot decrypt them. Judged by IANA name."""
    name = CIPHER_SUITE_NAMES.get(suite, "")
    return "_ECDHE_" in name or "_DHE_" in name


@dataclass(frozen=True, slots=True)
class ClientHello:
    legacy_version: int
    versions: tuple[int, ...]  # supported_versions if present, else (legacy_version,)
    cipher_suites: tuple[int, ...]
    extensions: tuple[int, ...]
    sni: str | None
    session_id_length: int

    @property
    def offers_tls12(self) -> bool:
        return TLS12 in self.versions

    @property
    def tls13_only(self) -> bool:
        return TLS13 in self.versions and TLS12 not in self.versions

    @property
    def real_suites(self) -> tuple[int, ...]:
        """Suites without the signalling values (SCSVs) and GREASE."""
        return tuple(s for s in self.cipher_suites if s not in SIGNALLING_SUITES and (s & 0x0F0F) != 0x0A0A)

    @property
    def rsa_kex_suites(self) -> tuple[int, ...]:
        return tuple(s for s in self.cipher_suites if s in RSA_KEX_AES_SUITES)

    @property
    def only_forward_secret(self) -> bool:
        """True when every TLS 1.2 suite offered is (EC)DHE: RSA key exchange is impossible."""
        tls12 = [s for s in self.real_suites if not is_tls13_suite(s)]
        return bool(tls12) and all(is_forward_secret_suite(s) for s in tls12)

    @property
    def offers_ems(self) -> bool:
        return EXT_EXTENDED_MASTER_SECRET in self.extensions

    def summary(self) -> dict[str, object]:
        """A JSON-friendly description for logs."""
        return {
            "versions": [VERSION_NAMES.get(v, f"0x{v:04X}") for v in self.versions],
            "cipher_suites": [suite_name(s) for s in self.cipher_suites],
            "sni": self.sni,
            "extended_master_secret": self.offers_ems,
            "encrypt_then_mac": EXT_ENCRYPT_THEN_MAC in self.extensions,
            "session_ticket": EXT_SESSION_TICKET in self.extensions,
        }


@dataclass(frozen=True, slots=True)
class NotTls:
    """The peer's first bytes are not a TLS handshake record; ``first_line`` says what they were."""

    first_line: bytes

    @property
    def looks_like(self) -> str:
        line = self.first_line
        if line.endswith(b"SIP/2.0") or line.startswith(b"SIP/2.0"):
            return "plain SIP (no TLS) sent to the TLS port"
        if line.split(b" ", 1)[0] in {b"GET", b"POST", b"HEAD", b"PUT", b"CONNECT", b"OPTIONS"} and b"HTTP/" in line:
            return "an HTTP request"
        if line[:1] in (b"\x80",) or line[:2] == b"\x16\x02":
            return "an SSLv2-format hello"
        return "bytes that are not TLS"


class ClientHelloSniffer:
    """Accumulates the client's first bytes until a ClientHello (or a verdict) is available."""

    def __init__(self, max_bytes: int = 65536) -> None:
        self._buf = bytearray()
        self._max = max_bytes
        self.result: ClientHello | NotTls | None = None
        self.done = False

    def feed(self, data: bytes) -> None:
        if self.done or not data:
            return
        self._buf += data[: self._max - len(self._buf)]
        try:
            self.result = self._parse()
        except _Malformed:
            self.result = None
            self.done = True
            return
        if self.result is not None or len(self._buf) >= self._max:
            self.done = True
            self._buf = bytearray()

    def _parse(self) -> ClientHello | NotTls | None:
        buf = bytes(self._buf)
        if not buf:
            return None
        if buf[0] != 22:
            end = buf.find(b"\n")
            if end < 0 and len(buf) < 200:
                return None if len(buf) < 8 else NotTls(buf[:200].rstrip(b"\r\n"))
            return NotTls(buf[: end if end >= 0 else 200].rstrip(b"\r"))
        # Concatenate handshake record fragments.
        handshake = bytearray()
        pos = 0
        while pos + 5 <= len(buf):
            rtype, length = buf[pos], int.from_bytes(buf[pos + 3 : pos + 5], "big")
            if rtype != 22:
                raise _Malformed
            if pos + 5 + length > len(buf):
                break
            handshake += buf[pos + 5 : pos + 5 + length]
            pos += 5 + length
            if len(handshake) >= 4:
                need = int.from_bytes(handshake[1:4], "big")
                if len(handshake) >= 4 + need:
                    if handshake[0] != 1:
                        raise _Malformed
                    return _parse_client_hello(bytes(handshake[4 : 4 + need]))
        return None


class _Malformed(Exception):
    pass


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise _Malformed
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def uint(self, n: int) -> int:
        return int.from_bytes(self.take(n), "big")

    def vector(self, length_bytes: int) -> bytes:
        return self.take(self.uint(length_bytes))

    @property
    def remaining(self) -> int:
        return len(self.data) - self.pos


def _parse_client_hello(body: bytes) -> ClientHello:
    r = _Reader(body)
    legacy_version = r.uint(2)
    r.take(32)  # random
    session_id = r.vector(1)
    suites_raw = r.vector(2)
    suites = struct.unpack(f">{len(suites_raw) // 2}H", suites_raw[: len(suites_raw) & ~1])  # an odd byte is ignored
    r.vector(1)  # compression methods
    extensions: list[int] = []
    versions: tuple[int, ...] = (legacy_version,)
    sni: str | None = None
    if r.remaining >= 2:
        ext = _Reader(r.vector(2))
        while ext.remaining >= 4:
            ext_type = ext.uint(2)
            ext_data = ext.vector(2)
            extensions.append(ext_type)
            if ext_type == EXT_SUPPORTED_VERSIONS and ext_data:
                raw = ext_data[1 : 1 + ext_data[0]]
                listed = tuple(int.from_bytes(raw[i : i + 2], "big") for i in range(0, len(raw) - 1, 2))
                versions = tuple(v for v in listed if (v & 0x0F0F) != 0x0A0A) or versions
            elif ext_type == EXT_SERVER_NAME:
                sni = _parse_sni(ext_data)
    return ClientHello(
        legacy_version=legacy_version,
        versions=versions,
        cipher_suites=suites,
        extensions=tuple(extensions),
        sni=sni,
        session_id_length=len(session_id),
    )


def _parse_sni(data: bytes) -> str | None:
    r = _Reader(data)
    names = _Reader(r.vector(2))
    while names.remaining >= 3:
        name_type = names.uint(1)
        name = names.vector(2)
        if name_type == 0:
            return name.decode("ascii", "replace")
    return None

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

The other direction serves `siptap probe`: :func:`build_client_hello` writes a ClientHello
offering exactly the codes it is given (any IANA code, also those no local TLS library can
negotiate), and :class:`ServerHelloReader` reads what the server answered, a ServerHello
(its version, chosen suite and extensions) or an alert. Nothing past the ServerHello is
needed, so the probe never has to speak the cipher it detects.
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Sequence
from dataclasses import dataclass

# The registry lives in its own module; re-exported here for the TLS shell and the probe.
from siptap.sansio.tls_suites import CIPHER_SUITE_NAMES as CIPHER_SUITE_NAMES
from siptap.sansio.tls_suites import is_tls13_suite as is_tls13_suite
from siptap.sansio.tls_suites import suite_name as suite_name

# The six suites siptap forces on the customer leg (RSA key transport, AES).
RSA_KEX_AES_SUITES = frozenset({0x002F, 0x0035, 0x003C, 0x003D, 0x009C, 0x009D})
SIGNALLING_SUITES = frozenset({0x00FF, 0x5600})

TLS12 = 0x0303
TLS13 = 0x0304
VERSION_NAMES = {0x0300: "SSLv3", 0x0301: "TLSv1", 0x0302: "TLSv1.1", 0x0303: "TLSv1.2", 0x0304: "TLSv1.3"}

EXT_SERVER_NAME = 0x0000
EXT_STATUS_REQUEST = 0x0005
EXT_SUPPORTED_GROUPS = 0x000A
EXT_EC_POINT_FORMATS = 0x000B
EXT_SIGNATURE_ALGORITHMS = 0x000D
EXT_ENCRYPT_THEN_MAC = 0x0016
EXT_EXTENDED_MASTER_SECRET = 0x0017
EXT_SESSION_TICKET = 0x0023
EXT_SUPPORTED_VERSIONS = 0x002B
EXT_KEY_SHARE = 0x0033
EXT_RENEGOTIATION_INFO = 0xFF01


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

    def members(self) -> dict[str, object]:
        """The hello as JSON members, its numbers as they are (what the relay hands the mirror:
        naming the suites is the mirror's work, :meth:`summary`); :meth:`from_members` inverts it."""
        return {"legacy_version": self.legacy_version, "versions": list(self.versions),
                "cipher_suites": list(self.cipher_suites), "extensions": list(self.extensions),
                "sni": self.sni, "session_id_length": self.session_id_length}

    @classmethod
    def from_members(cls, data: object) -> ClientHello:
        """The inverse of :meth:`members`; ValueError names what is missing or malformed."""
        if not isinstance(data, dict):
            raise ValueError("client_hello must be an object")

        def numbers(name: str) -> tuple[int, ...]:
            value = data.get(name)
            if not isinstance(value, list) or not all(type(n) is int and 0 <= n <= 0xFFFF for n in value):
                raise ValueError(f"client_hello: {name} must be a list of 16-bit numbers")
            return tuple(value)

        legacy, sni, session_id = data.get("legacy_version"), data.get("sni"), data.get("session_id_length")
        if type(legacy) is not int or type(session_id) is not int:
            raise ValueError("client_hello: legacy_version and session_id_length must be numbers")
        if sni is not None and not isinstance(sni, str):
            raise ValueError("client_hello: sni must be a string or null")
        return cls(legacy, numbers("versions"), numbers("cipher_suites"), numbers("extensions"), sni, session_id)

    def summary(self) -> dict[str, object]:
        """A JSON-friendly description for logs (a new dict each call; see :func:`described`)."""
        return {
            "versions": [VERSION_NAMES.get(v, f"0x{v:04X}") for v in self.versions],
            "cipher_suites": [suite_name(s) for s in self.cipher_suites],
            "sni": self.sni,
            "extended_master_secret": self.offers_ems,
            "encrypt_then_mac": EXT_ENCRYPT_THEN_MAC in self.extensions,
            "session_ticket": EXT_SESSION_TICKET in self.extensions,
        }


@functools.lru_cache(maxsize=64)
def described(hello: ClientHello) -> dict[str, object]:
    """``hello.summary()``, made once per distinct hello: an E-SBC sends the same offer on
    every connection (the random is not part of a ClientHello here), and naming ~30 suites
    costs ~7 µs. The dict is shared between callers: read it, never change it."""
    return hello.summary()


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


# -- the probe's side: a hand-built ClientHello, and the server's answer -------------------------

# Named groups offered (RFC 8446 4.2.7, RFC 7919): x25519 first, since TLS 1.3's key share is
# an x25519 value; the others let a server pick its own group for (EC)DHE in TLS 1.2.
GROUP_X25519 = 0x001D
_GROUPS = (GROUP_X25519, 0x0017, 0x0018, 0x0019, 0x001E, 0x0100, 0x0101, 0x0102, 0x0103, 0x0104)
# Signature schemes offered (RFC 8446 4.2.3): every RSA, ECDSA, EdDSA and DSA scheme a server
# might hold a key for, SHA-1 included, so that no suite is refused for want of a signature.
_SIGNATURE_SCHEMES = (
    0x0403, 0x0503, 0x0603, 0x0807, 0x0808, 0x0804, 0x0805, 0x0806, 0x0809, 0x080A, 0x080B,
    0x0401, 0x0501, 0x0601, 0x0303, 0x0301, 0x0302, 0x0203, 0x0201, 0x0202, 0x0402, 0x0502, 0x0602,
)
# ServerHello.random of a HelloRetryRequest (RFC 8446 4.1.3): still a choice of suite.
HELLO_RETRY_RANDOM = bytes.fromhex("CF21AD74E59A6111BE1D8C021E65B891C2A211167ABB8C5E079E09E2C8A8339C")

ALERT_NAMES = {
    0: "close_notify", 10: "unexpected_message", 20: "bad_record_mac", 22: "record_overflow",
    40: "handshake_failure", 42: "bad_certificate", 43: "unsupported_certificate", 47: "illegal_parameter",
    48: "unknown_ca", 50: "decode_error", 51: "decrypt_error", 70: "protocol_version",
    71: "insufficient_security", 80: "internal_error", 86: "inappropriate_fallback", 90: "user_canceled",
    109: "missing_extension", 110: "unsupported_extension", 112: "unrecognized_name",
    116: "certificate_required", 120: "no_application_protocol",
}


def _vec(length_bytes: int, data: bytes) -> bytes:
    return len(data).to_bytes(length_bytes, "big") + data


def _ext(ext_type: int, data: bytes) -> bytes:
    return ext_type.to_bytes(2, "big") + _vec(2, data)


def _u16s(values: Sequence[int]) -> bytes:
    return b"".join(v.to_bytes(2, "big") for v in values)


def build_client_hello(version: int, suites: Sequence[int], *, random: bytes, server_name: str | None = None,
                       key_share: bytes | None = None, session_id: bytes = b"") -> bytes:
    """One handshake record holding a ClientHello that offers ``suites`` (in that order) at
    ``version`` (0x0301..0x0304), and nothing else to choose from.

    Up to TLS 1.2 the version is the legacy ``client_version``; for TLS 1.3 it travels in
    supported_versions (alone) and ``key_share`` must be a 32-byte x25519 public value: a
    server that prefers another group answers with a HelloRetryRequest, which names its
    suite too. Every hello asks for what the probe reports: extended master secret,
    encrypt-then-MAC, secure renegotiation (renegotiation_info, TLS 1.2 and older), a session
    ticket and OCSP stapling; a server's ServerHello echoes those it does. ``random`` (32
    bytes) and ``session_id`` come from the caller: this module does no I/O, randomness
    included. ``server_name`` is sent as SNI as given (the caller leaves IP literals out).
    """
    if len(random) != 32:
        raise ValueError("random must be 32 bytes")
    tls13 = version >= TLS13
    extensions = b""
    if server_name:
        host = server_name.encode("idna")
        extensions += _ext(EXT_SERVER_NAME, _vec(2, b"\x00" + _vec(2, host)))
    extensions += _ext(EXT_SUPPORTED_GROUPS, _vec(2, _u16s(_GROUPS)))
    extensions += _ext(EXT_EC_POINT_FORMATS, _vec(1, b"\x00"))  # uncompressed
    extensions += _ext(EXT_SIGNATURE_ALGORITHMS, _vec(2, _u16s(_SIGNATURE_SCHEMES)))
    extensions += _ext(EXT_STATUS_REQUEST, b"\x01" + _vec(2, b"") + _vec(2, b""))  # ocsp, no responder ids
    extensions += _ext(EXT_SESSION_TICKET, b"")
    extensions += _ext(EXT_ENCRYPT_THEN_MAC, b"")
    extensions += _ext(EXT_EXTENDED_MASTER_SECRET, b"")
    if tls13:
        if key_share is None or len(key_share) != 32:
            raise ValueError("a TLS 1.3 ClientHello needs a 32-byte x25519 key_share")
        extensions += _ext(EXT_SUPPORTED_VERSIONS, _vec(1, _u16s([version])))
        extensions += _ext(EXT_KEY_SHARE, _vec(2, _u16s([GROUP_X25519]) + _vec(2, key_share)))
        extensions += _ext(0x002D, _vec(1, b"\x01"))  # psk_key_exchange_modes: psk_dhe_ke
    else:
        extensions += _ext(EXT_RENEGOTIATION_INFO, _vec(1, b""))
    body = (
        min(version, TLS12).to_bytes(2, "big") + random + _vec(1, session_id) + _vec(2, _u16s(suites))
        + _vec(1, b"\x00") + _vec(2, extensions)
    )
    handshake = b"\x01" + _vec(3, body)
    # Record version: TLS 1.0 for TLS 1.0 and 1.3 offers (RFC 8446 5.1: maximal compatibility),
    # else the offered version, so a server that checks it refuses a version at once.
    record_version = 0x0301 if tls13 else version
    return b"\x16" + record_version.to_bytes(2, "big") + _vec(2, handshake)


@dataclass(frozen=True, slots=True)
class ServerHello:
    version: int  # negotiated: supported_versions if the server sent it, else the legacy version
    cipher_suite: int
    extensions: tuple[int, ...]
    session_id: bytes
    hello_retry: bool  # a TLS 1.3 HelloRetryRequest: it names the suite all the same

    @property
    def version_name(self) -> str:
        return VERSION_NAMES.get(self.version, f"0x{self.version:04X}")

    def has(self, extension: int) -> bool:
        return extension in self.extensions


@dataclass(frozen=True, slots=True)
class Alert:
    level: int
    description: int

    @property
    def name(self) -> str:
        return ALERT_NAMES.get(self.description, f"alert {self.description}")


class ServerHelloReader:
    """Accumulates the server's first bytes until its ServerHello or an alert can be read.

    ``result`` is then a :class:`ServerHello`, an :class:`Alert`, or :class:`NotTls` (the
    answer is not a TLS record at all); it stays None while more bytes are needed, and for
    malformed input once ``done``. Bounded like the sniffer: at most ``max_bytes`` are kept.
    """

    def __init__(self, max_bytes: int = 65536) -> None:
        self._buf = bytearray()
        self._max = max_bytes
        self.result: ServerHello | Alert | NotTls | None = None
        self.done = False

    def feed(self, data: bytes) -> None:
        if self.done or not data:
            return
        self._buf += data[: self._max - len(self._buf)]
        try:
            self.result = self._parse(bytes(self._buf))
        except _Malformed:
            self.result = None
            self.done = True
            return
        if self.result is not None or len(self._buf) >= self._max:
            self.done = True
            self._buf = bytearray()

    @staticmethod
    def _parse(buf: bytes) -> ServerHello | Alert | NotTls | None:
        if buf and buf[0] not in (21, 22):
            return NotTls(buf[:200].split(b"\n", 1)[0].rstrip(b"\r"))
        handshake = bytearray()
        pos = 0
        while pos + 5 <= len(buf):
            rtype, length = buf[pos], int.from_bytes(buf[pos + 3 : pos + 5], "big")
            if pos + 5 + length > len(buf):
                return None
            fragment = buf[pos + 5 : pos + 5 + length]
            pos += 5 + length
            if rtype == 21:
                if len(fragment) < 2:
                    raise _Malformed
                return Alert(fragment[0], fragment[1])
            if rtype != 22:
                raise _Malformed
            handshake += fragment
            if len(handshake) >= 4:
                need = int.from_bytes(handshake[1:4], "big")
                if len(handshake) >= 4 + need:
                    if handshake[0] != 2:
                        raise _Malformed
                    return _parse_server_hello(bytes(handshake[4 : 4 + need]))
        return None


def _parse_server_hello(body: bytes) -> ServerHello:
    r = _Reader(body)
    legacy_version = r.uint(2)
    random = r.take(32)
    session_id = r.vector(1)
    suite = r.uint(2)
    r.take(1)  # compression method
    extensions: list[int] = []
    version = legacy_version
    if r.remaining >= 2:
        ext = _Reader(r.vector(2))
        while ext.remaining >= 4:
            ext_type = ext.uint(2)
            ext_data = ext.vector(2)
            extensions.append(ext_type)
            if ext_type == EXT_SUPPORTED_VERSIONS and len(ext_data) == 2:
                version = int.from_bytes(ext_data, "big")
    return ServerHello(version=version, cipher_suite=suite, extensions=tuple(extensions),
                       session_id=session_id, hello_retry=random == HELLO_RETRY_RANDOM)

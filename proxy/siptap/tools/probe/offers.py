"""What the probe offers, one version or one suite at a time, and the client context that offers it.

Before an attempt goes to the network its ClientHello is built offline from the very same
context and parsed (:func:`untestable`): when this OpenSSL build cannot offer a version or
suite at all (a security level, a disabled algorithm), the verdict is "not testable by this
build", never "rejected". The context never aborts on a bad chain: its verify callback
(:class:`Recorder`) records every error and continues, so a broken chain is reported in full.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from OpenSSL import SSL, crypto

from siptap.sansio.tls_hello import ClientHello, ClientHelloSniffer

# (name, pyOpenSSL constant, wire value)
VERSIONS: tuple[tuple[str, int, int], ...] = (
    ("TLSv1", SSL.TLS1_VERSION, 0x0301),
    ("TLSv1.1", SSL.TLS1_1_VERSION, 0x0302),
    ("TLSv1.2", SSL.TLS1_2_VERSION, 0x0303),
    ("TLSv1.3", SSL.TLS1_3_VERSION, 0x0304),
)

# TLS 1.2 suites tried one by one: (IANA code, OpenSSL name). RSA key transport first.
TLS12_SUITES: tuple[tuple[int, str], ...] = (
    (0x009D, "AES256-GCM-SHA384"),
    (0x009C, "AES128-GCM-SHA256"),
    (0x003D, "AES256-SHA256"),
    (0x003C, "AES128-SHA256"),
    (0x0035, "AES256-SHA"),
    (0x002F, "AES128-SHA"),
    (0x000A, "DES-CBC3-SHA"),
    (0xC030, "ECDHE-RSA-AES256-GCM-SHA384"),
    (0xC02F, "ECDHE-RSA-AES128-GCM-SHA256"),
    (0xCCA8, "ECDHE-RSA-CHACHA20-POLY1305"),
    (0xC028, "ECDHE-RSA-AES256-SHA384"),
    (0xC027, "ECDHE-RSA-AES128-SHA256"),
    (0xC014, "ECDHE-RSA-AES256-SHA"),
    (0xC013, "ECDHE-RSA-AES128-SHA"),
    (0xC02C, "ECDHE-ECDSA-AES256-GCM-SHA384"),
    (0xC02B, "ECDHE-ECDSA-AES128-GCM-SHA256"),
    (0xCCA9, "ECDHE-ECDSA-CHACHA20-POLY1305"),
    (0xC024, "ECDHE-ECDSA-AES256-SHA384"),
    (0xC023, "ECDHE-ECDSA-AES128-SHA256"),
    (0xC00A, "ECDHE-ECDSA-AES256-SHA"),
    (0xC009, "ECDHE-ECDSA-AES128-SHA"),
    (0x009F, "DHE-RSA-AES256-GCM-SHA384"),
    (0x009E, "DHE-RSA-AES128-GCM-SHA256"),
    (0xCCAA, "DHE-RSA-CHACHA20-POLY1305"),
    (0x006B, "DHE-RSA-AES256-SHA256"),
    (0x0067, "DHE-RSA-AES128-SHA256"),
    (0x0039, "DHE-RSA-AES256-SHA"),
    (0x0033, "DHE-RSA-AES128-SHA"),
)

TLS13_SUITES: tuple[tuple[int, str], ...] = (
    (0x1302, "TLS_AES_256_GCM_SHA384"),
    (0x1301, "TLS_AES_128_GCM_SHA256"),
    (0x1303, "TLS_CHACHA20_POLY1305_SHA256"),
    (0x1304, "TLS_AES_128_CCM_SHA256"),
    (0x1305, "TLS_AES_128_CCM_8_SHA256"),
)
_ALL_TLS13 = ":".join(name for _, name in TLS13_SUITES).encode()
# Security level 0: a scanner must be able to offer what old peers speak (TLS 1.0/1.1 need it).
_ALL_TLS12 = b"ALL:@SECLEVEL=0"


@dataclass(frozen=True, slots=True)
class ClientIdentity:
    chain: tuple[x509.Certificate, ...]
    key: PrivateKeyTypes


@dataclass(frozen=True, slots=True)
class Offer:
    min_version: int
    max_version: int
    ciphers: bytes = _ALL_TLS12
    tls13: bytes = _ALL_TLS13


def _verify_text(errnum: int) -> str:
    try:
        from OpenSSL._util import ffi, lib

        return ffi.string(lib.X509_verify_cert_error_string(errnum)).decode()
    except (ImportError, AttributeError):
        return f"X509 verify error {errnum}"


class Recorder:
    """The callbacks of one attempt's context: handshake states and verification errors."""

    def __init__(self) -> None:
        self.states: list[str] = []
        self.verify_errors: list[tuple[int, int, str, str]] = []

    def info(self, conn: SSL.Connection, where: int, ret: int) -> None:
        state = conn.get_state_string().decode("ascii", "replace")
        if not self.states or self.states[-1] != state:
            self.states.append(state)

    def verify(self, conn: SSL.Connection, cert: crypto.X509, errnum: int, depth: int, ok: int) -> bool:
        if not ok:
            try:
                subject = cert.to_cryptography().subject.rfc4514_string()
            except Exception:
                subject = "?"
            self.verify_errors.append((errnum, depth, subject, _verify_text(errnum)))
        return True  # a scanner reports, it never aborts

    def saw(self, fragment: str) -> bool:
        return any(fragment in state for state in self.states)


def client_context(offer: Offer, identity: ClientIdentity | None, ca: Path | None,
                   recorder: Recorder | None) -> SSL.Context:
    ctx = SSL.Context(SSL.TLS_METHOD)
    ctx.set_min_proto_version(offer.min_version)
    ctx.set_max_proto_version(offer.max_version)
    ctx.set_cipher_list(offer.ciphers)
    ctx.set_tls13_ciphersuites(offer.tls13)
    ctx.set_options(SSL.OP_NO_COMPRESSION | SSL.OP_NO_RENEGOTIATION | SSL.OP_NO_TICKET)
    if identity is not None:
        ctx.use_certificate(identity.chain[0])
        for extra in identity.chain[1:]:
            ctx.add_extra_chain_cert(extra)
        ctx.use_privatekey(identity.key)  # type: ignore[arg-type]  # pyOpenSSL types only signature keys; a certificate's matching key is one
    if recorder is not None:
        ctx.set_info_callback(recorder.info)
        if ca is not None:
            ctx.load_verify_locations(str(ca))
        ctx.set_verify(SSL.VERIFY_PEER, recorder.verify)
    else:
        ctx.set_verify(SSL.VERIFY_NONE)
    return ctx


def offline_hello(offer: Offer, server_name: str) -> ClientHello | str:
    """Build the ClientHello this offer produces, without a network: what would we really send?"""
    try:
        conn = SSL.Connection(client_context(offer, None, None, None), None)
    except SSL.Error as exc:
        return ssl_text(exc)
    conn.set_connect_state()
    if not _is_ip(server_name):
        conn.set_tlsext_host_name(server_name.encode("idna"))
    try:
        conn.do_handshake()
    except SSL.WantReadError:
        pass
    except SSL.Error as exc:
        return ssl_text(exc)
    sniffer = ClientHelloSniffer()
    try:
        sniffer.feed(conn.bio_read(65536))
    except SSL.Error as exc:
        return ssl_text(exc)
    if isinstance(sniffer.result, ClientHello):
        return sniffer.result
    return "this build produced no parsable ClientHello"


def untestable(offer: Offer, server_name: str, *, version: int | None = None, suite: int | None = None) -> str | None:
    hello = offline_hello(offer, server_name)
    if isinstance(hello, str):
        return f"this OpenSSL cannot offer it: {hello}"
    if version is not None and version not in hello.versions:
        return "this OpenSSL's ClientHello does not offer it"
    if suite is not None and suite not in hello.cipher_suites:
        return "this OpenSSL's ClientHello does not offer it"
    return None


def ssl_text(exc: BaseException) -> str:
    parts: list[str] = []
    if exc.args and isinstance(exc.args[0], list):
        parts = [str(item[-1]) for item in exc.args[0] if isinstance(item, tuple) and item]
    return "; ".join(parts) or str(exc) or type(exc).__name__


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name.strip("[]"))
    except ValueError:
        return False
    return True

"""What the probe's real handshakes offer, and the OpenSSL client context that offers it.

The real handshakes (the widest offer, the client-certificate checks, resumption) go through
OpenSSL; the suite scan does not (see :mod:`.suites`), so OpenSSL's limits no longer decide
what the probe can see. The context never aborts on a bad chain: its verify callback
(:class:`Recorder`) records every error and continues, so a broken chain is reported in full.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from OpenSSL import SSL, crypto

# TLS 1.3 suites our handshakes offer: all five of RFC 8446 (CCM ones are off in OpenSSL by default).
_ALL_TLS13 = b"TLS_AES_256_GCM_SHA384:TLS_AES_128_GCM_SHA256:TLS_CHACHA20_POLY1305_SHA256:TLS_AES_128_CCM_SHA256:TLS_AES_128_CCM_8_SHA256"
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
    tickets: bool = False  # offer session tickets (the resumption check); else OP_NO_TICKET


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
        # The stapled OCSP response: None until OpenSSL called back (only when the connection
        # asked for one), then the DER bytes, b"" when the server stapled nothing.
        self.ocsp: bytes | None = None

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

    def ocsp_status(self, conn: SSL.Connection, data: bytes, _: object) -> bool:
        self.ocsp = bytes(data)
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
    ctx.set_options(SSL.OP_NO_COMPRESSION | SSL.OP_NO_RENEGOTIATION | (0 if offer.tickets else SSL.OP_NO_TICKET))
    if identity is not None:
        ctx.use_certificate(identity.chain[0])
        for extra in identity.chain[1:]:
            ctx.add_extra_chain_cert(extra)
        ctx.use_privatekey(identity.key)  # type: ignore[arg-type]  # pyOpenSSL types only signature keys; a certificate's matching key is one
    if recorder is not None:
        ctx.set_info_callback(recorder.info)
        ctx.set_ocsp_client_callback(recorder.ocsp_status)
        if ca is not None:
            ctx.load_verify_locations(str(ca))
        ctx.set_verify(SSL.VERIFY_PEER, recorder.verify)
    else:
        ctx.set_verify(SSL.VERIFY_NONE)
    return ctx


@functools.cache
def openssl_name(code: int) -> str | None:
    """OpenSSL's name for an IANA suite code, None when this build does not know the suite (then it
    can neither offer nor negotiate it: only the hand-built hellos of :mod:`.suites` see it)."""
    from OpenSSL._util import ffi, lib

    conn = SSL.Connection(SSL.Context(SSL.TLS_METHOD), None)
    cipher = lib.SSL_CIPHER_find(conn._ssl, code.to_bytes(2, "big"))
    if cipher == ffi.NULL:
        return None
    return str(ffi.string(lib.SSL_CIPHER_get_name(cipher)).decode())


def ssl_text(exc: BaseException) -> str:
    parts: list[str] = []
    if exc.args and isinstance(exc.args[0], list):
        parts = [str(item[-1]) for item in exc.args[0] if isinstance(item, tuple) and item]
    return "; ".join(parts) or str(exc) or type(exc).__name__

"""Collecting the handshake record from a live connection, and classifying failures.

The record itself (:mod:`siptap.sansio.handshake`: failure reasons, the raw handshake, its
facts) is plain data the relay hands over and the mirror summarises and renders without
touching pyOpenSSL; this module is the OpenSSL-bound side that produces it, raw: the peer's
chain as DER, read straight off OpenSSL's stack, no certificate parsed on the relay's
handshake path (issue 16 item 6). A
:class:`HandshakeObserver` rides on each ``SSL.Connection`` (its app data) so that the
context's callbacks can record what OpenSSL's exception alone would lose: the key-log lines,
the first certificate-verification failure (the exception only says "certificate verify
failed") and the client's ClientHello.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from OpenSSL import SSL, crypto

try:
    from OpenSSL._util import ffi as _ffi
    from OpenSSL._util import lib as _lib
except ImportError:  # pragma: no cover - a pyOpenSSL without the private bindings
    _ffi = _lib = None

from siptap import certificates
from siptap.certificates import certificate_summary as certificate_summary  # re-exported: tools and tests
from siptap.errors import HandshakeFailed
from siptap.sansio.handshake import FailureReason, RawHandshake, key_exchange_of
from siptap.sansio.tls_hello import VERSION_NAMES, ClientHello, ClientHelloSniffer, NotTls, suite_name

# X509_V_ERR_* codes (openssl/x509_vfy.h) mapped to reasons.
_VERIFY_ERRORS: dict[int, FailureReason] = {
    2: FailureReason.UNKNOWN_CA,  # unable to get issuer certificate
    7: FailureReason.BAD_SIGNATURE,  # certificate signature failure
    9: FailureReason.CERTIFICATE_NOT_YET_VALID,
    10: FailureReason.CERTIFICATE_EXPIRED,
    18: FailureReason.UNKNOWN_CA,  # self-signed leaf
    19: FailureReason.UNKNOWN_CA,  # self-signed certificate in chain
    20: FailureReason.UNKNOWN_CA,  # unable to get local issuer certificate
    21: FailureReason.UNKNOWN_CA,  # unable to verify the first certificate
    22: FailureReason.CHAIN_TOO_LONG,
    23: FailureReason.CERTIFICATE_REVOKED,
    26: FailureReason.WRONG_KEY_USAGE,  # unsuitable certificate purpose
    32: FailureReason.WRONG_KEY_USAGE,  # key usage does not include certificate signing
    62: FailureReason.HOSTNAME_MISMATCH,
}
# CRL problems (CRL checking on): the configured CRL, not the peer, is at fault.
_VERIFY_ERRORS.update(dict.fromkeys((3, 5, 8, 11, 12, 15, 16, 33, 35, 44, 54), FailureReason.CRL_UNUSABLE))


class CertificateCache(certificates.CertificateCache):
    """:class:`siptap.certificates.CertificateCache` plus what the verify callback needs: the
    ``cryptography`` form of a pyOpenSSL certificate, parsed once per distinct DER."""

    def certificate_of(self, cert: crypto.X509) -> x509.Certificate:
        """The ``cryptography`` form of a pyOpenSSL certificate (what the verify callback
        gets), as ``cert.to_cryptography()`` would give, parsed once per distinct DER."""
        return self.certificate(crypto.dump_certificate(crypto.FILETYPE_ASN1, cert))


@dataclass(frozen=True, slots=True)
class ContextData:
    """What a context built by :mod:`siptap.tls.contexts` carries as its app data: its
    certificate cache, and its version limit in words (``version_limit``) for the failure
    detail that tells the operator what to change when a client offers only versions above
    it. A context cannot be changed once it has connections, so neither can this."""

    certificates: CertificateCache
    version_limit: str | None = None
    # The context's verify callback: a connection the SNI switches to this context takes it
    # along (OpenSSL keeps the first context's callback on the connection otherwise).
    verify: Callable[..., bool] | None = None
    # A client context that asks each server for its stapled OCSP response (status_request);
    # set by siptap.tls.ocsp_check.request_staples.
    request_ocsp: bool = False


def _der_of(x509_ptr: object) -> bytes:
    bio = _lib.BIO_new(_lib.BIO_s_mem())
    if bio == _ffi.NULL:  # pragma: no cover - out of memory
        raise MemoryError("BIO_new failed")
    try:
        if _lib.i2d_X509_bio(bio, x509_ptr) != 1:  # pragma: no cover
            raise SSL.Error("i2d_X509_bio failed")
        data = _ffi.new("char**")
        size = _lib.BIO_get_mem_data(bio, data)
        der: bytes = _ffi.buffer(data[0], size)[:]  # a copy, made before the BIO is freed
        return der
    finally:
        _lib.BIO_free(bio)


def _peer_chain_der(conn: SSL.Connection, server_side: bool) -> list[bytes] | None:
    """The DER of each certificate in the chain pyOpenSSL's ``get_verified_chain`` (server)
    or ``get_peer_cert_chain`` (client) returns, read from OpenSSL's stack without making a
    pyOpenSSL and a ``cryptography`` object per certificate; None without the bindings."""
    if _lib is None:
        return None
    try:
        ssl = conn._ssl
        stack = _lib.SSL_get0_verified_chain(ssl) if server_side else _lib.SSL_get_peer_cert_chain(ssl)
        if stack == _ffi.NULL:
            return []
        return [_der_of(_lib.sk_X509_value(stack, i)) for i in range(_lib.sk_X509_num(stack))]
    except AttributeError:  # pragma: no cover - private names moved
        return None


@dataclass(slots=True)
class HandshakeObserver:
    """Per-connection scratchpad the context callbacks write into (mutable by necessity)."""

    leg: str
    role: str
    expected_hostname: str | None = None
    keylog_lines: list[str] = field(default_factory=list)
    verify_error: tuple[int, int, str, str] | None = None  # (errnum, depth, subject, OpenSSL text)
    policy_failure: tuple[FailureReason, str] | None = None
    sniffer: ClientHelloSniffer | None = None
    version_limit: str | None = None  # the context's (ContextData.version_limit)
    ocsp_staple: bytes | None = None  # client side: the server's stapled OCSP response, if any

    def record_verify_error(self, errnum: int, depth: int, subject: str, text: str) -> None:
        if self.verify_error is None:
            self.verify_error = (errnum, depth, subject, text)

    @property
    def client_hello(self) -> ClientHello | None:
        result = self.sniffer.result if self.sniffer else None
        return result if isinstance(result, ClientHello) else None


def collect_handshake(conn: SSL.Connection, observer: HandshakeObserver) -> RawHandshake:
    """The record of a completed handshake, raw: the peer chain as DER (leaf first), nothing
    parsed or summarised; whoever needs summaries makes them (:meth:`RawHandshake.facts`)."""
    version = conn.get_protocol_version_name()
    cipher = conn.get_cipher_name() or ""
    try:
        group = conn.get_group_name()
    except (AttributeError, SSL.Error):
        group = None
    client_random = conn.client_random() or b""
    master = conn.master_key() if version != "TLSv1.3" else None
    server_side = observer.role == "server"
    ders = _peer_chain_der(conn, server_side)
    if ders is None:  # no private bindings: the public API, one object per certificate
        chain = (conn.get_verified_chain(as_cryptography=True) if server_side
                 else conn.get_peer_cert_chain(as_cryptography=True)) or []
        ders = [cert.public_bytes(Encoding.DER) for cert in chain]
    sni = conn.get_servername()
    return RawHandshake(
        leg=observer.leg,
        role=observer.role,
        version=version,
        cipher=cipher,
        key_exchange=key_exchange_of(version, cipher, group),
        extended_master_secret=_extended_master_secret(conn, version),
        session_reused=_session_reused(conn),
        sni=sni.decode("ascii", "replace") if sni is not None else observer.expected_hostname,
        client_random=client_random.hex(),
        master_secret=master.hex() if master else None,
        keylog_lines=tuple(observer.keylog_lines),
        peer_chain_der=tuple(ders),
        client_hello=observer.client_hello,
    )


def _extended_master_secret(conn: SSL.Connection, version: str) -> bool | None:
    """pyOpenSSL has no public accessor; SSL_get_extms_support is in cryptography's bindings."""
    if version == "TLSv1.3":
        return None
    if _lib is None:
        return None
    try:
        return bool(_lib.SSL_get_extms_support(conn._ssl))
    except AttributeError:
        return None


def _session_reused(conn: SSL.Connection) -> bool:
    if _lib is None:
        return False
    try:
        return bool(_lib.SSL_session_reused(conn._ssl))
    except AttributeError:
        return False


def _openssl_reasons(exc: BaseException) -> list[str]:
    """The reason strings of an SSL.Error (its args hold (lib, func, reason) tuples)."""
    reasons: list[str] = []
    if exc.args and isinstance(exc.args[0], list):
        for item in exc.args[0]:
            if isinstance(item, tuple) and item:
                reasons.append(str(item[-1]))
    elif exc.args:
        reasons.append(str(exc.args[0]) if len(exc.args) == 1 else " ".join(map(str, exc.args)))
    return reasons


def classify_failure(exc: BaseException | None, observer: HandshakeObserver) -> HandshakeFailed:
    """Turn an OpenSSL error plus what the callbacks saw into one precise reason."""
    reasons = _openssl_reasons(exc) if exc is not None else []
    text = "; ".join(reasons) or (type(exc).__name__ if exc else "unknown")
    hello = observer.client_hello
    sniffed = observer.sniffer.result if observer.sniffer else None

    if observer.policy_failure is not None:
        reason, detail = observer.policy_failure
        return HandshakeFailed(reason.value, detail)
    if observer.verify_error is not None:
        errnum, depth, subject, verify_text = observer.verify_error
        reason = _VERIFY_ERRORS.get(errnum, FailureReason.CERTIFICATE_INVALID)
        whose = "client" if observer.role == "server" else "server"
        return HandshakeFailed(
            reason.value, f"{whose} certificate {subject} (depth {depth}): {verify_text} (X509 error {errnum})"
        )
    if isinstance(sniffed, NotTls):
        first = sniffed.first_line[:80].decode("ascii", "backslashreplace")
        return HandshakeFailed(FailureReason.NOT_TLS.value, f"peer sent {sniffed.looks_like}: {first!r}")
    if "no shared cipher" in text:
        if hello is not None and hello.only_forward_secret:
            return HandshakeFailed(
                FailureReason.ECDHE_ONLY_CLIENT.value,
                "client offered only (EC)DHE suites, RSA key exchange is forced: "
                + ", ".join(suite_name(s) for s in hello.cipher_suites[:12]),
            )
        offered = ", ".join(suite_name(s) for s in hello.cipher_suites[:12]) if hello else "unknown"
        return HandshakeFailed(FailureReason.NO_SHARED_CIPHER.value, f"no shared cipher; client offered: {offered}")
    if "unsupported protocol" in text or "protocol version" in text or "wrong ssl version" in text:
        if hello is not None and hello.tls13_only:
            return HandshakeFailed(
                FailureReason.TLS13_ONLY_CLIENT.value,
                f"client offered only TLS 1.3; {observer.version_limit or 'this leg does not allow TLS 1.3'}",
            )
        offered = ", ".join(VERSION_NAMES.get(v, f"0x{v:04X}") for v in hello.versions) if hello else "unknown"
        return HandshakeFailed(FailureReason.PROTOCOL_VERSION.value, f"{text}; peer offered {offered}")
    if "peer did not return a certificate" in text or "certificate required" in text:
        return HandshakeFailed(
            FailureReason.NO_CLIENT_CERTIFICATE.value, "client sent no certificate; mutual TLS is required"
        )
    for needle, reason in (
        ("alert bad record mac", FailureReason.BAD_RECORD_MAC),
        ("alert decrypt error", FailureReason.DECRYPT_ERROR),
        ("alert unknown ca", FailureReason.UNKNOWN_CA),
        ("alert certificate expired", FailureReason.CERTIFICATE_EXPIRED),
        ("alert bad certificate", FailureReason.CERTIFICATE_INVALID),
        ("alert unsupported certificate", FailureReason.WRONG_KEY_USAGE),
        ("alert handshake failure", FailureReason.PEER_ALERT),
        ("alert", FailureReason.PEER_ALERT),
    ):
        if needle in text:
            return HandshakeFailed(reason.value, f"peer sent {text}")
    # Ahead of not_tls: OpenSSL adds "record layer failure" to these, yet the peer speaks TLS;
    # its keys (or its handshake messages) do not match ours.
    if "bad record mac" in text:
        return HandshakeFailed(
            FailureReason.BAD_RECORD_MAC.value,
            f"a record from the peer failed its integrity check ({text}): corrupted in transit, or keys that "
            "do not match ours (with RSA key exchange: a premaster secret not encrypted to our certificate's key)",
        )
    if "bad signature" in text or "digest check failed" in text:
        what = "signature (CertificateVerify)" if "bad signature" in text else "Finished message"
        return HandshakeFailed(
            FailureReason.DECRYPT_ERROR.value,
            f"the peer's handshake {what} does not verify ({text}): a corrupted or tampered handshake, or "
            "keys that do not match",
        )
    if isinstance(exc, (SSL.SysCallError, SSL.ZeroReturnError)) or "unexpected eof" in text.lower():
        return HandshakeFailed(FailureReason.PEER_CLOSED.value, "peer closed the connection during the handshake")
    if any(k in text for k in ("wrong version number", "http request", "packet length too long", "record layer")):
        return HandshakeFailed(FailureReason.NOT_TLS.value, f"peer is not speaking TLS ({text})")
    return HandshakeFailed(FailureReason.PROTOCOL_ERROR.value, text)

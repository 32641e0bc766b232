"""TLS toward a collector: siptap's client certificate out, the collector's certificate checked.

Cleartext SIP, key material and SRTP keys must not cross a network in the clear, so a HEP or
JSON-lines output can speak TLS (``transport = "tls"``) to its collector: heplify-server's
TLS listener, Kamailio with ``tcp_accept_hep3``, or stunnel in front of any TCP reader.

Why the standard library's :mod:`ssl` and not ``siptap.tls``: the mirror never imports
``tls/`` (an import-linter contract: that layer is pyOpenSSL, forced RSA key exchange and the
handshake facts of the relayed legs). This leg is an ordinary TLS client to our own
collector, which is exactly what :mod:`ssl` (OpenSSL underneath) with :class:`trio.SSLStream`
does well: TLS 1.2 or 1.3, certificate and host-name verification on by default.

This module builds the context once per output (:func:`client_context`), checking each file
first with ``cryptography`` so that a bad one is a :class:`~siptap.errors.CertificateError`
naming the file and the problem in words (``siptap check`` turns it into an error naming the
config key) rather than OpenSSL's "PEM lib"; and it turns a failed handshake into one line a
person can act on (:func:`describe_failure`).

A TLS 1.3 collector judges siptap's client certificate after siptap's side of the handshake
is done, and refuses it with an alert a round trip later. So the link
(:class:`siptap.mirror.link.Link`) waits, after the handshake, until the collector shows it
took us: by a session ticket (OpenSSL and Go servers send one only once the client's
certificate and Finished passed), by data, or by no refusal within ``accept_wait`` (a
collector that sends no ticket: trio's, OpenSSL's with tickets off). The ticket is seen
without polling: the session's transport (:class:`WatchedTransport`) is asked for more bytes
only once OpenSSL has taken in every record received so far, so that is when the session is
looked at.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Callable
from pathlib import Path

import trio
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

from siptap.config.mirror import CollectorTls
from siptap.errors import CertificateError

__all__ = ["CLOSED_BEFORE_ACCEPTING", "WatchedTransport", "client_context", "describe_failure", "refusal_alert"]

CLOSED_BEFORE_ACCEPTING = "the collector closed the connection before accepting siptap (TLS 1.3, after the handshake)"

# OpenSSL's X509_V_ERR_HOSTNAME_MISMATCH and X509_V_ERR_IP_ADDRESS_MISMATCH.
_NAME_MISMATCH = (62, 64)
# Alerts a server sends when it does not accept the client certificate it got (or got none).
_CLIENT_CERT_ALERTS = ("bad_certificate", "unsupported_certificate", "certificate_revoked", "certificate_expired",
                       "certificate_unknown", "unknown_ca", "access_denied", "certificate_required")


def client_context(tls: CollectorTls) -> ssl.SSLContext:
    """A TLS client context for one collector: TLS 1.2 or later, the collector's certificate
    verified against ``tls.ca`` (or the system's trust store) and its name checked, siptap's
    client certificate presented when ``tls.cert``/``tls.key`` are set.

    Raises CertificateError naming the file: missing or unreadable, no PEM certificate, a key
    that group or others may read, an encrypted key, a key that is not the certificate's."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED and check_hostname
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if tls.ca is None:
        context.load_default_certs(ssl.Purpose.SERVER_AUTH)
    else:
        _certificates(tls.ca)
        _load(tls.ca, lambda: context.load_verify_locations(cafile=str(tls.ca)))
    if tls.cert is not None and tls.key is not None:
        leaf = _certificates(tls.cert)[0]
        key = _private_key(tls.key)
        fmt = serialization.PublicFormat.SubjectPublicKeyInfo
        der = serialization.Encoding.DER
        if key.public_key().public_bytes(der, fmt) != leaf.public_key().public_bytes(der, fmt):
            raise CertificateError(str(tls.key), f"private key does not match the certificate in {tls.cert}")
        cert, key_path = str(tls.cert), str(tls.key)
        _load(tls.cert, lambda: context.load_cert_chain(cert, key_path))
    return context


def describe_failure(exc: BaseException, tls: CollectorTls, *, handshake: bool = True) -> str:
    """One line saying why a TLS connection to the collector failed (``handshake``) or ended,
    from the error trio raised (a BrokenResourceError whose cause is the ssl module's error).
    An established connection that ends without an alert is a collector that went away."""
    cause = _ssl_cause(exc)
    ended = cause is None or isinstance(cause, (ssl.SSLEOFError, ssl.SSLZeroReturnError))
    if ended and not handshake:
        return "peer closed the connection (without TLS close_notify)" if cause is not None else (
            f"connection lost: {exc.__cause__ or exc}")
    if isinstance(cause, ssl.SSLCertVerificationError):
        if cause.verify_code in _NAME_MISMATCH:
            return (f"the collector's certificate does not carry the name {tls.server_name!r} "
                    "(set server_name to a name in its certificate)")
        where = f"by the CA bundle {tls.ca}" if tls.ca else "by the system's CAs (set ca to the collector's CA)"
        return f"the collector's certificate is not trusted {where}: {cause.verify_message}"
    if cause is None or ended:
        return "the collector closed the connection during the TLS handshake"
    reason = cause.reason or ""
    if reason == "WRONG_VERSION_NUMBER":
        return "the collector does not speak TLS (wrong version number): check its address and transport"
    alert = refusal_alert(cause)
    if alert is None:
        return f"TLS failed: {reason or cause}"
    if tls.cert is None and alert in _CLIENT_CERT_ALERTS:
        return (f"the collector requires a client certificate and siptap has none (TLS alert {alert}): "
                "set cert and key")
    if tls.cert is None and alert == "handshake_failure":
        # What a TLS 1.2 OpenSSL server sends for a missing client certificate, but also for
        # no cipher in common: say both.
        return (f"the collector refused the TLS handshake (TLS alert {alert}): it probably requires a client "
                "certificate and siptap has none (set cert and key), or shares no cipher with siptap")
    if alert in _CLIENT_CERT_ALERTS:
        return (f"the collector refused siptap's client certificate {tls.cert} (TLS alert {alert}): "
                "is it issued by a CA the collector trusts, and still valid?")
    return f"the collector refused the TLS handshake (TLS alert {alert})"


class WatchedTransport(trio.abc.Stream):
    """The TCP stream under a collector link's TLS session (:mod:`siptap.mirror.link`),
    calling ``progressed()`` each time the session asks it for more bytes. trio's SSLStream
    reads its transport only when OpenSSL wants more, so by then every record received so
    far has been taken in: a session ticket shows in the session's state at that moment,
    without polling."""

    def __init__(self, inner: trio.SocketStream, progressed: Callable[[], None]) -> None:
        self.inner = inner
        self.progressed = progressed

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        self.progressed()
        return await self.inner.receive_some(max_bytes)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        await self.inner.send_eof()

    async def aclose(self) -> None:
        await self.inner.aclose()


def refusal_alert(exc: BaseException) -> str | None:
    """The TLS alert the collector sent (``unknown_ca``, ``certificate_required``, ...), from
    the error trio raised, or None when the failure was not an alert."""
    cause = _ssl_cause(exc)
    reason = (cause.reason or "") if cause is not None else ""
    return reason.split("ALERT_", 1)[1].lower() if "ALERT_" in reason else None


def _ssl_cause(exc: BaseException) -> ssl.SSLError | None:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise CertificateError(str(path), f"cannot read: {exc.strerror or exc}") from None


def _certificates(path: Path) -> list[x509.Certificate]:
    data = _read(path)
    if b"-----BEGIN CERTIFICATE-----" not in data:
        raise CertificateError(str(path), "no PEM certificate found (expected -----BEGIN CERTIFICATE-----)")
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise CertificateError(str(path), f"not a valid PEM certificate: {exc}") from None


def _private_key(path: Path) -> PrivateKeyTypes:
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        raise CertificateError(str(path), f"cannot read: {exc.strerror or exc}") from None
    if mode & 0o077:
        what = "readable" if mode & 0o044 else "writable"
        raise CertificateError(str(path), f"private key is {what} by group/others (mode {mode & 0o777:04o}); "
                                          "chmod 600 it")
    data = _read(path)
    try:
        return serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise CertificateError(str(path), "private key is encrypted; siptap needs an unencrypted key") from None
    except ValueError as exc:
        raise CertificateError(str(path), f"not a valid PEM private key: {exc}") from None


def _load(path: Path, load: Callable[[], None]) -> None:
    """Run the ssl module's loader; an error it still finds (after the checks above) names
    the file with OpenSSL's reason."""
    try:
        load()
    except ssl.SSLError as exc:
        raise CertificateError(str(path), f"OpenSSL cannot use it: {exc.reason or exc}") from None
    except OSError as exc:
        raise CertificateError(str(path), f"cannot read: {exc.strerror or exc}") from None

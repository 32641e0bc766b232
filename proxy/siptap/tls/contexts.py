"""Builds the pyOpenSSL contexts for both legs from validated settings.

A ``Context`` cannot change once a ``Connection`` exists, so reload means building new
ones; everything here is therefore a pure function of the settings and the files they name.
Files are checked first, so a bad key or certificate stops start-up with the file and the
problem named, not with an OpenSSL error stack.

Each context owns a :class:`~siptap.tls.facts.CertificateCache` (in its app data, a
:class:`~siptap.tls.facts.ContextData`): the verify callback (and the routing table's view of
a handshake, ``OpenSSLStream.facts``) parse each distinct peer certificate once, not once per
connection, and a reload's new contexts start with fresh caches. The handshake record the
relay hands over carries the chain as DER; the mirror process summarises it.

Key material leaves through the per-connection :class:`~siptap.tls.facts.HandshakeObserver`
(the connection's app data): the key-log callback appends NSS lines to it and the verify
callback records the first verification failure, which OpenSSL's exception alone loses.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from OpenSSL import SSL, crypto

from siptap.config import ClientTlsSettings, ServerTlsSettings
from siptap.config.routes import normalise_sni
from siptap.errors import CertificateError
from siptap.sansio.handshake import FailureReason
from siptap.tls.facts import CertificateCache, ContextData, HandshakeObserver
from siptap.tls.identity import AllowList, common_name, matches_hostname
from siptap.tls.ocsp_check import request_staples
from siptap.tls.pem import key_matches_certificate, load_certificate_chain, load_crls, load_private_key

_VERSIONS = {
    "TLSv1": SSL.TLS1_VERSION,
    "TLSv1.1": SSL.TLS1_1_VERSION,
    "TLSv1.2": SSL.TLS1_2_VERSION,
    "TLSv1.3": SSL.TLS1_3_VERSION,
}

# pyOpenSSL's cffi bindings (private, typed Any), for the one call pyOpenSSL does not wrap:
# the client's group list (see _precompute_classical_share). None on a pyOpenSSL without them.
try:
    from OpenSSL._util import lib as _lib
except ImportError:  # pragma: no cover - a pyOpenSSL without the private bindings
    _lib = None

# The client's named groups: OpenSSL 4.0's default offer, in its order, with one change: a
# key share is precomputed for X25519 only, where the default also sends an X25519MLKEM768
# share (1,216 bytes on the wire). Why: OpenSSL keeps every key share it made until the
# connection is freed, used or not, so against a core that picks X25519 (every core on
# OpenSSL 3.4 or older, most SBCs) each idle core leg held ~8.6 KiB of dead ML-KEM key
# (bench/results/2026-12-03-s7-idlemem.md). The offer is unchanged: a core that prefers
# X25519MLKEM768 still gets it, through a HelloRetryRequest (one more round trip when the leg
# is dialled). "?" skips a group this OpenSSL does not know; an OpenSSL that refuses the
# string keeps its own default (tests/tls/test_client_leg.py pins the offer against it).
_CLIENT_GROUPS = (b"?X25519MLKEM768:?SecP256r1MLKEM768:?curveSM2MLKEM768:?*X25519:?secp256r1:?X448:"
                  b"?secp384r1:?secp521r1:?curveSM2:?ffdhe2048:?ffdhe3072")

# Raw OpenSSL 3 option bits that pyOpenSSL does not name (openssl/ssl.h SSL_OP_BIT(n)).
OP_NO_EXTENDED_MASTER_SECRET = 1 << 0
OP_NO_ENCRYPT_THEN_MAC = 1 << 19


@dataclass(frozen=True, slots=True)
class Identity:
    """A certificate chain and its private key, loaded and checked."""

    chain: tuple[x509.Certificate, ...]
    key: PrivateKeyTypes
    cert_path: Path
    key_path: Path

    @property
    def leaf(self) -> x509.Certificate:
        return self.chain[0]


def load_identity(cert_path: Path, key_path: Path, *, allow_insecure_key: bool = False,
                  require_rsa: bool = False, now: datetime | None = None) -> Identity:
    """Load a certificate chain and key, refusing what would fail later in a confusing way."""
    chain = load_certificate_chain(cert_path)
    key = load_private_key(key_path, allow_insecure_permissions=allow_insecure_key)
    leaf = chain[0]
    if not key_matches_certificate(key, leaf):
        raise CertificateError(str(key_path), f"private key does not match the certificate in {cert_path}")
    now = now or datetime.now(UTC)
    if leaf.not_valid_after_utc < now:
        raise CertificateError(str(cert_path), f"certificate expired on {leaf.not_valid_after_utc:%Y-%m-%d %H:%M} UTC")
    if leaf.not_valid_before_utc > now:
        raise CertificateError(str(cert_path), f"certificate not valid before {leaf.not_valid_before_utc:%Y-%m-%d %H:%M} UTC")
    if require_rsa:
        if not isinstance(key, rsa.RSAPrivateKey):
            raise CertificateError(
                str(key_path),
                f"key is {type(key).__name__.removeprefix('_')}, but RSA key exchange needs an RSA server key "
                "(use an RSA certificate, or key_exchange = \"any\")",
            )
        try:
            usage = leaf.extensions.get_extension_for_class(x509.KeyUsage).value
        except x509.ExtensionNotFound:
            usage = None
        if usage is not None and not usage.key_encipherment:
            raise CertificateError(
                str(cert_path), "certificate's key usage lacks keyEncipherment, which RSA key exchange requires"
            )
    return Identity(tuple(chain), key, Path(cert_path), Path(key_path))


def _use_identity(ctx: SSL.Context, identity: Identity) -> None:
    ctx.use_certificate(identity.leaf)
    for extra in identity.chain[1:]:
        ctx.add_extra_chain_cert(extra)
    # pyOpenSSL accepts RSA, DSA, EC, Ed25519 and Ed448 keys; PrivateKeyTypes also names DH,
    # X25519/X448 and ML-DSA keys, which no certificate here carries (OpenSSL refuses them).
    ctx.use_privatekey(identity.key)  # type: ignore[arg-type]  # wider key union than pyOpenSSL's; see above
    ctx.check_privatekey()


def _load_ca(ctx: SSL.Context, path: Path) -> None:
    load_certificate_chain(path)  # clear error for a missing/empty/non-PEM bundle
    try:
        ctx.load_verify_locations(str(path))
    except SSL.Error as exc:
        raise CertificateError(str(path), f"cannot load CA bundle: {exc}") from None


def load_crls_for(crl_path: Path, ca_path: Path, *, now: datetime | None = None) -> list[x509.CertificateRevocationList]:
    """The CRLs in ``crl_path``, refusing what would make OpenSSL fail every handshake later.

    Each CRL must be signed by a CA in ``ca_path`` (else it is never consulted, and with CRL
    checking on, that CA's clients all fail with "unable to get certificate CRL"), and must be
    current: OpenSSL refuses every certificate with "CRL has expired" once nextUpdate passes,
    and "CRL is not yet valid" before thisUpdate. Refused here, at start-up or reload, with the
    file named, instead of as a handshake failure on every connection.
    """
    crls = load_crls(crl_path)
    cas = load_certificate_chain(ca_path)
    now = now or datetime.now(UTC)
    for index, crl in enumerate(crls, 1):
        which = f"CRL #{index} (issuer {crl.issuer.rfc4514_string()})" if len(crls) > 1 else \
            f"CRL (issuer {crl.issuer.rfc4514_string()})"
        if not any(ca.subject == crl.issuer
                   # public_key() is typed to include X25519/X448 keys, which cannot sign and no CA carries
                   and crl.is_signature_valid(ca.public_key())  # type: ignore[arg-type]  # see the line above
                   for ca in cas):
            raise CertificateError(str(crl_path), f"{which} is not signed by any CA in {ca_path}")
        next_update = crl.next_update_utc
        if next_update is not None and next_update < now:
            raise CertificateError(
                str(crl_path),
                f"{which} expired on {next_update:%Y-%m-%d %H:%M} UTC (nextUpdate): OpenSSL would refuse every "
                "client certificate; publish a fresh CRL, then reload (SIGHUP)",
            )
        if crl.last_update_utc > now:
            raise CertificateError(
                str(crl_path), f"{which} is not valid before {crl.last_update_utc:%Y-%m-%d %H:%M} UTC (thisUpdate)"
            )
    return crls


def _use_crls(ctx: SSL.Context, crl_path: Path, ca_path: Path, crl_check: str) -> None:
    store = ctx.get_cert_store()
    assert store is not None
    for crl in load_crls_for(crl_path, ca_path):
        store.add_crl(crl)
    flags = crypto.X509StoreFlags.CRL_CHECK
    if crl_check == "chain":
        flags |= crypto.X509StoreFlags.CRL_CHECK_ALL
    store.set_flags(flags)


def _verify_error_text(errnum: int) -> str:
    try:
        from OpenSSL._util import ffi, lib

        text: str = ffi.string(lib.X509_verify_cert_error_string(errnum)).decode()  # cffi is untyped
        return text
    except (ImportError, AttributeError):
        return f"X509 verify error {errnum}"


def _subject_of(cert: crypto.X509) -> str:
    try:
        return cert.to_cryptography().subject.rfc4514_string()
    except Exception:
        return "?"


def certificate_cache(ctx: SSL.Context) -> CertificateCache | None:
    """The context's certificate cache (None for a context not built here)."""
    data = ctx.get_app_data()
    return data.certificates if isinstance(data, ContextData) else None


VerifyCallback = Callable[[SSL.Connection, crypto.X509, int, int, int], bool]


def _make_verify_callback(allow: AllowList | None, certificates: CertificateCache | None = None) -> VerifyCallback:
    def verify(conn: SSL.Connection, cert: crypto.X509, errnum: int, depth: int, ok: int) -> bool:
        observer = conn.get_app_data()
        if not isinstance(observer, HandshakeObserver):
            return bool(ok)
        if not ok:
            observer.record_verify_error(errnum, depth, _subject_of(cert), _verify_error_text(errnum))
            return False
        # The leaf is parsed only for a check that reads it (an allow-list, a hostname), and
        # then once per distinct certificate; with neither, a verified chain is all it takes.
        if depth == 0 and (allow or observer.expected_hostname):
            leaf = certificates.certificate_of(cert) if certificates is not None else cert.to_cryptography()
            if allow and not allow.permits(leaf):
                observer.policy_failure = (
                    FailureReason.NOT_ALLOWED,
                    f"client certificate {leaf.subject.rfc4514_string()} (CN={common_name(leaf)}) "
                    "verified but is not on the route's allow-list",
                )
                return False
            name = observer.expected_hostname
            if name and not matches_hostname(leaf, name):
                observer.policy_failure = (
                    FailureReason.HOSTNAME_MISMATCH,
                    f"server certificate {leaf.subject.rfc4514_string()} does not match {name!r}",
                )
                return False
        return True

    return verify


def _keylog(conn: SSL.Connection, line: bytes) -> None:
    observer = conn.get_app_data()
    if isinstance(observer, HandshakeObserver):
        observer.keylog_lines.append(line.decode("ascii", "replace").strip())


def _new_context(min_version: str, max_version: str, ciphers: str, *, version_limit: str | None = None) -> SSL.Context:
    ctx = SSL.Context(SSL.TLS_METHOD)
    # An idle connection gives its ~34 KiB record buffers back to OpenSSL's allocator: a
    # trunk of mostly idle TLS connections (both legs) is what siptap holds most of.
    ctx.set_mode(SSL.MODE_RELEASE_BUFFERS)
    ctx.set_min_proto_version(_VERSIONS[min_version])
    ctx.set_max_proto_version(_VERSIONS[max_version])
    try:
        ctx.set_cipher_list(ciphers.encode())
    except SSL.Error:
        raise CertificateError("ciphers", f"OpenSSL accepts none of {ciphers!r}") from None
    ctx.set_app_data(ContextData(CertificateCache(), version_limit))
    return ctx


def _version_limit(settings: ServerTlsSettings) -> str | None:
    """The server's version ceiling in words, for a refused TLS 1.3-only client: what to change."""
    if settings.key_exchange == "rsa":
        return ("this leg allows TLS 1.2 only: key_exchange = \"rsa\" forces RSA key exchange, which TLS 1.3 "
                "does not have (key_exchange = \"any\" admits TLS 1.3, decryptable with the key log)")
    ceiling = settings.effective_max_version
    if ceiling != "TLSv1.3":
        return f"this leg allows at most {ceiling} (max_version = \"{ceiling}\")"
    return None


def build_server_context(settings: ServerTlsSettings, *, session_id: bytes = b"siptap") -> SSL.Context:
    """The customer-facing server: by default TLS 1.2, kRSA AES suites, mutual TLS, no resumption."""
    forced_rsa = settings.key_exchange == "rsa"
    identity = load_identity(
        settings.cert,
        settings.key,
        allow_insecure_key=settings.allow_insecure_key_permissions,
        require_rsa=forced_rsa,
    )
    ctx = _new_context(settings.min_version, settings.effective_max_version, settings.effective_ciphers,
                       version_limit=_version_limit(settings))
    certificates = certificate_cache(ctx)
    options = SSL.OP_CIPHER_SERVER_PREFERENCE | SSL.OP_NO_COMPRESSION | SSL.OP_NO_RENEGOTIATION
    if settings.resumption:
        ctx.set_session_id(session_id)
    else:
        options |= SSL.OP_NO_TICKET
        ctx.set_session_cache_mode(SSL.SESS_CACHE_OFF)
    if settings.sngrep_compatible:
        options |= OP_NO_EXTENDED_MASTER_SECRET | OP_NO_ENCRYPT_THEN_MAC
    ctx.set_options(options)
    _use_identity(ctx, identity)
    if settings.verify_client:
        _load_ca(ctx, settings.client_ca)
        # Advertise the acceptable CAs: E-SBCs holding several certificates pick by this list.
        ctx.load_client_ca(str(settings.client_ca).encode())
        verify = _make_verify_callback(AllowList.parse(settings.allow), certificates)
        ctx.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, verify)
        ctx.set_verify_depth(settings.verify_depth)
        data = ctx.get_app_data()
        assert isinstance(data, ContextData)  # _new_context's
        ctx.set_app_data(dataclasses.replace(data, verify=verify))  # the same cache, and the callback
        if settings.crl is not None:
            _use_crls(ctx, settings.crl, settings.client_ca, settings.crl_check)
    else:
        ctx.set_verify(SSL.VERIFY_NONE)
    ctx.set_keylog_callback(_keylog)
    return ctx


def serve_by_sni(default: SSL.Context, by_name: Mapping[str, SSL.Context]) -> None:
    """Make ``default`` switch a connection to ``by_name[SNI]`` when the client names one
    (lower case, no trailing dot); any other name, or none, stays on ``default``.

    OpenSSL calls this while it reads the ClientHello, after the version is chosen and before
    the suite is: the switch brings the certificate and key, the CA store (client CAs and
    CRLs), the advertised CA names and the suites; the verify callback (the allow-list) is
    brought along here. What was settled before stays the first context's:
    :data:`siptap.config.listeners.LISTENER_KEYS` lists those settings, which ``siptap check``
    makes the routes of one address agree on. Set before ``default`` makes its first connection."""
    verify_mode = default.get_verify_mode()

    def switch(conn: SSL.Connection) -> None:
        raw = conn.get_servername()
        ctx = by_name.get(normalise_sni(raw.decode("ascii", "replace"))) if raw else None
        if ctx is None or ctx is default:
            return
        conn.set_context(ctx)
        data = ctx.get_app_data()
        if isinstance(data, ContextData) and data.verify is not None:
            conn.set_verify(verify_mode, data.verify)

    default.set_tlsext_servername_callback(switch)


def _precompute_classical_share(ctx: SSL.Context) -> None:
    """The client offers the default groups but precomputes only an X25519 share (see _CLIENT_GROUPS)."""
    if _lib is None:  # pragma: no cover - see the import
        return
    if _lib.SSL_CTX_set1_curves_list(ctx._context, _CLIENT_GROUPS) != 1:  # pragma: no cover - older OpenSSL
        _lib.ERR_clear_error()  # the refusal must not surface as the next call's error


def build_client_context(settings: ClientTlsSettings) -> SSL.Context:
    """The core-facing client: verifies the core, presents siptap's client certificate."""
    ctx = _new_context(settings.min_version, settings.max_version, settings.ciphers)
    _precompute_classical_share(ctx)
    if settings.ocsp != "off":
        request_staples(ctx)
    if settings.tls13_ciphersuites:
        ctx.set_tls13_ciphersuites(settings.tls13_ciphersuites.encode())
    ctx.set_options(SSL.OP_NO_COMPRESSION | SSL.OP_NO_RENEGOTIATION)
    if settings.cert is not None and settings.key is not None:
        _use_identity(
            ctx,
            load_identity(settings.cert, settings.key, allow_insecure_key=settings.allow_insecure_key_permissions),
        )
    if settings.verify:
        if settings.ca is not None:
            _load_ca(ctx, settings.ca)
            if settings.crl is not None:
                _use_crls(ctx, settings.crl, settings.ca, settings.crl_check)
        else:
            ctx.set_default_verify_paths()
        ctx.set_verify(SSL.VERIFY_PEER, _make_verify_callback(None, certificate_cache(ctx)))
    else:
        ctx.set_verify(SSL.VERIFY_NONE)
    ctx.set_keylog_callback(_keylog)
    return ctx

"""OCSP for one certificate, without I/O: the request, the responder's URL, and every check a
response must pass before siptap believes it.

A response is only as good as its checks. An attacker who can answer for the responder (or
replay an old answer) could otherwise turn a revoked certificate into a good one, so
:func:`check_response` insists, as RFC 6960 section 3.2 asks, on:

- the signature: by the certificate's issuer itself, or by a delegated responder whose
  certificate is in the response, issued by that same issuer, carries the id-kp-OCSPSigning
  extended key usage, and is valid now;
- the CertID: the answer is about this serial number under this issuer (name and key hashes
  recomputed here with the hash algorithm the response used), not about another certificate;
- freshness: thisUpdate is not in the future, nextUpdate not in the past (both with a small
  allowance for clock skew); a response without nextUpdate is accepted only while thisUpdate
  is recent, and is never cached.

Everything here is a pure function of bytes, certificates and the time passed in, so the
tests feed it hand-built responses (good, revoked, forged, stale, about someone else). The
network side is :mod:`siptap.tls.ocsp_client`; the policy and the cache
:mod:`siptap.tls.ocsp_check`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa
from cryptography.x509 import ocsp
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID

__all__ = [
    "CLOCK_SKEW",
    "CertId",
    "OcspAnswer",
    "OcspInvalid",
    "build_request",
    "cert_id",
    "check_response",
    "responder_urls",
]

# Allowance for the responder's and our clocks disagreeing (thisUpdate slightly ahead of us,
# nextUpdate just passed); the same order as OpenSSL's `ocsp -validity_period` default.
CLOCK_SKEW = timedelta(minutes=5)
# A response without nextUpdate says "newer information is always available" (RFC 6960
# 2.4): believed only while this young, and never cached.
NO_NEXT_UPDATE_MAX_AGE = timedelta(hours=1)


class OcspInvalid(Exception):
    """The response cannot be believed (or says nothing usable); the message says why."""


@dataclass(frozen=True, slots=True)
class CertId:
    """What an OCSP answer is about: the cache key. SHA-1 hashes, as in the requests siptap
    sends (every responder supports SHA-1 CertIDs; RFC 5019 requires it)."""

    issuer_name_hash: bytes
    issuer_key_hash: bytes
    serial: int


@dataclass(frozen=True, slots=True)
class OcspAnswer:
    """A response that passed every check: the status of one certificate."""

    status: str  # "good", "revoked" or "unknown"
    this_update: datetime
    next_update: datetime | None
    responder: str  # subject of the certificate that signed it (the issuer or a delegate)
    revocation_time: datetime | None = None
    revocation_reason: str | None = None

    def describe(self) -> str:
        if self.status == "revoked":
            when = f" on {self.revocation_time:%Y-%m-%d %H:%M} UTC" if self.revocation_time else ""
            why = f" ({self.revocation_reason})" if self.revocation_reason else ""
            return f"revoked{when}{why}, says {self.responder}"
        return f"{self.status}, says {self.responder}"


def responder_urls(cert: x509.Certificate) -> tuple[str, ...]:
    """The OCSP responder URLs in the certificate's Authority Information Access extension."""
    try:
        aia = cert.extensions.get_extension_for_class(x509.AuthorityInformationAccess).value
    except x509.ExtensionNotFound:
        return ()
    return tuple(
        d.access_location.value for d in aia
        if d.access_method == AuthorityInformationAccessOID.OCSP
        and isinstance(d.access_location, x509.UniformResourceIdentifier)
    )


def _request(cert: x509.Certificate, issuer: x509.Certificate,
             algorithm: hashes.HashAlgorithm) -> ocsp.OCSPRequest:
    return ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, algorithm).build()


def cert_id(cert: x509.Certificate, issuer: x509.Certificate) -> CertId:
    """The SHA-1 CertID of ``cert`` issued by ``issuer`` (cryptography computes the hashes)."""
    request = _request(cert, issuer, hashes.SHA1())
    return CertId(request.issuer_name_hash, request.issuer_key_hash, request.serial_number)


def build_request(cert: x509.Certificate, issuer: x509.Certificate) -> bytes:
    """The DER OCSP request for ``cert``: one SHA-1 CertID, no nonce (responders that
    pre-sign their answers, most of them, ignore nonces, and siptap caches answers anyway)."""
    return _request(cert, issuer, hashes.SHA1()).public_bytes(serialization.Encoding.DER)


def check_response(der: bytes, cert: x509.Certificate, issuer: x509.Certificate, *,
                   now: datetime) -> OcspAnswer:
    """The status of ``cert`` in the DER response ``der``, once the response has passed every
    check in the module's docstring; :class:`OcspInvalid` (saying which failed) otherwise."""
    try:
        response = ocsp.load_der_ocsp_response(der)
    except ValueError as exc:
        raise OcspInvalid(f"not an OCSP response ({exc})") from None
    if response.response_status != ocsp.OCSPResponseStatus.SUCCESSFUL:
        raise OcspInvalid(f"the responder answered {response.response_status.name.lower()}")
    signer = _signer(response, issuer, now)
    single = _single_for(response, cert, issuer)
    this_update = single.this_update_utc
    next_update = single.next_update_utc
    if this_update > now + CLOCK_SKEW:
        raise OcspInvalid(f"response not valid before {this_update:%Y-%m-%d %H:%M:%S} UTC (thisUpdate)")
    if next_update is not None and next_update < now - CLOCK_SKEW:
        raise OcspInvalid(f"stale response: nextUpdate {next_update:%Y-%m-%d %H:%M:%S} UTC has passed")
    if next_update is None and this_update < now - NO_NEXT_UPDATE_MAX_AGE:
        raise OcspInvalid(f"stale response: no nextUpdate, and thisUpdate {this_update:%Y-%m-%d %H:%M:%S} UTC "
                          f"is over {NO_NEXT_UPDATE_MAX_AGE} old")
    status = single.certificate_status
    if status == ocsp.OCSPCertStatus.REVOKED:
        reason = single.revocation_reason
        return OcspAnswer("revoked", this_update, next_update, signer, single.revocation_time_utc,
                          reason.name if reason is not None else None)
    return OcspAnswer("good" if status == ocsp.OCSPCertStatus.GOOD else "unknown", this_update, next_update, signer)


def _single_for(response: ocsp.OCSPResponse, cert: x509.Certificate,
                issuer: x509.Certificate) -> ocsp.OCSPSingleResponse:
    """The response's answer about ``cert``: same serial, and the issuer's name and key hashes
    recomputed with the response's own hash algorithm."""
    for single in response.responses:
        if single.serial_number != cert.serial_number:
            continue
        expected = _request(cert, issuer, single.hash_algorithm)
        if (single.issuer_name_hash, single.issuer_key_hash) == (expected.issuer_name_hash, expected.issuer_key_hash):
            return single
    raise OcspInvalid(f"the response is not about this certificate (serial {cert.serial_number:X} "
                      f"issued by {issuer.subject.rfc4514_string()})")


def _signer(response: ocsp.OCSPResponse, issuer: x509.Certificate, now: datetime) -> str:
    """Who signed the response, once the signature is checked: the issuer itself, or a
    delegated responder the issuer authorised. Raises OcspInvalid otherwise."""
    try:
        hash_algorithm = response.signature_hash_algorithm
    except UnsupportedAlgorithm:
        raise OcspInvalid("the response's signature algorithm is not supported") from None
    data, signature = response.tbs_response_bytes, response.signature
    if _signature_valid(issuer.public_key(), signature, data, hash_algorithm):
        return issuer.subject.rfc4514_string()
    problems: list[str] = []
    for delegate in response.certificates:
        if not _signature_valid(delegate.public_key(), signature, data, hash_algorithm):
            continue
        problem = _delegate_problem(delegate, issuer, now)
        if problem is None:
            return delegate.subject.rfc4514_string()
        problems.append(problem)
    if problems:
        raise OcspInvalid(f"signed by a responder the issuer did not authorise: {problems[0]}")
    raise OcspInvalid(f"bad signature: neither the issuer ({issuer.subject.rfc4514_string()}) nor a "
                      "responder certificate in the response signed it")


def _delegate_problem(delegate: x509.Certificate, issuer: x509.Certificate, now: datetime) -> str | None:
    """Why ``delegate`` may not sign for ``issuer`` (RFC 6960 4.2.2.2), or None if it may."""
    name = delegate.subject.rfc4514_string()
    try:
        delegate.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return f"{name} is not issued by {issuer.subject.rfc4514_string()}"
    try:
        usages = delegate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        usages = None
    if usages is None or ExtendedKeyUsageOID.OCSP_SIGNING not in usages:
        return f"{name} lacks the OCSPSigning extended key usage"
    if not delegate.not_valid_before_utc - CLOCK_SKEW <= now <= delegate.not_valid_after_utc + CLOCK_SKEW:
        return f"{name} is not valid now"
    return None


def _signature_valid(key: object, signature: bytes, data: bytes, algorithm: hashes.HashAlgorithm | None) -> bool:
    try:
        if isinstance(key, rsa.RSAPublicKey) and algorithm is not None:
            key.verify(signature, data, padding.PKCS1v15(), algorithm)
        elif isinstance(key, ec.EllipticCurvePublicKey) and algorithm is not None:
            key.verify(signature, data, ec.ECDSA(algorithm))
        elif isinstance(key, (ed25519.Ed25519PublicKey, ed448.Ed448PublicKey)):
            key.verify(signature, data)
        else:
            return False
    except (InvalidSignature, ValueError, TypeError, UnsupportedAlgorithm):
        return False
    return True

"""The pure side of OCSP (siptap.tls.ocsp): what a response must prove before siptap believes
it, with responses from the lab responder and hand-built forgeries; and the answer cache."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509 import ocsp
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from siptap.tls.ocsp import OcspAnswer, OcspInvalid, build_request, cert_id, check_response, responder_urls
from siptap.tls.ocsp_check import OcspCache
from siptap.tls.pem import load_certificate_chain, load_private_key
from siptap.tools.ocsp_responder import LabOcspResponder
from siptap.tools.pki import issue_leaf, revoke

# One instant for every response built and checked here (collection may precede a test by minutes);
# whole seconds, as GeneralizedTime has.
NOW = datetime.now(UTC).replace(microsecond=0)


@pytest.fixture(scope="module")
def own_pki(pki: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("ocsp") / "pki"
    shutil.copytree(pki, directory)
    issue_leaf(directory, "gone", usage="client", ocsp_url="http://127.0.0.1:9/ocsp")
    revoke(directory, "gone")
    return directory


def cert(pki: Path, name: str) -> x509.Certificate:
    return load_certificate_chain(pki / f"{name}.pem")[0]


def ca_key(pki: Path, name: str = "ca") -> rsa.RSAPrivateKey:
    key = load_private_key(pki / f"{name}.key")
    assert isinstance(key, rsa.RSAPrivateKey)
    return key


def response(pki: Path, leaf: x509.Certificate, *, signer: x509.Certificate | None = None,
             signer_key: rsa.RSAPrivateKey | None = None, status: ocsp.OCSPCertStatus = ocsp.OCSPCertStatus.GOOD,
             this_update: datetime | None = None, next_update: datetime | None = NOW + timedelta(hours=1),
             extra: list[x509.Certificate] | None = None, issuer: x509.Certificate | None = None) -> bytes:
    ca = cert(pki, "ca")
    signer = signer or ca
    builder = ocsp.OCSPResponseBuilder().add_response(
        cert=leaf, issuer=issuer or ca, algorithm=hashes.SHA1(), cert_status=status,
        this_update=this_update or NOW - timedelta(minutes=1), next_update=next_update,
        revocation_time=NOW - timedelta(days=1) if status == ocsp.OCSPCertStatus.REVOKED else None,
        revocation_reason=x509.ReasonFlags.key_compromise if status == ocsp.OCSPCertStatus.REVOKED else None,
    ).responder_id(ocsp.OCSPResponderEncoding.NAME, signer)
    if extra:
        builder = builder.certificates(extra)
    return builder.sign(signer_key or ca_key(pki), hashes.SHA256()).public_bytes(serialization.Encoding.DER)


def delegate(pki: Path, *, eku: bool = True, foreign: bool = False) -> tuple[x509.Certificate, rsa.RSAPrivateKey]:
    """A delegated responder certificate, issued by the lab CA (or a foreign one)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    issuer = cert(pki, "foreign-ca" if foreign else "ca")
    builder = (x509.CertificateBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "lab OCSP responder")]))
               .issuer_name(issuer.subject).public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(NOW - timedelta(hours=1)).not_valid_after(NOW + timedelta(days=1)))
    if eku:
        builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.OCSP_SIGNING]), critical=False)
    return builder.sign(ca_key(pki, "foreign-ca" if foreign else "ca"), hashes.SHA256()), key


def test_the_lab_responder_says_good_and_revoked(own_pki: Path) -> None:
    responder = LabOcspResponder(own_pki)
    ca = cert(own_pki, "ca")
    good = check_response(responder.respond(build_request(cert(own_pki, "customer"), ca), now=NOW),
                          cert(own_pki, "customer"), ca, now=NOW)
    assert good.status == "good" and good.responder == ca.subject.rfc4514_string()
    assert good.next_update is not None and good.next_update - NOW == timedelta(hours=1)
    gone = cert(own_pki, "gone")
    revoked = check_response(responder.respond(build_request(gone, ca), now=NOW), gone, ca, now=NOW)
    assert revoked.status == "revoked" and revoked.revocation_time is not None
    assert revoked.describe().startswith("revoked on ")


def test_a_request_about_another_issuer_is_unauthorized(own_pki: Path) -> None:
    foreign = cert(own_pki, "foreign")
    der = LabOcspResponder(own_pki).respond(build_request(foreign, cert(own_pki, "foreign-ca")))
    with pytest.raises(OcspInvalid, match="the responder answered unauthorized"):
        check_response(der, foreign, cert(own_pki, "foreign-ca"), now=NOW)


def test_aia_ocsp_url_from_the_lab_pki(own_pki: Path) -> None:
    assert responder_urls(cert(own_pki, "gone")) == ("http://127.0.0.1:9/ocsp",)
    assert responder_urls(cert(own_pki, "customer")) == ()


def test_a_delegated_responder_the_issuer_authorised_is_believed(own_pki: Path) -> None:
    leaf = cert(own_pki, "customer")
    responder, key = delegate(own_pki)
    answer = check_response(response(own_pki, leaf, signer=responder, signer_key=key, extra=[responder]),
                            leaf, cert(own_pki, "ca"), now=NOW)
    assert (answer.status, answer.responder) == ("good", "CN=lab OCSP responder")


@pytest.mark.parametrize(("make", "problem"), [
    # Signed by a key that is neither the issuer's nor an included responder's.
    (lambda pki, leaf: response(pki, leaf, signer=cert(pki, "foreign-ca"), signer_key=ca_key(pki, "foreign-ca")),
     "bad signature: neither the issuer"),
    # A delegate without id-kp-OCSPSigning, or issued by someone else.
    (lambda pki, leaf: response(pki, leaf, signer=(d := delegate(pki, eku=False))[0], signer_key=d[1], extra=[d[0]]),
     "lacks the OCSPSigning extended key usage"),
    (lambda pki, leaf: response(pki, leaf, signer=(d := delegate(pki, foreign=True))[0], signer_key=d[1], extra=[d[0]]),
     "is not issued by O=siptap lab,CN=siptap lab CA"),
    # Stale, not yet valid, or without nextUpdate and old.
    (lambda pki, leaf: response(pki, leaf, this_update=NOW - timedelta(days=2), next_update=NOW - timedelta(days=1)),
     "stale response: nextUpdate"),
    (lambda pki, leaf: response(pki, leaf, this_update=NOW + timedelta(hours=1), next_update=NOW + timedelta(hours=2)),
     "response not valid before"),
    (lambda pki, leaf: response(pki, leaf, this_update=NOW - timedelta(hours=2), next_update=None),
     "stale response: no nextUpdate"),
    # A genuine answer, about another certificate.
    (lambda pki, leaf: response(pki, cert(pki, "other-customer")), "the response is not about this certificate"),
    # Garbage and the responder's error statuses.
    (lambda pki, leaf: b"\x30\x03\x0a\x01\x00", "not an OCSP response"),
    (lambda pki, leaf: ocsp.OCSPResponseBuilder.build_unsuccessful(ocsp.OCSPResponseStatus.TRY_LATER)
     .public_bytes(serialization.Encoding.DER), "the responder answered try_later"),
])
def test_responses_that_prove_nothing_are_refused(own_pki: Path, make: object, problem: str) -> None:
    leaf = cert(own_pki, "customer")
    der = make(own_pki, leaf)  # type: ignore[operator]  # the parametrised builders
    with pytest.raises(OcspInvalid, match=problem.replace("(", r"\(").replace(")", r"\)")):
        check_response(der, leaf, cert(own_pki, "ca"), now=NOW)


def test_cache_keeps_answers_until_next_update_and_stays_bounded(own_pki: Path) -> None:
    ca = cert(own_pki, "ca")
    keys = [cert_id(cert(own_pki, name), ca) for name in ("customer", "other-customer", "gone")]
    cache = OcspCache(maxsize=2)
    answer = OcspAnswer("good", NOW, NOW + timedelta(minutes=10), "CA")
    cache.put(keys[0], answer, NOW)
    assert cache.get(keys[0], NOW + timedelta(minutes=9)) == answer
    assert cache.get(keys[0], NOW + timedelta(minutes=10)) is None  # at nextUpdate: gone
    assert len(cache) == 0
    cache.put(keys[0], OcspAnswer("good", NOW, None, "CA"), NOW)  # no nextUpdate: never cached
    assert len(cache) == 0
    for key in keys:
        cache.put(key, answer, NOW)
    assert len(cache) == 2 and cache.get(keys[0], NOW) is None  # the oldest went first

"""One identity rule, two inputs: the allow-list in the verify callback (a parsed certificate)
and a route's match.client after the handshake (the handshake's certificate summary) agree
on every entry form, the issuer forms included."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography import x509

from siptap.config.allow import parse_allow_entries
from siptap.tls.facts import certificate_summary
from siptap.tls.identity import AllowList, sha256_fingerprint, summary_matches


@pytest.fixture(scope="module")
def customer(pki: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate((pki / "customer.pem").read_bytes())


def entries_for(cert: x509.Certificate) -> dict[str, bool]:
    """Entries and whether each should match the lab's customer certificate."""
    return {
        "cn:customer": True,
        "cn:Customer": False,  # a CN is exact
        "san:DNS:customer": True,
        "san:CUSTOMER": True,
        "san:DNS:localhost": False,
        f"sha256:{sha256_fingerprint(cert)}": True,
        "sha256:" + "0" * 64: False,
        f"issuer:{cert.issuer.rfc4514_string()}": True,  # as siptap's log lines print it
        "issuer:CN = siptap lab CA, O = siptap lab": True,  # as openssl x509 -issuer prints it
        "issuer:/O=siptap lab/CN=SIPTAP LAB CA": True,
        "issuer:siptap lab CA": True,  # the issuer's CN alone
        "issuer:CN=siptap lab CA": False,  # a whole name: the O is missing
        "issuer:customer": False,  # the subject's CN is not the issuer's
    }


def test_allow_list_and_route_match_agree(customer: x509.Certificate) -> None:
    summary = certificate_summary(customer)
    for entry, expected in entries_for(customer).items():
        entries = parse_allow_entries([entry])
        assert AllowList(entries).permits(customer) is expected, entry
        assert summary_matches(entries, summary) is expected, entry


def test_any_entry_is_enough(customer: x509.Certificate) -> None:
    entries = parse_allow_entries(["cn:someone-else", "issuer:siptap lab CA"])
    assert summary_matches(entries, certificate_summary(customer))
    assert not summary_matches(parse_allow_entries(["cn:someone-else"]), certificate_summary(customer))

"""Distinguished names as an operator types them and as certificates carry them: one name,
several spellings, equal after parsing; a malformed name says what is wrong."""

from __future__ import annotations

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from siptap.sansio.distinguished_name import common_name_of, parse_dn

ACME = frozenset({("C", "us"), ("O", "acme inc"), ("CN", "acme customer ca")})


@pytest.mark.parametrize("text", [
    "CN=Acme Customer CA,O=Acme Inc,C=US",  # RFC 4514, as siptap's own log lines show it
    "C = US, O = Acme Inc, CN = Acme Customer CA",  # openssl x509 -issuer
    "/C=US/O=Acme Inc/CN=Acme Customer CA",  # openssl -nameopt compat
    "commonName=acme   customer CA, organizationName=ACME INC, countryName=us",  # long names, case, spaces
])
def test_spellings_of_one_name_are_equal(text: str) -> None:
    assert parse_dn(text) == ACME
    assert common_name_of(parse_dn(text)) == "acme customer ca"


def test_what_cryptography_writes_parses_back() -> None:
    name = x509.Name([
        x509.NameAttribute(NameOID.COMMON_NAME, "Comma, Plus+ \"Quoted\""),
        x509.NameAttribute(NameOID.EMAIL_ADDRESS, "ca@example.com"),
        x509.NameAttribute(NameOID.DOMAIN_COMPONENT, "example"),
    ])
    parsed = parse_dn(name.rfc4514_string())
    assert parsed == frozenset({("CN", 'comma, plus+ "quoted"'), ("1.2.840.113549.1.9.1", "ca@example.com"),
                                ("DC", "example")})
    assert parse_dn("emailAddress=CA@example.com,CN=x") == parse_dn("CN=x,E=ca@example.com")


def test_hex_escapes_are_utf8() -> None:
    assert parse_dn(r"CN=Caf\C3\A9") == frozenset({("CN", "café")})


def test_a_different_name_differs() -> None:
    assert parse_dn("CN=Acme Customer CA,O=Acme Inc") != ACME  # a subset is not the name


@pytest.mark.parametrize(("text", "problem"), [
    ("", "empty distinguished name"),
    ("CN=a,,O=b", "empty attribute"),
    ("CN=a,O", "'O' is not TYPE=value"),
    ("CN=a,=b", "'=b' is not TYPE=value"),
    ("C N=a", "'C N' is not an attribute type"),
    ("CN=a\\", "lone backslash"),
])
def test_malformed_names_say_why(text: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem.replace("(", r"\(")):
        parse_dn(text)

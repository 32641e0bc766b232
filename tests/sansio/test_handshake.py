"""The handshake record: plain data, rendered the same way for the logs, the mirror and the tools."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pytest

from siptap.sansio.handshake import (
    CertificateSummary,
    FailureReason,
    HandshakeFacts,
    RawHandshake,
    key_exchange_of,
    vars_of,
)
from siptap.sansio.tls_hello import ClientHello

LEAF = CertificateSummary(
    subject="CN=customer,O=siptap lab", issuer="CN=siptap lab CA,O=siptap lab", serial="1F",
    not_before="2026-01-01T00:00:00+00:00", not_after="2028-04-05T00:00:00+00:00",
    sha256="AB:CD", sans=("customer",), common_name="customer",
)


def facts(**changes: object) -> HandshakeFacts:
    base = HandshakeFacts(
        leg="customer", role="server", version="TLSv1.2", cipher="AES256-GCM-SHA384", key_exchange="RSA",
        extended_master_secret=True, session_reused=False, sni=None, client_random="00" * 32,
        master_secret="11" * 48, keylog_lines=("CLIENT_RANDOM " + "00" * 32 + " " + "11" * 48,),
        peer_chain=(LEAF,),
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]  # field overrides are untyped keyword values


def test_importing_the_record_pulls_in_no_tls_library() -> None:
    """The mirror and the tools import this without pyOpenSSL or cryptography: checked in a
    fresh interpreter, since this test process has long imported both."""
    probe = (
        "import sys, siptap.sansio.handshake; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & "
        "{'OpenSSL', 'cryptography', 'trio', 'structlog', 'prometheus_client'}))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "[]"


def test_as_dict_with_and_without_secrets_is_json() -> None:
    record = facts(client_offer={"cipher_suites": ["AES256-GCM-SHA384"]})
    full = record.as_dict()
    assert full["master_secret"] == "11" * 48 and full["keylog"] == list(record.keylog_lines)
    assert full["peer_chain"] == [vars_of(LEAF)] and full["client_offer"] == {"cipher_suites": ["AES256-GCM-SHA384"]}
    quiet = record.as_dict(secrets=False)
    assert "master_secret" not in quiet and "keylog" not in quiet
    assert {k: v for k, v in full.items() if k not in ("master_secret", "keylog")} == quiet
    assert json.loads(json.dumps(full))["peer_chain"][0]["sans"] == ["customer"]  # every member serialises


def test_no_client_offer_no_member() -> None:
    assert "client_offer" not in facts().as_dict()


def test_vars_of_names_every_field_in_order() -> None:
    assert list(vars_of(LEAF)) == [f.name for f in dataclasses.fields(CertificateSummary)]
    assert vars_of(LEAF)["sans"] == ("customer",)


@pytest.mark.parametrize(
    ("version", "cipher", "group", "expected"),
    [
        ("TLSv1.2", "AES256-GCM-SHA384", None, "RSA"),
        ("TLSv1.2", "AES128-SHA", None, "RSA"),
        ("TLSv1.2", "ECDHE-RSA-AES256-GCM-SHA384", "secp256r1", "ECDHE"),
        ("TLSv1.2", "DHE-RSA-AES128-SHA256", None, "DHE"),
        ("TLSv1.2", "EDH-RSA-DES-CBC3-SHA", None, "DHE"),
        ("TLSv1.2", "PSK-AES128-CBC-SHA", None, "PSK"),
        ("TLSv1.3", "TLS_AES_256_GCM_SHA384", "x25519", "TLSv1.3 (x25519)"),
        ("TLSv1.3", "TLS_AES_256_GCM_SHA384", None, "TLSv1.3"),
    ],
)
def test_key_exchange_of(version: str, cipher: str, group: str | None, expected: str) -> None:
    assert key_exchange_of(version, cipher, group) == expected
    assert facts(key_exchange=expected).rsa_key_exchange == (expected == "RSA")


def test_failure_reasons_are_their_tokens() -> None:
    """Logs and metrics format the members directly: str() and f-strings give the token."""
    assert FailureReason.NO_SHARED_CIPHER == "no_shared_cipher"
    assert f"{FailureReason.TIMEOUT.value}" == "timeout"
    assert len({r.value for r in FailureReason}) == len(FailureReason)


# The records are built inside the test, not held by the parametrisation: pytest keeps
# parameters alive for the whole session, and tests/relay/test_idle_footprint.py counts the
# HandshakeFacts objects alive in the process.
@pytest.mark.parametrize("changes", [
    {},
    {"client_offer": {"cipher_suites": ["AES256-GCM-SHA384"], "versions": ["TLSv1.2"]}},
    {"role": "client", "version": "TLSv1.3", "key_exchange": "TLSv1.3 (x25519)", "extended_master_secret": None,
     "sni": "core.example", "master_secret": None, "keylog_lines": ("A 1 2", "B 3 4"), "peer_chain": ()},
    {"peer_chain": (LEAF, dataclasses.replace(LEAF, sans=(), common_name=None))},
])
def test_from_dict_inverts_as_dict_through_json(changes: dict[str, object]) -> None:
    """The relay sends as_dict() as JSON; the mirror process rebuilds the very same record."""
    record = facts(**changes)
    assert HandshakeFacts.from_dict(json.loads(json.dumps(record.as_dict()))) == record
    quiet = HandshakeFacts.from_dict(json.loads(json.dumps(record.as_dict(secrets=False))))
    assert quiet == dataclasses.replace(record, master_secret=None, keylog_lines=())


def test_from_dict_names_a_missing_or_mistyped_member() -> None:
    data = facts().as_dict()
    with pytest.raises(ValueError, match="cipher is missing"):
        HandshakeFacts.from_dict({k: v for k, v in data.items() if k != "cipher"})
    with pytest.raises(ValueError, match="session_reused must be bool"):
        HandshakeFacts.from_dict({**data, "session_reused": "no"})
    with pytest.raises(ValueError, match="keylog must be a list of strings"):
        HandshakeFacts.from_dict({**data, "keylog": "CLIENT_RANDOM x y"})
    assert HandshakeFacts.from_dict({**data, "upstream": "core.example:5061"}) == facts()  # extra members ignored


HELLO = ClientHello(0x0303, (0x0303,), (0xC030, 0x009D, 0x00FF), (0x0000, 0x0017), "sbc.example", 32)


def test_a_raw_handshake_handed_over_is_the_facts_it_stands_for() -> None:
    """The relay's record (issue 16 item 6): chain as DER, the hello as numbers, through JSON;
    the mirror's facts equal the facts the relay would have made, summaries and offer included."""
    raw = RawHandshake(
        leg="customer", role="server", version="TLSv1.2", cipher="AES256-GCM-SHA384", key_exchange="RSA",
        extended_master_secret=True, session_reused=False, sni="sbc.example", client_random="00" * 32,
        master_secret="11" * 48, keylog_lines=("CLIENT_RANDOM " + "00" * 32 + " " + "11" * 48,),
        peer_chain_der=(b"leaf-der",), client_hello=HELLO,
    )
    summaries = {b"leaf-der": LEAF}
    members, chain = raw.handover()
    assert chain == (b"leaf-der",) and "peer_chain" not in members and "client_offer" not in members
    rebuilt = HandshakeFacts.from_dict(json.loads(json.dumps(members)))
    rebuilt = dataclasses.replace(rebuilt, peer_chain=tuple(summaries[der] for der in chain))
    assert rebuilt == raw.facts(summaries.__getitem__)
    assert rebuilt.client_offer == HELLO.summary() and rebuilt.peer_chain == (LEAF,)
    assert dataclasses.replace(raw, client_hello=None).handover()[0].get("client_hello") is None


def test_a_hello_as_numbers_round_trips_and_a_bad_one_is_named() -> None:
    assert ClientHello.from_members(json.loads(json.dumps(HELLO.members()))) == HELLO
    for bad, name in (([], "must be an object"), ({**HELLO.members(), "cipher_suites": ["x"]}, "cipher_suites"),
                      ({**HELLO.members(), "versions": [70000]}, "versions"),
                      ({**HELLO.members(), "sni": 3}, "sni"), ({**HELLO.members(), "legacy_version": None}, "legacy")):
        with pytest.raises(ValueError, match=name):
            ClientHello.from_members(bad)
    with pytest.raises(ValueError, match="cipher_suites"):
        HandshakeFacts.from_dict({**facts().as_dict(), "client_hello": {**HELLO.members(), "cipher_suites": None}})

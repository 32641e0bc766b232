"""The allow-list parsed in the config layer, and the config layer's own imports."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from siptap.config import AllowEntries, parse_allow_entries

SHIPPED = Path(__file__).resolve().parents[2] / "config.toml"


def test_entries_are_normalised_for_matching() -> None:
    fp = "AB:" * 31 + "CD"
    parsed = parse_allow_entries([" CN : Acme E-SBC ", "san:DNS:Sbc.Example", f"sha256:{fp}", "SAN:IP:10.0.0.1"])
    assert parsed == AllowEntries(
        common_names=frozenset({"Acme E-SBC"}),  # a CN is matched exactly
        sans=frozenset({"dns:sbc.example", "ip:10.0.0.1"}),
        fingerprints=frozenset({("ab" * 31) + "cd"}),
    )
    assert parsed


def test_empty_list_allows_any_verified_certificate() -> None:
    assert not parse_allow_entries([])


@pytest.mark.parametrize(("entry", "problem"), [
    ("acme", "expected cn:NAME, san:NAME, sha256:HEX or issuer:DN"),
    ("cn:  ", "expected cn:NAME, san:NAME, sha256:HEX or issuer:DN"),
    ("sha256:abcd", "SHA-256 fingerprint needs 64 hex digits"),
    ("sha256:" + "g" * 64, "SHA-256 fingerprint needs 64 hex digits"),
    ("uri:sip:x", "unknown kind 'uri' (cn, san, sha256, issuer)"),
])
def test_bad_entry_names_itself(entry: str, problem: str) -> None:
    with pytest.raises(ValueError, match="allow-list entry") as caught:
        parse_allow_entries(["cn:ok", entry])
    assert str(caught.value) == f"allow-list entry {entry!r}: {problem}"


def test_loading_a_config_imports_no_layer_above() -> None:
    """`siptap check` and the supervisor load configs; that must not drag in TLS, relay or mirror."""
    code = (
        "import sys; from siptap.config import load_config; load_config(sys.argv[1]); "
        "print(sorted(m for m in sys.modules if m.split('.')[:2] in "
        "(['siptap', 'tls'], ['siptap', 'relay'], ['siptap', 'mirror'], ['siptap', 'app'])))"
    )
    out = subprocess.run([sys.executable, "-c", code, str(SHIPPED)], check=True, capture_output=True, text=True)
    assert out.stdout.strip() == "[]"

"""CRLs as a user meets them: the `crl`/`crl_check` config keys, `siptap check` refusing an
unusable CRL file with the config key and the file named, and `siptap certs revoke`."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509

from siptap.config import parse_config
from siptap.errors import CertificateError, ConfigError
from siptap.tls.pem import load_certificate_chain, load_crls
from siptap.tools.pki import issue_leaf, revoke, write_crl
from tests.test_check import assert_refused, siptap, write_config

CRL_HINT = "siptap: hint: for the lab PKI, `siptap certs revoke --dir certs` (re)writes certs/crl.pem (fresh nextUpdate)"


@pytest.fixture
def own_pki(pki: Path, tmp_path: Path) -> Path:
    """A copy of the session PKI: these tests write crl.pem into it."""
    directory = tmp_path / "pki"
    shutil.copytree(pki, directory)
    return directory


def serial(pki: Path, name: str) -> int:
    return load_certificate_chain(pki / f"{name}.pem")[0].serial_number


def test_crl_keys_parse_and_default(own_pki: Path, tmp_path: Path) -> None:
    config_path = write_config(tmp_path, own_pki, customer='crl = "crl.pem"\ncrl_check = "chain"',
                               core_tls='crl = "core-crl.pem"')
    config = parse_config(tomllib.loads(config_path.read_text()), config_path)
    route = config.routes[0]
    assert route.customer.crl == tmp_path / "crl.pem"  # relative to the config's folder
    assert route.customer.crl_check == "chain"
    assert (route.core_tls.crl, route.core_tls.crl_check) == (tmp_path / "core-crl.pem", "leaf")
    plain = write_config(tmp_path, own_pki, name="plain.toml")
    assert parse_config(tomllib.loads(plain.read_text()), plain).routes[0].customer.crl is None


@pytest.mark.parametrize(("section", "text", "key", "problem"), [
    ("customer", 'crl = "x.pem"\ncrl_check = "all"', "route[0].customer.crl_check", "'all' is not one of leaf, chain"),
    ("customer", 'crl = "x.pem"\nverify_client = false', "route[0].customer.crl", "needs verify_client = true"),
    ("core_tls", 'crl = "x.pem"\nverify = false', "route[0].core_tls.crl", "needs verify = true"),
])
def test_crl_config_errors(own_pki: Path, tmp_path: Path, section: str, text: str, key: str, problem: str) -> None:
    path = write_config(tmp_path, own_pki, **{section: text})
    with pytest.raises(ConfigError) as info:
        parse_config(tomllib.loads(path.read_text()), path)
    assert info.value.key == key and problem in info.value.problem


def test_check_refuses_unusable_crl_files_naming_key_and_file(own_pki: Path, tmp_path: Path) -> None:
    crl = own_pki / "crl.pem"
    config = write_config(tmp_path, own_pki, customer=f'crl = "{crl}"')
    prefix = f"siptap: error: {config}: route[0].customer.crl (route 'lab'): {crl}"

    assert_refused(siptap("check", "--config", str(config), cwd=tmp_path),
                   f"{prefix}: cannot read: No such file or directory", hint=CRL_HINT)

    crl.write_text("-----BEGIN CERTIFICATE-----\nnot a CRL\n-----END CERTIFICATE-----\n")
    assert_refused(siptap("check", "--config", str(config), cwd=tmp_path),
                   f"{prefix}: no PEM CRL found (expected -----BEGIN X509 CRL-----)")

    past = datetime.now(UTC) - timedelta(days=40)
    write_crl(own_pki, [], now=past, next_update=past + timedelta(days=30))
    result = siptap("check", "--config", str(config), cwd=tmp_path)
    expired = load_crls(crl)[0].next_update_utc
    assert_refused(result, f"{prefix}: CRL (issuer O=siptap lab,CN=siptap lab CA) expired on "
                   f"{expired:%Y-%m-%d %H:%M} UTC (nextUpdate): OpenSSL would refuse every client certificate; "
                   "publish a fresh CRL, then reload (SIGHUP)", hint=CRL_HINT)

    # Signed by a CA siptap does not trust for this leg.
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    shutil.copy(own_pki / "foreign-ca.pem", foreign / "ca.pem")
    shutil.copy(own_pki / "foreign-ca.key", foreign / "ca.key")
    shutil.copy(write_crl(foreign, []), crl)
    assert_refused(siptap("check", "--config", str(config), cwd=tmp_path),
                   f"{prefix}: CRL (issuer O=siptap lab,CN=siptap foreign CA foreign-ca) is not signed by any "
                   f"CA in {own_pki / 'ca.pem'}")

    write_crl(own_pki, [])
    result = siptap("check", "--config", str(config), cwd=tmp_path)
    assert (result.returncode, result.stderr) == (0, ""), result.stderr


def test_core_leg_crl_error_names_core_tls_key(own_pki: Path, tmp_path: Path) -> None:
    crl = tmp_path / "garbage.pem"
    crl.write_text("-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n")
    config = write_config(tmp_path, own_pki, core_tls=f'crl = "{crl}"')
    result = siptap("check", "--config", str(config), cwd=tmp_path)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith(f"siptap: error: {config}: route[0].core_tls.crl (route 'lab'): {crl}: CRL #1 is not a valid PEM CRL")


def test_certs_revoke_cli_is_cumulative_and_refreshes(own_pki: Path, tmp_path: Path) -> None:
    issue_leaf(own_pki, "alice", usage="client")
    issue_leaf(own_pki, "bob", usage="client")

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "siptap", "certs", "revoke", "--dir", str(own_pki), *args],
                              capture_output=True, text=True, timeout=20)

    first = run("--name", "alice")
    assert first.returncode == 0, first.stderr
    assert first.stdout == f"wrote {own_pki / 'crl.pem'} (1 revoked: {serial(own_pki, 'alice'):X}; next update in 30 days)\n"
    crl = load_crls(own_pki / "crl.pem")[0]
    assert [e.serial_number for e in crl] == [serial(own_pki, "alice")]
    assert timedelta(days=29) < crl.next_update_utc - datetime.now(UTC) <= timedelta(days=30)
    assert (own_pki / "crl.pem").stat().st_mode & 0o777 == 0o644
    alice_date = crl.get_revoked_certificate_by_serial_number(serial(own_pki, "alice")).revocation_date_utc

    assert run("--name", "bob", "--days", "7").returncode == 0
    crl = load_crls(own_pki / "crl.pem")[0]
    assert sorted(e.serial_number for e in crl) == sorted([serial(own_pki, "alice"), serial(own_pki, "bob")])
    assert crl.get_revoked_certificate_by_serial_number(serial(own_pki, "alice")).revocation_date_utc == alice_date
    assert crl.next_update_utc - datetime.now(UTC) <= timedelta(days=7)
    number = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number

    refreshed = run()  # no --name: re-sign, same list, later nextUpdate, next CRL number
    assert refreshed.returncode == 0 and "(2 revoked:" in refreshed.stdout
    crl = load_crls(own_pki / "crl.pem")[0]
    assert len(list(crl)) == 2 and crl.next_update_utc - datetime.now(UTC) > timedelta(days=29)
    assert crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == number + 1

    refused = run("--name", "foreign")  # issued by another CA
    assert refused.returncode == 1
    assert refused.stderr == (f"siptap: error: {own_pki / 'foreign.pem'}: not issued by the lab CA "
                              f"{own_pki / 'ca.pem'}: cannot revoke it here\n")
    assert run("--name", "nobody").stderr.endswith("nobody.pem: cannot read: No such file or directory\n")


def test_revoke_library_refuses_foreign_and_keeps_going_from_a_foreign_crl(own_pki: Path) -> None:
    with pytest.raises(CertificateError, match="not issued by the lab CA"):
        revoke(own_pki, "foreign")
    # A crl.pem the lab CA did not sign (e.g. copied over by mistake) is replaced, not merged.
    (own_pki / "crl.pem").write_text("garbage")
    path, serials = revoke(own_pki, "other-customer")
    assert serials == [serial(own_pki, "other-customer")]
    assert [e.serial_number for e in load_crls(path)[0]] == serials

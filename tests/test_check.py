"""`siptap check` and `siptap run` as a user meets them: a subprocess, an exit status and one
line on stderr naming the config file, the key path and the problem (plus, at most, a hint
line), never a traceback. Start-up (`run`) refuses a bad config with the same line.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from siptap.tls.pem import load_certificate_chain, load_private_key
from tests.integration.peers import free_port

ROOT = Path(__file__).resolve().parent.parent
CERTS_HINT = "siptap: hint: for the lab PKI run `siptap certs init --dir certs` next to the config file"


def siptap(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "siptap", *args], cwd=cwd, capture_output=True, text=True, timeout=20)


def write_config(directory: Path, pki: Path, *, cert: Path | None = None, key: Path | None = None,
                 customer: str = "", core_tls: str = "", name: str = "lab-check.toml",
                 listen_port: int | None = None) -> Path:
    """A one-route config naming the session PKI by absolute path. Its listen port is a free
    one (``check`` binds it for a moment to prove it can), unless ``listen_port`` says which."""
    path = directory / name
    path.write_text(f"""
[log]
format = "json"

[[route]]
name = "lab"
listen = "127.0.0.1:{listen_port or free_port()}"
core = {{ address = "127.0.0.1:5062", server_name = "localhost" }}

[route.customer]
cert = "{cert or pki / 'proxy-server.pem'}"
key = "{key or pki / 'proxy-server.key'}"
client_ca = "{pki / 'ca.pem'}"
{customer}

[route.core_tls]
cert = "{pki / 'proxy-client.pem'}"
key = "{pki / 'proxy-client.key'}"
ca = "{pki / 'ca.pem'}"
{core_tls}
""")
    return path


def assert_refused(result: subprocess.CompletedProcess[str], line: str, *, hint: str | None = None) -> None:
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 1, (result.returncode, result.stderr)
    assert result.stderr.splitlines() == [line] + ([hint] if hint else []), result.stderr
    assert "OK" not in result.stdout


# -- siptap check -------------------------------------------------------------------------------


def listen_of(config: Path) -> str:
    """The first route's listen address, as check prints it."""
    return str(tomllib.loads(config.read_text())["route"][0]["listen"])


def test_check_shipped_config_with_lab_pki_is_ok(tmp_path: Path, pki: Path) -> None:
    # The shipped file with only its two listening ports moved to free ones: check binds them
    # for a moment, and 5061/9464 may be taken on a test machine (tests never use fixed ports).
    listen, metrics = free_port(), free_port()
    shipped = (ROOT / "config.toml").read_text()
    assert shipped.count('"127.0.0.1:5061"') == 1 and shipped.count('"127.0.0.1:9464"') == 1
    (tmp_path / "config.toml").write_text(shipped.replace('"127.0.0.1:5061"', f'"127.0.0.1:{listen}"')
                                          .replace('"127.0.0.1:9464"', f'"127.0.0.1:{metrics}"'))
    (tmp_path / "certs").symlink_to(pki)
    result = siptap("check", cwd=tmp_path)  # default --config config.toml, paths against its folder
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout == f"config.toml: OK: lab (127.0.0.1:{listen} -> 127.0.0.1:5062)\n"
    assert not (tmp_path / "captures").exists()  # check starts nothing, creates nothing


def test_check_missing_cert_file_with_hint(tmp_path: Path, pki: Path) -> None:
    missing = tmp_path / "certs" / "proxy-server.pem"
    config = write_config(tmp_path, pki, cert=missing)
    assert_refused(siptap("check", "--config", str(config), cwd=tmp_path),
                   f"siptap: error: {config}: route[0].customer.cert (route 'lab'): {missing}: cannot read: No such file or directory",
                   hint=CERTS_HINT)


def test_check_world_readable_key(tmp_path: Path, pki: Path) -> None:
    key = tmp_path / "proxy-server.key"
    shutil.copy(pki / "proxy-server.key", key)
    key.chmod(0o644)
    config = write_config(tmp_path, pki, key=key)
    assert_refused(siptap("check", "--config", str(config), cwd=tmp_path),
                   f"siptap: error: {config}: route[0].customer.key (route 'lab'): {key}: "
                   "private key is readable by group/others (mode 0644); chmod 600 it")


def test_check_key_does_not_match_certificate(tmp_path: Path, pki: Path) -> None:
    cert, key = pki / "proxy-server.pem", pki / "serveronly.key"
    config = write_config(tmp_path, pki, cert=cert, key=key)
    assert_refused(siptap("check", "--config", str(config), cwd=tmp_path),
                   f"siptap: error: {config}: route[0].customer.key (route 'lab'): {key}: "
                   f"private key does not match the certificate in {cert}")


def test_check_expired_server_certificate(tmp_path: Path, pki: Path) -> None:
    cert = pki / "expired.pem"
    config = write_config(tmp_path, pki, cert=cert, key=pki / "expired.key")
    expired_on = load_certificate_chain(cert)[0].not_valid_after_utc
    assert_refused(siptap("check", "--config", str(config), cwd=tmp_path),
                   f"siptap: error: {config}: route[0].customer.cert (route 'lab'): {cert}: "
                   f"certificate expired on {expired_on:%Y-%m-%d %H:%M} UTC")


def test_check_ec_server_key_with_forced_rsa(tmp_path: Path, pki: Path) -> None:
    key = pki / "ec-server.key"
    config = write_config(tmp_path, pki, cert=pki / "ec-server.pem", key=key)
    kind = type(load_private_key(key)).__name__.removeprefix("_")
    assert_refused(siptap("check", "--config", str(config), cwd=tmp_path),
                   f"siptap: error: {config}: route[0].customer.key (route 'lab'): {key}: key is {kind}, but RSA key exchange "
                   'needs an RSA server key (use an RSA certificate, or key_exchange = "any")')
    # The same key is fine once ECDHE is allowed.
    config = write_config(tmp_path, pki, cert=pki / "ec-server.pem", key=key, customer='key_exchange = "any"')
    result = siptap("check", "--config", str(config), cwd=tmp_path)
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout == f"{config}: OK: lab ({listen_of(config)} -> 127.0.0.1:5062)\n"


def test_check_bad_ciphers_named_in_their_own_section(tmp_path: Path, pki: Path) -> None:
    config = write_config(tmp_path, pki, customer='ciphers = "AES256-GCM-SHA384"', core_tls='ciphers = "NO-SUCH-SUITE"')
    assert_refused(siptap("check", "--config", str(config), cwd=tmp_path),
                   f"siptap: error: {config}: route[0].core_tls.ciphers (route 'lab'): OpenSSL accepts none of 'NO-SUCH-SUITE'")


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ('[[route]]\nname = "lab"\nlisten = "127.0.0.1:5061"\ncolour = "red"\n',
         "route[0].colour (route 'lab'): unknown key (known here: core, core_tls, customer, limits, listen, match, mirror_legs, name, reverse)"),
    ],
)
def test_check_loader_errors(tmp_path: Path, content: str, problem: str) -> None:
    config = tmp_path / "lab-check.toml"
    config.write_text(content)
    assert_refused(siptap("check", "-c", str(config), cwd=tmp_path), f"siptap: error: {config}: {problem}")


def test_check_invalid_toml_names_the_line(tmp_path: Path) -> None:
    config = tmp_path / "lab-check.toml"
    config.write_text("[log]\nlevel = info\n")
    result = siptap("check", "--config", str(config), cwd=tmp_path)
    assert "Traceback" not in result.stderr and result.returncode == 1
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"siptap: error: {config}: invalid TOML: ")  # tomllib's own words follow
    assert line.endswith("(at line 2, column 9)") or "line 2" in line


def test_check_missing_config_file(tmp_path: Path) -> None:
    assert_refused(siptap("check", "--config", "nowhere.toml", cwd=tmp_path),
                   "siptap: error: nowhere.toml: cannot read: No such file or directory")


# -- siptap run: the same checks at start-up ------------------------------------------------------


@pytest.mark.parametrize("problem", ["certificate", "loader"])
def test_run_refuses_bad_config_like_check(tmp_path: Path, pki: Path, problem: str) -> None:
    if problem == "certificate":
        config = write_config(tmp_path, pki, cert=pki / "ec-server.pem", key=pki / "ec-server.key")
    else:
        config = write_config(tmp_path, pki, customer='key_exchange = "dh"')
    checked = siptap("check", "--config", str(config), cwd=tmp_path)
    assert checked.returncode == 1
    (line,) = checked.stderr.splitlines()
    assert line.startswith(f"siptap: error: {config}: route[0].customer.key")
    ran = siptap("run", "--config", str(config), cwd=tmp_path)
    assert_refused(ran, line)
    assert '"ready"' not in ran.stdout and "listening" not in ran.stdout  # never got as far as binding


# -- in process: which config block a certificate problem is blamed on ------------------------------


def test_problem_is_blamed_on_the_block_that_failed(tmp_path: Path, pki: Path) -> None:
    """The customer does not verify clients, so only core_tls opens the (missing) CA bundle that
    both blocks name: the error must point at core_tls.ca, not at customer.client_ca."""
    from siptap.app import build_plans
    from siptap.config import load_config
    from siptap.errors import ConfigError

    missing = tmp_path / "gone-ca.pem"
    config_path = write_config(tmp_path, pki, customer="verify_client = false")
    config_path.write_text(config_path.read_text().replace(str(pki / "ca.pem"), str(missing)))
    config = load_config(config_path)
    with pytest.raises(ConfigError) as info:
        build_plans(config, config.routes[0])
    assert str(info.value) == f"{config_path}: route[0].core_tls.ca (route 'lab'): {missing}: cannot read: No such file or directory"
    assert info.value.hint == CERTS_HINT.removeprefix("siptap: hint: ")

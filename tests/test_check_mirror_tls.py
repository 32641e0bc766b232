"""`siptap check` on mirror outputs over TLS (`transport = "tls"` in [[mirror.hep]] and
[[mirror.jsonl]]): a bad certificate, key or CA file, or keys that do not go together, is one
line naming the config file, the key and the problem, as for the routes' TLS files."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from siptap.tools.pki import issue_leaf
from tests.test_check import CERTS_HINT, assert_refused, siptap, write_config


def with_mirror(config: Path, section: str) -> Path:
    config.write_text(config.read_text() + "\n" + section)
    return config


def hep_tls(pki: Path, **override: str) -> str:
    keys = {"address": "127.0.0.1:9061", "transport": "tls", "cert": str(pki / "proxy-client.pem"),
            "key": str(pki / "proxy-client.key"), "ca": str(pki / "ca.pem")} | override
    return "[[mirror.hep]]\n" + "".join(f'{k} = "{v}"\n' for k, v in keys.items() if v)


def test_check_accepts_tls_outputs_without_connecting(tmp_path: Path, pki: Path) -> None:
    config = with_mirror(write_config(tmp_path, pki), hep_tls(pki) + f"""
[[mirror.jsonl]]
transport = "tls"
address = "127.0.0.1:9062"
ca = "{pki / 'ca.pem'}"
server_name = "localhost"
""")
    result = siptap("check", "--config", str(config), cwd=tmp_path)  # nothing listens on 9061/9062
    assert (result.returncode, result.stderr) == (0, ""), result.stderr


def test_check_names_a_missing_ca_file(tmp_path: Path, pki: Path) -> None:
    missing = tmp_path / "certs" / "collector-ca.pem"
    config = with_mirror(write_config(tmp_path, pki), hep_tls(pki, ca=str(missing)))
    assert_refused(siptap("check", "--config", str(config), cwd=tmp_path),
                   f"siptap: error: {config}: mirror.hep[0].ca: {missing}: cannot read: No such file or directory",
                   hint=CERTS_HINT)


def test_check_names_a_key_that_is_not_the_certificates(tmp_path: Path, pki: Path) -> None:
    key = pki / "customer.key"
    config = with_mirror(write_config(tmp_path, pki), hep_tls(pki, key=str(key)))
    assert_refused(siptap("check", "--config", str(config), cwd=tmp_path),
                   f"siptap: error: {config}: mirror.hep[0].key: {key}: "
                   f"private key does not match the certificate in {pki / 'proxy-client.pem'}")


def test_check_names_a_key_others_can_read(tmp_path: Path, pki: Path) -> None:
    key = tmp_path / "client.key"
    shutil.copy(pki / "proxy-client.key", key)
    key.chmod(0o640)
    config = with_mirror(write_config(tmp_path, pki), "[[mirror.jsonl]]\ntransport = \"udp\"\n"
                         "address = \"127.0.0.1:9999\"\n\n" + hep_tls(pki).replace(
                             "[[mirror.hep]]", "[[mirror.jsonl]]").replace(
                             str(pki / "proxy-client.key"), str(key)))
    assert_refused(siptap("check", "--config", str(config), cwd=tmp_path),
                   f"siptap: error: {config}: mirror.jsonl[1].key: {key}: "
                   "private key is readable by group/others (mode 0640); chmod 600 it")


@pytest.mark.parametrize(("section", "problem"), [
    (hep_tls(Path("/pki"), key=""), "mirror.hep[0].key: missing: siptap's client certificate needs both cert and key"),
    ('[[mirror.hep]]\naddress = "127.0.0.1:9060"\nca = "ca.pem"\n',
     "mirror.hep[0].ca: only used with transport = \"tls\" (this output's transport is 'udp')"),
    ('[[mirror.jsonl]]\ntransport = "tls"\npath = "x.sock"\n', "mirror.jsonl[0].address: transport 'tls' needs"),
    (hep_tls(Path("/pki"), server_name=" "), "mirror.hep[0].server_name: must not be empty"),
])
def test_check_names_tls_keys_that_do_not_go_together(tmp_path: Path, pki: Path, section: str, problem: str) -> None:
    config = with_mirror(write_config(tmp_path, pki), section)
    result = siptap("check", "--config", str(config), cwd=tmp_path)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.startswith(f"siptap: error: {config}: {problem}"), result.stderr


def test_check_warns_about_a_mirror_client_certificate_expiring_soon(tmp_path: Path, pki: Path) -> None:
    """The mirror's own client certificate is watched like the routes' (an expired one makes
    the collector refuse the mirror): check warns, naming the output's key."""
    cert, key = issue_leaf(tmp_path, "short-mirror", usage="client", ca_dir=pki, days=10)
    config = with_mirror(write_config(tmp_path, pki), hep_tls(pki, cert=str(cert), key=str(key)))
    result = siptap("check", "--config", str(config), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"siptap: warning: {config}: mirror.hep[0].cert: {cert}: certificate "), line
    assert "expires in 9 days" in line or "expires in 10 days" in line, line

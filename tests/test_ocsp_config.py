"""The OCSP keys as a user meets them: defaults, `siptap check` refusing a bad value with
the file and the key named, `siptap certs ocsp` and the AIA options of the lab PKI."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from siptap.config import parse_config
from siptap.tls.ocsp import responder_urls
from siptap.tls.pem import load_certificate_chain
from tests.test_check import assert_refused, siptap, write_config


def test_ocsp_keys_default_off_and_parse(pki: Path, tmp_path: Path) -> None:
    plain = write_config(tmp_path, pki, name="plain.toml")
    route = parse_config(tomllib.loads(plain.read_text()), plain).routes[0]
    assert (route.customer.ocsp, route.customer.ocsp_url, route.customer.ocsp_timeout) == ("off", None, 3.0)
    assert route.core_tls.ocsp == "off"
    path = write_config(tmp_path, pki, customer='ocsp = "soft"\nocsp_url = "http://ocsp.example.net:8080/x"',
                        core_tls='ocsp = "hard"\nocsp_timeout = 1.5')
    route = parse_config(tomllib.loads(path.read_text()), path).routes[0]
    assert (route.customer.ocsp, route.customer.ocsp_url) == ("soft", "http://ocsp.example.net:8080/x")
    assert (route.core_tls.ocsp, route.core_tls.ocsp_timeout) == ("hard", 1.5)


@pytest.mark.parametrize(("section", "text", "key", "problem"), [
    ("customer", 'ocsp = "strict"', "route[0].customer.ocsp", "'strict' is not one of off, soft, hard"),
    ("customer", 'ocsp = "soft"\nocsp_url = "https://ocsp.example.net/"', "route[0].customer.ocsp_url",
     "'https://ocsp.example.net/' is not an http:// URL (OCSP responders serve plain HTTP; "
     "e.g. \"http://ocsp.example.net/\")"),
    ("customer", 'ocsp = "soft"\nocsp_url = "http://ocsp.example.net:99999/"', "route[0].customer.ocsp_url",
     "'http://ocsp.example.net:99999/': bad port"),
    ("customer", 'ocsp = "hard"\nocsp_timeout = 0', "route[0].customer.ocsp_timeout",
     "must be more than 0 and at most 60 seconds"),
    ("customer", 'ocsp = "hard"\nverify_client = false', "route[0].customer.ocsp",
     "OCSP checks the peer's verified certificate: it needs verify_client = true"),
    ("core_tls", 'ocsp = "soft"\nverify = false', "route[0].core_tls.ocsp",
     "OCSP checks the peer's verified certificate: it needs verify = true"),
    ("core_tls", 'ocsp_timeout = "3"', "route[0].core_tls.ocsp_timeout", "expected a number of seconds, got a string"),
])
def test_check_refuses_bad_ocsp_keys_naming_file_and_key(pki: Path, tmp_path: Path, section: str, text: str,
                                                        key: str, problem: str) -> None:
    config = write_config(tmp_path, pki, **{section: text})
    assert_refused(siptap("check", "--config", str(config), cwd=tmp_path), f"siptap: error: {config}: {key} (route 'lab'): {problem}")


def test_check_accepts_ocsp_on_both_legs(pki: Path, tmp_path: Path) -> None:
    config = write_config(tmp_path, pki, customer='ocsp = "hard"\nocsp_url = "http://127.0.0.1:8888/"',
                          core_tls='ocsp = "soft"')
    result = siptap("check", "--config", str(config), cwd=tmp_path)
    assert result.returncode == 0 and result.stderr == "", result.stderr


def test_certs_options_put_the_responder_in_the_aia(tmp_path: Path) -> None:
    url = "http://127.0.0.1:8888/"
    for args in (["init", "--dir", "certs", "--ocsp-url", url],
                 ["issue", "--dir", "certs", "--name", "extra", "--client", "--ocsp-url", url]):
        result = subprocess.run([sys.executable, "-m", "siptap", "certs", *args], cwd=tmp_path, capture_output=True,
                                text=True, timeout=60)
        assert result.returncode == 0, result.stderr
    for name in ("customer", "core", "proxy-client", "extra"):
        assert responder_urls(load_certificate_chain(tmp_path / "certs" / f"{name}.pem")[0]) == (url,)
    assert responder_urls(load_certificate_chain(tmp_path / "certs" / "ca.pem")[0]) == ()

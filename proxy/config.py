"""siptap's configuration: TOML in, frozen dataclasses out.

Every problem is reported as a :class:`~proxy.errors.ConfigError` naming the file and the
dotted key path, because a user fixing a lab at 2 a.m. needs to know exactly which line.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

# The six TLS_RSA_WITH_AES_* suites (OpenSSL names), strongest first. A server preferring
# its own order with only these makes a client that lists ECDHE first still pick RSA.
RSA_KEX_CIPHERS = "AES256-GCM-SHA384:AES128-GCM-SHA256:AES256-SHA256:AES128-SHA256:AES256-SHA:AES128-SHA"
# sngrep 1.6 implements only 0x009D, 0x0035 and 0x002F.
SNGREP_CIPHERS = "AES256-GCM-SHA384:AES256-SHA:AES128-SHA"
# Core leg default: forward-secret AEAD suites for TLS 1.2 (TLS 1.3 uses OpenSSL's defaults).
MODERN_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:ECDHE+AES:!aNULL:!eNULL:!MD5:!DSS"

TLS_VERSIONS = ("TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3")


@dataclass(frozen=True, slots=True)
class ServerTlsSettings:
    """siptap as the TLS server (customer leg; core leg of a reverse route)."""

    cert: Path
    key: Path
    client_ca: Path
    verify_client: bool = True
    verify_depth: int = 4
    allow: tuple[str, ...] = ()
    key_exchange: str = "rsa"  # "rsa": TLS 1.2 + kRSA suites only; "any": ECDHE and TLS 1.3 too
    min_version: str = "TLSv1.2"
    max_version: str = "TLSv1.2"
    ciphers: str | None = None  # override; default follows key_exchange / sngrep_compatible
    resumption: bool = False
    sngrep_compatible: bool = False
    allow_insecure_key_permissions: bool = False

    @property
    def effective_ciphers(self) -> str:
        if self.ciphers:
            return self.ciphers
        if self.sngrep_compatible:
            return SNGREP_CIPHERS
        if self.key_exchange == "rsa":
            return RSA_KEX_CIPHERS
        return MODERN_CIPHERS + ":" + RSA_KEX_CIPHERS

    @property
    def effective_max_version(self) -> str:
        # Forced RSA key exchange cannot exist in TLS 1.3.
        return "TLSv1.2" if self.key_exchange == "rsa" else self.max_version


@dataclass(frozen=True, slots=True)
class ClientTlsSettings:
    """siptap as the TLS client (core leg; customer leg of a reverse route)."""

    cert: Path | None
    key: Path | None
    ca: Path | None
    verify: bool = True
    server_name: str | None = None  # SNI and the name checked against the certificate
    check_hostname: bool = True
    send_sni: bool = True
    min_version: str = "TLSv1.2"
    max_version: str = "TLSv1.3"
    ciphers: str = MODERN_CIPHERS
    tls13_ciphersuites: str | None = None
    allow_insecure_key_permissions: bool = False

"""A route's settings: the listen addresses, the two TLS legs, the cores, the limits.

Frozen dataclasses that :class:`siptap.config.loader.Loader` builds from ``[[route]]``
tables; the metadata and ``problems()`` methods carry what the field types cannot say
(TOML names, single-item shorthands, cross-field checks with their exact messages).
:mod:`siptap.tls.contexts` turns the TLS settings into OpenSSL contexts.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from siptap.addresses import Endpoint
from siptap.config.allow import parse_allow_entries
from siptap.config.loader import DEFAULTS, ONE_OR_MORE, TOML_NAME, choice
from siptap.config.mirror import LEG_CHOICES
from siptap.config.ocsp import DEFAULT_OCSP_TIMEOUT, OCSP_POLICIES, ocsp_problems

# The six TLS_RSA_WITH_AES_* suites (OpenSSL names), strongest first. A server preferring
# its own order with only these makes a client that lists ECDHE first still pick RSA.
RSA_KEX_CIPHERS = "AES256-GCM-SHA384:AES128-GCM-SHA256:AES256-SHA256:AES128-SHA256:AES256-SHA:AES128-SHA"
# sngrep 1.6 implements only 0x009D, 0x0035 and 0x002F.
SNGREP_CIPHERS = "AES256-GCM-SHA384:AES256-SHA:AES128-SHA"
# Core leg default: forward-secret AEAD suites for TLS 1.2 (TLS 1.3 uses OpenSSL's defaults).
MODERN_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:ECDHE+AES:!aNULL:!eNULL:!MD5:!DSS"

TLS_VERSIONS = ("TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3")
_TLS_ORDER = {v: i for i, v in enumerate(TLS_VERSIONS)}
DEFAULT_SIP_TLS_PORT = 5061
_SNI_NAME = re.compile(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*")


@dataclass(frozen=True, slots=True)
class ServerTlsSettings:
    """siptap as the TLS server (customer leg; core leg of a reverse route)."""

    cert: Path
    key: Path
    client_ca: Path
    verify_client: bool = True
    verify_depth: int = 4
    allow: tuple[str, ...] = ()
    key_exchange: str = field(default="rsa", metadata=choice("rsa", "any"))
    min_version: str = field(default="TLSv1.2", metadata=choice(*TLS_VERSIONS))
    # None: follows key_exchange (see effective_max_version).
    max_version: str | None = field(default=None, metadata=choice(*TLS_VERSIONS))
    ciphers: str | None = None  # override; default follows key_exchange / sngrep_compatible
    resumption: bool = False
    sngrep_compatible: bool = False
    allow_insecure_key_permissions: bool = False
    # PEM file of one or more CRLs, each signed by a CA in client_ca; reloaded on SIGHUP.
    crl: Path | None = None
    crl_check: str = field(default="leaf", metadata=choice("leaf", "chain"))  # chain: every CA too
    # OCSP for the client's certificate (siptap.tls.ocsp_check): off, soft or hard.
    ocsp: str = field(default="off", metadata=choice(*OCSP_POLICIES))
    ocsp_url: str | None = None  # the responder; default: the certificate's AIA
    ocsp_timeout: float = DEFAULT_OCSP_TIMEOUT

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
        """TLS 1.2 when RSA key exchange is forced (TLS 1.3 has none); with "any", the
        configured max_version, by default TLS 1.3: "any" exists to admit equipment that
        cannot do RSA key exchange, TLS 1.3-only E-SBCs among them (decryptable with the key log)."""
        if self.key_exchange == "rsa":
            return "TLSv1.2"
        return self.max_version or "TLSv1.3"

    def problems(self) -> list[tuple[str, str]]:
        """Cross-field checks, in the order the loader reports them (the first one wins)."""
        out = []
        if self.key_exchange == "rsa" and self.min_version == "TLSv1.3":
            out.append(("min_version", "RSA key exchange needs TLS 1.2; use key_exchange = \"any\" for TLS 1.3"))
        if _TLS_ORDER[self.min_version] > _TLS_ORDER[self.effective_max_version] and self.key_exchange != "rsa":
            out.append(("min_version", "min_version is above max_version"))
        if not 1 <= self.verify_depth <= 10:
            out.append(("verify_depth", "must be between 1 and 10"))
        if self.crl is not None and not self.verify_client:
            out.append(("crl", "a CRL needs verify_client = true"))
        out += ocsp_problems(self.ocsp, self.ocsp_url, self.ocsp_timeout, verifying=self.verify_client,
                             verify_key="verify_client")
        try:
            parse_allow_entries(self.allow)
        except ValueError as exc:
            out.append(("allow", str(exc)))
        return out


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
    min_version: str = field(default="TLSv1.2", metadata=choice(*TLS_VERSIONS))
    max_version: str = field(default="TLSv1.3", metadata=choice(*TLS_VERSIONS))
    ciphers: str = MODERN_CIPHERS
    tls13_ciphersuites: str | None = None
    allow_insecure_key_permissions: bool = False
    crl: Path | None = None  # CRLs for the peer's certificate, each signed by a CA in `ca`
    crl_check: str = field(default="leaf", metadata=choice("leaf", "chain"))
    # OCSP for the server's certificate; its stapled response is accepted (status_request).
    ocsp: str = field(default="off", metadata=choice(*OCSP_POLICIES))
    ocsp_url: str | None = None
    ocsp_timeout: float = DEFAULT_OCSP_TIMEOUT

    def problems(self) -> list[tuple[str, str]]:
        out = []
        if _TLS_ORDER[self.min_version] > _TLS_ORDER[self.max_version]:
            out.append(("min_version", "min_version is above max_version"))
        if self.crl is not None and (not self.verify or self.ca is None):
            out.append(("crl", "a CRL needs verify = true and a `ca` bundle whose CA signed it"))
        if (self.cert is None) != (self.key is None):
            out.append(("key" if self.key is None else "cert", "cert and key go together: give both or neither"))
        out += ocsp_problems(self.ocsp, self.ocsp_url, self.ocsp_timeout, verifying=self.verify, verify_key="verify")
        return out


@dataclass(frozen=True, slots=True)
class Upstream:
    """One core SBC; upstreams are tried in the order given (failover)."""

    TOML_SHORTHAND: ClassVar[str] = "address"  # `core = "10.0.0.1:5061"` is `core = {address = ...}`

    address: Endpoint
    server_name: str | None = None  # defaults to the host of `address`


@dataclass(frozen=True, slots=True)
class Limits:
    handshake_timeout: float = 10.0
    connect_timeout: float = 5.0
    # 0 disables. SIP trunks idle for hours between calls (CRLF keepalives at best): the
    # default never cuts them; dead peers are found by TCP keepalive instead.
    idle_timeout: float = 0.0
    half_close_timeout: float = 5.0
    max_connections: int = 1000
    max_sip_message: int = 65536

    def problems(self) -> list[tuple[str, str]]:
        out = []
        if self.max_connections < 1:
            out.append(("max_connections", "must be at least 1"))
        for name in ("handshake_timeout", "connect_timeout"):
            if getattr(self, name) <= 0:
                out.append((name, "must be positive"))
        if self.max_sip_message < 1024:
            out.append(("max_sip_message", "must be at least 1024 bytes"))
        return out


@dataclass(frozen=True, slots=True)
class ReverseRoute:
    """Core-initiated connections: siptap serves the core and re-originates to the E-SBC."""

    listen: tuple[Endpoint, ...] = field(metadata={ONE_OR_MORE: True})
    core_side: ServerTlsSettings
    customers: tuple[Upstream, ...] = field(metadata={ONE_OR_MORE: True, TOML_NAME: "customer"})
    # The E-SBC is dialled with RSA key-exchange suites only by default, so that leg is
    # decryptable with the E-SBC's server key too.
    customer_tls: ClientTlsSettings = field(metadata={DEFAULTS: {"ciphers": RSA_KEX_CIPHERS, "max_version": "TLSv1.2"}})


@dataclass(frozen=True, slots=True)
class RouteMatch:
    """Which connections a route takes on a listen address it shares with other routes
    (:mod:`siptap.config.listeners`): after the customer's handshake, the first route in
    config order whose match holds is the connection's. Both keys must hold when both are
    given; empty, the key does not narrow (a route with neither takes every connection)."""

    # The verified client certificate: the allow-list's forms (cn:, san:, sha256:, issuer:).
    client: tuple[str, ...] = ()
    # The SNI names (exact, case-insensitive). A route without `sni` takes the connections
    # whose SNI no route on its listener names, or that sent none (see listeners.py).
    sni: tuple[str, ...] = ()

    @property
    def sni_names(self) -> frozenset[str]:
        return frozenset(normalise_sni(name) for name in self.sni)

    def __bool__(self) -> bool:
        return bool(self.client or self.sni)

    def problems(self) -> list[tuple[str, str]]:
        out = []
        try:
            parse_allow_entries(self.client, what="entry")
        except ValueError as exc:
            out.append(("client", str(exc)))
        for index, name in enumerate(self.sni):
            if "*" in name:
                out.append((f"sni[{index}]", f"{name!r}: wildcards are not supported; list each name"))
            elif not _SNI_NAME.fullmatch(normalise_sni(name)):
                out.append((f"sni[{index}]", f"{name!r} is not a host name (letters, digits, '-' and '.')"))
        return out


def normalise_sni(name: str) -> str:
    """An SNI name as compared: lower case, no trailing dot (what OpenSSL hands over is ASCII)."""
    return name.strip().rstrip(".").lower()


@dataclass(frozen=True, slots=True)
class Route:
    name: str
    listen: tuple[Endpoint, ...] = field(metadata={ONE_OR_MORE: True})
    customer: ServerTlsSettings
    cores: tuple[Upstream, ...] = field(metadata={ONE_OR_MORE: True, TOML_NAME: "core"})
    core_tls: ClientTlsSettings
    limits: Limits = Limits()
    reverse: ReverseRoute | None = None
    # Needed only where routes share a listen address; see RouteMatch.
    match: RouteMatch = RouteMatch()
    # This route's connections: which legs' SIP is mirrored; None follows [mirror] legs.
    mirror_legs: str | None = field(default=None, metadata=choice(*LEG_CHOICES))

    def mirrored_legs(self, default: frozenset[str]) -> frozenset[str]:
        """The legs mirrored for this route: its ``mirror_legs``, else ``default`` ([mirror] legs)."""
        if self.mirror_legs is None:
            return default
        return frozenset({"customer", "core"}) if self.mirror_legs == "both" else frozenset({self.mirror_legs})

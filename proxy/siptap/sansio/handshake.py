"""The handshake record: what a TLS handshake established, or why it failed, as plain data.

``siptap.tls`` produces these records from a live ``SSL.Connection`` (see
:mod:`siptap.tls.facts`); the relay logs them, the mirror renders them, the tools print them.
None of those consumers should need pyOpenSSL or ``cryptography`` to do so, so this module is
standard library only: a certificate arrives here already summarised as strings, and the
failure reasons are the stable tokens logs, metrics and tests key on, not OpenSSL's codes.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = [
    "CertificateSummary",
    "FailureReason",
    "HandshakeFacts",
    "key_exchange_of",
    "vars_of",
]


class FailureReason(str, enum.Enum):  # noqa: UP042 - str() and format() of members are relied on as they are
    """Stable tokens for why a handshake failed: logs, metrics and tests key on these."""

    NO_SHARED_CIPHER = "no_shared_cipher"
    ECDHE_ONLY_CLIENT = "ecdhe_only_client"
    TLS13_ONLY_CLIENT = "tls13_only_client"
    PROTOCOL_VERSION = "protocol_version"
    NO_CLIENT_CERTIFICATE = "no_client_certificate"
    UNKNOWN_CA = "unknown_ca"
    CERTIFICATE_EXPIRED = "certificate_expired"
    CERTIFICATE_NOT_YET_VALID = "certificate_not_yet_valid"
    WRONG_KEY_USAGE = "wrong_key_usage"
    BAD_SIGNATURE = "bad_signature"
    CERTIFICATE_REVOKED = "certificate_revoked"
    CHAIN_TOO_LONG = "chain_too_long"
    CRL_UNUSABLE = "crl_unusable"  # our side: no CRL for the issuer, or it expired while running
    CERTIFICATE_INVALID = "certificate_invalid"
    HOSTNAME_MISMATCH = "hostname_mismatch"
    NOT_ALLOWED = "not_allowed"
    PEER_ALERT = "peer_alert"
    NOT_TLS = "not_tls"
    PROTOCOL_ERROR = "protocol_error"
    PEER_CLOSED = "peer_closed"
    TIMEOUT = "timeout"


@dataclass(frozen=True, slots=True)
class CertificateSummary:
    """One certificate of a peer's chain as the logs show it: names, serial, validity, SHA-256.

    Built by :func:`siptap.tls.facts.certificate_summary` (which parses the certificate); the
    dates are ISO 8601 in UTC, the serial and ``sha256`` (the DER's fingerprint) upper-case hex,
    the fingerprint's bytes separated by colons.
    """

    subject: str
    issuer: str
    serial: str
    not_before: str
    not_after: str
    sha256: str
    sans: tuple[str, ...]
    common_name: str | None


@dataclass(frozen=True, slots=True)
class HandshakeFacts:
    """One completed handshake on one leg. Secrets included by design: they are the product."""

    leg: str  # "customer" or "core"
    role: str  # our role: "server" or "client"
    version: str  # "TLSv1.2"
    cipher: str  # OpenSSL name, e.g. "AES256-GCM-SHA384"
    key_exchange: str  # "RSA", "ECDHE", "DHE", or "TLSv1.3 (x25519)"
    extended_master_secret: bool | None
    session_reused: bool
    sni: str | None
    client_random: str  # hex
    master_secret: str | None  # hex; TLS 1.2 only
    keylog_lines: tuple[str, ...]
    peer_chain: tuple[CertificateSummary, ...]
    client_offer: dict[str, object] | None = None  # server side: what the client's hello offered

    @property
    def rsa_key_exchange(self) -> bool:
        return self.key_exchange == "RSA"

    def as_dict(self, *, secrets: bool = True) -> dict[str, object]:
        """The record as JSON-ready members (logs, the JSON-lines sink); ``secrets=False``
        leaves out the master secret and the key-log lines."""
        out: dict[str, object] = {
            "leg": self.leg,
            "role": self.role,
            "version": self.version,
            "cipher": self.cipher,
            "key_exchange": self.key_exchange,
            "extended_master_secret": self.extended_master_secret,
            "session_reused": self.session_reused,
            "sni": self.sni,
            "client_random": self.client_random,
            "peer_chain": [vars_of(c) for c in self.peer_chain],
        }
        if secrets:
            out["master_secret"] = self.master_secret
            out["keylog"] = list(self.keylog_lines)
        if self.client_offer is not None:
            out["client_offer"] = self.client_offer
        return out


def vars_of(summary: CertificateSummary) -> dict[str, object]:
    """A certificate summary's fields by name (a slotted dataclass has no ``__dict__``)."""
    return {name: getattr(summary, name) for name in summary.__slots__}


def key_exchange_of(version: str, cipher: str, group: str | None) -> str:
    """The key exchange an OpenSSL cipher name implies: "RSA" is what makes a leg decryptable
    with the server key alone. TLS 1.3 names the group instead (its suites do not say)."""
    if version == "TLSv1.3":
        return f"TLSv1.3 ({group})" if group else "TLSv1.3"
    if cipher.startswith(("ECDHE-", "ECDH-")):
        return "ECDHE"
    if cipher.startswith(("DHE-", "EDH-")):
        return "DHE"
    if cipher.startswith(("PSK-", "RSA-PSK", "SRP-")):
        return cipher.split("-", 1)[0]
    return "RSA"

"""The handshake record: what a TLS handshake established, or why it failed, as plain data.

``siptap.tls`` produces a :class:`RawHandshake` from a live ``SSL.Connection`` (see
:mod:`siptap.tls.facts`): the peer's chain as DER, nothing parsed or rendered, since the
relay only hands it over (issue 16 item 6). The mirror process turns it into
:class:`HandshakeFacts` (a certificate summarised as strings by :mod:`siptap.certificates`)
and renders those; the tools print them. This module is standard library only, and the
failure reasons are the stable tokens logs, metrics and tests key on, not OpenSSL's codes.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from siptap.sansio.tls_hello import ClientHello, described

__all__ = [
    "CertificateSummary",
    "FailureReason",
    "HandshakeFacts",
    "RawHandshake",
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
    # OCSP (checked after the handshake, siptap.tls.ocsp_check): the responder says revoked;
    # or no usable answer (unreachable, too slow, unverifiable) under ocsp = "hard".
    OCSP_REVOKED = "ocsp_revoked"
    OCSP_UNAVAILABLE = "ocsp_unavailable"
    CERTIFICATE_INVALID = "certificate_invalid"
    HOSTNAME_MISMATCH = "hostname_mismatch"
    NOT_ALLOWED = "not_allowed"
    PEER_ALERT = "peer_alert"
    # A TLS peer whose keys do not match ours: a record that fails its MAC or AEAD tag (a
    # corrupted record, or an RSA premaster encrypted to another key: OpenSSL hides the failed
    # RSA decryption, so the wrong keys show at the client's Finished), or a handshake
    # signature or Finished that does not verify (TLS alert decrypt_error).
    BAD_RECORD_MAC = "bad_record_mac"
    DECRYPT_ERROR = "decrypt_error"
    NOT_TLS = "not_tls"
    PROTOCOL_ERROR = "protocol_error"
    PEER_CLOSED = "peer_closed"
    TIMEOUT = "timeout"


@dataclass(frozen=True, slots=True)
class CertificateSummary:
    """One certificate of a peer's chain as the logs show it: names, serial, validity, SHA-256.

    Built by :func:`siptap.certificates.certificate_summary` (which parses the certificate); the
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
        out = _plain_members(self)
        out["peer_chain"] = [vars_of(c) for c in self.peer_chain]
        if secrets:
            out["master_secret"] = self.master_secret
            out["keylog"] = list(self.keylog_lines)
        if self.client_offer is not None:
            out["client_offer"] = self.client_offer
        return out

    def handover(self) -> tuple[dict[str, object], tuple[bytes, ...]]:
        """What the relay's handshake record carries: every member, the chain already
        summarised in them, and no DER (see :meth:`RawHandshake.handover`)."""
        return self.as_dict(secrets=True), ()

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> HandshakeFacts:
        """The inverse of :meth:`as_dict`: the record rebuilt from its JSON members (how the
        relay hands a handshake to the mirror process). Without the secrets (``secrets=False``)
        the master secret is None and there are no key-log lines. Raises ValueError (naming the
        member) when a member is missing or of the wrong type; members it does not know are
        ignored, so a sender may add context. A ``client_hello`` member (the hello as numbers,
        :meth:`RawHandshake.handover`) stands for ``client_offer``: it is described here."""
        chain = data.get("peer_chain", [])
        if not isinstance(chain, list) or not all(isinstance(c, Mapping) for c in chain):
            raise ValueError("handshake facts: peer_chain must be a list of objects")
        offer = data.get("client_offer")
        if offer is not None and not isinstance(offer, dict):
            raise ValueError("handshake facts: client_offer must be an object")
        if offer is None and data.get("client_hello") is not None:  # the relay's raw hello
            offer = described(ClientHello.from_members(data["client_hello"]))
        keylog = data.get("keylog", [])
        if not isinstance(keylog, list) or not all(isinstance(line, str) for line in keylog):
            raise ValueError("handshake facts: keylog must be a list of strings")
        return cls(
            leg=_member(data, "leg", str),
            role=_member(data, "role", str),
            version=_member(data, "version", str),
            cipher=_member(data, "cipher", str),
            key_exchange=_member(data, "key_exchange", str),
            extended_master_secret=_member(data, "extended_master_secret", bool, optional=True),
            session_reused=_member(data, "session_reused", bool),
            sni=_member(data, "sni", str, optional=True),
            client_random=_member(data, "client_random", str),
            master_secret=_member(data, "master_secret", str, optional=True, default=None),
            keylog_lines=tuple(keylog),
            peer_chain=tuple(_summary(c) for c in chain),
            client_offer=offer,
        )


@dataclass(frozen=True, slots=True)
class RawHandshake:
    """One completed handshake as the relay holds it and hands it over: the facts of
    :class:`HandshakeFacts` with the peer's chain as DER, leaf first, unparsed.

    Summarising the chain (names, dates, fingerprints) is the mirror's work: the relay makes
    no certificate summary and renders no JSON for a handshake it only passes on."""

    leg: str
    role: str
    version: str
    cipher: str
    key_exchange: str
    extended_master_secret: bool | None
    session_reused: bool
    sni: str | None
    client_random: str  # hex
    master_secret: str | None  # hex; TLS 1.2 only
    keylog_lines: tuple[str, ...]
    peer_chain_der: tuple[bytes, ...]
    client_hello: ClientHello | None = None  # server side: the client's hello, parsed, not described

    def handover(self) -> tuple[dict[str, object], tuple[bytes, ...]]:
        """The handshake record's members (as :meth:`HandshakeFacts.as_dict` with secrets,
        without ``peer_chain``; the client's hello as numbers, ``client_hello``, instead of its
        ``client_offer`` description) and the chain's DER, for ``chunk_records.HandshakeDone``."""
        out = _plain_members(self)
        out["master_secret"] = self.master_secret
        out["keylog"] = list(self.keylog_lines)
        if self.client_hello is not None:
            out["client_hello"] = self.client_hello.members()
        return out, self.peer_chain_der

    def facts(self, summarise: Callable[[bytes], CertificateSummary]) -> HandshakeFacts:
        """The summarised record, each DER through ``summarise`` (a certificate cache's)."""
        return HandshakeFacts(
            leg=self.leg, role=self.role, version=self.version, cipher=self.cipher,
            key_exchange=self.key_exchange, extended_master_secret=self.extended_master_secret,
            session_reused=self.session_reused, sni=self.sni, client_random=self.client_random,
            master_secret=self.master_secret, keylog_lines=self.keylog_lines,
            peer_chain=tuple(summarise(der) for der in self.peer_chain_der),
            client_offer=self.client_hello.summary() if self.client_hello is not None else None,
        )


def _plain_members(handshake: HandshakeFacts | RawHandshake) -> dict[str, object]:
    """The members both forms of the record carry as they are, in the order the log shows."""
    return {
        "leg": handshake.leg,
        "role": handshake.role,
        "version": handshake.version,
        "cipher": handshake.cipher,
        "key_exchange": handshake.key_exchange,
        "extended_master_secret": handshake.extended_master_secret,
        "session_reused": handshake.session_reused,
        "sni": handshake.sni,
        "client_random": handshake.client_random,
    }


_Missing = object()


def _member(data: Mapping[str, object], name: str, kind: type, *, optional: bool = False,
            default: object = _Missing) -> Any:
    """``data[name]`` checked against ``kind`` (None allowed when ``optional``)."""
    value = data.get(name, default)
    if value is _Missing:
        raise ValueError(f"handshake facts: {name} is missing")
    if value is None and optional:
        return None
    if not isinstance(value, kind):
        raise ValueError(f"handshake facts: {name} must be {kind.__name__}, not {type(value).__name__}")
    return value


def _summary(data: Mapping[str, object]) -> CertificateSummary:
    sans = data.get("sans", [])
    if not isinstance(sans, (list, tuple)) or not all(isinstance(name, str) for name in sans):
        raise ValueError("handshake facts: a certificate's sans must be a list of strings")
    return CertificateSummary(
        subject=_member(data, "subject", str),
        issuer=_member(data, "issuer", str),
        serial=_member(data, "serial", str),
        not_before=_member(data, "not_before", str),
        not_after=_member(data, "not_after", str),
        sha256=_member(data, "sha256", str),
        sans=tuple(sans),
        common_name=_member(data, "common_name", str, optional=True),
    )


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

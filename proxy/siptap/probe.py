"""`siptap probe HOST:PORT`: a SIP-aware TLS scanner for a customer's or a core's endpoint.

What it finds out, each by real handshakes against the endpoint (one TCP connection per
attempt, one attempt at a time, so a single-threaded peer is never flooded):

* which TLS versions it accepts (TLSv1, TLSv1.1, TLSv1.2, TLSv1.3), one version per attempt;
* which TLS 1.2 cipher suites it accepts, one suite per attempt (the six RSA key-transport AES
  suites siptap uses toward E-SBCs, the common ECDHE and DHE suites, 3DES), and which TLS 1.3
  suites, one per attempt; hence whether RSA key exchange is possible at all;
* its certificate chain as sent, with validity, SANs, key type and problems (expired, not yet
  valid, self-signed, not trusted by ``--ca``, name mismatch with the server name, an RSA key
  whose key usage lacks keyEncipherment, an EKU without serverAuth);
* whether it asks for a client certificate, which CA names it advertises, and whether it
  insists (a handshake without one fails), and whether it takes ours (``--cert``/``--key``);
* a SIP OPTIONS over an established connection, with the response's status line.

An attempt counts as "accepted" when the endpoint answered our offer with a ServerHello,
i.e. it chose the one version or suite we offered. What happens later in that handshake
(a missing client certificate, say) does not change the version/suite verdict; it is kept as
the attempt's detail. Before each attempt the ClientHello is built offline from the same
context and parsed: when this OpenSSL build cannot offer a version or suite at all (a
security level, a disabled algorithm) the verdict is "not testable by this build", never
"rejected".

The probe is a client that trusts nothing and aborts nothing: verification runs with a
callback that records every error and continues, so a broken chain is reported in full.
"""

from __future__ import annotations

import argparse
import functools
import ipaddress
import json
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import trio
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID
from OpenSSL import SSL

from siptap import __version__
from siptap.certs import key_matches_certificate, load_certificate_chain, load_private_key
from siptap.errors import CertificateError, HandshakeFailed, SiptapError
from siptap.sansio.sip_framer import SipFramer, SipMessage
from siptap.sansio.sip_message import SipParseError, parse_message
from siptap.sansio.tls_hello import ClientHello, ClientHelloSniffer, suite_name
from siptap.tls.facts import FailureReason, key_exchange_of
from siptap.tls.identity import matches_hostname, sha256_fingerprint, subject_alt_names
from siptap.tls.stream import OpenSSLStream

__all__ = [
    "ACCEPTED",
    "NOT_TESTABLE",
    "REJECTED",
    "Attempt",
    "CertificateInfo",
    "ClientCertInfo",
    "ProbeError",
    "ProbeReport",
    "SipResult",
    "add_parser",
    "format_table",
    "parse_target",
    "probe",
    "run_from_args",
]

DEFAULT_PORT = 5061

ACCEPTED = "accepted"
REJECTED = "rejected"
NOT_TESTABLE = "not testable by this build"
ERROR = "error"  # no verdict: the connection failed or timed out before the endpoint answered
SKIPPED = "skipped"

# (name, pyOpenSSL constant, wire value)
VERSIONS: tuple[tuple[str, int, int], ...] = (
    ("TLSv1", SSL.TLS1_VERSION, 0x0301),
    ("TLSv1.1", SSL.TLS1_1_VERSION, 0x0302),
    ("TLSv1.2", SSL.TLS1_2_VERSION, 0x0303),
    ("TLSv1.3", SSL.TLS1_3_VERSION, 0x0304),
)

# TLS 1.2 suites tried one by one: (IANA code, OpenSSL name). RSA key transport first.
TLS12_SUITES: tuple[tuple[int, str], ...] = (
    (0x009D, "AES256-GCM-SHA384"),
    (0x009C, "AES128-GCM-SHA256"),
    (0x003D, "AES256-SHA256"),
    (0x003C, "AES128-SHA256"),
    (0x0035, "AES256-SHA"),
    (0x002F, "AES128-SHA"),
    (0x000A, "DES-CBC3-SHA"),
    (0xC030, "ECDHE-RSA-AES256-GCM-SHA384"),
    (0xC02F, "ECDHE-RSA-AES128-GCM-SHA256"),
    (0xCCA8, "ECDHE-RSA-CHACHA20-POLY1305"),
    (0xC028, "ECDHE-RSA-AES256-SHA384"),
    (0xC027, "ECDHE-RSA-AES128-SHA256"),
    (0xC014, "ECDHE-RSA-AES256-SHA"),
    (0xC013, "ECDHE-RSA-AES128-SHA"),
    (0xC02C, "ECDHE-ECDSA-AES256-GCM-SHA384"),
    (0xC02B, "ECDHE-ECDSA-AES128-GCM-SHA256"),
    (0xCCA9, "ECDHE-ECDSA-CHACHA20-POLY1305"),
    (0xC024, "ECDHE-ECDSA-AES256-SHA384"),
    (0xC023, "ECDHE-ECDSA-AES128-SHA256"),
    (0xC00A, "ECDHE-ECDSA-AES256-SHA"),
    (0xC009, "ECDHE-ECDSA-AES128-SHA"),
    (0x009F, "DHE-RSA-AES256-GCM-SHA384"),
    (0x009E, "DHE-RSA-AES128-GCM-SHA256"),
    (0xCCAA, "DHE-RSA-CHACHA20-POLY1305"),
    (0x006B, "DHE-RSA-AES256-SHA256"),
    (0x0067, "DHE-RSA-AES128-SHA256"),
    (0x0039, "DHE-RSA-AES256-SHA"),
    (0x0033, "DHE-RSA-AES128-SHA"),
)

TLS13_SUITES: tuple[tuple[int, str], ...] = (
    (0x1302, "TLS_AES_256_GCM_SHA384"),
    (0x1301, "TLS_AES_128_GCM_SHA256"),
    (0x1303, "TLS_CHACHA20_POLY1305_SHA256"),
    (0x1304, "TLS_AES_128_CCM_SHA256"),
    (0x1305, "TLS_AES_128_CCM_8_SHA256"),
)
_ALL_TLS13 = ":".join(name for _, name in TLS13_SUITES).encode()
# Security level 0: a scanner must be able to offer what old peers speak (TLS 1.0/1.1 need it).
_ALL_TLS12 = b"ALL:@SECLEVEL=0"

# OpenSSL state string once our client has processed the endpoint's ServerHello.
_STATE_SERVER_HELLO = "read server hello"
_STATE_CERT_REQUEST = "read server certificate request"

# X509_V_ERR_* codes the probe words itself (dates, purpose) or that mean "not trusted".
_DATE_ERRORS = frozenset({9, 10})
_PURPOSE_ERRORS = frozenset({26})
_TRUST_ERRORS = frozenset({2, 18, 19, 20, 21})
_MAX_ERRORS_IN_A_ROW = 3


class ProbeError(SiptapError):
    """A probe that cannot start (bad target, unusable --cert/--key/--ca)."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint


# --------------------------------------------------------------------------------------------
# The report


@dataclass(frozen=True, slots=True)
class Attempt:
    """One version or suite tried on its own connection."""

    name: str  # "TLSv1.2", or the IANA suite name
    status: str  # ACCEPTED, REJECTED, NOT_TESTABLE, ERROR, SKIPPED
    detail: str = ""
    code: int | None = None  # IANA suite code
    openssl_name: str | None = None
    key_exchange: str | None = None  # "RSA", "ECDHE", "DHE", "TLSv1.3"

    @property
    def accepted(self) -> bool:
        return self.status == ACCEPTED

    def as_dict(self) -> dict[str, object]:
        out: dict[str, object] = {"name": self.name, "status": self.status, "detail": self.detail}
        if self.code is not None:
            out.update(code=f"0x{self.code:04X}", openssl_name=self.openssl_name, key_exchange=self.key_exchange)
        return out


@dataclass(frozen=True, slots=True)
class CertificateInfo:
    subject: str
    issuer: str
    serial: str
    not_before: str
    not_after: str
    sans: tuple[str, ...]
    key_type: str
    signature_hash: str | None
    sha256: str
    key_usage: tuple[str, ...] | None  # None: no KeyUsage extension
    extended_key_usage: tuple[str, ...] | None  # None: no EKU extension
    problems: tuple[str, ...]

    def as_dict(self) -> dict[str, object]:
        return {name: (list(v) if isinstance(v := getattr(self, name), tuple) else v) for name in self.__slots__}


@dataclass(frozen=True, slots=True)
class ClientCertInfo:
    requested: bool  # the endpoint sent a CertificateRequest
    required: bool | None  # a handshake without a certificate fails; None: not determined
    ca_names: tuple[str, ...]  # the CA names it advertised (may be empty even when requested)
    ours: str | None  # "accepted", "rejected: ...", or None when no --cert was given
    detail: str = ""

    def as_dict(self) -> dict[str, object]:
        return {"requested": self.requested, "required": self.required, "ca_names": list(self.ca_names),
                "ours": self.ours, "detail": self.detail}


@dataclass(frozen=True, slots=True)
class SipResult:
    sent: bool
    status_line: str | None = None  # the final response's status line
    status_code: int | None = None
    provisional: tuple[str, ...] = ()
    detail: str = ""
    closed: bool = False  # the endpoint closed or broke the connection instead of answering

    def as_dict(self) -> dict[str, object]:
        return {"sent": self.sent, "closed": self.closed, "status_line": self.status_line, "status_code": self.status_code,
                "provisional": list(self.provisional), "detail": self.detail}


@dataclass(slots=True)
class ProbeReport:
    target: str
    server_name: str
    openssl: str = field(default_factory=lambda: SSL.OpenSSL_version(SSL.OPENSSL_VERSION).decode())
    error: str | None = None  # the endpoint could not be probed at all
    negotiated: dict[str, object] | None = None  # what our widest offer got: version, cipher, key_exchange
    versions: list[Attempt] = field(default_factory=list)
    tls12_suites: list[Attempt] = field(default_factory=list)
    tls13_suites: list[Attempt] = field(default_factory=list)
    chain: list[CertificateInfo] = field(default_factory=list)
    chain_problems: list[str] = field(default_factory=list)
    trust_checked_against: str | None = None
    client_cert: ClientCertInfo | None = None
    sip: SipResult | None = None

    @property
    def reachable(self) -> bool:
        return self.error is None

    @property
    def accepted_versions(self) -> list[str]:
        return [a.name for a in self.versions if a.accepted]

    @property
    def accepted_tls12_suites(self) -> list[str]:
        return [a.name for a in self.tls12_suites if a.accepted]

    @property
    def accepted_tls13_suites(self) -> list[str]:
        return [a.name for a in self.tls13_suites if a.accepted]

    @property
    def rsa_key_exchange(self) -> bool | None:
        """True if some RSA key-transport suite was accepted; None if nothing could be tried."""
        tried = [a for a in self.tls12_suites if a.key_exchange == "RSA" and a.status in (ACCEPTED, REJECTED)]
        if any(a.accepted for a in tried):
            return True
        if tried or any(a.name == "TLSv1.2" and a.status == REJECTED for a in self.versions):
            return False
        return None

    @property
    def problems(self) -> list[str]:
        out = list(self.chain_problems)
        for index, cert in enumerate(self.chain):
            out += [f"certificate [{index}]: {p}" for p in cert.problems]
        return out

    def as_dict(self) -> dict[str, object]:
        return {
            "target": self.target,
            "server_name": self.server_name,
            "openssl": self.openssl,
            "error": self.error,
            "negotiated": self.negotiated,
            "versions": [a.as_dict() for a in self.versions],
            "accepted_versions": self.accepted_versions,
            "tls12_suites": [a.as_dict() for a in self.tls12_suites],
            "tls13_suites": [a.as_dict() for a in self.tls13_suites],
            "accepted_tls12_suites": self.accepted_tls12_suites,
            "accepted_tls13_suites": self.accepted_tls13_suites,
            "rsa_key_exchange": self.rsa_key_exchange,
            "chain": [c.as_dict() for c in self.chain],
            "chain_problems": list(self.chain_problems),
            "trust_checked_against": self.trust_checked_against,
            "problems": self.problems,
            "client_certificate": self.client_cert.as_dict() if self.client_cert else None,
            "sip_options": self.sip.as_dict() if self.sip else None,
        }


# --------------------------------------------------------------------------------------------
# Pure helpers: target, certificate analysis, the OPTIONS request, the table


def parse_target(text: str, default_port: int = DEFAULT_PORT) -> tuple[str, int]:
    """``host``, ``host:port``, ``[v6]`` or ``[v6]:port`` -> (host, port)."""
    raw = text.strip()
    port_text = ""
    if raw.startswith("["):
        end = raw.find("]")
        if end < 0:
            raise ProbeError(f"{text!r}: unclosed [ in IPv6 address", "write IPv6 targets as [addr]:port")
        host, rest = raw[1:end], raw[end + 1:]
        if rest and not rest.startswith(":"):
            raise ProbeError(f"{text!r}: expected [IPv6]:port", "write IPv6 targets as [addr]:port")
        port_text = rest[1:]
        if rest == ":":
            raise ProbeError(f"{text!r}: missing port after ':'")
    elif raw.count(":") == 1:
        host, port_text = raw.split(":")
        if not port_text:
            raise ProbeError(f"{text!r}: missing port after ':'")
    elif raw.count(":") > 1:
        raise ProbeError(f"{text!r}: ambiguous IPv6 address", "write IPv6 targets as [addr]:port")
    else:
        host = raw
    if not host:
        raise ProbeError(f"{text!r}: missing host", "usage: siptap probe HOST[:PORT]")
    if not port_text:
        return host, default_port
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ProbeError(f"{text!r}: port must be 1..65535")
    return host, int(port_text)


def _when(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def key_type_of(cert: x509.Certificate) -> str:
    key = cert.public_key()
    if isinstance(key, rsa.RSAPublicKey):
        return f"RSA-{key.key_size}"
    if isinstance(key, ec.EllipticCurvePublicKey):
        return f"EC {key.curve.name}"
    if isinstance(key, ed25519.Ed25519PublicKey):
        return "Ed25519"
    if isinstance(key, ed448.Ed448PublicKey):
        return "Ed448"
    if isinstance(key, dsa.DSAPublicKey):
        return f"DSA-{key.key_size}"
    return type(key).__name__.lstrip("_")


_KEY_USAGE_FLAGS = ("digital_signature", "content_commitment", "key_encipherment", "data_encipherment",
                    "key_agreement", "key_cert_sign", "crl_sign")


def _key_usage(cert: x509.Certificate) -> x509.KeyUsage | None:
    try:
        return cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return None


def _eku(cert: x509.Certificate) -> x509.ExtendedKeyUsage | None:
    try:
        return cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return None


def _is_self_signed(cert: x509.Certificate) -> bool:
    if cert.subject != cert.issuer:
        return False
    try:
        cert.verify_directly_issued_by(cert)
    except Exception:
        return False
    return True


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def certificate_problems(cert: x509.Certificate, *, leaf: bool, server_name: str | None,
                         now: datetime | None = None) -> list[str]:
    """What is wrong with one certificate of a server's chain, in words for an SBC engineer."""
    now = now or datetime.now(UTC)
    problems: list[str] = []
    if cert.not_valid_after_utc < now:
        problems.append(f"expired on {_when(cert.not_valid_after_utc)}")
    if cert.not_valid_before_utc > now:
        problems.append(f"not yet valid: valid from {_when(cert.not_valid_before_utc)}")
    key = cert.public_key()
    if isinstance(key, rsa.RSAPublicKey) and key.key_size < 2048:
        problems.append(f"weak key: RSA-{key.key_size} (below 2048 bits)")
    algorithm = cert.signature_hash_algorithm
    if algorithm is not None and algorithm.name in ("sha1", "md5") and not _is_self_signed(cert):
        problems.append(f"signed with {algorithm.name.upper()}")
    if not leaf:
        return problems
    if _is_self_signed(cert):
        problems.append("self-signed")
    if server_name and not matches_hostname(cert, server_name):
        sans = ", ".join(subject_alt_names(cert)) or "no SANs"
        problems.append(f"name mismatch: {server_name!r} is not among its SANs ({sans})")
    usage = _key_usage(cert)
    if isinstance(key, rsa.RSAPublicKey) and usage is not None and not usage.key_encipherment:
        problems.append("key usage lacks keyEncipherment: RSA key exchange with this certificate is impossible")
    eku = _eku(cert)
    if eku is not None:
        oids = set(eku)
        if ExtendedKeyUsageOID.SERVER_AUTH not in oids and ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE not in oids:
            names = ", ".join(getattr(o, "_name", o.dotted_string) for o in eku)
            problems.append(f"extended key usage lacks serverAuth ({names}): a TLS client may refuse it as a server")
    if _is_ca(cert):
        problems.append("the server's own certificate is a CA certificate")
    return problems


def describe_certificate(cert: x509.Certificate, *, leaf: bool, server_name: str | None,
                         now: datetime | None = None) -> CertificateInfo:
    usage = _key_usage(cert)
    flags: tuple[str, ...] | None = None
    if usage is not None:
        flags = tuple(name for name in _KEY_USAGE_FLAGS if getattr(usage, name))
    eku = _eku(cert)
    algorithm = cert.signature_hash_algorithm
    return CertificateInfo(
        subject=cert.subject.rfc4514_string(),
        issuer=cert.issuer.rfc4514_string(),
        serial=f"{cert.serial_number:X}",
        not_before=_when(cert.not_valid_before_utc),
        not_after=_when(cert.not_valid_after_utc),
        sans=subject_alt_names(cert),
        key_type=key_type_of(cert),
        signature_hash=algorithm.name if algorithm is not None else None,
        sha256=sha256_fingerprint(cert),
        key_usage=flags,
        extended_key_usage=tuple(getattr(o, "_name", o.dotted_string) for o in eku) if eku is not None else None,
        problems=tuple(certificate_problems(cert, leaf=leaf, server_name=server_name, now=now)),
    )


def options_request(server_name: str, port: int, local: tuple[str, int], *, call_id: str | None = None) -> bytes:
    """A SIP OPTIONS for the endpoint, as an SBC pinging a trunk would send it (RFC 3261 11)."""
    local_host = f"[{local[0]}]" if ":" in local[0] else local[0]
    target = f"[{server_name}]" if ":" in server_name else server_name
    call_id = call_id or f"{secrets.token_hex(8)}@siptap-probe"
    lines = [
        f"OPTIONS sip:{target}:{port};transport=tls SIP/2.0",
        f"Via: SIP/2.0/TLS {local_host}:{local[1]};branch=z9hG4bK{secrets.token_hex(8)};rport",
        "Max-Forwards: 70",
        f"From: <sip:siptap-probe@{local_host}>;tag={secrets.token_hex(4)}",
        f"To: <sip:{target}>",
        f"Call-ID: {call_id}",
        "CSeq: 1 OPTIONS",
        f"Contact: <sip:siptap-probe@{local_host}:{local[1]};transport=tls>",
        "Accept: application/sdp",
        f"User-Agent: siptap-probe/{__version__}",
        "Content-Length: 0",
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _mark(status: str) -> str:
    return {ACCEPTED: "yes", REJECTED: "no", NOT_TESTABLE: "n/a", ERROR: "error", SKIPPED: "skipped"}.get(status, status)


def format_table(report: ProbeReport) -> str:
    """The report as a readable plain-text table (what `siptap probe` prints without --json)."""
    out: list[str] = [f"siptap probe {report.target}  (server name {report.server_name}; {report.openssl})"]
    if report.error:
        out.append(f"  error: {report.error}")
        return "\n".join(out) + "\n"
    if report.negotiated:
        n = report.negotiated
        line = f"  widest offer negotiated: {n.get('version')} {n.get('cipher')} ({n.get('key_exchange')})"
        if not n.get("completed"):
            line += f"; handshake then failed: {n.get('failure')}"
        out.append(line)
    out.append("")
    out.append("TLS versions (one per connection)")
    for a in report.versions:
        out.append(f"  {a.name:<8} {_mark(a.status):<8} {a.detail}".rstrip())
    out.append("")
    out.append("TLS 1.2 cipher suites (one per connection)")
    out.append(f"  {'accepted':<8} {'code':<6} {'IANA name':<46} {'OpenSSL name':<30} kex")
    for a in report.tls12_suites:
        line = f"  {_mark(a.status):<8} 0x{a.code or 0:04X} {a.name:<46} {a.openssl_name or '':<30} {a.key_exchange or ''}"
        if a.status in (NOT_TESTABLE, ERROR, SKIPPED) and a.detail:
            line += f"  ({a.detail})"
        out.append(line)
    out.append("")
    out.append("TLS 1.3 cipher suites (one per connection)")
    for a in report.tls13_suites:
        line = f"  {_mark(a.status):<8} 0x{a.code or 0:04X} {a.name}"
        if a.status in (NOT_TESTABLE, ERROR, SKIPPED) and a.detail:
            line += f"  ({a.detail})"
        out.append(line)
    out.append("")
    rsa_kex = report.rsa_key_exchange
    rsa_suites = [a.openssl_name for a in report.tls12_suites if a.accepted and a.key_exchange == "RSA"]
    out.append("RSA key exchange: " + {True: f"possible ({', '.join(map(str, rsa_suites))})",
                                       False: "not possible (no RSA key-transport suite accepted)",
                                       None: "unknown (not testable)"}[rsa_kex])
    out.append("")
    out.append("Certificate chain (as sent by the endpoint)")
    if not report.chain:
        out.append("  (none received)")
    for index, cert in enumerate(report.chain):
        out.append(f"  [{index}] subject  {cert.subject}")
        out.append(f"      issuer   {cert.issuer}")
        out.append(f"      valid    {cert.not_before} .. {cert.not_after}")
        out.append(f"      key      {cert.key_type}, signature {cert.signature_hash or '-'}")
        if cert.sans:
            out.append(f"      SANs     {', '.join(cert.sans)}")
        if cert.key_usage is not None:
            out.append(f"      usage    {', '.join(cert.key_usage) or '-'}"
                       + (f"; EKU {', '.join(cert.extended_key_usage)}" if cert.extended_key_usage else ""))
        out.append(f"      sha256   {cert.sha256}")
        for problem in cert.problems:
            out.append(f"      PROBLEM  {problem}")
    if report.trust_checked_against:
        out.append(f"  trust: checked against {report.trust_checked_against}")
    else:
        out.append("  trust: not checked (pass --ca BUNDLE to check the chain)")
    for problem in report.chain_problems:
        out.append(f"  PROBLEM  {problem}")
    out.append("")
    cc = report.client_cert
    if cc is not None:
        if not cc.requested:
            out.append("Client certificate: not requested")
        else:
            need = {True: "required", False: "requested but optional", None: "requested"}[cc.required]
            out.append(f"Client certificate: {need}" + (f" ({cc.detail})" if cc.detail else ""))
            out.append("  acceptable CAs advertised: " + ("; ".join(cc.ca_names) if cc.ca_names else "(none listed)"))
        if cc.ours is not None:
            out.append(f"  our certificate: {cc.ours}")
    sip = report.sip
    if sip is not None:
        if sip.status_line:
            out.append(f"SIP OPTIONS: {sip.status_line}" + (f"  ({sip.detail})" if sip.detail else ""))
        else:
            out.append(f"SIP OPTIONS: {'no response' if sip.sent else 'not sent'}: {sip.detail}")
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------------------------
# One attempt: a context, a connection, a handshake


@dataclass(frozen=True, slots=True)
class _ClientIdentity:
    chain: tuple[x509.Certificate, ...]
    key: object


@dataclass(frozen=True, slots=True)
class _Offer:
    min_version: int
    max_version: int
    ciphers: bytes = _ALL_TLS12
    tls13: bytes = _ALL_TLS13


@dataclass(slots=True)
class _Outcome:
    connected: bool = False
    error: str | None = None  # connect failure or timeout before any answer
    server_hello: bool = False
    completed: bool = False
    version: str | None = None
    cipher: str | None = None
    key_exchange: str | None = None
    cert_requested: bool = False
    ca_names: tuple[str, ...] = ()
    chain: tuple[x509.Certificate, ...] = ()
    verify_errors: list[tuple[int, int, str, str]] = field(default_factory=list)
    failure: HandshakeFailed | None = None
    stream: OpenSSLStream | None = None


def _name_text(name: object) -> str:
    """An OpenSSL X509Name as 'CN=..,O=..' (RFC 4514 order: most specific first)."""
    try:
        parts = [(k.decode(), v.decode("utf-8", "replace")) for k, v in name.get_components()]  # type: ignore[attr-defined]
    except Exception:
        return str(name)
    escape = str.maketrans({",": "\\,", "+": "\\+", "=": "\\=", "\\": "\\\\"})
    return ",".join(f"{k}={v.translate(escape)}" for k, v in reversed(parts))


def _verify_text(errnum: int) -> str:
    try:
        from OpenSSL._util import ffi, lib

        return ffi.string(lib.X509_verify_cert_error_string(errnum)).decode()
    except (ImportError, AttributeError):
        return f"X509 verify error {errnum}"


class _Recorder:
    """The callbacks of one attempt's context: handshake states and verification errors."""

    def __init__(self) -> None:
        self.states: list[str] = []
        self.verify_errors: list[tuple[int, int, str, str]] = []

    def info(self, conn: SSL.Connection, where: int, ret: int) -> None:
        state = conn.get_state_string().decode("ascii", "replace")
        if not self.states or self.states[-1] != state:
            self.states.append(state)

    def verify(self, conn: SSL.Connection, cert: object, errnum: int, depth: int, ok: int) -> bool:
        if not ok:
            try:
                subject = cert.to_cryptography().subject.rfc4514_string()  # type: ignore[attr-defined]
            except Exception:
                subject = "?"
            self.verify_errors.append((errnum, depth, subject, _verify_text(errnum)))
        return True  # a scanner reports, it never aborts

    def saw(self, fragment: str) -> bool:
        return any(fragment in state for state in self.states)


def _context(offer: _Offer, identity: _ClientIdentity | None, ca: Path | None,
             recorder: _Recorder | None) -> SSL.Context:
    ctx = SSL.Context(SSL.TLS_METHOD)
    ctx.set_min_proto_version(offer.min_version)
    ctx.set_max_proto_version(offer.max_version)
    ctx.set_cipher_list(offer.ciphers)
    ctx.set_tls13_ciphersuites(offer.tls13)
    ctx.set_options(SSL.OP_NO_COMPRESSION | SSL.OP_NO_RENEGOTIATION | SSL.OP_NO_TICKET)
    if identity is not None:
        ctx.use_certificate(identity.chain[0])
        for extra in identity.chain[1:]:
            ctx.add_extra_chain_cert(extra)
        ctx.use_privatekey(identity.key)  # type: ignore[arg-type]
    if recorder is not None:
        ctx.set_info_callback(recorder.info)
        if ca is not None:
            ctx.load_verify_locations(str(ca))
        ctx.set_verify(SSL.VERIFY_PEER, recorder.verify)
    else:
        ctx.set_verify(SSL.VERIFY_NONE)
    return ctx


def _offline_hello(offer: _Offer, server_name: str) -> ClientHello | str:
    """Build the ClientHello this offer produces, without a network: what would we really send?"""
    try:
        conn = SSL.Connection(_context(offer, None, None, None), None)
    except SSL.Error as exc:
        return _ssl_text(exc)
    conn.set_connect_state()
    if not _is_ip(server_name):
        conn.set_tlsext_host_name(server_name.encode("idna"))
    try:
        conn.do_handshake()
    except SSL.WantReadError:
        pass
    except SSL.Error as exc:
        return _ssl_text(exc)
    sniffer = ClientHelloSniffer()
    try:
        sniffer.feed(conn.bio_read(65536))
    except SSL.Error as exc:
        return _ssl_text(exc)
    if isinstance(sniffer.result, ClientHello):
        return sniffer.result
    return "this build produced no parsable ClientHello"


def _untestable(offer: _Offer, server_name: str, *, version: int | None = None, suite: int | None = None) -> str | None:
    hello = _offline_hello(offer, server_name)
    if isinstance(hello, str):
        return f"this OpenSSL cannot offer it: {hello}"
    if version is not None and version not in hello.versions:
        return "this OpenSSL's ClientHello does not offer it"
    if suite is not None and suite not in hello.cipher_suites:
        return "this OpenSSL's ClientHello does not offer it"
    return None


def _ssl_text(exc: BaseException) -> str:
    parts: list[str] = []
    if exc.args and isinstance(exc.args[0], list):
        parts = [str(item[-1]) for item in exc.args[0] if isinstance(item, tuple) and item]
    return "; ".join(parts) or str(exc) or type(exc).__name__


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name.strip("[]"))
    except ValueError:
        return False
    return True


async def _attempt(host: str, port: int, server_name: str, offer: _Offer, *, identity: _ClientIdentity | None,
                   ca: Path | None, timeout: float, keep: bool = False) -> _Outcome:
    outcome = _Outcome()
    recorder = _Recorder()
    ctx = _context(offer, identity, ca, recorder)
    try:
        with trio.fail_after(timeout):
            tcp = await trio.open_tcp_stream(host, port)
    except trio.TooSlowError:
        outcome.error = f"TCP connect timed out after {timeout:g} s"
        return outcome
    except OSError as exc:
        outcome.error = f"cannot connect: {exc.strerror or exc}"
        return outcome
    outcome.connected = True
    stream = OpenSSLStream(tcp, ctx, server_side=False, leg="probe", server_hostname=server_name)
    try:
        facts = await stream.do_handshake(timeout)
    except HandshakeFailed as exc:
        outcome.failure = exc
        facts = None
    conn = stream._conn
    outcome.server_hello = recorder.saw(_STATE_SERVER_HELLO) or facts is not None
    outcome.cert_requested = recorder.saw(_STATE_CERT_REQUEST)
    outcome.verify_errors = recorder.verify_errors
    outcome.ca_names = tuple(_name_text(n) for n in (conn.get_client_ca_list() or []))
    try:
        outcome.chain = tuple(conn.get_peer_cert_chain(as_cryptography=True) or ())
    except SSL.Error:
        outcome.chain = ()
    if outcome.server_hello:
        outcome.version = conn.get_protocol_version_name()
        outcome.cipher = conn.get_cipher_name()
        if facts is not None:
            outcome.key_exchange = facts.key_exchange
        elif outcome.cipher:
            outcome.key_exchange = key_exchange_of(outcome.version, outcome.cipher, None)
    if facts is not None:
        outcome.completed = True
    if outcome.failure is not None and outcome.failure.reason == FailureReason.TIMEOUT.value and not outcome.server_hello:
        outcome.error = f"timeout: no answer to our ClientHello ({outcome.failure.detail})"
    if keep and outcome.completed:
        outcome.stream = stream
    else:
        with trio.move_on_after(2):
            await stream.aclose()
    return outcome


def _failure_text(failure: HandshakeFailed) -> str:
    # classify_failure speaks as a server ("peer offered ..."); as a client we know what we offered.
    return failure.detail.removesuffix("; peer offered unknown")


def _rejection(outcome: _Outcome) -> str:
    if outcome.failure is None:
        return "no ServerHello"
    return _failure_text(outcome.failure)


# --------------------------------------------------------------------------------------------
# SIP over the established connection


async def _sip_options(stream: OpenSSLStream, server_name: str, port: int, timeout: float) -> SipResult:
    sock = getattr(stream.transport_stream, "socket", None)
    try:
        local = sock.getsockname()[:2] if sock is not None else ("127.0.0.1", 0)
    except OSError:
        local = ("127.0.0.1", 0)
    call_id = f"{secrets.token_hex(8)}@siptap-probe"
    request = options_request(server_name, port, (str(local[0]), int(local[1])), call_id=call_id)
    try:
        await stream.send_all(request)
    except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
        return SipResult(sent=False, closed=True, detail=f"sending failed: {_cause(exc)}")
    framer = SipFramer()
    provisional: list[str] = []
    with trio.move_on_after(timeout):
        while True:
            try:
                data = await stream.receive_some(65536)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                return SipResult(sent=True, provisional=tuple(provisional), closed=True,
                                 detail=f"connection failed: {_cause(exc)}")
            if not data:
                return SipResult(sent=True, provisional=tuple(provisional), closed=True,
                                 detail="the endpoint closed the connection without a final response")
            for event in framer.feed(data):
                if not isinstance(event, SipMessage):
                    continue
                try:
                    view = parse_message(event.data, event.header_end)
                except SipParseError:
                    continue
                if view.is_request or view.status_code is None:
                    continue
                line = event.data.split(b"\r\n", 1)[0].decode("utf-8", "replace")
                if view.status_code < 200:
                    provisional.append(line)
                    continue
                detail = "" if view.call_id == call_id else f"Call-ID {view.call_id!r} is not ours"
                return SipResult(sent=True, status_line=line, status_code=view.status_code,
                                 provisional=tuple(provisional), detail=detail)
    return SipResult(sent=True, provisional=tuple(provisional), detail=f"no final response within {timeout:g} s")


def _cause(exc: BaseException) -> str:
    inner = exc.__cause__
    if isinstance(inner, SSL.Error):
        return _ssl_text(inner)
    return str(exc) or type(exc).__name__


async def _settle(stream: OpenSSLStream, wait: float) -> str | None:
    """After a handshake without a client certificate: does a TLS 1.3 endpoint now refuse us?
    Returns the refusal, or None if nothing arrived (or only data) within ``wait``."""
    with trio.move_on_after(wait):
        try:
            data = await stream.receive_some(65536)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            return _cause(exc)
        if not data:
            return _CLOSED_AFTER_HANDSHAKE
    return None


_CLOSED_AFTER_HANDSHAKE = "the endpoint closed the connection right after the handshake"


# --------------------------------------------------------------------------------------------
# The probe


def load_client_identity(cert: Path, key: Path) -> _ClientIdentity:
    chain = load_certificate_chain(cert)
    private = load_private_key(key, allow_insecure_permissions=True)  # a diagnostic tool: read what it is given
    if not key_matches_certificate(private, chain[0]):
        raise CertificateError(str(key), f"private key does not match the certificate in {cert}")
    return _ClientIdentity(tuple(chain), private)


async def probe(host: str, port: int, *, server_name: str | None = None, cert: Path | None = None,
                key: Path | None = None, ca: Path | None = None, timeout: float = 5.0,
                sip: bool = True) -> ProbeReport:
    """Probe one endpoint; see the module docstring. Never raises for what the endpoint does;
    raises ProbeError/CertificateError for unusable arguments."""
    if (cert is None) != (key is None):
        raise ProbeError("--cert and --key go together", "pass both the client certificate and its key")
    identity = load_client_identity(Path(cert), Path(key)) if cert is not None and key is not None else None
    if ca is not None:
        load_certificate_chain(ca)  # a clear error for a missing or non-PEM bundle
    name = server_name or host
    target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    report = ProbeReport(target=target, server_name=name,
                         trust_checked_against=str(ca) if ca is not None else None)

    errors_in_a_row = 0

    async def attempt(offer: _Offer, *, with_identity: bool = True, keep: bool = False) -> _Outcome:
        nonlocal errors_in_a_row
        if errors_in_a_row >= _MAX_ERRORS_IN_A_ROW:
            # An endpoint that stopped answering (rate limit, fail2ban, crash) would otherwise
            # cost one timeout per remaining attempt.
            return _Outcome(error=f"not tried: the previous {errors_in_a_row} attempts got no answer")
        outcome = await _attempt(host, port, name, offer, identity=identity if with_identity else None,
                                 ca=ca, timeout=timeout, keep=keep)
        errors_in_a_row = errors_in_a_row + 1 if outcome.error is not None else 0
        return outcome

    # 1. The widest offer, with our certificate if we have one: chain, CA names, negotiated suite.
    main = await attempt(_Offer(SSL.TLS1_VERSION, SSL.TLS1_3_VERSION), keep=True)
    if main.error is not None:
        report.error = main.error
        return report
    if not main.server_hello and main.failure is not None and main.failure.reason in (
        FailureReason.NOT_TLS.value, FailureReason.TIMEOUT.value
    ):
        report.error = f"no TLS handshake: {main.failure.reason}: {main.failure.detail}"
        return report
    if main.server_hello:
        report.negotiated = {"version": main.version, "cipher": main.cipher, "key_exchange": main.key_exchange,
                             "completed": main.completed,
                             "failure": main.failure.detail if main.failure else None}

    # 2. SIP OPTIONS over it (or, without SIP, a short wait for a TLS 1.3 certificate refusal).
    post_refusal: str | None = None
    try:
        if main.stream is not None:
            if sip:
                report.sip = await _sip_options(main.stream, name, port, timeout)
                if report.sip.status_line is None and report.sip.closed:
                    post_refusal = report.sip.detail
            elif main.cert_requested:
                post_refusal = await _settle(main.stream, min(timeout, 1.0))
        elif sip:
            why = main.failure.detail if main.failure else "no handshake"
            report.sip = SipResult(sent=False, detail=f"no TLS connection to send it over ({why})")
    finally:
        if main.stream is not None:
            with trio.move_on_after(2):
                await main.stream.aclose()

    # 3. Client certificate: asked for? insisted on? ours taken?
    report.client_cert = await _client_cert_verdict(main, post_refusal, identity, attempt, timeout)
    if report.sip is not None and report.sip.status_line is None and report.client_cert.required and identity is None:
        report.sip = SipResult(sent=report.sip.sent, provisional=report.sip.provisional, closed=report.sip.closed,
                               detail=f"{report.sip.detail}; the endpoint requires a client certificate "
                               "(pass --cert and --key)")

    # 4. The chain, from the first attempt that received one.
    chain = main.chain
    for index, cert_obj in enumerate(chain):
        report.chain.append(describe_certificate(cert_obj, leaf=index == 0, server_name=name))
    report.chain_problems = _chain_problems(main, ca)

    # 5. Versions, one per connection.
    for version_name, constant, wire in VERSIONS:
        offer = _Offer(constant, constant)
        report.versions.append(await _verdict(version_name, offer, attempt, name, version=wire))

    # 6. Suites, one per connection.
    tls12 = next((a for a in report.versions if a.name == "TLSv1.2"), None)
    for code, openssl_name in TLS12_SUITES:
        offer = _Offer(SSL.TLS1_2_VERSION, SSL.TLS1_2_VERSION, ciphers=f"{openssl_name}:@SECLEVEL=0".encode())
        kex = key_exchange_of("TLSv1.2", openssl_name, None)
        if tls12 is not None and tls12.status == REJECTED:
            report.tls12_suites.append(Attempt(suite_name(code), SKIPPED, "TLSv1.2 not accepted", code, openssl_name, kex))
            continue
        result = await _verdict(suite_name(code), offer, attempt, name, suite=code)
        report.tls12_suites.append(Attempt(result.name, result.status, result.detail, code, openssl_name, kex))
    tls13 = next((a for a in report.versions if a.name == "TLSv1.3"), None)
    for code, openssl_name in TLS13_SUITES:
        offer = _Offer(SSL.TLS1_3_VERSION, SSL.TLS1_3_VERSION, tls13=openssl_name.encode())
        if tls13 is not None and tls13.status == REJECTED:
            report.tls13_suites.append(Attempt(openssl_name, SKIPPED, "TLSv1.3 not accepted", code, openssl_name, "TLSv1.3"))
            continue
        result = await _verdict(openssl_name, offer, attempt, name, suite=code)
        report.tls13_suites.append(Attempt(result.name, result.status, result.detail, code, openssl_name, "TLSv1.3"))
    return report


async def _verdict(label: str, offer: _Offer, attempt: Callable, server_name: str, *,
                   version: int | None = None, suite: int | None = None) -> Attempt:
    why_not = _untestable(offer, server_name, version=version, suite=suite)
    if why_not is not None:
        return Attempt(label, NOT_TESTABLE, why_not)
    outcome: _Outcome = await attempt(offer)
    if outcome.error is not None:
        return Attempt(label, ERROR, outcome.error)
    if outcome.server_hello:
        detail = f"{outcome.version} {outcome.cipher}" if version is not None else ""
        if outcome.failure is not None:
            detail = (detail + "; " if detail else "") + f"handshake then failed: {_failure_text(outcome.failure)}"
        return Attempt(label, ACCEPTED, detail)
    return Attempt(label, REJECTED, _rejection(outcome))


async def _client_cert_verdict(main: _Outcome, post_refusal: str | None, identity: _ClientIdentity | None,
                               attempt: Callable, timeout: float) -> ClientCertInfo:
    if not main.cert_requested:
        ours = None if identity is None else "not asked for"
        return ClientCertInfo(requested=False, required=False, ca_names=(), ours=ours)
    ca_names = main.ca_names
    if identity is None:
        # The main attempt itself went without a certificate.
        if main.failure is not None and main.server_hello:
            return ClientCertInfo(True, True, ca_names, None,
                                  f"handshake without a certificate failed: {main.failure.detail}")
        if post_refusal is not None:
            return ClientCertInfo(True, True, ca_names, None, f"refused after the handshake: {post_refusal}")
        if main.completed:
            return ClientCertInfo(True, False, ca_names, None, "a connection without a certificate was accepted")
        return ClientCertInfo(True, None, ca_names, None)
    # We presented ours in the main attempt; was it taken?
    if main.completed and not (main.failure or post_refusal):
        ours = "accepted"
    else:
        ours = f"rejected: {main.failure.detail if main.failure else post_refusal}"
    # And without one?
    bare = await attempt(_Offer(SSL.TLS1_VERSION, SSL.TLS1_3_VERSION), with_identity=False, keep=True)
    try:
        if bare.error is not None:
            return ClientCertInfo(True, None, ca_names, ours, f"no verdict without a certificate: {bare.error}")
        if bare.failure is not None:
            return ClientCertInfo(True, True, ca_names or bare.ca_names, ours,
                                  f"handshake without a certificate failed: {bare.failure.detail}")
        refusal = await _settle(bare.stream, min(timeout, 1.0)) if bare.stream is not None else None
        if refusal is not None:
            return ClientCertInfo(True, True, ca_names or bare.ca_names, ours, f"refused after the handshake: {refusal}")
        return ClientCertInfo(True, False, ca_names or bare.ca_names, ours, "a connection without a certificate was accepted")
    finally:
        if bare.stream is not None:
            with trio.move_on_after(2):
                await bare.stream.aclose()


def _chain_problems(main: _Outcome, ca: Path | None) -> list[str]:
    problems: list[str] = []
    seen: set[tuple[int, int]] = set()
    for errnum, depth, subject, text in main.verify_errors:
        if errnum in _DATE_ERRORS or errnum in _PURPOSE_ERRORS or (errnum, depth) in seen:
            continue  # dates and purpose are worded per certificate
        seen.add((errnum, depth))
        if errnum in _TRUST_ERRORS:
            if ca is None:
                continue  # nothing to trust against; "self-signed" is reported per certificate
            problems.append(f"unknown CA: {subject} (depth {depth}): {text} (not trusted by {ca})")
        else:
            problems.append(f"{subject} (depth {depth}): {text} (X509 error {errnum})")
    return problems


# --------------------------------------------------------------------------------------------
# Command line (wired into siptap.cli by two lines)


def add_parser(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = subparsers.add_parser(
        "probe", parents=[common],
        help="scan a SIP-over-TLS endpoint: TLS versions and suites one by one, certificate, client-cert request, SIP OPTIONS",
        description="Probe a customer's or a core's SIP-over-TLS endpoint with real handshakes, one TCP connection "
        "per attempt: which TLS versions and which cipher suites it accepts (each tried alone), whether RSA key "
        "exchange is possible, its certificate chain and what is wrong with it, whether it requires a client "
        "certificate (and which CAs it names), and the response line to a SIP OPTIONS.",
        epilog="exit status: 0 the endpoint was probed (whatever it accepts), 1 it could not be reached or "
        "spoke no TLS, or an argument was unusable",
    )
    p.add_argument("target", metavar="HOST[:PORT]", help=f"the endpoint; port defaults to {DEFAULT_PORT}; IPv6 as [addr]:port")
    p.add_argument("--server-name", metavar="NAME",
                   help="SNI, SIP domain, and the name the certificate must match (default: HOST)")
    p.add_argument("--cert", type=Path, metavar="PEM", help="client certificate (chain) to present if the endpoint asks")
    p.add_argument("--key", type=Path, metavar="PEM", help="private key of --cert")
    p.add_argument("--ca", type=Path, metavar="PEM",
                   help="CA bundle to check the endpoint's chain against (default: trust is not checked)")
    p.add_argument("--timeout", type=float, default=5.0, metavar="SECONDS",
                   help="per connection: connect, handshake, SIP response (default: %(default)s)")
    p.add_argument("--no-sip", dest="sip", action="store_false", help="do not send a SIP OPTIONS")
    p.add_argument("--json", action="store_true", help="print the report as JSON")


def run_from_args(args: argparse.Namespace) -> int:
    host, port = parse_target(args.target)
    if args.timeout <= 0:
        raise ProbeError(f"--timeout must be positive, not {args.timeout:g}")
    report = trio.run(functools.partial(probe, host, port, server_name=args.server_name, cert=args.cert,
                                        key=args.key, ca=args.ca, timeout=args.timeout, sip=args.sip))
    if args.json:
        print(json.dumps(report.as_dict(), indent=2))
    else:
        print(format_table(report), end="")
    return 0 if report.reachable else 1


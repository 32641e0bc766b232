"""The probe's report: what one endpoint accepted, sent and answered, as plain data.

Versions and suites are :class:`Attempt` records (a version with a status from the three
below; each suite the endpoint accepted, per version, in the order it chose them), features
are :class:`Feature` records; ``as_dict`` of each record is the ``--json`` output, field for
field. :mod:`siptap.tools.probe.table` renders the same report as text.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from OpenSSL import SSL

from siptap.errors import SiptapError

ACCEPTED = "accepted"
REJECTED = "rejected"
ERROR = "error"  # no verdict: the connection failed or timed out before the endpoint answered


class ProbeError(SiptapError):
    """A probe that cannot start (bad target, unusable --cert/--key/--ca)."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint


@dataclass(frozen=True, slots=True)
class Attempt:
    """A version tried, or a suite the endpoint accepted."""

    name: str  # "TLSv1.2", or the IANA suite name
    status: str  # ACCEPTED, REJECTED, ERROR
    detail: str = ""
    code: int | None = None  # IANA suite code
    openssl_name: str | None = None
    key_exchange: str | None = None  # "RSA", "ECDHE", "DHE", ..., "TLSv1.3" (see tls_suites.key_exchange_of_suite)

    @property
    def accepted(self) -> bool:
        return self.status == ACCEPTED

    def as_dict(self) -> dict[str, object]:
        out: dict[str, object] = {"name": self.name, "status": self.status, "detail": self.detail}
        if self.code is not None:
            out.update(code=f"0x{self.code:04X}", openssl_name=self.openssl_name, key_exchange=self.key_exchange)
        return out


@dataclass(frozen=True, slots=True)
class Feature:
    """A protocol feature (extended master secret, resumption, OCSP stapling, ...)."""

    name: str
    supported: bool | None  # None: does not apply, or no verdict (``detail`` says which)
    detail: str = ""

    def as_dict(self) -> dict[str, object]:
        return {"name": self.name, "supported": self.supported, "detail": self.detail}


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
    # Per version name: the suites accepted, in the order the endpoint chose them.
    suites: dict[str, list[Attempt]] = field(default_factory=dict)
    features: list[Feature] = field(default_factory=list)
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
    def tls12_suites(self) -> list[Attempt]:
        return self.suites.get("TLSv1.2", [])

    @property
    def tls13_suites(self) -> list[Attempt]:
        return self.suites.get("TLSv1.3", [])

    @property
    def accepted_tls12_suites(self) -> list[str]:
        return [a.name for a in self.tls12_suites if a.accepted]

    @property
    def accepted_tls13_suites(self) -> list[str]:
        return [a.name for a in self.tls13_suites if a.accepted]

    @property
    def tls13_only(self) -> bool:
        return self.accepted_versions == ["TLSv1.3"]

    def feature(self, name: str) -> Feature | None:
        return next((f for f in self.features if f.name == name), None)

    @property
    def rsa_key_exchange(self) -> bool | None:
        """True if some RSA key-transport suite was accepted (any version); None if the versions
        could not be scanned."""
        if any(a.key_exchange == "RSA" for suites in self.suites.values() for a in suites):
            return True
        if self.versions and all(a.status in (ACCEPTED, REJECTED) for a in self.versions):
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
            "suites": {version: [a.as_dict() for a in suites] for version, suites in self.suites.items()},
            "accepted_tls12_suites": self.accepted_tls12_suites,
            "accepted_tls13_suites": self.accepted_tls13_suites,
            "rsa_key_exchange": self.rsa_key_exchange,
            "features": [f.as_dict() for f in self.features],
            "chain": [c.as_dict() for c in self.chain],
            "chain_problems": list(self.chain_problems),
            "trust_checked_against": self.trust_checked_against,
            "problems": self.problems,
            "client_certificate": self.client_cert.as_dict() if self.client_cert else None,
            "sip_options": self.sip.as_dict() if self.sip else None,
        }

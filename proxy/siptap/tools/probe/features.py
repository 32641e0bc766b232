"""The protocol features an interop report needs beside the suites, each with how it was found.

From the ServerHellos the suite scan already read (:mod:`.suites`), at the newest version up
to TLS 1.2 the endpoint accepts: extended master secret (RFC 7627), encrypt-then-MAC
(RFC 7366; echoed only when a CBC suite was chosen, so judged on those), secure renegotiation
(renegotiation_info, RFC 5746). These three do not exist as options in TLS 1.3, which has them
built in or has no renegotiation.

By real handshakes with OpenSSL (a ServerHello alone cannot show them): session-ID resumption
(TLS 1.2 and older, tickets off) and ticket resumption (per version; in TLS 1.2 only when the
ServerHello promised a ticket, else a resumption could be by session ID), each a full handshake
and a second one offering its session, "yes" only when OpenSSL reports the session reused;
and OCSP stapling, from the widest-offer handshake that asked for a status (the response
arrives in CertificateStatus in TLS 1.2, in the encrypted Certificate message in TLS 1.3).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from cryptography.x509 import ocsp
from OpenSSL import SSL

from siptap.sansio.tls_hello import (
    EXT_ENCRYPT_THEN_MAC,
    EXT_EXTENDED_MASTER_SECRET,
    EXT_RENEGOTIATION_INFO,
    EXT_SESSION_TICKET,
    EXT_STATUS_REQUEST,
)
from siptap.sansio.tls_suites import is_cbc_suite
from siptap.tools.probe.handshake import Outcome
from siptap.tools.probe.offers import Offer
from siptap.tools.probe.report import Feature
from siptap.tools.probe.suites import VersionScan

_OPENSSL_VERSIONS = {"SSLv3": SSL.SSL3_VERSION, "TLSv1": SSL.TLS1_VERSION, "TLSv1.1": SSL.TLS1_1_VERSION,
                     "TLSv1.2": SSL.TLS1_2_VERSION, "TLSv1.3": SSL.TLS1_3_VERSION}


def from_server_hellos(scans: list[VersionScan]) -> list[Feature]:
    """EMS, encrypt-then-MAC, secure renegotiation, judged at the newest version up to TLS 1.2."""
    legacy = [s for s in scans if s.accepted and s.version < 0x0304]
    if not legacy:
        why = "does not apply: TLS 1.3 only" if any(s.accepted for s in scans) else "no version accepted"
        return [Feature("extended master secret", None, why), Feature("encrypt-then-MAC", None, why),
                Feature("secure renegotiation", None, "does not apply: TLS 1.3 has no renegotiation"
                        if any(s.accepted for s in scans) else "no version accepted")]
    scan = max(legacy, key=lambda s: s.version)
    at = f"{scan.name}, from {len(scan.hellos)} ServerHello{'s' if len(scan.hellos) != 1 else ''}"
    out = [_flag("extended master secret", scan, EXT_EXTENDED_MASTER_SECRET, at)]
    cbc = [h for h in scan.hellos if is_cbc_suite(h.cipher_suite)]
    if not cbc:
        out.append(Feature("encrypt-then-MAC", None, f"does not apply: no CBC suite accepted ({scan.name})"))
    else:
        etm = sum(h.has(EXT_ENCRYPT_THEN_MAC) for h in cbc)
        out.append(Feature("encrypt-then-MAC", etm > 0, f"{scan.name}, in {etm} of {len(cbc)} CBC-suite ServerHellos"))
    out.append(_flag("secure renegotiation", scan, EXT_RENEGOTIATION_INFO, at))
    return out


def _flag(name: str, scan: VersionScan, extension: int, at: str) -> Feature:
    count = sum(h.has(extension) for h in scan.hellos)
    if 0 < count < len(scan.hellos):
        return Feature(name, True, f"{at}: in {count} of them only")
    return Feature(name, count > 0, at)


def ocsp_stapling(main: Outcome, scans: list[VersionScan]) -> Feature:
    """From the widest-offer handshake's OCSP callback, with the TLS 1.2 ServerHello's promise as a hint."""
    promised = any(h.has(EXT_STATUS_REQUEST) for s in scans for h in s.hellos)
    if main.ocsp is None:
        if not main.server_hello:
            return Feature("OCSP stapling", None, "no verdict: our handshake got no ServerHello")
        hint = " (its TLS 1.2 ServerHello did promise one)" if promised else ""
        return Feature("OCSP stapling", None, f"no verdict: the handshake ended before the certificate{hint}")
    if not main.ocsp:
        return Feature("OCSP stapling", False, f"{main.version}: no response stapled")
    try:
        response = ocsp.load_der_ocsp_response(main.ocsp)
    except ValueError as exc:
        return Feature("OCSP stapling", True, f"{main.version}: {len(main.ocsp)} bytes that are not an OCSP response ({exc})")
    status = response.response_status.name.lower()
    if response.response_status != ocsp.OCSPResponseStatus.SUCCESSFUL:
        return Feature("OCSP stapling", True, f"{main.version}: response status {status}")
    cert_status = response.certificate_status.name.lower()
    next_update = response.next_update_utc
    until = f", next update {next_update:%Y-%m-%d %H:%M UTC}" if next_update is not None else ""
    return Feature("OCSP stapling", True, f"{main.version}: certificate {cert_status}{until}")


Attempt = Callable[..., Awaitable[Outcome]]


async def resumption(attempt: Attempt, scans: list[VersionScan], ticket_wait: float) -> list[Feature]:
    """Session-ID and ticket resumption, each by two real handshakes (see the module docstring)."""
    accepted = {s.name for s in scans if s.accepted}
    legacy = [s.name for s in scans if s.accepted and s.version < 0x0304]
    out: list[Feature] = []
    if legacy:
        newest = legacy[-1]
        out.append(await _resume(attempt, "session-ID resumption", newest, tickets=False, ticket_wait=0.0))
        name = f"ticket resumption ({newest})"
        scan = next(s for s in scans if s.name == newest)
        if any(h.has(EXT_SESSION_TICKET) for h in scan.hellos):
            out.append(await _resume(attempt, name, newest, tickets=True, ticket_wait=0.0))
        else:
            # Asked for and not promised: a resumption now could only be by session ID.
            out.append(Feature(name, False, f"{newest}: no session_ticket in its ServerHellos"))
    else:
        out.append(Feature("session-ID resumption", None, "does not apply: TLS 1.3 resumes by tickets only"
                           if accepted else "no version accepted"))
    if "TLSv1.3" in accepted:
        out.append(await _resume(attempt, "ticket resumption (TLSv1.3)", "TLSv1.3", tickets=True, ticket_wait=ticket_wait))
    return out


async def _resume(attempt: Attempt, name: str, version: str, *, tickets: bool, ticket_wait: float) -> Feature:
    constant = _OPENSSL_VERSIONS[version]
    offer = Offer(constant, constant, tickets=tickets)
    try:
        return await _resume_with(attempt, name, version, offer, ticket_wait)
    except SSL.Error as exc:  # this OpenSSL cannot speak the version at all (SSLv3)
        return Feature(name, None, f"no verdict: this OpenSSL cannot make a {version} handshake ({exc})")


async def _resume_with(attempt: Attempt, name: str, version: str, offer: Offer, ticket_wait: float) -> Feature:
    first = await attempt(offer, ticket_wait=ticket_wait)
    if not first.completed or first.session is None:
        why = first.error or (first.failure.detail if first.failure else "no session")
        hint = "; it asks for a client certificate: --cert, --key" if first.cert_requested else ""
        return Feature(name, None, f"no verdict: the first handshake did not complete ({why}{hint})")
    if first.refused_after is not None:
        # TLS 1.3: our side finished, the endpoint then refused us (typically: no client certificate).
        hint = "; it asks for a client certificate: --cert, --key" if first.cert_requested else ""
        return Feature(name, None, f"no verdict: the endpoint ended the first connection ({first.refused_after}{hint})")
    second = await attempt(offer, session=first.session)
    if not second.completed:
        why = second.error or (second.failure.detail if second.failure else "?")
        return Feature(name, None, f"no verdict: the second handshake did not complete ({why})")
    if second.reused:
        return Feature(name, True, f"{version}: the second handshake resumed the first one's session")
    return Feature(name, False, f"{version}: a full handshake again")

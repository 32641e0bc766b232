"""The scan: every attempt against one endpoint, one at a time, gathered into a :class:`ProbeReport`.

Order: the widest offer first (with our certificate, if any: chain, CA names, the
negotiated suite, a stapled OCSP response), SIP OPTIONS over it, the client-certificate
verdict, then per protocol version every suite it accepts from hand-built ClientHellos
(:mod:`.suites`), then the features (:mod:`.features`: from those ServerHellos, and the
resumption handshakes). One connection at a time, so a single-threaded peer is never
flooded; after a few attempts in a row without an answer the rest are not tried.
"""

from __future__ import annotations

from collections.abc import Awaitable
from pathlib import Path
from typing import Protocol

import trio
from OpenSSL import SSL

from siptap.errors import CertificateError
from siptap.sansio.handshake import FailureReason
from siptap.sansio.tls_suites import TLS12_SUITE_NAMES, TLS13_SUITE_NAMES, key_exchange_of_suite, suite_name
from siptap.tls.pem import key_matches_certificate, load_certificate_chain, load_private_key
from siptap.tools.probe.certificates import chain_problems, describe_certificate
from siptap.tools.probe.features import from_server_hellos, ocsp_stapling, resumption
from siptap.tools.probe.handshake import CLOSED_AFTER_HANDSHAKE, Outcome, attempt_handshake, settle
from siptap.tools.probe.offers import ClientIdentity, Offer, openssl_name
from siptap.tools.probe.report import (
    ACCEPTED,
    ERROR,
    REJECTED,
    Attempt,
    ClientCertInfo,
    ProbeError,
    ProbeReport,
    SipResult,
)
from siptap.tools.probe.sip_options import CLOSED_WITHOUT_ANSWER, send_options
from siptap.tools.probe.suites import SCANNED_VERSIONS, Progress, VersionScan, scan_version

_MAX_ERRORS_IN_A_ROW = 3


class Attempter(Protocol):
    """``probe``'s one-attempt closure: the target and our identity bound, the errors in a row counted."""

    def __call__(self, offer: Offer, *, with_identity: bool = True, keep: bool = False, ocsp: bool = False,
                 session: SSL.Session | None = None, ticket_wait: float = 0.0) -> Awaitable[Outcome]: ...


def load_client_identity(cert: Path, key: Path) -> ClientIdentity:
    chain = load_certificate_chain(cert)
    private = load_private_key(key, allow_insecure_permissions=True)  # a diagnostic tool: read what it is given
    if not key_matches_certificate(private, chain[0]):
        raise CertificateError(str(key), f"private key does not match the certificate in {cert}")
    return ClientIdentity(tuple(chain), private)


async def probe(host: str, port: int, *, server_name: str | None = None, cert: Path | None = None,
                key: Path | None = None, ca: Path | None = None, timeout: float = 5.0,
                sip: bool = True, progress: Progress | None = None) -> ProbeReport:
    """Probe one endpoint; see the module docstring. Never raises for what the endpoint does;
    raises ProbeError/CertificateError for unusable arguments. ``progress`` hears a line per step."""
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

    def step(text: str) -> None:
        if progress is not None:
            progress(text)

    async def attempt(offer: Offer, *, with_identity: bool = True, keep: bool = False, ocsp: bool = False,
                      session: SSL.Session | None = None, ticket_wait: float = 0.0) -> Outcome:
        nonlocal errors_in_a_row
        if errors_in_a_row >= _MAX_ERRORS_IN_A_ROW:
            # An endpoint that stopped answering (rate limit, fail2ban, crash) would otherwise
            # cost one timeout per remaining attempt.
            return Outcome(error=f"not tried: the previous {errors_in_a_row} attempts got no answer")
        outcome = await attempt_handshake(host, port, name, offer, identity=identity if with_identity else None,
                                 ca=ca, timeout=timeout, keep=keep, ocsp=ocsp, session=session,
                                 ticket_wait=ticket_wait)
        errors_in_a_row = errors_in_a_row + 1 if outcome.error is not None else 0
        return outcome

    # 1. The widest offer, with our certificate if we have one: chain, CA names, negotiated suite.
    step("handshake with the widest offer")
    main = await attempt(Offer(SSL.TLS1_VERSION, SSL.TLS1_3_VERSION), keep=True, ocsp=True)
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
                step("SIP OPTIONS")
                report.sip = await send_options(main.stream, name, port, timeout)
                if report.sip.status_line is None and report.sip.closed:
                    post_refusal = report.sip.detail
            elif main.cert_requested:
                post_refusal = await settle(main.stream, min(timeout, 1.0))
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
    report.chain_problems = chain_problems(main.verify_errors, ca)

    # 5. Per version, every suite it accepts: hand-built ClientHellos, read from the ServerHellos.
    scans: list[VersionScan] = []
    for version_name, wire in SCANNED_VERSIONS:
        candidates = list(TLS13_SUITE_NAMES if wire >= 0x0304 else TLS12_SUITE_NAMES)
        scan = await scan_version(host, port, version_name, wire, candidates, server_name=name, timeout=timeout,
                                  progress=progress)
        scans.append(scan)
        status = ERROR if scan.error else ACCEPTED if scan.accepted else REJECTED
        report.versions.append(Attempt(version_name, status, scan.detail))
        if scan.accepted:
            report.suites[version_name] = [
                Attempt(suite_name(code), ACCEPTED, "", code, openssl_name(code), key_exchange_of_suite(code))
                for code in scan.suites
            ]

    # 6. Features: from those ServerHellos, the widest offer's OCSP answer, resumption handshakes.
    report.features = from_server_hellos(scans)
    step("session resumption")
    report.features += await resumption(attempt, scans, ticket_wait=min(timeout, 1.0))
    report.features.append(ocsp_stapling(main, scans))
    return report


# What the endpoint did when it closed cleanly, with no TLS alert (handshake.settle, sip_options).
_CLEAN_CLOSES = frozenset({CLOSED_AFTER_HANDSHAKE, CLOSED_WITHOUT_ANSWER})


async def _client_cert_verdict(main: Outcome, post_refusal: str | None, identity: ClientIdentity | None,
                               attempt: Attempter, timeout: float) -> ClientCertInfo:
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
    elif main.failure is not None:
        ours = f"rejected: {main.failure.detail}"
    elif post_refusal in _CLEAN_CLOSES:
        # TLS took it (a refusal of a certificate is an alert, in the handshake or, with TLS
        # 1.3, right after it); the endpoint then closed for a reason of its own.
        ours = (f"accepted by TLS, then closed without an alert ({post_refusal}): a refusal after the "
                "handshake or the far side unreachable (siptap: no route matches, OCSP, its core "
                "cannot be reached); the endpoint's log says which")
    else:
        ours = f"rejected: {post_refusal}"
    # And without one?
    bare = await attempt(Offer(SSL.TLS1_VERSION, SSL.TLS1_3_VERSION), with_identity=False, keep=True)
    try:
        if bare.error is not None:
            return ClientCertInfo(True, None, ca_names, ours, f"no verdict without a certificate: {bare.error}")
        if bare.failure is not None:
            return ClientCertInfo(True, True, ca_names or bare.ca_names, ours,
                                  f"handshake without a certificate failed: {bare.failure.detail}")
        refusal = await settle(bare.stream, min(timeout, 1.0)) if bare.stream is not None else None
        if refusal is not None:
            return ClientCertInfo(True, True, ca_names or bare.ca_names, ours, f"refused after the handshake: {refusal}")
        return ClientCertInfo(True, False, ca_names or bare.ca_names, ours, "a connection without a certificate was accepted")
    finally:
        if bare.stream is not None:
            with trio.move_on_after(2):
                await bare.stream.aclose()

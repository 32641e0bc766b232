"""The report as the plain-text table `siptap probe` prints without ``--json``."""

from __future__ import annotations

from siptap.tools.probe.report import ACCEPTED, ERROR, NOT_TESTABLE, REJECTED, SKIPPED, ProbeReport


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

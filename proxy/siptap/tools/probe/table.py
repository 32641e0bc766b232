"""The report as the plain-text table `siptap probe` prints without ``--json``."""

from __future__ import annotations

from siptap.tools.probe.report import ACCEPTED, ERROR, REJECTED, ProbeReport


def _mark(status: str) -> str:
    return {ACCEPTED: "yes", REJECTED: "no", ERROR: "error"}.get(status, status)


def _versions(report: ProbeReport) -> list[str]:
    """Accepted versions one per line; refused ones grouped by why (a TLS 1.3-only endpoint: two lines)."""
    out = ["TLS versions (hand-built ClientHellos, one version per connection)"]
    for a in report.versions:
        if a.status == ACCEPTED:
            out.append(f"  {a.name:<8} yes      {a.detail}".rstrip())
    refused: dict[str, list[str]] = {}
    for a in report.versions:
        if a.status != ACCEPTED:
            refused.setdefault(f"{_mark(a.status)}: {a.detail}" if a.detail else _mark(a.status), []).append(a.name)
    for why, names in refused.items():
        out.append(f"  {', '.join(names)}: {why}")
    return out


def _suites(report: ProbeReport) -> list[str]:
    out: list[str] = []
    unknown = False
    shown: dict[tuple[int | None, ...], str] = {}
    for version, suites in report.suites.items():
        out.append("")
        codes = tuple(a.code for a in suites)
        if codes in shown:  # TLS 1.0 and 1.1 often take the very same list
            out.append(f"{version} cipher suites accepted: the same {len(suites)} as {shown[codes]}")
            continue
        shown[codes] = version
        out.append(f"{version} cipher suites accepted ({len(suites)}, in the order the endpoint chose them)")
        if version == "TLSv1.3":
            out += [f"  0x{a.code or 0:04X} {a.name}" for a in suites]
            continue
        out.append(f"  {'code':<6} {'IANA name':<46} {'OpenSSL name':<32} kex")
        for a in suites:
            unknown = unknown or a.openssl_name is None
            out.append(f"  0x{a.code or 0:04X} {a.name:<46} {a.openssl_name or '-':<32} {a.key_exchange or ''}".rstrip())
    if unknown:
        out.append("  (OpenSSL name '-': this OpenSSL build does not know the suite; found from the ServerHello)")
    return out


_MARKS = {True: "yes", False: "no", None: "-"}


def _features(report: ProbeReport) -> list[str]:
    if not report.features:
        return []
    out = ["", "Features"]
    for f in report.features:
        out.append(f"  {f.name:<30} {_MARKS[f.supported]:<4} {f.detail}".rstrip())
    return out


def _tls13_only(report: ProbeReport) -> list[str]:
    """A TLS 1.3-only endpoint in a few lines: what it takes, why siptap's customer leg cannot
    serve it, and the features that still mean something."""
    by_reason: dict[str, list[str]] = {}
    for a in report.versions:
        if a.status != ACCEPTED:
            by_reason.setdefault(a.detail or _mark(a.status), []).append(a.name)
    refused = "; ".join(f"{', '.join(names)}: {why}" for why, names in by_reason.items())
    suites = report.tls13_suites
    applies = [f for f in report.features if not (f.supported is None and "does not apply" in f.detail)]
    moot = [f.name for f in report.features if f not in applies]
    return [
        f"TLS versions: TLS 1.3 only (refused: {refused})",
        f"TLSv1.3 cipher suites accepted ({len(suites)}): {', '.join(a.name for a in suites)}",
        "RSA key exchange: not possible (TLS 1.3 has no RSA key transport; siptap's customer leg needs TLS 1.2)",
        "Features: " + "; ".join(f"{f.name} {_MARKS[f.supported]}" + (f" ({f.detail})" if f.supported is None else "")
                                 for f in applies)
        + (f"; {', '.join(moot)}: do not apply to TLS 1.3" if moot else ""),
    ]


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
    if report.tls13_only:
        out += _tls13_only(report)
    else:
        out += _versions(report)
        out += _suites(report)
        out.append("")
        rsa_kex = report.rsa_key_exchange
        names = list(dict.fromkeys(a.name for suites in report.suites.values() for a in suites
                                   if a.key_exchange == "RSA"))
        listed = ", ".join(names[:6]) + (f" and {len(names) - 6} more" if len(names) > 6 else "")
        out.append("RSA key exchange: " + {True: f"possible ({listed})",
                                           False: "not possible (no RSA key-transport suite accepted)",
                                           None: "unknown (the versions could not be scanned)"}[rsa_kex])
        out += _features(report)
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

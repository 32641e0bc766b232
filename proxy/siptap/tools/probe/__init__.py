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

The package, one job per module: :mod:`.offers` (the versions and suites tried, the client
context, the offline ClientHello check), :mod:`.handshake` (one attempt on its own
connection), :mod:`.certificates` (the chain in words), :mod:`.sip_options` (the OPTIONS
check), :mod:`.scan` (every attempt, in order, into the report), :mod:`.report` (the report;
its ``as_dict`` is the ``--json`` output), :mod:`.table` (the text output), :mod:`.command`
(argparse and the run).
"""

from siptap.tools.probe.command import add_parser, parse_target, run_from_args
from siptap.tools.probe.report import (
    ACCEPTED,
    ERROR,
    NOT_TESTABLE,
    REJECTED,
    SKIPPED,
    Attempt,
    CertificateInfo,
    ClientCertInfo,
    ProbeError,
    ProbeReport,
    SipResult,
)
from siptap.tools.probe.scan import probe
from siptap.tools.probe.table import format_table

__all__ = [
    "ACCEPTED",
    "ERROR",
    "NOT_TESTABLE",
    "REJECTED",
    "SKIPPED",
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

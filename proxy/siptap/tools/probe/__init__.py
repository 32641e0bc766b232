"""`siptap probe HOST:PORT`: a SIP-aware TLS scanner for a customer's or a core's endpoint.

What it finds out, one TCP connection per attempt, one attempt at a time (a single-threaded
peer is never flooded):

* per TLS version (SSLv3 to TLS 1.3), every IANA cipher suite it accepts, also those this
  OpenSSL build cannot negotiate (CCM_8, ARIA, CAMELLIA, 3DES, ...): hand-built ClientHellos,
  the server's choice read from each ServerHello, removed, the rest offered again until it
  refuses (:mod:`.suites`); hence whether RSA key exchange is possible at all;
* extended master secret, encrypt-then-MAC and secure renegotiation from those ServerHellos;
  session-ID and ticket resumption and OCSP stapling by real OpenSSL handshakes (:mod:`.features`);
* its certificate chain as sent, with validity, SANs, key type and problems (expired, not yet
  valid, self-signed, not trusted by ``--ca``, name mismatch with the server name, an RSA key
  whose key usage lacks keyEncipherment, an EKU without serverAuth);
* whether it asks for a client certificate, which CA names it advertises, and whether it
  insists (a handshake without one fails), and whether it takes ours (``--cert``/``--key``);
* a SIP OPTIONS over an established connection, with the response's status line.

The suite scan needs no client certificate (the ServerHello comes before the server asks for
one); the real handshakes present ours when given, so a mutual-TLS endpoint's resumption and
SIP answers are seen too.

The probe is a client that trusts nothing and aborts nothing: verification runs with a
callback that records every error and continues, so a broken chain is reported in full.

The package, one job per module: :mod:`.offers` (the OpenSSL client context of the real
handshakes), :mod:`.handshake` (one real handshake on its own connection), :mod:`.suites`
(the suite scan by hand-built hellos), :mod:`.features` (EMS, ETM, renegotiation, resumption,
OCSP stapling), :mod:`.certificates` (the chain in words), :mod:`.sip_options` (the OPTIONS
check), :mod:`.scan` (every attempt, in order, into the report), :mod:`.report` (the report;
its ``as_dict`` is the ``--json`` output), :mod:`.table` (the text output), :mod:`.command`
(argparse and the run).
"""

from siptap.tools.probe.command import add_parser, parse_target, run_from_args
from siptap.tools.probe.report import (
    ACCEPTED,
    ERROR,
    REJECTED,
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

"""`siptap export`: an escalation bundle for a vendor, holding the selected calls and nothing else.

Inputs are what siptap already wrote: the cleartext pcap sink's files
(``<prefix>-YYYYmmdd-HHMMSS-N.pcap[ng]``; with ``workers`` > 1 one series per worker,
``<prefix>-w<I>-YYYYmmdd-HHMMSS-N.pcap[ng]``, merged by time), the NSS key log, the SRTP keys file and,
optionally, siptap's JSON log (stdout of ``siptap run``, saved by the operator). Paths come
from the config's ``[mirror]`` section unless given on the command line.

Selection: the selectors of `siptap calls` (:mod:`siptap.tools.calls.select`): ``--call-id``
(exact, without its ``@host`` part, or a prefix; each must name one call, else the candidates
are listed), ``--number``, ``--status``, ``--method`` and the window ``[--since, --until]``.
With only a window, every call with a message in the window is selected, with the messages
inside the window; with other selectors, the chosen calls' messages inside the window. More
than one call chosen by number/status/method is ambiguous unless ``--all``.

The bundle folder (written to a temporary sibling, then renamed; 0700, files 0600: it may hold
keys) and ``<folder>.tar.gz`` of it:

``calls.pcapng``
    The selected messages as synthetic Ethernet/IP/TCP, one segment per message as the
    sink wrote them: each message's exact bytes, original addresses and timestamps, but the
    TCP headers re-encoded with :class:`siptap.sansio.pcap.TcpFlow` (a fresh SYN/SYN-ACK/ACK
    before each connection's first kept message, contiguous sequence numbers, the original
    FIN exchange if it is inside the window) so the segments left out leave no gaps:
    tshark shows no TCP analysis warnings. With ``--with-keys`` the ``keys.log`` text rides
    along as a Decryption Secrets Block: harmless for cleartext, and it decrypts a raw
    capture of the same connections opened together with it.
``keys.log`` (only with ``--with-keys``: the pcapng already holds the cleartext)
    The key-log entries (``#`` comment plus NSS lines) of the proxied connections that
    carried a selected message: the connection is found by matching the comment's
    ``client=``/``server=`` to the addresses of the flow in the capture; every leg of that
    connection id is included (the calls crossed both). When several entries match the
    same address pair (port reuse), the JSON log's ``handshake_done`` times pick the one
    preceding the flow; without a log all of them are included, with a warning.
``srtp-keys.log``
    The SRTP key lines whose ``call-id=`` is a selected call and whose time is in the window.
``summary.txt`` / ``summary.json``
    The tshark command that opens ``calls.pcapng`` (a ``-d tcp.port==PORT,sip`` per server
    port), per call its flow (start time, then seconds since it and since the message before,
    leg, direction with addresses, method or status, CSeq) and the
    TLS facts of its connections: from the key-log comments (version, cipher) and, with
    ``--log``, from ``handshake_done`` (key exchange, SNI, resumption, peer certificate;
    never secrets; the peer certificate as subject, issuer, SANs and notAfter) and
    ``connection_closed`` (who closed, why, duration; never the counts, which would describe
    other calls). With ``--with-keys``, how many other calls (when, which request, which
    status; never their Call-IDs or parties) those keys decrypt in a raw capture; the
    command prints their Call-IDs to the operator.
    Each call's flow is drawn as a text ladder (:mod:`siptap.tools.ladder`): E-SBC | siptap |
    core with each leg's TLS facts, a message relayed by siptap on both legs, SDP and
    ``a=crypto`` markers, failed responses marked.
``ladder.html``
    The same ladders as one self-contained HTML page with inline SVG (no script, no external
    file, font or URL): opens offline in a browser.

Nothing of an unselected call is copied: messages are filtered one by one, key entries by
connection, SRTP lines by Call-ID, log facts by connection with an allow-list of fields.
One caveat is inherent: the keys of a TLS connection decrypt *all* of it, so a vendor who
also holds a raw capture of that connection can read the other calls it carried: hence no
keys unless ``--with-keys``, and then the summary says what else they open.

The package, one job per module: :mod:`.captures` (the pcap sink's files, read back into SIP
messages), :mod:`.keylog`, :mod:`.srtp_keys` and :mod:`.json_log` (the other inputs),
:mod:`.selection` (what to export and from where), :mod:`.bundle` (the bundle's files in
memory), :mod:`.pcapng` (``calls.pcapng``), :mod:`.summary` (``summary.json``/``.txt``),
:mod:`.legs` (which leg each flow is, for the ladder), :mod:`.archive` (the folder and its ``.tar.gz``
on disk), :mod:`.command` (argparse and the run);
:mod:`.addresses`, :mod:`.times` and :mod:`.errors` are what they say.
"""

from siptap.tools.export.bundle import BUNDLE_FILES, Bundle, build_bundle
from siptap.tools.export.captures import CaptureScan, Message, capture_files, read_messages
from siptap.tools.export.command import add_parser, run_from_args
from siptap.tools.export.errors import ExportError
from siptap.tools.export.json_log import LogFacts, parse_json_log
from siptap.tools.export.keylog import KeyEntry, parse_keylog
from siptap.tools.export.selection import Selection, Sources
from siptap.tools.export.srtp_keys import select_srtp_lines
from siptap.tools.export.times import parse_time

__all__ = [
    "BUNDLE_FILES",
    "Bundle",
    "CaptureScan",
    "ExportError",
    "KeyEntry",
    "LogFacts",
    "Message",
    "Selection",
    "Sources",
    "add_parser",
    "build_bundle",
    "capture_files",
    "parse_json_log",
    "parse_keylog",
    "parse_time",
    "read_messages",
    "run_from_args",
    "select_srtp_lines",
]

"""The benchmark topology, as reusable pieces (bench/run.py and later soak scripts import them).

    sipp UAC (TCP) -> stunnel customer (TLS 1.2 client, customer cert, kRSA suites only)
        -> MIDDLE -> stunnel core (TLS server, requires + verifies the client cert) -> sipp UAS (TCP)

MIDDLE is one of ``MIDDLES``: ``none`` (customer stunnel straight to the core stunnel),
``stunnel-pair``, ``sslsplit``, ``kamailio``, ``trio-floor`` (siptap's TLS shell alone, bench/floor_relay.py),
``siptap-sinks-on``, ``siptap-sinks-off``,
``siptap-2-workers``. Everything runs on 127.0.0.1 on free ports, from a lab PKI generated at run
time into a temporary folder (``make_pki``): no key is ever written into the repository.

Process plumbing reuses the integration tests' helpers (tests/integration/peers.py: free ports,
the Peer handle, SIGTERM/SIGKILL on exit; tests/relay/harness.py: ``write_config`` for siptap;
siptap.tools.export: the pcap -> SIP reader used for wire latency). A port picked free can be
taken by another process before the peer binds it (the machine is shared): every peer here is
started by ``on_free_ports``, which waits until the peer's own processes listen on its ports
(``running_bound``) and, when it lost one, starts it again on new ones, a bounded number of
times, saying so on stderr.

Measurements come from /proc: ``cpu_seconds`` (utime+stime of a process tree, reaped children
included), ``pss_kib`` (sum of Pss over the tree from smaps_rollup), ``tcp_established``
(sockets by port from /proc/net/tcp). All waits are on real events (a port listening, a stats
row appearing, a socket count reached) with deadlines; the only sleeps are the measurement
windows the caller asks for and bounded polling of those conditions.

Session resumption is off at every hop (stunnel ``sessionResume = no`` + ``NO_TICKET``, Kamailio
``session_cache = 0``, siptap's default): every connection costs full RSA handshakes on both legs.
"""

from __future__ import annotations

import contextlib
import os
import re
import resource
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

import trio

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from siptap.tools.pki import init_lab_pki  # noqa: E402
from tests.integration.peers import Peer, free_port, listening_ports  # noqa: E402
from tests.relay.harness import SiptapProcess, write_config  # noqa: E402

SCENARIOS = ROOT / "bench" / "scenarios"
#: OpenSSL names of the six TLS_RSA_WITH_AES_* suites (RSA key exchange only), design.md section 3.
RSA_SUITES = "AES256-GCM-SHA384:AES128-GCM-SHA256:AES256-SHA256:AES128-SHA256:AES256-SHA:AES128-SHA"
MIDDLES = ("none", "stunnel-pair", "sslsplit", "kamailio", "trio-floor", "siptap-sinks-on", "siptap-sinks-off",
           "siptap-2-workers")
CLK_TCK = os.sysconf("SC_CLK_TCK")


def which(name: str) -> str:
    import shutil

    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin:/usr/bin")
    if not found:
        raise RuntimeError(f"{name} not found (see bench/README.md for the Debian packages)")
    return found


# ------------------------------------------------------------------------------------------------
# PKI and limits


@dataclass(frozen=True)
class Pki:
    dir: Path

    def pem(self, name: str) -> Path:
        return self.dir / f"{name}.pem"

    def key(self, name: str) -> Path:
        return self.dir / f"{name}.key"


def make_pki(tmp: Path) -> Pki:
    """The lab PKI (ca, proxy-server, proxy-client, customer, core) in ``tmp/pki``."""
    directory = Path(tmp) / "pki"
    init_lab_pki(directory)
    return Pki(directory)


def raise_nofile(want: int = 65536) -> int:
    """Raise RLIMIT_NOFILE (soft up to the hard limit, hard too if allowed); children inherit it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(want, soft), max(want, hard)))
        return want
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


# ------------------------------------------------------------------------------------------------
# /proc readers


def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    return children


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its live descendants."""
    children = _children_map()
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(children.get(current, []))
    return tree


def cpu_seconds(pid: int) -> float:
    """utime+stime (+cutime+cstime: reaped children) of ``pid`` and every live descendant,
    all threads included, in seconds."""
    total = 0
    for member in process_tree(pid):
        try:
            fields = Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])
    return total / CLK_TCK


def pss_kib(pid: int, field: str = "Pss") -> int:
    """Sum of Pss (KiB) over ``pid``'s process tree, from /proc/PID/smaps_rollup (shared pages are
    divided between the processes that map them, so the sum counts each page once). With
    ``field="Anonymous"``: the process-private heap and stacks only, which do not move when
    other processes map or unmap the same libraries (PSS does, by a few KiB per connection
    over an S4 run)."""
    total = 0
    for member in process_tree(pid):
        try:
            text = Path(f"/proc/{member}/smaps_rollup").read_text()
        except OSError:
            continue
        match = re.search(rf"^{field}:\s+(\d+) kB", text, re.M)
        if match:
            total += int(match.group(1))
    return total


def tcp_established(*, remote_port: int | None = None, local_port: int | None = None) -> int:
    """ESTABLISHED TCP sockets (IPv4 and IPv6) with that remote and/or local port."""
    count = 0
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(FileNotFoundError), open(name) as table:
            next(table, None)
            for line in table:
                fields = line.split()
                if len(fields) < 4 or fields[3] != "01":
                    continue
                if local_port is not None and int(fields[1].rsplit(":", 1)[1], 16) != local_port:
                    continue
                if remote_port is not None and int(fields[2].rsplit(":", 1)[1], 16) != remote_port:
                    continue
                count += 1
    return count


async def wait_until(predicate, timeout: float, what: str, interval: float = 0.05) -> None:
    """Poll ``predicate`` (a condition, not a guess) until true; TimeoutError naming ``what``."""
    with trio.move_on_after(timeout):
        while not predicate():
            await trio.sleep(interval)
        return
    raise TimeoutError(f"timed out after {timeout} s waiting for {what}")


# ------------------------------------------------------------------------------------------------
# Free ports handed to peers: the race between the pick and the peer's bind

#: How many times a peer is started on freshly picked ports before the harness gives up.
PORT_ATTEMPTS = 5
#: What a peer prints when its bind fails for a port in use (stunnel, SIPp, Kamailio, SSLsplit,
#: siptap all say it in these words, from strerror(EADDRINUSE)).
ADDRESS_IN_USE = "Address already in use"

T = TypeVar("T")


class PortTaken(Exception):
    """A peer could not bind a port picked for it: another process took it after the pick."""


def owned_listening_ports(pid: int) -> set[int]:
    """TCP ports in LISTEN state (IPv4 and IPv6) on sockets that ``pid``'s process tree holds
    open: the ports this peer itself listens on, not merely ports someone listens on."""
    inodes: set[str] = set()
    for member in process_tree(pid):
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{member}/fd"):
                with contextlib.suppress(OSError):
                    target = os.readlink(f"/proc/{member}/fd/{fd}")
                    if target.startswith("socket:["):
                        inodes.add(target[8:-1])
    ports: set[int] = set()
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(FileNotFoundError), open(name) as table:
            next(table, None)
            for line in table:
                fields = line.split()
                if len(fields) > 9 and fields[3] == "0A" and fields[9] in inodes:
                    ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


async def wait_bound(peer: Peer, timeout: float = 15.0) -> None:
    """Wait until ``peer``'s own processes listen on each of ``peer.ports``. PortTaken when
    it lost one to another process: it exited saying "Address already in use", or another
    process listens there while it does not; any other failure to come up is a RuntimeError
    with its log's tail."""
    with trio.move_on_after(timeout):
        while True:
            missing = set(peer.ports) - owned_listening_ports(peer.process.pid)
            if not missing:
                return
            if peer.process.returncode is not None:
                if ADDRESS_IN_USE in peer.log_tail(20000):
                    raise PortTaken(f"{peer.name} exited: a port of {peer.ports} was in use ({ADDRESS_IN_USE})")
                break
            # Read after the LISTEN table: a port the peer bound in between is its own by now.
            taken = (missing & listening_ports()) - owned_listening_ports(peer.process.pid)
            if taken:
                raise PortTaken(f"another process listens on {sorted(taken)} picked for {peer.name}")
            await trio.sleep(0.02)  # polling a condition, bounded by the timeout
    raise RuntimeError(f"{peer.name} is not listening on {peer.ports} (exit code {peer.process.returncode}); "
                       f"log {peer.log}:\n{peer.log_tail()}")


@contextlib.asynccontextmanager
async def running_bound(name: str, argv: list[str], workdir: Path, ports: list[int]) -> AsyncIterator[Peer]:
    """Start ``argv`` in ``workdir`` (stdout and stderr to ``workdir/<name>.log``), wait until
    its own processes listen on ``ports`` (:func:`wait_bound`), stop it (SIGTERM, then SIGKILL)
    on exit, also when it never came up."""
    log = workdir / f"{name}.log"
    with open(log, "wb") as out:
        process = await trio.lowlevel.open_process(
            argv, cwd=str(workdir), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
        )
    peer = Peer(name, process, log, ports)
    try:
        await wait_bound(peer)
        yield peer
    finally:
        with trio.CancelScope(shield=True):
            await peer.stop()


@contextlib.asynccontextmanager
async def on_free_ports(what: str, count: int, start: Callable[[list[int]], AbstractAsyncContextManager[T]], *,
                        attempts: int = PORT_ATTEMPTS, pick: Callable[[], int] = free_port) -> AsyncIterator[T]:
    """``start(ports)`` on ``count`` freshly picked ports; when the peer lost one of them to
    another process between the pick and its bind (:class:`PortTaken`), start it again on new
    ports, at most ``attempts`` times in all, each retry said on stderr. Any other failure is
    raised at once."""
    for attempt in range(1, attempts + 1):
        ports = [pick() for _ in range(count)]
        stack = contextlib.AsyncExitStack()
        try:
            value = await stack.enter_async_context(start(ports))
        except PortTaken as exc:
            await stack.aclose()
            if attempt == attempts:
                raise PortTaken(f"{what}: lost a picked port {attempts} times in a row; last: {exc}") from None
            print(f"bench: {what}: {exc}; starting it again on new ports (attempt {attempt + 1} of {attempts})",
                  file=sys.stderr, flush=True)
            continue
        async with stack:
            yield value
        return


# ------------------------------------------------------------------------------------------------
# Mirror sink: counts UDP datagrams (HEP, JSON lines) in a plain thread, off the trio loop


class UdpCounter:
    """A UDP socket on 127.0.0.1:0 that counts what it receives (and datagrams starting with
    ``magic``, e.g. b"HEP3"). A daemon thread with blocking recv: a few µs per datagram."""

    def __init__(self, magic: bytes = b"") -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        self.sock.bind(("127.0.0.1", 0))
        self.port: int = self.sock.getsockname()[1]
        self.magic = magic
        self.datagrams = 0
        self.matching = 0
        self.octets = 0
        self._thread = threading.Thread(target=self._run, daemon=True, name=f"udp-counter-{self.port}")
        self._thread.start()

    def _run(self) -> None:
        buffer = bytearray(65536)
        view = memoryview(buffer)
        magic, n = self.magic, len(self.magic)
        while True:
            try:
                size = self.sock.recv_into(buffer)
            except OSError:
                return
            self.datagrams += 1
            self.octets += size
            if n and view[:n] == magic:
                self.matching += 1
            self.classify(view, size)

    def classify(self, view: memoryview, size: int) -> None:
        """Per-datagram hook for subclasses (bench/soak.py counts by record type)."""

    def kernel_drops(self) -> int:
        """Datagrams the kernel dropped at this socket (receive buffer full), from /proc/net/udp."""
        with contextlib.suppress(OSError), open("/proc/net/udp") as table:
            next(table, None)
            for line in table:
                fields = line.split()
                if len(fields) > 12 and int(fields[1].rsplit(":", 1)[1], 16) == self.port:
                    return int(fields[12])
        return 0

    def counts(self) -> dict[str, int]:
        """The counts without the kernel's drops (no /proc read: cheap enough to sample often)."""
        return {"datagrams": self.datagrams, "matching": self.matching, "octets": self.octets}

    def snapshot(self) -> dict[str, int]:
        return {"datagrams": self.datagrams, "matching": self.matching, "octets": self.octets,
                "sink_drops": self.kernel_drops()}

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()


# ------------------------------------------------------------------------------------------------
# Config text for the peers


def stunnel_customer_conf(pki: Pki, accept_port: int, connect_port: int, debug: int = 4) -> str:
    """The customer E-SBC's TLS stack: TLS 1.2 only, kRSA suites only, customer certificate,
    verifies the server (chain + name localhost), no session resumption."""
    return f"""foreground = yes
pid =
syslog = no
debug = {debug}
[customer]
client = yes
accept = 127.0.0.1:{accept_port}
connect = 127.0.0.1:{connect_port}
cert = {pki.pem('customer')}
key = {pki.key('customer')}
CAfile = {pki.pem('ca')}
verifyChain = yes
checkHost = localhost
sslVersionMin = TLSv1.2
sslVersionMax = TLSv1.2
ciphers = {RSA_SUITES}
sessionResume = no
options = NO_TICKET
"""


def stunnel_core_conf(pki: Pki, accept_port: int, uas_port: int, debug: int = 4) -> str:
    """The lab core SBC's TLS side: server with core.pem, requires and verifies the client
    certificate against the lab CA, plain TCP to the UAS, no session resumption."""
    return f"""foreground = yes
pid =
syslog = no
debug = {debug}
[core]
accept = 127.0.0.1:{accept_port}
connect = 127.0.0.1:{uas_port}
cert = {pki.pem('core')}
key = {pki.key('core')}
CAfile = {pki.pem('ca')}
verifyChain = yes
requireCert = yes
sslVersionMin = TLSv1.2
sessionResume = no
options = NO_TICKET
"""


def stunnel_pair_conf(pki: Pki, accept_port: int, loop_port: int, core_port: int, debug: int = 4) -> str:
    """ONE stunnel process, two services chained through a loopback port: [customer-leg] terminates
    mutual TLS (proxy-server.pem, verifies the customer against the CA, kRSA suites, TLS 1.2) and
    connects in clear to [core-leg], which re-originates mutual TLS (proxy-client.pem) to the core,
    verifying it (chain + name localhost)."""
    return f"""foreground = yes
pid =
syslog = no
debug = {debug}
[customer-leg]
accept = 127.0.0.1:{accept_port}
connect = 127.0.0.1:{loop_port}
cert = {pki.pem('proxy-server')}
key = {pki.key('proxy-server')}
CAfile = {pki.pem('ca')}
verifyChain = yes
requireCert = yes
sslVersionMin = TLSv1.2
sslVersionMax = TLSv1.2
ciphers = {RSA_SUITES}
sessionResume = no
options = NO_TICKET
[core-leg]
client = yes
accept = 127.0.0.1:{loop_port}
connect = 127.0.0.1:{core_port}
cert = {pki.pem('proxy-client')}
key = {pki.key('proxy-client')}
CAfile = {pki.pem('ca')}
verifyChain = yes
checkHost = localhost
sessionResume = no
options = NO_TICKET
"""


def kamailio_cfg(pki: Pki, *, tls_port: int, udp_port: int, core_port: int, hep_port: int,
                 tls_cfg: Path, debug: int = 2) -> str:
    """Kamailio 5.6 as a SIP-aware TLS middle: TLS server toward the customer, TLS client toward
    the core (both verified, see ``kamailio_tls_cfg``), transaction-stateful forward (tm t_relay)
    of every request to the core; replies go back on the customer's connection. siptrace mirrors
    every received and sent message as HEPv3 to 127.0.0.1:``hep_port`` (trace_mode=1).

    One TCP/TLS worker (tcp_children=1): Kamailio 5.6.3 + OpenSSL 3 corrupts shared memory with
    more (Kamailio issue 3791, design.md). Large write queues so requests arriving during the
    upstream handshake are not dropped. Kamailio multiplexes: every customer connection's
    requests go to the core over one shared upstream TLS connection (it is a SIP proxy, not a
    connection relay), which matters for S2 and S4."""
    return f"""#!KAMAILIO
debug={debug}
log_stderror=yes
memdbg=5
memlog=5
children=1
tcp_children=1
auto_aliases=no
disable_sctp=yes
enable_tls=yes
tcp_connection_lifetime=3600
tcp_max_connections=16384
tls_max_connections=16384
tcp_conn_wq_max=4194304
tcp_wq_max=67108864
tcp_async=yes

listen=tls:127.0.0.1:{tls_port}
listen=udp:127.0.0.1:{udp_port}

loadmodule "tls.so"
loadmodule "tm.so"
loadmodule "sl.so"
loadmodule "pv.so"
loadmodule "maxfwd.so"
loadmodule "siptrace.so"

modparam("tls", "config", "{tls_cfg}")
modparam("tls", "con_ct_wq_max", 4194304)
modparam("tls", "ct_wq_max", 67108864)
modparam("tls", "session_cache", 0)

modparam("tm", "fr_timer", 10000)
modparam("tm", "fr_inv_timer", 30000)

modparam("siptrace", "duplicate_uri", "sip:127.0.0.1:{hep_port}")
modparam("siptrace", "hep_mode_on", 1)
modparam("siptrace", "hep_version", 3)
modparam("siptrace", "hep_capture_id", 2002)
modparam("siptrace", "trace_to_database", 0)
modparam("siptrace", "trace_on", 1)
modparam("siptrace", "trace_mode", 1)

request_route {{
	if (!mf_process_maxfwd_header("10")) {{
		sl_send_reply("483", "Too Many Hops");
		exit;
	}}
	$du = "sip:127.0.0.1:{core_port};transport=tls";
	if (!t_relay()) {{
		sl_reply_error();
	}}
	exit;
}}
"""


def kamailio_tls_cfg(pki: Pki) -> str:
    """Kamailio tls.cfg: server profile = proxy-server.pem, TLS 1.2, kRSA suites, requires and
    verifies the customer's certificate; client profile = proxy-client.pem, verifies the core
    (chain only: Kamailio 5.6 does not check the core's host name)."""
    return f"""[server:default]
method = TLSv1.2
verify_certificate = yes
require_certificate = yes
verify_depth = 4
private_key = {pki.key('proxy-server')}
certificate = {pki.pem('proxy-server')}
ca_list = {pki.pem('ca')}
cipher_list = {RSA_SUITES}

[client:default]
method = TLSv1.2+
verify_certificate = yes
require_certificate = yes
verify_depth = 4
private_key = {pki.key('proxy-client')}
certificate = {pki.pem('proxy-client')}
ca_list = {pki.pem('ca')}
"""


def sslsplit_argv(pki: Pki, workdir: Path, *, listen_port: int, core_port: int) -> list[str]:
    """SSLsplit 0.5.5, ssl mode, static target (the core). Presents proxy-server (``-A``: key +
    cert + chain in one PEM, no forging), client certificate proxy-client toward the core
    (``-a``/``-b``), kRSA suites (``-s``; applies to both sides), content log (``-L``), master
    key log (``-M``), runs as root (``-u root``: no privilege drop).

    SSLsplit 0.5.5 never requests a client certificate from the customer, so it does NOT verify
    the customer; toward the core it verifies nothing either (VerifyPeer defaults to no and
    would only use the system trust store)."""
    leaf = workdir / "sslsplit-leaf.pem"
    fd = os.open(leaf, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(pki.key("proxy-server").read_bytes() + pki.pem("proxy-server").read_bytes()
                  + pki.pem("ca").read_bytes())
    return [which("sslsplit"), "-u", "root", "-A", str(leaf),
            "-a", str(pki.pem("proxy-client")), "-b", str(pki.key("proxy-client")),
            "-L", str(workdir / "content.log"), "-M", str(workdir / "keys.log"),
            "-l", str(workdir / "connect.log"),
            "ssl", "127.0.0.1", str(listen_port), "127.0.0.1", str(core_port)]


#: All siptap mirror sinks (as in bench/relay_cpu.py): HEP/UDP and JSON lines/UDP to counting
#: sockets, key log file, pcap folder, SRTP key file. ``legs`` picks which leg's SIP is mirrored.
SIPTAP_SINKS = """
[mirror]
legs = "{legs}"
[[mirror.hep]]
address = "127.0.0.1:{hep}"
[[mirror.jsonl]]
transport = "udp"
address = "127.0.0.1:{jsonl}"
[mirror.keylog]
path = "{tmp}/keys.log"
[mirror.pcap]
directory = "{tmp}/pcap"
[mirror.srtp_keys]
path = "{tmp}/srtp.log"
"""


async def lab_sink_sockets(tmp: Path, legs: str = "customer") -> tuple[list[trio.socket.SocketType], str]:
    """For the quick probes against the lab core: two UDP sockets bound on loopback (HEP,
    JSON lines; the caller drains them) and the ``[mirror]`` TOML that turns every sink on
    toward them, with the files under ``tmp``."""
    (tmp / "pcap").mkdir(exist_ok=True)
    sockets = []
    for _ in range(2):
        sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
        await sock.bind(("127.0.0.1", 0))
        sockets.append(sock)
    top = SIPTAP_SINKS.format(legs=legs, hep=sockets[0].getsockname()[1], jsonl=sockets[1].getsockname()[1], tmp=tmp)
    return sockets, top


async def start_lab_siptap(nursery: trio.Nursery, tmp: Path, pki: Path, top: str = "",
                           log_level: str = "info") -> tuple[Any, SiptapProcess, int]:
    """For the quick probes: the lab core (in this process) and ``siptap run`` in front of it
    with ``top`` (e.g. :func:`lab_sink_sockets`'s mirror) at ``log_level``: the core, siptap
    and siptap's customer port."""
    from siptap.tools.lab.core import start_lab_core

    core, core_port = await start_lab_core(nursery, pki)
    config = write_config(tmp, pki, cores=[core_port], top=top)
    config.write_text(config.read_text().replace('level = "debug"', f'level = "{log_level}"'))
    siptap = SiptapProcess(config)
    await siptap.start(nursery)
    return core, siptap, await siptap.port()



def siptap_config(workdir: Path, pki: Pki, *, listen_port: int, core_port: int, hep_port: int | None = None,
                  jsonl_port: int | None = None, legs: str = "customer", workers: int | None = None,
                  log_level: str = "info", max_connections: int = 8192) -> Path:
    """A siptap config (tests/relay/harness.py's ``write_config``): customer leg on
    ``listen_port``, the core at ``core_port``; sinks on when ``hep_port``/``jsonl_port`` are
    given; ``workers`` at top level when set. Logging: the shipped default (info, one ``sip``
    event per message) unless ``log_level`` says otherwise; logs go to a file, not a pipe."""
    top = ""
    if workers is not None:
        top += f"workers = {workers}\n"
    if hep_port is not None and jsonl_port is not None:
        (workdir / "pcap").mkdir(exist_ok=True)
        top += SIPTAP_SINKS.format(legs=legs, hep=hep_port, jsonl=jsonl_port, tmp=workdir)
    path = write_config(workdir, pki.dir, cores=[core_port], top=top, listen=f'["127.0.0.1:{listen_port}"]',
                        limits=f"max_connections = {max_connections}")
    path.write_text(path.read_text().replace('level = "debug"', f'level = "{log_level}"'))
    return path


def siptap_accepts(config: Path) -> tuple[bool, str]:
    """``siptap check --config`` verdict (exit 0 = usable) and its output."""
    result = subprocess.run([sys.executable, "-m", "siptap", "check", "--config", str(config)],
                            capture_output=True, text=True, timeout=60, cwd=str(ROOT))
    return result.returncode == 0, (result.stdout + result.stderr).strip()


# ------------------------------------------------------------------------------------------------
# Processes


def _workdir(tmp: Path, name: str) -> Path:
    path = Path(tmp) / name
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextlib.asynccontextmanager
async def stunnel(tmp: Path, name: str, conf_text: str, ports: list[int]) -> AsyncIterator[Peer]:
    """stunnel on ``conf_text``, up once it listens on ``ports`` itself (PortTaken if it lost one)."""
    workdir = _workdir(tmp, name)
    conf = workdir / "stunnel.conf"
    conf.write_text(conf_text)
    async with running_bound(name, [which("stunnel4"), str(conf)], workdir, ports) as peer:
        yield peer


@contextlib.asynccontextmanager
async def sipp_uas(tmp: Path, *, max_socket: int = 8192) -> AsyncIterator[Peer]:
    """SIPp UAS on TCP running bench/scenarios/uas.xml (100, 180, 200; ACK; BYE -> 200)."""
    workdir = _workdir(tmp, "sipp-uas")

    def start(ports: list[int]) -> AbstractAsyncContextManager[Peer]:
        argv = [which("sipp"), "-sf", str(SCENARIOS / "uas.xml"), "-t", "t1", "-i", "127.0.0.1", "-p", str(ports[0]),
                "-max_socket", str(max_socket), "-nostdin", "-trace_err", "-error_file", "errors.log"]
        return running_bound("sipp-uas", argv, workdir, ports)

    async with on_free_ports("sipp-uas", 1, start) as peer:
        yield peer


@dataclass
class Middle:
    """A running middle: its name, port toward the customer, process (None for ``none``), the
    counting sinks it feeds, and notes on how it was configured."""

    name: str
    port: int
    peer: Peer | None
    counters: dict[str, UdpCounter] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    multiplexes_upstream: bool = False  # Kamailio: one upstream connection for all customers

    @property
    def pid(self) -> int | None:
        return self.peer.process.pid if self.peer else None

    def cpu(self) -> float | None:
        return cpu_seconds(self.pid) if self.pid else None

    def pss(self) -> int | None:
        return pss_kib(self.pid) if self.pid else None

    def sinks(self) -> dict[str, dict[str, int]]:
        return {name: counter.snapshot() for name, counter in self.counters.items()}


class Unsupported(Exception):
    """A middle that cannot run here (e.g. siptap without the ``workers`` key)."""


@contextlib.asynccontextmanager
async def middle(kind: str, tmp: Path, pki: Pki, *, core_port: int, legs: str = "customer",
                 siptap_log_level: str = "info") -> AsyncIterator[Middle]:
    """Start the middle ``kind`` toward the core stunnel at ``core_port``, on free ports (again
    on new ones if it lost one before binding it: :func:`on_free_ports`)."""
    if kind == "none":
        yield Middle("none", core_port, None, notes=["customer stunnel connects straight to the core stunnel"])
        return

    def start(ports: list[int]) -> AbstractAsyncContextManager[Middle]:
        return _middle(kind, tmp, pki, ports, core_port=core_port, legs=legs, siptap_log_level=siptap_log_level)

    async with on_free_ports(kind, 2, start) as mid:
        yield mid


@contextlib.asynccontextmanager
async def _middle(kind: str, tmp: Path, pki: Pki, ports: list[int], *, core_port: int, legs: str,
                  siptap_log_level: str) -> AsyncIterator[Middle]:
    """One attempt at starting the middle ``kind`` on ``ports``: the customer-facing port, and
    a second one (the stunnel pair's loopback hop, Kamailio's UDP listener)."""
    port, extra = ports
    counters: dict[str, UdpCounter] = {}
    try:
        if kind == "stunnel-pair":
            loop_port = extra
            async with stunnel(tmp, "stunnel-pair", stunnel_pair_conf(pki, port, loop_port, core_port),
                               [port, loop_port]) as peer:
                yield Middle(kind, port, peer, notes=["one stunnel process, two services chained via a loopback port"])
        elif kind == "sslsplit":
            workdir = _workdir(tmp, "sslsplit")
            argv = sslsplit_argv(pki, workdir, listen_port=port, core_port=core_port)
            async with running_bound("sslsplit", argv, workdir, [port]) as peer:
                yield Middle(kind, port, peer, notes=[
                    "-L content log, -M key log, -l connection log; does NOT request or verify the customer's "
                    "client certificate (SSLsplit 0.5.5 has no such option) nor verify the core's certificate"])
        elif kind == "kamailio":
            workdir = _workdir(tmp, "kamailio")
            counters["hep"] = UdpCounter(b"HEP3")
            tls_cfg = workdir / "tls.cfg"
            tls_cfg.write_text(kamailio_tls_cfg(pki))
            cfg = workdir / "kamailio.cfg"
            cfg.write_text(kamailio_cfg(pki, tls_port=port, udp_port=extra, core_port=core_port,
                                        hep_port=counters["hep"].port, tls_cfg=tls_cfg))
            binary = which("kamailio")
            check = subprocess.run([binary, "-c", "-f", str(cfg)], capture_output=True, text=True, timeout=30)
            if check.returncode != 0:
                raise RuntimeError(f"kamailio -c rejected {cfg}:\n{check.stderr[-3000:]}")
            argv = [binary, "-DD", "-E", "-f", str(cfg), "-w", str(workdir), "-Y", str(workdir),
                    "-m", "512", "-M", "32"]
            async with running_bound("kamailio", argv, workdir, [port]) as peer:
                yield Middle(kind, port, peer, counters, multiplexes_upstream=True, notes=[
                    "tls verifies both ways; tm t_relay of everything to the core; siptrace trace_mode=1 "
                    "(HEPv3, every received and sent message) to a counting UDP sink; tcp_children=1; "
                    "one shared upstream TLS connection for all customer connections"])
        elif kind == "trio-floor":
            workdir = _workdir(tmp, kind)
            config = siptap_config(workdir, pki, listen_port=port, core_port=core_port)
            argv = [sys.executable, str(ROOT / "bench" / "floor_relay.py"), "--config", str(config)]
            async with running_bound(kind, argv, workdir, [port]) as peer:
                yield Middle(kind, port, peer, notes=[
                    "bench/floor_relay.py: siptap's contexts, handshakes, upstream dial and OpenSSLStream with "
                    "two bare pumps; no framing, logging, mirror or metrics: the trio + pyOpenSSL shell alone"])
        elif kind.startswith("siptap"):
            workdir = _workdir(tmp, kind)
            workers = 2 if kind == "siptap-2-workers" else None
            sinks_on = kind in ("siptap-sinks-on", "siptap-2-workers")
            if sinks_on:
                counters["hep"] = UdpCounter(b"HEP3")
                counters["jsonl"] = UdpCounter(b"{")
            config = siptap_config(workdir, pki, listen_port=port, core_port=core_port,
                                   hep_port=counters["hep"].port if sinks_on else None,
                                   jsonl_port=counters["jsonl"].port if sinks_on else None,
                                   legs=legs, workers=workers, log_level=siptap_log_level)
            if workers is not None:
                ok, output = siptap_accepts(config)
                if not ok:
                    raise Unsupported(f"siptap check rejects `workers = {workers}`: {output.splitlines()[-1] if output else '?'}")
            argv = [sys.executable, "-m", "siptap", "run", "--config", str(config)]
            async with running_bound(kind, argv, workdir, [port]) as peer:
                notes = [f"log level {siptap_log_level} to a file"]
                notes.append(f"sinks: HEP/UDP, JSON lines/UDP, key log, pcap, SRTP keys; legs={legs}" if sinks_on else "no mirror sinks")
                if workers:
                    notes.append(f"workers = {workers}")
                yield Middle(kind, port, peer, counters, notes=notes)
        else:
            raise ValueError(f"unknown middle {kind!r}; one of {', '.join(MIDDLES)}")
    finally:
        for counter in counters.values():
            counter.close()


@dataclass
class Chain:
    uas: Peer
    core: Peer
    core_port: int
    middle: Middle
    customer: Peer
    customer_port: int  # where the UAC connects (plain TCP)


@contextlib.asynccontextmanager
async def chain(tmp: Path, pki: Pki, kind: str, **middle_options: Any) -> AsyncIterator[Chain]:
    """The whole topology with middle ``kind``, started in order from the UAS outwards, stopped
    in reverse. Each call starts every process fresh."""
    tmp = Path(tmp)
    async with sipp_uas(tmp) as uas:
        core_start = lambda ports: stunnel(tmp, "stunnel-core", stunnel_core_conf(pki, ports[0], uas.ports[0]), ports)  # noqa: E731
        async with on_free_ports("stunnel-core", 1, core_start) as core:  # noqa: SIM117 - each level needs the one above it
            async with middle(kind, tmp, pki, core_port=core.ports[0], **middle_options) as mid:
                customer_start = lambda ports: stunnel(  # noqa: E731
                    tmp, "stunnel-customer", stunnel_customer_conf(pki, ports[0], mid.port), ports)
                async with on_free_ports("stunnel-customer", 1, customer_start) as customer:
                    yield Chain(uas, core, core.ports[0], mid, customer, customer.ports[0])


# ------------------------------------------------------------------------------------------------
# SIPp UAC runner with live statistics


def _epoch(stamp: str) -> float:
    """SIPp's -trace_stat time columns: 'date<TAB>time<TAB>epoch'."""
    return float(stamp.split("\t")[-1])


@dataclass
class StatsRow:
    values: dict[str, str]
    seen_monotonic: float  # when the harness first saw the row
    cpu: float | None  # the middle's CPU seconds sampled when the row was seen

    @property
    def time(self) -> float:
        return _epoch(self.values["CurrentTime"])

    def counter(self, name: str) -> int:
        return int(self.values[f"{name}(C)"])


class SippUac:
    """sipp -sf bench/scenarios/uac.xml over TCP to ``target_port`` (``transport`` t1 = one
    connection for all calls, tn = one per call), at ``rate`` calls/s, at most ``limit`` calls at
    once. Statistics every second (-trace_stat -fd 1): ``next_row`` returns each new row as it
    appears, with the middle's CPU sampled at that moment."""

    def __init__(self, tmp: Path, name: str, *, target_port: int, transport: str, rate: int, limit: int,
                 cpu_probe=None, max_socket: int = 8192) -> None:
        self.workdir = _workdir(tmp, name)
        self.stats = self.workdir / "stats.csv"
        self.argv = [which("sipp"), "-sf", str(SCENARIOS / "uac.xml"), "-t", transport, "-i", "127.0.0.1",
                     # Its own local port: SIPp's default (5060, then upwards) would take 5061,
                     # the shipped config's customer port.
                     "-p", str(free_port()),
                     f"127.0.0.1:{target_port}", "-r", str(rate), "-l", str(limit), "-max_socket", str(max_socket),
                     "-nostdin", "-trace_stat", "-stf", str(self.stats), "-fd", "1",
                     "-trace_err", "-error_file", str(self.workdir / "errors.log")]
        self.transport = transport
        self.cpu_probe = cpu_probe
        self.process: trio.Process | None = None
        self._rows_seen = 0
        self._header: list[str] | None = None

    async def start(self) -> None:
        """Start SIPp. Over ``t1`` it also listens on its local port (-p): it is started once
        it does, and again on a new port when another process took that one first (as
        :func:`on_free_ports` does for the other peers). Over ``tn`` it listens on none."""
        log = self.workdir / "sipp-uac.log"
        for attempt in range(1, PORT_ATTEMPTS + 1):
            self.stats.unlink(missing_ok=True)
            with open(log, "wb") as out:
                self.process = await trio.lowlevel.open_process(self.argv, cwd=str(self.workdir),
                                                                stdin=subprocess.DEVNULL, stdout=out,
                                                                stderr=subprocess.STDOUT)
            if self.transport != "t1":
                return
            at = self.argv.index("-p") + 1
            try:
                await wait_bound(Peer("sipp-uac", self.process, log, [int(self.argv[at])]))
                return
            except PortTaken as exc:
                await self.stop()
                if attempt == PORT_ATTEMPTS:
                    raise PortTaken(f"sipp-uac: lost a picked port {attempt} times in a row; last: {exc}") from None
                print(f"bench: sipp-uac: {exc}; starting it again on a new port (attempt {attempt + 1} of "
                      f"{PORT_ATTEMPTS})", file=sys.stderr, flush=True)
                self.argv[at] = str(free_port())

    def _rows(self) -> list[list[str]]:
        try:
            lines = self.stats.read_text(errors="replace").split("\n")
        except FileNotFoundError:
            return []
        complete = [line.split(";") for line in lines[:-1] if line.strip()]  # the last line may be partial
        return complete

    async def next_row(self, timeout: float = 10.0) -> StatsRow:
        with trio.move_on_after(timeout):
            while True:
                rows = self._rows()
                if self._header is None and rows:
                    self._header = rows[0]
                data_rows = rows[1:]
                if len(data_rows) > self._rows_seen:
                    cpu = self.cpu_probe() if self.cpu_probe else None
                    seen = time.monotonic()
                    row = data_rows[len(data_rows) - 1]
                    self._rows_seen = len(data_rows)
                    return StatsRow(dict(zip(self._header, row)), seen, cpu)
                if self.process is not None and self.process.returncode is not None:
                    raise RuntimeError(f"sipp UAC exited ({self.process.returncode}): {self.describe()}")
                await trio.sleep(0.01)  # polling for the row, bounded by the timeout
        raise TimeoutError(f"no new sipp statistics row within {timeout} s: {self.describe()}")

    def describe(self) -> str:
        text = ""
        for name in ("sipp-uac.log", "errors.log"):
            path = self.workdir / name
            if path.exists():
                text += f"\n{path}:\n" + path.read_text(errors="replace")[-1500:]
        return text

    async def stop(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
            with trio.move_on_after(5):
                await self.process.wait()
                return
            self.process.kill()
            await self.process.wait()


@dataclass
class Window:
    """What happened between two statistics rows of one SIPp run."""

    start: StatsRow
    end: StatsRow
    sinks_start: dict[str, dict[str, int]]
    sinks_end: dict[str, dict[str, int]]

    @property
    def seconds(self) -> float:
        return self.end.time - self.start.time

    @property
    def successful(self) -> int:
        return self.end.counter("SuccessfulCall") - self.start.counter("SuccessfulCall")

    @property
    def failed(self) -> int:
        return self.end.counter("FailedCall") - self.start.counter("FailedCall")

    @property
    def cpu(self) -> float | None:
        if self.start.cpu is None or self.end.cpu is None:
            return None
        return self.end.cpu - self.start.cpu

    def sink_delta(self, key: str = "matching") -> dict[str, int]:
        return {name: self.sinks_end[name][key] - self.sinks_start[name][key] for name in self.sinks_end}


# How often measure() samples the middle's CPU and the sinks' counts while a window runs.
SAMPLE_INTERVAL = 0.02


@dataclass
class Sample:
    """The middle's CPU seconds and the sinks' counts at one wall-clock moment."""

    time: float  # time.time(): the clock of SIPp's CurrentTime column
    cpu: float | None
    sinks: dict[str, dict[str, int]]


def nearest(samples: list[Sample], at: float) -> Sample:
    """The sample taken closest to the wall-clock time ``at``."""
    return min(samples, key=lambda sample: abs(sample.time - at))


async def _sample(samples: list[Sample], mid: Middle, cpu_probe) -> None:
    while True:
        sinks = {name: counter.counts() for name, counter in mid.counters.items()}
        samples.append(Sample(time.time(), cpu_probe() if cpu_probe else None, sinks))
        await trio.sleep(SAMPLE_INTERVAL)  # a sampling period, not synchronisation


async def measure(uac: SippUac, mid: Middle, *, warmup: float, duration: float) -> Window:
    """Wait for the first successful call, let ``warmup`` seconds pass (a fixed window), then take
    the window between the next statistics row and the first row ``duration`` seconds later.

    The middle's CPU and the sinks' counts at each end of the window are the samples (taken
    every SAMPLE_INTERVAL from the warm-up on) nearest to the row's own time (SIPp's
    CurrentTime), not readings taken when the harness happened to see the row: a harness
    that sees a row late (a loaded machine) would otherwise count the sinks over a window
    shifted from SIPp's by that lag (seen in session 6 and 7 runs as ~6.5 datagrams per call
    instead of 7: one second of S3 traffic) and the CPU likewise."""
    deadline = time.monotonic() + 60
    while True:
        row = await uac.next_row()
        if row.counter("SuccessfulCall") > 0:
            break
        if time.monotonic() > deadline:
            raise TimeoutError(f"no successful call within 60 s: {uac.describe()}")
    samples: list[Sample] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_sample, samples, mid, uac.cpu_probe)
        await trio.sleep(warmup)  # fixed warm-up window
        start = await uac.next_row()
        drops_start = mid.sinks()
        while True:
            end = await uac.next_row()
            if end.time - start.time >= duration - 0.05:
                break
        drops_end = mid.sinks()
        nursery.cancel_scope.cancel()
    at_start, at_end = nearest(samples, start.time), nearest(samples, end.time)
    # Kernel drops are cumulative and rare: read (from /proc) at the rows, not per sample.
    sinks_start = {name: {**counts, "sink_drops": drops_start[name]["sink_drops"]} for name, counts in at_start.sinks.items()}
    sinks_end = {name: {**counts, "sink_drops": drops_end[name]["sink_drops"]} for name, counts in at_end.sinks.items()}
    start = replace(start, cpu=at_start.cpu if at_start.cpu is not None else start.cpu)
    end = replace(end, cpu=at_end.cpu if at_end.cpu is not None else end.cpu)
    return Window(start, end, sinks_start, sinks_end)


# ------------------------------------------------------------------------------------------------
# Wire latency from a loopback capture between the UAC and the customer stunnel


def invite_latencies_ms(capture: Path, since: float, until: float) -> list[float]:
    """INVITE -> 200 (CSeq INVITE) times in ms, per Call-ID, from the cleartext TCP between SIPp
    and the customer stunnel (each message timed by the frame carrying its first byte), for
    INVITEs sent in [since, until] (epoch seconds). Reuses siptap.tools.export's reassembling reader."""
    from siptap.tools.export import read_messages

    sent: dict[str, int] = {}
    latencies: list[float] = []
    for message in read_messages([capture]).messages:
        view = message.view
        if view.call_id is None:
            continue
        if view.is_request and view.method == "INVITE":
            if since * 1e6 <= message.ts_us <= until * 1e6:
                sent[view.call_id] = message.ts_us
        elif not view.is_request and view.status_code == 200 and view.cseq_method == "INVITE":
            started = sent.pop(view.call_id, None)
            if started is not None:
                latencies.append((message.ts_us - started) / 1000.0)
    return latencies


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100)."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, min(len(ordered), int(-(-q * len(ordered) // 100))))
    return ordered[rank - 1]


# ------------------------------------------------------------------------------------------------
# Idle mutual-TLS connections (S4)


def customer_ssl_context(pki: Pki) -> ssl.SSLContext:
    """The customer's side as the stdlib sees it: TLS 1.2 only, kRSA suites, customer cert."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = context.maximum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(RSA_SUITES)
    context.load_cert_chain(pki.pem("customer"), pki.key("customer"))
    context.load_verify_locations(pki.pem("ca"))
    context.options |= ssl.OP_NO_TICKET
    return context


async def open_idle_connections(port: int, pki: Pki, count: int, *, concurrency: int = 16,
                                timeout: float = 120.0) -> list[trio.SSLStream]:
    """``count`` completed mutual-TLS handshakes to 127.0.0.1:``port``, left open and silent."""
    context = customer_ssl_context(pki)
    streams: list[trio.SSLStream] = []
    limiter = trio.CapacityLimiter(concurrency)

    async def one() -> None:
        async with limiter:
            tcp = await trio.open_tcp_stream("127.0.0.1", port)
            stream = trio.SSLStream(tcp, context, server_hostname="localhost")
            await stream.do_handshake()
            streams.append(stream)

    with trio.fail_after(timeout):
        async with trio.open_nursery() as nursery:
            for _ in range(count):
                nursery.start_soon(one)
    return streams


async def close_connections(streams: list[trio.SSLStream]) -> None:
    for stream in streams:
        with contextlib.suppress(Exception):
            await stream.transport_stream.aclose()
    streams.clear()


async def settle_pss(pid: int, *, timeout: float = 15.0, tolerance: float = 0.005) -> int:
    """PSS once two samples 0.25 s apart agree within ``tolerance`` (or at ``timeout``)."""
    previous = pss_kib(pid)
    with trio.move_on_after(timeout):
        while True:
            await trio.sleep(0.25)  # polling for stability, bounded by the timeout
            current = pss_kib(pid)
            if abs(current - previous) <= tolerance * max(previous, 1):
                return current
            previous = current
    return pss_kib(pid)


# ------------------------------------------------------------------------------------------------
# The ceiling


def openssl_speed_rsa2048(seconds: int = 3) -> float | None:
    """`openssl speed -seconds N rsa2048`: RSA-2048 private-key (sign) operations per second."""
    out = subprocess.run([which("openssl"), "speed", "-seconds", str(seconds), "rsa2048"],
                         capture_output=True, text=True, timeout=seconds * 10 + 30).stdout
    match = re.search(r"^rsa\s+2048 bits\s+\S+s\s+\S+s\s+([\d.]+)", out, re.M)
    return float(match.group(1)) if match else None

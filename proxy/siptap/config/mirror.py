"""The ``[mirror]`` section of the configuration: which outputs run, and where they write.

Plain frozen dataclasses that the generic loader (:mod:`siptap.config.loader`) builds
(``choices`` metadata on string fields, ``Path`` relative to the config file, ``Endpoint``
from a ``"host:port"`` string, tables of tables for the sink lists). This module holds no
behaviour beyond :meth:`problems`, the cross-field checks the loader cannot derive from the
types; :func:`siptap.mirror.sink_factory.build_sinks` turns it into running sinks. It lives in the
config layer so that loading a config never imports the mirror.

Example (the shipped configuration)::

    [mirror]
    legs = "customer"                       # "customer" | "core" | "both"

    [[mirror.hep]]                          # any number of collectors
    address = "127.0.0.1:9060"

    [[mirror.hep]]                          # HEP over mutual TLS to a collector elsewhere
    address = "homer.lab.example:9061"
    transport = "tls"                       # "udp" | "tcp" | "tls"
    cert = "certs/proxy-client.pem"         # siptap's client certificate and key (optional)
    key = "certs/proxy-client.key"
    ca = "certs/ca.pem"                     # verifies the collector (default: the system's CAs)
    server_name = "homer.lab.example"       # the name its certificate must carry (default: the host)

    [[mirror.jsonl]]
    transport = "unix"                      # "unix" | "unix-dgram" | "tcp" | "udp"
    path = "captures/mirror.sock"           # unix transports; tcp/udp take `address`

    [mirror.keylog]
    path = "captures/keys.log"

    [mirror.pcap]
    directory = "captures"

    [mirror.srtp_keys]
    path = "captures/srtp-keys.log"

:class:`siptap.config.Config` holds these as ``Config.mirror``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from siptap.addresses import Endpoint
from siptap.config.loader import DEFAULT_PORT, choice

MIB = 1024 * 1024
LEG_CHOICES = ("customer", "core", "both")
HEP_COLLECTOR_PORT = 9060
TLS_KEYS = ("cert", "key", "ca", "server_name")


@dataclass(frozen=True, slots=True)
class CollectorTls:
    """How an output with ``transport = "tls"`` reaches its collector: siptap's client
    certificate and key (both or neither), the CA bundle that verifies the collector (None:
    the system's trust store) and the name the collector's certificate must carry.
    Built by the settings below (their ``tls`` property), not read from TOML itself."""

    cert: Path | None
    key: Path | None
    ca: Path | None
    server_name: str


def _tls_problems(transport: str, cert: Path | None, key: Path | None, ca: Path | None,
                  server_name: str | None) -> list[tuple[str, str]]:
    """The TLS keys' cross-field checks, shared by the HEP and JSON-lines outputs."""
    if transport != "tls":
        for name, value in zip(TLS_KEYS, (cert, key, ca, server_name), strict=True):
            if value is not None:
                return [(name, f"only used with transport = \"tls\" (this output's transport is {transport!r})")]
        return []
    if (cert is None) != (key is None):
        missing = "key" if key is None else "cert"
        return [(missing, "missing: siptap's client certificate needs both cert and key "
                          "(or neither, for a collector that asks for no client certificate)")]
    if server_name is not None and not server_name.strip():
        return [("server_name", "must not be empty (leave it out to check the address's host)")]
    return []


@dataclass(frozen=True, slots=True)
class HepSinkSettings:
    """One HEPv3 collector (Homer/heplify-server, Kamailio sipcapture, sngrep ``-L``). A bare
    host gets HEP's customary port 9060. Over ``tcp`` and ``tls`` the packets go back to back
    on one stream, each delimited by its own length field (heplify-server's and OpenSIPS
    proto_hep's convention)."""

    address: Endpoint = field(metadata={DEFAULT_PORT: HEP_COLLECTOR_PORT})
    transport: str = field(default="udp", metadata=choice("udp", "tcp", "tls"))
    capture_id: int = 2001  # HEP chunk 0x000c, 32-bit
    auth_key: str | None = None  # chunk 0x000e, sent in clear text
    node_name: str | None = None  # chunk 0x0013, capture agent name
    # IP protocol chunk: "tcp" = 6 (what the wire carries); "tls" = 22, Kamailio's marker
    # for SIP over TLS (some Homer views key on it).
    ip_proto: str = field(default="tcp", metadata=choice("tcp", "tls"))
    log_key_material: bool = True  # TLS keys and SRTP keys as HEP log packets (type 0x64)
    # transport = "tls" only: see CollectorTls.
    cert: Path | None = None
    key: Path | None = None
    ca: Path | None = None
    server_name: str | None = None

    @property
    def tls(self) -> CollectorTls | None:
        return _collector_tls(self.transport, self.address, self.cert, self.key, self.ca, self.server_name)

    def problems(self) -> list[tuple[str, str]]:
        out = []
        if self.capture_id > 0xFFFFFFFF:
            out.append(("capture_id", "must fit 32 bits"))
        if self.address.port == 0:
            out.append(("address", "needs a port (collectors usually listen on 9060)"))
        return out + _tls_problems(self.transport, self.cert, self.key, self.ca, self.server_name)


@dataclass(frozen=True, slots=True)
class JsonlSinkSettings:
    """A JSON-lines mirror: one JSON object per line (stream transports) or per datagram.
    ``unix``/``unix-dgram`` connect to ``path`` (a reader's socket, relative to the config
    folder); ``tcp``/``udp``/``tls`` connect to ``address``. siptap is the client in every case."""

    transport: str = field(default="unix", metadata=choice("unix", "unix-dgram", "tcp", "udp", "tls"))
    path: Path | None = None
    address: Endpoint | None = None
    payload: bool = True  # include each SIP message's text
    # transport = "tls" only: see CollectorTls.
    cert: Path | None = None
    key: Path | None = None
    ca: Path | None = None
    server_name: str | None = None

    @property
    def tls(self) -> CollectorTls | None:
        return _collector_tls(self.transport, self.address, self.cert, self.key, self.ca, self.server_name)

    @property
    def is_unix(self) -> bool:
        return self.transport.startswith("unix")

    def problems(self) -> list[tuple[str, str]]:
        if self.is_unix:
            if self.path is None:
                return [("path", f"transport {self.transport!r} needs a socket path")]
            if self.address is not None:
                return [("address", f"transport {self.transport!r} takes a path, not an address")]
        else:
            if self.address is None:
                return [("address", f"transport {self.transport!r} needs \"host:port\"")]
            if self.path is not None:
                return [("path", f"transport {self.transport!r} takes an address, not a path")]
            if self.address.port == 0:
                return [("address", "needs a port")]
        return _tls_problems(self.transport, self.cert, self.key, self.ca, self.server_name)


def _collector_tls(transport: str, address: Endpoint | None, cert: Path | None, key: Path | None,
                   ca: Path | None, server_name: str | None) -> CollectorTls | None:
    if transport != "tls" or address is None:
        return None
    return CollectorTls(cert=cert, key=key, ca=ca, server_name=server_name or address.host)


@dataclass(frozen=True, slots=True)
class KeylogFileSettings:
    """NSS key-log file (SSLKEYLOGFILE format), appended, created 0600. Always covers both
    legs, whatever ``mirror.legs`` says: it is what decrypts a raw capture of either leg."""

    path: Path


@dataclass(frozen=True, slots=True)
class PcapSettings:
    """Cleartext capture files ``<prefix>-YYYYmmdd-HHMMSS-N.<format>`` (UTC) in ``directory``."""

    directory: Path
    format: str = field(default="pcap", metadata=choice("pcap", "pcapng"))
    rotate_bytes: int = 100 * MIB  # 0 = no size limit
    rotate_seconds: float = 3600.0  # 0 = no time limit
    keep: int = 0  # newest files kept after a rotation; 0 = keep all
    prefix: str = "siptap"

    def problems(self) -> list[tuple[str, str]]:
        if self.rotate_bytes and self.rotate_bytes < 64 * 1024:
            return [("rotate_bytes", "must be 0 (off) or at least 65536")]
        if not self.prefix or "/" in self.prefix:
            return [("prefix", "must be a non-empty file name prefix without '/'")]
        return []


@dataclass(frozen=True, slots=True)
class SrtpKeysFileSettings:
    """One line per SDES key seen in SDP; see :mod:`siptap.mirror.srtp` for the format."""

    path: Path


@dataclass(frozen=True, slots=True)
class MirrorSettings:
    legs: str = field(default="customer", metadata=choice(*LEG_CHOICES))
    queue_size: int = 10000  # events held per sink before dropping (never block the relay)
    drain_timeout: float = 2.0  # at shutdown, how long sinks may take to flush their queues
    warn_interval: float = 10.0  # at most one "dropped" warning per sink per interval
    # The longest the mirror, woken by a record, waits for more (0: at once). 10 ms, not more: a
    # longer wait makes each wake-up a longer CPU burst that the relay waits out on a small box
    # (S3 on 2 cores: +0.6-0.8 ms p99 at 10 ms, +1.5-2.0 ms at 100 ms; bench/RESULTS.md session 6).
    batch_interval: float = 0.01
    channel_buffer: int = 4 * MIB  # SO_SNDBUF of a worker's channel to the mirror process (kernel caps: wmem_max)
    hep: tuple[HepSinkSettings, ...] = ()
    jsonl: tuple[JsonlSinkSettings, ...] = ()
    keylog: KeylogFileSettings | None = None
    pcap: PcapSettings | None = None
    srtp_keys: SrtpKeysFileSettings | None = None

    @property
    def mirror_legs(self) -> frozenset[str]:
        """The legs whose SIP is mirrored, as the relay wants it."""
        return frozenset({"customer", "core"}) if self.legs == "both" else frozenset({self.legs})

    @property
    def enabled(self) -> bool:
        return bool(self.hep or self.jsonl or self.keylog or self.pcap or self.srtp_keys)

    def problems(self) -> list[tuple[str, str]]:
        if self.queue_size < 1:
            return [("queue_size", "must be at least 1")]
        if not 0 <= self.batch_interval <= 1:
            return [("batch_interval", "must be between 0 and 1 (seconds)")]
        if self.channel_buffer < 65536:
            return [("channel_buffer", "must be at least 65536 (bytes)")]
        return []

"""NSS key-log lines (the SSLKEYLOGFILE format, RFC 9850), formatted and parsed.

A line is ``<LABEL> SP <client random, 64 hex> SP <secret, hex>``. TLS 1.2 needs one
``CLIENT_RANDOM`` line per connection; TLS 1.3 needs the traffic-secret labels. OpenSSL 3
also writes ``RSA <first 8 bytes of the encrypted pre-master secret> <pre-master secret>``
for RSA key exchange: it is kept (Wireshark accepts it) but it is not keyed by client random.

Pure code: no I/O. The TLS layer collects lines from pyOpenSSL's key-log callback; the
mirror writes them out; both use this module to agree on the format.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

TLS12_LABEL = "CLIENT_RANDOM"
TLS13_LABELS = frozenset(
    {
        "CLIENT_EARLY_TRAFFIC_SECRET",
        "CLIENT_HANDSHAKE_TRAFFIC_SECRET",
        "SERVER_HANDSHAKE_TRAFFIC_SECRET",
        "CLIENT_TRAFFIC_SECRET_0",
        "SERVER_TRAFFIC_SECRET_0",
        "EARLY_EXPORTER_SECRET",
        "EXPORTER_SECRET",
    }
)
KNOWN_LABELS = TLS13_LABELS | {TLS12_LABEL, "RSA", "PMS_CLIENT_RANDOM"}

_HEX = re.compile(r"^[0-9a-fA-F]+$")


@dataclass(frozen=True, slots=True)
class KeyLogLine:
    """One parsed key-log line. ``random`` is the client random for every label but ``RSA``,
    where it is the first 8 bytes of the encrypted pre-master secret."""

    label: str
    random: str
    secret: str

    def __str__(self) -> str:
        return f"{self.label} {self.random} {self.secret}"


def client_random_line(client_random: bytes, master_secret: bytes) -> str:
    """The TLS 1.2 line that lets Wireshark decrypt a connection, built from raw values."""
    if len(client_random) != 32:
        raise ValueError(f"client random must be 32 bytes, got {len(client_random)}")
    if len(master_secret) != 48:
        raise ValueError(f"TLS 1.2 master secret must be 48 bytes, got {len(master_secret)}")
    return f"{TLS12_LABEL} {client_random.hex()} {master_secret.hex()}"


def parse_line(line: str | bytes) -> KeyLogLine | None:
    """Parse one line; None for comments and blank lines. Raises ValueError on a malformed one."""
    if isinstance(line, bytes):
        line = line.decode("ascii")
    text = line.strip()
    if not text or text.startswith("#"):
        return None
    parts = text.split()
    if len(parts) != 3:
        raise ValueError(f"key-log line needs 3 fields, got {len(parts)}: {text[:80]!r}")
    label, random, secret = parts
    if label not in KNOWN_LABELS:
        raise ValueError(f"unknown key-log label {label!r}")
    expected_random = 16 if label == "RSA" else 64
    if len(random) != expected_random or not _HEX.match(random):
        raise ValueError(f"{label}: second field must be {expected_random} hex digits")
    if not _HEX.match(secret) or len(secret) % 2:
        raise ValueError(f"{label}: secret must be hex")
    if label == TLS12_LABEL and len(secret) != 96:
        raise ValueError("CLIENT_RANDOM: master secret must be 96 hex digits")
    return KeyLogLine(label, random.lower(), secret.lower())


def client_random_of(lines: list[str] | tuple[str, ...]) -> str | None:
    """The client random (hex) the lines are keyed by, taken from the first keyed line."""
    for raw in lines:
        parsed = parse_line(raw)
        if parsed is not None and parsed.label != "RSA":
            return parsed.random
    return None

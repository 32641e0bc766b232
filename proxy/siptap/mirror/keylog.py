"""NSS key-log file sink (SSLKEYLOGFILE format): what lets Wireshark decrypt a raw capture.

Each completed handshake on either leg appends one comment line and its key-log lines::

    # conn=<id> leg=core client=10.0.0.1:40000 server=10.0.0.2:5061 TLSv1.3 TLS_AES_256_GCM_SHA384
    CLIENT_HANDSHAKE_TRAFFIC_SECRET <client random> <secret>
    ...

Wireshark and tshark (``-o tls.keylog_file:PATH``) skip ``#`` lines and match the others by
client random, so one file serves every connection of both legs; the comment is for humans
(key-log lines carry no addresses). The file covers *both* legs whatever ``mirror.legs``
says (``all_legs``): the core leg is usually (EC)DHE or TLS 1.3, and this file is the only
way to decrypt it.

File handling (0600, one ``os.write`` of whole events per batch so appends from several
workers never interleave, failures counted and retried with back-off): :mod:`siptap.mirror.files`.
"""

from __future__ import annotations

from pathlib import Path

from siptap.mirror.events import ConnectionClosed, KeyEvent, MirrorEvent, SipEvent, SrtpKeyEvent
from siptap.mirror.files import FileSink


class KeylogSink(FileSink):
    """Appends each handshake's key-log lines, after a comment naming the connection."""

    all_legs = True

    def __init__(self, path: Path, *, name: str = "keylog", **retry: float) -> None:
        super().__init__(name, path, **retry)

    def accepts(self, event: MirrorEvent) -> bool:
        return isinstance(event, KeyEvent) and bool(event.facts.keylog_lines)

    def accepts_kind(self, kind: type) -> bool | None:
        # A handshake: asked per event (one without key-log lines has nothing to write).
        return False if kind in (SipEvent, SrtpKeyEvent, ConnectionClosed) else None

    def render(self, event: MirrorEvent) -> str:
        assert isinstance(event, KeyEvent)
        leg, facts = event.leg, event.facts
        comment = (
            f"# conn={leg.conn_id} leg={leg.leg} route={leg.route}"
            f" client={_hostport(leg.client)} server={_hostport(leg.server)}"
            f" {facts.version} {facts.cipher}"
        )
        lines = [comment, *(line.strip() for line in facts.keylog_lines)]
        return "\n".join(_one_line(line) for line in lines) + "\n"


def _hostport(address: tuple[str, int]) -> str:
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _one_line(text: str) -> str:
    return text.replace("\r", " ").replace("\n", " ")

"""JSON-lines mirror: every event as one JSON object, for users who script against siptap.

Transports: a Unix stream socket (the default: a local tool listens on a path), a Unix
datagram socket, TCP, TLS (to a collector elsewhere: :mod:`siptap.mirror.collector_tls`) or
UDP. siptap is the client and connects to the reader; over stream
transports each object is one ``\\n``-terminated line, over datagram transports one object
per datagram. JSON string escaping guarantees no raw newline inside an object. A reader
that is absent (no socket file yet, ECONNREFUSED) is not an error: events are dropped and
counted while the link retries with back-off (see :class:`siptap.mirror.link.Link`). A
reader that stops reading makes sends time out: those events are dropped, the queue stays
bounded, and the relay never waits.

Each object is :func:`siptap.mirror.render.event_to_dict` of the event (the shapes are
described there), as compact JSON.
"""

from __future__ import annotations

from typing import Unpack

from siptap.config.mirror import JsonlSinkSettings
from siptap.mirror.events import ConnectionClosed, KeyEvent, MirrorEvent, SipEvent, SrtpKeyEvent
from siptap.mirror.link import Link, LinkOptions, LinkSink
from siptap.mirror.render import event_to_dict, sip_event_json, srtp_event_json, to_json


class JsonlSink(LinkSink):
    """Every event as one JSON object to a reader's socket, over a :class:`Link`."""

    def __init__(
        self,
        settings: JsonlSinkSettings,
        *,
        name: str | None = None,
        **link_options: Unpack[LinkOptions],
    ) -> None:
        problems = settings.problems()
        if problems:
            raise ValueError("; ".join(f"{k}: {m}" for k, m in problems))
        if settings.is_unix:
            assert settings.path is not None
            target: tuple[str, int] | str = str(settings.path)
        else:
            assert settings.address is not None
            target = (settings.address.host, settings.address.port)
        self.settings = settings
        link_kind = settings.transport
        super().__init__(name or f"jsonl:{link_kind}:{settings.path or settings.address}")
        self.link = Link(
            self,
            link_kind,
            target,
            **link_options,
        )
        self.payload = settings.payload
        self.end = "\n" if self.link.stream else ""  # a line on a stream; a datagram is whole

    def accepts_kind(self, kind: type) -> bool | None:
        return True if kind in (SipEvent, KeyEvent, SrtpKeyEvent, ConnectionClosed) else None  # every event

    def encode(self, event: MirrorEvent) -> bytes:
        if type(event) is SipEvent:
            line = sip_event_json(event, payload=self.payload)
        elif type(event) is SrtpKeyEvent:
            line = srtp_event_json(event)
        else:
            line = to_json(event_to_dict(event, payload=self.payload))
        return (line + self.end).encode("utf-8")

    def encode_unit(self, event: MirrorEvent) -> bytes | None:
        try:
            return self.encode(event)
        except (TypeError, ValueError) as exc:
            self.error("encode", exc)
            self.drop("could not encode")
            return None

"""Watching one direction of a relayed connection: framing, logging, publishing.

The pump calls :meth:`DirectionObserver.feed` *after* it forwarded the chunk, so nothing
here decides or delays what is relayed. Framing runs once per direction; the resulting
message is published for each mirrored leg (the same bytes cross both legs) and logged once.
When the framer gives up (not SIP, limits exceeded), one ``unframeable`` event says so and
the connection is simply relayed unobserved from then on.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any, Literal

from siptap.log import LogWriter, event_writer
from siptap.mirror.events import LegInfo, MirrorEvent, SipEvent, SrtpKeyEvent
from siptap.sansio.sdp_crypto import parse_sdp_crypto
from siptap.sansio.sip_framer import KeepAlive, SipFramer, SipMessage, Unframeable
from siptap.sansio.sip_message import SipMessageView, SipParseError, parse_message

Publish = Callable[[MirrorEvent], object]  # returns False when a sink dropped the event


class DirectionObserver:
    """One direction (customer->core or core->customer) of one proxied connection.

    Slotted, and the ``sip`` line writer is made at the first message: a trunk holds mostly
    idle connections, two observers each."""

    __slots__ = (
        "_count_message",
        "_framer",
        "_legs",
        "_log",
        "_log_key_material",
        "_log_messages",
        "_log_payloads",
        "_publish",
        "_reported_unframeable",
        "_sip_line",
        "direction",
        "keepalives",
        "messages",
        "mirror_dropped",
        "unframeable_bytes",
    )

    def __init__(
        self,
        *,
        direction: str,
        legs: list[tuple[LegInfo, bool]],  # (leg, from_client on that leg) for each mirrored leg
        publish: Publish,
        log: LogWriter,
        max_message_size: int,
        log_messages: bool = True,
        log_payloads: bool = False,
        log_key_material: bool = True,
        count_message: Callable[[SipMessageView | None], None] | None = None,
    ) -> None:
        self.direction = direction
        self._legs = legs
        self._publish = publish
        self._log = log
        self._framer = SipFramer(max_message_size=max_message_size)
        self._log_messages = log_messages
        # False: not made yet; None: event_writer cannot render this logger's lines.
        self._sip_line: Callable[[dict[str, Any]], None] | Literal[False] | None = False
        self._log_payloads = log_payloads
        self._log_key_material = log_key_material
        self._count_message = count_message
        self.messages = 0
        self.mirror_dropped = 0  # messages at least one sink had to drop
        self.keepalives = 0
        self.unframeable_bytes = 0
        self._reported_unframeable = False

    @property
    def observing(self) -> bool:
        return self._framer.observing

    def feed(self, data: bytes) -> None:
        if not self._framer.observing:
            self.unframeable_bytes += len(data)
            return
        self._handle(self._framer.feed(data))

    def close(self) -> None:
        self._handle(self._framer.close())

    def _handle(self, events: Sequence[object]) -> None:
        if not events:
            return
        now = time.time()
        for event in events:
            if isinstance(event, SipMessage):
                self._message(event, now)
            elif isinstance(event, KeepAlive):
                self.keepalives += 1
            elif isinstance(event, Unframeable):
                self.unframeable_bytes += len(event.data)
                if not self._reported_unframeable or not self._framer.observing:
                    if not (self._reported_unframeable and event.reason == "not observing"):
                        self._log.warning(
                            "unframeable", direction=self.direction, reason=event.reason, size=len(event.data),
                            head=event.data[:64], observing=self._framer.observing,
                        )
                    self._reported_unframeable = True

    def _message(self, message: SipMessage, now: float) -> None:
        self.messages += 1
        data = message.data
        try:
            view: SipMessageView | None = parse_message(data, message.header_end)
        except SipParseError:
            view = None
        if self._count_message is not None:
            self._count_message(view)
        complete = True
        for leg, from_client in self._legs:
            if self._publish(SipEvent(now, leg, from_client, data, view)) is False:
                complete = False
        if not complete:
            self.mirror_dropped += 1
        if self._log_messages:
            fields: dict[str, object] = {"direction": self.direction, "size": len(data)}
            if view is not None:
                if view.is_request:
                    fields["method"] = view.method
                else:
                    fields["status"] = view.status_code
                    fields["reason"] = view.reason
                fields["call_id"] = view.call_id
                fields["cseq"] = f"{view.cseq_number} {view.cseq_method}"
            if self._log_payloads:
                fields["payload"] = data
            sip_line = self._sip_line
            if sip_line is False:
                sip_line = self._sip_line = event_writer(self._log, "sip")
            if sip_line is not None:
                sip_line(fields)
            else:
                self._log.info("sip", **fields)
        if view is not None and data.find(b"a=crypto", message.header_end) >= 0:  # no body copy per message
            self._srtp(data[message.header_end :], view, now)

    def _srtp(self, body: bytes, view: SipMessageView, now: float) -> None:
        label = view.method if view.is_request else str(view.status_code)
        for key in parse_sdp_crypto(body):
            for leg, from_client in self._legs:
                self._publish(SrtpKeyEvent(now, leg, from_client, view.call_id, label or "?", key))
            fields: dict[str, object] = {}
            if self._log_key_material:
                fields = {"inline": key.key_params_b64, "master_key": key.master_key_hex, "master_salt": key.master_salt_hex}
            self._log.info(
                "srtp_key", direction=self.direction, call_id=view.call_id, message=label, suite=key.suite,
                media=key.media, address=key.connection_address, port=key.port, **fields,
            )

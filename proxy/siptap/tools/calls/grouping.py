"""Calls out of captured SIP messages: one :class:`Call` per Call-ID, with what a list of calls shows.

Pure: messages in (as :mod:`siptap.tools.export.captures` reads them back, in capture order),
calls out. A call crossing siptap on both legs is one call: its messages on the customer and
the core connection share the Call-ID (siptap relays them unchanged).

The final status is the answer to the call's first request: the first 2xx to that method if
there is one (an INVITE challenged with 401/407 and sent again with credentials was
answered), else the last final response to it (the call failed with that), else None (no
final response in the captures). A mid-dialog re-INVITE refused later does not make an
answered call a failed one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol

from siptap.sansio.sip_message import SipMessageView, split_values
from siptap.tools.calls.parties import uri_of, user_of

Address = tuple[str, int]
Flow = tuple[Address, Address, int]  # TCP client, server, generation (as the capture reader numbers them)


class CapturedMessage(Protocol):
    """What grouping reads of a message (:class:`siptap.tools.export.captures.Message` is one)."""

    @property
    def ts_us(self) -> int: ...
    @property
    def view(self) -> SipMessageView: ...
    @property
    def flow(self) -> Flow: ...


@dataclass(frozen=True, slots=True)
class Call:
    """One Call-ID as the captures saw it."""

    call_id: str
    start_us: int  # first message
    end_us: int  # last message
    messages: int
    method: str | None  # of the first request seen; None if the captures hold only responses
    request_uri: str | None
    from_uri: str | None
    to_uri: str | None
    asserted: tuple[str, ...]  # P-Asserted-Identity URIs, in order of appearance
    status: int | None  # final status of the first request (see the module's docstring)
    reason: str | None
    flows: tuple[Flow, ...]  # the TCP connections that carried it, in order of first use
    conns: tuple[str, ...] = ()  # siptap connection ids of those flows (from the key log), when known

    @property
    def duration_us(self) -> int:
        return self.end_us - self.start_us

    @property
    def from_user(self) -> str | None:
        return user_of(self.from_uri) if self.from_uri else None

    @property
    def to_user(self) -> str | None:
        return user_of(self.to_uri) if self.to_uri else None

    def parties(self) -> list[str]:
        """Every party URI the number/URI selector looks at: From, To, Request-URI, P-Asserted-Identity."""
        return [u for u in (self.from_uri, self.to_uri, self.request_uri, *self.asserted) if u]


@dataclass(slots=True)
class _Building:
    call_id: str
    start_us: int
    end_us: int
    messages: int = 0
    first_request: SipMessageView | None = None
    first_any: SipMessageView | None = None
    asserted: list[str] = field(default_factory=list)
    answered: SipMessageView | None = None  # first 2xx to the first request's method
    last_final: SipMessageView | None = None  # last final response to that method
    flows: list[Flow] = field(default_factory=list)


def group_calls(messages: Iterable[CapturedMessage],
                conns_of: Callable[[Flow], Iterable[str]] | None = None) -> list[Call]:
    """One :class:`Call` per Call-ID, ordered by first message. ``conns_of`` names the siptap
    connection(s) of a flow (from the key log); messages without a Call-ID are skipped."""
    building: dict[str, _Building] = {}
    for message in messages:
        view = message.view
        call_id = view.call_id
        if call_id is None:
            continue
        b = building.get(call_id)
        if b is None:
            b = building[call_id] = _Building(call_id, message.ts_us, message.ts_us)
        b.start_us = min(b.start_us, message.ts_us)
        b.end_us = max(b.end_us, message.ts_us)
        b.messages += 1
        if b.first_any is None:
            b.first_any = view
        if view.is_request and b.first_request is None:
            b.first_request = view
        for value in view.header("P-Asserted-Identity"):
            for entry in split_values(value):
                uri = uri_of(entry)
                if uri and uri not in b.asserted:
                    b.asserted.append(uri)
        if message.flow not in b.flows:
            b.flows.append(message.flow)
        code = view.status_code
        if code is not None and code >= 200 and b.first_request is not None \
                and view.cseq_method == b.first_request.method:
            if 200 <= code < 300:
                b.answered = b.answered or view
            if b.answered is None:
                b.last_final = view
    calls = [_finish(b, conns_of) for b in building.values()]
    calls.sort(key=lambda c: c.start_us)
    return calls


def _finish(b: _Building, conns_of: Callable[[Flow], Iterable[str]] | None) -> Call:
    request = b.first_request
    headers = request or b.first_any
    final = b.answered or b.last_final
    flows = tuple(b.flows)
    conns: list[str] = []
    if conns_of is not None:
        for flow in flows:
            conns += [c for c in conns_of(flow) if c not in conns]
    from_value = headers.first("from") if headers else None
    to_value = headers.first("to") if headers else None
    return Call(
        call_id=b.call_id, start_us=b.start_us, end_us=b.end_us, messages=b.messages,
        method=request.method if request else None,
        request_uri=request.request_uri if request else None,
        from_uri=uri_of(from_value) if from_value else None,
        to_uri=uri_of(to_value) if to_value else None,
        asserted=tuple(b.asserted),
        status=final.status_code if final else None,
        reason=final.reason if final else None,
        flows=flows, conns=tuple(conns),
    )

"""Real captures of a varied day on a trunk, for `siptap calls` and the export selectors.

`siptap run` as a process with every file sink on (both legs mirrored), a lab core whose UAS
refuses INVITEs to ``sip:486@...``/``sip:503@...`` with that status, and two lab customers on
two TLS connections placing answered and refused calls with chosen numbers, a
P-Asserted-Identity, and an OPTIONS ping. Call-IDs start with what the tests select on.
"""

from __future__ import annotations

import functools
import json
import uuid
from dataclasses import dataclass
from pathlib import Path

import trio

from siptap.sansio.sip_message import SipMessageView
from siptap.tools.lab.core import LabCore, core_context
from siptap.tools.lab.customer import CustomerSession, customer_context
from siptap.tools.lab.sip import LabUas, response, sdp
from tests.relay.harness import SiptapProcess, write_config

REASONS = {486: "Busy Here", 503: "Service Unavailable"}


class RefusingUas(LabUas):
    """The lab UAS, but an INVITE to a user that is a refusal code gets 100 and that code."""

    def answer(self, view: SipMessageView) -> list[bytes]:
        user = (view.request_uri or "").partition(":")[2].partition("@")[0]
        if view.method == "INVITE" and user.isdigit() and int(user) in REASONS:
            code = int(user)
            return [response(view, 100, "Trying"), response(view, code, REASONS[code], to_tag="refused")]
        return super().answer(view)


@dataclass
class PlacedCall:
    call_id: str
    from_user: str
    to_user: str
    status: int
    conn: str = ""  # siptap's connection id, filled in from the log


@dataclass
class CallLab:
    root: Path
    config: Path
    log: Path
    port: int
    calls: dict[str, PlacedCall]  # by a name the tests use
    options_call_id: str

    @property
    def captures(self) -> Path:
        return self.root / "captures"


def _request(method: str, *, call_id: str, cseq: int, from_user: str, to_user: str, from_tag: str,
             to_tag: str | None = None, pai: str | None = None, body: bytes = b"") -> bytes:
    uri = f"sip:{to_user}@core.lab.invalid"
    lines = [f"{method} {uri} SIP/2.0",
             f"Via: SIP/2.0/TLS 127.0.0.1:5099;branch=z9hG4bK{uuid.uuid4().hex[:16]}",
             "Max-Forwards: 70",
             f'From: "Caller" <sip:{from_user}@customer.invalid;user=phone>;tag={from_tag}',
             f"To: <{uri}>" + (f";tag={to_tag}" if to_tag else ""),
             f"Call-ID: {call_id}",
             f"CSeq: {cseq} {method}"]
    if pai:
        lines.append(f"P-Asserted-Identity: {pai}")
    if body:
        lines.append("Content-Type: application/sdp")
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def place_call(session: CustomerSession, call_id: str, from_user: str, to_user: str, *,
                     pai: str | None = None, media_port: int = 30000) -> int:
    """INVITE (then ACK, and BYE when answered); returns the INVITE's final status."""
    tag = uuid.uuid4().hex[:8]
    body = sdp("127.0.0.1", media_port, bytes(range(100, 130)))
    await session.send(_request("INVITE", call_id=call_id, cseq=1, from_user=from_user, to_user=to_user,
                                from_tag=tag, pai=pai, body=body))
    final = await session.final_response()
    assert final.status_code is not None
    await session.send(_request("ACK", call_id=call_id, cseq=1, from_user=from_user, to_user=to_user,
                                from_tag=tag, to_tag=final.to_tag))
    if final.status_code < 300:
        await session.send(_request("BYE", call_id=call_id, cseq=2, from_user=from_user, to_user=to_user,
                                    from_tag=tag, to_tag=final.to_tag))
        assert (await session.final_response()).status_code == 200
    return final.status_code


async def make_call_lab(pki: Path, root: Path) -> CallLab:
    mirror = f"""
[mirror]
legs = "both"
[mirror.keylog]
path = "{root}/captures/keys.log"
[mirror.pcap]
directory = "{root}/captures"
[mirror.srtp_keys]
path = "{root}/captures/srtp-keys.log"
"""
    calls: dict[str, PlacedCall] = {}
    async with trio.open_nursery() as nursery:
        core = LabCore(core_context(pki), uas=RefusingUas())
        core_port = await nursery.start(functools.partial(core.serve))
        config = write_config(root, pki, cores=[core_port], top=mirror)
        siptap = SiptapProcess(config)
        await siptap.start(nursery)
        port = await siptap.port()
        a = await CustomerSession.connect("127.0.0.1", port, customer_context(pki))
        b = await CustomerSession.connect("127.0.0.1", port, customer_context(pki))
        addresses = {f"127.0.0.1:{s.stream.transport_stream.socket.getsockname()[1]}": name  # type: ignore[attr-defined]
                     for name, s in (("a", a), ("b", b))}
        plan = [  # name, session, from, to, P-Asserted-Identity
            ("answered", a, "+4930111", "+4940222", None),
            ("busy", a, "+4930111", "486", None),
            ("asserted", b, "anonymous", "+4940333", "<tel:+49-30-999>"),
            ("unavailable", b, "+4930444", "503", None),
            ("again", a, "+4930555", "+4940222", None),
        ]
        ports = iter(range(33000, 34000, 2))
        conn_of_call: dict[str, str] = {}
        for name, session, from_user, to_user, pai in plan:
            call_id = f"lab-{name}-{uuid.uuid4()}@customer.invalid"
            status = await place_call(session, call_id, from_user, to_user, pai=pai, media_port=next(ports))
            calls[name] = PlacedCall(call_id, from_user, to_user, status)
            conn_of_call[name] = "a" if session is a else "b"
        options = await a.options()
        assert options.status_code == 200 and options.call_id is not None
        await a.aclose()
        await b.aclose()
        await siptap.wait_for("connection_closed", count=2)
        assert await siptap.stop() == 0
        nursery.cancel_scope.cancel()
    assert siptap.find("mirror_stopped")[0]["dropped"] == 0
    conns = {addresses[e["client"]]: e["conn"] for e in siptap.find("handshake_done", leg="customer")}
    for name, call in calls.items():
        call.conn = conns[conn_of_call[name]]
    log = root / "siptap.log"
    log.write_text("".join(json.dumps(e) + "\n" for e in siptap.events))
    return CallLab(root, config, log, port, calls, options.call_id)

"""The ladder's pure parts: captured messages and flow facts in, rows out; the text and SVG renderers.

Messages are built as the capture reader returns them (bytes, flow, direction, time), in the
order the mirror writes them: per received chunk one copy per mirrored leg, accepted leg first,
one timestamp for both.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from html.parser import HTMLParser

from siptap.sansio.sip_message import SipMessageView, parse_message
from siptap.tools.export.json_log import parse_json_log
from siptap.tools.export.keylog import parse_keylog
from siptap.tools.export.legs import flow_legs, key_exchange_of
from siptap.tools.ladder.model import CORE, ESBC, SIPTAP, FlowLeg, LegTls, build_ladder, build_ladders, infer_legs
from siptap.tools.ladder.svg import ladders_html
from siptap.tools.ladder.text import arrow, ladder_lines, ladders_text

ESBC_ADDR, LISTEN = ("10.0.0.1", 40000), ("10.0.0.2", 5061)
OUT, CORE_ADDR = ("10.0.0.2", 50000), ("10.0.0.3", 5061)
CUSTOMER_FLOW = (ESBC_ADDR, LISTEN, 0)
CORE_FLOW = (OUT, CORE_ADDR, 0)
SDP = b"v=0\r\no=- 1 1 IN IP4 10.0.0.1\r\ns=-\r\nc=IN IP4 10.0.0.1\r\nt=0 0\r\nm=audio 30000 RTP/SAVP 0\r\n"
CRYPTO = b"a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:ZGVmZ2hpamtsbW5vcHFyc3R1dnd4eXp7fH1+f4CB\r\n"


@dataclass
class Captured:
    ts_us: int
    flow: tuple[tuple[str, int], tuple[str, int], int]
    from_client: bool
    data: bytes
    view: SipMessageView


def sip(first: str, cseq: str, *, call_id: str = "c1@h", body: bytes = b"") -> bytes:
    lines = [first, "Via: SIP/2.0/TLS 10.0.0.1;branch=z9hG4bK1", "From: <sip:a@h>;tag=1", "To: <sip:b@h>",
             f"Call-ID: {call_id}", f"CSeq: {cseq}"]
    if body:
        lines.append("Content-Type: application/sdp")
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def both_legs(ts: int, data: bytes, *, up: bool) -> list[Captured]:
    """The two copies the mirror writes for one relayed message: customer leg first, one time."""
    view = parse_message(data)
    return [Captured(ts, CUSTOMER_FLOW, up, data, view), Captured(ts, CORE_FLOW, up, data, view)]


def invite_call(*, invite_sdp: bool = True, final: str = "200 OK", call_id: str = "c1@h") -> list[Captured]:
    code = int(final.split()[0])
    messages = both_legs(1_000_000, sip("INVITE sip:b@core SIP/2.0", "1 INVITE", call_id=call_id,
                                        body=SDP + CRYPTO if invite_sdp else b""), up=True)
    messages += both_legs(1_010_000, sip("SIP/2.0 100 Trying", "1 INVITE", call_id=call_id), up=False)
    messages += both_legs(1_250_000, sip(f"SIP/2.0 {final}", "1 INVITE", call_id=call_id,
                                         body=SDP if code < 300 else b""), up=False)
    messages += both_legs(1_260_000, sip("ACK sip:b@core SIP/2.0", "1 ACK", call_id=call_id,
                                         body=SDP if not invite_sdp else b""), up=True)
    return messages


KNOWN = {
    CUSTOMER_FLOW: FlowLeg("customer", True, "c-1", LegTls("customer", "c-1", "TLSv1.2", "AES256-GCM-SHA384", "RSA",
                                                            "O=lab,CN=esbc", "2029-03-07T06:51:54Z")),
    CORE_FLOW: FlowLeg("core", False, "c-1", LegTls("core", "c-1", "TLSv1.3", "TLS_AES_256_GCM_SHA384")),
}


def test_a_relayed_message_is_received_then_relayed_and_responses_come_from_the_core() -> None:
    ladder = build_ladder("c1@h", invite_call(), KNOWN)
    arrows = [(r.label, r.src, r.dst) for r in ladder.rows]
    # The capture holds each response's customer-leg copy first; the ladder puts the core's first.
    assert arrows == [
        ("INVITE", ESBC, SIPTAP), ("INVITE", SIPTAP, CORE),
        ("100 Trying", CORE, SIPTAP), ("100 Trying", SIPTAP, ESBC),
        ("200 OK", CORE, SIPTAP), ("200 OK", SIPTAP, ESBC),
        ("ACK", ESBC, SIPTAP), ("ACK", SIPTAP, CORE),
    ]
    assert [r.relay_of for r in ladder.rows] == [None, 0, None, 2, None, 4, None, 6]
    assert [r.cseq for r in ladder.rows] == ["1 INVITE"] * 6 + ["1 ACK"] * 2
    assert [r.offset_us for r in ladder.rows] == [0, 0, 10_000, 10_000, 250_000, 250_000, 260_000, 260_000]
    assert [r.delta_us for r in ladder.rows] == [0, 0, 10_000, 0, 240_000, 0, 10_000, 0]
    assert ladder.rows[2].src_address == "10.0.0.3:5061" and ladder.rows[2].dst_address == "10.0.0.2:50000"
    assert ladder.columns[ESBC].addresses == ("10.0.0.1:40000",)
    assert ladder.columns[SIPTAP].addresses == ("10.0.0.2:5061", "10.0.0.2:50000")
    assert ladder.columns[CORE].addresses == ("10.0.0.3:5061",)
    # Each leg's TLS facts stand above the peer at its far end; siptap's column has none.
    assert [t.leg for t in ladder.columns[ESBC].tls] == ["customer"]
    assert ladder.columns[SIPTAP].tls == () and [t.leg for t in ladder.columns[CORE].tls] == ["core"]
    assert ladder.outcome == "INVITE -> 200 OK" and ladder.unplaced == ()


def test_sdp_offer_answer_crypto_and_failed_responses() -> None:
    ladder = build_ladder("c1@h", invite_call(), KNOWN)
    assert [(r.label, r.sdp, r.crypto) for r in ladder.rows[::2]] == [
        ("INVITE", "offer", True), ("100 Trying", None, False), ("200 OK", "answer", False), ("ACK", None, False)]
    # An INVITE without SDP: the 200 offers, the ACK answers.
    late = build_ladder("c1@h", invite_call(invite_sdp=False), KNOWN)
    assert [(r.label, r.sdp) for r in late.rows[::2]] == [("INVITE", None), ("100 Trying", None), ("200 OK", "offer"),
                                                          ("ACK", "answer")]
    busy = build_ladder("c1@h", invite_call(final="486 Busy Here"), KNOWN)
    assert [r.label for r in busy.rows if r.failed] == ["486 Busy Here"] * 2
    assert busy.outcome == "INVITE -> 486 Busy Here"


def test_legs_without_key_log_or_log_are_placed_by_the_relayed_copies() -> None:
    messages = invite_call()
    legs = infer_legs(messages, {})
    assert legs[CUSTOMER_FLOW] == FlowLeg("customer", True, known=False)
    assert legs[CORE_FLOW] == FlowLeg("core", False, known=False)
    ladder = build_ladders(messages, {})[0]
    assert [(r.src, r.dst) for r in ladder.rows[:4]] == [(ESBC, SIPTAP), (SIPTAP, CORE), (CORE, SIPTAP), (SIPTAP, ESBC)]
    assert ladder.unplaced == ("10.0.0.1:40000 -> 10.0.0.2:5061", "10.0.0.2:50000 -> 10.0.0.3:5061")
    # Only the customer leg mirrored: nothing to pair, every arrow between the E-SBC and siptap.
    alone = build_ladders([m for m in messages if m.flow == CUSTOMER_FLOW], {})[0]
    assert {(r.src, r.dst) for r in alone.rows} == {(ESBC, SIPTAP), (SIPTAP, ESBC)}
    assert alone.columns[CORE].addresses == ()


def test_one_ladder_per_call_in_order_of_start() -> None:
    first = invite_call(call_id="b@h")
    second = [Captured(m.ts_us + 5, m.flow, m.from_client, m.data.replace(b"b@h", b"a@h"),
                       parse_message(m.data.replace(b"b@h", b"a@h"))) for m in invite_call(call_id="b@h")]
    ladders = build_ladders(first + second, KNOWN)
    assert [ladder.call_id for ladder in ladders] == ["b@h", "a@h"]
    assert all(len(ladder.rows) == 8 for ladder in ladders)


def test_flow_legs_from_the_key_log_and_the_json_log() -> None:
    keylog = parse_keylog(
        "# conn=c-1 leg=customer route=r client=10.0.0.1:40000 server=10.0.0.2:5061 TLSv1.2 AES256-GCM-SHA384\n"
        "CLIENT_RANDOM aa bb\n"
        "# conn=c-1 leg=core route=r client=10.0.0.2:50000 server=10.0.0.3:5061 TLSv1.3 TLS_AES_256_GCM_SHA384\n")
    log = parse_json_log(
        '{"event": "handshake_done", "conn": "c-1", "leg": "customer", "role": "server", "key_exchange": "RSA", '
        '"peer_certificate": {"subject": "O=lab,CN=esbc", "not_after": "2029-03-07T06:51:54+00:00"}}\n')
    by_flow = {CUSTOMER_FLOW: [keylog[0]], CORE_FLOW: [keylog[1]]}
    legs = flow_legs(by_flow, keylog, log)
    assert legs[CUSTOMER_FLOW] == FlowLeg("customer", True, "c-1", LegTls(
        "customer", "c-1", "TLSv1.2", "AES256-GCM-SHA384", "RSA", "O=lab,CN=esbc", "2029-03-07T06:51:54Z"))
    # No handshake_done for the core leg: siptap's side from the key log's order (accepted leg first),
    # the key exchange from the suite.
    assert legs[CORE_FLOW] == FlowLeg("core", False, "c-1", LegTls(
        "core", "c-1", "TLSv1.3", "TLS_AES_256_GCM_SHA384", "(EC)DHE"))
    assert [key_exchange_of("TLSv1.2", c) for c in ("AES128-SHA256", "ECDHE-RSA-AES128-GCM-SHA256", "DHE-RSA-AES256-SHA",
                                                    None)] == ["RSA", "ECDHE", "DHE", None]
    # A reverse route: the core leg is accepted (its entry first, or role=server in the log).
    reverse = parse_keylog("# conn=r-1 leg=core client=10.0.0.3:6000 server=10.0.0.2:5062\n"
                           "# conn=r-1 leg=customer client=10.0.0.2:50001 server=10.0.0.1:5061\n")
    flows = {((a.client or ("", 0)), (a.server or ("", 0)), 0): [a] for a in reverse}
    placed = flow_legs(flows, reverse, parse_json_log(""))
    assert [(leg.leg, leg.siptap_server) for leg in placed.values()] == [("core", True), ("customer", False)]
    # Named by the JSON log only (no key log): placed from its addresses.
    only_log = parse_json_log('{"event": "handshake_done", "conn": "c-9", "leg": "core", "role": "client", '
                              '"client": "10.0.0.2:50000", "server": "10.0.0.3:5061", "version": "TLSv1.3"}\n')
    assert flow_legs({CORE_FLOW: []}, [], only_log)[CORE_FLOW] == FlowLeg("core", False, "c-9", LegTls(
        "core", "c-9", "TLSv1.3"))  # no suite: no key exchange guessed


def test_text_ladder() -> None:
    ladder = build_ladder("c1@h", invite_call(final="486 Busy Here"), KNOWN)
    lines = ladder_lines(ladder)
    # The header: names, then each column's addresses and TLS facts, under its lane.
    assert lines[0].split() == ["E-SBC", "siptap", "core"]
    esbc_lane = lines[0].index("E-SBC")
    core_lane = lines[0].index("core")
    assert lines[1][esbc_lane:].startswith("10.0.0.1:40000") and lines[1][core_lane:] == "10.0.0.3:5061"
    assert "TLSv1.2 AES256-GCM-SHA384" in lines[2] and lines[2][core_lane:] == "TLSv1.3 TLS_AES_256_GCM_SHA384"
    assert any("key exchange RSA" in line for line in lines) and any("cert O=lab,CN=esbc" in line for line in lines)
    rows = [line for line in lines if re.match(r" +\+\d", line)]
    assert len(rows) == 8
    assert rows[0].split("|")[1].startswith("--INVITE") and rows[0].split("|")[1].endswith(">")
    assert "CSeq 1 INVITE  sip:b@core  SDP offer  a=crypto (SRTP keys)" in rows[0]
    assert "sip:b@core" not in rows[1]  # the relayed copy repeats nothing
    assert rows[4].split("|")[2].startswith("<==486 Busy Here ✗") and rows[4].endswith("failed")
    assert rows[2].lstrip().startswith("+0.010   Δ0.010")
    assert rows[4].lstrip().startswith("+0.250   Δ0.240")
    # Lanes line up: every row's bars under the header's column names.
    siptap_lane = lines[0].index("siptap")
    for row in rows:
        assert row[esbc_lane] == row[siptap_lane] == row[core_lane] == "|"
    assert rows[1].split("|")[1].strip() == "" and rows[1].split("|")[2].startswith("--INVITE")
    assert arrow(ladder.rows[0]).endswith(">|" + " " * (core_lane - siptap_lane - 1) + "|")
    text = ladders_text([ladder])
    assert text.startswith("call c1@h: INVITE -> 486 Busy Here, started 1970-01-01T00:00:01.000000Z, 8 messages, "
                           "connection(s) c-1\n")


class _Page(HTMLParser):
    """Collects what the ladder page holds: tags, attributes with URLs, the arrows' labels."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: set[str] = set()
        self.urls: list[str] = []
        self.labels: list[str] = []
        self._in_label = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.add(tag)
        self.urls += [v or "" for k, v in attrs if k in ("src", "href", "xlink:href", "action", "srcset")]
        self._in_label = tag == "text" and ("class", "label") in attrs

    def handle_data(self, data: str) -> None:
        if self._in_label:
            self.labels.append(data)
            self._in_label = False


def test_html_is_self_contained_and_escapes_what_sip_says() -> None:
    hostile = '<script>alert(1)</script>"&x'
    messages = invite_call(call_id="evil" + hostile)

    def spoil(data: bytes) -> bytes:
        return data.replace(b"sip:b@core", b'sip:b"><img/src=x>@core').replace(b"100 Trying", b"100 <i>Trying</i>")

    bad_uri = [Captured(m.ts_us, m.flow, m.from_client, spoil(m.data), parse_message(spoil(m.data))) for m in messages]
    page = ladders_html(build_ladders(bad_uri, KNOWN), title="t", notes=["selection: --call-id " + hostile])
    parsed = _Page()
    parsed.feed(page)
    assert not parsed.tags & {"script", "img", "i", "link", "iframe", "object"}
    assert parsed.urls == []
    assert "@import" not in page and "url(" not in page
    assert "default-src 'none'" in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;&quot;&amp;x" in page
    assert "sip:b&quot;&gt;&lt;img/src=x&gt;@core" in page
    assert parsed.labels == ["INVITE", "INVITE", "100 <i>Trying</i>", "100 <i>Trying</i>", "200 OK", "200 OK", "ACK",
                             "ACK"]
    # The SDES key is a secret: the ladder marks it, never shows it.
    assert "ZGVmZ2hp" not in page and "a=crypto" in page
    failed = ladders_html(build_ladders(invite_call(final="503 Service Unavailable"), KNOWN), title="t")
    assert len(re.findall(r'<g class="msg failed"', failed)) == 2

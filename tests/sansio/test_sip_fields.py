"""The one-scan field reader against the header view it shortcuts.

``read_fields`` may decline (None: the caller then asks ``parse_message``), but whenever it
answers, every field must be the view's. Checked on generated messages that mix the cases
separating the two (compact forms, case, folding, repeats, odd whitespace, bare CR/LF, lines
without a colon, non-ASCII, quoted parameters, multi-entry Vias), on every message of the fuzz
corpus and on the messages the bench's SIPp scenarios send; plus unit tests for what it must
answer (so the fallback is not the only path) and what it must decline.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from siptap.sansio import sip_fields
from siptap.sansio.sip_fields import SipFields, read_fields
from siptap.sansio.sip_framer import SipFramer, SipMessage
from siptap.sansio.sip_message import SipParseError, parse_message

ROOT = Path(__file__).resolve().parents[2]
CORPUS = ROOT / "tests" / "fuzz" / "corpus"
SCENARIOS = ROOT / "bench" / "scenarios"


def agrees(data: bytes, header_end: int) -> SipFields | None:
    """read_fields' answer, after checking it against the view field by field."""
    fields = read_fields(data, header_end)
    if fields is None:
        return None
    try:
        view = parse_message(data, header_end)
    except SipParseError:
        pytest.fail(f"read_fields answered for a message the view rejects: {data[:200]!r}")
    for name in SipFields._fields:
        assert getattr(fields, name) == getattr(view, name), (name, data[:header_end])
    return fields


# -- generated messages -------------------------------------------------------------------------

NAMES = ["Call-ID", "i", "I", "CSeq", "cseq", "Via", "v", "V", "From", "f", "To", "t", "T", "Content-Type", "c",
         "X-Call-ID", "Call-ID ", " Call-ID", "Call-ID\x0b", "\x0bv", "Tó", "Subject", "", "CALL-id", "To-Tag", "cs"]
VALUES = [" a@b", "a@b", "  1 INVITE ", " 2 ACK", " x INVITE", " 12", " SIP/2.0/TLS h;branch=z9hG4bK1, SIP/2.0/TLS g;branch=x",
          ' SIP/2.0/TLS h:5061 ; BRANCH = "q\\"r" ', " , SIP/2.0/TCP a;branch=2", ' "A;b" <sip:a;x=y>;tag=1',
          " <sip:b>;tag= 2 ", ' "x,y" <sip:c;tag=no>;Tag="z\\\\w"', " sip:d@e;tag=3;other", " <sip:e>;tag",
          " <sip:f>;tag=", " application/sdp", "", " x\u3000", " y\xa0", " é", " \x1f"]
SEPARATORS = ["\r\n", "\r\n", "\r\n", "\r\n", "\n", "\r", "\r\n ", "\r\n\t", "\r\n\r\n"]
START_LINES = ["INVITE sip:a@b SIP/2.0", "SIP/2.0 200 OK", "SIP/2.0 180", "sip/2.0 183 Session Progress ",
               "ACK sip:x SIP/2.0  ", "HELLO", "SIP/2.0 2000 No", "INVITE sip:a@b SIP/2.0\n", "SIP/2.0 200 OK\n", "SIP/2.0 200 O\x0bK",
               "OPTIONS  sip:é SIP/2.0"]


@settings(max_examples=2500, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(NAMES), st.sampled_from([":", " :", "\t:", ""]), st.sampled_from(VALUES),
                          st.sampled_from(SEPARATORS)), max_size=10),
       st.sampled_from(START_LINES), st.binary(max_size=20), st.sampled_from(["\r\n", "\r\n", "", "\n"]))
@example([("Call-ID", ":", " a@b", "\r\n"), ("i", ":", " c@d", "\r\n")], "INVITE sip:a@b SIP/2.0", b"", "\r\n")
@example([("Via", ":", " SIP/2.0/TLS h;branch=1", "\r\n\t"), ("Via", ":", " x", "\r\n")], "SIP/2.0 200 OK", b"", "\r\n")
def test_generated_messages_agree_with_the_view(headers, start_line, body, end) -> None:  # type: ignore[no-untyped-def]
    block = start_line + "\r\n" + "".join(name + colon + value + sep for name, colon, value, sep in headers) + end
    head = block.encode("utf-8")
    agrees(head + body, len(head))


TOKENS = st.text("abcdefghijkABCXYZ0123456789-.!%*_+`'~@", min_size=1, max_size=12)


@st.composite
def realistic_message(draw: st.DrawFn) -> bytes:
    """Plain messages as trunks send them (so read_fields answers), in many spellings."""
    def name(full: str, compact: str | None) -> str:
        spelled = draw(st.sampled_from([full, full.lower(), full.upper()] + ([compact] if compact else [])))
        return spelled + draw(st.sampled_from(["", " ", "\t"]))

    def fold(value: str) -> str:
        if " " in value and draw(st.booleans()):
            return value.replace(" ", draw(st.sampled_from(["\r\n ", "\r\n\t", "\r\n   "])), 1)
        return value

    tag = draw(TOKENS)
    headers = [
        (name("Via", "v"), f"SIP/2.0/TLS 192.0.2.1:5061;branch=z9hG4bK{draw(TOKENS)}"
                           + draw(st.sampled_from(["", ",SIP/2.0/TLS 10.0.0.1;branch=second", ";rport;received=1.2.3.4"]))),
        (name("From", "f"), draw(st.sampled_from(['"Alice, A" <sip:a@x;transport=tls>', "<sip:a@x>", "sip:a@x"]))
         + f";tag={tag}"),
        (name("To", "t"), "<sip:b@y>" + draw(st.sampled_from(["", f";tag={draw(TOKENS)}", ';tag="q;uoted"']))),
        (name("Call-ID", "i"), draw(TOKENS) + "@" + draw(TOKENS)),
        (name("CSeq", None), f"{draw(st.integers(0, 2**32))} {draw(st.sampled_from(['INVITE', 'ACK', 'BYE', 'x']))}"),
        (name("Max-Forwards", None), "70"),
        (name("Contact", "m"), "<sip:a@192.0.2.1:5061;transport=tls>"),
    ]
    if draw(st.booleans()):
        headers.append((name("Content-Type", "c"), "application/sdp"))
    headers.append((name("Content-Length", "l"), "0"))
    headers = draw(st.permutations(headers))
    if draw(st.booleans()):
        headers.append(("Via", "SIP/2.0/TLS later;branch=not-the-top"))
    start = draw(st.sampled_from(["INVITE sip:b@y SIP/2.0", "SIP/2.0 200 OK", "SIP/2.0 100 Trying", "BYE sip:b@y SIP/2.0"]))
    text = start + "\r\n" + "".join(f"{n}:{draw(st.sampled_from(['', ' ']))}{fold(v)}\r\n" for n, v in headers) + "\r\n"
    return text.encode("ascii")


@settings(max_examples=800, deadline=None)
@given(realistic_message())
def test_realistic_messages_are_answered_and_agree(message: bytes) -> None:
    assert agrees(message + b"v=0\r\n", len(message)) is not None


# -- the fuzz corpus and the SIPp scenarios -------------------------------------------------------

def framed(stream: bytes) -> list[SipMessage]:
    framer = SipFramer(max_message_size=1 << 20)
    events = [*framer.feed(stream), *framer.close()]
    return [event for event in events if isinstance(event, SipMessage)]


@pytest.mark.parametrize("path", sorted(p for d in ("sip_message", "sip_framer") for p in (CORPUS / d).iterdir()),
                         ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_corpus_message_agrees(path: Path) -> None:
    for message in framed(path.read_bytes()):
        fields = agrees(message.data, message.header_end)
        # The framer's fast path read them already (read_head): the same answer, when it has one.
        assert message.fields is None or message.fields == fields


def test_the_corpus_is_mostly_answered() -> None:
    """Guards against a reader that declines everything (which would pass the agreement tests)."""
    messages = [m for d in ("sip_message", "sip_framer") for p in (CORPUS / d).iterdir() for m in framed(p.read_bytes())]
    answered = [m for m in messages if read_fields(m.data, m.header_end) is not None]
    assert len(messages) >= 20
    assert len(answered) >= 0.7 * len(messages)


def fill(text: str, values: dict[str, str]) -> str:
    return re.sub(r"\[([a-zA-Z_-]+:?)\]", lambda m: values.get(m.group(1), m.group(0)), text)


def sipp_messages(scenario: Path, values: dict[str, str]) -> list[bytes]:
    """The messages a SIPp scenario sends, rendered as SIPp does: lines stripped, CRLF ends, the
    empty line between headers and body, [len] the body length, [keyword]s from ``values``."""
    out = []
    for send in ET.parse(scenario).getroot().iter("send"):
        lines = [line.strip() for line in (send.text or "").strip().splitlines()]
        if "" in lines:
            split = lines.index("")
            head, body = lines[:split], lines[split + 1 :]
        else:  # uas.xml writes the body straight after the headers
            split = next((i for i, line in enumerate(lines) if line.startswith("v=")), len(lines))
            head, body = lines[:split], lines[split:]
        body_text = fill("".join(line + "\r\n" for line in body), values)
        text = fill("\r\n".join(head), values) + "\r\n\r\n" + body_text
        out.append(text.replace("[len]", str(len(body_text.encode()))).encode())
    return out


@settings(max_examples=150, deadline=None)
@given(st.fixed_dictionaries({
    "call_id": TOKENS.map(lambda t: f"{t}-1@192.0.2.1"), "branch": TOKENS.map(lambda t: f"z9hG4bK-{t}"),
    "pid": st.integers(1, 99999).map(str), "call_number": st.integers(1, 10**6).map(str),
    "transport": st.sampled_from(["TCP", "TLS"]), "local_ip": st.sampled_from(["127.0.0.1", "[::1]"]),
}))
def test_sipp_scenario_messages_are_answered_and_agree(keywords: dict[str, str]) -> None:
    values = {**keywords, "local_port": "5070", "remote_ip": "127.0.0.1", "remote_port": "5061", "service": "bench",
              "local_ip_type": "4", "media_ip": "127.0.0.1", "media_ip_type": "4", "media_port": "6000",
              "peer_tag_param": ";tag=77U1"}
    uac = sipp_messages(SCENARIOS / "uac.xml", values)
    invite, bye = parse_message(uac[0]), parse_message(uac[-1])
    assert invite.method == "INVITE" and bye.method == "BYE"

    def echoed(request: bytes) -> dict[str, str]:
        head = request.split(b"\r\n\r\n")[0].decode().split("\r\n")[1:]
        return {f"last_{line.partition(':')[0]}:": line for line in head}

    uas_for_invite = sipp_messages(SCENARIOS / "uas.xml", {**values, **echoed(uac[0])})
    uas_for_bye = sipp_messages(SCENARIOS / "uas.xml", {**values, **echoed(uac[-1])})
    messages = [*uac, *uas_for_invite[:3], uas_for_bye[-1]]
    assert len(messages) == 7
    for data in messages:
        [message] = framed(data)
        assert message.data == data
        fields = agrees(message.data, message.header_end)
        assert fields is not None, data
        assert message.fields == fields  # framed by the fast path, which read them with Content-Length


# -- unit tests -----------------------------------------------------------------------------------

def fields_of(text: str, body: bytes = b"") -> SipFields | None:
    head = text.encode("utf-8")
    return agrees(head + body, len(head))


def test_compact_forms_are_read() -> None:
    fields = fields_of("INVITE sip:b@x SIP/2.0\r\nv: SIP/2.0/TLS h;branch=z9hG4bKc\r\nf: <sip:a@x>;tag=fa\r\n"
                       "t: <sip:b@x>\r\ni: cid@h\r\nCSeq: 5 INVITE\r\nc: application/sdp\r\nl: 3\r\n\r\n", b"v=0")
    assert fields == SipFields(True, "INVITE", "sip:b@x", None, None, "cid@h", 5, "INVITE", "fa", None, "z9hG4bKc",
                               "application/sdp", 3)


def test_a_response_with_folded_lines_and_repeated_vias() -> None:
    fields = fields_of("SIP/2.0 180 Ringing\r\nVia: SIP/2.0/TLS a;branch=top,\r\n SIP/2.0/TLS b;branch=2\r\n"
                       "Via: SIP/2.0/TLS c;branch=3\r\nTo: \"B; x\"\r\n\t<sip:b@x>;tag=tb\r\nCall-ID: \r\n  cid\r\n"
                       "CSeq:\r\n 7 INVITE\r\n\r\n")
    assert fields is not None
    assert (fields.status_code, fields.reason, fields.via_branch, fields.to_tag, fields.call_id, fields.cseq_number) == (
        180, "Ringing", "top", "tb", "cid", 7)


def test_the_first_of_repeated_headers_wins_as_in_the_view() -> None:
    fields = fields_of("BYE sip:b SIP/2.0\r\nCall-ID: first\r\ni: second\r\nCSeq: 2 BYE\r\nCSeq: 3 BYE\r\n\r\n")
    assert fields is not None and (fields.call_id, fields.cseq_number) == ("first", 2)


def test_quoted_and_odd_parameters() -> None:
    fields = fields_of('SIP/2.0 200 OK\r\nFrom: "a;tag=no" <sip:a;tag=no>;TAG="x\\"y"\r\nTo: sip:b@x;tag=t1;foo\r\n'
                       "Via: SIP/2.0/TLS h;branch\r\n\r\n")
    assert fields is not None and (fields.from_tag, fields.to_tag, fields.via_branch) == ('x"y', "t1", None)


def test_absent_or_empty_fields_are_none() -> None:
    fields = fields_of("SIP/2.0 200\r\nCall-ID:\r\nCSeq: x BYE\r\nContent-Type: \r\n\r\n")
    assert fields is not None
    assert (fields.reason, fields.call_id, fields.cseq_number, fields.cseq_method, fields.content_type,
            fields.from_tag, fields.via_branch) == ("", None, None, None, None, None, None)


@pytest.mark.parametrize("text", [
    "INVITE sip:b SIP/2.0\r\nFrom: \"J\u00f6rg\" <sip:j@x>;tag=1\r\n\r\n",  # non-ASCII: the view decodes
    "INVITE sip:b SIP/2.0\nCall-ID: c\r\n\r\n",  # bare LF
    "SIP/2.0 200 OK\nCall-ID: c\r\n\r\n",  # bare LF ending the start line: the reason must not swallow a header
    "INVITE sip:b SIP/2.0\r\nCall-ID: c\rx\r\n\r\n",  # bare CR
    "INVITE sip:b SIP/2.0\r\nCall-ID: a\r\nnot a header\r\n continued\r\n\r\n",  # line without a colon
    "INVITE sip:b SIP/2.0\r\n\x0bi: c\r\n\r\n",  # odd whitespace that strip() removes
    "INVITE sip:b SIP/2.0\r\nCall-ID: c\r\n",  # no empty line ending the block
    "HTTP/1.1 200 OK\r\n\r\n",  # not SIP: the view raises
])
def test_what_the_one_scan_declines(text: str) -> None:
    assert read_fields(text.encode("utf-8"), len(text.encode("utf-8"))) is None
    agrees(text.encode("utf-8"), len(text.encode("utf-8")))


def test_a_long_value_without_parameters_is_read_in_linear_time() -> None:
    """The parameter search is possessive: a long From without ";" fails at once instead of
    backtracking through every way of splitting the run of characters (this would hang)."""
    fields = fields_of("INVITE sip:b SIP/2.0\r\nFrom: <sip:a@x>" + "y" * 20000 + "\r\nTo: \"" + "z" * 20000 + "\r\n\r\n")
    assert fields is not None and (fields.from_tag, fields.to_tag) == (None, None)


# -- the memoised readings ------------------------------------------------------------------------

def call_message(n: int, *, extra: str = "") -> bytes:
    """A response of call ``n``: its own tags, branch, Call-ID and CSeq number."""
    return (f"SIP/2.0 180 Ringing {n}\r\nVia: SIP/2.0/TLS 192.0.2.10:5061;branch=z9hG4bK-{n}\r\n"
            f"From: \"caller {n}\" <sip:a@x>;tag=f{n}\r\nTo: <sip:b@y>;tag=t{n}\r\nCall-ID: c{n}@x\r\n"
            f"CSeq: {n} INVITE\r\n{extra}Content-Length: 0\r\n\r\n").encode()


def test_the_memoised_readings_are_bounded() -> None:
    """Every value is new (a trunk's calls): the tables stay within their bounds."""
    tables = [sip_fields._STARTS, sip_fields._CSEQS, sip_fields._TAGS, sip_fields._BRANCHES]
    for n in range(max(table.limit for table in tables) + 100):
        data = call_message(n, extra=f"X-Header-{n}: {n}\r\n")
        assert agrees(data, len(data)) is not None  # the name table cleared on the way: still the view's
    for table in tables:
        assert 0 < len(table) <= table.limit
    assert len(sip_fields._SPELLED) <= sip_fields._SPELLED_LIMIT


def test_long_values_are_read_but_not_kept() -> None:
    """A peer's long unique values (up to a message's size) must not be pinned in the tables:
    each table keeps raw text only up to a bound, so its bytes stay bounded too; the answers
    are the view's either way."""
    tables = [sip_fields._STARTS, sip_fields._CSEQS, sip_fields._TAGS, sip_fields._BRANCHES]
    long = "x" * 20_000
    for n in range(50):
        data = call_message(n).replace(b";tag=f", f";tag={long}{n}f".encode()).replace(
            b"branch=z9hG4bK-", f"branch=z9hG4bK-{long}{n}-".encode())
        data = data.replace(b"Call-ID:", f"X-{long}{n}: v\r\nCall-ID:".encode())
        fields = agrees(data, len(data))
        assert fields is not None and fields.from_tag == f"{long}{n}f{n}"
        assert fields.via_branch == f"z9hG4bK-{long}{n}-{n}"
    for table in tables:
        assert all(len(key) <= sip_fields._MEMO_KEY_MAX for key in table)
    assert all(len(name) <= sip_fields._SPELLED_NAME_MAX for name in sip_fields._SPELLED)


def test_answers_after_eviction_are_computed_again_and_the_same() -> None:
    first = call_message(1)
    before = agrees(first, len(first))
    tables = [sip_fields._STARTS, sip_fields._CSEQS, sip_fields._TAGS, sip_fields._BRANCHES]
    assert all(any(key.endswith(";tag=f1") or "z9hG4bK-1" in key or key.startswith(("SIP/2.0 180 Ringing 1", " 1 INVITE"))
                   for key in table) for table in tables)
    for n in range(2, 5000):  # pushes call 1's values out of every table
        data = call_message(n, extra=f"X-{n}: y\r\n")
        read_fields(data, len(data))
    assert not any(key.endswith((";tag=f1", "z9hG4bK-1")) or key in ("SIP/2.0 180 Ringing 1", " 1 INVITE")
                   for table in tables for key in table)
    after = agrees(first, len(first))
    assert after == before
    assert before is not None and (before.from_tag, before.to_tag, before.via_branch, before.status_code) == (
        "f1", "t1", "z9hG4bK-1", 180)


def test_values_of_different_connections_do_not_mix() -> None:
    """Two trunks' messages that differ only inside the memoised values: each reads its own,
    whichever came first and however often they alternate."""
    a = call_message(7)
    b = a.replace(b"tag=f7", b"tag=f8").replace(b"branch=z9hG4bK-7", b"branch=z9hG4bK-8").replace(b"CSeq: 7", b"CSeq: 8")
    for _ in range(3):
        fields_a, fields_b = agrees(a, len(a)), agrees(b, len(b))
        assert fields_a is not None and fields_b is not None
        assert (fields_a.from_tag, fields_a.via_branch, fields_a.cseq_number) == ("f7", "z9hG4bK-7", 7)
        assert (fields_b.from_tag, fields_b.via_branch, fields_b.cseq_number) == ("f8", "z9hG4bK-8", 8)


def test_a_spelling_learned_as_unwanted_does_not_shadow_a_wanted_one() -> None:
    """The name table keys the spelling exactly: "Call-ID" learned does not answer for
    "Call-ID " or "i", nor "X-Call-ID" for "Call-ID"."""
    for text in ("SIP/2.0 200 OK\r\nX-Call-ID: no\r\nCall-ID: yes\r\n\r\n",
                 "SIP/2.0 200 OK\r\nCall-ID : yes\r\nCall-ID: no\r\n\r\n",
                 "SIP/2.0 200 OK\r\ni: yes\r\nCALL-ID: no\r\n\r\n"):
        fields = fields_of(text)
        assert fields is not None and fields.call_id == "yes"

"""The header view's fast lookups against the full parse they shortcut.

``SipMessageView.first`` finds a header with a regular expression when the header block is
plain and falls back to the full parse (``headers``) otherwise; either way the answer must be
the full parse's. The generator mixes the cases that separate them: compact forms, case,
folding, repeated headers, odd whitespace, bare CR or LF, lines without a colon.
"""

from __future__ import annotations

from hypothesis import example, given, settings
from hypothesis import strategies as st

from siptap.sansio.sip_message import SipMessageView, parse_message

NAMES = ["Call-ID", "i", "I", "CSeq", "cseq", "Via", "v", "From", "f", "To", "t", "T", "Content-Type", "c",
         "X-Call-ID", "Call-ID ", " Call-ID", "Call-ID\x0b", "\x0bv", "Tó", "Subject", "", "CALL-id"]
VALUES = [" a@b", "a@b", "  1 INVITE ", " SIP/2.0/TLS h;branch=z9hG4bK1, SIP/2.0/TLS g;branch=x",
          ' "A;b" <sip:a;x=y>;tag=1', " <sip:b>;tag= 2 ", "", " x\u3000", " y\xa0", " 7 ACK"]
SEPARATORS = ["\r\n", "\r\n", "\r\n", "\n", "\r", "\r\n ", "\r\n\t", "\r\n\r\n"]
FIELDS = ["call_id", "cseq_number", "cseq_method", "from_tag", "to_tag", "via_branch", "content_type"]


def full_parse_first(view: SipMessageView, name: str) -> str | None:
    return next((value for hname, value in view.headers if hname == name), None)


@settings(max_examples=3000, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(NAMES), st.sampled_from([":", " :", ""]), st.sampled_from(VALUES),
                          st.sampled_from(SEPARATORS)), max_size=8),
       st.sampled_from(["INVITE sip:a@b SIP/2.0", "SIP/2.0 200 OK"]))
@example([("Call-ID", ":", " a@b", "\r\n"), ("i", ":", " c@d", "\r\n")], "INVITE sip:a@b SIP/2.0")
@example([("Via", ":", " SIP/2.0/TLS h;branch=1", "\r\n\t"), ("Via", ":", " x", "\r\n")], "SIP/2.0 200 OK")
def test_fast_lookups_agree_with_the_full_parse(headers: list[tuple[str, str, str, str]], start_line: str) -> None:
    block = start_line + "\r\n" + "".join(name + colon + value + sep for name, colon, value, sep in headers) + "\r\n"
    data = block.encode("utf-8")
    fast = parse_message(data, len(data))
    full = parse_message(data, len(data))
    full.headers  # noqa: B018 - force the full parse, then compare field by field
    for name in ("call-id", "cseq", "via", "from", "to", "content-type"):
        assert fast.first(name) == full_parse_first(full, name), (name, block)
    for field in FIELDS:
        getattr(fast, field)


def test_plain_invite_fields() -> None:
    data = (b"INVITE sip:b@example.com SIP/2.0\r\nv: SIP/2.0/TLS h:5061;branch=z9hG4bK77\r\n"
            b"From: \"A, b\" <sip:a@example.com;x=y>;tag=f1\r\nTO: <sip:b@example.com>\r\ni: c1@h\r\n"
            b"CSeq:\r\n  12 INVITE\r\nc: application/sdp\r\nContent-Length: 0\r\n\r\n")
    view = parse_message(data)
    assert (view.call_id, view.cseq_number, view.cseq_method) == ("c1@h", 12, "INVITE")
    assert (view.from_tag, view.to_tag, view.via_branch, view.content_type) == ("f1", None, "z9hG4bK77", "application/sdp")

"""SipMessageView: the header facts the mirror correlates on, from realistic messages."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from siptap.sansio.sip_message import SipParseError, body_of, parse_message, split_values

SDP = (
    b"v=0\r\no=- 1 1 IN IP4 192.0.2.10\r\ns=-\r\nc=IN IP4 192.0.2.10\r\nt=0 0\r\n"
    b"m=audio 4000 RTP/SAVP 0\r\n"
)

INVITE = (
    b"INVITE sip:+15551234567@core.example;user=phone SIP/2.0\r\n"
    b"Via: SIP/2.0/TLS 192.0.2.10:5061;branch=z9hG4bK776asdhds;rport\r\n"
    b"Via: SIP/2.0/TLS 10.0.0.1:5061;branch=z9hG4bKolder\r\n"
    b"Max-Forwards: 70\r\n"
    b'From: "Alice" <sip:alice@customer.example>;tag=1928301774\r\n'
    b"To: <sip:+15551234567@core.example;user=phone>\r\n"
    b"Call-ID: a84b4c76e66710@pc33.customer.example\r\n"
    b"CSeq: 314159 INVITE\r\n"
    b"Contact: <sip:alice@192.0.2.10:5061;transport=tls>\r\n"
    b"Content-Type: application/sdp\r\n"
    b"Content-Length: " + str(len(SDP)).encode() + b"\r\n\r\n" + SDP
)

OK = (
    b"SIP/2.0 200 OK\r\n"
    b"Via: SIP/2.0/TLS 192.0.2.10:5061;branch=z9hG4bK776asdhds;received=192.0.2.10\r\n"
    b'From: "Alice" <sip:alice@customer.example>;tag=1928301774\r\n'
    b"To: <sip:+15551234567@core.example;user=phone>;tag=a6c85cf\r\n"
    b"Call-ID: a84b4c76e66710@pc33.customer.example\r\n"
    b"CSeq: 314159 INVITE\r\n"
    b"Content-Length: 0\r\n\r\n"
)

COMPACT = (
    b"BYE sip:alice@192.0.2.10:5061;transport=tls SIP/2.0\r\n"
    b"v: SIP/2.0/TLS 198.51.100.7:5061;branch=z9hG4bKbye1, SIP/2.0/TLS 10.9.9.9;branch=z9hG4bKx\r\n"
    b"f: <sip:+15551234567@core.example>;tag=a6c85cf\r\n"
    b"t: \"Alice\" <sip:alice@customer.example>;tag=1928301774\r\n"
    b"i: a84b4c76e66710@pc33.customer.example\r\n"
    b"CSeq: 2 BYE\r\n"
    b"c: text/plain\r\n"
    b"l: 2\r\n\r\nhi"
)


def test_request_fields() -> None:
    view = parse_message(INVITE)
    assert view.is_request
    assert view.method == "INVITE"
    assert view.request_uri == "sip:+15551234567@core.example;user=phone"
    assert view.status_code is None and view.reason is None
    assert view.call_id == "a84b4c76e66710@pc33.customer.example"
    assert (view.cseq_number, view.cseq_method) == (314159, "INVITE")
    assert view.from_tag == "1928301774"
    assert view.to_tag is None  # the URI's ;user=phone is not a header parameter
    assert view.via_branch == "z9hG4bK776asdhds"  # the top Via, not the second header
    assert view.content_type == "application/sdp"
    assert view.body_length == len(SDP)
    assert body_of(INVITE, INVITE.index(b"\r\n\r\n") + 4) == SDP


def test_response_fields() -> None:
    view = parse_message(OK, OK.index(b"\r\n\r\n") + 4)
    assert not view.is_request
    assert view.method is None and view.request_uri is None
    assert (view.status_code, view.reason) == (200, "OK")
    assert (view.cseq_number, view.cseq_method) == (314159, "INVITE")
    assert (view.from_tag, view.to_tag) == ("1928301774", "a6c85cf")
    assert view.via_branch == "z9hG4bK776asdhds"
    assert view.content_type is None
    assert view.body_length == 0


def test_compact_forms_and_comma_separated_via() -> None:
    view = parse_message(COMPACT)
    assert view.method == "BYE"
    assert view.call_id == "a84b4c76e66710@pc33.customer.example"
    assert (view.from_tag, view.to_tag) == ("a6c85cf", "1928301774")
    assert view.via_branch == "z9hG4bKbye1"
    assert view.content_type == "text/plain"
    assert view.body_length == 2
    assert view.header("Via") == view.header("v") == [
        "SIP/2.0/TLS 198.51.100.7:5061;branch=z9hG4bKbye1, SIP/2.0/TLS 10.9.9.9;branch=z9hG4bKx"
    ]
    assert split_values(view.header("via")[0])[1] == "SIP/2.0/TLS 10.9.9.9;branch=z9hG4bKx"
    assert view.header("Content-Length") == ["2"]


def test_header_names_are_case_insensitive_and_all_values_are_kept() -> None:
    msg = (
        b"OPTIONS sip:x SIP/2.0\r\ncall-ID: abc\r\n"
        b"VIA: SIP/2.0/TCP a;BRANCH=z9hG4bK1\r\nvia: SIP/2.0/TCP b\r\n\r\n"
    )
    view = parse_message(msg)
    assert view.call_id == "abc"
    assert view.via_branch == "z9hG4bK1"
    assert view.header("Via") == ["SIP/2.0/TCP a;BRANCH=z9hG4bK1", "SIP/2.0/TCP b"]
    assert view.header("X-Missing") == []


@pytest.mark.parametrize(
    ("value", "tag"),
    [
        ('"x;tag=y" <sip:a@b;tag=notthis>;tag=real', "real"),
        ("<sip:a@b> ; TAG = spaced ;other=1", "spaced"),
        ("sip:a@b;tag=addrspec", "addrspec"),  # no <>: the parameters belong to the header
        ('"quote \\" ;tag=no" <sip:a@b>;tag=esc', "esc"),
        ("<sip:a@b;tag=uri-only>", None),
        ('<sip:a@b>;x="a;tag=no";tag=after', "after"),
        ("<sip:a@b>;tag", None),
        ("<sip:a@b>", None),
    ],
)
def test_from_tag_is_a_header_parameter_only(value: str, tag: str | None) -> None:
    view = parse_message(f"MESSAGE sip:x SIP/2.0\r\nFrom: {value}\r\nt: {value}\r\n\r\n".encode())
    assert view.from_tag == tag
    assert view.to_tag == tag


def test_folded_headers_are_unfolded() -> None:
    msg = (
        b"SIP/2.0 180 Ringing\r\n"
        b"Via: SIP/2.0/TLS 192.0.2.10:5061\r\n  ;branch=z9hG4bKfold\r\n"
        b"To: <sip:b@c>\r\n\t;tag=folded\r\n"
        b"Subject: long\r\n subject\r\n\r\n"
    )
    view = parse_message(msg)
    assert view.via_branch == "z9hG4bKfold"
    assert view.to_tag == "folded"
    assert view.header("s") == ["long subject"]
    assert view.reason == "Ringing"


def test_non_utf8_headers_do_not_raise() -> None:
    msg = (
        b"MESSAGE sip:x SIP/2.0\r\nFrom: \xe9\xff <sip:a@b>;tag=t\xff\r\n"
        b"Call-ID: c\x80d\r\n\r\n\xff\xfe"
    )
    view = parse_message(msg)
    assert view.from_tag == "t\ufffd"
    assert view.call_id == "c\ufffdd"
    assert view.body_length == 2


def test_status_lines() -> None:
    assert parse_message(b"SIP/2.0 100 Trying\r\n\r\n").status_code == 100
    assert parse_message(b"SIP/2.0 486 Busy Here\r\n\r\n").reason == "Busy Here"
    assert parse_message(b"SIP/2.0 503 \r\n\r\n").reason == ""
    view = parse_message(b"SIP/2.0 200 D\xc3\xa9j\xc3\xa0 vu\r\n\r\n")
    assert (view.status_code, view.reason) == (200, "Déjà vu")


def test_malformed_fields_are_none() -> None:
    view = parse_message(b"INFO sip:x SIP/2.0\r\nCSeq: many INFO\r\nCall-ID:\r\n\r\n")
    assert view.cseq_number is None and view.cseq_method is None
    assert view.call_id is None
    assert view.via_branch is None and view.from_tag is None


def test_without_header_end_the_whole_message_is_headers() -> None:
    view = parse_message(b"ACK sip:x SIP/2.0\r\nCSeq: 1 ACK")
    assert (view.method, view.cseq_number, view.body_length) == ("ACK", 1, 0)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x16\x03\x01\x00\xa5\x01\x00",
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        b"HTTP/1.1 200 OK\r\n\r\n",
        b"INVITE sip:x\r\n\r\n",
        b"SIP/2.0 OK\r\n\r\n",
        b"SIP/3.0 200 OK\r\n\r\n",
        b"INVITE  SIP/2.0\r\n\r\n",
    ],
)
def test_garbage_start_line_raises(data: bytes) -> None:
    with pytest.raises(SipParseError):
        parse_message(data)
    assert issubclass(SipParseError, ValueError)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_any_bytes_either_parse_or_raise_sip_parse_error(data: bytes) -> None:
    for candidate in (data, b"OPTIONS sip:x SIP/2.0\r\n" + data):
        try:
            parse_message(candidate)
        except SipParseError:
            pass

"""The framer's Content-Length shortcut against the reference parse it shortcuts.

``simple_content_length`` may say "not simple" (None) whenever it likes, but when it answers,
the answer must be the reference's (``content_length``). The generator mixes the cases that
separate them: compact and odd-cased names, names inside values (``tel:``), repeated or folded
headers, VT/FF, bare CR or LF, over-long numbers. Split invariance of the whole framer, fast
path included, is tested in test_sip_framer.py and by the fuzz target.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from siptap.sansio.content_length import content_length, simple_content_length
from siptap.sansio.sip_fields import read_fields, read_head

NAMES = st.sampled_from([b"Content-Length", b"l", b"L", b"content-length ", b"X-Content-Length", b"tel", b" l",
                         b"\tl", b"\x0bl", b"Via", b"To", b"l\x0b", b"CONTENT-LENGTH"])
VALUES = st.sampled_from([b" 5", b"5", b" 05 ", b" x", b"", b" 5\r\n 6", b" 12345678901234567890", b" <tel:+1>",
                          b" l:3", b" 7\t"])
COLONS = st.sampled_from([b":", b" :", b"\n:", b""])


@settings(max_examples=3000, deadline=None)
@given(st.lists(st.tuples(NAMES, COLONS, VALUES), max_size=5))
def test_shortcut_agrees_with_the_reference(headers) -> None:  # type: ignore[no-untyped-def]
    block = b"INVITE sip:a SIP/2.0" + b"".join(b"\r\n" + n + c + v for n, c, v in headers) + b"\r\n\r\n"
    fast = simple_content_length(block, block.find(b"\r\n"), len(block))
    reference, error = content_length(bytearray(block), len(block))
    if fast is not None:
        assert error is None and fast == reference


@settings(max_examples=3000, deadline=None)
@given(st.lists(st.tuples(NAMES, COLONS, VALUES), max_size=5), st.sampled_from([b"", b"v=0\r\n", b"SIP/2.0 200 OK\r\n"]),
       st.sampled_from([0, 7]))
def test_the_one_pass_reading_agrees_with_the_shortcut_and_the_fields(headers, body, at) -> None:  # type: ignore[no-untyped-def]
    """read_head (the framer's fast path reads fields and Content-Length in one pass) answers
    only what simple_content_length answers, the same number, and the fields read_fields
    reads from the framed message; ``at``: the message's offset in the chunk."""
    block = b"INVITE sip:a SIP/2.0" + b"".join(b"\r\n" + n + c + v for n, c, v in headers) + b"\r\n\r\n"
    chunk = b"x" * at + block + body
    head = read_head(chunk, at, at + len(block))
    if head is None:
        return
    fields, length = head
    assert length == simple_content_length(block, block.find(b"\r\n"), len(block))
    message = block + body[:length] + b"\0" * (length - len(body[:length]))
    assert fields == read_fields(message, len(block))
    assert fields.body_length == length


def test_the_one_pass_reading_takes_plain_messages_and_declines_repeats_and_folds() -> None:
    block = b"SIP/2.0 200 OK\r\nCall-ID: a\r\nl: 12\r\nTo: <tel:+1>;tag=x\r\n\r\n"
    head = read_head(block, 0, len(block))
    assert head is not None and head[1] == 12 and head[0].call_id == "a" and head[0].to_tag == "x"
    head = read_head(b"SIP/2.0 200 OK\r\nCall-ID: a\r\n\r\n", 0, len(b"SIP/2.0 200 OK\r\nCall-ID: a\r\n\r\n"))
    assert head is not None and head[1] == 0
    for text in (b"SIP/2.0 200 OK\r\nl: 1\r\nContent-Length: 1\r\n\r\n", b"SIP/2.0 200 OK\r\nl: 1\r\n 2\r\n\r\n",
                 b"SIP/2.0 200 OK\r\nl: x\r\n\r\n", b"SIP/2.0 200 OK\r\nl: 1234567890123456789\r\n\r\n"):
        assert read_head(text, 0, len(text)) is None


def test_shortcut_takes_the_plain_cases() -> None:
    block = b"SIP/2.0 200 OK\r\nCall-ID: a\r\nl: 12\r\nTo: <tel:+1>\r\n\r\n"
    assert simple_content_length(block, block.find(b"\r\n"), len(block)) == 12
    block = b"SIP/2.0 200 OK\r\nCall-ID: a\r\n\r\n"
    assert simple_content_length(block, block.find(b"\r\n"), len(block)) == 0

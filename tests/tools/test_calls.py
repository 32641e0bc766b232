"""`siptap calls` and the call selectors: pure parts on records, the command on real captures.

The pure parts (parties, grouping, selectors) take SIP bytes or calls in and give results out.
The command runs on the captures of a real proxy run (tests/tools/call_lab.py: answered and
refused calls, chosen numbers, a P-Asserted-Identity, an OPTIONS ping, both legs mirrored).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest

from siptap import cli
from siptap.sansio.sip_message import SipMessageView, parse_message
from siptap.tools.calls import (
    Call,
    CallSelector,
    SelectionError,
    group_calls,
    parse_statuses,
    party_matches,
    pick_calls,
    select_calls,
    uri_of,
    user_of,
)
from siptap.tools.calls.grouping import Flow
from siptap.tools.calls.select import call_id_match
from siptap.tools.calls.table import duration, table
from tests.tools.call_lab import CallLab

# -- parties ---------------------------------------------------------------------------------------


def test_uri_and_user_of_header_values() -> None:
    assert uri_of('"Alice" <sip:+4930123@h;user=phone>;tag=1') == "sip:+4930123@h;user=phone"
    assert uri_of("sip:+4930123@h;tag=1") == "sip:+4930123@h"  # addr-spec: the params are the header's
    assert uri_of("<tel:+49-30-123>") == "tel:+49-30-123"
    assert user_of("sip:+4930123@h;user=phone") == "+4930123"
    assert user_of("sips:alice;ext=1:secret@h") == "alice"
    assert user_of("tel:+49-30-123;phone-context=x") == "+49-30-123"
    assert user_of("sip:h.example") is None and user_of("mailto:a@b") is None and user_of("garbage") is None


def test_party_matches_numbers_digit_for_digit_in_user_parts_only() -> None:
    parties = ["sip:+4930123@10.0.0.127;user=phone", "tel:+49-40-555"]
    assert party_matches("+49 30 123", parties)
    assert party_matches("4930123", parties) and party_matches("(040) 555", ["sip:040555@h"])
    assert party_matches("+49-40-555", parties) and party_matches("4940555", parties)
    assert not party_matches("127", parties)  # the host's digits are not a number
    assert not party_matches("4930124", parties)
    assert party_matches("USER=PHONE", parties)  # not a number: a case-insensitive substring
    assert party_matches("10.0.0.127", parties)
    assert not party_matches("  ", parties)


# -- grouping ---------------------------------------------------------------------------------------

FLOW_A: Flow = (("192.0.2.10", 40000), ("192.0.2.1", 5061), 0)
FLOW_CORE: Flow = (("192.0.2.1", 45000), ("198.51.100.7", 5061), 0)


@dataclass
class Captured:
    ts_us: int
    view: SipMessageView
    flow: Flow


def msg(ts: int, first: str, call_id: str, cseq: str, *extra: str, flow: Flow = FLOW_A) -> Captured:
    head = [first, f"Call-ID: {call_id}", f"CSeq: {cseq}", "From: <sip:+4930111@esbc>;tag=a",
            "To: <sip:+4940222@core>", *extra, "Content-Length: 0"]
    return Captured(ts, parse_message(("\r\n".join(head) + "\r\n\r\n").encode()), flow)


def test_group_calls_final_status_follows_the_first_request() -> None:
    messages = [
        # Challenged, sent again with credentials, answered; a re-INVITE later refused: answered.
        msg(10, "INVITE sip:+4940222@core SIP/2.0", "auth", "1 INVITE",
            "P-Asserted-Identity: <sip:+4930999@esbc>, <tel:+4930999>"),
        msg(11, "SIP/2.0 407 Proxy Authentication Required", "auth", "1 INVITE"),
        msg(12, "INVITE sip:+4940222@core SIP/2.0", "auth", "2 INVITE", flow=FLOW_CORE),
        msg(13, "SIP/2.0 200 OK", "auth", "2 INVITE", flow=FLOW_CORE),
        msg(20, "INVITE sip:+4940222@core SIP/2.0", "auth", "3 INVITE"),
        msg(21, "SIP/2.0 491 Request Pending", "auth", "3 INVITE"),
        msg(30, "SIP/2.0 200 OK", "auth", "4 BYE"),
        # Refused: the last final response to the INVITE.
        msg(15, "INVITE sip:486@core SIP/2.0", "busy", "1 INVITE"),
        msg(16, "SIP/2.0 100 Trying", "busy", "1 INVITE"),
        msg(17, "SIP/2.0 486 Busy Here", "busy", "1 INVITE"),
        # No final response; and a call whose request the captures missed.
        msg(18, "INVITE sip:x@core SIP/2.0", "ringing", "1 INVITE"),
        msg(19, "SIP/2.0 180 Ringing", "ringing", "1 INVITE"),
        msg(5, "SIP/2.0 200 OK", "orphan", "7 OPTIONS"),
    ]
    calls = group_calls(sorted(messages, key=lambda m: m.ts_us),
                        lambda flow: ["c-1"] if flow == FLOW_A else ["c-1", "c-2"])
    assert [c.call_id for c in calls] == ["orphan", "auth", "busy", "ringing"]
    orphan, auth, busy, ringing = calls
    assert (auth.method, auth.status, auth.reason, auth.messages) == ("INVITE", 200, "OK", 7)
    assert (auth.start_us, auth.end_us, auth.duration_us) == (10, 30, 20)
    assert (auth.from_user, auth.to_user, auth.request_uri) == ("+4930111", "+4940222", "sip:+4940222@core")
    assert auth.asserted == ("sip:+4930999@esbc", "tel:+4930999")
    assert auth.flows == (FLOW_A, FLOW_CORE) and auth.conns == ("c-1", "c-2")
    assert (busy.status, busy.reason) == (486, "Busy Here")
    assert ringing.status is None
    assert (orphan.method, orphan.status, orphan.from_user) == (None, None, "+4930111")


def test_group_calls_reads_compact_headers() -> None:
    raw = b"INVITE sip:b@h SIP/2.0\r\ni: compact\r\nCSeq: 1 INVITE\r\nf: <sip:alice@h>;tag=1\r\nt: sip:bob@h\r\n\r\n"
    [call] = group_calls([Captured(1, parse_message(raw), FLOW_A)])
    assert (call.call_id, call.from_user, call.to_user, call.conns) == ("compact", "alice", "bob", ())


# -- selectors --------------------------------------------------------------------------------------


def call(call_id: str, start: int = 0, status: int | None = 200, method: str = "INVITE",
         to: str = "sip:+4940222@core") -> Call:
    return Call(call_id, start, start + 5, 7, method, to, "sip:+4930111@esbc", to, (), status, None, (FLOW_A,))


def test_call_id_match_strengths() -> None:
    assert call_id_match("abc@h", "abc@h") == 3
    assert call_id_match("abc", "abc@h") == 2 and call_id_match("abc@other", "abc@h") == 2
    assert call_id_match("ab", "abc@h") == 1
    assert call_id_match("abc@h", "abcd@h") == 0 and call_id_match("ABC", "abc@h") == 0  # case-sensitive


def test_parse_statuses_and_classes() -> None:
    assert parse_statuses(["4xx,5XX", "486", "failed", "unanswered"]) == ("4xx", "5xx", "486", "failed", "none")
    with pytest.raises(SelectionError, match="--status 'busy'"):
        parse_statuses(["busy"])
    with pytest.raises(SelectionError):
        parse_statuses(["700"])
    failed = CallSelector(statuses=("failed",))
    assert [failed.status_matches(s) for s in (180, 200, 486, 503, 603, None)] == [False, False, True, True, True, False]
    assert CallSelector(statuses=("none",)).status_matches(None)
    assert CallSelector(statuses=("486",)).status_matches(486) and not CallSelector(statuses=("486",)).status_matches(487)


def test_select_by_window_overlap_method_and_number() -> None:
    calls = [call("a@h", 0), call("b@h", 10, method="OPTIONS"), call("c@h", 20, to="tel:+49-40-333")]
    assert [c.call_id for c in select_calls(calls, CallSelector(since_us=4, until_us=12))] == ["a@h", "b@h"]
    assert [c.call_id for c in select_calls(calls, CallSelector(methods=("OPTIONS",)))] == ["b@h"]
    assert [c.call_id for c in select_calls(calls, CallSelector(numbers=("4940333",)))] == ["c@h"]
    assert CallSelector().empty and CallSelector(since_us=1).picks_calls is False
    assert CallSelector(numbers=("x",)).picks_calls


def test_pick_calls_resolves_each_call_id_to_one_call() -> None:
    calls = [call("abc@h", 0), call("abc-2@h", 10), call("xyz@h", 20, status=486)]
    # The strongest match wins: an exact (or host-less) Call-ID is never ambiguous with a longer one.
    assert [c.call_id for c in pick_calls(calls, CallSelector(call_ids=("abc@h",)))] == ["abc@h"]
    assert [c.call_id for c in pick_calls(calls, CallSelector(call_ids=("abc",)))] == ["abc@h"]
    assert [c.call_id for c in pick_calls(calls, CallSelector(call_ids=("abc-",)))] == ["abc-2@h"]
    with pytest.raises(SelectionError) as ambiguous:
        pick_calls(calls, CallSelector(call_ids=("ab",)))
    first, *candidates = str(ambiguous.value).splitlines()
    assert first == "--call-id 'ab' is ambiguous: it matches 2 calls"
    assert "CALL-ID" in candidates[0] and [line.split()[-1] for line in candidates[1:]] == ["abc@h", "abc-2@h"]
    with pytest.raises(SelectionError, match="Call-ID not found in the captures: nope; some that exist: xyz@h, abc-2@h"):
        pick_calls(calls, CallSelector(call_ids=("nope",)))
    # Other selectors pick too; more than one is ambiguous unless several are wanted.
    assert [c.call_id for c in pick_calls(calls, CallSelector(statuses=("failed",)))] == ["xyz@h"]
    with pytest.raises(SelectionError, match="the selectors match 2 calls"):
        pick_calls(calls, CallSelector(statuses=("2xx",)))
    assert len(pick_calls(calls, CallSelector(statuses=("2xx",)), several=True)) == 2
    with pytest.raises(SelectionError, match="no call matches"):
        pick_calls(calls, CallSelector(statuses=("6xx",)))


def test_table_and_duration() -> None:
    assert [duration(us) for us in (412_000, 12_400_000, 185_000_000, 3_723_000_000)] == \
        ["0.412s", "12.4s", "3:05", "1:02:03"]
    lines = table([call("abc@h", 1_700_000_000_000_000)]).splitlines()
    assert lines[0].split() == ["START", "(UTC)", "DURATION", "REQUEST", "STATUS", "FROM", "TO", "CONNECTION", "CALL-ID"]
    assert lines[1].split()[:6] == ["2023-11-14", "22:13:20.000", "0.000s", "INVITE", "200", "+4930111"]
    assert lines[1].endswith("192.0.2.10:40000->192.0.2.1:5061  abc@h")


# -- the command, on real captures --------------------------------------------------------------------


def calls_cmd(capsys: pytest.CaptureFixture[str], lab: CallLab, *argv: str) -> tuple[int, str, str]:
    code = cli.main(["calls", "--config", str(lab.config), *argv])
    out, err = capsys.readouterr()
    return code, out, err


def listed(out: str) -> list[str]:
    """The Call-IDs of a table, in order."""
    return [line.split()[-1] for line in out.splitlines()[1:]]


def test_calls_lists_every_call_with_its_facts(call_lab: CallLab, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = calls_cmd(capsys, call_lab)
    assert code == 0, err
    names = ["answered", "busy", "asserted", "unavailable", "again"]
    assert listed(out) == [call_lab.calls[n].call_id for n in names]
    assert "1 OPTIONS ping(s) not listed" in err and call_lab.options_call_id not in out
    rows = {line.split()[-1]: line for line in out.splitlines()[1:]}
    busy = call_lab.calls["busy"]
    assert "INVITE   486 Busy Here" in rows[busy.call_id] and f" {busy.conn} " in rows[busy.call_id]
    assert "503 Service Unavailable" in rows[call_lab.calls["unavailable"].call_id]
    assert " anonymous " in rows[call_lab.calls["asserted"].call_id]

    code, out, err = calls_cmd(capsys, call_lab, "--json")
    assert code == 0, err
    records = {r["call_id"]: r for r in json.loads(out)}
    assert set(records) == {call_lab.calls[n].call_id for n in names}
    for placed in call_lab.calls.values():
        r = records[placed.call_id]
        assert (r["from_user"], r["to_user"], r["status"], r["connections"]) == (
            placed.from_user, placed.to_user, placed.status, [placed.conn])
        assert r["method"] == "INVITE" and r["duration"] >= 0 and len(r["flows"]) == 2  # both legs
    assert records[call_lab.calls["answered"].call_id]["messages"] == 14  # 7 a leg
    assert records[call_lab.calls["asserted"].call_id]["p_asserted_identity"] == ["tel:+49-30-999"]


@pytest.mark.parametrize(("argv", "names"), [
    (["--status", "failed"], ["busy", "unavailable"]),
    (["--status", "5xx"], ["unavailable"]),
    (["--status", "486,503"], ["busy", "unavailable"]),
    (["--status", "answered"], ["answered", "asserted", "again"]),
    (["--number", "+49 40 222"], ["answered", "again"]),
    (["--number", "+49 40 222", "--status", "4xx"], []),
    (["--number", "4930999"], ["asserted"]),  # only in P-Asserted-Identity, written +49-30-999
    (["--number", "486"], ["busy"]),  # the Request-URI's and To's user
    (["--number", "127"], []),  # addresses are not numbers
    (["--uri", "ANONYMOUS@customer"], ["asserted"]),
    (["--call-id", "lab-busy"], ["busy"]),
    (["--call-id", "lab-a"], ["answered", "asserted", "again"]),
], ids=lambda v: " ".join(v) if isinstance(v, list) and v and v[0].startswith("--") else None)
def test_calls_selectors(call_lab: CallLab, capsys: pytest.CaptureFixture[str], argv: list[str],
                         names: list[str]) -> None:
    code, out, err = calls_cmd(capsys, call_lab, *argv)
    assert code == 0, err
    assert listed(out) == [call_lab.calls[n].call_id for n in names]
    assert f"{len(names)} of 5 call(s)" in err


def test_calls_by_call_id_without_host_method_and_window(call_lab: CallLab, capsys: pytest.CaptureFixture[str]) -> None:
    busy = call_lab.calls["busy"].call_id
    assert listed(calls_cmd(capsys, call_lab, "--call-id", busy.split("@")[0])[1]) == [busy]
    assert listed(calls_cmd(capsys, call_lab, "--method", "options")[1]) == [call_lab.options_call_id]
    records = json.loads(calls_cmd(capsys, call_lab, "--json")[1])
    first = records[0]["start"]
    code, out, err = calls_cmd(capsys, call_lab, "--since", first, "--until", first)
    assert code == 0 and listed(out) == [call_lab.calls["answered"].call_id]
    code, out, err = calls_cmd(capsys, call_lab, "--until", "2000-01-01T00:00:00Z")
    assert code == 0 and out == "" and "0 of 5 call(s)" in err


def test_calls_errors_are_one_line(call_lab: CallLab, capsys: pytest.CaptureFixture[str], tmp_path: object) -> None:
    code, _, err = calls_cmd(capsys, call_lab, "--status", "busy")
    assert code == 1 and err.splitlines()[0] == "siptap: error: --status 'busy': not a status class"
    code, _, err = calls_cmd(capsys, call_lab, "--since", "later")
    assert code == 1 and "not an ISO 8601 time: 'later'" in err
    code = cli.main(["calls", "--captures", str(call_lab.root / "nowhere")])
    err = capsys.readouterr().err
    assert code == 1 and "capture folder not found" in err and "Traceback" not in err


def test_cli_help_lists_calls() -> None:
    assert "calls" in cli.build_parser().format_help()

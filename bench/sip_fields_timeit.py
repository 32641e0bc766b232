"""Per-message cost of the mirror's SIP fields: sip_fields.read_fields (one scan) against
parse_message + reading the same fields from SipMessageView (today's path), issue 16.

The messages are one call as the bench's SIPp scenarios send it (INVITE with SDP, 100, 180,
200 with SDP, ACK, BYE, 200; TLS Vias, a quoted display name) plus the same INVITE through a
proxy (three Vias, Record-Route, compact forms). Each figure is the best of ``--repeat`` timeit
runs of ``--number`` passes over all messages, divided by the message count: a hot-cache
figure, comparable between the two paths in one run: the rounds alternate the two paths.

    python bench/sip_fields_timeit.py [--number 5000] [--repeat 11]
"""

from __future__ import annotations

import argparse
import statistics
import timeit

from siptap.sansio.sip_fields import SipFields, read_fields
from siptap.sansio.sip_message import parse_message

SDP = ("v=0\r\no=bench 53655765 2353687637 IN IP4 192.0.2.10\r\ns=-\r\nc=IN IP4 192.0.2.10\r\nt=0 0\r\n"
       "m=audio 6000 RTP/AVP 0 8 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\n"
       "a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-15\r\na=ptime:20\r\na=sendrecv\r\n")
VIA = "Via: SIP/2.0/TLS 192.0.2.10:5061;branch=z9hG4bK-4711-1-0\r\n"
DIALOG = ('From: "bench" <sip:bench@192.0.2.10:5061>;tag=4711T1\r\nTo: <sip:bench@192.0.2.20:5061>{to_tag}\r\n'
          "Call-ID: 1-4711@192.0.2.10\r\nCSeq: {cseq}\r\n")
CONTACT = "Contact: <sip:bench@192.0.2.10:5061;transport=tls>\r\n"


def message(start: str, cseq: str, to_tag: str = "", extra: str = "", body: str = "", via: str = VIA) -> bytes:
    head = start + "\r\n" + via + DIALOG.format(to_tag=to_tag, cseq=cseq) + extra
    if body:
        head += "Content-Type: application/sdp\r\n"
    return (head + f"Content-Length: {len(body)}\r\n\r\n" + body).encode()


CALL = [
    message("INVITE sip:bench@192.0.2.20:5061 SIP/2.0", "1 INVITE",
            extra=CONTACT + "Max-Forwards: 70\r\nUser-Agent: siptap-bench\r\nSubject: siptap benchmark\r\n", body=SDP),
    message("SIP/2.0 100 Trying", "1 INVITE"),
    message("SIP/2.0 180 Ringing", "1 INVITE", ";tag=4711U1", CONTACT),
    message("SIP/2.0 200 OK", "1 INVITE", ";tag=4711U1", CONTACT, SDP),
    message("ACK sip:bench@192.0.2.20:5061 SIP/2.0", "1 ACK", ";tag=4711U1", CONTACT + "Max-Forwards: 70\r\n"),
    message("BYE sip:bench@192.0.2.20:5061 SIP/2.0", "2 BYE", ";tag=4711U1", CONTACT + "Max-Forwards: 70\r\n"),
    message("SIP/2.0 200 OK", "2 BYE", ";tag=4711U1"),
]
PROXIED = message(
    "INVITE sip:+4930123@core.example.net;user=phone SIP/2.0", "101 INVITE",
    extra="Record-Route: <sip:198.51.100.1;transport=tls;lr>\r\nm: <sip:esbc@192.0.2.10:5061;transport=tls>\r\n"
          "Max-Forwards: 68\r\nSupported: timer, 100rel\r\nAllow: INVITE, ACK, BYE, CANCEL, OPTIONS\r\n",
    body=SDP,
    via="v: SIP/2.0/TLS 198.51.100.1:5061;branch=z9hG4bKp1\r\nVia: SIP/2.0/TLS 198.51.100.2:5061;branch=z9hG4bKp2,"
        "SIP/2.0/TLS 192.0.2.10:5061;branch=z9hG4bK-4711-1-0\r\n",
)
MESSAGES = [(data, data.index(b"\r\n\r\n") + 4) for data in [*CALL, PROXIED]]


def with_view() -> None:
    for data, header_end in MESSAGES:
        view = parse_message(data, header_end)
        for name in SipFields._fields:
            getattr(view, name)


def with_one_scan() -> None:
    for data, header_end in MESSAGES:
        read_fields(data, header_end)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--number", type=int, default=5000)
    parser.add_argument("--repeat", type=int, default=11)
    args = parser.parse_args()
    for data, header_end in MESSAGES:  # the comparison is only meaningful if both agree
        fields = read_fields(data, header_end)
        view = parse_message(data, header_end)
        assert fields is not None and all(getattr(fields, n) == getattr(view, n) for n in SipFields._fields)
    n = len(MESSAGES)
    mean_size = statistics.fmean(len(d) for d, _ in MESSAGES)
    print(f"{n} messages, mean {mean_size:.0f} bytes; {args.repeat} rounds of {args.number} passes per path")
    paths = {"parse_message + SipMessageView fields": with_view, "read_fields (one scan)": with_one_scan}
    runs: dict[str, list[float]] = {label: [] for label in paths}
    for _ in range(args.repeat):  # interleaved, so both paths see the same machine load
        for label, fn in paths.items():
            runs[label].append(timeit.timeit(fn, number=args.number) / args.number / n * 1e6)
    view_runs = runs["parse_message + SipMessageView fields"]
    print("| path | µs per message, best | median | × view (median of per-round ratios) |\n|---|---|---|---|")
    for label, us in runs.items():
        ratio = statistics.median(a / b for a, b in zip(us, view_runs, strict=True))
        print(f"| {label} | {min(us):.2f} | {statistics.median(us):.2f} | {ratio:.2f} |")

if __name__ == "__main__":
    main()

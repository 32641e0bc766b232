"""The SRTP keys file: the lines of the selected calls, in the selected window."""

from __future__ import annotations

from siptap.tools.export.errors import ExportError
from siptap.tools.export.times import parse_time


def _srtp_token(text: str) -> str:
    """How the SRTP keys sink writes a Call-ID (siptap.mirror.srtp._token)."""
    return "".join("_" if ch.isspace() or ch in "\"'" else ch for ch in text) or "-"


def select_srtp_lines(text: str, call_ids: set[str], since_us: int | None, until_us: int | None) -> list[str]:
    """The SRTP key lines of ``call_ids`` whose leading time lies in the window."""
    tokens = {_srtp_token(c) for c in call_ids}
    out = []
    for line in text.splitlines():
        fields = line.split(" ")
        call = next((f[len("call-id="):] for f in fields[1:4] if f.startswith("call-id=")), None)
        if call is None or call not in tokens:
            continue
        if since_us is not None or until_us is not None:
            try:
                ts = parse_time(fields[0])
            except ExportError:
                continue
            if (since_us is not None and ts < since_us) or (until_us is not None and ts > until_us):
                continue
        out.append(line)
    return out

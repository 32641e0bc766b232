"""Calls as a person reads them (a text table) and as a script reads them (JSON records)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from siptap.tools.calls.grouping import Address, Call, Flow

_COLUMNS = ("START (UTC)", "DURATION", "REQUEST", "STATUS", "FROM", "TO", "CONNECTION", "CALL-ID")


def clock(ts_us: int) -> str:
    """``2026-12-02 18:33:01.123`` (UTC, milliseconds): sortable, and short enough for a table."""
    moment = datetime.fromtimestamp(ts_us // 1_000_000, UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%S") + f".{ts_us % 1_000_000 // 1000:03d}"


def iso(ts_us: int) -> str:
    moment = datetime.fromtimestamp(ts_us // 1_000_000, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S") + f".{ts_us % 1_000_000:06d}Z"


def duration(us: int) -> str:
    """``0.412s``, ``12.4s``, ``3:05`` (m:ss), ``1:02:03`` (h:mm:ss)."""
    seconds = us / 1_000_000
    if seconds < 10:
        return f"{seconds:.3f}s"
    if seconds < 60:
        return f"{seconds:.1f}s"
    whole = int(seconds)
    hours, rest = divmod(whole, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def _hostport(address: Address) -> str:
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def flow_text(flow: Flow) -> str:
    client, server, _generation = flow
    return f"{_hostport(client)}->{_hostport(server)}"


def status_text(call: Call) -> str:
    if call.status is None:
        return "-"
    return f"{call.status} {call.reason or ''}".rstrip()


def connection_text(call: Call) -> str:
    """The siptap connection id(s) when the key log named them, else the TCP flow(s)."""
    return ",".join(call.conns) if call.conns else ",".join(flow_text(f) for f in call.flows) or "-"


def _row(call: Call) -> tuple[str, ...]:
    return (clock(call.start_us), duration(call.duration_us), call.method or "-", status_text(call)[:24],
            call.from_user or call.from_uri or "-", call.to_user or call.to_uri or "-", connection_text(call),
            call.call_id)


def table(calls: Sequence[Call], *, connection: bool = True) -> str:
    """An aligned text table, one call a line, the Call-ID last (it is the long one).
    ``connection=False`` leaves that column out (where only TCP flows, long, would fill it)."""
    keep = [i for i in range(len(_COLUMNS)) if connection or _COLUMNS[i] != "CONNECTION"]
    rows = [tuple(r[i] for i in keep) for r in [_COLUMNS, *(_row(c) for c in calls)]]
    widths = [max(len(r[i]) for r in rows) for i in range(len(keep) - 1)]
    return "".join("  ".join([*(cell.ljust(w) for cell, w in zip(r, widths)), r[-1]]).rstrip() + "\n" for r in rows)


def candidates_text(calls: Sequence[Call]) -> str:
    """The table of an ambiguous selection, indented under the error line."""
    return "".join("  " + line + "\n" for line in table(calls, connection=False).splitlines()).rstrip("\n")


def record(call: Call) -> dict[str, object]:
    """One call for ``--json``: every field, times in ISO 8601 and epoch microseconds."""
    return {
        "call_id": call.call_id,
        "start": iso(call.start_us),
        "end": iso(call.end_us),
        "start_us": call.start_us,
        "duration": round(call.duration_us / 1_000_000, 6),
        "messages": call.messages,
        "method": call.method,
        "request_uri": call.request_uri,
        "from": call.from_uri,
        "to": call.to_uri,
        "from_user": call.from_user,
        "to_user": call.to_user,
        "p_asserted_identity": list(call.asserted),
        "status": call.status,
        "reason": call.reason,
        "connections": list(call.conns),
        "flows": [{"client": _hostport(f[0]), "server": _hostport(f[1])} for f in call.flows],
    }

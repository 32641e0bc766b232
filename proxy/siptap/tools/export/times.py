"""Times as export reads them (``--since``/``--until``, log and SRTP stamps) and writes them (ISO 8601, µs)."""

from __future__ import annotations

from datetime import UTC, datetime

from siptap.tools.export.errors import ExportError


def parse_time(text: str) -> int:
    """An ISO 8601 time (``2024-05-01T10:00:00Z``, with an offset, or naive = UTC) or epoch
    seconds, as integer microseconds since the epoch."""
    value = text.strip()
    try:
        return round(float(value) * 1_000_000)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(value.replace("z", "Z"))
    except ValueError:
        raise ExportError(f"not an ISO 8601 time: {text!r}",
                          "e.g. 2024-05-01T10:00:00Z, 2024-05-01 12:00:00+02:00 (no zone = UTC), or epoch seconds") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return round(moment.timestamp() * 1_000_000)


def iso(ts_us: int) -> str:
    return datetime.fromtimestamp(ts_us // 1_000_000, UTC).strftime("%Y-%m-%dT%H:%M:%S") + \
        f".{ts_us % 1_000_000:06d}Z"

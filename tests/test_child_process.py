"""A child's stdout reaches the supervisor's writer as whole lines, however the pipe cut it."""

from __future__ import annotations

import trio

from siptap.child_process import _forward_stdout


class Reads(trio.abc.ReceiveStream):
    """A pipe whose reads return exactly these chunks, then EOF."""

    def __init__(self, *chunks: bytes) -> None:
        self.chunks = list(chunks)

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        await trio.lowlevel.checkpoint()
        return self.chunks.pop(0) if self.chunks else b""

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()


async def forwarded(*chunks: bytes) -> list[str]:
    emitted: list[str] = []
    await _forward_stdout(Reads(*chunks), emitted.append)
    return emitted


async def test_each_read_goes_out_up_to_its_last_newline_in_at_most_two_emits() -> None:
    # The line the previous read left unfinished on its own, then the rest of the read's whole
    # lines in one piece (decoded from the read itself, not from a copy of it).
    assert await forwarded(b'{"a": 1}\n{"b"', b': 2}\n{"c": 3}\n{"e": 5}\n{"f"', b': 6}\n', b'{"d": 4}\n') == [
        '{"a": 1}', '{"b": 2}', '{"c": 3}\n{"e": 5}', '{"f": 6}', '{"d": 4}']


async def test_a_line_spanning_reads_and_a_character_cut_between_them() -> None:
    line = '{"sip": "é€"}'.encode()
    cut = line.index("€".encode()) + 1  # inside the three bytes of the euro sign
    assert await forwarded(line[:3], line[3:cut], line[cut:] + b"\n") == ['{"sip": "é€"}']


async def test_invalid_bytes_are_replaced_and_an_unterminated_last_line_still_goes_out() -> None:
    assert await forwarded(b"ok \xff\n", b"partial") == ["ok \ufffd", "partial"]
    assert await forwarded(b"\n\nnext") == ["\n", "next"]  # blank lines kept: the writer adds the last newline

"""Private append-only files for the file sinks (key log, SRTP keys) and the pcap sink.

File handling: opened with ``O_APPEND | O_CREAT``, mode 0600 (and an existing regular file
is narrowed to 0600: these files hold secrets); a missing parent folder is created 0700.
Each batch (the events queued when the sink woke up, see :meth:`siptap.mirror.sink.Sink.run`)
is rendered, then written with one ``os.write`` straight to the descriptor: no user-space
buffer, so a live Wireshark sees the lines at the end of the batch, one system call however
many events, and appends are never interleaved: not from one process, and not from several
(``workers`` > 1 share one key-log file): with O_APPEND each ``write`` of a regular file
lands whole at the end of the file (Linux takes the file's lock for the whole write), and
each write is whole lines of whole events (:func:`write_all` only loops on a short write,
which a local file returns only when the disk is full). tests/relay/test_workers.py parses every line after two
workers wrote it. The write is synchronous on the trio thread on purpose: a small append to
a local file lands in the page cache in microseconds, much less than handing it to a worker
thread would cost. A failure (ENOSPC, EACCES, a folder that is a file...) is logged,
counted and the events of that write dropped; the file is reopened on a later event after a back-off, so a
freed disk or a fixed permission heals without a restart.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import trio

from siptap.mirror.events import MirrorEvent
from siptap.mirror.sink import Sink, log


def open_private_append(path: Path) -> int:
    """An O_APPEND descriptor on ``path``, created 0600 (parents 0700); an existing regular
    file is narrowed to 0600. Devices (``/dev/null``, ``/dev/full``) are left alone."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        st = os.fstat(fd)
        if stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) & 0o077:
            os.fchmod(fd, 0o600)
    except OSError:
        os.close(fd)
        raise
    return fd


def create_private(path: Path) -> int:
    """A new file at ``path`` (``O_EXCL``: never an existing one; FileExistsError then),
    opened for appending, mode 0600 whatever the umask. The folder must exist."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # whatever the umask
    except OSError:
        os.close(fd)
        raise
    return fd


def write_all(fd: int, data: bytes) -> None:
    """All of ``data`` to ``fd``: one ``os.write`` unless the kernel takes less (a full disk)."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        if written <= 0:  # pragma: no cover - regular files do not return 0
            raise OSError(errno.EIO, "write returned 0")
        view = view[written:]


class AppendFile:
    """A private append-only file that survives failures: ``write`` raises OSError at most
    once per failure, and after a failure refuses (raises) until ``retry_after`` seconds
    passed, then tries to reopen. The owner counts and logs."""

    def __init__(self, path: Path, *, retry_initial: float = 1.0, retry_max: float = 30.0) -> None:
        self.path = path
        self.retry_initial = retry_initial
        self.retry_max = retry_max
        self._fd: int | None = None
        self._retry_at = -float("inf")
        self._delay = retry_initial
        self.failing = False

    def write(self, data: bytes) -> None:
        if self._fd is None:
            if trio.current_time() < self._retry_at:
                raise _Waiting()
            try:
                self._fd = open_private_append(self.path)
            except OSError:
                self._failed()
                raise
        try:
            write_all(self._fd, data)
        except OSError:
            self.close()
            self._failed()
            raise
        self.failing = False
        self._delay = self.retry_initial

    def _failed(self) -> None:
        self.failing = True
        self._retry_at = trio.current_time() + self._delay
        self._delay = min(self._delay * 2, self.retry_max)

    def close(self) -> None:
        if self._fd is not None:
            close_quietly(self._fd)
            self._fd = None


class _Waiting(Exception):
    """The file failed recently; not retried yet."""


class FileSink(Sink):
    """A sink writing one text record per event to an :class:`AppendFile`."""

    def __init__(self, name: str, path: Path, *, retry_initial: float = 1.0, retry_max: float = 30.0) -> None:
        super().__init__(name)
        self.path = Path(path)
        self.file = AppendFile(self.path, retry_initial=retry_initial, retry_max=retry_max)

    def render(self, event: MirrorEvent) -> str:
        raise NotImplementedError

    async def handle(self, event: MirrorEvent) -> None:
        self.handle_batch_nowait([event])

    async def handle_batch(self, batch: list[MirrorEvent]) -> None:
        self.handle_batch_nowait(batch)

    @property
    def delivers_nowait(self) -> bool:
        return True  # appends to a local file: one os.write, never waits for a peer

    def handle_batch_nowait(self, batch: list[MirrorEvent]) -> int:
        """Render every event, then write them all with one ``os.write``."""
        texts: list[str] = []
        try:
            for event in batch:
                texts.append(self.render(event))
        except BaseException:
            # A bug in render: what was rendered before the event at hand is still written;
            # that event is counted lost, the rest go back to the sink's task.
            self._write(texts)
            self.leave_unfinished(batch[len(texts):])
            raise
        self._write(texts)
        return len(batch)

    def _write(self, texts: list[str]) -> None:
        """One write of whole records; they are counted sent together, or dropped together."""
        if not texts:
            return
        count = len(texts)
        data = (texts[0] if count == 1 else "".join(texts)).encode("utf-8")
        was_failing = self.file.failing
        try:
            self.file.write(data)
        except _Waiting:
            self.drop("file unavailable", count)
            return
        except OSError as exc:
            if was_failing:  # logged once per outage; the drop reporter covers the rest
                self.errors += 1
            else:
                self.error("write", exc, path=str(self.path))
            self.drop("write failed", count)
            return
        if was_failing:
            log.info("mirror_file_recovered", sink=self.name, path=str(self.path))
        self.sent += count

    async def aclose(self) -> None:
        self.file.close()


def close_quietly(fd: int) -> None:
    """Close a sink's file descriptor; an error here (EIO on a full or gone disk) has already
    been counted on the write that met it, and closing is all that is left to do."""
    try:
        os.close(fd)
    except OSError:
        pass

"""Real captures and real consumers: tcpdump on loopback, tshark and sngrep reading the result."""

from __future__ import annotations

import os
import re
import select
import shutil
import signal
import subprocess
from pathlib import Path

import pytest


def _which(name: str) -> str | None:
    # Kamailio and tcpdump live in /usr/sbin, which a non-root PATH may lack.
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")


PEERS = {name: _which(name) for name in ("tcpdump", "tshark", "sngrep", "openssl", "stunnel4", "kamailio", "sipp",
                                               "chromium", "jq")}


def require(*names: str) -> pytest.MarkDecorator:
    missing = [n for n in names if not PEERS.get(n)]
    in_ci = os.environ.get("CI") == "true"
    if missing and in_ci:
        # In CI the peers are installed by .ci/run: a missing one is a set-up bug, not a skip.
        raise RuntimeError(f"CI is missing real peers {missing}; .ci/run must install them")
    return pytest.mark.skipif(bool(missing), reason=f"needs {', '.join(missing)} (Debian packages)")


class LoopbackCapture:
    """tcpdump on `lo` for the given TCP ports, ready when tcpdump says it is listening."""

    def __init__(self, path: Path, ports: list[int]) -> None:
        self.path = path
        self.kernel_drops = 0
        expr = " or ".join(f"tcp port {p}" for p in ports)
        self.proc = subprocess.Popen(
            # --immediate-mode: no TPACKET_V3 block timeout holding packets back; -Z root: keep
            # the right to write into pytest's 0700 temporary folders; -B: a 32 MiB kernel
            # buffer, so a loaded machine does not make tcpdump drop packets.
            ["tcpdump", "-i", "lo", "--immediate-mode", "-U", "-B", "32768", "-Z", "root", "-s", "0",
             "-w", str(path), expr],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        assert self.proc.stderr is not None
        seen = b""
        while b"listening on" not in seen:
            ready, _, _ = select.select([self.proc.stderr], [], [], 10)
            chunk = os.read(self.proc.stderr.fileno(), 4096) if ready else b""
            if not chunk:
                self.proc.kill()
                raise RuntimeError(f"tcpdump did not start: {seen.decode(errors='replace')}")
            seen += chunk

    async def wait_for_close(self, count: int = 2, timeout: float = 10.0) -> None:
        """Wait until the capture holds ``count`` TCP FIN or RST segments (both sides closed): a
        condition, not a guess, for "the capture has everything"."""
        import trio

        with trio.move_on_after(timeout):
            while count_tcp_flag(self.path, 0x01 | 0x04) < count:
                await trio.sleep(0.02)  # polling a condition, bounded by the timeout
            return
        raise AssertionError(f"capture {self.path} never saw {count} FIN/RST segments")

    def stop(self) -> Path:
        """Stop and return the file; tcpdump flushes on SIGINT. ``kernel_drops``: the packets
        tcpdump says the kernel dropped (a capture with drops cannot be compared exactly)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            self.proc.wait(timeout=10)
            assert self.proc.stderr is not None
            summary = self.proc.stderr.read().decode(errors="replace")
            found = re.search(r"(\d+) packets? dropped by kernel", summary)
            self.kernel_drops = int(found.group(1)) if found else 0
        return self.path

    def __enter__(self) -> LoopbackCapture:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def tshark_fields(capture: Path, fields: list[str], *options: str, display_filter: str = "sip") -> list[list[str]]:
    """Run tshark and return one list of field values per displayed packet."""
    cmd = ["tshark", "-n", "-r", str(capture), *options, "-Y", display_filter, "-T", "fields"]
    for field in fields:
        cmd += ["-e", field]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=True)
    return [line.split("\t") for line in out.stdout.splitlines() if line.strip()]


def count_tcp_flag(path: Path, flag: int) -> int:
    """Count IPv4/IPv6 TCP segments with ``flag`` set in a little-endian Ethernet pcap."""
    import struct

    data = path.read_bytes() if path.exists() else b""
    count, pos = 0, 24
    while pos + 16 <= len(data):
        incl = struct.unpack_from("<I", data, pos + 8)[0]
        frame = data[pos + 16 : pos + 16 + incl]
        pos += 16 + incl
        if len(frame) < 14 + 20:
            continue
        ethertype = struct.unpack_from("!H", frame, 12)[0]
        if ethertype == 0x0800 and frame[14 + 9] == 6:
            tcp = 14 + (frame[14] & 0x0F) * 4
        elif ethertype == 0x86DD and frame[14 + 6] == 6:
            tcp = 14 + 40
        else:
            continue
        if len(frame) > tcp + 13 and frame[tcp + 13] & flag:
            count += 1
    return count

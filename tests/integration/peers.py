"""Real peers for the chain tests: Kamailio (core SBC), stunnel (the customer's TLS stack) and SIPp
(call generator and UAS), each started from a generated config on free loopback ports.

Every daemon runs in the foreground as a child of the test, logs to a file in the test's temporary
folder (quoted in assertion messages), and is ready when its listening socket shows up in
/proc/net/tcp: a condition polled with a deadline, never a fixed sleep.
"""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from tests.integration import capture

TEMPLATES = Path(__file__).with_name("peers")


def free_port() -> int:
    """A free TCP port on 127.0.0.1 for a daemon that cannot bind port 0 and report it (Kamailio,
    stunnel, SIPp): bind, read back, close. Another process could take it before the daemon binds;
    on a test machine's loopback that race is accepted (the daemon then fails loudly to bind)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def listening_ports() -> set[int]:
    """TCP ports in LISTEN state on any IPv4/IPv6 address, from /proc/net/tcp{,6}."""
    ports: set[int] = set()
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(FileNotFoundError), open(name) as table:
            for line in list(table)[1:]:
                fields = line.split()
                if len(fields) > 3 and fields[3] == "0A":  # TCP_LISTEN
                    ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def render(template: str, **values: object) -> str:
    """Replace @@NAME@@ markers (config languages here use $, {} and % for themselves)."""
    text = (TEMPLATES / template).read_text()
    for key, value in values.items():
        text = text.replace(f"@@{key}@@", str(value))
    assert "@@" not in text, f"unfilled marker in {template}"
    return text


@dataclass
class Peer:
    """A peer process started by the test, its log file, and the ports it listens on."""

    name: str
    process: trio.Process
    log: Path
    ports: list[int] = field(default_factory=list)

    def log_tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""

    async def wait_listening(self, timeout: float = 15.0) -> None:
        with trio.move_on_after(timeout):
            while not set(self.ports) <= listening_ports():
                if self.process.returncode is not None:
                    break
                await trio.sleep(0.02)  # polling a condition, bounded by the timeout
            else:
                return
        raise AssertionError(
            f"{self.name} is not listening on {self.ports} (exit code {self.process.returncode}); "
            f"log {self.log}:\n{self.log_tail()}"
        )

    async def wait(self, timeout: float) -> int:
        with trio.move_on_after(timeout):
            return await self.process.wait()
        raise AssertionError(f"{self.name} did not exit within {timeout} s; log {self.log}:\n{self.log_tail()}")

    async def stop(self, timeout: float = 10.0) -> int | None:
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
            with trio.move_on_after(timeout):
                return await self.process.wait()
            self.process.kill()
        with trio.CancelScope(shield=True):
            return await self.process.wait()


@contextlib.asynccontextmanager
async def running(name: str, argv: list[str], workdir: Path, ports: list[int]) -> AsyncIterator[Peer]:
    """Start ``argv`` in ``workdir`` (stdout and stderr to ``workdir/<name>.log``), wait until
    ``ports`` listen, stop it (SIGTERM, then SIGKILL) on exit."""
    log = workdir / f"{name}.log"
    with open(log, "wb") as out:
        process = await trio.lowlevel.open_process(
            argv, cwd=str(workdir), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
        )
    peer = Peer(name, process, log, ports)
    try:
        await peer.wait_listening()
        yield peer
    finally:
        with trio.CancelScope(shield=True):
            await peer.stop()


def _workdir(tmp: Path, name: str) -> Path:
    path = tmp / name
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextlib.asynccontextmanager
async def kamailio(tmp: Path, pki: Path, *, uas_port: int, debug: int = 2) -> AsyncIterator[Peer]:
    """Kamailio 5.6 as the core: TLS server (mutual TLS, core.pem) relaying to the UAS over TCP.
    ``ports`` = [tls, tcp]. Foreground (-DD), logs to stderr (-E), its own working and runtime
    directories (-w, -Y) so nothing touches /run/kamailio or /var."""
    workdir = _workdir(tmp, "kamailio")
    tls_port, tcp_port = free_port(), free_port()
    cfg = workdir / "kamailio.cfg"
    cfg.write_text(render(
        "kamailio.cfg", DEBUG=debug, TLS_PORT=tls_port, TCP_PORT=tcp_port, UAS_PORT=uas_port, PKI=pki,
    ))
    binary = capture.PEERS["kamailio"] or "kamailio"
    check = subprocess.run([binary, "-c", "-f", str(cfg)], capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, f"kamailio -c rejected {cfg}:\n{check.stderr[-3000:]}"
    argv = [binary, "-DD", "-E", "-f", str(cfg), "-w", str(workdir), "-Y", str(workdir), "-m", "128", "-M", "16"]
    async with running("kamailio", argv, workdir, [tls_port, tcp_port]) as peer:
        yield peer


@contextlib.asynccontextmanager
async def stunnel_client(tmp: Path, pki: Path, *, connect_port: int, ciphers: str) -> AsyncIterator[Peer]:
    """stunnel as the customer's TLS client: plain TCP in on ``ports[0]``, TLS 1.2 out to
    ``connect_port`` with the customer certificate and ``ciphers``, verifying the server."""
    workdir = _workdir(tmp, "stunnel")
    accept_port = free_port()
    conf = workdir / "stunnel.conf"
    conf.write_text(render("stunnel-client.conf", ACCEPT_PORT=accept_port, CONNECT_PORT=connect_port,
                           PKI=pki, CIPHERS=ciphers))
    async with running("stunnel", [capture.PEERS["stunnel4"] or "stunnel4", str(conf)], workdir, [accept_port]) as peer:
        yield peer


def _sipp_common(calls: int) -> list[str]:
    # -max_socket: SIPp 3.6 refuses to start when its default (50000) exceeds `ulimit -n`.
    # -nostdin: no keyboard control (stdin is /dev/null anyway).
    return ["-i", "127.0.0.1", "-m", str(calls), "-max_socket", "2048", "-nostdin",
            "-trace_stat", "-stf", "stats.csv", "-fd", "1", "-trace_screen", "-screen_file", "screen.log",
            "-trace_err", "-error_file", "errors.log"]


@contextlib.asynccontextmanager
async def sipp_uas(tmp: Path, *, calls: int) -> AsyncIterator[Peer]:
    """SIPp's built-in UAS on TCP (``ports[0]``): answers INVITE with 180 and 200, takes ACK and
    BYE; exits by itself (code 0 = every call succeeded) after ``calls`` calls and the scenario's
    4 s time-wait."""
    workdir = _workdir(tmp, "sipp-uas")
    port = free_port()
    argv = [capture.PEERS["sipp"] or "sipp", "-sn", "uas", "-t", "t1", "-p", str(port), *_sipp_common(calls)]
    async with running("sipp-uas", argv, workdir, [port]) as peer:
        yield peer


@dataclass
class SippRun:
    """What a finished SIPp run reports about itself."""

    returncode: int
    workdir: Path
    stats: dict[str, str]  # the last row of -trace_stat's CSV, by column name
    messages: list[tuple[str, str]]  # (direction "sent"/"received", SIP message text), from -trace_msg

    def counter(self, name: str) -> int:
        return int(self.stats[name])

    def call_ids(self) -> list[str]:
        """The Call-IDs of SIPp's calls, each once, from every message it traced. (SIPp 3.6's
        -trace_msg omits a message it had to buffer, e.g. an INVITE on a `-t tn` connection
        whose connect is still in progress; the responses to it are traced.)"""
        return sorted({sip_header(text, "Call-ID") for _, text in self.messages})

    def describe(self) -> str:
        screen = self.workdir / "screen.log"
        errors = self.workdir / "errors.log"
        return (f"sipp exit {self.returncode} in {self.workdir}\n"
                + (screen.read_text(errors="replace")[-2500:] if screen.exists() else "")
                + (errors.read_text(errors="replace")[-2500:] if errors.exists() else ""))


async def run_sipp_uac(tmp: Path, *, target_port: int, calls: int, transport: str, rate: int = 200,
                       limit: int = 50, timeout: float = 40.0) -> SippRun:
    """SIPp's built-in UAC: ``calls`` INVITE/ACK/BYE calls over TCP to ``target_port``.
    ``transport`` "t1": every call on one connection (a trunk); "tn": one connection per call."""
    workdir = _workdir(tmp, f"sipp-uac-{transport}")
    argv = [capture.PEERS["sipp"] or "sipp", "-sn", "uac", "-t", transport, f"127.0.0.1:{target_port}",
            "-r", str(rate), "-l", str(limit), *_sipp_common(calls),
            # SIPp's own deadline: calls still open then count as failed, exit code non-zero.
            "-timeout", f"{int(timeout)}s", "-timeout_error",
            "-trace_msg", "-message_file", "messages.log"]
    with open(workdir / "sipp-uac.log", "wb") as out, trio.fail_after(timeout + 15):
        result = await trio.run_process(argv, cwd=str(workdir), stdin=subprocess.DEVNULL, stdout=out,
                                        stderr=subprocess.STDOUT, check=False)
    return SippRun(result.returncode, workdir, read_sipp_stats(workdir / "stats.csv"),
                   read_sipp_messages(workdir / "messages.log"))


def read_sipp_stats(path: Path) -> dict[str, str]:
    """The last row of SIPp's -trace_stat CSV (';'-separated, header first) keyed by column."""
    rows = [line.rstrip("\n").split(";") for line in path.read_text().splitlines() if line.strip()]
    assert len(rows) >= 2, f"no statistics rows in {path}"
    return dict(zip(rows[0], rows[-1]))


def read_sipp_messages(path: Path) -> list[tuple[str, str]]:
    """SIPp's -trace_msg log: blocks that start with a dashed time line, then
    "TCP message sent (N bytes):" or "TCP message received [N] bytes :", a blank line, the message."""
    messages: list[tuple[str, str]] = []
    if not path.exists():
        return messages
    for block in path.read_text(errors="replace").split("\n-----------------------------------------------"):
        lines = block.split("\n")
        for i, line in enumerate(lines):
            if " message sent " in line or " message received " in line:
                direction = "sent" if " message sent " in line else "received"
                messages.append((direction, "\n".join(lines[i + 1:]).strip()))
                break
    return messages


def sip_header(message: str, name: str) -> str:
    for line in message.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() == name.lower():
            return value.strip()
    raise AssertionError(f"no {name} header in {message[:200]!r}")


@dataclass(frozen=True)
class WireSip:
    """One SIP message as tshark decoded it from a capture."""

    frame: int
    method: str  # request method, or "" for a response
    status: str  # response status code, or "" for a request
    cseq_method: str
    call_id: str


def tshark_sip(capture_file: Path, *options: str) -> list[WireSip]:
    """Every SIP message tshark decodes in ``capture_file`` (several may share one frame, e.g. two
    messages in one TLS record: -T json with merged duplicate keys keeps them apart)."""
    out = subprocess.run(
        ["tshark", "-n", "-r", str(capture_file), *options, "-Y", "sip", "-T", "json", "--no-duplicate-keys",
         "-J", "frame sip"],
        capture_output=True, text=True, timeout=120, check=True,
    )
    found: list[WireSip] = []
    for packet in json.loads(out.stdout or "[]"):
        layers = packet["_source"]["layers"]
        frame = int(_first(layers["frame"]["frame.number"]))
        sips = layers.get("sip", [])
        for sip in sips if isinstance(sips, list) else [sips]:
            request = _first(sip.get("sip.Request-Line_tree", {}))
            status = _first(sip.get("sip.Status-Line_tree", {}))
            headers = _first(sip.get("sip.msg_hdr_tree", {}))
            cseq = _first(headers.get("sip.CSeq_tree", {}))
            found.append(WireSip(
                frame=frame,
                method=_first(request.get("sip.Method", "")) if request else "",
                status=_first(status.get("sip.Status-Code", "")) if status else "",
                cseq_method=_first(cseq.get("sip.CSeq.method", "")) if cseq else "",
                call_id=_first(headers.get("sip.Call-ID", "")),
            ))
    return found


def _first(value: Any) -> Any:
    return value[0] if isinstance(value, list) and value else value



@contextlib.asynccontextmanager
async def stunnel_collector(tmp: Path, pki: Path, *, connect_port: int, accept_port: int | None = None,
                            name: str = "stunnel-collector", max_version: str = "TLSv1.3") -> AsyncIterator[Peer]:
    """stunnel as a mirror collector's TLS front: TLS server on ``ports[0]`` (``accept_port``,
    or a free one) with core.pem, requiring a client certificate from the lab CA, relaying the
    cleartext to ``connect_port``. Start it again with the same ``accept_port`` to restart the
    collector."""
    workdir = _workdir(tmp, name)
    accept_port = accept_port or free_port()
    conf = workdir / "stunnel.conf"
    conf.write_text(render("stunnel-collector.conf", ACCEPT_PORT=accept_port, CONNECT_PORT=connect_port, PKI=pki,
                           MAX_VERSION=max_version))
    async with running(name, [capture.PEERS["stunnel4"] or "stunnel4", str(conf)], workdir, [accept_port]) as peer:
        yield peer


@contextlib.asynccontextmanager
async def kamailio_hep_collector(tmp: Path) -> AsyncIterator[Peer]:
    """Kamailio 5.6 with sipcapture as a HEP collector on plain TCP (``ports`` = [tcp]): one
    "HEP3 packet" log line per packet received, one "HEP-SIP" line per SIP message in them
    (see peers/kamailio-hep.cfg)."""
    workdir = _workdir(tmp, "kamailio-hep")
    tcp_port = free_port()
    (workdir / "db").mkdir(exist_ok=True)
    cfg = workdir / "kamailio.cfg"
    cfg.write_text(render("kamailio-hep.cfg", TCP_PORT=tcp_port, DB_DIR=workdir / "db"))
    binary = capture.PEERS["kamailio"] or "kamailio"
    check = subprocess.run([binary, "-c", "-f", str(cfg)], capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, f"kamailio -c rejected {cfg}:\n{check.stderr[-3000:]}"
    argv = [binary, "-DD", "-E", "-f", str(cfg), "-w", str(workdir), "-Y", str(workdir), "-m", "64", "-M", "8"]
    async with running("kamailio-hep", argv, workdir, [tcp_port]) as peer:
        yield peer

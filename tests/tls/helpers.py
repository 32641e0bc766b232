"""Real TLS peers for the TLS tests: the standard library's ssl (OpenSSL 3, a different build
from pyOpenSSL's) driven through trio.SSLStream, over real loopback sockets."""

from __future__ import annotations

import os
import ssl
import threading
from pathlib import Path

# The cipher offer of a Sangoma IMG 2020 E-SBC (ECDHE/DHE first, RSA last), from design.md.
IMG2020_CIPHERS = (
    "ECDHE-RSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-SHA384:ECDHE-RSA-AES256-SHA:"
    "DHE-RSA-AES256-GCM-SHA384:DHE-RSA-AES256-SHA256:DHE-RSA-AES256-SHA:"
    "ECDHE-RSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-SHA256:ECDHE-RSA-AES128-SHA:"
    "DHE-RSA-AES128-GCM-SHA256:DHE-RSA-AES128-SHA256:DHE-RSA-AES128-SHA:"
    "AES256-GCM-SHA384:AES256-SHA256:AES256-SHA:AES128-GCM-SHA256:AES128-SHA256:AES128-SHA"
)


def customer_client_context(
    pki: Path,
    *,
    cert: str | None = "customer",
    ciphers: str = IMG2020_CIPHERS,
    minimum: ssl.TLSVersion = ssl.TLSVersion.TLSv1_2,
    maximum: ssl.TLSVersion = ssl.TLSVersion.TLSv1_3,
) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(pki / "ca.pem")
    if cert is not None:
        ctx.load_cert_chain(pki / f"{cert}.pem", pki / f"{cert}.key")
    ctx.set_ciphers(ciphers)
    ctx.minimum_version = minimum
    ctx.maximum_version = maximum
    return ctx


def core_server_context(pki: Path, *, cert: str = "core", require_client_cert: bool = True,
                        minimum: ssl.TLSVersion = ssl.TLSVersion.TLSv1_2) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(pki / f"{cert}.pem", pki / f"{cert}.key")
    ctx.minimum_version = minimum
    if require_client_cert:
        ctx.load_verify_locations(pki / "ca.pem")
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


class OpenSSLServer:
    """`openssl s_server` as a real peer on a free loopback port (port 0, read back from its
    ACCEPT line). Used where the exact behaviour of a C TLS stack matters (alerts, versions)."""

    def __init__(self, *args: str) -> None:
        import select
        import subprocess

        self.proc = subprocess.Popen(
            ["stdbuf", "-oL", "openssl", "s_server", "-accept", "127.0.0.1:0", *args],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )
        assert self.proc.stdout is not None
        self.output: list[str] = []
        fd = self.proc.stdout.fileno()
        pending = b""
        # Raw os.read, not readline(): a buffered reader can swallow the ACCEPT line into its
        # buffer while select() then reports the pipe empty.
        while True:
            ready, _, _ = select.select([fd], [], [], 10)
            chunk = os.read(fd, 4096) if ready else b""
            if not chunk:
                self.close()
                raise RuntimeError(f"openssl s_server did not start: {self.output} {pending!r}")
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for raw in lines:
                line = raw.decode(errors="replace")
                self.output.append(line)
                if line.startswith("ACCEPT"):
                    self.port = int(line.rsplit(":", 1)[1])
                    # s_server keeps printing per connection (with -Verify, the whole client
                    # chain); a pipe nobody reads would fill and stall it mid-handshake.
                    self._drainer = threading.Thread(target=self._drain, args=(fd,), daemon=True)
                    self._drainer.start()
                    return

    @staticmethod
    def _drain(fd: int) -> None:
        try:
            while os.read(fd, 65536):
                pass
        except OSError:
            pass

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()
        # The drainer reads the pipe by descriptor number: it must have seen EOF (the process
        # is gone) before the pipe is closed, or a later OpenSSLServer's pipe may get the same
        # number and the old drainer would swallow its ACCEPT line (a CI run hung in read()
        # that way). Closed explicitly, not whenever the Popen is collected.
        drainer = getattr(self, "_drainer", None)
        if drainer is not None:
            drainer.join(10)
        for pipe in (self.proc.stdout, self.proc.stdin):
            if pipe is not None:
                pipe.close()

    def __enter__(self) -> OpenSSLServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

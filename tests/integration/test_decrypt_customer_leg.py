"""The point of the product: a wire capture of the customer leg plus siptap's server key
(and nothing else) decrypts the SIP, in tshark and, with the sngrep switch, in sngrep."""

from __future__ import annotations

import functools
import subprocess
from pathlib import Path

import pytest
import trio

from siptap.config import ServerTlsSettings
from siptap.tls.contexts import build_server_context
from siptap.tls.stream import OpenSSLStream
from tests.integration.capture import LoopbackCapture, require, tshark_fields
from tests.tls.helpers import IMG2020_CIPHERS, customer_client_context

CALL_ID = "decrypt-test-4711@customer.example"
OPTIONS = (
    "OPTIONS sip:core.example SIP/2.0\r\n"
    "Via: SIP/2.0/TLS 127.0.0.1:5099;branch=z9hG4bK-decrypt-1\r\n"
    "From: <sip:esbc@customer.example>;tag=abc\r\n"
    "To: <sip:core.example>\r\n"
    f"Call-ID: {CALL_ID}\r\n"
    "CSeq: 1 OPTIONS\r\n"
    "Max-Forwards: 70\r\n"
    "Content-Length: 0\r\n\r\n"
).encode()


def ok_for(request: bytes) -> bytes:
    head = request.split(b"\r\n\r\n", 1)[0].split(b"\r\n")[1:]
    copied = [h for h in head if h.split(b":", 1)[0] in (b"Via", b"From", b"To", b"Call-ID", b"CSeq")]
    return b"SIP/2.0 200 OK\r\n" + b"\r\n".join(copied) + b"\r\nContent-Length: 0\r\n\r\n"


async def one_options_exchange(pki: Path, settings: ServerTlsSettings, capture_file: Path) -> str:
    ctx = build_server_context(settings)
    results: list[str] = []

    async def handler(tcp: trio.SocketStream) -> None:
        stream = OpenSSLStream(tcp, ctx, server_side=True, leg="customer")
        facts = await stream.do_handshake(10)
        results.append(facts.cipher)
        request = await stream.receive_some()
        await stream.send_all(ok_for(request))
        await stream.aclose()

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(functools.partial(trio.serve_tcp, handler, 0, host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        with LoopbackCapture(capture_file, [port]) as capture:
            tcp = await trio.open_tcp_stream("127.0.0.1", port)
            client = trio.SSLStream(tcp, customer_client_context(pki, ciphers=IMG2020_CIPHERS),
                                    server_hostname="localhost")
            await client.send_all(OPTIONS)
            reply = b""
            while b"\r\n\r\n" not in reply:
                reply += await client.receive_some()
            assert reply.startswith(b"SIP/2.0 200 OK")
            assert await client.receive_some() == b""  # server's close_notify
            await client.aclose()
            await capture.wait_for_close(2)
        nursery.cancel_scope.cancel()
    return f"{port}:{results[0]}"


@require("tcpdump", "tshark")
async def test_tshark_decrypts_with_only_the_server_key(pki: Path, tmp_path: Path) -> None:
    settings = ServerTlsSettings(cert=pki / "proxy-server.pem", key=pki / "proxy-server.key", client_ca=pki / "ca.pem")
    port, cipher = (await one_options_exchange(pki, settings, tmp_path / "customer-leg.pcap")).split(":")
    assert cipher == "AES256-GCM-SHA384"
    key = pki / "proxy-server.key"
    rows = tshark_fields(
        tmp_path / "customer-leg.pcap",
        ["sip.Method", "sip.Status-Code", "sip.Call-ID"],
        "-o", f"sip.tls.port:{port}", "-o", f'uat:rsa_keys:"{key}",""',
    )
    assert ["OPTIONS", "", CALL_ID] in rows
    assert ["", "200", CALL_ID] in rows
    # And without the key, tshark sees no SIP at all: the decryption really came from the key.
    assert tshark_fields(tmp_path / "customer-leg.pcap", ["sip.Call-ID"], "-o", f"sip.tls.port:{port}") == []


def sngrep_saved_frames(pki: Path, capture: Path, out: Path) -> int:
    """sngrep saves only packets it decrypted and parsed as SIP."""
    subprocess.run(
        ["sngrep", "-I", str(capture), "-k", str(pki / "proxy-server.key"), "-N", "-O", str(out)],
        check=True, timeout=60, capture_output=True,
    )
    return len(tshark_fields(out, ["frame.number"], display_filter="frame"))


@require("tcpdump", "sngrep", "tshark")
@pytest.mark.parametrize("sngrep_compatible", [True, False])
async def test_sngrep_decrypts_with_the_compatibility_switch(pki: Path, tmp_path: Path, sngrep_compatible: bool) -> None:
    settings = ServerTlsSettings(
        cert=pki / "proxy-server.pem", key=pki / "proxy-server.key", client_ca=pki / "ca.pem",
        sngrep_compatible=sngrep_compatible,
    )
    capture = tmp_path / "customer-leg.pcap"
    await one_options_exchange(pki, settings, capture)
    saved = sngrep_saved_frames(pki, capture, tmp_path / "sngrep-out.pcap")
    if sngrep_compatible:
        assert saved == 2  # the OPTIONS and the 200 OK
    else:
        assert saved == 0  # sngrep 1.6 cannot do the extended master secret: why the switch exists

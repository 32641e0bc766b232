"""A TLS client whose keys do not match the server's is TLS, not "not_tls".

The client is the standard library's ssl over memory BIOs, its bytes carried over a real
loopback TCP connection to siptap's server leg, with one byte of its second flight changed on
the way: the encrypted Finished (its record fails the MAC / AEAD tag: ``bad_record_mac``),
or the RSA-encrypted premaster in the ClientKeyExchange. OpenSSL hides a failed RSA
decryption (the Bleichenbacher countermeasure: it carries on with a random premaster), so a
wrong premaster surfaces later: at the client's Finished without client authentication
(``bad_record_mac``), or, with mutual TLS, at the client's CertificateVerify, whose signature
covers a transcript the server saw differently (``decrypt_error``).
"""

from __future__ import annotations

import ssl
import struct
from pathlib import Path

import pytest
import trio

from siptap.errors import HandshakeFailed
from tests.tls.helpers import customer_client_context
from tests.tls.test_server_leg import OneShotServer, server_settings, start

_CHANGE_CIPHER_SPEC, _HANDSHAKE = 20, 22
_CLIENT_KEY_EXCHANGE = 16


def _tamper(flight: bytes, target: str) -> bytes:
    """The client's second flight with one byte of ``target`` flipped: "finished" (the last
    byte of the first handshake record after ChangeCipherSpec, inside the AEAD tag or MAC) or
    "premaster" (a byte of the RSA-encrypted premaster in the ClientKeyExchange)."""
    out = bytearray(flight)
    offset, after_ccs, flipped = 0, False, False
    while offset + 5 <= len(out):
        kind = out[offset]
        (length,) = struct.unpack(">H", out[offset + 3:offset + 5])
        body, end = offset + 5, offset + 5 + length
        if kind == _CHANGE_CIPHER_SPEC:
            after_ccs = True
        elif kind == _HANDSHAKE and after_ccs and target == "finished" and not flipped:
            out[end - 1] ^= 0x01
            flipped = True
        elif kind == _HANDSHAKE and not after_ccs and target == "premaster":
            message = body
            while message + 4 <= end:  # a record may hold several handshake messages
                size = int.from_bytes(out[message + 1:message + 4], "big")
                if out[message] == _CLIENT_KEY_EXCHANGE:
                    out[message + 4 + 2 + 16] ^= 0x55  # past the 2-byte length, inside the RSA block
                    flipped = True
                message += 4 + size
        offset = end
    assert flipped, f"no {target} found in the client's flight"
    return bytes(out)


async def tampering_client(port: int, ctx: ssl.SSLContext, target: str) -> str:
    """Handshake through a real TCP connection, tampering with the flight that carries
    ChangeCipherSpec; returns what the client saw in the end (its error, or "done")."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = ctx.wrap_bio(incoming, outgoing, server_hostname="localhost")
    tcp = await trio.open_tcp_stream("127.0.0.1", port)
    try:
        with trio.fail_after(10):
            while True:
                try:
                    client.do_handshake()
                    outcome = "done"
                except ssl.SSLWantReadError:
                    outcome = None
                except ssl.SSLError as exc:
                    outcome = f"error: {exc}"
                data = outgoing.read()
                if data:
                    if bytes([_CHANGE_CIPHER_SPEC, 3, 3]) in data:
                        data = _tamper(data, target)
                    await tcp.send_all(data)
                if outcome is not None:
                    return outcome
                received = await tcp.receive_some(65536)
                if not received:
                    return "error: server closed"
                incoming.write(received)
    finally:
        await tcp.aclose()


@pytest.mark.parametrize(
    ("target", "cipher", "mutual", "reason", "detail_part"),
    [
        ("finished", "AES256-GCM-SHA384", True, "bad_record_mac", "bad record mac"),
        ("finished", "AES256-SHA", True, "bad_record_mac", "bad record mac"),
        ("premaster", "AES256-GCM-SHA384", False, "bad_record_mac", "premaster"),
        ("premaster", "AES256-GCM-SHA384", True, "decrypt_error", "CertificateVerify"),
    ],
    ids=["finished-gcm", "finished-cbc", "premaster-server-auth-only", "premaster-mutual-tls"],
)
async def test_mismatched_keys_get_their_own_reason(pki: Path, target: str, cipher: str, mutual: bool,
                                                     reason: str, detail_part: str) -> None:
    server = OneShotServer(server_settings(pki, verify_client=mutual))
    ctx = customer_client_context(pki, ciphers=cipher, maximum=ssl.TLSVersion.TLSv1_2,
                                  cert="customer" if mutual else None)
    async with trio.open_nursery() as nursery:
        port = await start(nursery, server)
        client_saw = await tampering_client(port, ctx, target)
        failure = await server.receive.receive()
        nursery.cancel_scope.cancel()
    assert isinstance(failure, HandshakeFailed), failure
    assert (failure.reason, client_saw.startswith("error")) == (reason, True), (failure, client_saw)
    assert detail_part in failure.detail, failure.detail
    assert "not speaking TLS" not in failure.detail

"""What the SNI switches on the customer leg (tls.contexts.serve_by_sni), over real loopback
sockets with a real (stdlib ssl) client: the server certificate, the client CA store, the
allow-list and the suites follow the name the client sent; other names stay on the default."""

from __future__ import annotations

import shutil
import ssl
from pathlib import Path

import trio

from siptap.errors import HandshakeFailed
from siptap.sansio.handshake import HandshakeFacts
from siptap.tls.contexts import build_server_context, serve_by_sni
from siptap.tools.pki import issue_leaf
from tests.tls.helpers import customer_client_context
from tests.tls.test_server_leg import OneShotServer, server_settings, start


async def attempt(port: int, ctx: ssl.SSLContext, server_name: str) -> tuple[str, str] | str:
    """(cipher, server certificate CN) on success, else the error text."""
    tcp = await trio.open_tcp_stream("127.0.0.1", port)
    client = trio.SSLStream(tcp, ctx, server_hostname=server_name)
    try:
        await client.do_handshake()
        await client.send_all(b"OPTIONS")
        assert await client.receive_some() == b"SNOITPO"
        peer = client.getpeercert()
        assert peer is not None
        return client.cipher()[0], str(dict(x[0] for x in peer["subject"])["commonName"])
    except (ssl.SSLError, trio.BrokenResourceError) as exc:
        return f"error: {exc!r}"
    finally:
        await client.aclose()


async def test_sni_switches_certificate_client_cas_allow_list_and_suites(pki: Path, tmp_path: Path) -> None:
    certs = tmp_path / "certs"
    shutil.copytree(pki, certs)
    issue_leaf(certs, "b-server", usage="server", sans=["b.example"])
    (certs / "both-cas.pem").write_bytes((certs / "ca.pem").read_bytes() + (certs / "foreign-ca.pem").read_bytes())
    server = OneShotServer(server_settings(certs, allow=("cn:customer",)))
    named = build_server_context(server_settings(certs, cert=certs / "b-server.pem", key=certs / "b-server.key",
                                                 client_ca=certs / "both-cas.pem", allow=("cn:foreign",),
                                                 ciphers="AES128-SHA"))
    serve_by_sni(server.ctx, {"b.example": named})
    results: list[HandshakeFacts | HandshakeFailed] = []
    async with trio.open_nursery() as nursery:
        port = await start(nursery, server)
        customer, foreign = customer_client_context(certs), customer_client_context(certs, cert="foreign")
        outcomes = {}
        for who, ctx in (("customer", customer), ("foreign", foreign)):
            for name in ("localhost", "B.Example"):
                outcomes[(who, name)] = await attempt(port, ctx, name)
                results.append(await server.receive.receive())
        nursery.cancel_scope.cancel()

    assert outcomes[("customer", "localhost")] == ("AES256-GCM-SHA384", "proxy-server")
    # SNI b.example (any case): its certificate, its suites, its CAs (which trust foreign's
    # issuer) and its allow-list (which names foreign, not customer).
    assert outcomes[("foreign", "B.Example")] == ("AES128-SHA", "b-server")
    assert isinstance(results[3], HandshakeFacts) and results[3].sni == "B.Example"
    assert isinstance(results[1], HandshakeFailed) and results[1].reason == "not_allowed"
    # The default context's CA store does not know foreign's CA.
    assert isinstance(results[2], HandshakeFailed) and results[2].reason == "unknown_ca"
    assert str(outcomes[("foreign", "localhost")]).startswith("error:")


async def test_the_version_is_the_default_contexts_whatever_the_sni(pki: Path) -> None:
    # Why siptap check makes the routes of one address agree on versions and key_exchange:
    # OpenSSL picks the version before the servername callback runs, so a context chosen by SNI
    # that allows TLS 1.3 does not get it (its suites do follow, as above).
    server = OneShotServer(server_settings(pki))  # key_exchange "rsa": TLS 1.2 at most
    serve_by_sni(server.ctx, {"localhost": build_server_context(server_settings(pki, key_exchange="any"))})
    async with trio.open_nursery() as nursery:
        port = await start(nursery, server)
        outcome = await attempt(port, customer_client_context(pki), "localhost")
        facts = await server.receive.receive()
        nursery.cancel_scope.cancel()
    assert isinstance(facts, HandshakeFacts) and facts.version == "TLSv1.2"
    assert outcome == ("ECDHE-RSA-AES256-GCM-SHA384", "proxy-server")

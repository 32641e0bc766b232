"""The per-context certificate cache: the facts it gives are the uncached path's facts."""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import trio
import trio.lowlevel
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from OpenSSL import crypto

from siptap import certificates
from siptap.sansio.handshake import HandshakeFacts
from siptap.tls.contexts import build_client_context, build_server_context, certificate_cache
from siptap.tls.facts import CertificateCache, certificate_summary
from siptap.tls.pem import load_certificate_chain
from siptap.tls.stream import OpenSSLStream
from tests.tls.helpers import core_server_context, customer_client_context
from tests.tls.test_client_leg import client_settings, run_core
from tests.tls.test_server_leg import server_settings


def _der(pki: Path, name: str) -> bytes:
    return load_certificate_chain(pki / f"{name}.pem")[0].public_bytes(Encoding.DER)


def test_summary_is_the_uncached_summary(pki: Path) -> None:
    cache = CertificateCache()
    for name in ("customer", "core", "ca"):
        der = _der(pki, name)
        assert cache.summary(der) == certificate_summary(x509.load_der_x509_certificate(der))
        assert cache.summary(der) is cache.summary(der)  # computed once
    assert (cache.misses, len(cache)) == (3, 3)


def test_certificate_of_a_pyopenssl_certificate(pki: Path) -> None:
    cache = CertificateCache()
    cert = load_certificate_chain(pki / "customer.pem")[0]
    parsed = cache.certificate_of(crypto.X509.from_cryptography(cert))
    assert parsed == cert
    assert cache.certificate_of(crypto.X509.from_cryptography(cert)) is parsed


def test_bounded_least_recently_used_goes_first(pki: Path) -> None:
    cache = CertificateCache(maxsize=2)
    customer, core, ca = (_der(pki, name) for name in ("customer", "core", "ca"))
    first = cache.summary(customer)
    cache.summary(core)
    cache.summary(customer)  # customer is now the most recently used
    cache.summary(ca)  # evicts core
    assert len(cache) == 2
    hits = cache.hits
    assert cache.summary(customer) is first and cache.hits == hits + 1
    misses = cache.misses
    cache.summary(core)
    assert cache.misses == misses + 1 and len(cache) == 2


def _uncached(ctx):
    """The same context without its cache as app data: streams on it take the uncached path of
    OpenSSLStream.facts (its verify callback keeps the cache it was built with)."""
    ctx.set_app_data(None)
    return ctx


async def _serve_customers(pki: Path, ctx, count: int, *, raw: bool = False) -> list:
    """``count`` customers' handshakes with a siptap server stream on ``ctx``: each one's facts
    (``do_handshake``), or with ``raw`` its unsummarised record (``complete_handshake``, the relay's)."""
    found: list = []

    async def handler(tcp: trio.SocketStream) -> None:
        stream = OpenSSLStream(tcp, ctx, server_side=True, leg="customer")
        found.append(await (stream.complete_handshake(10) if raw else stream.do_handshake(10)))
        await stream.aclose()

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(functools.partial(trio.serve_tcp, handler, 0, host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        for _ in range(count):
            tcp = await trio.open_tcp_stream("127.0.0.1", port)
            client = trio.SSLStream(tcp, customer_client_context(pki), server_hostname="localhost")
            await client.do_handshake()
            await client.receive_some()  # siptap's close
            await client.aclose()
        with trio.fail_after(10):
            while len(found) < count:
                await trio.lowlevel.checkpoint()
        nursery.cancel_scope.cancel()
    return found


def _same_but_secrets(a: HandshakeFacts, b: HandshakeFacts) -> None:
    """Equal in everything but what differs per handshake (randoms, secrets, key-log lines)."""
    per_handshake = dict(client_random="", master_secret=None, keylog_lines=())
    assert dataclasses.replace(a, **per_handshake) == dataclasses.replace(b, **per_handshake)


async def test_server_leg_cached_facts_equal_uncached(pki: Path) -> None:
    ctx = build_server_context(server_settings(pki))
    cache = certificate_cache(ctx)
    assert cache is not None
    cached = await _serve_customers(pki, ctx, 2)
    uncached = await _serve_customers(pki, _uncached(build_server_context(server_settings(pki))), 1)
    for facts in cached:
        _same_but_secrets(facts, uncached[0])
    assert [c.common_name for c in cached[0].peer_chain] == ["customer", "siptap lab CA"]
    assert cached[0].peer_chain[0] == certificate_summary(load_certificate_chain(pki / "customer.pem")[0])
    assert (cache.misses, cache.hits) == (2, 2)  # the second connection parsed nothing


async def test_the_relays_handshake_summarises_no_certificate(pki: Path, monkeypatch) -> None:
    """complete_handshake (the relay's) keeps the chain as DER: no summary is made on the
    relay's handshake path; the mirror makes them (issue 16 item 6)."""
    made: list[object] = []
    real = certificates.certificate_summary
    monkeypatch.setattr(certificates, "certificate_summary", lambda cert: made.append(cert) or real(cert))
    records = await _serve_customers(pki, build_server_context(server_settings(pki)), 1, raw=True)
    chain = load_certificate_chain(pki / "customer.pem")
    assert records[0].peer_chain_der[0] == chain[0].public_bytes(Encoding.DER)
    assert len(records[0].peer_chain_der) == 2  # the verified chain: the leaf and the lab CA
    assert made == []


async def _dial_core(pki: Path, ctx, count: int) -> list[HandshakeFacts]:
    found: list[HandshakeFacts] = []
    seen: list = []
    async with trio.open_nursery() as nursery:
        port = await run_core(nursery, core_server_context(pki), seen)
        for _ in range(count):
            tcp = await trio.open_tcp_stream("127.0.0.1", port)
            stream = OpenSSLStream(tcp, ctx, server_side=False, leg="core", server_hostname="localhost",
                                   check_hostname=True)
            found.append(await stream.do_handshake(10))
            await stream.send_all(b"OPTIONS")
            assert await stream.receive_some() == b"core:OPTIONS"
            await stream.aclose()
        nursery.cancel_scope.cancel()
    return found


async def test_client_leg_cached_facts_equal_uncached(pki: Path) -> None:
    settings = client_settings(pki)
    ctx = build_client_context(settings)
    cache = certificate_cache(ctx)
    assert cache is not None
    cached = await _dial_core(pki, ctx, 2)
    uncached = await _dial_core(pki, _uncached(build_client_context(settings)), 1)
    for facts in cached:
        _same_but_secrets(facts, uncached[0])
    chain = cached[0].peer_chain
    assert chain[0].common_name == "core"
    # Each certificate of the core's chain parsed once (the leaf by the hostname check, the
    # facts found it there); the second connection parsed nothing.
    assert cache.misses == len(chain)
    assert cache.hits + cache.misses == 2 * (1 + len(chain))  # leaf check + chain, twice
